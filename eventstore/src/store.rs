//! [`EventStore`]: appends with an expected version, stream reads and the gap-safe global log.
//!
//! An append is one `INSERT … SELECT` statement that reads the stream's head and inserts the new
//! versions after it, guarded by the expectation. Two writers racing on one stream both compute
//! the same next version; `UNIQUE (stream_id, version)` lets exactly one in and the other sees a
//! unique violation, which becomes [`AppendError::WrongExpectedVersion`]. Writers on different
//! streams share nothing but the position sequence, so they never wait for each other.
//!
//! Failure paths (a conflict, a duplicate event id) pay for extra queries; the happy path is a
//! single round trip.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnection;
use sqlx::types::Json;
use sqlx::{Acquire, PgPool, Postgres, Transaction};
use tracing::instrument;
use uuid::Uuid;

use crate::connections::{Connections, DatabaseFailure};
use crate::error::{AppendError, StoreError};
use crate::group::{AppendQueue, GroupCommit, GroupStats};
use crate::model::{
    Appended, EventData, ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent,
};
use crate::multi::StreamAppend;
use crate::upcast::Upcasters;

/// How often an append with [`ExpectedVersion::Any`] retries after losing a race.
const ANY_VERSION_ATTEMPTS: u32 = 16;

/// The Postgres channel the store notifies after appends, so the relay wakes without polling.
pub const APPENDED_CHANNEL: &str = "eventstore_appended";

/// The Postgres event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    /// Where appends and stream reads run (see [`crate::connections`]).
    pub(crate) connections: Connections,
    upcasters: Arc<Upcasters>,
    notifier: Option<Arc<AppendNotifier>>,
    pub(crate) cache: Option<Arc<crate::cache::AggregateCache>>,
    /// Where appends queue for group commit, if it is on (see [`crate::group`]).
    group: Option<Arc<AppendQueue>>,
}

/// Sends `NOTIFY eventstore_appended` after appends, coalescing bursts into one notification in
/// flight at a time. Notifying inside each append transaction would make every commit take
/// Postgres's global notification-queue lock, serialising all writers; this keeps appends
/// independent and costs one tiny statement per burst.
#[derive(Debug)]
struct AppendNotifier {
    /// Capacity one: while a notification is in flight, at most one more waits.
    wake: tokio::sync::mpsc::Sender<()>,
}

impl AppendNotifier {
    fn start(connections: Connections) -> Arc<Self> {
        let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
        // Ends when the last store clone (and so the sender) is dropped.
        tokio::spawn(async move {
            while woken.recv().await.is_some() {
                let notified = connections
                    .with(async |conn| {
                        sqlx::query("SELECT pg_notify($1, '')")
                            .bind(APPENDED_CHANNEL)
                            .execute(conn)
                            .await
                    })
                    .await;
                if let Err(e) = notified {
                    // Readers poll as a fallback; a lost wake-up only delays them.
                    tracing::debug!(error = %e, "append notification failed");
                }
            }
        });
        Arc::new(Self { wake })
    }
}

/// Runs `$body` with `$conn` bound to one of the store's own connections, for operations that
/// are safe to repeat (reads, and appends, which event ids make idempotent): if the server had
/// ended that session (a restart, `pg_terminate_backend`), the body runs again on the next
/// connection, as the pings the store no longer sends would have found the dead one first.
/// A macro, not a method taking an async closure: the command API's handlers must be `Send`,
/// which the compiler cannot yet prove through a repeatedly called async closure.
macro_rules! on_live_connection {
    ($store:expr, |$conn:ident| $body:expr) => {{
        let mut attempts_left = $store.connections.max_size();
        loop {
            let mut taken = match $store.connections.get().await {
                Ok(taken) => taken,
                Err(e) => break Err(e.into()),
            };
            let $conn: &mut PgConnection = &mut taken.conn;
            let result = $body;
            taken.note(&result);
            match &result {
                Err(e)
                    if attempts_left > 0
                        && $crate::connections::DatabaseFailure::database_error(e)
                            .is_some_and($crate::connections::session_ended) =>
                {
                    attempts_left -= 1;
                }
                _ => break result,
            }
        }
    }};
}
pub(crate) use on_live_connection;

