//! Where each projection's serving (and building) version lives.
//!
//! Postgres projections keep each version in a schema of its own (`read_products_v3`); Redis
//! projections in a key prefix (`<prefix>:carts:v3:`). `read.projections` names the version
//! that serves; the query API and the live projectors read it in every transaction (`FOR SHARE`
//! in projectors, so a switch — which takes the row `FOR UPDATE` — waits for in-flight batches
//! and every later batch writes to the new version).

use std::collections::HashMap;

use eventstore::{EventStore, RecordedEvent};
use sqlx::{Acquire, PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::copy::CopyRows;
use crate::error::ProjectionError;
use crate::ordering::{fold_streams, new_events_by_stream, streams_to_load, whole_streams};

/// A projection's name as in `read.projections`.
pub type ProjectionName = &'static str;

pub use platform::read_models::{CARTS, ORDERS, PRODUCTS, schema, serving_version};

/// The versions a live projector must write: the serving one, and a building one if a rebuild
/// runs (so the rebuild's copy stays current while it catches up). Locks the row `FOR SHARE`.
pub async fn live_versions(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
) -> Result<(i32, Option<i32>), sqlx::Error> {
    sqlx::query_as(
        "SELECT serving_version, building_version FROM read.projections WHERE name = $1 FOR SHARE",
    )
    .bind(projection)
    .fetch_one(&mut **tx)
    .await
}

/// Records how far lane `lane` of a projection version has got, in the caller's transaction.
/// A lane is a partition of the live projector's work (0 without partitions, and for
/// rebuilds); each has its own row, so partitions never wait on one another's.
pub async fn record_progress(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
    version: i32,
    lane: u16,
    last: eventstore::LogPosition,
    events: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO read.progress (projection, version, lane, transaction_id, position, events, updated_at) \
         VALUES ($1, $2, $6, $3, $4, $5, now()) \
         ON CONFLICT (projection, version, lane) DO UPDATE SET \
           (transaction_id, position) = (SELECT CASE WHEN forward THEN EXCLUDED.transaction_id \
                                                     ELSE read.progress.transaction_id END, \
                                                CASE WHEN forward THEN EXCLUDED.position \
                                                     ELSE read.progress.position END \
                                         FROM (SELECT (EXCLUDED.transaction_id, EXCLUDED.position) \
                                                    > (read.progress.transaction_id, read.progress.position) \
                                                    AS forward) f), \
           events = read.progress.events + EXCLUDED.events, updated_at = now()",
    )
    .bind(projection)
    .bind(version)
    .bind(last.transaction_id as i64)
    .bind(last.position)
    .bind(events as i64)
    .bind(lane as i16)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A projection kept in Postgres tables: one view (a row, with whatever it embeds) per stream,
/// folded from that stream's events. [`apply_to`] does the rest the same way for all of them.
pub trait PgProjection {
    const NAME: ProjectionName;
    /// The stream type whose events it reads.
    const STREAM_TYPE: &'static str;
    /// A stream's view.
    type View: Send + Sync;

    /// The stream version a view has folded in.
    fn version(view: &Self::View) -> u64;

    /// Folds one event into a stream's view (`None` before the stream's first event; `None`
    /// after it for events of something never created).
    fn apply(
        view: Option<Self::View>,
        event: &RecordedEvent,
    ) -> Result<Option<Self::View>, ProjectionError>;

    /// The stored views of these streams (by the UUID in their stream ids).
    fn load(
        tx: &mut Transaction<'_, Postgres>,
        schema: &str,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<HashMap<Uuid, Self::View>, sqlx::Error>> + Send;

    /// Writes views in one statement, each only over an older version of itself; returns the
    /// ids of the views written.
    fn upsert(
        tx: &mut Transaction<'_, Postgres>,
        schema: &str,
        views: &[Self::View],
    ) -> impl Future<Output = Result<Vec<Uuid>, sqlx::Error>> + Send;

    /// The table views are kept in.
    const TABLE: &'static str;
    /// Its columns, comma-separated, in the order [`PgProjection::copy_row`] writes them.
    const COLUMNS: &'static str;

    /// Appends a view as a row of [`PgProjection::COLUMNS`].
    fn copy_row(view: &Self::View, rows: &mut CopyRows) -> Result<(), serde_json::Error>;
}

/// Applies events to one version of `P`'s tables: loads the views the batch continues, folds
/// what is new for each stream (filling gaps from the store), writes the changed views. Returns
/// how many events took effect.
pub async fn apply_to<P: PgProjection>(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    store: &EventStore,
    events: &[RecordedEvent],
) -> Result<u64, ProjectionError> {
    let ids = streams_to_load(events, P::STREAM_TYPE);
    let views = P::load(tx, schema, &ids).await?;
    let plan = new_events_by_stream(store, events, P::STREAM_TYPE, |id| {
        views.get(&id).map_or(0, P::version)
    })
    .await?;
    let folded = fold_streams(plan, views, P::apply)?;
    let written = P::upsert(tx, schema, &folded.views).await?;
    Ok(folded.applied(written))
}

/// Applies a rebuild's batch (whole streams, from [`EventStore::scan_streams_of_type`]) to the
/// version being built: folds each stream from its first event and inserts the views with one
/// binary COPY ([`crate::copy`]). The live projector writes to the same version meanwhile, so a
/// view may be stored already; then the COPY fails on its primary key and the batch is written
/// with the checked upsert instead, which keeps whichever view is newer. Returns how many events
/// took effect.
pub async fn fill<P: PgProjection>(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    store: &EventStore,
    events: &[RecordedEvent],
) -> Result<u64, ProjectionError> {
    let Some(plan) = whole_streams(events, P::STREAM_TYPE) else {
        // Not whole streams: only the checked path can continue a stored view.
        return apply_to::<P>(tx, schema, store, events).await;
    };
    let folded = fold_streams(plan, HashMap::new(), P::apply)?;
    // A savepoint, so that a failed COPY leaves the transaction usable for the fallback.
    let mut attempt = tx.begin().await?;
    let target = format!("\"{schema}\".{} ({})", P::TABLE, P::COLUMNS);
    let fields = P::COLUMNS.split(',').count();
    match CopyRows::copy(&mut attempt, &target, fields, &folded.views, P::copy_row).await {
        Ok(_) => {
            attempt.commit().await?;
            Ok(folded.applied_to_every_view())
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            attempt.rollback().await?;
            metrics::counter!("projection_rebuild_copy_fallbacks_total", "projection" => P::NAME)
                .increment(1);
            let written = P::upsert(tx, schema, &folded.views).await?;
            Ok(folded.applied(written))
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies a live batch to the serving version (and a building one, if a rebuild runs), with
/// the projection's progress, in one transaction. Returns how many events were new.
pub async fn apply_live<P: PgProjection>(
    pool: &PgPool,
    store: &EventStore,
    lane: u16,
    events: &[RecordedEvent],
) -> Result<u64, ProjectionError> {
    let events: Vec<RecordedEvent> = events
        .iter()
        .filter(|e| e.stream_type() == P::STREAM_TYPE)
        .cloned()
        .collect();
    let Some(last) = events.iter().map(RecordedEvent::log_position).max() else {
        return Ok(0);
    };
    let mut tx = pool.begin().await?;
    let (serving, building) = live_versions(&mut tx, P::NAME).await?;
    let mut applied = 0;
    for version in std::iter::once(serving).chain(building) {
        let n = apply_to::<P>(&mut tx, &schema(P::NAME, version), store, &events).await?;
        record_progress(&mut tx, P::NAME, version, lane, last, n).await?;
        if version == serving {
            applied = n;
        }
    }
    tx.commit().await?;
    Ok(applied)
}
