//! The bus, for operators (admin only):
//! - `GET /v1/admin/consumers`: how far the relay has published the log, and per consumer what
//!   waits in its queues (per partition), retries and dead letters;
//! - `GET /v1/admin/dead-letters/{consumer}`: the messages a consumer gave up on (peeked, left
//!   in place), `POST …/redrive` sends them all back to it, `DELETE …` drops them all.
//!
//! The broker is asked through [`Operations::broker`], a connection opened on the first such
//! request: reads never need RabbitMQ, so the query API neither holds a connection for them nor
//! waits for the broker to start. When it cannot be reached these routes answer 503.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use messaging::backlog::{BrokerLink, SharedConnection, backlog};
use messaging::{DeadLetter, MessagingError, Topology};
use platform::identity::Admin;
use platform::problem::Problem;
use serde_json::{Value, json};

use crate::docs::{ConsumerOverview, DeadLetterAction, DeadLetterFilter, DeadLetterList};
use crate::params::Params;
use crate::routes::without_secrets;
use crate::{AppState, db_problem, pagination};

/// What the operations routes need beyond the read models.
#[derive(Debug)]
pub struct Operations {
    pub broker: BrokerLink,
    pub topology: Topology,
    /// Every consumer's name (projectors and processes).
    pub consumers: Vec<&'static str>,
    /// The relay's checkpoint in the event store.
    pub relay_checkpoint: String,
}

fn broker_problem(e: MessagingError) -> Problem {
    Problem::service_unavailable(
        "broker-unavailable",
        format!("RabbitMQ could not be asked: {e}"),
    )
}

/// The consumer named in the path (see [`consumer`]) and a connection to the broker.
async fn consumer_on_broker<'a>(
    state: &'a AppState,
    name: &str,
) -> Result<(&'a str, SharedConnection), Problem> {
    let consumer = consumer(state, name)?;
    let connection = state
        .operations
        .broker
        .connection()
        .await
        .map_err(broker_problem)?;
    Ok((consumer, connection))
}

/// A consumer named in the path, or 404 with the names there are.
fn consumer<'a>(state: &'a AppState, name: &str) -> Result<&'a str, Problem> {
    let operations = &state.operations;
    operations
        .consumers
        .iter()
        .copied()
        .find(|c| *c == name)
        .ok_or_else(|| {
            Problem::not_found(
                "consumer-not-found",
                format!(
                    "no consumer named {name:?}; there are {}",
                    operations.consumers.join(", ")
                ),
            )
        })
}

