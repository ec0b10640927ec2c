//! The event store's vocabulary: what goes in ([`NewEvent`]), what comes out
//! ([`RecordedEvent`]), where a reader is in the global log ([`LogPosition`]) and what an append
//! expects of the stream ([`ExpectedVersion`]).

use std::fmt;

use chrono::{DateTime, Utc};
use domain::DomainEvent;
use serde::de::value::BorrowedStrDeserializer;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::StoreError;

/// What an append requires of the stream's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version (0 = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    pub(crate) fn admits(self, current: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == 0,
            Self::StreamExists => current > 0,
            Self::Exact(v) => current == v,
        }
    }

    /// The expectation as the append statements take it: (mode, exact version).
    pub(crate) fn as_columns(self) -> (i32, i64) {
        match self {
            Self::Any => (0, 0),
            Self::NoStream => (1, 0),
            Self::StreamExists => (2, 0),
            Self::Exact(v) => (3, i64::try_from(v).unwrap_or(i64::MAX)),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Context stored with every event: who did it, why, and how to find the trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Shared by every event that one user request caused, across streams and processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event (or request) that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The user id of whoever sent the command, or the name of the process that did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// W3C trace context of the request that appended the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub data: serde_json::Value,
    pub metadata: Metadata,
}

impl NewEvent {
    /// Serialises a domain event. Domain events are adjacently tagged (`{"type", "data"}`); the
    /// tag becomes the `event_type` column and the content the `data` column.
    pub fn from_domain<E: DomainEvent>(
        event_id: Uuid,
        event: &E,
        metadata: Metadata,
    ) -> Result<Self, StoreError> {
        let event_type = event.event_type().to_owned();
        let data = match serde_json::to_value(event) {
            Ok(serde_json::Value::Object(mut tagged)) => tagged
                .remove("data")
                .unwrap_or(serde_json::Value::Object(Default::default())),
            Ok(other) => {
                return Err(StoreError::Encode {
                    event_type,
                    reason: format!("expected an adjacently tagged object, got {other}"),
                });
            }
            Err(e) => {
                return Err(StoreError::Encode {
                    event_type,
                    reason: e.to_string(),
                });
            }
        };
        Ok(Self {
            event_id,
            event_type,
            data,
            metadata,
        })
    }
}

/// A point in the global log. The log is ordered by the writing transaction's id, then by
/// position; a reader that has seen `(t, p)` has seen every event at or before it.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogPosition {
    pub transaction_id: u64,
    pub position: i64,
}

impl LogPosition {
    /// Before the first event.
    pub const START: Self = Self {
        transaction_id: 0,
        position: 0,
    };
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction_id, self.position)
    }
}

/// An event's data as stored: its JSON text, parsed only when it is decoded into a domain event
/// (or turned into a [`serde_json::Value`] for upcasting and display). Rebuilds and consumers read
/// millions of events and never need the generic JSON tree in between.
///
/// The text is always valid JSON: it is written from a [`serde_json::Value`], read from a
/// `jsonb` column (whose text Postgres writes) or deserialised from a JSON document (which
/// checks it). So a read from the store does not parse it just to check it: that was a tenth of
/// a rebuild's decoding, for text the database had already checked on the way in.
#[derive(Clone)]
pub struct EventData(Box<str>);

impl EventData {
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(value.to_string().into_boxed_str())
    }

    /// The text of a `jsonb` column: valid JSON by the column's type.
    pub(crate) fn from_jsonb_text(text: String) -> Self {
        Self(text.into_boxed_str())
    }

    /// The data as a JSON tree.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).expect("stored event data is valid JSON")
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for EventData {
    /// As the JSON it is (an object in the envelope), not as a string holding it.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::from_str::<&serde_json::value::RawValue>(&self.0)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EventData {
    /// Any JSON value, checked and kept as text.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<serde_json::value::RawValue>::deserialize(deserializer).map(|raw| Self(raw.into()))
    }
}

