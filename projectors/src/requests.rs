//! Rebuilds asked for over HTTP (`POST /v1/admin/projections/{name}/rebuild`, the console).
//!
//! The query API records the request in `read.rebuilds` ([`request`]); every projectors replica
//! runs a [`RebuildRequests`] worker that looks for open requests and runs them with
//! [`crate::rebuild::rebuild`]. The rebuild's advisory lock decides which replica runs one (the
//! others, and `till projections rebuild`, find it taken and leave the request alone); the runner
//! writes how far it got to the request's row, so every query API replica can show the progress.
//! A replica that dies mid-rebuild releases the lock with its connection, and the next replica
//! to look starts the request over (the unfinished version is dropped, the old one served
//! throughout). A request stays open until it is rebuilt or fails for a reason other than the
//! lock: one asked for while the CLI rebuilds the same projection runs after it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use eventstore::EventStore;
use platform::read_models::CartKeys;
use redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::rebuild::{BATCH, rebuild};

/// One rebuild request and how far it got, as `GET /v1/admin/projections` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RebuildRequest {
    pub id: Uuid,
    pub projection: String,
    /// The admin who asked (the token's subject).
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// When a replica started it (again, after a replica died running it); `None` while it waits.
    pub started_at: Option<DateTime<Utc>>,
    /// The projection's events in the store when it started.
    pub events_total: Option<i64>,
    pub events_done: i64,
    pub finished_at: Option<DateTime<Utc>>,
    /// `rebuilt` or `failed` once finished.
    pub outcome: Option<String>,
    /// The version it built (serving once rebuilt).
    pub version: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
}

impl RebuildRequest {
    /// `requested`, `running`, `rebuilt` or `failed`.
    pub fn state(&self) -> &str {
        match (&self.outcome, self.started_at) {
            (Some(outcome), _) => outcome,
            (None, Some(_)) => "running",
            (None, None) => "requested",
        }
    }
}

/// What asking for a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub enum Requested {
    /// A new request, waiting for a projectors replica.
    New(RebuildRequest),
    /// One was open already (requested or running): it stands, no second one is queued.
    AlreadyOpen(RebuildRequest),
}

const COLUMNS: &str = "id, projection, requested_by, requested_at, started_at, events_total, \
                       events_done, finished_at, outcome, version, error";

/// Asks for a rebuild of `projection` (a name the caller checked), unless one is open.
pub async fn request(
    pool: &PgPool,
    projection: &str,
    requested_by: &str,
) -> Result<Requested, ProjectionError> {
    // The open one may finish between the insert and the read; then the insert succeeds.
    loop {
        let inserted: Option<RebuildRequest> = sqlx::query_as(&format!(
            "INSERT INTO read.rebuilds (id, projection, requested_by) VALUES ($1, $2, $3) \
             ON CONFLICT (projection) WHERE finished_at IS NULL DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(projection)
        .bind(requested_by)
        .fetch_optional(pool)
        .await?;
        if let Some(new) = inserted {
            return Ok(Requested::New(new));
        }
        let open: Option<RebuildRequest> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM read.rebuilds WHERE projection = $1 AND finished_at IS NULL"
        ))
        .bind(projection)
        .fetch_optional(pool)
        .await?;
        if let Some(open) = open {
            return Ok(Requested::AlreadyOpen(open));
        }
    }
}

/// The newest rebuild request of `projection`, open or finished.
pub async fn latest(
    pool: &PgPool,
    projection: &str,
) -> Result<Option<RebuildRequest>, ProjectionError> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read.rebuilds WHERE projection = $1 \
         ORDER BY requested_at DESC LIMIT 1"
    ))
    .bind(projection)
    .fetch_optional(pool)
    .await?)
}

/// Runs the open rebuild requests, on every projectors replica.
#[derive(Clone)]
pub struct RebuildRequests {
    pub store: EventStore,
    pub redis: ConnectionManager,
    pub keys: CartKeys,
    /// How often open requests are looked for.
    pub interval: Duration,
}

impl std::fmt::Debug for RebuildRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebuildRequests")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// How often a running rebuild writes its progress.
const REPORT_EVERY: Duration = Duration::from_millis(250);

