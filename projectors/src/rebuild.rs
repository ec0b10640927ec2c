//! Rebuilding a projection from the event store without downtime.
//!
//! 1. **Prepare**: a new version (schema or key prefix) is created empty and recorded as
//!    `building_version`. From then on the live projector writes every event to both the
//!    serving and the building version, so nothing that arrives during the rebuild is missed.
//! 2. **Fill**: the event store is read directly (not the bus), the projection's stream type
//!    only, stream by stream in large batches (a projection needs each stream's events in order,
//!    not the global order, and the stream index holds a type's rows together); the next batch
//!    is read while this one is folded in memory and written in bulk (one pipeline for Redis).
//!    A batch holds whole streams, so each view is folded from its stream's first event in one
//!    batch, and a Postgres batch goes in with one binary COPY ([`crate::tables::fill`]); should
//!    the live projector have stored one of its views already, the batch is written with the
//!    version-checked upsert instead. Rows only ever move to a higher stream version, so the
//!    rebuild and the live projector can write the same rows in any order.
//!
//!    Nothing falls between the two: an event committed before the fill reads its stream is
//!    read by the fill, and one committed later reaches the live projector after step 1, which
//!    writes it to the new version too.
//!    A Postgres version is filled without its secondary (non-unique) indexes, which are built
//!    in one pass each once the fill is done: one sort instead of a random index insert per row
//!    (a GIN index on product search text most of all). Only the primary key, which the writes'
//!    `ON CONFLICT` needs, is kept up to date throughout.
//! 3. **Switch**: once a read finds nothing more, one transaction makes the new version the
//!    serving one and hands it the old version's place in the global log (the new version holds
//!    everything the old one does); readers use it from their next request, the live projector
//!    from its next batch. The old version is then dropped.
//!
//! Interrupted anywhere, the old version keeps serving; the next run drops the unfinished
//! version and starts clean.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use eventstore::{EventStore, LogPosition, RecordedEvent, StoreError};
use futures::StreamExt;
use platform::read_models::{CartKeys, PRODUCTS, Projection, Storage, schema};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::error::ProjectionError;
use crate::orders::Orders;
use crate::products::Products;
use crate::tables::{fill, record_progress};

/// Events read from the store per batch, unless the caller says otherwise.
pub const BATCH: i64 = 10_000;

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebuilt {
    pub projection: &'static str,
    pub version: i32,
    pub events: u64,
    /// From the start until the new version served (dropping the old one comes after).
    pub elapsed: Duration,
}

impl Rebuilt {
    pub fn per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Where a rebuild writes.
enum Target {
    Postgres {
        schema: String,
        projection: &'static str,
    },
    Redis {
        redis: ConnectionManager,
        keys: CartKeys,
    },
}

/// Batches applied at once. Batches are read in stream order, so two in flight share at most
/// the stream at their boundary, and rows that only move to higher versions (gaps filled from
/// the store) keep that correct in whichever order they commit. Three keep this machine's two
/// cores busy while one waits on Postgres or Redis (measured: two left a quarter idle, four
/// only queued).
const APPLIERS: usize = 3;

/// Rebuilds `projection`. `progress` is told the events done so far (for a progress bar);
/// `stop` is checked between batches (Ctrl-C): when it returns true the rebuild stops, the old
/// version still serving. One rebuild of a projection runs at a time, whoever starts it (an
/// operator, the projectors healing a lost view): a second would drop the version the first is
/// filling, so it is refused ([`ProjectionError::RebuildRunning`]). The lock is a Postgres
/// advisory lock, released when the rebuild ends or its connection dies with the process.
pub async fn rebuild(
    store: &EventStore,
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    projection: &str,
    batch_size: i64,
    progress: impl FnMut(u64),
    stop: impl Fn() -> bool,
) -> Result<Option<Rebuilt>, ProjectionError> {
    let projection = platform::read_models::projection(projection)
        .ok_or_else(|| ProjectionError::UnknownProjection(projection.to_owned()))?;
    let lock_key = lock_key(projection.name);
    let mut lock = store.pool().acquire().await?;
    let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&lock_key)
        .fetch_one(&mut *lock)
        .await?;
    if !won {
        return Err(ProjectionError::RebuildRunning(projection.name.to_owned()));
    }
    let rebuilt = rebuild_alone(store, redis, keys, projection, batch_size, progress, stop).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&lock_key)
        .execute(&mut *lock)
        .await;
    if unlocked.is_err() {
        // Never hand a connection that may still hold the lock back to the pool.
        let _ = lock.close().await;
    }
    rebuilt
}

/// The name of the advisory lock a rebuild of `projection` holds (hashed by Postgres).
pub fn lock_key(projection: &str) -> String {
    format!("tillstream:rebuild:{projection}")
}

