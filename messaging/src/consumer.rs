//! The consumer runner: feeds a consumer's queue to a [`Handler`], acking only after it succeeded.
//!
//! A consumer (a projector, a process manager) is a name, binding patterns and a handler. The
//! [`ConsumerRunner`] declares its queues (see [`crate::topology`]), sets the prefetch, consumes
//! with manual acks and hands each message, decoded to an [`Envelope`], to the handler, one at a
//! time in delivery order. The handler commits its read model and its own checkpoint before it
//! returns `Ok`; only then is the message acked, so a crash in between means a redelivery, which
//! the handler skips as already applied (a projection compares versions, see
//! `projectors::ordering`; a process derives its event ids from the cause).
//!
//! # Retries and dead letters
//!
//! The attempt number travels with the message in the `x-attempt` header (absent = 1).
//!
//! - [`HandlerError::Transient`] below the limit: the message is republished to the consumer's
//!   retry queue (`<queue>.retry`) with `x-attempt` + 1 and a per-message TTL of
//!   `retry_backoff.delay(attempt)`; once the broker has confirmed it, the original is acked.
//!   The retry queue has no consumers; when the TTL expires RabbitMQ dead-letters the message
//!   back into the consumer's queue. The consumer's queue keeps flowing meanwhile: a poisoned
//!   message never blocks the ones behind it.
//! - [`HandlerError::Transient`] at attempt `max_attempts` (so after exactly `max_attempts`
//!   handler calls), [`HandlerError::Permanent`] at any attempt, and a body that is not an
//!   envelope: the message is published to `<queue>.dead` with `x-dead-reason`
//!   (`retries-exhausted`, `permanent`, `undecodable`), `x-last-error`, `x-attempts`,
//!   `x-dead-at`, `x-consumer` and `x-original-routing-key`, then the original is acked.
//! - A panic in the handler counts as a transient failure.
//!
//! Republish-then-ack may duplicate (a crash between the two) but never loses a message. Per-
//! message TTLs in one retry queue expire only at its head, so a short delay can wait behind a
//! longer one; that only lengthens some retries (bounded by `retry_backoff.max`), it never
//! reorders anything the handler relies on, since a retried event may arrive after later events
//! of its stream anyway — a projection fills such gaps from the event store.
//!
//! Listing, redriving and dropping dead letters is in [`crate::dead_letters`].
//!
//! Connection failures end the session; the runner reconnects with backoff and RabbitMQ
//! redelivers whatever was not acked. It stops, after finishing the message in hand, when its
//! [`CancellationToken`] is cancelled.
//!
//! A runner consumes one queue: the consumer's, or one partition of it
//! ([`ConsumerRunner::for_partition`]; see [`crate::partitions`]). A partition's runner can be
//! asked to give its partition up: it finishes the batch in hand, ends the session (the broker
//! takes back what it had prefetched) and subscribes again at once, behind the other workers.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use crate::amqp::{
    Backoff, close_channel, close_connection, connect, publish_confirmed, republish_properties,
};
use crate::envelope::{Envelope, header_int, header_str};
use crate::error::{MessagingError, error_chain};
use crate::partitions::Partition;
use crate::topology::Topology;

/// The attempt number of a delivery; absent on the first.
pub const X_ATTEMPT: &str = "x-attempt";
/// Why a message is in the dead-letter queue: `retries-exhausted`, `permanent`, `undecodable`.
pub const X_DEAD_REASON: &str = "x-dead-reason";
/// The handler's last error, with its causes.
pub const X_LAST_ERROR: &str = "x-last-error";
/// How many attempts were made before the message was dead-lettered.
pub const X_ATTEMPTS: &str = "x-attempts";
/// When it was dead-lettered (RFC 3339).
pub const X_DEAD_AT: &str = "x-dead-at";
/// The consumer that gave up on it.
pub const X_CONSUMER: &str = "x-consumer";
/// The routing key it was first published with (retries travel through the default exchange).
pub const X_ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// How often it was redriven from the dead-letter queue.
pub const X_REDRIVEN: &str = "x-redriven";

