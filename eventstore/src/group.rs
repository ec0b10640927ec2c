//! Group commit: concurrent appends to different streams share one statement and one commit.
//!
//! Alone, every append is its own statement and its own transaction, and this Postgres commits a
//! few single-row transactions per millisecond; a 100-row statement commits many times more rows
//! in the same time. With [`EventStore::with_group_commit`], [`EventStore::append`] and
//! [`EventStore::append_streams`] hand their append to a queue instead. A writer task takes
//! whatever is waiting — up to [`GroupCommit::max_batch`] appends, never two on one stream (the
//! second waits for the next batch) — and inserts all of it with one statement in one
//! transaction ([`GROUP_SQL`]). Nothing waits for a batch to fill: an append that arrives alone
//! goes alone, so light load pays one channel hop; under load the batches grow by themselves,
//! because appends queue while the previous batch commits.
//!
//! Each append in a batch keeps its own meaning:
//! - its expectations are checked per stream as before; one that fails makes only that append
//!   write nothing (the statement leaves its rows out), and it is then answered by appending it
//!   alone: [`AppendError::WrongExpectedVersion`] with the stream's actual version, or, for a
//!   retry of an append stored already, that append's outcome;
//! - a multi-stream append is still all or nothing (its streams are one group);
//! - a writer outside the batch that took one of its streams' next version first fails the
//!   statement as a whole; it runs once more, when the stream's new head fails that append's
//!   expectation and leaves it out;
//! - anything else that fails the statement as a whole — an event id stored already (an
//!   idempotent retry), an event Postgres refuses, a lost connection, a second lost race — makes
//!   every append of the batch run again on its own, the ungrouped way, which answers each
//!   exactly as without group commit (a retry finds its events stored, a racer's loser sees the
//!   conflict, the bad event fails alone);
//! - appends inside a caller's transaction ([`EventStore::append_in`],
//!   [`EventStore::append_streams_in`]: `Idempotency-Key` records) are never grouped: they
//!   commit with the caller's other writes.
//!
//! The global log is unaffected: a batch is one transaction, which the gap-safe reader treats
//! like any other.
//!
//! Stream loads ([`EventStore::load`], the "load" of load → decide → append) are grouped the
//! same way: a reader task takes every load waiting and reads all their streams with one
//! statement (each stream on its index from the version its caller's state ends at), then
//! hands each its own events. A load
//! queued after an append was answered reads that append: the query starts later.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use sqlx::postgres::PgConnection;
use tokio::sync::{mpsc, oneshot};

use crate::error::{AppendError, StoreError};
use crate::model::{Appended, ExpectedVersion, RecordedEvent};
use crate::multi::StreamAppend;
use crate::store::EventStore;

/// How appends are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    /// Appends per batch at most.
    pub max_batch: usize,
}

/// One writer commits the batches: on this project's 2-core reference machine
/// `till bench commands` measured 10.4k commands/s with one writer (15 appends per commit),
/// 9.9k with two and 9.0k with four (batches of 8.5 and 4.7) — a second writer mostly split the
/// batches — and two writers could have two appends on one stream in flight at once.
impl Default for GroupCommit {
    fn default() -> Self {
        Self { max_batch: 64 }
    }
}

/// How much grouping happened, for benchmarks and dashboards.
#[derive(Debug, Default)]
pub struct GroupStats {
    batches: AtomicU64,
    appends: AtomicU64,
    raced: AtomicU64,
    rerun: AtomicU64,
}

impl GroupStats {
    /// Batches committed (a batch of one included).
    pub fn batches(&self) -> u64 {
        self.batches.load(Relaxed)
    }
    /// Appends that went through the queue.
    pub fn appends(&self) -> u64 {
        self.appends.load(Relaxed)
    }
    /// Batches whose statement lost a race to a writer outside the batch, and ran again.
    pub fn raced(&self) -> u64 {
        self.raced.load(Relaxed)
    }
    /// Batches whose statement failed as a whole, so each append ran again alone.
    pub fn rerun(&self) -> u64 {
        self.rerun.load(Relaxed)
    }
}

/// One append waiting in the queue, and where its answer goes.
struct Job {
    writes: Vec<StreamAppend>,
    reply: oneshot::Sender<Result<Vec<Appended>, AppendError>>,
}

