//! [`Envelope`]: what travels on the bus — one recorded event, as JSON, with its routing key and
//! AMQP properties.
//!
//! The body is the whole recorded event (ids, stream, version, global position, type, schema
//! version, data, metadata, time), so a consumer needs nothing but the body; the properties and
//! headers repeat the routing-relevant parts for tooling (management UI, `till`, tracing) that
//! should not parse bodies:
//!
//! - `delivery_mode` 2 (persistent), `content_type` `application/json`
//! - `message_id` = event id — consumers and tests deduplicate on it
//! - `type` = event type, `timestamp` = recorded time (seconds), `correlation_id` when known
//! - headers `stream_id`, `stream_type`, `version`, `position`, `transaction_id`,
//!   `schema_version`, and `correlation_id`, `causation_id`, `traceparent` when present
//!
//! The routing key is `<stream type>.<event type>` (`cart.CartItemAdded`), so a consumer binds
//! `cart.*` for one aggregate or `#` for everything.

use chrono::{DateTime, Utc};
use eventstore::{EventData, LogPosition, Metadata, RecordedEvent};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const CONTENT_TYPE: &str = "application/json";
/// AMQP `delivery_mode` for messages that survive a broker restart.
pub const PERSISTENT: u8 = 2;

/// A recorded event as a message body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub stream_id: String,
    pub stream_type: String,
    pub version: u64,
    pub position: i64,
    pub transaction_id: u64,
    pub event_type: String,
    pub schema_version: i32,
    pub data: EventData,
    #[serde(default)]
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("cannot encode the envelope of event {event_id}")]
    Encode {
        event_id: Uuid,
        #[source]
        source: serde_json::Error,
    },
    #[error("the message body is not an event envelope")]
    Decode(#[source] serde_json::Error),
}

impl Envelope {
    /// `<stream type>.<event type>`, e.g. `cart.CartItemAdded`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.stream_type, self.event_type)
    }

    pub fn log_position(&self) -> LogPosition {
        LogPosition {
            transaction_id: self.transaction_id,
            position: self.position,
        }
    }

    pub fn to_body(&self) -> Result<Vec<u8>, EnvelopeError> {
        serde_json::to_vec(self).map_err(|source| EnvelopeError::Encode {
            event_id: self.event_id,
            source,
        })
    }

    pub fn from_body(body: &[u8]) -> Result<Self, EnvelopeError> {
        serde_json::from_slice(body).map_err(EnvelopeError::Decode)
    }

    /// The AMQP properties the relay publishes this envelope with.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        let mut text = |name: &str, value: &str| {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        };
        text("stream_id", &self.stream_id);
        text("stream_type", &self.stream_type);
        if let Some(id) = self.metadata.correlation_id {
            text("correlation_id", &id.to_string());
        }
        if let Some(id) = self.metadata.causation_id {
            text("causation_id", &id.to_string());
        }
        if let Some(traceparent) = &self.metadata.traceparent {
            text("traceparent", traceparent);
        }
        let mut int = |name: &str, value: i64| {
            headers.insert(name.into(), AMQPValue::LongLongInt(value));
        };
        int("version", i64::try_from(self.version).unwrap_or(i64::MAX));
        int("position", self.position);
        int(
            "transaction_id",
            i64::try_from(self.transaction_id).unwrap_or(i64::MAX),
        );
        int("schema_version", i64::from(self.schema_version));

        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(CONTENT_TYPE.into())
            .with_message_id(self.event_id.to_string().into())
            .with_type(self.event_type.as_str().into())
            .with_timestamp(u64::try_from(self.recorded_at.timestamp()).unwrap_or_default())
            .with_headers(headers);
        if let Some(id) = self.metadata.correlation_id {
            properties = properties.with_correlation_id(id.to_string().into());
        }
        properties
    }
}

impl From<&RecordedEvent> for Envelope {
    fn from(event: &RecordedEvent) -> Self {
        Self {
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            stream_type: event.stream_type().to_owned(),
            version: event.version,
            position: event.position,
            transaction_id: event.transaction_id,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            data: event.data.clone(),
            metadata: event.metadata.clone(),
            recorded_at: event.recorded_at,
        }
    }
}

impl From<Envelope> for RecordedEvent {
    fn from(envelope: Envelope) -> Self {
        Self {
            position: envelope.position,
            transaction_id: envelope.transaction_id,
            stream_id: envelope.stream_id,
            version: envelope.version,
            event_id: envelope.event_id,
            event_type: envelope.event_type,
            schema_version: envelope.schema_version,
            data: envelope.data,
            metadata: envelope.metadata,
            recorded_at: envelope.recorded_at,
        }
    }
}

/// Reads a text header (long or short string) of a message.
pub fn header_str<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads an integer header of a message, whichever integer width the writer chose.
pub fn header_int(properties: &BasicProperties, name: &str) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn recorded() -> RecordedEvent {
        RecordedEvent {
            position: 42,
            transaction_id: 9_000_000_001,
            stream_id: "cart-0b0c6a62-8f7f-4d6e-9f43-3c2f2b7d9a10".into(),
            version: 3,
            event_id: Uuid::now_v7(),
            event_type: "CartItemAdded".into(),
            schema_version: 2,
            data: EventData::from_value(&json!({"product_id": "p", "quantity": 2})),
            metadata: Metadata {
                correlation_id: Some(Uuid::new_v4()),
                causation_id: None,
                actor: Some("alice".into()),
                idempotency_key: None,
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            },
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn round_trips_through_the_body() {
        let event = recorded();
        let envelope = Envelope::from(&event);
        assert_eq!(envelope.stream_type, "cart");
        let body = envelope.to_body().unwrap();
        let back = Envelope::from_body(&body).unwrap();
        assert_eq!(back, envelope);
        assert_eq!(RecordedEvent::from(back), event);
    }

    #[test]
    fn routing_key_and_properties() {
        let event = recorded();
        let envelope = Envelope::from(&event);
        assert_eq!(envelope.routing_key(), "cart.CartItemAdded");
        let p = envelope.properties();
        assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(event.event_id.to_string().as_str())
        );
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("CartItemAdded"));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some(CONTENT_TYPE)
        );
        assert_eq!(header_str(&p, "stream_id"), Some(event.stream_id.as_str()));
        assert_eq!(header_int(&p, "version"), Some(3));
        assert_eq!(header_int(&p, "position"), Some(42));
        assert_eq!(
            header_str(&p, "correlation_id"),
            event
                .metadata
                .correlation_id
                .map(|c| c.to_string())
                .as_deref()
        );
        assert_eq!(header_str(&p, "causation_id"), None);
        assert_eq!(
            header_str(&p, "traceparent"),
            event.metadata.traceparent.as_deref()
        );
    }

    #[test]
    fn a_foreign_body_is_a_decode_error() {
        assert!(matches!(
            Envelope::from_body(b"{\"hello\": 1}"),
            Err(EnvelopeError::Decode(_))
        ));
    }
}
