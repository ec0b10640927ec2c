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
//! Declaration is idempotent: RabbitMQ accepts a redeclaration with identical arguments, and
//! every process (relay, runner, `till`) declares what it uses before using it, so start-up order
//! does not matter. Changing a queue's arguments needs the queue deleted first (RabbitMQ refuses
//! a redeclaration with other arguments); removing a binding pattern needs [`Topology::unbind`].

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use tracing::instrument;

/// The names of the bus, derived from a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
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
        }
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

    /// Where a message waits between two attempts.
    pub fn retry_queue(&self, consumer: &str) -> String {
        format!("{}.retry", self.queue(consumer))
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
        let queue = self.queue(consumer);
        for pattern in bindings {
            channel
                .queue_bind(
                    &queue,
                    &self.exchange(),
                    pattern,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares a consumer's queue, retry queue and dead-letter queue (no bindings).
    #[instrument(level = "debug", skip(self, channel), err(level = "debug"))]
    pub async fn declare_queues(
        &self,
        channel: &Channel,
        consumer: &str,
    ) -> Result<(), lapin::Error> {
        let queue = self.queue(consumer);
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(
                &self.dead_letter_queue(consumer),
                durable,
                FieldTable::default(),
            )
            .await?;
        // Expired retries go back to the consumer's queue through the default exchange, whose
        // routing keys are queue names.
        channel
            .queue_declare(&self.retry_queue(consumer), durable, dead_letter_to(&queue))
            .await?;
        channel
            .queue_declare(
                &queue,
                durable,
                dead_letter_to(&self.dead_letter_queue(consumer)),
            )
            .await?;
        Ok(())
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
        for queue in [
            self.queue(consumer),
            self.retry_queue(consumer),
            self.dead_letter_queue(consumer),
        ] {
            channel
                .queue_delete(&queue, QueueDeleteOptions::default())
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

/// Queue arguments that dead-letter into `queue` through the default exchange.
fn dead_letter_to(queue: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    args
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
    }
}