const APPEND_SQL: &str = r#"
WITH head AS (
    SELECT coalesce(max(version), 0) AS version
    FROM eventstore.events
    WHERE stream_id = $1
)
INSERT INTO eventstore.events
    (stream_id, version, event_id, event_type, schema_version, data, metadata)
SELECT $1, head.version + e.ord, e.event_id, e.event_type, e.schema_version, e.data, e.metadata
FROM head,
     unnest($2::uuid[], $3::text[], $4::int4[], $5::jsonb[], $6::jsonb[])
         WITH ORDINALITY AS e(event_id, event_type, schema_version, data, metadata, ord)
WHERE CASE $7::int4
          WHEN 0 THEN true
          WHEN 1 THEN head.version = 0
          WHEN 2 THEN head.version > 0
          ELSE head.version = $8::int8
      END
RETURNING position, version
"#;

/// `data` as text: decoded as the string it is, not parsed again (see [`EventData`]); Postgres
/// turns `jsonb` into text for the wire either way.
const EVENT_COLUMNS: &str = "position, transaction_id::text::int8 AS transaction_id, stream_id, \
version, event_id, event_type, schema_version, data::text AS data, metadata, recorded_at";

/// A row of [`EVENT_COLUMNS`].
struct EventRow {
    position: i64,
    transaction_id: i64,
    stream_id: String,
    version: i64,
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    data: String,
    metadata: Json<Metadata>,
    recorded_at: DateTime<Utc>,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for EventRow {
    /// By position, in [`EVENT_COLUMNS`]' order (every statement read into this row selects
    /// exactly those): looking each column up by name, as the derive does, cost a rebuild's
    /// scan a few percent.
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Self {
            position: row.try_get(0)?,
            transaction_id: row.try_get(1)?,
            stream_id: row.try_get(2)?,
            version: row.try_get(3)?,
            event_id: row.try_get(4)?,
            event_type: row.try_get(5)?,
            schema_version: row.try_get(6)?,
            data: row.try_get(7)?,
            metadata: row.try_get(8)?,
            recorded_at: row.try_get(9)?,
        })
    }
}

impl From<EventRow> for RecordedEvent {
    fn from(row: EventRow) -> Self {
        Self {
            position: row.position,
            transaction_id: u64::try_from(row.transaction_id).unwrap_or_default(),
            stream_id: row.stream_id,
            version: u64::try_from(row.version).unwrap_or_default(),
            event_id: row.event_id,
            event_type: row.event_type,
            schema_version: row.schema_version,
            data: EventData::from_jsonb_text(row.data),
            metadata: row.metadata.0,
            recorded_at: row.recorded_at,
        }
    }
}

/// Why one insert attempt wrote nothing.
enum Missed {
    /// The head did not match the expectation (or a racing writer took the version).
    Expectation,
    /// An event id is stored already: maybe this very append, retried.
    DuplicateEventId,
}

impl EventStore {
    /// A store on `pool` that reads and writes events in the shapes of [`Upcasters::tillstream`].
    pub fn new(pool: PgPool) -> Self {
        Self::with_upcasters(pool, Upcasters::tillstream())
    }

    pub fn with_upcasters(pool: PgPool, upcasters: Upcasters) -> Self {
        Self {
            connections: Connections::like(&pool),
            pool,
            upcasters: Arc::new(upcasters),
            notifier: None,
            cache: None,
            group: None,
        }
    }

