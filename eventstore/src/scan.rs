//! The rows of a rebuild's scan ([`crate::EventStore::scan_streams_of_type`]), read as one
//! binary `COPY … TO STDOUT` (PostgreSQL's binary copy format,
//! <https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4>) instead of a
//! `SELECT`'s data rows. A rebuild reads millions of events and its process spent a third of
//! its time in the driver's row machinery (a typed, checked lookup per column, a row object per
//! event); the copy format is a field count and length-prefixed fields, decoded here straight
//! into events. Postgres produces the rows with the same send functions either way.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{EventData, Metadata, RecordedEvent};

/// What the scan selects, in this order (the decoder reads fields by position). Binary forms:
/// `transaction_id` is an xid8 (8 bytes), `recorded_at` microseconds since 2000-01-01, a
/// `jsonb` its format version (1) and its text.
const SCAN_COLUMNS: &str = "e.position, e.transaction_id, e.stream_id, e.version, e.event_id, \
e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at";

/// The version byte before a `jsonb` value's text.
const JSONB_VERSION: u8 = 1;
const FIELDS: i16 = 10;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// A field count of -1: the end of the rows.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// The `SELECT` of the streams whose ids lie strictly between `first` and `last`, in stream
/// order. The bounds are written into the statement as literals: a `COPY` is a simple query,
/// without parameters.
pub fn streams_between_sql(first: &str, last: &str) -> String {
    format!(
        "SELECT {SCAN_COLUMNS} FROM eventstore.events e \
         WHERE e.stream_id > {} AND e.stream_id < {} ORDER BY e.stream_id, e.version",
        literal(first),
        literal(last)
    )
}

/// [`streams_between_sql`] as a binary `COPY` out.
pub(crate) fn copy_streams_between_sql(first: &str, last: &str) -> String {
    format!(
        "COPY ({}) TO STDOUT WITH (FORMAT binary)",
        streams_between_sql(first, last)
    )
}

/// `text` as an SQL string literal (standard-conforming strings: only quotes are special).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Decodes the copy stream into events, whatever way its messages split it (Postgres sends a
/// row per message, the header with the first row and the trailer alone, but the format does
/// not promise that).
#[derive(Debug, Default)]
pub(crate) struct CopyDecoder {
    /// The start of a row (or of the header) whose end has not arrived yet.
    partial: Vec<u8>,
    header_read: bool,
    ended: bool,
}

impl CopyDecoder {
    /// Decodes the rows `chunk` completes, handing each to `row`.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        mut row: impl FnMut(RecordedEvent) -> Result<(), sqlx::Error>,
    ) -> Result<(), sqlx::Error> {
        if self.partial.is_empty() {
            let used = self.decode(chunk, &mut row)?;
            self.partial.extend_from_slice(&chunk[used..]);
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(chunk);
            let used = self.decode(&joined, &mut row)?;
            joined.drain(..used);
            self.partial = joined;
        }
        Ok(())
    }

    /// Checks that the stream ended where the format says it does.
    pub(crate) fn finish(&self) -> Result<(), sqlx::Error> {
        if self.ended && self.partial.is_empty() {
            Ok(())
        } else {
            Err(malformed("the copy ended before its trailer"))
        }
    }

    /// Decodes the whole rows at the start of `bytes`; returns how many bytes they took.
    fn decode(
        &mut self,
        bytes: &[u8],
        row: &mut impl FnMut(RecordedEvent) -> Result<(), sqlx::Error>,
    ) -> Result<usize, sqlx::Error> {
        let mut fields = Fields { bytes, at: 0 };
        if !self.header_read {
            let Some(header) = fields.header()? else {
                return Ok(0);
            };
            fields.at = header;
            self.header_read = true;
        }
        loop {
            let start = fields.at;
            if self.ended {
                return match fields.rest() {
                    [] => Ok(start),
                    _ => Err(malformed("data after the trailer")),
                };
            }
            if fields.rest().starts_with(&TRAILER) {
                fields.at += TRAILER.len();
                self.ended = true;
                continue;
            }
            match fields.event()? {
                Some(event) => row(event)?,
                None => return Ok(start),
            }
        }
    }
}

