//! The rows of a rebuild's scan ([`crate::EventStore::scan_streams_of_type`]), read as one
//! binary `COPY … TO STDOUT` (the "Binary Format" section of
//! <https://www.postgresql.org/docs/current/sql-copy.html>) instead of a `SELECT`'s data rows. A
//! rebuild reads millions of events, and its process spent a third of its time in the driver's
//! row machinery (a typed, checked lookup per column, a row object per event); the copy format is
//! a field count and length-prefixed fields, decoded here straight into events. The columns are
//! sent in their binary forms, so Postgres does no text conversion beyond `jsonb`'s own.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{EventData, Metadata, RecordedEvent};

/// What the scan selects, in this order (the decoder reads fields by position). Binary forms:
/// `transaction_id` is an xid8 (8 bytes), `recorded_at` microseconds since 2000-01-01, a
/// `jsonb` its format version (1) and its text.
const SCAN_COLUMNS: &str = "e.position, e.transaction_id, e.stream_id, e.version, e.event_id, \
e.event_type, e.schema_version, e.data, e.metadata, e.recorded_at";
const FIELDS: i16 = 10;

/// The version byte before a `jsonb` value's text.
const JSONB_VERSION: u8 = 1;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC): a binary
/// `timestamptz` counts from there. Public for the projectors' `COPY` in.
pub const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How a binary copy starts, either way.
pub const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Header flags a reader must understand: bit 16 says each row carries OIDs (never sent since
/// PostgreSQL 12); bits 0-15 are reserved for flags that may be ignored.
const CRITICAL_FLAGS: u32 = 0xffff_0000;

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

/// `text` as an escape-string literal, `E'…'`: quotes and backslashes doubled, which reads the
/// same whatever `standard_conforming_strings` says.
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
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
    /// Decodes the rows `chunk` completes into `events`.
    pub(crate) fn feed(
        &mut self,
        chunk: &[u8],
        events: &mut Vec<RecordedEvent>,
    ) -> Result<(), sqlx::Error> {
        if self.partial.is_empty() {
            let used = self.decode(chunk, events)?;
            self.partial.extend_from_slice(&chunk[used..]);
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(chunk);
            let used = self.decode(&joined, events)?;
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
        events: &mut Vec<RecordedEvent>,
    ) -> Result<usize, sqlx::Error> {
        let mut fields = Fields { bytes, at: 0 };
        if !self.header_read {
            if fields.header()?.is_none() {
                return Ok(0);
            }
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
            match fields.row()? {
                Some(Row::Event(event)) => events.push(event),
                Some(Row::Trailer) => self.ended = true,
                None => return Ok(start),
            }
        }
    }
}

// Returned and consumed at once, never stored: boxing the event would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Row {
    Event(RecordedEvent),
    Trailer,
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

    /// Reads the header, once it has all arrived.
    fn header(&mut self) -> Result<Option<()>, sqlx::Error> {
        let Some(signature) = self.take(SIGNATURE.len()) else {
            return Ok(None);
        };
        if signature != SIGNATURE {
            return Err(malformed("no binary copy signature"));
        }
        let Some(flags) = self.array::<4>().map(u32::from_be_bytes) else {
            return Ok(None);
        };
        if flags & CRITICAL_FLAGS != 0 {
            return Err(malformed("a header flag this reader does not know"));
        }
        let Some(extension) = self.array::<4>().map(i32::from_be_bytes) else {
            return Ok(None);
        };
        let extension =
            usize::try_from(extension).map_err(|_| malformed("negative header extension"))?;
        Ok(self.take(extension).map(|_| ()))
    }

    /// The next row, or `None` if it has not all arrived (the cursor is then left anywhere;
    /// the caller restarts from the row's start).
    fn row(&mut self) -> Result<Option<Row>, sqlx::Error> {
        let Some(count) = self.array::<2>().map(i16::from_be_bytes) else {
            return Ok(None);
        };
        match count {
            -1 => return Ok(Some(Row::Trailer)),
            FIELDS => {}
            _ => return Err(malformed("a row of the wrong number of fields")),
        }
        let mut field = [&[][..]; FIELDS as usize];
        for slot in &mut field {
            let Some(length) = self.array::<4>().map(i32::from_be_bytes) else {
                return Ok(None);
            };
            let length = match usize::try_from(length) {
                Ok(length) => length,
                Err(_) if length == -1 => return Err(malformed("a NULL field")),
                Err(_) => return Err(malformed("a negative field length")),
            };
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
        Ok(Some(Row::Event(RecordedEvent {
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
        })))
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

    fn event(n: usize) -> RecordedEvent {
        RecordedEvent {
            position: 10 + n as i64,
            transaction_id: 700 + n as u64,
            stream_id: format!("order-{n}"),
            version: 1,
            event_id: Uuid::now_v7(),
            event_type: "OrderPlaced".into(),
            schema_version: 2,
            // Spaced as `jsonb` prints it, which a decoder that parsed and rewrote it would lose.
            data: EventData::from_jsonb_text(format!(r#"{{"n": {n}, "name": "Crème \"x\""}}"#)),
            metadata: Metadata {
                actor: Some("customer-1".into()),
                ..Metadata::default()
            },
            recorded_at: DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap(),
        }
    }

    /// An event's fields as Postgres sends them.
    fn fields_of(event: &RecordedEvent) -> [Vec<u8>; 10] {
        [
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
        ]
    }

    /// A whole copy: header (with `extension`), `rows`, trailer.
    fn copy_of(extension: &[u8], rows: &[[Vec<u8>; 10]]) -> Vec<u8> {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&0i32.to_be_bytes());
        bytes.extend_from_slice(&(extension.len() as i32).to_be_bytes());
        bytes.extend_from_slice(extension);
        for fields in rows {
            bytes.extend_from_slice(&FIELDS.to_be_bytes());
            for field in fields {
                bytes.extend_from_slice(&(field.len() as i32).to_be_bytes());
                bytes.extend_from_slice(field);
            }
        }
        bytes.extend_from_slice(&(-1i16).to_be_bytes()); // the trailer
        bytes
    }

    fn copy_of_events(n: usize) -> (Vec<u8>, Vec<RecordedEvent>) {
        let events: Vec<RecordedEvent> = (0..n).map(event).collect();
        let rows: Vec<[Vec<u8>; 10]> = events.iter().map(fields_of).collect();
        (copy_of(&[], &rows), events)
    }

    fn decode_in_chunks(bytes: &[u8], chunk: usize) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let mut decoder = CopyDecoder::default();
        let mut events = Vec::new();
        for piece in bytes.chunks(chunk) {
            decoder.feed(piece, &mut events)?;
        }
        decoder.finish()?;
        Ok(events)
    }

    /// Changes an event's fields as Postgres sent them.
    type Spoil = fn(&mut [Vec<u8>; 10]);

    /// The error decoding a copy of one event whose fields `spoil` changed.
    fn error_with(spoil: Spoil) -> String {
        let mut fields = fields_of(&event(0));
        spoil(&mut fields);
        decode_in_chunks(&copy_of(&[], &[fields]), 64)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rows_decode_into_the_events_they_hold_however_the_bytes_are_split() {
        let (bytes, expected) = copy_of_events(5);
        for chunk in [1, 2, 7, 19, 100, bytes.len()] {
            let decoded = decode_in_chunks(&bytes, chunk).unwrap();
            assert_eq!(decoded, expected, "chunks of {chunk}");
            for (decoded, expected) in decoded.iter().zip(&expected) {
                assert_eq!(decoded.data.as_str(), expected.data.as_str());
            }
        }
    }

    #[test]
    fn a_header_extension_is_skipped_and_no_rows_is_no_events() {
        let rows = [fields_of(&event(0))];
        for chunk in [1, 5, 1000] {
            let decoded = decode_in_chunks(&copy_of(b"future", &rows), chunk).unwrap();
            assert_eq!(decoded.len(), 1, "chunks of {chunk}");
            assert_eq!(decode_in_chunks(&copy_of(&[], &[]), chunk).unwrap(), []);
        }
    }

    #[test]
    fn a_copy_cut_short_or_followed_by_more_is_an_error() {
        let (bytes, _) = copy_of_events(2);
        let cut = decode_in_chunks(&bytes[..bytes.len() - 5], 64).unwrap_err();
        assert!(cut.to_string().contains("before its trailer"), "{cut}");
        let mut longer = bytes.clone();
        longer.push(0);
        for chunk in [64, bytes.len()] {
            // The extra byte in the trailer's chunk, and in a chunk of its own.
            let extra = decode_in_chunks(&longer, chunk).unwrap_err();
            assert!(extra.to_string().contains("after the trailer"), "{extra}");
        }
    }

    #[test]
    fn a_header_of_another_format_is_an_error() {
        let (mut bytes, _) = copy_of_events(1);
        bytes[0] = b'X';
        let unsigned = decode_in_chunks(&bytes, 64).unwrap_err();
        assert!(unsigned.to_string().contains("signature"), "{unsigned}");
        let (mut bytes, _) = copy_of_events(1);
        bytes[11..15].copy_from_slice(&(1u32 << 16).to_be_bytes()); // rows with OIDs
        let oids = decode_in_chunks(&bytes, 64).unwrap_err();
        assert!(oids.to_string().contains("flag"), "{oids}");
    }

    #[test]
    fn a_null_or_a_row_of_other_columns_is_an_error() {
        let (mut bytes, _) = copy_of_events(1);
        // The first field's length (after the 19-byte header and the field count).
        bytes[21..25].copy_from_slice(&(-1i32).to_be_bytes());
        let null = decode_in_chunks(&bytes, 64).unwrap_err();
        assert!(null.to_string().contains("NULL"), "{null}");

        let (mut bytes, _) = copy_of_events(1);
        bytes[19..21].copy_from_slice(&9i16.to_be_bytes());
        let narrow = decode_in_chunks(&bytes, 64).unwrap_err();
        assert!(narrow.to_string().contains("number of fields"), "{narrow}");
    }

    #[test]
    fn a_field_that_is_not_its_column_s_binary_form_is_an_error() {
        let cases: [(&str, Spoil); 6] = [
            ("position is not 8 bytes", |f| f[0].truncate(4)),
            ("stream_id is not UTF-8", |f| f[2] = vec![0xff, 0xfe]),
            ("a negative version", |f| {
                f[3] = (-1i64).to_be_bytes().to_vec()
            }),
            ("event_id", |f| f[4].truncate(15)),
            ("data is not jsonb of version 1", |f| f[7][0] = 2),
            // Postgres' `infinity`.
            ("recorded_at out of range", |f| {
                f[9] = i64::MAX.to_be_bytes().to_vec()
            }),
        ];
        for (expected, spoil) in cases {
            let error = error_with(spoil);
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn bounds_are_written_as_escape_string_literals() {
        let sql = streams_between_sql("o'x\\-", "o'x\\.");
        assert!(
            sql.contains(r"> E'o''x\\-' AND e.stream_id < E'o''x\\.'"),
            "{sql}"
        );
    }
}
