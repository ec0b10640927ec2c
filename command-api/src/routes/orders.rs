//! Order commands: pay (owner), cancel (owner or admin), ship and deliver (admin). The order process that
//! reserves stock, charges and expires orders reacts to the events these record.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use domain::order::{Order, OrderCommand, PaymentToken};
use domain::values::{Actor, OrderId, PaymentId, Reason};
use platform::identity::Admin;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::body::{CommandBody, OptionalBody};
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

pub async fn ship(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
) -> Response {
    bodiless(&state, &id, &ctx, |actor| OrderCommand::Ship { actor }).await
}

pub async fn deliver(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
) -> Response {
    bodiless(&state, &id, &ctx, |actor| OrderCommand::Deliver { actor }).await
}

/// A command on the order in the path that takes nothing but its actor; answered 202 with the
/// order's location.
async fn bodiless(
    state: &AppState,
    id: &str,
    ctx: &CommandContext,
    command: impl FnOnce(Actor) -> OrderCommand,
) -> Response {
    let order_id = match path_id(id, "order") {
        Ok(id) => OrderId(id),
        Err(p) => return p.into_response(),
    };
    run::<Order>(
        state,
        ctx,
        &ctx.bodiless_request_hash,
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
