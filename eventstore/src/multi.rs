//! Appending to several streams at once, atomically, in one statement: a checkout closes the
//! cart and places the order together or not at all, in one round trip.

use std::collections::BTreeMap;

use crate::error::{AppendError, StoreError};
use crate::group::AppendColumns;
use crate::model::{Appended, ExpectedVersion, NewEvent};
use crate::store::EventStore;
use sqlx::{Acquire, Postgres, Transaction};

/// One stream's share of a multi-stream append.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Every stream's head is read, every expectation checked, and every event inserted by one
/// statement: if any expectation fails nothing is inserted; a racing writer on any of the
/// streams makes the unique constraint fail the whole statement.
const APPEND_STREAMS_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int4[], $5::jsonb[], $6::jsonb[])
        WITH ORDINALITY AS i(stream_id, event_id, event_type, schema_version, data, metadata, ord)
),
expectations AS (
    SELECT * FROM unnest($7::text[], $8::int4[], $9::int8[]) AS x(stream_id, mode, exact)
),
heads AS (
    SELECT x.stream_id, x.mode, x.exact,
           (SELECT coalesce(max(version), 0) FROM eventstore.events e WHERE e.stream_id = x.stream_id) AS head
    FROM expectations x
),
numbered AS (
    SELECT i.*, h.head + row_number() OVER (PARTITION BY i.stream_id ORDER BY i.ord) AS version
    FROM input i JOIN heads h USING (stream_id)
)
INSERT INTO eventstore.events (stream_id, version, event_id, event_type, schema_version, data, metadata)
SELECT stream_id, version, event_id, event_type, schema_version, data, metadata
FROM numbered
WHERE NOT EXISTS (
    SELECT 1 FROM heads h
    WHERE NOT CASE h.mode WHEN 0 THEN true
                          WHEN 1 THEN h.head = 0
                          WHEN 2 THEN h.head > 0
                          ELSE h.head = h.exact END
)
RETURNING stream_id, version
"#;

