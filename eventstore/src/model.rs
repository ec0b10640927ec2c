//! The event store's vocabulary: what goes in ([`NewEvent`]), what comes out
//! ([`RecordedEvent`]), where a reader is in the global log ([`LogPosition`]) and what an append
//! expects of the stream ([`ExpectedVersion`]).

use std::fmt;

use chrono::{DateTime, Utc};
use domain::DomainEvent;
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
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventData(Box<serde_json::value::RawValue>);

impl EventData {
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a JSON value always serialises"))
    }

    /// The data as a JSON tree.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).expect("stored event data is valid JSON")
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
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
        use serde::de::value::MapDeserializer;
        let error = |reason: String| StoreError::Decode {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            reason,
        };
        let tag = serde_json::to_string(&self.event_type)
            .and_then(serde_json::value::RawValue::from_string)
            .map_err(|e| error(e.to_string()))?;
        let tagged = MapDeserializer::<_, serde_json::Error>::new(
            [("type", &*tag), ("data", &*self.data.0)].into_iter(),
        );
        E::deserialize(tagged).map_err(|e| error(e.to_string()))
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
