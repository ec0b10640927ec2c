//! A cart view: its owner only; to anyone else it does not exist.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use domain::values::CartId;
use platform::identity::Principal;
use platform::problem::Problem;
use platform::read_models::{CARTS, serving_version};

use crate::consistency::Readers;
use crate::routes::path_id;
use crate::{AppState, Audience, consistency, db_problem, redis_problem, with_etag};

/// `GET /v1/carts/{id}`
pub async fn one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path_id(&id, "cart")?;
    let awaited = consistency::parse(&headers)?;
    let version = serving_version(&state.pool, CARTS)
        .await
        .map_err(db_problem)?;
    let key = state.cart_keys.cart(version, id);
    let wakeups = Some((state.cart_wakeups.as_ref(), version));
    consistency::wait_for(
        &awaited,
        CartId::STREAM_TYPE,
        state.consistency_wait,
        wakeups,
        |wanted| consistency::genuine(&state.store, wanted, Readers::Owner(&principal)),
        |cart| {
            let (mut redis, key) = (state.redis.clone(), state.cart_keys.cart(version, cart));
            async move {
                let stored: Option<u64> = redis::cmd("HGET")
                    .arg(key)
                    .arg("version")
                    .query_async(&mut redis)
                    .await
                    .map_err(redis_problem)?;
                Ok(stored.unwrap_or(0))
            }
        },
    )
    .await?;
    let mut redis = state.redis.clone();
    let (owner, view, stored): (Option<String>, Option<String>, Option<u64>) = redis::cmd("HMGET")
        .arg(&key)
        .arg("customer_id")
        .arg("view")
        .arg("version")
        .query_async(&mut redis)
        .await
        .map_err(redis_problem)?;
    let not_found = || Problem::not_found("cart-not-found", "cart not found");
    if owner.as_deref() != Some(principal.user_id.as_str()) {
        return Err(not_found());
    }
    let view: serde_json::Value = view
        .and_then(|v| serde_json::from_str(&v).ok())
        .ok_or_else(not_found)?;
    Ok(with_etag(
        &headers,
        format!("\"{}\"", stored.unwrap_or(0)),
        view,
        Audience::OneUser,
    ))
}