impl RebuildRequests {
    /// Runs until `shutdown`; a failed look (Postgres away) is tried again next tick.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.run_open(&shutdown).await {
                tracing::warn!(error = %e, "could not run the requested rebuilds");
            }
        }
    }

    async fn run_open(&mut self, shutdown: &CancellationToken) -> Result<(), ProjectionError> {
        let open: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, projection FROM read.rebuilds WHERE finished_at IS NULL \
             ORDER BY requested_at",
        )
        .fetch_all(self.store.pool())
        .await?;
        for (id, projection) in open {
            if shutdown.is_cancelled() {
                break;
            }
            self.run_one(id, &projection, shutdown).await?;
        }
        Ok(())
    }

    /// Runs request `id` if no one else is rebuilding `projection`, and records the outcome.
    async fn run_one(
        &mut self,
        id: Uuid,
        projection: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectionError> {
        let pool = self.store.pool().clone();
        let Some(known) = platform::read_models::projection(projection) else {
            return finish_failed(&pool, id, "no such projection").await;
        };
        let total = self.store.count_events_of_type(known.stream_type).await?;
        let (progress, reports) = watch::channel(None);
        let reporter = tokio::spawn(report_progress(pool.clone(), id, total, reports));
        let rebuilt = rebuild(
            &self.store,
            &mut self.redis,
            &self.keys,
            projection,
            BATCH,
            |done| {
                progress.send_replace(Some(done));
            },
            || shutdown.is_cancelled(),
        )
        .await;
        drop(progress);
        let _ = reporter.await;
        match rebuilt {
            Ok(Some(done)) => {
                tracing::info!(
                    projection,
                    version = done.version,
                    events = done.events,
                    "requested rebuild finished"
                );
                sqlx::query(
                    "UPDATE read.rebuilds SET finished_at = now(), outcome = 'rebuilt', \
                     version = $2, events_done = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(done.version)
                .bind(i64::try_from(done.events).unwrap_or(i64::MAX))
                .execute(&pool)
                .await?;
                Ok(())
            }
            // Shutting down: the request waits for the next replica (or this one restarted).
            Ok(None) => {
                sqlx::query(
                    "UPDATE read.rebuilds SET started_at = NULL, events_done = 0 WHERE id = $1",
                )
                .bind(id)
                .execute(&pool)
                .await?;
                Ok(())
            }
            // Another replica (or the CLI, or the carts healer) holds the lock: theirs to run.
            Err(ProjectionError::RebuildRunning(_)) => Ok(()),
            Err(e) if e.is_transient() && shutdown.is_cancelled() => Ok(()),
            Err(e) => {
                tracing::warn!(projection, error = %e, "requested rebuild failed");
                finish_failed(&pool, id, &platform::problem::error_chain(&e)).await
            }
        }
    }
}

/// Writes a running rebuild's progress to its row: `started_at` on the first report (the lock
/// is held), then `events_done` at most every [`REPORT_EVERY`], until the rebuild ends.
async fn report_progress(
    pool: PgPool,
    id: Uuid,
    total: i64,
    mut reports: watch::Receiver<Option<u64>>,
) {
    let mut started = false;
    while reports.changed().await.is_ok() {
        let Some(done) = *reports.borrow_and_update() else {
            continue;
        };
        let done = i64::try_from(done).unwrap_or(i64::MAX);
        let written = if started {
            sqlx::query("UPDATE read.rebuilds SET events_done = $2 WHERE id = $1")
                .bind(id)
                .bind(done)
                .execute(&pool)
                .await
        } else {
            sqlx::query(
                "UPDATE read.rebuilds SET started_at = now(), events_total = $2, \
                 events_done = $3 WHERE id = $1",
            )
            .bind(id)
            .bind(total)
            .bind(done)
            .execute(&pool)
            .await
        };
        match written {
            Ok(_) => started = true,
            Err(e) => tracing::debug!(error = %e, "could not record a rebuild's progress"),
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

async fn finish_failed(pool: &PgPool, id: Uuid, error: &str) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE read.rebuilds SET finished_at = now(), outcome = 'failed', error = $2 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}
