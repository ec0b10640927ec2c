//! Tillstream's HTTP write side.
//!
//! Every route turns an authenticated request into one domain command and runs it through the
//! one command driver ([`driver::execute`], or [`driver::run`] for a command on one stream):
//! plan → decide → append, with `If-Match`, `Idempotency-Key`, an `ETag` and an
//! `X-Consistency-Token` on the answer. No SQL lives in handlers.
//!
//! - [`routes`]: the handlers, one module per resource.
//! - [`body`], [`context`]: extractors for the JSON body and the command's context.
//! - [`driver`]: executing a command and shaping its response; [`idempotency`]: stored
//!   responses for repeated keys; [`error`]: failures as problem+json; [`turns`]: commands on
//!   one stream queue in-process instead of racing.
//! - [`docs`]: what the OpenAPI document says beyond each handler's `#[utoipa::path]`;
//!   [`openapi`] is the write side's part of the document, made from the same route list that
//!   [`router`] serves.

pub mod body;
pub mod context;
pub mod docs;
pub mod driver;
pub mod error;
pub mod idempotency;
pub mod routes;
pub mod turns;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use eventstore::EventStore;
use platform::http::{Readiness, operational_routes, track_metrics};
use platform::identity::JwtVerifier;
use platform::problem::Problem;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::MAX_BODY_BYTES;
use crate::routes::{carts, orders, products, webhooks};

/// Where the command API listens unless `TILL_COMMAND_API_ADDR` says otherwise.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// Shared by every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: EventStore,
    pub verifier: Arc<JwtVerifier>,
    /// Stripe's webhook signing secrets; none when Stripe is not the provider (its webhook
    /// route then answers 404).
    pub stripe_webhook_secrets: Arc<Vec<String>>,
    /// Commands on one stream take turns (see [`turns`]).
    pub turns: Arc<turns::StreamTurns>,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

/// Every command route, each with its OpenAPI description: the one list both [`router`] and
/// [`openapi`] are made from.
fn commands() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(products::create))
        .routes(routes!(products::change_details))
        .routes(routes!(products::change_price))
        .routes(routes!(products::adjust_stock))
        .routes(routes!(products::discontinue))
        .routes(routes!(carts::create))
        .routes(routes!(carts::add_item))
        .routes(routes!(carts::change_quantity, carts::remove_item))
        .routes(routes!(carts::checkout))
        .routes(routes!(orders::pay))
        .routes(routes!(orders::cancel))
        .routes(routes!(orders::ship))
        .routes(routes!(orders::deliver))
        .routes(routes!(orders::refund))
        .routes(routes!(webhooks::payment_webhook))
}

/// The write side's part of the OpenAPI document (the gateway serves the whole).
pub fn openapi() -> utoipa::openapi::OpenApi {
    commands().into_openapi()
}

/// Every route of the write side, plus `/livez`, `/readyz` and `/metrics`.
pub fn router(state: AppState) -> Router {
    // Each series exists from the start, at zero, so dashboards and alerts see it.
    for stream_type in [
        <domain::cart::Cart as domain::Aggregate>::STREAM_TYPE,
        <domain::order::Order as domain::Aggregate>::STREAM_TYPE,
        <domain::product::Product as domain::Aggregate>::STREAM_TYPE,
        <domain::payment::Payment as domain::Aggregate>::STREAM_TYPE,
    ] {
        metrics::counter!("command_conflicts_total", "stream_type" => stream_type).increment(0);
    }
    metrics::counter!("command_conflicts_exhausted_total").increment(0);
    metrics::counter!("idempotent_replays_total").increment(0);
    metrics::counter!("payment_webhooks_refused_total", "provider" => "stripe").increment(0);
    for outcome in ["recorded", "duplicate", "ignored"] {
        metrics::counter!("payment_webhooks_total", "provider" => "stripe", "outcome" => outcome)
            .increment(0);
    }
    let readiness = Readiness::default().postgres(state.store.pool().clone());
    let commands = Router::from(commands())
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    Router::new()
        .merge(commands)
        .merge(operational_routes(readiness))
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            )
            .with_detail("this route does not take this method")
        })
        .fallback(|| async {
            Problem::not_found("route-not-found", "no such route").into_response()
        })
        .layer(axum::middleware::from_fn(platform::http::problems_only))
        .layer(from_fn_with_state("command-api", track_metrics))
}
