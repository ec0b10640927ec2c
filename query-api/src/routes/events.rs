//! The event log for operators (admin only): `GET /v1/admin/events` tails the global log,
//! newest first, optionally one stream type; `GET /v1/admin/streams/{stream_id}` shows one
//! stream's events (upcast, as the domain reads them) with their metadata — correlation,
//! causation, actor and the trace id that links each event to its request in the traces.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use eventstore::Metadata;
use platform::identity::Admin;
use platform::problem::Problem;
use platform::read_models::PROJECTIONS;
use serde_json::{Value, json};

use crate::docs::{EventLogFilter, EventLogPage, StreamEvents};
use crate::params::Params;
use crate::routes::shown_data;
use crate::{AppState, db_problem, pagination};

/// Whether `name` is a stream type (a stream id is `<type>-<uuid>`): each has its projection in
/// the registry.
fn is_stream_type(name: &str) -> bool {
    PROJECTIONS.iter().any(|p| p.stream_type == name)
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub(crate) fn trace_id(metadata: &Metadata) -> Option<&str> {
    metadata
        .traceparent
        .as_deref()
        .and_then(|t| t.split('-').nth(1))
        .filter(|id| id.len() == 32)
}

fn metadata_json(metadata: &Metadata) -> Value {
    json!({
        "trace_id": trace_id(metadata),
        "correlation_id": metadata.correlation_id,
        "causation_id": metadata.causation_id,
        "actor": metadata.actor,
    })
}

#[utoipa::path(
    get,
    path = "/v1/admin/events",
    tag = "operations",
    summary = "The global event log, newest first (admin)",
    params(EventLogFilter),
    responses(
        (status = 200, description = "a page of the log", body = EventLogPage),
        (status = 422, description = "an unknown stream type, or a bad limit or position", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/admin/events?stream_type=&before=&limit=`
pub async fn log(
    State(state): State<AppState>,
    _admin: Admin,
    params: Params,
) -> Result<Response, Problem> {
    let limit = pagination::limit(params.get("limit"))?;
    let stream_type = match params.get("stream_type").filter(|t| !t.is_empty()) {
        None => None,
        Some(t) if is_stream_type(t) => Some(t),
        Some(_) => {
            return Err(Problem::invalid_field(
                "stream_type",
                "must be product, cart or order",
            ));
        }
    };
    let before = match params.get("before") {
        None => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Problem::invalid_field("before", "must be a positive position"))?,
        ),
    };
    let (low, high) = match stream_type {
        Some(t) => (Some(format!("{t}-")), Some(format!("{t}."))),
        None => (None, None),
    };
    let rows: Vec<(i64, String, i64, String, Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT position, stream_id, version, event_type, metadata, recorded_at \
         FROM eventstore.events \
         WHERE ($1::text IS NULL OR (stream_id > $1 COLLATE \"C\" AND stream_id < $2 COLLATE \"C\")) \
           AND ($3::int8 IS NULL OR position < $3) \
         ORDER BY position DESC LIMIT $4",
    )
    .bind(low)
    .bind(high)
    .bind(before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(db_problem)?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.0))
        .flatten();
    let items: Vec<Value> = rows
        .into_iter()
        .map(
            |(position, stream_id, version, event_type, metadata, recorded_at)| {
                let metadata: Metadata = serde_json::from_value(metadata).unwrap_or_default();
                json!({
                    "position": position,
                    "stream_id": stream_id,
                    "version": version,
                    "type": event_type,
                    "recorded_at": recorded_at,
                    "metadata": metadata_json(&metadata),
                })
            },
        )
        .collect();
    Ok(axum::Json(json!({ "items": items, "next_before": next })).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/admin/streams/{stream_id}",
    tag = "operations",
    summary = "One stream's events with their data and metadata (admin)",
    params(("stream_id" = String, Path, description = "`<stream type>-<uuid>`, e.g. order-01…")),
    responses(
        (status = 200, description = "the stream's events, oldest first", body = StreamEvents),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such stream", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/admin/streams/{stream_id}`
pub async fn stream(
    State(state): State<AppState>,
    _admin: Admin,
    Path(stream_id): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("stream-not-found", "no such stream");
    let (kind, id) = stream_id.split_once('-').ok_or_else(not_found)?;
    if !is_stream_type(kind) || uuid::Uuid::parse_str(id).is_err() {
        return Err(not_found());
    }
    let events = state
        .store
        .read_stream(&stream_id, 0)
        .await
        .map_err(|e| Problem::internal(&e))?;
    if events.is_empty() {
        return Err(not_found());
    }
    let items: Vec<Value> = events
        .into_iter()
        .map(|event| {
            json!({
                "position": event.position,
                "version": event.version,
                "event_id": event.event_id,
                "type": event.event_type,
                "recorded_at": event.recorded_at,
                "data": shown_data(&event),
                "metadata": metadata_json(&event.metadata),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "stream_id": stream_id, "items": items })).into_response())
}
