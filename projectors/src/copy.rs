//! Writing new views with one binary `COPY … FROM STDIN` (PostgreSQL's binary copy format,
//! <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>), for a rebuild's
//! fill: Postgres takes rows this way for about two thirds of what a checked
//! `INSERT … SELECT unnest(…) ON CONFLICT` costs it (no arrays to parse, no conflict arbitration
//! per row), which is most of a rebuild's write cost. A COPY only inserts, so it is for views
//! that are not stored yet; [`crate::tables::fill`] falls back to the checked upsert when one is.

use chrono::{DateTime, Utc};
use eventstore::scan::{POSTGRES_EPOCH_MICROS, SIGNATURE};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// Bytes of rows gathered before they are sent.
const CHUNK: usize = 128 * 1024;

/// Rows in the binary copy format, sent by [`CopyRows::copy`] as they are written.
#[derive(Debug)]
pub struct CopyRows {
    buffer: Vec<u8>,
    fields: i16,
}

impl CopyRows {
    /// An empty set of rows of `fields` columns each, with room for a chunk and the row that
    /// overflows it.
    fn new(fields: usize) -> Self {
        let mut buffer = Vec::with_capacity(CHUNK + CHUNK / 4);
        buffer.extend_from_slice(SIGNATURE);
        buffer.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buffer.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Self {
            buffer,
            fields: i16::try_from(fields).expect("a table has at most 1,600 columns"),
        }
    }

    /// Starts the next row; its columns follow, in the statement's order.
    pub fn row(&mut self) -> &mut Self {
        self.buffer.extend_from_slice(&self.fields.to_be_bytes());
        self
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        let length = i32::try_from(bytes.len()).expect("a field under 2 GiB");
        self.buffer.extend_from_slice(&length.to_be_bytes());
        self.buffer.extend_from_slice(bytes);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.buffer.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    pub fn uuid(&mut self, id: Uuid) -> &mut Self {
        self.field(id.as_bytes())
    }

    pub fn text(&mut self, text: &str) -> &mut Self {
        self.field(text.as_bytes())
    }

    pub fn int8(&mut self, n: i64) -> &mut Self {
        self.field(&n.to_be_bytes())
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.field(&[u8::from(b)])
    }

    pub fn timestamptz(&mut self, at: DateTime<Utc>) -> &mut Self {
        self.int8(at.timestamp_micros() - POSTGRES_EPOCH_MICROS)
    }

    pub fn optional_uuid(&mut self, id: Option<Uuid>) -> &mut Self {
        match id {
            Some(id) => self.uuid(id),
            None => self.null(),
        }
    }

    pub fn optional_timestamptz(&mut self, at: Option<DateTime<Utc>>) -> &mut Self {
        match at {
            Some(at) => self.timestamptz(at),
            None => self.null(),
        }
    }

    /// `value` as JSON text, serialised straight into the rows (for a `text` column holding
    /// JSON).
    pub fn json(&mut self, value: &impl Serialize) -> Result<&mut Self, serde_json::Error> {
        let at = self.buffer.len();
        self.buffer.extend_from_slice(&0i32.to_be_bytes());
        serde_json::to_writer(&mut self.buffer, value)?;
        let length = i32::try_from(self.buffer.len() - at - 4).expect("a field under 2 GiB");
        self.buffer[at..at + 4].copy_from_slice(&length.to_be_bytes());
        Ok(self)
    }

    /// Copies `items` into `table` (`"schema".table (columns…)`), each written as one row of
    /// `fields` columns by `encode`, and returns how many went in. The rows go out in chunks of
    /// [`CHUNK`] bytes as they are encoded, so Postgres inserts one chunk while the next is
    /// encoded, and one small buffer is reused (a batch's rows built whole were megabytes of
    /// freshly mapped memory each time). Fails as a whole on any row (a unique violation, say),
    /// like any statement.
    pub async fn copy<T>(
        conn: &mut PgConnection,
        table: &str,
        fields: usize,
        items: &[T],
        mut encode: impl FnMut(&T, &mut CopyRows) -> Result<(), serde_json::Error>,
    ) -> Result<u64, sqlx::Error> {
        let mut rows = Self::new(fields);
        let mut copy = conn
            .copy_in_raw(&format!("COPY {table} FROM STDIN WITH (FORMAT binary)"))
            .await?;
        let sent = async {
            for item in items {
                encode(item, rows.row()).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                if rows.buffer.len() >= CHUNK {
                    copy.send(rows.buffer.as_slice()).await?;
                    rows.buffer.clear();
                }
            }
            rows.buffer.extend_from_slice(&(-1i16).to_be_bytes()); // the trailer
            copy.send(rows.buffer.as_slice()).await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match sent {
            Ok(()) => copy.finish().await,
            Err(e) => {
                // So the connection is not left mid-COPY.
                let _ = copy.abort("the rows could not be sent").await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_its_field_count_then_each_field_with_its_length() {
        let mut rows = CopyRows::new(3);
        rows.row().int8(7).null().text("é");
        let body = &rows.buffer[19..];
        assert_eq!(
            body,
            [
                &3i16.to_be_bytes()[..],
                &8i32.to_be_bytes(),
                &7i64.to_be_bytes(),
                &(-1i32).to_be_bytes(),
                &2i32.to_be_bytes(),
                "é".as_bytes(),
            ]
            .concat()
        );
    }

    #[test]
    fn timestamps_count_microseconds_from_2000() {
        let mut rows = CopyRows::new(1);
        let at = DateTime::parse_from_rfc3339("2000-01-01T00:00:01.000002Z")
            .unwrap()
            .to_utc();
        rows.row().timestamptz(at);
        assert_eq!(
            &rows.buffer[rows.buffer.len() - 8..],
            1_000_002i64.to_be_bytes()
        );
    }

    #[test]
    fn json_is_written_in_place_with_its_length() {
        let mut rows = CopyRows::new(1);
        rows.row()
            .json(&serde_json::json!({ "a": [1, 2] }))
            .unwrap();
        let field = &rows.buffer[21..];
        let text = br#"{"a":[1,2]}"#;
        assert_eq!(&field[..4], (text.len() as i32).to_be_bytes());
        assert_eq!(&field[4..], text);
    }
}
