//! [`Topology`]: every exchange and queue name of the bus, and their declaration.
//!
//! All names derive from one prefix (default `tillstream`), so a test run isolates itself by
//! choosing a random one:
//!
//! | name | what |
//! |---|---|
//! | `<prefix>.events` | the durable topic exchange the relay publishes to |
//! | `<prefix>.<consumer>` | a consumer's durable queue, bound with its patterns (`cart.*`, `#`) |
//! | `<prefix>.<consumer>.retry` | where a transiently failed message waits (per-message TTL) before it dead-letters back into the consumer's queue |
//! | `<prefix>.<consumer>.dead` | the consumer's dead letters, kept until listed, redriven or dropped |
//!
//! The consumer queue's own dead-letter target is its `.dead` queue too, so a message the runner
//! rejects (or one RabbitMQ drops for another reason) is kept rather than lost.
//!
//! # Partitions
//!
//! With `P` > 1 partitions ([`Topology::with_partitions`], `TILL_PARTITIONS`) a consumer's work
//! is split by stream id, so several workers share it and each stream is still applied in order:
//!
//! | name | what |
//! |---|---|
//! | `<prefix>.<consumer>.partitions` | a consistent-hash exchange (RabbitMQ's `rabbitmq_consistent_hash_exchange` plugin) hashing the `stream_id` header, bound to `<prefix>.events` with the consumer's patterns |
//! | `<prefix>.<consumer>.<n>` | partition `n` (0 ≤ n < P): a single-active-consumer queue bound to the hash exchange; every worker subscribes to every partition, the broker lets one of them at a time consume it (see `crate::partitions` for how workers share them) |
//! | `<prefix>.<consumer>.partitions.retry` | retries; they dead-letter back into the hash exchange, so a retried event returns to its stream's partition |
//! | `<prefix>.<consumer>.dead` | dead letters, as without partitions |
//!
//! Changing `P`, or turning partitions on or off, is online: declaring a consumer's layout
//! ([`Topology::declare_consumer`]) retires the other layout's queues — unbinds them, moves what
//! they hold into the new layout and deletes them — so nothing queued is lost. An event moved that
//! way may arrive after a later event of its stream; projections fill such gaps from the store.
//!
//! Declaration is idempotent: RabbitMQ accepts a redeclaration with identical arguments, and
//! every process (relay, runner, `till`) declares what it uses before using it, so start-up order
//! does not matter. Changing a queue's arguments needs the queue deleted first (RabbitMQ refuses
//! a redeclaration with other arguments); removing a binding pattern needs [`Topology::unbind`].

use lapin::options::{
    BasicGetOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::{info, instrument};

use crate::amqp::{publish_confirmed, republish_properties};
use crate::envelope::header_str;
use crate::error::MessagingError;

/// The header the partitions are hashed on: every message the relay publishes carries it.
pub const PARTITION_KEY_HEADER: &str = "stream_id";

/// Most partitions a consumer may have; also how far retiring looks for leftover partitions.
pub const MAX_PARTITIONS: u16 = 64;

/// The names of the bus, derived from a prefix, and the number of partitions of each
/// consumer's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    partitions: u16,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PREFIX)
    }
}