impl EventStore {
    /// Appends to every stream in `writes` atomically, each at its expected version. Returns
    /// each stream's new version, in the order given. A stream that is not at its expected
    /// version fails the whole append with [`AppendError::WrongExpectedVersion`]; a stream
    /// with no events is only checked. One stream takes the single-stream statement
    /// ([`EventStore::append`]), which is cheaper.
    #[tracing::instrument(
        name = "eventstore.append_streams",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", streams = writes.len()),
        err(level = "debug")
    )]
    pub async fn append_streams(&self, writes: &[StreamAppend]) -> Result<Vec<u64>, AppendError> {
        if let [write] = writes {
            let appended = self
                .append(&write.stream_id, write.expected, &write.events)
                .await?;
            return Ok(vec![appended.version]);
        }
        if let Some(queue) = self.queue_for(writes) {
            let appended = queue.append(writes.to_vec()).await?;
            return Ok(appended.into_iter().map(|a| a.version).collect());
        }
        self.append_streams_ungrouped(writes).await
    }

    /// Any append of the group-commit queue, in a statement and transaction of its own.
    pub(crate) async fn append_streams_alone(
        &self,
        writes: &[StreamAppend],
    ) -> Result<Vec<Appended>, AppendError> {
        if let [write] = writes {
            let appended = self
                .append_alone(&write.stream_id, write.expected, &write.events)
                .await?;
            return Ok(vec![appended]);
        }
        let versions = self.append_streams_ungrouped(writes).await?;
        Ok(versions
            .into_iter()
            .map(|version| Appended {
                version,
                positions: Vec::new(),
                already_stored: false,
            })
            .collect())
    }

    async fn append_streams_ungrouped(
        &self,
        writes: &[StreamAppend],
    ) -> Result<Vec<u64>, AppendError> {
        if writes.iter().all(|w| w.events.is_empty()) {
            return self.check_streams(writes).await;
        }
        let columns = self.columns(writes)?;
        let result = self
            .on_connection(async |conn| multi_statement(&columns).fetch_all(conn).await)
            .await;
        let rows = match result {
            Ok(rows) if !rows.is_empty() => rows,
            Ok(_) => return Err(self.first_mismatch(writes).await),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(self.first_mismatch(writes).await);
            }
            Err(e) => return Err(e.into()),
        };
        self.announce_appended();
        Ok(new_versions(writes, rows))
    }

    /// Like [`EventStore::append_streams`], inside the caller's transaction, so that other
    /// writes (an idempotency record) commit or roll back with the events. A savepoint keeps
    /// the transaction usable after a conflict. Announce the append
    /// ([`EventStore::announce_appended`]) once the transaction committed.
    #[tracing::instrument(
        name = "eventstore.append_streams",
        skip_all,
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "INSERT", streams = writes.len()),
        err(level = "debug")
    )]
    pub async fn append_streams_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        writes: &[StreamAppend],
    ) -> Result<Vec<u64>, AppendError> {
        if let [write] = writes {
            let appended = self
                .append_in(tx, &write.stream_id, write.expected, &write.events)
                .await?;
            return Ok(vec![appended.version]);
        }
        if writes.iter().all(|w| w.events.is_empty()) {
            return self.check_streams(writes).await;
        }
        let columns = self.columns(writes)?;
        let mut savepoint = tx.begin().await?;
        let result = multi_statement(&columns).fetch_all(&mut *savepoint).await;
        let rows = match result {
            Ok(rows) if !rows.is_empty() => {
                savepoint.commit().await?;
                rows
            }
            Ok(_) => {
                savepoint.rollback().await?;
                return Err(self.first_mismatch(writes).await);
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                savepoint.rollback().await?;
                return Err(self.first_mismatch(writes).await);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(new_versions(writes, rows))
    }

    fn columns<'a>(&self, writes: &'a [StreamAppend]) -> Result<AppendColumns<'a>, StoreError> {
        let mut columns = AppendColumns::default();
        for write in writes {
            columns.push(self, 0, write)?;
        }
        Ok(columns)
    }

    /// Every expectation of an append that writes nothing, checked.
    pub(crate) async fn check_streams(
        &self,
        writes: &[StreamAppend],
    ) -> Result<Vec<u64>, AppendError> {
        let mut versions = Vec::with_capacity(writes.len());
        for write in writes {
            let actual = self.stream_version(&write.stream_id).await?;
            if !write.expected.admits(actual) {
                return Err(AppendError::WrongExpectedVersion {
                    stream_id: write.stream_id.clone(),
                    expected: write.expected,
                    actual,
                });
            }
            versions.push(actual);
        }
        Ok(versions)
    }

    /// Which stream made a multi-stream append fail, and where it is now.
    pub(crate) async fn first_mismatch(&self, writes: &[StreamAppend]) -> AppendError {
        for write in writes {
            match self.stream_version(&write.stream_id).await {
                Ok(actual) if !write.expected.admits(actual) => {
                    return AppendError::WrongExpectedVersion {
                        stream_id: write.stream_id.clone(),
                        expected: write.expected,
                        actual,
                    };
                }
                Ok(_) => {}
                Err(e) => return e.into(),
            }
        }
        // Every expectation holds now: a racing writer committed and then lost, or an event id
        // was reused. Either way the caller decides again.
        let first = &writes[0];
        AppendError::WrongExpectedVersion {
            stream_id: first.stream_id.clone(),
            expected: first.expected,
            actual: self
                .stream_version(&first.stream_id)
                .await
                .unwrap_or_default(),
        }
    }
}

fn multi_statement<'q>(
    columns: &'q AppendColumns<'q>,
) -> sqlx::query::QueryAs<'q, Postgres, (String, i64), sqlx::postgres::PgArguments> {
    sqlx::query_as(APPEND_STREAMS_SQL)
        .bind(&columns.stream_ids)
        .bind(&columns.event_ids)
        .bind(&columns.event_types)
        .bind(&columns.schema_versions)
        .bind(&columns.data)
        .bind(&columns.metadata)
        .bind(&columns.expected_streams)
        .bind(&columns.modes)
        .bind(&columns.exacts)
}

/// Each stream's version after the statement, in the order of `writes`; a stream that was only
/// checked keeps the version it was expected at.
fn new_versions(writes: &[StreamAppend], rows: Vec<(String, i64)>) -> Vec<u64> {
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for (stream_id, version) in rows {
        let entry = versions.entry(stream_id).or_default();
        *entry = (*entry).max(version as u64);
    }
    writes
        .iter()
        .map(|w| match (versions.get(&w.stream_id), w.expected) {
            (Some(version), _) => *version,
            (None, ExpectedVersion::Exact(v)) => v,
            (None, _) => 0,
        })
        .collect()
}
