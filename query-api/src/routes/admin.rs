//! The projections, for operators (admin only):
//! - `GET /v1/admin/projections` (and `…/{name}`): the serving version, any rebuild in
//!   progress, how far it has got (checkpoint) against the head of its events, the lag in events
//!   and seconds, and the newest rebuild asked for over HTTP with its progress;
//! - `POST /v1/admin/projections/{name}/rebuild`: asks for a rebuild without downtime. The
//!   request is recorded (`projectors::requests`) and a projectors replica runs it; this API
//!   never rebuilds itself, so its connections stay free for reads.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use platform::identity::Admin;
use platform::problem::Problem;
use platform::read_models::{PROJECTIONS, Projection, Storage, projection_names};
use projectors::requests::{RebuildRequest, Requested};
use serde_json::{Value, json};

use crate::docs::{ProjectionList, ProjectionStatus, RebuildView};
use crate::{AppState, db_problem, redis_problem};

fn known(name: &str) -> Result<&'static Projection, Problem> {
    platform::read_models::projection(name).ok_or_else(|| {
        Problem::not_found(
            "projection-not-found",
            format!(
                "no projection named {name:?}; there are {}",
                projection_names()
            ),
        )
    })
}

fn projection_problem(e: projectors::ProjectionError) -> Problem {
    match e {
        projectors::ProjectionError::Database(e) => db_problem(e),
        other => Problem::internal(&other),
    }
}

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

#[utoipa::path(
    get,
    path = "/v1/admin/projections/{name}",
    tag = "operations",
    summary = "One projection: serving version, checkpoint, lag and its newest rebuild (admin)",
    params(("name" = String, Path, description = "products, orders or carts")),
    responses(
        (status = 200, description = "the projection", body = ProjectionStatus),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such projection", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn projection(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let projection = known(&name)?;
    Ok(axum::Json(projection_status(&state, projection).await?).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/admin/projections/{name}/rebuild",
    tag = "operations",
    summary = "Rebuild a projection from the event store without downtime (admin)",
    description = "Records the request and answers at once; a projectors replica runs it while \
                   the current version keeps serving, then switches. Follow it at \
                   `GET /v1/admin/projections/{name}` (`rebuild`). One rebuild per projection \
                   at a time: asking while one is open is a 409.",
    params(("name" = String, Path, description = "products, orders or carts")),
    responses(
        (status = 202, description = "requested", body = RebuildView,
         headers(("Location" = String, description = "the projection's status"))),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such projection", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a rebuild of it is already requested or running", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rebuild(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let projection = known(&name)?;
    let requested = projectors::requests::request(&state.pool, projection.name, &admin.user_id)
        .await
        .map_err(projection_problem)?;
    let location = format!("/v1/admin/projections/{}", projection.name);
    match requested {
        Requested::New(request) => Ok((
            StatusCode::ACCEPTED,
            [(header::LOCATION, location)],
            axum::Json(rebuild_view(&request)),
        )
            .into_response()),
        Requested::AlreadyOpen(open) => Err(Problem::new(
            StatusCode::CONFLICT,
            "rebuild-in-progress",
            "A rebuild is already under way",
        )
        .with_detail(format!(
            "a rebuild of {} was requested by {} at {} and is {}; follow it at {location}",
            projection.name,
            open.requested_by,
            open.requested_at.to_rfc3339(),
            open.state()
        ))),
    }
}

/// A rebuild request as the API shows it.
fn rebuild_view(request: &RebuildRequest) -> Value {
    let events_per_second = request.started_at.map(|started| {
        let end = request.finished_at.unwrap_or_else(Utc::now);
        let seconds = (end - started).num_milliseconds().max(1) as f64 / 1000.0;
        (request.events_done as f64 / seconds).round()
    });
    json!({
        "id": request.id,
        "state": request.state(),
        "requested_by": request.requested_by,
        "requested_at": request.requested_at,
        "started_at": request.started_at,
        "finished_at": request.finished_at,
        "events_total": request.events_total,
        "events_done": request.events_done,
        "events_per_second": events_per_second,
        "version": request.version,
        "error": request.error,
    })
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
    let rebuild = projectors::requests::latest(&state.pool, name)
        .await
        .map_err(projection_problem)?;
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
        "rebuild": rebuild.as_ref().map(rebuild_view),
    }))
}
