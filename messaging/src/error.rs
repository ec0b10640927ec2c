//! [`MessagingError`]: the infrastructure failures of the relay, the consumer runner and the
//! dead-letter tools. All of them are transient from the point of view of a long-running loop
//! (it reconnects with backoff); a one-shot caller (`till`) reports them once with their cause.

use eventstore::StoreError;

use crate::envelope::EnvelopeError;

#[derive(Debug, thiserror::Error)]
pub enum MessagingError {
    #[error("RabbitMQ error")]
    Amqp(#[from] lapin::Error),
    #[error("Postgres error")]
    Database(#[from] sqlx::Error),
    #[error("event store error")]
    Store(#[from] StoreError),
    #[error("cannot encode or decode a message")]
    Envelope(#[from] EnvelopeError),
    /// The broker answered a publication with a nack: it did not take responsibility for it.
    #[error("RabbitMQ did not confirm the publication of message {message_id}")]
    NotConfirmed { message_id: String },
    /// A message published straight to a queue that does not exist.
    #[error("no queue took the message published with routing key {routing_key}")]
    Unroutable { routing_key: String },
    /// The broker ended the consumption (queue deleted, channel closed).
    #[error("RabbitMQ cancelled the consumer")]
    ConsumerCancelled,
    /// The relay's Postgres session (and with it the advisory lock) is gone.
    #[error("the relay lost its lock session")]
    LockLost(#[source] sqlx::Error),
}

pub(crate) use platform::problem::error_chain;