    /// Keeps up to `capacity` aggregate states in memory (see [`crate::cache`]), so commands
    /// on hot aggregates skip reading their streams.
    pub fn with_aggregate_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(Arc::new(crate::cache::AggregateCache::new(capacity)));
        self
    }

    /// Notifies [`APPENDED_CHANNEL`] after appends, coalesced, so that appends never queue on
    /// Postgres's notification lock. Needs a Tokio runtime. Appends made with
    /// [`EventStore::append_in`] are announced by [`EventStore::announce_appended`] once the
    /// caller has committed.
    pub fn with_append_notifications(mut self) -> Self {
        self.notifier = Some(AppendNotifier::start(self.connections.clone()));
        self
    }

    /// Groups concurrent appends into shared statements and commits (see [`crate::group`]).
    /// Needs a Tokio runtime; call it last, after the other `with_…` settings, which the
    /// writers it starts take along.
    pub fn with_group_commit(mut self, settings: GroupCommit) -> Self {
        self.group = None;
        let queue = AppendQueue::start(self.clone(), settings);
        self.group = Some(Arc::new(queue));
        self
    }

    /// How much grouping happened, when group commit is on.
    pub fn group_stats(&self) -> Option<&GroupStats> {
        self.group.as_deref().map(|queue| queue.stats.as_ref())
    }

    /// The group-commit queues, if group commit is on.
    pub(crate) fn grouped(&self) -> Option<&AppendQueue> {
        self.group.as_deref()
    }

    /// Where appends go: the group-commit queue, if on, for appends that write something.
    pub(crate) fn queue_for(&self, writes: &[StreamAppend]) -> Option<&AppendQueue> {
        self.group
            .as_deref()
            .filter(|_| writes.iter().any(|w| !w.events.is_empty()))
    }

    /// Wakes global-log readers after a commit that appended events.
    pub fn announce_appended(&self) {
        if let Some(notifier) = &self.notifier {
            let _ = notifier.wake.try_send(());
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema version new events of this type are written with.
    pub(crate) fn schema_version_of(&self, event_type: &str) -> i32 {
        self.upcasters.current_version(event_type)
    }

    /// Appends events to a stream if it is at the expected version. Retrying the same append
    /// (same event ids) after it succeeded returns the stored result and writes nothing.
    #[instrument(
        name = "eventstore.append",
        skip(self, events),
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", events = events.len()),
        err(level = "debug")
    )]
    pub async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, AppendError> {
        if let Some(queue) = self.group.as_deref().filter(|_| !events.is_empty()) {
            let write = StreamAppend {
                stream_id: stream_id.to_owned(),
                expected,
                events: events.to_vec(),
            };
            let mut appended = queue.append(vec![write]).await?;
            return Ok(appended.pop().expect("one stream, one outcome"));
        }
        self.append_alone(stream_id, expected, events).await
    }

    /// [`EventStore::append`] in a statement and transaction of its own.
    pub(crate) async fn append_alone(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, AppendError> {
        on_live_connection!(self, |conn| self
            .append_on(conn, stream_id, expected, events)
            .await)
    }

    async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, AppendError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_insert(conn, stream_id, expected, events).await? {
                Ok(appended) => {
                    if !appended.positions.is_empty() {
                        self.announce_appended();
                    }
                    return Ok(appended);
                }
                Err(missed) => {
                    let outcome = resolve_miss(conn, stream_id, expected, events, missed).await?;
                    match outcome {
                        Resolution::Done(result) => return result,
                        Resolution::Retry if attempt < ANY_VERSION_ATTEMPTS => continue,
                        Resolution::Retry => {
                            let actual = stream_version_on(conn, stream_id).await?;
                            return Err(AppendError::WrongExpectedVersion {
                                stream_id: stream_id.to_owned(),
                                expected,
                                actual,
                            });
                        }
                    }
                }
            }
        }
    }

    /// Appends inside the caller's transaction, so that other writes (an idempotency record, a
    /// second stream) commit or roll back with the events. A savepoint keeps the transaction
    /// usable after a conflict. A lost race is reported, not retried: the caller decides again.
    #[instrument(
        name = "eventstore.append",
        skip(self, tx, events),
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", events = events.len()),
        err(level = "debug")
    )]
    pub async fn append_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Appended, AppendError> {
        let mut savepoint = tx.begin().await?;
        let attempt = self
            .try_insert(&mut savepoint, stream_id, expected, events)
            .await;
        let missed = match attempt {
            Ok(Ok(appended)) => {
                savepoint.commit().await?;
                return Ok(appended);
            }
            Ok(Err(missed)) => missed,
            Err(e) => return Err(e),
        };
        savepoint.rollback().await?;
        match resolve_miss(tx, stream_id, expected, events, missed).await? {
            Resolution::Done(result) => result,
            Resolution::Retry => Err(AppendError::WrongExpectedVersion {
                stream_id: stream_id.to_owned(),
                expected,
                actual: stream_version_on(tx, stream_id).await?,
            }),
        }
    }

    /// One attempt: the single-statement insert. `Ok(Err(_))` says why nothing was written.
    async fn try_insert(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Result<Appended, Missed>, AppendError> {
        if events.is_empty() {
            let current = stream_version_on(conn, stream_id).await?;
            return Ok(if expected.admits(current) {
                Ok(Appended {
                    version: current,
                    positions: vec![],
                    already_stored: false,
                })
            } else {
                Err(Missed::Expectation)
            });
        }
        let (mode, exact) = expected.as_columns();
        let metadata = events
            .iter()
            .map(|e| serde_json::to_value(&e.metadata))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Encode {
                event_type: "metadata".into(),
                reason: e.to_string(),
            })?;
        let result: Result<Vec<(i64, i64)>, sqlx::Error> = sqlx::query_as(APPEND_SQL)
            .bind(stream_id)
            .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(
                events
                    .iter()
                    .map(|e| e.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                events
                    .iter()
                    .map(|e| self.upcasters.current_version(&e.event_type))
                    .collect::<Vec<_>>(),
            )
            .bind(events.iter().map(|e| e.data.clone()).collect::<Vec<_>>())
            .bind(metadata)
            .bind(mode)
            .bind(exact)
            .fetch_all(&mut *conn)
            .await;
        match result {
            Ok(mut rows) if !rows.is_empty() => {
                rows.sort_by_key(|&(_, version)| version);
                Ok(Ok(Appended {
                    version: rows.last().map_or(0, |&(_, v)| v as u64),
                    positions: rows.into_iter().map(|(position, _)| position).collect(),
                    already_stored: false,
                }))
            }
            Ok(_) => Ok(Err(Missed::Expectation)),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Ok(Err(match db.constraint() {
                    Some("events_event_id_unique") => Missed::DuplicateEventId,
                    _ => Missed::Expectation,
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The stream's current version; 0 when it has no events.
    pub async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        on_live_connection!(self, |conn| Ok(stream_version_on(conn, stream_id).await?))
    }

    /// The stream's events with a version above `after_version`, upcast, in version order.
    #[instrument(level = "debug", skip(self), err(level = "debug"))]
    pub async fn read_stream(
        &self,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        on_live_connection!(self, |conn| self
            .read_stream_on(conn, stream_id, after_version)
            .await)
    }

    /// The stream's first event (upcast), if the stream has reached `version`; `None` if it has
    /// not or does not exist. Two index lookups, however long the stream: for checks that need
    /// a stream's opening (who it belongs to) and its existence at a version, not its history.
    pub async fn first_event_if_reached(
        &self,
        stream_id: &str,
        version: u64,
    ) -> Result<Option<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM eventstore.events WHERE stream_id = $1 AND version = 1 \
             AND EXISTS (SELECT 1 FROM eventstore.events WHERE stream_id = $1 AND version >= $2)"
        );
        let rows: Vec<EventRow> = on_live_connection!(self, |conn| sqlx::query_as(&sql)
            .bind(stream_id)
            .bind(i64::try_from(version).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await)?;
        Ok(self.upcast_rows(rows)?.into_iter().next())
    }

    /// The events of each stream in `reads` after its version (`(stream id, after version)`),
    /// by stream, in version order: one statement, each stream read on its index from where
    /// its caller's state ends (a hot stream's cached state needs only its newest events).
    pub async fn read_streams(
        &self,
        reads: &[(&str, u64)],
    ) -> Result<std::collections::HashMap<String, Vec<RecordedEvent>>, StoreError> {
        // One range per stream: from the lowest version any read of it asked after.
        let mut from: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for &(stream_id, after) in reads {
            let lowest = from.entry(stream_id).or_insert(after);
            *lowest = (*lowest).min(after);
        }
        let stream_ids: Vec<&str> = from.keys().copied().collect();
        let afters: Vec<i64> = from
            .values()
            .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
            .collect();
        let sql = format!(
            "SELECT e.* FROM unnest($1::text[], $2::int8[]) AS q(sid, after) \
             CROSS JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM eventstore.events \
                                 WHERE stream_id = q.sid AND version > q.after \
                                 ORDER BY version) e"
        );
        let rows: Vec<EventRow> = on_live_connection!(self, |conn| sqlx::query_as(&sql)
            .bind(&stream_ids)
            .bind(&afters)
            .fetch_all(&mut *conn)
            .await)?;
        let mut by_stream: std::collections::HashMap<String, Vec<RecordedEvent>> =
            std::collections::HashMap::new();
        for event in self.upcast_rows(rows)? {
            by_stream
                .entry(event.stream_id.clone())
                .or_default()
                .push(event);
        }
        Ok(by_stream)
    }

    /// Runs `f` on one of the connections the store's appends and stream reads use (see
    /// `connections`), e.g. to look at that session's state.
    pub async fn on_connection<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
        E: DatabaseFailure + From<sqlx::Error>,
    {
        self.connections.with(f).await
    }

    /// Like [`EventStore::read_stream`], on the caller's connection (inside its transaction:
    /// a command that holds a transaction never waits for a second connection).
    pub async fn read_stream_on(
        &self,
        conn: &mut PgConnection,
        stream_id: &str,
        after_version: u64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM eventstore.events \
             WHERE stream_id = $1 AND version > $2 ORDER BY version"
        );
        let rows: Vec<EventRow> = sqlx::query_as(&sql)
            .bind(stream_id)
            .bind(i64::try_from(after_version).unwrap_or(i64::MAX))
            .fetch_all(conn)
            .await?;
        self.upcast_rows(rows)
    }

    /// Up to `limit` events of the global log after `after`, in log order, upcast.
    ///
    /// Only events of transactions older than the oldest one still running are returned. The
    /// position sequence is handed out before commit, so a transaction that started early can
    /// commit a lower position after a reader has moved past it; the transaction-id horizon
    /// makes the reader wait for it instead. The cost is that any long transaction on the server
    /// holds every reader back until it ends; a stuck one shows up as relay lag.
    #[instrument(level = "debug", skip(self), err(level = "debug"))]
    pub async fn read_log(
        &self,
        after: LogPosition,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = sqlx::query_as::<_, EventRow>(&global_log_sql())
            .bind(i64::try_from(after.transaction_id).unwrap_or(i64::MAX))
            .bind(after.position)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        self.upcast_rows(rows)
    }

    /// Where to read the global log from ([`EventStore::read_log`]) so that the `last` newest
    /// readable events come first: `till events tail --last N`. The log's start when it holds
    /// fewer.
    pub async fn log_position_before_last(&self, last: u64) -> Result<LogPosition, StoreError> {
        let before: Option<(i64, i64)> = sqlx::query_as(
            "SELECT e.transaction_id::text::int8, e.position FROM eventstore.events e \
             WHERE e.transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY e.transaction_id DESC, e.position DESC OFFSET $1 LIMIT 1",
        )
        .bind(i64::try_from(last).unwrap_or(i64::MAX))
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            before.map_or(LogPosition::START, |(transaction_id, position)| {
                LogPosition {
                    transaction_id: u64::try_from(transaction_id).unwrap_or_default(),
                    position,
                }
            }),
        )
    }

    /// Every event of the streams of `stream_type` in stream order (by stream id, then
    /// version), read with one statement and handed to `deliver` in batches as the rows
    /// arrive, so Postgres produces the next rows while `deliver` works. A batch holds whole
    /// streams: it closes at the first stream's end after `batch_size` events, so a stream is
    /// not split between two batches (and a consumer does not need what an earlier batch made of
    /// it) — unless the batch reaches [`SCAN_BATCH_CAP`] × `batch_size` events first, which
    /// bounds a batch's memory whatever a stream's length. `deliver` returns false to stop early.
    ///
    /// For rebuilds: a projection needs each stream's events in order but no order across
    /// streams, and this walks the type's own range of the `(stream_id, version)` index, where
    /// the global log visits every row of every type. It reads one snapshot: events committed
    /// after the statement started are not included (a rebuild gets those from the live
    /// projector). The rows come as a binary `COPY` ([`crate::scan`] says why).
    pub async fn scan_streams_of_type<F, Fut>(
        &self,
        stream_type: &str,
        batch_size: usize,
        mut deliver: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut(Vec<RecordedEvent>) -> Fut,
        Fut: Future<Output = bool>,
    {
        use futures::TryStreamExt;
        use sqlx::{ConnectOptions, Connection};
        let (first, last) = stream_type_range(stream_type);
        let mut scan = stream_order_options(&self.pool).connect().await?;
        let mut chunks = scan
            .copy_out_raw(&crate::scan::copy_streams_between_sql(&first, &last))
            .await?;
        let mut decoder = crate::scan::CopyDecoder::default();
        let mut decoded = Vec::new();
        let mut batch: Vec<RecordedEvent> = Vec::with_capacity(batch_size);
        while let Some(chunk) = chunks.try_next().await? {
            decoder.feed(&chunk, &mut decoded)?;
            for event in decoded.drain(..) {
                let event = self.upcasters.upcast(event)?;
                let full = batch.len() >= batch_size
                    && (batch
                        .last()
                        .is_some_and(|last| last.stream_id != event.stream_id)
                        || batch.len() >= batch_size.saturating_mul(SCAN_BATCH_CAP));
                if full
                    && !deliver(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(batch_size),
                    ))
                    .await
                {
                    // Dropped, not closed: a closing connection would first read the rest of
                    // the scan; dropped, its socket closes and the server stops sending.
                    return Ok(());
                }
                batch.push(event);
            }
        }
        decoder.finish()?;
        drop(chunks);
        scan.close().await?;
        if !batch.is_empty() {
            deliver(batch).await;
        }
        Ok(())
    }

    /// How many events the streams of `stream_type` hold: what
    /// [`EventStore::scan_streams_of_type`] reads (for progress bars).
    pub async fn count_events_of_type(&self, stream_type: &str) -> Result<i64, StoreError> {
        let (first, last) = stream_type_range(stream_type);
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM eventstore.events WHERE stream_id > $1 AND stream_id < $2",
        )
        .bind(first)
        .bind(last)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The newest event's global position (0 for an empty store): an index lookup. Positions
    /// are not commit order and have holes (rolled-back appends), so a difference of two is an
    /// estimate of how many events lie between.
    pub async fn newest_position(&self) -> Result<i64, StoreError> {
        let newest: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM eventstore.events")
            .fetch_one(&self.pool)
            .await?;
        Ok(newest.unwrap_or(0))
    }

    /// The newest event's global position and how many events the store holds.
    pub async fn head(&self) -> Result<(i64, i64), StoreError> {
        let (max, count): (Option<i64>, i64) =
            sqlx::query_as("SELECT max(position), count(*) FROM eventstore.events")
                .fetch_one(&self.pool)
                .await?;
        Ok((max.unwrap_or(0), count))
    }

    fn upcast_rows(&self, rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>, StoreError> {
        rows.into_iter()
            .map(|row| self.upcasters.upcast(row.into()))
            .collect()
    }
}

/// The statement that reads the global log (`$1`/`$2` the position after which to read, `$3`
/// the limit). Public so that a test can check its plan walks the `(transaction_id, position)`
/// index instead of sorting the table.
pub fn global_log_sql() -> String {
    // The columns are qualified on purpose: the select list names a cast of `transaction_id`
    // `transaction_id`, and an unqualified ORDER BY would sort by that cast, which no index
    // serves: every read would sort the whole table.
    format!(
        "SELECT {EVENT_COLUMNS} FROM eventstore.events e \
         WHERE (e.transaction_id, e.position) > ($1::int8::text::xid8, $2) \
           AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY e.transaction_id, e.position LIMIT $3"
    )
}

/// How many times its asked size a batch of [`EventStore::scan_streams_of_type`] grows, at
/// most, to end at a stream's end.
pub const SCAN_BATCH_CAP: usize = 4;

/// Connection settings like `pool`'s under which a read of a range of streams in stream order
/// walks the `(stream_id, version)` index, as [`EventStore::scan_streams_of_type`] means to.
/// Left to itself, Postgres picks a parallel sequential scan of the whole table, a sort of the
/// type's rows that spills to disk (400 MB for 600k cart events) and a merge of the workers'
/// results, with JIT: no faster on this machine (3.5-3.9 s against 3.2-3.3 s for 600k rows),
/// and three processes' CPU instead of one while a rebuild's writers need it. (A connection of
/// its own, not a transaction with `SET LOCAL`: a pooled connection would be pinged on its way
/// back, which after an interrupted scan means reading the rest of it.) Its statements are not
/// logged as slow: a scan of a million events runs for seconds by design, and a warning on
/// every rebuild would teach operators to ignore the ones that matter.
pub fn stream_order_options(pool: &PgPool) -> sqlx::postgres::PgConnectOptions {
    use sqlx::ConnectOptions;
    (*pool.connect_options())
        .clone()
        .options([("enable_sort", "off"), ("jit", "off")])
        .disable_statement_logging()
}

/// The stream ids of one type, `<type>-…`, lie between `<type>-` and `<type>.` in byte order
/// ('.' follows '-'); stream ids compare in byte order (migration 0008).
pub fn stream_type_range(stream_type: &str) -> (String, String) {
    (format!("{stream_type}-"), format!("{stream_type}."))
}

async fn stream_version_on(conn: &mut PgConnection, stream_id: &str) -> Result<u64, sqlx::Error> {
    let version: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(version), 0) FROM eventstore.events WHERE stream_id = $1",
    )
    .bind(stream_id)
    .fetch_one(conn)
    .await?;
    Ok(version as u64)
}

