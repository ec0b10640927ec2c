//! Connecting to RabbitMQ, and the [`Backoff`] that every reconnecting loop of this crate uses.
//!
//! lapin is runtime-agnostic; [`connect`] plugs it into tokio (executor and reactor) so its I/O
//! runs on the same runtime as the rest of the service instead of a second executor's threads.
//!
//! Also here, for the consumer runner and the dead-letter tools: publishing one message and
//! waiting for its confirm, and copying a message's properties with edited headers (lapin's
//! properties have setters only, so dropping a header or the expiration means rebuilding them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tracing::instrument;

use crate::error::MessagingError;

/// A connection attempt that takes longer than this is given up (a black-holed address would
/// otherwise wait for the operating system's TCP timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Closing politely is bounded too: a broker that went away does not answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url`, naming the connection so it can be told apart in the management UI.
#[instrument(level = "debug", skip(url), err(level = "debug"))]
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(connection_name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
        .await
        .unwrap_or_else(|_| {
            Err(lapin::Error::IOError(Arc::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from RabbitMQ within {CONNECT_TIMEOUT:?}"),
            ))))
        })
}

/// Closes a connection if it is still open, without waiting forever for the broker's answer.
pub(crate) async fn close_connection(connection: &Connection, reason: &str) {
    if connection.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason)).await;
    }
}

/// Capped exponential backoff: `initial`, `2·initial`, `4·initial`, … never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay before attempt `n + 1` after `n` failures (`n` starts at 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << exponent)
            .map_or(self.max, |d| d.min(self.max))
    }
}

impl Default for Backoff {
    /// For reconnecting: quick at first, then no more than one attempt every 10 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

/// Closes a channel if it is still open. Done explicitly before closing its connection: a
/// channel that is merely dropped closes itself in the background, and if the connection closes
/// meanwhile lapin reports a spurious connection error.
pub(crate) async fn close_channel(channel: &Channel, reason: &str) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason)).await;
    }
}

/// Publishes one message on a channel in confirm mode and waits for the broker to take it.
/// `mandatory`, so a message to a queue that does not exist is an error, not silently dropped.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), MessagingError> {
    let message_id = properties
        .message_id()
        .as_ref()
        .map_or_else(String::new, ToString::to_string);
    let confirmation = channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(MessagingError::Unroutable {
            routing_key: routing_key.to_owned(),
        }),
        Confirmation::Nack(_) => Err(MessagingError::NotConfirmed { message_id }),
    }
}

/// The message's properties without `expiration`, with headers edited by `edit`. RabbitMQ's own
/// dead-lettering bookkeeping (`x-death` and friends) is dropped: the runner keeps its own.
pub(crate) fn republish_properties(
    original: &BasicProperties,
    edit: impl FnOnce(&mut BTreeMap<ShortString, AMQPValue>),
) -> BasicProperties {
    let mut headers: BTreeMap<ShortString, AMQPValue> = original
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    headers.retain(|name, _| {
        let name = name.as_str();
        name != "x-death" && !name.starts_with("x-first-death") && !name.starts_with("x-last-death")
    });
    edit(&mut headers);

    let mut p = BasicProperties::default().with_headers(FieldTable::from(headers));
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.delivery_mode() {
        p = p.with_delivery_mode(*v);
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }
}