impl PartialEq for EventData {
    /// Equal as JSON (not only as text).
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.to_value() == other.to_value()
    }
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event as stored, after upcasting to its current schema version.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub transaction_id: u64,
    pub stream_id: String,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: EventData,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    pub fn log_position(&self) -> LogPosition {
        LogPosition {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }

    /// The stream type: the part of the stream id before the first dash.
    pub fn stream_type(&self) -> &str {
        self.stream_id
            .split_once('-')
            .map_or(self.stream_id.as_str(), |(t, _)| t)
    }

    /// Deserialises into a domain event enum straight from the stored JSON text (a rebuild
    /// decodes millions of these). Domain events are adjacently tagged; the tag is the
    /// `event_type` column.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, StoreError> {
        E::deserialize(serde::de::value::MapAccessDeserializer::new(Tagged {
            tag: Some(&self.event_type),
            data: Some(self.data.as_str()),
        }))
        .map_err(|e| StoreError::Decode {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            reason: e.to_string(),
        })
    }
}

/// An event as its domain enum's adjacently tagged form, `{"type": <event_type>, "data": <data>}`,
/// without building that document: the tag is handed over as the string it is and the data is
/// parsed straight from its text.
struct Tagged<'a> {
    tag: Option<&'a str>,
    data: Option<&'a str>,
}

impl<'de> serde::de::MapAccess<'de> for Tagged<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let key = if self.tag.is_some() {
            "type"
        } else if self.data.is_some() {
            "data"
        } else {
            return Ok(None);
        };
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        if let Some(tag) = self.tag.take() {
            return seed.deserialize(BorrowedStrDeserializer::new(tag));
        }
        let data = self
            .data
            .take()
            .ok_or_else(|| serde::de::Error::custom("no value left"))?;
        let mut json = serde_json::Deserializer::from_str(data);
        let value = seed.deserialize(&mut json)?;
        json.end()?;
        Ok(value)
    }
}

/// The outcome of a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append (its last event's version).
    pub version: u64,
    /// Global positions of the appended events, in order.
    pub positions: Vec<i64>,
    /// True when every event was already stored by an earlier attempt; nothing was written.
    pub already_stored: bool,
}

#[cfg(test)]
mod tests {
    use domain::cart::CartEvent;
    use serde_json::json;

    use super::*;

    fn recorded(event_type: &str, data: &str) -> RecordedEvent {
        RecordedEvent {
            position: 1,
            transaction_id: 1,
            stream_id: format!("cart-{}", Uuid::nil()),
            version: 1,
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data: EventData::from_jsonb_text(data.into()),
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn an_event_decodes_from_its_type_and_data_text() {
        let created: CartEvent = serde_json::from_value(json!({
            "type": "CartCreated",
            "data": { "cart_id": Uuid::nil(), "customer_id": "alice" },
        }))
        .unwrap();
        let new = NewEvent::from_domain(Uuid::now_v7(), &created, Metadata::default()).unwrap();
        let stored = recorded(&new.event_type, &new.data.to_string());
        assert_eq!(stored.decode::<CartEvent>().unwrap(), created);
    }

    #[test]
    fn an_event_that_does_not_fit_its_type_is_a_decode_error_naming_it() {
        let cases = [
            (
                "CartCreated",
                r#"{"cart_id": "not a uuid", "customer_id": "alice"}"#,
            ),
            ("CartCreated", r#"{"customer_id": "alice"}"#),
            ("NoSuchEvent", r#"{}"#),
            (
                "CartCreated",
                r#"{"cart_id": "00000000-0000-0000-0000-000000000000", "customer_id": "alice"} trailing"#,
            ),
        ];
        for (event_type, data) in cases {
            let stored = recorded(event_type, data);
            match stored.decode::<CartEvent>() {
                Err(StoreError::Decode {
                    event_id,
                    event_type: named,
                    ..
                }) => {
                    assert_eq!((event_id, named.as_str()), (stored.event_id, event_type));
                }
                other => panic!("{event_type} {data}: {other:?}"),
            }
        }
    }

    #[test]
    fn event_data_travels_as_the_json_it_is() {
        let data = EventData::from_value(&json!({"quantity": 2, "sku": "A-1"}));
        let body = serde_json::to_string(&json!({ "data": data })).unwrap();
        assert_eq!(body, r#"{"data":{"quantity":2,"sku":"A-1"}}"#);
        #[derive(Deserialize)]
        struct Body {
            data: EventData,
        }
        let back: Body = serde_json::from_str(&body).unwrap();
        assert_eq!(back.data, data);
        assert_eq!(back.data.to_value(), json!({"quantity": 2, "sku": "A-1"}));
        assert!(serde_json::from_str::<Body>(r#"{"data": {"quantity": }"#).is_err());
    }
}