/// Dead-letter reasons (`x-dead-reason`).
pub const REASON_RETRIES_EXHAUSTED: &str = "retries-exhausted";
pub const REASON_PERMANENT: &str = "permanent";
pub const REASON_UNDECODABLE: &str = "undecodable";

/// Longest `x-last-error` kept; a header is not a log.
const MAX_ERROR_LEN: usize = 2000;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a handler failed, which decides what happens to the message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (a database or service unavailable, a conflict): retry with backoff.
    #[error("transient failure")]
    Transient(#[source] BoxError),
    /// Will never work (a bug, an impossible event): dead-letter at once.
    #[error("permanent failure")]
    Permanent(#[source] BoxError),
}

impl HandlerError {
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self::Permanent(error.into())
    }
}

/// What a consumer does with one event. Returns `Ok` only after its effects are committed.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Handles several events, in delivery order, committing their effects together (a
    /// projector writes one transaction per batch). Only used when `batch_size` > 1. If it
    /// fails, the runner falls back to [`Handler::handle`] for each event, so one poisoned
    /// event is retried and dead-lettered alone; handlers are idempotent, so events of the
    /// batch that did take effect are skipped then.
    fn handle_batch(
        &self,
        envelopes: Vec<Envelope>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for envelope in envelopes {
                self.handle(envelope).await?;
            }
            Ok(())
        }
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn handle(&self, envelope: Envelope) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (**self).handle(envelope)
    }

    fn handle_batch(
        &self,
        envelopes: Vec<Envelope>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (**self).handle_batch(envelopes)
    }
}

/// What a consumer runner is configured with.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The consumer's name; its queue is `<prefix>.<name>`.
    pub name: String,
    /// Topic patterns its queue is bound with (`cart.*`, `order.OrderPlaced`, `#`).
    pub bindings: Vec<String>,
    pub amqp_url: String,
    /// Unacked messages the broker sends ahead.
    pub prefetch: u16,
    /// Most deliveries handed to [`Handler::handle_batch`] at once; 1 = one at a time.
    pub batch_size: usize,
    /// How long after its first delivery a batch closes, full or not.
    pub batch_linger: std::time::Duration,
    /// Handler calls per message before a transient failure dead-letters it.
    pub max_attempts: u32,
    /// The wait before attempt `n + 1` is `retry_backoff.delay(n)`.
    pub retry_backoff: Backoff,
    /// Between two sessions after a connection failure.
    pub reconnect: Backoff,
}

impl ConsumerSettings {
    pub fn new(
        name: impl Into<String>,
        bindings: impl IntoIterator<Item = impl Into<String>>,
        amqp_url: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            bindings: bindings.into_iter().map(Into::into).collect(),
            amqp_url: amqp_url.into(),
            prefetch: 32,
            batch_size: 1,
            batch_linger: std::time::Duration::ZERO,
            max_attempts: 5,
            retry_backoff: Backoff::new(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(60),
            ),
            reconnect: Backoff::default(),
        }
    }
}

/// A snapshot of a consumer runner, for health checks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerStatus {
    pub connected: bool,
    /// Messages the handler accepted (and that were acked).
    pub acked: u64,
    /// Transient failures sent to the retry queue.
    pub retried: u64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Sessions that ended in a failure (and were restarted).
    pub failures_total: u64,
    pub last_error: Option<String>,
}

/// A read-only view of a running consumer. Cheap to clone.
pub type ConsumerHandle = crate::status::StatusHandle<ConsumerStatus>;

/// Runs one consumer. See the module docs.
#[derive(Debug)]
pub struct ConsumerRunner<H> {
    topology: Topology,
    settings: ConsumerSettings,
    handler: Arc<H>,
    status: watch::Sender<ConsumerStatus>,
    /// The queue it consumes.
    queue: String,
    /// The partition that queue is, when the consumer's work is partitioned.
    partition: Option<Arc<Partition>>,
}

/// How a session ended without failing.
enum Ended {
    Shutdown,
    /// The partition was given up (see [`Partition::give_up`]): subscribe again at once.
    GaveUp,
}

/// What became of one delivery.
enum Outcome {
    Acked,
    Retried,
    DeadLettered,
}