enum Resolution {
    Done(Result<Appended, AppendError>),
    Retry,
}

/// Works out what a missed insert means: a retry of an append that is already stored (success),
/// a reused event id (error), a real version conflict (error), or a lost race that a retry may
/// win (`Any`, or a racing writer that rolled back).
async fn resolve_miss(
    conn: &mut PgConnection,
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[NewEvent],
    missed: Missed,
) -> Result<Resolution, AppendError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let stored: Vec<(Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT event_id, stream_id, version, position FROM eventstore.events \
         WHERE event_id = ANY($1) ORDER BY version",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    if let Some((event_id, stored_in, _, _)) = stored.first() {
        let same_append = stored.len() == events.len()
            && stored.iter().all(|(_, s, _, _)| s == stream_id)
            && stored.windows(2).all(|w| w[1].2 == w[0].2 + 1)
            && stored.iter().zip(events).all(|(s, e)| s.0 == e.event_id);
        if !same_append {
            return Ok(Resolution::Done(Err(AppendError::EventIdReused {
                event_id: *event_id,
                stored_in: stored_in.clone(),
            })));
        }
        return Ok(Resolution::Done(Ok(Appended {
            version: stored.last().map_or(0, |s| s.2 as u64),
            positions: stored.iter().map(|s| s.3).collect(),
            already_stored: true,
        })));
    }
    if matches!(missed, Missed::DuplicateEventId) {
        // The duplicate's writer rolled back between our insert and our look-up.
        return Ok(Resolution::Retry);
    }
    let actual = stream_version_on(conn, stream_id).await?;
    if expected == ExpectedVersion::Any || expected.admits(actual) {
        Ok(Resolution::Retry)
    } else {
        Ok(Resolution::Done(Err(AppendError::WrongExpectedVersion {
            stream_id: stream_id.to_owned(),
            expected,
            actual,
        })))
    }
}
