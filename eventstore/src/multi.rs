//! Appending to several streams at once, atomically, in one statement: a checkout closes the
//! cart and places the order together or not at all, in one round trip.

use std::collections::BTreeMap;

use crate::error::{AppendError, StoreError};
use crate::model::{ExpectedVersion, NewEvent};
use crate::store::EventStore;

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
    /// version fails the whole append with [`AppendError::WrongExpectedVersion`].
    pub async fn append_streams(&self, writes: &[StreamAppend]) -> Result<Vec<u64>, AppendError> {
        let mut columns = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for write in writes {
            for event in &write.events {
                columns.0.push(write.stream_id.as_str());
                columns.1.push(event.event_id);
                columns.2.push(event.event_type.as_str());
                columns.3.push(self.schema_version_of(&event.event_type));
                columns.4.push(event.data.clone());
                columns
                    .5
                    .push(serde_json::to_value(&event.metadata).map_err(|e| {
                        StoreError::Encode {
                            event_type: "metadata".into(),
                            reason: e.to_string(),
                        }
                    })?);
            }
        }
        let (modes, exacts): (Vec<i32>, Vec<i64>) = writes
            .iter()
            .map(|w| match w.expected {
                ExpectedVersion::Any => (0, 0),
                ExpectedVersion::NoStream => (1, 0),
                ExpectedVersion::StreamExists => (2, 0),
                ExpectedVersion::Exact(v) => (3, i64::try_from(v).unwrap_or(i64::MAX)),
            })
            .unzip();
        let statement = sqlx::query_as(APPEND_STREAMS_SQL)
            .bind(&columns.0)
            .bind(&columns.1)
            .bind(&columns.2)
            .bind(&columns.3)
            .bind(&columns.4)
            .bind(&columns.5)
            .bind(
                writes
                    .iter()
                    .map(|w| w.stream_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(modes)
            .bind(exacts);
        let result: Result<Vec<(String, i64)>, sqlx::Error> = self
            .on_connection(async |conn| statement.fetch_all(conn).await)
            .await;
        let rows = match result {
            Ok(rows) if !rows.is_empty() || columns.1.is_empty() => rows,
            Ok(_) => return Err(self.first_mismatch(writes).await),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                return Err(self.first_mismatch(writes).await);
            }
            Err(e) => return Err(e.into()),
        };
        let mut versions: BTreeMap<String, u64> = BTreeMap::new();
        for (stream_id, version) in rows {
            let entry = versions.entry(stream_id).or_default();
            *entry = (*entry).max(version as u64);
        }
        self.announce_appended();
        Ok(writes
            .iter()
            .map(|w| versions.get(&w.stream_id).copied().unwrap_or_default())
            .collect())
    }

    /// Which stream made a multi-stream append fail, and where it is now.
    async fn first_mismatch(&self, writes: &[StreamAppend]) -> AppendError {
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