/// One stream load waiting in the queue.
struct Read {
    stream_id: String,
    after_version: u64,
    reply: oneshot::Sender<Result<Vec<RecordedEvent>, StoreError>>,
}

/// The queues' sending sides, held by the store.
#[derive(Debug)]
pub(crate) struct AppendQueue {
    jobs: mpsc::UnboundedSender<Job>,
    reads: mpsc::UnboundedSender<Read>,
    pub(crate) stats: Arc<GroupStats>,
}

impl AppendQueue {
    /// Starts the writer and the reader, appending and reading through `store` (ungrouped).
    /// They end when the queues' senders — the last grouped store clone — are dropped.
    pub(crate) fn start(store: EventStore, settings: GroupCommit) -> Self {
        let (jobs, waiting) = mpsc::unbounded_channel();
        let stats = Arc::new(GroupStats::default());
        tokio::spawn(write_batches(
            store.clone(),
            waiting,
            settings.max_batch.max(1),
            Arc::clone(&stats),
        ));
        let (reads, to_read) = mpsc::unbounded_channel();
        tokio::spawn(read_batches(store, to_read, settings.max_batch.max(1)));
        Self { jobs, reads, stats }
    }

    /// Queues a load of `stream_id`'s events after `after_version` and waits for them.
    pub(crate) async fn read(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let read = Read {
            stream_id: stream_id.to_owned(),
            after_version,
            reply,
        };
        self.reads
            .send(read)
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        answer
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
    }

    /// Queues `writes` and waits for their outcome.
    pub(crate) async fn append(
        &self,
        writes: Vec<StreamAppend>,
    ) -> Result<Vec<Appended>, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.stats.appends.fetch_add(1, Relaxed);
        self.jobs
            .send(Job { writes, reply })
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> AppendError {
    AppendError::Store(StoreError::Database(sqlx::Error::PoolClosed))
}

/// The writer: gathers a batch from the queue, commits it, answers, again. One writer, so
/// batches commit one after the other and no two appends on one stream are ever in flight from
/// the queue at once (within a batch the gathering keeps them apart).
async fn write_batches(
    store: EventStore,
    mut waiting: mpsc::UnboundedReceiver<Job>,
    max_batch: usize,
    stats: Arc<GroupStats>,
) {
    // An append on a stream the batch already had, kept for the start of the next one.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match waiting.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut batch = Vec::new();
        let mut streams: HashSet<String> = HashSet::new();
        add(first, &mut batch, &mut streams);
        while batch.len() < max_batch {
            let Ok(job) = waiting.try_recv() else { break };
            if job.writes.iter().any(|w| streams.contains(&w.stream_id)) {
                held = Some(job);
                break;
            }
            add(job, &mut batch, &mut streams);
        }
        stats.batches.fetch_add(1, Relaxed);
        commit_batch(&store, batch, &stats).await;
    }
}

/// The reader: takes every load waiting (up to `max_batch`), reads them with one statement,
/// answers each; a statement that fails has each load read again alone.
async fn read_batches(
    store: EventStore,
    mut waiting: mpsc::UnboundedReceiver<Read>,
    max_batch: usize,
) {
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            let Ok(read) = waiting.try_recv() else { break };
            batch.push(read);
        }
        if let [_] = batch.as_slice() {
            let read = batch.pop().expect("one read");
            let events = store.read_stream(&read.stream_id, read.after_version).await;
            let _ = read.reply.send(events);
            continue;
        }
        let streams: Vec<(&str, u64)> = batch
            .iter()
            .map(|r| (r.stream_id.as_str(), r.after_version))
            .collect();
        match store.read_streams(&streams).await {
            Ok(mut by_stream) => {
                for read in batch {
                    let events = by_stream
                        .get_mut(&read.stream_id)
                        .map(|events| {
                            events
                                .iter()
                                .filter(|e| e.version > read.after_version)
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    let _ = read.reply.send(Ok(events));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, reads = batch.len(), "a grouped read failed: each runs alone");
                let alone = batch.into_iter().map(|read| {
                    let store = &store;
                    async move {
                        let events = store.read_stream(&read.stream_id, read.after_version).await;
                        let _ = read.reply.send(events);
                    }
                });
                futures::future::join_all(alone).await;
            }
        }
    }
}

fn add(job: Job, batch: &mut Vec<Job>, streams: &mut HashSet<String>) {
    streams.extend(job.writes.iter().map(|w| w.stream_id.clone()));
    batch.push(job);
}