impl<H: Handler> ConsumerRunner<H> {
    pub fn new(topology: Topology, settings: ConsumerSettings, handler: H) -> Self {
        let (status, _) = watch::channel(ConsumerStatus::default());
        // Each series exists from the start, at zero, so dashboards and alerts see it.
        let name = settings.name.clone();
        for outcome in ["acked", "retried", "dead_lettered"] {
            metrics::counter!("consumer_messages_total", "consumer" => name.clone(), "outcome" => outcome)
                .increment(0);
        }
        metrics::counter!("consumer_redeliveries_total", "consumer" => name).increment(0);
        Self {
            queue: topology.queue(&settings.name),
            topology,
            settings,
            handler: Arc::new(handler),
            status,
            partition: None,
        }
    }

    /// Makes this runner consume `partition` of the consumer's work instead of its queue.
    pub fn for_partition(mut self, partition: Arc<Partition>) -> Self {
        self.queue = self
            .topology
            .partition_queue(&self.settings.name, partition.index());
        self.partition = Some(partition);
        self
    }

    /// The partition it consumes, if its consumer is partitioned.
    pub fn partition(&self) -> Option<&Arc<Partition>> {
        self.partition.as_ref()
    }

    /// The queue it consumes.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub fn handle(&self) -> ConsumerHandle {
        ConsumerHandle::new(self.status.subscribe())
    }

    /// Runs until `shutdown` is cancelled, reconnecting after every failure.
    #[instrument(name = "consumer", skip_all, fields(consumer = %self.settings.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.session(&shutdown, &mut failures).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::GaveUp) => {
                    debug!(queue = %self.queue, "partition given up; subscribing again");
                    self.status.send_modify(|s| s.connected = false);
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = self.settings.reconnect.delay(failures);
                    let message = error_chain(&error);
                    warn!(error = %message, retry_in = ?delay, "consumer session failed");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.failures_total += 1;
                        s.last_error = Some(message);
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.status.send_modify(|s| s.connected = false);
        info!("consumer stopped");
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<Ended, MessagingError> {
        let name = &self.settings.name;
        let connection = connect(
            &self.settings.amqp_url,
            &format!("tillstream consumer {name}"),
        )
        .await?;
        let result = self.consume(&connection, shutdown, failures).await;
        // Closing returns every prefetched, unacked message to the queue.
        close_connection(&connection, "consumer stopping").await;
        result
    }

    async fn consume(
        &self,
        connection: &Connection,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<Ended, MessagingError> {
        let channel = connection.create_channel().await?;
        let name = &self.settings.name;
        self.topology
            .declare_consumer(&channel, name, &self.settings.bindings)
            .await?;
        // One runner of each group tidies up after a change of layout.
        if self.partition.as_ref().is_none_or(|p| p.index() == 0) {
            self.topology
                .retire_other_layouts(connection, name, &self.settings.bindings)
                .await?;
        }
        // Retries and dead letters are published on a channel of their own in confirm mode, so
        // the original is acked only once the broker holds the copy.
        let publisher = connection.create_channel().await?;
        // lapin tells this handler when the connection dies. Whatever the session awaits from
        // the broker then (a delivery, an ack, a confirm) is abandoned and the session starts
        // again: waiting on a dead connection once kept a consumer stalled until its test timed
        // out. The unacked deliveries come back after the reconnect, and a handler's dropped
        // transaction rolls back, so nothing is lost or applied twice.
        let (lost, mut dead) = tokio::sync::watch::channel(None::<lapin::Error>);
        connection.on_error(move |error| {
            lost.send_replace(Some(error));
        });
        let connection_lost = async {
            if let Ok(error) = dead.wait_for(Option::is_some).await
                && let Some(error) = error.clone()
            {
                return error;
            }
            std::future::pending().await
        };
        // The subscription outlives the session's work and is dropped only after its channel
        // closed: dropping a live lapin consumer sends basic.cancel. On a single-active-consumer
        // queue with messages ready, a cancel makes the next worker in line active without
        // delivering to it, and the next message published then crashes RabbitMQ 3.10's queue
        // process (a badmatch in attempt_delivery): every consumer of the partition is cancelled,
        // the queue restarts — or fails to — and a stream reaches the handler out of order. A
        // channel close instead requeues what the channel held and hands the queue to the next
        // consumer in one step. (Found by the hand-over test in tests/partitions.rs.)
        let mut subscription = None;
        let result = tokio::select! {
            result = self.consume_on(&channel, &publisher, &mut subscription, shutdown, failures) => result,
            error = connection_lost => Err(MessagingError::Amqp(error)),
        };
        close_channel(&publisher, "consumer stopping").await;
        close_channel(&channel, "consumer stopping").await;
        drop(subscription);
        result
    }

    async fn consume_on(
        &self,
        channel: &Channel,
        publisher: &Channel,
        subscription: &mut Option<lapin::Consumer>,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<Ended, MessagingError> {
        let name = &self.settings.name;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tag = format!("{name}.{}", uuid::Uuid::new_v4().simple());
        let deliveries = subscription.insert(
            channel
                .basic_consume(
                    &self.queue,
                    &tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
        info!(queue = %self.queue, "consuming");
        self.status.send_modify(|s| s.connected = true);
        // The session works: the next failure starts the backoff from the beginning.
        *failures = 0;

        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                _ = given_up(self.partition.as_deref()) => return Ok(Ended::GaveUp),
                next = deliveries.next() => next,
            };
            let delivery = match next {
                Some(delivery) => delivery?,
                None => return Err(MessagingError::ConsumerCancelled),
            };
            if let Some(partition) = &self.partition {
                partition.delivered();
            }
            let mut batch = vec![delivery];
            // What arrives within the linger of the batch's first delivery joins it (what is
            // already here joins at once): a steady trickle, one message just inside the linger
            // after another, once kept a batch open until it was full.
            let close_at = tokio::time::Instant::now() + self.settings.batch_linger;
            while batch.len() < self.settings.batch_size {
                match tokio::time::timeout_at(close_at, deliveries.next()).await {
                    Ok(Some(delivery)) => batch.push(delivery?),
                    Ok(None) => return Err(MessagingError::ConsumerCancelled),
                    Err(_) => break,
                }
            }
            let outcomes = if batch.len() == 1 {
                let delivery = batch.pop().expect("one delivery");
                vec![self.process(publisher, delivery).await?]
            } else {
                self.process_batch(publisher, batch).await?
            };
            for outcome in outcomes {
                self.count(outcome);
            }
        }
    }

    fn count(&self, outcome: Outcome) {
        let label = match outcome {
            Outcome::Acked => "acked",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        };
        metrics::counter!("consumer_messages_total", "consumer" => self.settings.name.clone(), "outcome" => label)
            .increment(1);
        self.status.send_modify(|s| match outcome {
            Outcome::Acked => s.acked += 1,
            Outcome::Retried => s.retried += 1,
            Outcome::DeadLettered => s.dead_lettered += 1,
        });
    }

    /// The span of handling one message or a batch: a root (not a child of the consumer's
    /// long-lived span), continuing the message's trace or linked to each of the batch's.
    fn process_span(&self) -> tracing::Span {
        info_span!(
            parent: None,
            "process",
            otel.name = %format_args!("{} process", self.settings.name),
            otel.kind = "consumer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.consumer.group.name = %self.settings.name,
            messaging.batch.message_count = tracing::field::Empty,
            messaging.message.id = tracing::field::Empty,
            event_type = tracing::field::Empty,
            stream_id = tracing::field::Empty,
            version = tracing::field::Empty,
            attempt = tracing::field::Empty,
        )
    }

    /// Hands a batch to [`Handler::handle_batch`] and acks it; if that fails, falls back to
    /// settling each delivery on its own (see [`Handler::handle_batch`]).
    async fn process_batch(
        &self,
        publisher: &Channel,
        batch: Vec<Delivery>,
    ) -> Result<Vec<Outcome>, MessagingError> {
        let decoded: Option<Vec<Envelope>> = batch
            .iter()
            .map(|d| Envelope::from_body(&d.data).ok())
            .collect();
        let first_attempts = batch
            .iter()
            .all(|d| header_int(&d.properties, X_ATTEMPT).is_none_or(|a| a <= 1));
        // Retried or undecodable deliveries take the one-by-one path, which counts attempts.
        let handled = match decoded {
            Some(envelopes) if first_attempts => {
                let size = envelopes.len();
                // Work for several traces at once: linked to each, a child of none.
                let span = self.process_span();
                span.record("messaging.batch.message_count", size);
                for delivery in &batch {
                    if let Some(traceparent) = header_str(&delivery.properties, "traceparent") {
                        platform::telemetry::link_to(&span, traceparent);
                    }
                }
                AssertUnwindSafe(self.handler.handle_batch(envelopes))
                    .catch_unwind()
                    .instrument(span)
                    .await
                    .unwrap_or_else(|panic| {
                        Err(HandlerError::transient(format!(
                            "the handler panicked: {}",
                            panic_message(&*panic)
                        )))
                    })
            }
            _ => Err(HandlerError::transient("batch needs one-by-one handling")),
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        match handled {
            Ok(()) => {
                // One ack for the whole batch: the channel has this one consumer, which settles
                // each batch before taking the next, so every delivery up to the batch's last
                // is in the batch. An ack per delivery waited on the connection's I/O thread
                // once per message.
                if let Some(last) = batch.last() {
                    last.acker.ack(BasicAckOptions { multiple: true }).await?;
                }
                outcomes.extend(batch.iter().map(|_| Outcome::Acked));
            }
            Err(error) => {
                debug!(error = %error_chain(&error), size = batch.len(), "batch failed; handling one by one");
                for delivery in batch {
                    outcomes.push(self.process(publisher, delivery).await?);
                }
            }
        }
        Ok(outcomes)
    }

    /// Handles one delivery and settles it: ack, retry or dead letter.
    async fn process(
        &self,
        publisher: &Channel,
        delivery: Delivery,
    ) -> Result<Outcome, MessagingError> {
        if delivery.redelivered {
            metrics::counter!("consumer_redeliveries_total", "consumer" => self.settings.name.clone())
                .increment(1);
        }
        let attempt = header_int(&delivery.properties, X_ATTEMPT)
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(1)
            .max(1);
        let envelope = match Envelope::from_body(&delivery.data) {
            Ok(envelope) => envelope,
            Err(error) => {
                let error = error_chain(&error);
                warn!(%error, "undecodable message; dead-lettering it");
                return self
                    .dead_letter(publisher, &delivery, attempt, REASON_UNDECODABLE, &error)
                    .await;
            }
        };
        let span = self.process_span();
        span.record(
            "messaging.message.id",
            tracing::field::display(envelope.event_id),
        );
        span.record("event_type", envelope.event_type.as_str());
        span.record("stream_id", envelope.stream_id.as_str());
        span.record("version", envelope.version);
        span.record("attempt", attempt);
        let traceparent = header_str(&delivery.properties, "traceparent")
            .or(envelope.metadata.traceparent.as_deref());
        platform::telemetry::continue_trace(&span, traceparent);
        let handled = AssertUnwindSafe(self.handler.handle(envelope))
            .catch_unwind()
            .instrument(span.clone())
            .await
            .unwrap_or_else(|panic| {
                Err(HandlerError::transient(format!(
                    "the handler panicked: {}",
                    panic_message(&*panic)
                )))
            });
        // The error is flattened to text here: the boxed cause need not be `Sync`, and a
        // header carries text anyway.
        let failure = match handled {
            Ok(()) => None,
            Err(HandlerError::Transient(e)) => Some((true, error_chain(&*e))),
            Err(HandlerError::Permanent(e)) => Some((false, error_chain(&*e))),
        };
        async {
            match failure {
                None => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    Ok(Outcome::Acked)
                }
                Some((true, error)) if attempt < self.settings.max_attempts => {
                    self.retry(publisher, &delivery, attempt, &error).await
                }
                Some((transient, error)) => {
                    let reason = if transient {
                        REASON_RETRIES_EXHAUSTED
                    } else {
                        REASON_PERMANENT
                    };
                    warn!(%error, reason, "dead-lettering");
                    self.dead_letter(publisher, &delivery, attempt, reason, &error)
                        .await
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn retry(
        &self,
        publisher: &Channel,
        delivery: &Delivery,
        attempt: u32,
        error: &str,
    ) -> Result<Outcome, MessagingError> {
        let delay = self.settings.retry_backoff.delay(attempt);
        let last_error = truncated(error.to_owned());
        debug!(error = %last_error, retry_in = ?delay, "transient failure; retrying later");
        let routing_key = delivery.routing_key.to_string();
        let properties = republish_properties(&delivery.properties, |h| {
            h.insert(
                X_ATTEMPT.into(),
                AMQPValue::LongLongInt(i64::from(attempt) + 1),
            );
            set_text(h, X_LAST_ERROR, &last_error);
            if !h.contains_key(X_ORIGINAL_ROUTING_KEY) {
                set_text(h, X_ORIGINAL_ROUTING_KEY, &routing_key);
            }
        })
        .with_expiration(delay.as_millis().to_string().into());
        let retry_queue = self.topology.retry_queue(&self.settings.name);
        self.settle(
            delivery,
            publish_confirmed(publisher, "", &retry_queue, &delivery.data, properties).await,
            Outcome::Retried,
        )
        .await
    }

    async fn dead_letter(
        &self,
        publisher: &Channel,
        delivery: &Delivery,
        attempts: u32,
        reason: &str,
        error: &str,
    ) -> Result<Outcome, MessagingError> {
        let last_error = truncated(error.to_owned());
        let routing_key = delivery.routing_key.to_string();
        let properties = republish_properties(&delivery.properties, |h| {
            h.remove(X_ATTEMPT);
            set_text(h, X_DEAD_REASON, reason);
            set_text(h, X_LAST_ERROR, &last_error);
            h.insert(
                X_ATTEMPTS.into(),
                AMQPValue::LongLongInt(i64::from(attempts)),
            );
            set_text(h, X_DEAD_AT, &chrono::Utc::now().to_rfc3339());
            set_text(h, X_CONSUMER, &self.settings.name);
            if !h.contains_key(X_ORIGINAL_ROUTING_KEY) {
                set_text(h, X_ORIGINAL_ROUTING_KEY, &routing_key);
            }
        });
        let dead_letters = self.topology.dead_letter_queue(&self.settings.name);
        info!(
            message_id = header_message_id(delivery).as_deref(),
            reason, attempts, "message dead-lettered"
        );
        self.settle(
            delivery,
            publish_confirmed(publisher, "", &dead_letters, &delivery.data, properties).await,
            Outcome::DeadLettered,
        )
        .await
    }

    /// Acks the original once its copy is confirmed; if the copy was refused, puts the original
    /// back (same attempt) rather than lose it.
    async fn settle(
        &self,
        delivery: &Delivery,
        published: Result<(), MessagingError>,
        outcome: Outcome,
    ) -> Result<Outcome, MessagingError> {
        match published {
            Ok(()) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                Ok(outcome)
            }
            Err(MessagingError::Amqp(e)) => Err(e.into()),
            Err(error) => {
                warn!(error = %error_chain(&error), "could not move the message; requeueing it");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await?;
                Err(error)
            }
        }
    }
}

/// Resolves when `partition` is to be given up; never without one.
async fn given_up(partition: Option<&Partition>) {
    match partition {
        Some(partition) => partition.given_up().await,
        None => std::future::pending().await,
    }
}

fn set_text(headers: &mut BTreeMap<ShortString, AMQPValue>, name: &str, value: &str) {
    headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
}

fn truncated(mut text: String) -> String {
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn header_message_id(delivery: &Delivery) -> Option<String> {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncated(long);
        assert!(cut.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(cut.ends_with('…'));
        assert_eq!(truncated("short".into()), "short");
    }

    #[test]
    fn handler_errors_keep_their_cause() {
        let e = HandlerError::transient("database unavailable");
        assert_eq!(error_chain(&e), "transient failure: database unavailable");
    }
}