impl Topology {
    pub const DEFAULT_PREFIX: &'static str = "tillstream";

    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            partitions: 1,
        }
    }

    /// Splits every consumer's work into `partitions` by stream id (1 = one queue, no split;
    /// clamped to 1..=[`MAX_PARTITIONS`]).
    pub fn with_partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions.clamp(1, MAX_PARTITIONS);
        self
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    fn partitioned(&self) -> bool {
        self.partitions > 1
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic exchange every event is published to (`tillstream.events` by default).
    pub fn exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The durable queue of consumer `consumer`.
    pub fn queue(&self, consumer: &str) -> String {
        format!("{}.{consumer}", self.prefix)
    }

    /// Partition `partition` of consumer `consumer`'s work.
    pub fn partition_queue(&self, consumer: &str, partition: u16) -> String {
        format!("{}.{partition}", self.queue(consumer))
    }

    /// The consistent-hash exchange that splits a partitioned consumer's work.
    pub fn partition_exchange(&self, consumer: &str) -> String {
        format!("{}.partitions", self.queue(consumer))
    }

    /// The queues a consumer's workers consume: its queue, or one per partition.
    pub fn work_queues(&self, consumer: &str) -> Vec<String> {
        match self.partitioned() {
            false => vec![self.queue(consumer)],
            true => (0..self.partitions)
                .map(|p| self.partition_queue(consumer, p))
                .collect(),
        }
    }

    /// Where a message of `consumer` goes back into its work — (exchange, routing key): its
    /// queue; with partitions the hash exchange, which sends it to its stream's partition, or
    /// partition 0 for a message without a stream (one that never decoded).
    pub fn entry(&self, consumer: &str, stream_id: Option<&str>) -> (String, String) {
        match (self.partitioned(), stream_id) {
            (false, _) => (String::new(), self.queue(consumer)),
            (true, Some(_)) => (self.partition_exchange(consumer), String::new()),
            (true, None) => (String::new(), self.partition_queue(consumer, 0)),
        }
    }

    fn retry_queue_partitioned(&self, consumer: &str) -> String {
        format!("{}.retry", self.partition_exchange(consumer))
    }

    /// Where a message waits between two attempts. The layouts have their own (a queue's
    /// dead-letter target cannot change), so switching layouts never meets a queue declared
    /// with other arguments.
    pub fn retry_queue(&self, consumer: &str) -> String {
        match self.partitioned() {
            false => format!("{}.retry", self.queue(consumer)),
            true => self.retry_queue_partitioned(consumer),
        }
    }

    /// The consumer's dead letters.
    pub fn dead_letter_queue(&self, consumer: &str) -> String {
        format!("{}.dead", self.queue(consumer))
    }

    /// Declares the durable topic exchange.
    #[instrument(level = "debug", skip(self, channel), fields(exchange = %self.exchange()), err(level = "debug"))]
    pub async fn declare_exchange(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_declare(
                &self.exchange(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// Declares the exchange and a consumer's three queues, and binds its queue with `bindings`.
    #[instrument(level = "debug", skip(self, channel), err(level = "debug"))]
    pub async fn declare_consumer(
        &self,
        channel: &Channel,
        consumer: &str,
        bindings: &[String],
    ) -> Result<(), lapin::Error> {
        self.declare_exchange(channel).await?;
        self.declare_queues(channel, consumer).await?;
        for pattern in bindings {
            match self.partitioned() {
                false => {
                    channel
                        .queue_bind(
                            &self.queue(consumer),
                            &self.exchange(),
                            pattern,
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?
                }
                true => {
                    channel
                        .exchange_bind(
                            &self.partition_exchange(consumer),
                            &self.exchange(),
                            pattern,
                            ExchangeBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?
                }
            }
        }
        Ok(())
    }

    /// Declares a consumer's work queues, retry queue and dead-letter queue — with partitions,
    /// the hash exchange and the partitions bound to it — but not the bindings to the events.
    #[instrument(level = "debug", skip(self, channel), err(level = "debug"))]
    pub async fn declare_queues(
        &self,
        channel: &Channel,
        consumer: &str,
    ) -> Result<(), lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let dead_letters = self.dead_letter_queue(consumer);
        channel
            .queue_declare(&dead_letters, durable, FieldTable::default())
            .await?;
        if !self.partitioned() {
            // Expired retries go back to the consumer's queue through the default exchange,
            // whose routing keys are queue names.
            let queue = self.queue(consumer);
            channel
                .queue_declare(
                    &self.retry_queue(consumer),
                    durable,
                    dead_letter_to("", Some(&queue)),
                )
                .await?;
            channel
                .queue_declare(&queue, durable, dead_letter_to("", Some(&dead_letters)))
                .await?;
            return Ok(());
        }
        let exchange = self.partition_exchange(consumer);
        let mut hash_on = FieldTable::default();
        hash_on.insert(
            "hash-header".into(),
            AMQPValue::LongString(LongString::from(PARTITION_KEY_HEADER)),
        );
        channel
            .exchange_declare(
                &exchange,
                ExchangeKind::Custom("x-consistent-hash".into()),
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                hash_on,
            )
            .await?;
        // Expired retries go back through the hash exchange, to their stream's partition.
        channel
            .queue_declare(
                &self.retry_queue(consumer),
                durable,
                dead_letter_to(&exchange, None),
            )
            .await?;
        for partition in 0..self.partitions {
            let queue = self.partition_queue(consumer, partition);
            let mut arguments = dead_letter_to("", Some(&dead_letters));
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            channel.queue_declare(&queue, durable, arguments).await?;
            // The binding key is the partition's weight on the hash ring: all equal.
            channel
                .queue_bind(
                    &queue,
                    &exchange,
                    "1",
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Retires what another layout of `consumer` left on the broker (see the module docs):
    /// each of its queues is unbound, emptied into this layout and deleted; the hash exchange
    /// too when partitions are off. Call after [`Topology::declare_consumer`]; several
    /// processes may do it at once. Returns how many messages moved.
    #[instrument(level = "debug", skip(self, connection), err(level = "debug"))]
    pub async fn retire_other_layouts(
        &self,
        connection: &Connection,
        consumer: &str,
        bindings: &[String],
    ) -> Result<u64, MessagingError> {
        // What the other layouts would have: a retry queue, and the plain queue or the
        // partitions beyond this layout's. Deleting a queue that is empty or missing succeeds
        // (asking whether it exists would close a channel, noisily, for every missing one); one
        // that still holds messages refuses, and is emptied first.
        let plain = self.queue(consumer);
        let (retries, mut queues) = match self.partitioned() {
            true => (format!("{plain}.retry"), vec![plain.clone()]),
            false => (self.retry_queue_partitioned(consumer), Vec::new()),
        };
        let first_leftover = if self.partitioned() {
            self.partitions
        } else {
            0
        };
        queues.extend((first_leftover..MAX_PARTITIONS).map(|p| self.partition_queue(consumer, p)));
        let mut channel = connection.create_channel().await?;
        let mut moved = 0;

        // Retries first: while they wait they dead-letter into the queues retired next.
        if !delete_if_empty(connection, &mut channel, &retries).await? {
            moved += self.move_messages(&channel, consumer, &retries).await?;
            delete_if_empty(connection, &mut channel, &retries).await?;
        }
        // Then the rest: every one holding messages is cut off before any is emptied, so
        // nothing moved lands in another leftover.
        let mut holding = Vec::new();
        for queue in queues {
            if !delete_if_empty(connection, &mut channel, &queue).await? {
                holding.push(queue);
            }
        }
        for queue in &holding {
            match queue == &plain {
                true => {
                    for pattern in bindings {
                        channel
                            .queue_unbind(queue, &self.exchange(), pattern, FieldTable::default())
                            .await?;
                    }
                }
                false => {
                    let exchange = self.partition_exchange(consumer);
                    channel
                        .queue_unbind(queue, &exchange, "1", FieldTable::default())
                        .await?;
                }
            }
        }
        for queue in &holding {
            let count = self.move_messages(&channel, consumer, queue).await?;
            moved += count;
            // Another process may be retiring it too: it goes once empty, whoever is last.
            delete_if_empty(connection, &mut channel, queue).await?;
            info!(%queue, moved = count, "retired a queue of another partition layout");
        }
        if !self.partitioned() {
            channel
                .exchange_delete(
                    &self.partition_exchange(consumer),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
        }
        let _ = channel.close(200, "retired").await;
        Ok(moved)
    }

    /// Moves every message of `from` into the consumer's current layout, each confirmed before
    /// its original is acked (a crash in between duplicates, never loses).
    async fn move_messages(
        &self,
        channel: &Channel,
        consumer: &str,
        from: &str,
    ) -> Result<u64, MessagingError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut moved = 0;
        while let Some(message) = channel
            .basic_get(from, BasicGetOptions { no_ack: false })
            .await?
        {
            let delivery = message.delivery;
            let stream = header_str(&delivery.properties, PARTITION_KEY_HEADER);
            let (exchange, routing_key) = self.entry(consumer, stream);
            let properties = republish_properties(&delivery.properties, |_| {});
            publish_confirmed(channel, &exchange, &routing_key, &delivery.data, properties).await?;
            delivery.acker.ack(Default::default()).await?;
            moved += 1;
        }
        Ok(moved)
    }

    /// Removes a binding pattern from a consumer's queue (declaration only ever adds them).
    #[instrument(level = "debug", skip(self, channel), err(level = "debug"))]
    pub async fn unbind(
        &self,
        channel: &Channel,
        consumer: &str,
        pattern: &str,
    ) -> Result<(), lapin::Error> {
        channel
            .queue_unbind(
                &self.queue(consumer),
                &self.exchange(),
                pattern,
                FieldTable::default(),
            )
            .await
    }

    /// Deletes a consumer's three queues, messages and all. For tests and decommissioning.
    #[instrument(level = "debug", skip(self, channel), err(level = "debug"))]
    pub async fn delete_consumer(
        &self,
        channel: &Channel,
        consumer: &str,
    ) -> Result<(), lapin::Error> {
        let mut queues = self.work_queues(consumer);
        queues.push(self.retry_queue(consumer));
        queues.push(self.dead_letter_queue(consumer));
        for queue in queues {
            channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await?;
        }
        if self.partitioned() {
            channel
                .exchange_delete(
                    &self.partition_exchange(consumer),
                    ExchangeDeleteOptions::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes the exchange. For tests: a live system keeps it forever.
    #[instrument(level = "debug", skip(self, channel), err(level = "debug"))]
    pub async fn delete_exchange(&self, channel: &Channel) -> Result<(), lapin::Error> {
        channel
            .exchange_delete(&self.exchange(), ExchangeDeleteOptions::default())
            .await
    }
}

/// Queue arguments that dead-letter into `exchange` — with `routing_key`, or the message's own.
fn dead_letter_to(exchange: &str, routing_key: Option<&str>) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(exchange)),
    );
    if let Some(routing_key) = routing_key {
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(routing_key)),
        );
    }
    args
}

/// Deletes `queue` if it is empty or missing (true); false if it holds messages. The broker
/// closes the channel that asked then, so `channel` is replaced.
async fn delete_if_empty(
    connection: &Connection,
    channel: &mut Channel,
    queue: &str,
) -> Result<bool, MessagingError> {
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..QueueDeleteOptions::default()
    };
    match channel.queue_delete(queue, if_empty).await {
        Ok(_) => Ok(true),
        Err(error) if is_precondition_failed(&error) => {
            *channel = connection.create_channel().await?;
            Ok(false)
        }
        Err(error) => Err(error.into()),
    }
}

/// A channel closed by the broker with 406 PRECONDITION_FAILED.
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error, lapin::Error::ProtocolError(e) if e.get_id() == 406)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let t = Topology::default();
        assert_eq!(t.exchange(), "tillstream.events");
        assert_eq!(t.queue("carts"), "tillstream.carts");
        assert_eq!(t.retry_queue("carts"), "tillstream.carts.retry");
        assert_eq!(t.dead_letter_queue("carts"), "tillstream.carts.dead");
        let t = Topology::new("test-1a2b");
        assert_eq!(t.exchange(), "test-1a2b.events");
        assert_eq!(t.queue("orders"), "test-1a2b.orders");
        assert_eq!(t.work_queues("orders"), ["test-1a2b.orders"]);
        assert_eq!(
            t.entry("orders", Some("order-1")),
            ("".into(), "test-1a2b.orders".into())
        );
    }

    #[test]
    fn partitions_have_their_own_names() {
        let t = Topology::new("p").with_partitions(3);
        assert_eq!(
            t.work_queues("carts"),
            ["p.carts.0", "p.carts.1", "p.carts.2"]
        );
        assert_eq!(t.partition_exchange("carts"), "p.carts.partitions");
        assert_eq!(t.retry_queue("carts"), "p.carts.partitions.retry");
        assert_eq!(t.dead_letter_queue("carts"), "p.carts.dead");
        assert_eq!(
            t.entry("carts", Some("cart-1")),
            ("p.carts.partitions".into(), "".into())
        );
        assert_eq!(t.entry("carts", None), ("".into(), "p.carts.0".into()));
        assert_eq!(Topology::new("p").with_partitions(0).partitions(), 1);
        assert_eq!(
            Topology::new("p").with_partitions(1000).partitions(),
            MAX_PARTITIONS
        );
    }
}