/// [`rebuild`], once it holds the projection's rebuild lock.
async fn rebuild_alone(
    store: &EventStore,
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    projection: &'static Projection,
    batch_size: i64,
    mut progress: impl FnMut(u64),
    stop: impl Fn() -> bool,
) -> Result<Option<Rebuilt>, ProjectionError> {
    let (name, stream_type) = (projection.name, projection.stream_type);
    let started = Instant::now();
    progress(0); // the lock is held: this rebuild is under way
    let pool = store.pool();
    let (version, deferred_indexes) = prepare(pool, redis, keys, projection).await?;
    let target = match projection.storage {
        Storage::Redis => Target::Redis {
            redis: redis.clone(),
            keys: keys.clone(),
        },
        Storage::Postgres => Target::Postgres {
            schema: schema(name, version),
            projection: name,
        },
    };
    // The next batch is read while earlier ones are applied, so reading and writing run side by
    // side instead of taking turns.
    let batches = read_ahead(
        store.clone(),
        stream_type,
        usize::try_from(batch_size).unwrap_or(1).max(1),
    );
    // On an interruption or an error no new batch starts, but those in flight finish: a
    // transaction dropped half-way would keep its row locks until its connection is next used.
    // Atomic rather than a `Cell`, so the rebuild can run as a spawned task (the healer's).
    let halted = std::sync::atomic::AtomicBool::new(false);
    let mut applied = std::pin::pin!(
        futures::stream::unfold(batches, |mut batches| async move {
            batches.recv().await.map(|batch| (batch, batches))
        })
        .take_while(|_| std::future::ready(!halted.load(Relaxed)))
        .map(|batch| apply_batch(store, &target, version, batch))
        .buffer_unordered(APPLIERS)
    );
    let mut done = 0u64;
    let mut failure = None;
    while let Some(events) = applied.next().await {
        match events {
            Ok(events) => {
                done += events;
                metrics::counter!("projection_rebuild_events_total", "projection" => projection.name)
                    .increment(events);
                progress(done);
                if stop() {
                    halted.store(true, Relaxed);
                }
            }
            Err(e) => {
                failure.get_or_insert(e);
                halted.store(true, Relaxed);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if halted.load(Relaxed) {
        return Ok(None); // stopped
    }
    let filled = started.elapsed();
    build_indexes(pool, &deferred_indexes).await?;
    tracing::info!(
        projection = name,
        version,
        events = done,
        fill_ms = filled.as_millis() as u64,
        indexes_ms = (started.elapsed() - filled).as_millis() as u64,
        "filled; switching"
    );
    let old = switch(pool, name, version).await?;
    if let (Storage::Redis, Some(old)) = (projection.storage, old) {
        take_over_cart_position(redis, keys, old, version).await?;
    }
    let elapsed = started.elapsed();
    // Readers pick the serving version per request; give those in flight a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    match (projection.storage, old) {
        (_, None) => {}
        (Storage::Redis, Some(old)) => {
            drop_redis(redis, keys, old).await?;
            crate::heal::forget(pool, old).await?;
        }
        (_, Some(old)) => drop_postgres(pool, name, old).await?,
    }
    Ok(Some(Rebuilt {
        projection: name,
        version,
        events: done,
        elapsed,
    }))
}

/// Applies one batch to the version being built; returns how many events it held.
async fn apply_batch(
    store: &EventStore,
    target: &Target,
    version: i32,
    batch: Result<Vec<RecordedEvent>, StoreError>,
) -> Result<u64, ProjectionError> {
    let batch = batch?;
    match target {
        Target::Postgres { schema, projection } => {
            let mut tx = store.pool().begin().await?;
            // A crash loses at most the last batches, which is fine: an unfinished version is
            // rebuilt from scratch anyway. The switch commits durably.
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
            let n = match *projection {
                PRODUCTS => fill::<Products>(&mut tx, schema, store, &batch).await?,
                _ => fill::<Orders>(&mut tx, schema, store, &batch).await?,
            };
            // Counted only: the version's place in the global log is the live projector's to
            // record (and the old version's, at the switch); START never moves it.
            record_progress(&mut tx, projection, version, 0, LogPosition::START, n).await?;
            tx.commit().await?;
        }
        Target::Redis { redis, keys } => {
            let mut redis = redis.clone();
            let n = crate::carts::apply_to(&mut redis, keys, version, store, &batch)
                .await?
                .events;
            let _: () = redis::cmd("HINCRBY")
                .arg(keys.progress(version))
                .arg("events")
                .arg(n)
                .query_async(&mut redis)
                .await?;
        }
    }
    Ok(batch.len() as u64)
}

/// Reads the events of one stream type stream by stream in batches, in a task of its own so that
/// reading goes on while batches are applied. A read error is passed on as the last item; a
/// consumer that goes away (an interrupted rebuild) stops the read at its next batch.
fn read_ahead(
    store: EventStore,
    stream_type: &'static str,
    batch_size: usize,
) -> tokio::sync::mpsc::Receiver<Result<Vec<RecordedEvent>, StoreError>> {
    let (batches, receiver) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let read = store
            .scan_streams_of_type(stream_type, batch_size, |batch| {
                let batches = batches.clone();
                async move { batches.send(Ok(batch)).await.is_ok() }
            })
            .await;
        if let Err(e) = read {
            let _ = batches.send(Err(e)).await;
        }
    });
    receiver
}