#[utoipa::path(
    get,
    path = "/v1/admin/consumers",
    tag = "operations",
    summary = "The relay's lag and every consumer's queues, retries and dead letters (admin)",
    responses(
        (status = 200, description = "the relay and the consumers", body = ConsumerOverview),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn consumers(State(state): State<AppState>, _admin: Admin) -> Result<Response, Problem> {
    let operations = &state.operations;
    let (transaction_id, position): (i64, i64) = sqlx::query_as(
        "SELECT transaction_id, position FROM eventstore.checkpoints WHERE name = $1",
    )
    .bind(&operations.relay_checkpoint)
    .fetch_optional(&state.pool)
    .await
    .map_err(db_problem)?
    .unwrap_or((0, 0));
    // Events after the checkpoint in log order: a range of the log's index.
    let (lag, head): (i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM eventstore.events \
                 WHERE (transaction_id, position) > ($1::text::xid8, $2)), \
                (SELECT max(position) FROM eventstore.events)",
    )
    .bind(transaction_id)
    .bind(position)
    .fetch_one(&state.pool)
    .await
    .map_err(db_problem)?;
    let connection = operations
        .broker
        .connection()
        .await
        .map_err(broker_problem)?;
    let mut consumers = Vec::new();
    for name in &operations.consumers {
        let queues = backlog(&connection, &operations.topology, name)
            .await
            .map_err(broker_problem)?;
        consumers.push(json!({
            "name": name,
            "partitions": operations.topology.partitions(),
            "ready": queues.ready(),
            "retrying": queues.retrying,
            "dead_letters": queues.dead_letters,
            "queues": queues.queues,
        }));
    }
    Ok(axum::Json(json!({
        "relay": {
            "checkpoint": { "transaction_id": transaction_id, "position": position },
            "head_position": head.unwrap_or(0),
            "lag_events": lag,
        },
        "consumers": consumers,
    }))
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/admin/dead-letters/{consumer}",
    tag = "operations",
    summary = "A consumer's dead letters, oldest first, left in place (admin)",
    params(("consumer" = String, Path, description = "e.g. projector.orders, process.orders"), DeadLetterFilter),
    responses(
        (status = 200, description = "the dead letters", body = DeadLetterList),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a bad limit", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
    params: Params,
) -> Result<Response, Problem> {
    let limit = pagination::limit(params.get("limit"))?;
    let (consumer, connection) = consumer_on_broker(&state, &name).await?;
    let operations = &state.operations;
    let letters = messaging::dead_letters::list(
        &connection,
        &operations.topology,
        consumer,
        usize::try_from(limit).unwrap_or(0),
    )
    .await
    .map_err(broker_problem)?;
    // Counted after the look, so the count includes every letter shown (and any newer one).
    let count = messaging::dead_letters::count(&connection, &operations.topology, consumer)
        .await
        .map_err(broker_problem)?;
    let items: Vec<Value> = letters.iter().map(dead_letter_json).collect();
    Ok(axum::Json(json!({ "consumer": consumer, "count": count, "items": items })).into_response())
}

fn dead_letter_json(letter: &DeadLetter) -> Value {
    let event = letter.envelope.as_ref().map(|e| {
        json!({
            "event_id": e.event_id,
            "stream_id": e.stream_id,
            "version": e.version,
            "position": e.position,
            "type": e.event_type,
            "data": without_secrets(e.data.to_value()),
            "recorded_at": e.recorded_at,
            "trace_id": crate::routes::events::trace_id(&e.metadata),
        })
    });
    json!({
        "message_id": letter.message_id,
        "routing_key": letter.routing_key,
        "reason": letter.reason,
        "last_error": letter.last_error,
        "attempts": letter.attempts,
        "dead_at": letter.dead_at,
        "redriven": letter.redriven,
        "event": event,
    })
}

#[utoipa::path(
    post,
    path = "/v1/admin/dead-letters/{consumer}/redrive",
    tag = "operations",
    summary = "Send every dead letter back to its consumer (admin)",
    description = "Each goes back to the consumer's own queue (its stream's partition), not to \
                   the other consumers, with a fresh attempt count. One that fails again is \
                   dead-lettered again, never looped.",
    params(("consumer" = String, Path, description = "e.g. projector.orders, process.orders")),
    responses(
        (status = 200, description = "how many went back", body = DeadLetterAction),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn redrive(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let (consumer, connection) = consumer_on_broker(&state, &name).await?;
    let operations = &state.operations;
    let moved = messaging::dead_letters::redrive(&connection, &operations.topology, consumer)
        .await
        .map_err(broker_problem)?;
    tracing::info!(consumer, moved, by = %admin.user_id, "dead letters redriven");
    Ok(axum::Json(json!({ "consumer": consumer, "redriven": moved })).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/admin/dead-letters/{consumer}",
    tag = "operations",
    summary = "Drop every dead letter of a consumer (admin)",
    params(("consumer" = String, Path, description = "e.g. projector.orders, process.orders")),
    responses(
        (status = 200, description = "how many were dropped", body = DeadLetterAction),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such consumer", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "RabbitMQ cannot be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn drop_dead_letters(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let (consumer, connection) = consumer_on_broker(&state, &name).await?;
    let operations = &state.operations;
    let dropped = messaging::dead_letters::drop_all(&connection, &operations.topology, consumer)
        .await
        .map_err(broker_problem)?;
    tracing::warn!(consumer, dropped, by = %admin.user_id, "dead letters dropped");
    Ok(axum::Json(json!({ "consumer": consumer, "dropped": dropped })).into_response())
}
