//! `GET /v1/admin/projections`: per projection, the serving version, any rebuild in progress,
//! how far it has got (checkpoint) against the head of its events, and the lag in events and
//! seconds.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use platform::identity::Admin;
use platform::problem::Problem;
use platform::read_models::{PROJECTIONS, Projection, Storage};
use serde_json::{Value, json};

use crate::docs::ProjectionList;
use crate::{AppState, db_problem, redis_problem};

#[utoipa::path(
    get,
    path = "/v1/admin/projections",
    tag = "operations",
    summary = "Every projection: serving version, checkpoint and lag (admin)",
    responses(
        (status = 200, description = "the projections", body = ProjectionList),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn projections(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, Problem> {
    let mut items = Vec::new();
    for projection in &PROJECTIONS {
        items.push(projection_status(&state, projection).await?);
    }
    Ok(axum::Json(json!({ "items": items })).into_response())
}

async fn projection_status(state: &AppState, projection: &Projection) -> Result<Value, Problem> {
    let (name, stream_type) = (projection.name, projection.stream_type);
    let (serving, building): (i32, Option<i32>) = sqlx::query_as(
        "SELECT serving_version, building_version FROM read.projections WHERE name = $1",
    )
    .bind(name)
    .fetch_one(&state.pool)
    .await
    .map_err(db_problem)?;
    let (transaction_id, position, events) = if projection.storage == Storage::Redis {
        let mut redis = state.redis.clone();
        let (tx, pos, n): (Option<i64>, Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(state.cart_keys.progress(serving))
            .arg("transaction_id")
            .arg("position")
            .arg("events")
            .query_async(&mut redis)
            .await
            .map_err(redis_problem)?;
        (tx.unwrap_or(0), pos.unwrap_or(0), n.unwrap_or(0))
    } else {
        sqlx::query_as::<_, (i64, i64, i64)>(
            // The furthest lane (partition), and the events of all of them.
            "SELECT transaction_id, position, (sum(events) OVER ())::int8 FROM read.progress \
             WHERE projection = $1 AND version = $2 ORDER BY transaction_id DESC, position DESC LIMIT 1",
        )
        .bind(name)
        .bind(serving)
        .fetch_optional(&state.pool)
        .await
        .map_err(db_problem)?
        .unwrap_or((0, 0, 0))
    };
    let (lag, oldest, head): (i64, Option<DateTime<Utc>>, i64) = sqlx::query_as(
        "SELECT lag_events, oldest_unapplied, head_position FROM read.lag($1, $2, $3)",
    )
    .bind(stream_type)
    .bind(transaction_id)
    .bind(position)
    .fetch_one(&state.pool)
    .await
    .map_err(db_problem)?;
    let lag_seconds = oldest.map_or(0.0, |t| {
        (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
    });
    metrics::gauge!("projection_lag_events", "projection" => name.to_owned()).set(lag as f64);
    metrics::gauge!("projection_lag_seconds", "projection" => name.to_owned()).set(lag_seconds);
    Ok(json!({
        "name": name,
        "serving_version": serving,
        "rebuilding_version": building,
        "checkpoint": { "transaction_id": transaction_id, "position": position },
        "events_applied": events,
        "head_position": head,
        "lag_events": lag,
        "lag_seconds": lag_seconds,
    }))
}
