//! Payment provider webhooks. Not a user's command: the provider signs the request instead of
//! sending a token, so the signature is checked here before anything is read, and the news is
//! applied by `processes::webhooks` (once per provider event, idempotently).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use platform::problem::Problem;
use processes::stripe::{Event, verify_signature};
use processes::webhooks::{Applied, apply_stripe_event};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// What the provider is told.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    pub received: bool,
    /// `recorded`, `duplicate` (seen before: nothing done) or `ignored` (not about our payments).
    pub outcome: String,
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/payments/{provider}",
    tag = "payments",
    summary = "A payment provider's webhook (signed by the provider; no token)",
    security(()),
    params(
        ("provider" = String, Path, description = "`stripe`"),
        ("Stripe-Signature" = Option<String>, Header, description = "`t=<unix time>,v1=<hex HMAC-SHA256>`"),
    ),
    request_body(content = serde_json::Value, description = "the provider's event, byte for byte as signed", content_type = "application/json"),
    responses(
        (status = 200, description = "handled, a duplicate, or ignored", body = WebhookReceipt),
        (status = 400, description = "no, a wrong or a stale signature, or not an event", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such provider configured", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn payment_webhook(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if provider != "stripe" || state.stripe_webhook_secrets.is_empty() {
        return Problem::not_found(
            "unknown-payment-provider",
            format!("no payment provider named {provider:?} is configured"),
        )
        .into_response();
    }
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = verify_signature(&body, signature, &state.stripe_webhook_secrets, now) {
        metrics::counter!("payment_webhooks_refused_total", "provider" => "stripe").increment(1);
        return Problem::bad_request("invalid-signature", e.to_string()).into_response();
    }
    let event: Event = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(e) => {
            return Problem::bad_request("malformed-event", format!("not a Stripe event: {e}"))
                .into_response();
        }
    };
    match apply_stripe_event(&state.store, state.store.pool(), &event).await {
        Ok(applied) => {
            let outcome = match applied {
                Applied::Recorded => "recorded",
                Applied::Duplicate => "duplicate",
                Applied::Ignored => "ignored",
            };
            metrics::counter!("payment_webhooks_total", "provider" => "stripe", "outcome" => outcome)
                .increment(1);
            (
                StatusCode::OK,
                axum::Json(WebhookReceipt {
                    received: true,
                    outcome: outcome.to_owned(),
                }),
            )
                .into_response()
        }
        Err(e) => Problem::internal(&e).into_response(),
    }
}
