//! Tillstream's HTTP read side: serves the read models the projectors build, and the operators'
//! routes (`/v1/admin/…`: projections and their rebuilds, the event log, the bus). It knows the
//! views' shapes, never the domain's rules, and appends no event.
//!
//! - [`routes`]: one module per resource (products, carts, orders; admin: projections, events,
//!   consumers and dead letters).
//! - [`consistency`]: read-your-writes with `X-Consistency-Token`.
//! - [`serving`]: which version of each projection reads come from.
//! - [`pagination`]: keyset cursors.
//! - [`docs`]: what the OpenAPI document says beyond each handler's `#[utoipa::path]`;
//!   [`openapi`] is the read side's part of the document, made from the same route list that
//!   [`router`] serves.

pub mod consistency;
pub mod docs;
pub mod pagination;
pub mod params;
pub mod routes;
pub mod serving;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use eventstore::EventStore;
use platform::http::{Readiness, operational_routes, track_metrics};
use platform::identity::JwtVerifier;
use platform::problem::Problem;
use platform::read_models::CartKeys;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Where the query API listens unless `TILL_QUERY_API_ADDR` says otherwise.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8082);

/// How long a read with a consistency token may wait unless `TILL_CONSISTENCY_WAIT_MS` says
/// otherwise.
pub const DEFAULT_CONSISTENCY_WAIT: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The event store, for the one route that shows a stream (an order's events).
    pub store: EventStore,
    pub redis: ConnectionManager,
    pub cart_keys: CartKeys,
    pub verifier: Arc<JwtVerifier>,
    pub consistency_wait: Duration,
    /// Wakes reads that wait for a cart write; see [`consistency::CartWakeups`].
    pub cart_wakeups: Arc<consistency::CartWakeups>,
    /// The projections' serving versions; see [`serving::ServingVersions`].
    pub serving: Arc<serving::ServingVersions>,
    /// The broker and the names the admin routes on the bus need.
    pub operations: Arc<routes::consumers::Operations>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("cart_keys", &self.cart_keys)
            .field("consistency_wait", &self.consistency_wait)
            .finish_non_exhaustive()
    }
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Every read route, each with its OpenAPI description: the one list both [`router`] and
/// [`openapi`] are made from.
fn reads() -> OpenApiRouter<AppState> {
    use routes::{admin, carts, consumers, events, me, orders, products};
    OpenApiRouter::new()
        .routes(routes!(products::list))
        .routes(routes!(products::one))
        .routes(routes!(products::categories))
        .routes(routes!(me::me))
        .routes(routes!(carts::list))
        .routes(routes!(carts::one))
        .routes(routes!(orders::list))
        .routes(routes!(orders::one))
        .routes(routes!(orders::events))
        .routes(routes!(admin::projections))
        .routes(routes!(admin::projection))
        .routes(routes!(admin::rebuild))
        .routes(routes!(consumers::consumers))
        .routes(routes!(
            consumers::dead_letters,
            consumers::drop_dead_letters
        ))
        .routes(routes!(consumers::redrive))
        .routes(routes!(events::log))
        .routes(routes!(events::stream))
}

/// The read side's part of the OpenAPI document (the gateway serves the whole).
pub fn openapi() -> utoipa::openapi::OpenApi {
    reads().into_openapi()
}

/// Every read route, plus `/livez`, `/readyz` and `/metrics`.
pub fn router(state: AppState) -> Router {
    // Each series exists from the start, at zero, so dashboards and alerts see it.
    metrics::counter!("cart_read_repairs_total").increment(0);
    let redis = state.redis.clone();
    let readiness = Readiness::default()
        .postgres(state.pool.clone())
        .check("redis", move || {
            let mut redis = redis.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut redis)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        });
    let reads = Router::from(reads()).with_state(state);
    Router::new()
        .merge(reads)
        .merge(operational_routes(readiness))
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            )
            .with_detail("the query API only reads, apart from the admin routes")
        })
        .fallback(|| async { Problem::not_found("route-not-found", "no such route") })
        .layer(axum::middleware::from_fn(platform::http::problems_only))
        .layer(from_fn_with_state("query-api", track_metrics))
}

/// A JSON answer with an `ETag`, or 304 when the client's `If-None-Match` already has it.
pub fn with_etag(
    request_headers: &HeaderMap,
    etag: String,
    body: impl serde::Serialize,
    audience: Audience,
) -> Response {
    let headers = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, audience.cache_control().to_owned()),
        // A read that carries a (new) consistency token must not be answered from a cache
        // entry stored for a read without it.
        (
            header::VARY,
            "Authorization, X-Consistency-Token".to_owned(),
        ),
    ];
    let matches = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, axum::Json(body)).into_response()
}

/// Who a view is for, which says how it may be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The catalog: the same for everyone, so any cache may keep it, briefly (a price change
    /// shows within seconds; a client that must see its own change sends its token).
    Everyone,
    /// One user's cart or orders: only the user's own client may keep it, and must ask again
    /// (If-None-Match) before using it.
    OneUser,
}

impl Audience {
    fn cache_control(self) -> &'static str {
        match self {
            Self::Everyone => "public, max-age=5",
            Self::OneUser => "private, no-cache",
        }
    }
}

/// An ETag for a list: a hash of its JSON.
pub fn list_etag(body: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(body.to_string().as_bytes());
    format!(
        "W/\"{}\"",
        digest[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A database failure: 503 during an outage, else an opaque 500 (logged once).
pub fn db_problem(e: sqlx::Error) -> Problem {
    Problem::internal(&e)
}

/// A Redis failure: 503 when Redis cannot be reached or is restarting (loading its data set
/// counts), a 500 otherwise.
pub fn redis_problem(e: redis::RedisError) -> Problem {
    let outage = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::BusyLoadingError
        || e.kind() == redis::ErrorKind::TryAgain;
    if outage {
        Problem::unavailable(&e)
    } else {
        Problem::internal(&e)
    }
}
