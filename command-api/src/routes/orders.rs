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
use uuid::Uuid;

use crate::AppState;
use crate::body::{CommandBody, MoneyBody, OptionalBody};
use crate::context::CommandContext;
use crate::driver::{Reply, run};
use crate::error::invalid;
use crate::routes::path_id;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pay {
    pub payment_token: String,
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    #[serde(default)]
    pub reason: Option<String>,
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ship {
    pub carrier: String,
    pub tracking_number: String,
}

pub async fn ship(
    State(state): State<AppState>,
    Admin(_): Admin,
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

pub async fn deliver(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
) -> Response {
    let hash = ctx.bodiless_request_hash.clone();
    on_order(&state, &id, &ctx, &hash, |actor| OrderCommand::Deliver {
        actor,
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refund {
    /// Everything not yet refunded when absent.
    #[serde(default)]
    pub amount: Option<MoneyBody>,
    pub reason: String,
}

/// `POST /v1/orders/{id}/refund` (admin): 202 `{order_id, refund_id}`; the provider gives the
/// money back shortly after, and the order view lists the refund from requested to refunded.
pub async fn refund(
    State(state): State<AppState>,
    Admin(_): Admin,
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