/// A cursor over copy data; each read returns `None` when the bytes end first.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).map(|b| b.try_into().expect("N bytes"))
    }

    /// The header's length, once it has all arrived.
    fn header(&mut self) -> Result<Option<usize>, sqlx::Error> {
        let Some(signature) = self.take(SIGNATURE.len()) else {
            return Ok(None);
        };
        if signature != SIGNATURE {
            return Err(malformed("no binary copy signature"));
        }
        let Some(_flags) = self.array::<4>() else {
            return Ok(None);
        };
        let Some(extension) = self.array::<4>().map(i32::from_be_bytes) else {
            return Ok(None);
        };
        let extension =
            usize::try_from(extension).map_err(|_| malformed("negative header extension"))?;
        Ok(self.take(extension).map(|_| self.at))
    }

    /// The next row as an event, or `None` if the row has not all arrived (the cursor is then
    /// left anywhere; the caller restarts from the row's start).
    fn event(&mut self) -> Result<Option<RecordedEvent>, sqlx::Error> {
        let Some(count) = self.array::<2>().map(i16::from_be_bytes) else {
            return Ok(None);
        };
        if count != FIELDS {
            return Err(malformed("a row of the wrong number of fields"));
        }
        let mut field = [&[][..]; FIELDS as usize];
        for slot in &mut field {
            let Some(length) = self.array::<4>().map(i32::from_be_bytes) else {
                return Ok(None);
            };
            let length = usize::try_from(length).map_err(|_| malformed("a NULL field"))?;
            let Some(bytes) = self.take(length) else {
                return Ok(None);
            };
            *slot = bytes;
        }
        let [
            position,
            transaction_id,
            stream_id,
            version,
            event_id,
            event_type,
            schema_version,
            data,
            metadata,
            recorded_at,
        ] = field;
        let event_id = Uuid::from_slice(event_id).map_err(|_| malformed("event_id"))?;
        let recorded_at = DateTime::<Utc>::from_timestamp_micros(
            i64::from_be_bytes(fixed(recorded_at, "recorded_at")?)
                .saturating_add(POSTGRES_EPOCH_MICROS),
        )
        .ok_or_else(|| malformed("recorded_at out of range"))?;
        Ok(Some(RecordedEvent {
            position: i64::from_be_bytes(fixed(position, "position")?),
            transaction_id: u64::from_be_bytes(fixed(transaction_id, "transaction_id")?),
            stream_id: text(stream_id, "stream_id")?,
            version: u64::try_from(i64::from_be_bytes(fixed(version, "version")?))
                .map_err(|_| malformed("a negative version"))?,
            event_id,
            event_type: text(event_type, "event_type")?,
            schema_version: i32::from_be_bytes(fixed(schema_version, "schema_version")?),
            data: EventData::from_jsonb_text(text(jsonb(data, "data")?, "data")?),
            metadata: serde_json::from_slice::<Metadata>(jsonb(metadata, "metadata")?)
                .map_err(|e| malformed(&format!("metadata: {e}")))?,
            recorded_at,
        }))
    }
}

fn fixed<const N: usize>(bytes: &[u8], column: &str) -> Result<[u8; N], sqlx::Error> {
    bytes
        .try_into()
        .map_err(|_| malformed(&format!("{column} is not {N} bytes")))
}

/// The text of a `jsonb` value in its binary form.
fn jsonb<'a>(bytes: &'a [u8], column: &str) -> Result<&'a [u8], sqlx::Error> {
    match bytes.split_first() {
        Some((&JSONB_VERSION, text)) => Ok(text),
        _ => Err(malformed(&format!("{column} is not jsonb of version 1"))),
    }
}

fn text(bytes: &[u8], column: &str) -> Result<String, sqlx::Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(&format!("{column} is not UTF-8")))
}