/// Creates the version to build (dropping an unfinished one first) and records it; returns it
/// with the definitions of the secondary indexes left out until the fill is done.
async fn prepare(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    projection: &'static Projection,
) -> Result<(i32, Vec<String>), ProjectionError> {
    let name = projection.name;
    let (serving, building): (i32, Option<i32>) = sqlx::query_as(
        "SELECT serving_version, building_version FROM read.projections WHERE name = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await?;
    let version = building.unwrap_or(serving + 1).max(serving + 1);
    let mut deferred_indexes = Vec::new();
    if projection.storage == Storage::Redis {
        drop_redis(redis, keys, version).await?;
        crate::heal::mark(pool, redis, keys, version).await?;
    } else {
        drop_postgres(pool, name, version).await?;
        let target = schema(name, version);
        sqlx::query(&format!("SELECT read.create_{name}_tables($1)"))
            .bind(&target)
            .execute(pool)
            .await?;
        deferred_indexes = drop_secondary_indexes(pool, &target).await?;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM read.progress WHERE projection = $1 AND version = $2")
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE read.projections SET building_version = $2 WHERE name = $1")
        .bind(name)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(projection = name, version, "rebuilding into a new version");
    Ok((version, deferred_indexes))
}

/// Drops the non-unique indexes of a schema's tables; returns their definitions, for
/// [`build_indexes`].
async fn drop_secondary_indexes(pool: &PgPool, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) \
         FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid \
         WHERE t.relnamespace = $1::regnamespace AND NOT i.indisunique",
    )
    .bind(schema)
    .fetch_all(pool)
    .await?;
    for (index, _) in &indexes {
        sqlx::query(&format!("DROP INDEX {index}"))
            .execute(pool)
            .await?;
    }
    Ok(indexes
        .into_iter()
        .map(|(_, definition)| definition)
        .collect())
}

/// Builds the indexes [`drop_secondary_indexes`] left out (which also records the tables' row
/// counts for the planner). The live projector's writes to this version wait for each build, a
/// fraction of a second per 100,000 rows.
async fn build_indexes(pool: &PgPool, definitions: &[String]) -> Result<(), sqlx::Error> {
    for definition in definitions {
        sqlx::query(definition).execute(pool).await?;
    }
    Ok(())
}

/// Makes `version` the serving one; returns the version it replaced.
async fn switch(pool: &PgPool, name: &str, version: i32) -> Result<Option<i32>, ProjectionError> {
    let mut tx = pool.begin().await?;
    let old: i32 = sqlx::query_scalar(
        "SELECT serving_version FROM read.projections WHERE name = $1 FOR UPDATE",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE read.projections SET serving_version = $2, building_version = NULL, switched_at = now() \
         WHERE name = $1",
    )
    .bind(name)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    // The new version holds everything the old one does, so it takes over the old one's place
    // in the global log (unless the live projector has taken it further already).
    sqlx::query(
        "INSERT INTO read.progress AS new (projection, version, lane, transaction_id, position) \
         SELECT projection, $3, lane, transaction_id, position FROM read.progress \
         WHERE projection = $1 AND version = $2 \
         ON CONFLICT (projection, version, lane) DO UPDATE \
         SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position \
         WHERE (EXCLUDED.transaction_id, EXCLUDED.position) > (new.transaction_id, new.position)",
    )
    .bind(name)
    .bind(old)
    .bind(version)
    .execute(&mut *tx)
    .await?;
    // Delivered on commit: query APIs forget the serving version they remembered.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(platform::read_models::SWITCHED_CHANNEL)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(projection = name, from = old, to = version, "switched");
    Ok((old != version).then_some(old))
}

/// The Redis side of the position hand-over in [`switch`], for carts.
async fn take_over_cart_position(
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    old: i32,
    new: i32,
) -> Result<(), ProjectionError> {
    let _: i64 = redis::Script::new(TAKE_OVER_POSITION)
        .key(keys.progress(old))
        .key(keys.progress(new))
        .invoke_async(redis)
        .await?;
    Ok(())
}

/// Copies `transaction_id` and `position` from KEYS[1] to KEYS[2] unless KEYS[2] is further.
const TAKE_OVER_POSITION: &str = r"
local function at(key)
  local p = redis.call('HMGET', key, 'transaction_id', 'position')
  return tonumber(p[1] or '0'), tonumber(p[2] or '0')
end
local old_tx, old_pos = at(KEYS[1])
local new_tx, new_pos = at(KEYS[2])
if old_tx > new_tx or (old_tx == new_tx and old_pos > new_pos) then
  redis.call('HSET', KEYS[2], 'transaction_id', old_tx, 'position', old_pos)
  return 1
end
return 0
";

async fn drop_postgres(pool: &PgPool, name: &str, version: i32) -> Result<(), ProjectionError> {
    sqlx::query(&format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        schema(name, version)
    ))
    .execute(pool)
    .await?;
    Ok(())
}

async fn drop_redis(
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    version: i32,
) -> Result<(), ProjectionError> {
    for pattern in keys.version_patterns(version) {
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(redis)
                .await?;
            if !found.is_empty() {
                let _: () = redis::cmd("UNLINK").arg(found).query_async(redis).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}