/// Commits `batch` in one statement, or each of its appends alone if that statement fails.
async fn commit_batch(store: &EventStore, batch: Vec<Job>, stats: &GroupStats) {
    if let [_] = batch.as_slice() {
        let job = batch.into_iter().next().expect("one job");
        let outcome = store.append_streams_alone(&job.writes).await;
        let _ = job.reply.send(outcome);
        return;
    }
    let writes: Vec<&[StreamAppend]> = batch.iter().map(|j| j.writes.as_slice()).collect();
    let mut grouped = store.append_groups(&writes).await;
    if grouped.as_ref().is_err_and(lost_a_race) {
        // A writer outside the batch (another replica, a command with an `Idempotency-Key`)
        // took a version first. Once more: the stream's new head fails that append's
        // expectation, which leaves it out, and the rest commit together.
        stats.raced.fetch_add(1, Relaxed);
        grouped = store.append_groups(&writes).await;
    }
    match grouped {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                let _ = job.reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, appends = batch.len(), "a batch failed as a whole: each append runs alone");
            stats.rerun.fetch_add(1, Relaxed);
            let alone = batch.into_iter().map(|job| async move {
                let outcome = store.append_streams_alone(&job.writes).await;
                let _ = job.reply.send(outcome);
            });
            futures::future::join_all(alone).await;
        }
    }
}

/// Whether a grouped statement failed because a stream's next version was taken meanwhile
/// (not because an event id is stored already).
fn lost_a_race(e: &AppendError) -> bool {
    matches!(
        e,
        AppendError::Store(StoreError::Database(sqlx::Error::Database(db)))
            if db.is_unique_violation() && db.constraint() != Some("events_event_id_unique")
    )
}

/// Appends of several independent groups, each group's streams checked and written together,
/// in one statement: a group whose expectation fails contributes no rows. Streams never repeat
/// across groups (the batch is gathered that way), so the statement's rows tell the groups apart
/// by stream.
pub const GROUP_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::int4[], $2::text[], $3::uuid[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])
        WITH ORDINALITY AS i(grp, stream_id, event_id, event_type, schema_version, data, metadata, ord)
),
heads AS (
    SELECT x.grp, x.stream_id, x.mode, x.exact,
           (SELECT coalesce(max(version), 0) FROM eventstore.events e WHERE e.stream_id = x.stream_id) AS head
    FROM unnest($8::int4[], $9::text[], $10::int4[], $11::int8[]) AS x(grp, stream_id, mode, exact)
),
failed AS (
    SELECT DISTINCT grp FROM heads h
    WHERE NOT CASE h.mode WHEN 0 THEN true
                          WHEN 1 THEN h.head = 0
                          WHEN 2 THEN h.head > 0
                          ELSE h.head = h.exact END
),
numbered AS (
    SELECT i.*, h.head + row_number() OVER (PARTITION BY i.stream_id ORDER BY i.ord) AS version
    FROM input i JOIN heads h USING (grp, stream_id)
    WHERE i.grp NOT IN (SELECT grp FROM failed)
)
INSERT INTO eventstore.events (stream_id, version, event_id, event_type, schema_version, data, metadata)
SELECT stream_id, version, event_id, event_type, schema_version, data, metadata
FROM numbered ORDER BY ord
RETURNING stream_id, version, position
"#;

/// The append statements' arguments, column by column: the events, and each stream's
/// expectation, each tagged with the group (the append) it belongs to. The multi-stream
/// statement ([`crate::multi`]) takes them without the groups.
#[derive(Default)]
pub(crate) struct AppendColumns<'a> {
    pub(crate) groups: Vec<i32>,
    pub(crate) stream_ids: Vec<&'a str>,
    pub(crate) event_ids: Vec<uuid::Uuid>,
    pub(crate) event_types: Vec<&'a str>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) data: Vec<serde_json::Value>,
    pub(crate) metadata: Vec<serde_json::Value>,
    pub(crate) expected_groups: Vec<i32>,
    pub(crate) expected_streams: Vec<&'a str>,
    pub(crate) modes: Vec<i32>,
    pub(crate) exacts: Vec<i64>,
}

