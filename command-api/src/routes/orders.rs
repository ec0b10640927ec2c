//! Order commands: pay (owner), cancel (owner or admin), ship, deliver and refund (admin). The
//! order process that reserves stock, charges, refunds and expires orders reacts to the events
//! these record.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use domain::order::{Order, OrderCommand, PaymentToken};
use domain::values::{Actor, Carrier, OrderId, PaymentId, Reason, RefundId, TrackingNumber};
use platform::identity::Admin;
use platform::problem::Problem;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::body::{CommandBody, MoneyBody, OptionalBody};
use crate::context::CommandContext;
use crate::docs::{CommandHeaders, CommandOutcome};
use crate::driver::{Reply, run};
use crate::error::invalid;
use crate::routes::path_id;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pay {
    pub payment_token: String,
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/pay",
    tag = "orders",
    summary = "Pay for the order with a payment token (owner)",
    request_body = Pay,
    params(("id" = String, Path, description = "the order's id (a UUID)"), CommandHeaders),
    responses(
        (status = 202, description = "the payment is with the provider", body = CommandOutcome),
        (status = 403, description = "an admin paying for someone else", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such order, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "not awaiting payment, or a payment is in progress", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid token", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn pay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: CommandBody<Pay>,
) -> Response {
    let parsed = path_id(&id, "order").and_then(|id| {
        Ok((
            OrderId(id),
            PaymentToken::parse(&body.value.payment_token).map_err(invalid)?,
        ))
    });
    let (order_id, token) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(),
    };
    let payment_id = PaymentId(Uuid::now_v7());
    run::<Order>(
        &state,
        &ctx,
        &body.request_hash,
        order_id.stream_id(),
        OrderCommand::RequestPayment {
            actor: ctx.actor.clone(),
            payment_id,
            token,
        },
        |_| {
            Reply::accepted(
                json!({ "order_id": order_id, "payment_id": payment_id }),
                Some(format!("/v1/orders/{order_id}")),
            )
        },
    )
    .await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    #[serde(default)]
    pub reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/cancel",
    tag = "orders",
    summary = "Cancel the order (owner or admin); a paid order is refunded",
    request_body = Option<Cancel>,
    params(("id" = String, Path, description = "the order's id (a UUID)"), CommandHeaders),
    responses(
        (status = 202, description = "cancelled", body = CommandOutcome),
        (status = 404, description = "no such order, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "shipped, finished, or a payment is in progress", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: OptionalBody<Cancel>,
) -> Response {
    let order_id = match path_id(&id, "order") {
        Ok(id) => OrderId(id),
        Err(p) => return p.into_response(),
    };
    // A long reason is cut, not refused; one with control characters is refused (a NUL could
    // not even be stored).
    let reason = body
        .value
        .and_then(|b| b.reason)
        .map(|r| r.trim().chars().take(Reason::MAX_CHARS).collect::<String>())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "cancelled on request".to_owned());
    let reason = match Reason::parse(&reason) {
        Ok(reason) => reason.as_str().to_owned(),
        Err(e) => return invalid(e).into_response(),
    };
    run::<Order>(
        &state,
        &ctx,
        &body.request_hash,
        order_id.stream_id(),
        OrderCommand::Cancel {
            actor: ctx.actor.clone(),
            reason,
        },
        |_| {
            Reply::accepted(
                json!({ "order_id": order_id }),
                Some(format!("/v1/orders/{order_id}")),
            )
        },
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ship {
    pub carrier: String,
    pub tracking_number: String,
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/ship",
    tag = "orders",
    summary = "Ship a paid order (admin)",
    request_body = Ship,
    params(("id" = String, Path, description = "the order's id (a UUID)"), CommandHeaders),
    responses(
        (status = 202, description = "shipped", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "not possible in the order's status", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "carrier or tracking number invalid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ship(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: CommandBody<Ship>,
) -> Response {
    let parsed = Carrier::parse(&body.value.carrier)
        .and_then(|carrier| Ok((carrier, TrackingNumber::parse(&body.value.tracking_number)?)));
    let (carrier, tracking_number) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return invalid(e).into_response(),
    };
    on_order(&state, &id, &ctx, &body.request_hash, |actor| {
        OrderCommand::Ship {
            actor,
            carrier,
            tracking_number,
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/deliver",
    tag = "orders",
    summary = "Mark a shipped order delivered (admin)",
    params(("id" = String, Path, description = "the order's id (a UUID)"), CommandHeaders),
    responses(
        (status = 202, description = "delivered", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "not possible in the order's status", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn deliver(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
) -> Response {
    let hash = ctx.bodiless_request_hash.clone();
    on_order(&state, &id, &ctx, &hash, |actor| OrderCommand::Deliver {
        actor,
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refund {
    /// Everything not yet refunded when absent.
    #[serde(default)]
    pub amount: Option<MoneyBody>,
    pub reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/orders/{id}/refund",
    tag = "orders",
    summary = "Refund a paid order, in full or in part (admin)",
    request_body = Refund,
    params(("id" = String, Path, description = "the order's id (a UUID)"), CommandHeaders),
    responses(
        (status = 202, description = "the refund is with the provider; the order view lists it", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "not possible in the order's status", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "not positive, another currency, or more than is left to refund", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `POST /v1/orders/{id}/refund` (admin): 202 `{order_id, refund_id}`; the provider gives the
/// money back shortly after, and the order view lists the refund from requested to refunded.
pub async fn refund(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: CommandBody<Refund>,
) -> Response {
    let order_id = match path_id(&id, "order") {
        Ok(id) => OrderId(id),
        Err(p) => return p.into_response(),
    };
    let amount = match body.value.amount.as_ref().map(|a| a.parse("amount")) {
        None => None,
        Some(Ok(amount)) => Some(amount),
        Some(Err(problem)) => return problem.into_response(),
    };
    let reason = match Reason::parse(&body.value.reason) {
        Ok(reason) if !reason.as_str().is_empty() => reason.as_str().to_owned(),
        Ok(_) => return Problem::invalid_field("reason", "must say why").into_response(),
        Err(e) => return invalid(e).into_response(),
    };
    let refund_id = RefundId(Uuid::now_v7());
    run::<Order>(
        &state,
        &ctx,
        &body.request_hash,
        order_id.stream_id(),
        OrderCommand::Refund {
            actor: ctx.actor.clone(),
            refund_id,
            amount,
            reason,
        },
        |_| {
            Reply::accepted(
                json!({ "order_id": order_id, "refund_id": refund_id }),
                Some(format!("/v1/orders/{order_id}")),
            )
        },
    )
    .await
}

/// A command on the order in the path, made from its actor; answered 202 with the order's
/// location.
async fn on_order(
    state: &AppState,
    id: &str,
    ctx: &CommandContext,
    request_hash: &[u8],
    command: impl FnOnce(Actor) -> OrderCommand,
) -> Response {
    let order_id = match path_id(id, "order") {
        Ok(id) => OrderId(id),
        Err(p) => return p.into_response(),
    };
    run::<Order>(
        state,
        ctx,
        request_hash,
        order_id.stream_id(),
        command(ctx.actor.clone()),
        |_| {
            Reply::accepted(
                json!({ "order_id": order_id }),
                Some(format!("/v1/orders/{order_id}")),
            )
        },
    )
    .await
}
