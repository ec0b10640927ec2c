//! A consumer's dead letters (`<queue>.dead`): list them, redrive them, drop them. Backs
//! `till dead-letters …`; every function opens its own channel on the caller's connection and
//! declares the consumer's queues first (idempotent), so it works before the consumer ever ran.
//!
//! - [`list`] peeks: it takes up to `limit` messages without acking, then nacks them all with
//!   `requeue`, which puts them back in their places, and waits until the queue has taken them
//!   back. Nothing is lost if the caller dies midway (the channel closing requeues them too).
//! - [`redrive`] moves each dead letter back into the consumer's queue — published straight to
//!   that queue (with partitions, through the consumer's own hash exchange to its stream's
//!   partition), not through the events exchange, so other consumers do not see it twice — with its
//!   attempt count reset and `x-redriven` incremented, acking each only after the broker
//!   confirmed its copy. It moves at most as many messages as the queue held when it started, so
//!   a message that dead-letters again at once does not loop.
//! - [`drop_all`] purges the queue.

use futures::TryFutureExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, Queue};
use tracing::{info, instrument};

use crate::amqp::{publish_confirmed, republish_properties};
use crate::consumer::{
    X_ATTEMPT, X_ATTEMPTS, X_CONSUMER, X_DEAD_AT, X_DEAD_REASON, X_LAST_ERROR,
    X_ORIGINAL_ROUTING_KEY, X_REDRIVEN,
};
use crate::envelope::{Envelope, header_int, header_str};
use crate::error::MessagingError;
use crate::topology::{PARTITION_KEY_HEADER, Topology};

/// One dead letter as `list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The event id, for messages the relay published.
    pub message_id: Option<String>,
    pub routing_key: Option<String>,
    /// `retries-exhausted`, `permanent` or `undecodable`.
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub attempts: Option<u32>,
    pub dead_at: Option<String>,
    pub redriven: u32,
    /// The decoded body; `None` if it is not an envelope.
    pub envelope: Option<Envelope>,
}

impl DeadLetter {
    fn from_delivery(delivery: &Delivery) -> Self {
        let p = &delivery.properties;
        let text = |name: &str| header_str(p, name).map(str::to_owned);
        Self {
            message_id: p.message_id().as_ref().map(ToString::to_string),
            routing_key: text(X_ORIGINAL_ROUTING_KEY),
            reason: text(X_DEAD_REASON),
            last_error: text(X_LAST_ERROR),
            attempts: header_int(p, X_ATTEMPTS).and_then(|a| u32::try_from(a).ok()),
            dead_at: text(X_DEAD_AT),
            redriven: header_int(p, X_REDRIVEN)
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            envelope: Envelope::from_body(&delivery.data).ok(),
        }
    }
}

/// Up to `limit` dead letters of `consumer`, oldest first, left in the queue.
#[instrument(skip(connection, topology), err(level = "debug"))]
pub async fn list(
    connection: &Connection,
    topology: &Topology,
    consumer: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, MessagingError> {
    let channel = connection.create_channel().await?;
    topology.declare_queues(&channel, consumer).await?;
    let queue = topology.dead_letter_queue(consumer);
    let mut letters = Vec::new();
    let mut last_tag = None;
    while letters.len() < limit {
        let Some(message) = channel
            .basic_get(&queue, BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        letters.push(DeadLetter::from_delivery(&message.delivery));
        last_tag = Some(message.delivery.delivery_tag);
    }
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
        // A nack has no answer: the broker's channel passes the requeue on to the queue and
        // moves on, so a purge or redrive sent on another channel right after could reach the
        // queue first and miss these messages (seen: a drop right after a listing dropped 0).
        // The queue answers this declare only after the requeue this channel sent before it.
        passive_declare(&channel, &queue).await?;
    }
    channel.close(200, "listed").await?;
    Ok(letters)
}

/// How many dead letters `consumer` has.
#[instrument(skip(connection, topology), err(level = "debug"))]
pub async fn count(
    connection: &Connection,
    topology: &Topology,
    consumer: &str,
) -> Result<u32, MessagingError> {
    let channel = connection.create_channel().await?;
    topology.declare_queues(&channel, consumer).await?;
    let queue = passive_declare(&channel, &topology.dead_letter_queue(consumer)).await?;
    channel.close(200, "counted").await?;
    Ok(queue.message_count())
}

/// Declares `queue` passively: its counts, and an answer only after what this channel sent
/// before it reached the queue.
pub(crate) async fn passive_declare(
    channel: &lapin::Channel,
    queue: &str,
) -> Result<Queue, lapin::Error> {
    channel
        .queue_declare(
            queue,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// Moves every dead letter of `consumer` back to its queue; returns how many moved.
#[instrument(skip(connection, topology), err(level = "debug"))]
pub async fn redrive(
    connection: &Connection,
    topology: &Topology,
    consumer: &str,
) -> Result<u64, MessagingError> {
    let pending = u64::from(count(connection, topology, consumer).await?);
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let dead_letters = topology.dead_letter_queue(consumer);
    let mut moved = 0u64;
    while moved < pending {
        let Some(message) = channel
            .basic_get(&dead_letters, BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let delivery = message.delivery;
        let redriven = header_int(&delivery.properties, X_REDRIVEN).unwrap_or(0) + 1;
        let properties = republish_properties(&delivery.properties, |h| {
            // A redriven message starts over: a fresh attempt count, no verdict.
            for name in [X_ATTEMPT, X_ATTEMPTS, X_DEAD_REASON, X_DEAD_AT, X_CONSUMER] {
                h.remove(name);
            }
            h.insert(X_REDRIVEN.into(), AMQPValue::LongLongInt(redriven));
        });
        // If the copy is refused, the original stays in the dead-letter queue (the channel close
        // requeues it) and the error is reported.
        // Back to the consumer's queue, or its stream's partition.
        let (exchange, routing_key) = topology.entry(
            consumer,
            header_str(&delivery.properties, PARTITION_KEY_HEADER),
        );
        publish_confirmed(
            &channel,
            &exchange,
            &routing_key,
            &delivery.data,
            properties,
        )
        .and_then(|()| async {
            delivery
                .acker
                .ack(Default::default())
                .await
                .map_err(MessagingError::from)
        })
        .await?;
        moved += 1;
    }
    channel.close(200, "redriven").await?;
    info!(moved, "dead letters redriven");
    Ok(moved)
}

/// Deletes every dead letter of `consumer`; returns how many there were.
#[instrument(skip(connection, topology), err(level = "debug"))]
pub async fn drop_all(
    connection: &Connection,
    topology: &Topology,
    consumer: &str,
) -> Result<u64, MessagingError> {
    let channel = connection.create_channel().await?;
    topology.declare_queues(&channel, consumer).await?;
    let dropped = channel
        .queue_purge(
            &topology.dead_letter_queue(consumer),
            QueuePurgeOptions::default(),
        )
        .await?;
    channel.close(200, "dropped").await?;
    info!(dropped, "dead letters dropped");
    Ok(u64::from(dropped))
}