impl<'a> AppendColumns<'a> {
    /// Adds `write`'s events and expectation, as part of append number `group`.
    pub(crate) fn push(
        &mut self,
        store: &EventStore,
        group: i32,
        write: &'a StreamAppend,
    ) -> Result<(), StoreError> {
        for event in &write.events {
            self.groups.push(group);
            self.stream_ids.push(&write.stream_id);
            self.event_ids.push(event.event_id);
            self.event_types.push(&event.event_type);
            self.schema_versions
                .push(store.schema_version_of(&event.event_type));
            self.data.push(event.data.clone());
            self.metadata
                .push(
                    serde_json::to_value(&event.metadata).map_err(|e| StoreError::Encode {
                        event_type: "metadata".into(),
                        reason: e.to_string(),
                    })?,
                );
        }
        let (mode, exact) = write.expected.as_columns();
        self.expected_groups.push(group);
        self.expected_streams.push(&write.stream_id);
        self.modes.push(mode);
        self.exacts.push(exact);
        Ok(())
    }
}

impl EventStore {
    /// Appends several independent appends (`groups`, each one or more streams, no stream in
    /// two) in one statement and one transaction, and answers each as if it had been appended
    /// alone — unless the statement fails as a whole (`Err`), in which case nothing was written
    /// and each should be appended alone. See the module's documentation.
    pub async fn append_groups(
        &self,
        groups: &[&[StreamAppend]],
    ) -> Result<Vec<Result<Vec<Appended>, AppendError>>, AppendError> {
        let mut columns = AppendColumns::default();
        for (group, writes) in groups.iter().enumerate() {
            let group = i32::try_from(group).unwrap_or(i32::MAX);
            for write in *writes {
                columns.push(self, group, write)?;
            }
        }
        let rows: Vec<(String, i64, i64)> = self
            .on_connection(async |conn: &mut PgConnection| {
                sqlx::query_as(GROUP_SQL)
                    .bind(&columns.groups)
                    .bind(&columns.stream_ids)
                    .bind(&columns.event_ids)
                    .bind(&columns.event_types)
                    .bind(&columns.schema_versions)
                    .bind(&columns.data)
                    .bind(&columns.metadata)
                    .bind(&columns.expected_groups)
                    .bind(&columns.expected_streams)
                    .bind(&columns.modes)
                    .bind(&columns.exacts)
                    .fetch_all(conn)
                    .await
                    .map_err(AppendError::from)
            })
            .await?;
        if !rows.is_empty() {
            self.announce_appended();
        }
        // Each stream's new events, in version order.
        let mut written: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for (stream_id, version, position) in rows {
            written
                .entry(stream_id)
                .or_default()
                .push((version, position));
        }
        // The groups the statement wrote are answered from its rows; the others (nothing to
        // write, or left out for an expectation that failed) all at once, each the way it
        // would be alone — which tells a retry of a stored append (its event ids are there:
        // success) from a real conflict — so the writer is not held up one by one.
        let outcomes = groups.iter().map(|writes| {
            let wrote = writes.iter().any(|w| written.contains_key(&w.stream_id));
            let rows: Vec<_> = writes
                .iter()
                .map(|w| written.get(&w.stream_id).cloned())
                .collect();
            async move {
                if wrote {
                    Ok(writes
                        .iter()
                        .zip(rows)
                        .map(|(w, rows)| appended(w, rows))
                        .collect())
                } else if writes.iter().all(|w| w.events.is_empty()) {
                    self.check_streams(writes)
                        .await
                        .map(|versions| versions.into_iter().map(only_checked).collect())
                } else {
                    self.append_streams_alone(writes).await
                }
            }
        });
        let outcomes = futures::future::join_all(outcomes).await;
        Ok(outcomes)
    }
}

/// What `write` became: its new events' versions and positions, or (only checked) its version.
fn appended(write: &StreamAppend, rows: Option<Vec<(i64, i64)>>) -> Appended {
    let mut rows = rows.unwrap_or_default();
    rows.sort_unstable();
    let version = match (rows.last(), write.expected) {
        (Some(&(version, _)), _) => version as u64,
        (None, ExpectedVersion::Exact(v)) => v,
        (None, _) => 0,
    };
    Appended {
        version,
        positions: rows.into_iter().map(|(_, position)| position).collect(),
        already_stored: false,
    }
}

fn only_checked(version: u64) -> Appended {
    Appended {
        version,
        positions: Vec::new(),
        already_stored: false,
    }
}
