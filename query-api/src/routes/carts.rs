//! Cart views: the owner's only; to anyone else a cart does not exist.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use domain::values::CartId;
use platform::identity::Principal;
use platform::problem::Problem;
use platform::read_models::CARTS;
use tracing::Instrument;

use crate::consistency::{Held, Readers};
use crate::docs::{CartList, CartView, ReadHeaders, StatusFilter};
use crate::params::Params;
use crate::routes::path_id;
use crate::{AppState, Audience, consistency, db_problem, list_etag, redis_problem, with_etag};

/// The serving version of the carts projection, once it holds every cart the request's
/// consistency token names (those the caller owns; see [`consistency::genuine`]).
async fn serving_version_after_token(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<i32, Problem> {
    let awaited = consistency::parse(headers)?;
    let version = state
        .serving
        .get(&state.pool, CARTS)
        .await
        .map_err(db_problem)?;
    let wakeups = Some((state.cart_wakeups.as_ref(), version));
    let readers = Readers::Owner(principal);
    consistency::wait_for(
        &awaited,
        CartId::STREAM_TYPE,
        state.consistency_wait,
        wakeups,
        |wanted| consistency::genuine(&state.store, wanted, readers),
        |cart| {
            let (mut redis, key) = (state.redis.clone(), state.cart_keys.cart(version, cart));
            async move {
                let (stored, owner): (Option<u64>, Option<String>) = redis::cmd("HMGET")
                    .arg(key)
                    .arg("version")
                    .arg("customer_id")
                    .query_async(&mut redis)
                    .await
                    .map_err(redis_problem)?;
                Ok(match (stored, owner) {
                    (Some(version), Some(owner)) => Held {
                        version,
                        callers_own: readers.is_customer(&owner),
                    },
                    _ => Held::NOTHING,
                })
            }
        },
    )
    .await?;
    Ok(version)
}

#[utoipa::path(
    get,
    path = "/v1/carts/{id}",
    tag = "carts",
    summary = "A cart (its owner only)",
    params(("id" = String, Path, description = "the cart's id (a UUID)"), ReadHeaders),
    responses(
        (status = 200, description = "the cart", body = CartView),
        (status = 304, description = "not modified since the ETag sent in If-None-Match"),
        (status = 404, description = "no such cart, or not the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/carts/{id}`
pub async fn one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path_id(&id, "cart")?;
    let version = serving_version_after_token(&state, &principal, &headers).await?;
    let key = state.cart_keys.cart(version, id);
    let mut redis = state.redis.clone();
    let (owner, view, stored): (Option<String>, Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(&key)
        .arg("customer_id")
        .arg("view")
        .arg("version")
        .query_async(&mut redis)
        .instrument(tracing::info_span!(
            "cart.read",
            otel.name = "HMGET",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "HMGET",
        ))
        .await
        .map_err(redis_problem)?;
    let not_found = || Problem::not_found("cart-not-found", "cart not found");
    let (owner, view, stored) = match (owner, view) {
        (Some(owner), Some(view)) => (owner, view, stored.unwrap_or(0)),
        // No view: Redis lost it, or the projector has not written it yet.
        _ => match read_repair(&state, version, id).await? {
            Some(repaired) => repaired,
            None => return Err(not_found()),
        },
    };
    if owner != principal.user_id {
        return Err(not_found());
    }
    // Passed on as stored (checked to be JSON, not parsed into a tree and written out again).
    let view: Box<serde_json::value::RawValue> =
        serde_json::from_str(&view).map_err(|_| not_found())?;
    Ok(with_etag(
        &headers,
        format!("\"{stored}\""),
        view,
        Audience::OneUser,
    ))
}

fn projection_problem(e: projectors::ProjectionError) -> Problem {
    match e {
        projectors::ProjectionError::Redis(e) => redis_problem(e),
        other => Problem::internal(&other),
    }
}

/// A cart with no view, folded from its stream and written back (compare-and-set, so a newer
/// view the projector writes meanwhile wins): `(owner, view JSON, version)`, or `None` when no
/// such cart exists. This is how owners keep seeing their carts while the projectors rebuild a
/// view Redis lost (`projectors::heal`).
async fn read_repair(
    state: &AppState,
    version: i32,
    cart_id: uuid::Uuid,
) -> Result<Option<(String, String, u64)>, Problem> {
    let view = projectors::carts::fold_from_store(&state.store, cart_id)
        .await
        .map_err(projection_problem)?;
    let Some(view) = view else { return Ok(None) };
    let mut redis = state.redis.clone();
    projectors::carts::write_back(&mut redis, &state.cart_keys, version, &view)
        .await
        .map_err(projection_problem)?;
    metrics::counter!("cart_read_repairs_total").increment(1);
    let json = serde_json::to_string(&view).map_err(|e| Problem::internal(&e))?;
    Ok(Some((view.customer_id, json, view.version)))
}

/// Most carts one listing shows (the newest).
const MAX_LISTED: usize = 100;

#[utoipa::path(
    get,
    path = "/v1/carts",
    tag = "carts",
    summary = "The caller's own carts, newest first",
    params(StatusFilter, ReadHeaders),
    responses(
        (status = 200, description = "the carts", body = CartList),
        (status = 304, description = "not modified since the ETag sent in If-None-Match"),
        (status = 400, description = "a malformed parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "an unknown status", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/carts?status=open|checked_out` — the caller's own carts, newest first.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let status = match params.get("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(status @ ("open" | "checked_out")) => Some(status),
        Some(_) => {
            return Err(Problem::invalid_field(
                "status",
                "must be open or checked_out",
            ));
        }
    };
    let version = serving_version_after_token(&state, &principal, &headers).await?;
    let mut redis = state.redis.clone();
    let mut ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(state.cart_keys.owner_carts(version, &principal.user_id))
        .query_async(&mut redis)
        .await
        .map_err(redis_problem)?;
    // Cart ids are time-ordered (UUID v7): newest first.
    ids.sort_unstable_by(|a, b| b.cmp(a));
    let mut views = Vec::new();
    if !ids.is_empty() {
        let mut read = redis::pipe();
        for id in &ids {
            let Ok(id) = uuid::Uuid::parse_str(id) else {
                continue;
            };
            read.cmd("HMGET")
                .arg(state.cart_keys.cart(version, id))
                .arg("customer_id")
                .arg("view");
        }
        let found: Vec<(Option<String>, Option<String>)> =
            read.query_async(&mut redis).await.map_err(redis_problem)?;
        views = found
            .into_iter()
            // The set is the owner's by its key; the view's own owner is checked all the same.
            .filter(|(owner, _)| owner.as_deref() == Some(principal.user_id.as_str()))
            .filter_map(|(_, view)| serde_json::from_str::<serde_json::Value>(&view?).ok())
            .filter(|view| status.is_none_or(|s| view["status"] == s))
            .take(MAX_LISTED)
            .collect();
    }
    let body = serde_json::json!({ "items": views });
    Ok(with_etag(
        &headers,
        list_etag(&body),
        body,
        Audience::OneUser,
    ))
}