fn malformed(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("stream-order scan: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of `rows` events (header, rows, trailer) as Postgres writes it.
    fn copy_of(rows: usize) -> (Vec<u8>, Vec<RecordedEvent>) {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&0i32.to_be_bytes());
        bytes.extend_from_slice(&0i32.to_be_bytes());
        let mut events = Vec::new();
        for n in 0..rows {
            let event = RecordedEvent {
                position: 10 + n as i64,
                transaction_id: 700 + n as u64,
                stream_id: format!("order-{n}"),
                version: 1,
                event_id: Uuid::now_v7(),
                event_type: "OrderPlaced".into(),
                schema_version: 2,
                data: EventData::from_jsonb_text(format!(r#"{{"n": {n}, "name": "Crème"}}"#)),
                metadata: Metadata {
                    actor: Some("customer-1".into()),
                    ..Metadata::default()
                },
                recorded_at: DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap(),
            };
            let fields: [Vec<u8>; 10] = [
                event.position.to_be_bytes().to_vec(),
                event.transaction_id.to_be_bytes().to_vec(),
                event.stream_id.as_bytes().to_vec(),
                (event.version as i64).to_be_bytes().to_vec(),
                event.event_id.as_bytes().to_vec(),
                event.event_type.as_bytes().to_vec(),
                event.schema_version.to_be_bytes().to_vec(),
                [&[JSONB_VERSION], event.data.as_str().as_bytes()].concat(),
                [
                    vec![JSONB_VERSION],
                    serde_json::to_vec(&event.metadata).unwrap(),
                ]
                .concat(),
                (event.recorded_at.timestamp_micros() - POSTGRES_EPOCH_MICROS)
                    .to_be_bytes()
                    .to_vec(),
            ];
            bytes.extend_from_slice(&FIELDS.to_be_bytes());
            for field in fields {
                bytes.extend_from_slice(&(field.len() as i32).to_be_bytes());
                bytes.extend_from_slice(&field);
            }
            events.push(event);
        }
        bytes.extend_from_slice(&TRAILER);
        (bytes, events)
    }

    fn decode_in_chunks(bytes: &[u8], chunk: usize) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let mut decoder = CopyDecoder::default();
        let mut events = Vec::new();
        for piece in bytes.chunks(chunk) {
            decoder.feed(piece, |event| {
                events.push(event);
                Ok(())
            })?;
        }
        decoder.finish()?;
        Ok(events)
    }

    #[test]
    fn rows_decode_into_the_events_they_hold_however_the_bytes_are_split() {
        let (bytes, expected) = copy_of(5);
        for chunk in [1, 2, 7, 19, 100, bytes.len()] {
            assert_eq!(
                decode_in_chunks(&bytes, chunk).unwrap(),
                expected,
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn a_copy_cut_short_or_followed_by_more_is_an_error() {
        let (bytes, _) = copy_of(2);
        let cut = decode_in_chunks(&bytes[..bytes.len() - 5], 64).unwrap_err();
        assert!(cut.to_string().contains("before its trailer"), "{cut}");
        let mut longer = bytes.clone();
        longer.push(0);
        let extra = decode_in_chunks(&longer, 64).unwrap_err();
        assert!(extra.to_string().contains("after the trailer"), "{extra}");
    }

    #[test]
    fn a_null_or_a_row_of_other_columns_is_an_error() {
        let (mut bytes, _) = copy_of(1);
        // The first field's length (after the 19-byte header and the field count).
        bytes[21..25].copy_from_slice(&(-1i32).to_be_bytes());
        let null = decode_in_chunks(&bytes, 64).unwrap_err();
        assert!(null.to_string().contains("NULL"), "{null}");

        let (mut bytes, _) = copy_of(1);
        bytes[19..21].copy_from_slice(&9i16.to_be_bytes());
        let narrow = decode_in_chunks(&bytes, 64).unwrap_err();
        assert!(narrow.to_string().contains("number of fields"), "{narrow}");
    }

    #[test]
    fn bounds_are_quoted_as_literals() {
        assert!(
            streams_between_sql("o'x-", "o'x.").contains("> 'o''x-' AND e.stream_id < 'o''x.'")
        );
    }
}
