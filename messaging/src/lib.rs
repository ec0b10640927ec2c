//! RabbitMQ messaging: how events leave the event store and reach the processes that react to them.
//!
//! - [`topology`]: [`Topology`] — the names (exchange, per-consumer queues, retry and dead-letter
//!   queues), all derived from one prefix, and their idempotent declaration.
//! - [`envelope`]: [`Envelope`] — the message body (a recorded event as JSON), its routing key and
//!   AMQP properties.
//! - [`relay`]: [`Relay`] — moves the global log to the exchange with publisher confirms, one
//!   active instance per name (Postgres advisory lock), checkpoint saved only after every confirm.
//! - [`consumer`]: [`ConsumerRunner`] and the [`Handler`] trait — manual ack after the handler
//!   committed, bounded retries through a delay queue, then the dead-letter queue.
//! - [`partitions`]: [`ConsumerGroup`] — a consumer's work split by stream id over
//!   single-active-consumer queues, shared fairly by any number of workers.
//! - [`dead_letters`]: list, redrive and drop a consumer's dead letters (for `till` and the
//!   query API's admin routes); [`backlog`]: what waits in each consumer's queues.
//! - [`amqp`]: connecting lapin to tokio, and the capped exponential [`Backoff`] every loop here
//!   uses to reconnect.
//! - [`error`]: [`MessagingError`], the infrastructure failures of this crate.
//!
//! Delivery is at least once everywhere: the relay may publish an event twice (it crashed between
//! the confirms and its checkpoint), a consumer may see a message twice (it crashed between its
//! commit and its ack). Consumers stay correct by being idempotent: each projection skips what its
//! view holds already and fills a gap from the event store (`projectors::ordering`); each
//! process derives its events' ids from their cause (`processes`).

pub mod amqp;
pub mod backlog;
pub mod consumer;
pub mod dead_letters;
pub mod envelope;
pub mod error;
pub mod partitions;
pub mod relay;
pub mod status;
pub mod topology;

pub use amqp::{Backoff, connect};
pub use consumer::{
    ConsumerHandle, ConsumerRunner, ConsumerSettings, ConsumerStatus, Handler, HandlerError,
};
pub use dead_letters::DeadLetter;
pub use envelope::{Envelope, EnvelopeError};
pub use error::MessagingError;
pub use partitions::{ConsumerGroup, Partition};
pub use relay::{Relay, RelayHandle, RelaySettings, RelayState, RelayStatus};
pub use topology::Topology;
