//! [`Relay`]: moves the event store's global log to the RabbitMQ exchange.
//!
//! The events table is the outbox; the relay is the only process that reads it for the bus.
//! One session of the relay, in order:
//!
//! 1. **Lock.** A Postgres session advisory lock keyed by the relay's name, on a connection of its
//!    own, makes it the only active relay of that name. A second instance waits on the lock (in
//!    slices of [`LOCK_WAIT_SLICE`], so it notices a shutdown) and takes over the moment the
//!    first one's session ends — cleanly or because the process died. The active relay checks its
//!    lock session before every batch; if that session is gone it stops publishing at once.
//! 2. **Checkpoint.** Loaded only after the lock is held, so a new holder starts exactly where the
//!    previous one confirmed.
//! 3. **Batches.** `read_log(checkpoint, batch_size)` (gap-safe), every event published in log
//!    order on a channel in confirm mode, then every confirm awaited. Only when all are acks may
//!    the checkpoint move there. It is saved at most once per
//!    [`RelaySettings::checkpoint_interval`] (alongside the next read, or during the wait when
//!    idle: off the path from an append to its publication), and on shutdown: under light load
//!    the batches are a few events each, and a committed write per batch was most of the relay's
//!    cost to Postgres. A nack republishes the batch; an error ends the session (the batches
//!    since the last save are republished by the next one). Delivery is therefore at least
//!    once: a crash between the confirms and the checkpoint publishes those batches again, and
//!    consumers are idempotent.
//! 4. **Waiting.** A full batch loops at once. Otherwise the relay sleeps until a
//!    `NOTIFY eventstore_appended` (a background `LISTEN` task turns notifications into a wake-up)
//!    or the poll interval, whichever comes first; polling alone is correct, LISTEN only makes it
//!    prompt.
//!
//! Any error ends the session (lock released, connections closed) and a new one starts after a
//! capped exponential backoff: the relay never exits on a transient failure, only when its
//! [`CancellationToken`] is cancelled. Progress is visible through a [`RelayHandle`] (for health
//! checks) and the metrics `relay_events_published_total`, `relay_lag_events` (approximate:
//! newest position minus the last published one) and `relay_active`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventstore::{EventStore, LogPosition, RecordedEvent, load_checkpoint, save_checkpoint};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection as _, PgPool};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use crate::amqp::{Backoff, close_channel, close_connection, connect};
use crate::envelope::Envelope;
use crate::error::{MessagingError, error_chain};
use crate::topology::Topology;

/// The Postgres channel the event store notifies after appends.
pub const APPENDED_CHANNEL: &str = "eventstore_appended";
/// How long one wait for the advisory lock lasts before the waiter checks for shutdown.
pub const LOCK_WAIT_SLICE: Duration = Duration::from_millis(500);
/// A confirm that takes longer than this means a broken connection lapin has not noticed yet.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a nacked batch is republished on the same channel before the session restarts.
const NACKED_ROUNDS: u32 = 3;
/// The lag gauge costs a query; refresh it at most this often.
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// What a relay is configured with.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Identifies the relay: the advisory lock is keyed by it, so two relays of one name never
    /// publish at once.
    pub name: String,
    /// The event store checkpoint the relay reads from and saves to.
    pub checkpoint: String,
    pub amqp_url: String,
    /// Events per `read_log` and per confirm round.
    pub batch_size: i64,
    /// The fallback when no notification arrives.
    pub poll_interval: Duration,
    /// The least time between two checkpoint saves (zero: after every batch). What a crash
    /// republishes is at most this much of the log.
    pub checkpoint_interval: Duration,
    /// Between two sessions after a failure.
    pub reconnect: Backoff,
}

impl RelaySettings {
    pub fn new(amqp_url: impl Into<String>) -> Self {
        Self {
            name: "relay".into(),
            checkpoint: "relay".into(),
            amqp_url: amqp_url.into(),
            batch_size: 500,
            poll_interval: Duration::from_millis(200),
            checkpoint_interval: Duration::from_millis(100),
            reconnect: Backoff::default(),
        }
    }
}

/// Where a relay is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RelayState {
    #[default]
    Starting,
    /// Another relay of the same name holds the lock.
    WaitingForLock,
    /// Holds the lock and publishes.
    Active,
    /// A session failed; the next starts after a backoff.
    Reconnecting,
    /// The shutdown token was cancelled and the relay has let go of everything.
    Stopped,
}

/// A snapshot of a relay, for health checks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStatus {
    pub state: RelayState,
    pub amqp_connected: bool,
    /// The last position whose batch was confirmed and checkpointed.
    pub last_published: Option<LogPosition>,
    /// Events confirmed by this relay instance (a republished batch counts again).
    pub published_total: u64,
    /// Sessions that ended in a failure (and were restarted).
    pub failures_total: u64,
    pub last_error: Option<String>,
}

/// A read-only view of a running relay. Cheap to clone.
pub type RelayHandle = crate::status::StatusHandle<RelayStatus>;

/// Publishes the global log to the exchange. See the module docs.
#[derive(Debug)]
pub struct Relay {
    store: EventStore,
    topology: Topology,
    settings: RelaySettings,
    status: watch::Sender<RelayStatus>,
}

impl Relay {
    pub fn new(store: EventStore, topology: Topology, settings: RelaySettings) -> Self {
        let (status, _) = watch::channel(RelayStatus::default());
        Self {
            store,
            topology,
            settings,
            status,
        }
    }

    pub fn handle(&self) -> RelayHandle {
        RelayHandle::new(self.status.subscribe())
    }

    /// Runs until `shutdown` is cancelled, reconnecting after every failure.
    #[instrument(name = "relay", skip_all, fields(relay = %self.settings.name))]
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.session(&shutdown, &mut failures).await {
                Ok(()) => break,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = self.settings.reconnect.delay(failures);
                    let message = error_chain(&error);
                    warn!(error = %message, retry_in = ?delay, "relay session failed");
                    self.set_active_gauge(false);
                    self.status.send_modify(|s| {
                        s.state = RelayState::Reconnecting;
                        s.amqp_connected = false;
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
        self.set_active_gauge(false);
        self.status.send_modify(|s| {
            s.state = RelayState::Stopped;
            s.amqp_connected = false;
        });
        info!("relay stopped");
    }

    /// One session: lock, connect, publish until shutdown (Ok) or a failure (Err).
    async fn session(
        &self,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), MessagingError> {
        let Some(mut lock) = self.acquire_lock(shutdown).await? else {
            return Ok(());
        };
        let connection = match connect(
            &self.settings.amqp_url,
            &format!("tillstream relay {}", self.settings.name),
        )
        .await
        {
            Ok(connection) => connection,
            Err(e) => {
                release(lock).await;
                return Err(e.into());
            }
        };
        let result = self
            .publish_until_stopped(&mut lock, &connection, shutdown, failures)
            .await;
        // Not active any more before the lock goes: a status that says Active means the lock
        // is held.
        self.set_active_gauge(false);
        self.status.send_modify(|s| {
            s.state = if result.is_ok() {
                RelayState::Stopped
            } else {
                RelayState::Reconnecting
            };
            s.amqp_connected = false;
        });
        close_connection(&connection, "relay stopping").await;
        release(lock).await;
        result
    }

    /// Waits for the advisory lock on a connection of its own; `None` if shut down meanwhile.
    #[instrument(level = "debug", skip_all, err(level = "debug"))]
    async fn acquire_lock(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<PgConnection>, MessagingError> {
        // Detached: the lock lives exactly as long as this connection, never in the pool.
        let mut conn = self.store.pool().acquire().await?.detach();
        // `lock_timeout` bounds each wait so the waiter can notice a shutdown between slices.
        sqlx::query(&format!(
            "SET lock_timeout = {}",
            LOCK_WAIT_SLICE.as_millis()
        ))
        .execute(&mut conn)
        .await?;
        let key = format!("tillstream.relay/{}", self.settings.name);
        let mut told = false;
        loop {
            if shutdown.is_cancelled() {
                release(conn).await;
                return Ok(None);
            }
            let attempt = sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
                .bind(&key)
                .execute(&mut conn)
                .await;
            match attempt {
                Ok(_) => {
                    sqlx::query("SET lock_timeout = 0")
                        .execute(&mut conn)
                        .await?;
                    return Ok(Some(conn));
                }
                // lock_not_available: another relay of this name is active.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                    if !told {
                        info!("another relay of this name is active; waiting for its lock");
                        self.status
                            .send_modify(|s| s.state = RelayState::WaitingForLock);
                        told = true;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn publish_until_stopped(
        &self,
        lock: &mut PgConnection,
        connection: &Connection,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), MessagingError> {
        let channel = connection.create_channel().await?;
        let result = self.publish_on(&channel, lock, shutdown, failures).await;
        close_channel(&channel, "relay stopping").await;
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        lock: &mut PgConnection,
        shutdown: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), MessagingError> {
        self.topology.declare_exchange(channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;

        let wake = Arc::new(Notify::new());
        let _listener = AbortOnDropHandle::new(tokio::spawn(
            forward_notifications(
                self.store.pool().clone(),
                wake.clone(),
                self.settings.reconnect,
            )
            .in_current_span(),
        ));

        let pool = self.store.pool();
        let mut at = load_checkpoint(pool, &self.settings.checkpoint)
            .await?
            .unwrap_or(LogPosition::START);
        info!(checkpoint = %at, "relay active");
        self.set_active_gauge(true);
        self.status.send_modify(|s| {
            s.state = RelayState::Active;
            s.amqp_connected = true;
        });
        let mut lag_refreshed: Option<Instant> = None;
        // The end of the confirmed batches whose checkpoint is not saved yet. The save runs
        // alongside the next read (or the wait when idle) instead of before it: one round trip
        // fewer between an append and its publication. Until saved, a crash republishes those
        // batches, as it would between the confirms and the save anyway.
        let mut unsaved = Unsaved::new(self.settings.checkpoint_interval);

        loop {
            if shutdown.is_cancelled() {
                return self.save(unsaved.take()).await;
            }
            // An idle relay would otherwise only learn at its next publication that the broker
            // went away; health checks should know now.
            if !channel.status().connected() {
                return Err(lapin::Error::InvalidChannelState(channel.status().state()).into());
            }
            // Publishing without the lock could overlap with a new holder; stop instead. The
            // lock check, the read and the previous save are independent: they run together.
            let (alive, batch, saved) = tokio::join!(
                sqlx::query("SELECT 1").execute(&mut *lock),
                self.store.read_log(at, self.settings.batch_size),
                self.save(unsaved.take_due()),
            );
            alive.map_err(MessagingError::LockLost)?;
            saved?;
            let batch = batch?;
            // The session works: the next failure starts the backoff from the beginning.
            *failures = 0;
            if let Some(last) = batch.last().map(RecordedEvent::log_position) {
                // On shutdown the unconfirmed batch is abandoned; the next holder republishes it.
                let Some(published) = shutdown
                    .run_until_cancelled(self.publish_confirmed(channel, &batch))
                    .await
                else {
                    return self.save(unsaved.take()).await;
                };
                published?;
                unsaved.confirmed(last);
                at = last;
                metrics::counter!("relay_events_published_total", "relay" => self.settings.name.clone())
                    .increment(batch.len() as u64);
                self.status.send_modify(|s| {
                    s.published_total += batch.len() as u64;
                    s.last_error = None;
                });
                debug!(events = batch.len(), at = %at, "batch confirmed");
            }
            if lag_refreshed.is_none_or(|t| t.elapsed() >= LAG_REFRESH) {
                self.refresh_lag(at).await?;
                lag_refreshed = Some(Instant::now());
            }
            if batch.len() as i64 >= self.settings.batch_size {
                continue;
            }
            // Idle: the checkpoint is saved while waiting, once it is due.
            let poll = tokio::time::sleep(self.settings.poll_interval);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return self.save(unsaved.take()).await,
                    _ = wake.notified() => break,
                    _ = &mut poll => break,
                    Some(()) = unsaved.due() => self.save(unsaved.take()).await?,
                }
            }
        }
    }

    /// Saves the checkpoint of confirmed batches (if there are any) and reports it published.
    async fn save(&self, confirmed: Option<LogPosition>) -> Result<(), MessagingError> {
        let Some(last) = confirmed else {
            return Ok(());
        };
        save_checkpoint(self.store.pool(), &self.settings.checkpoint, last).await?;
        self.status.send_modify(|s| s.last_published = Some(last));
        debug!(checkpoint = %last, "checkpoint saved");
        Ok(())
    }

    /// Publishes the batch until every message is confirmed with an ack.
    #[instrument(level = "debug", skip_all, fields(events = batch.len()), err(level = "debug"))]
    async fn publish_confirmed(
        &self,
        channel: &Channel,
        batch: &[RecordedEvent],
    ) -> Result<(), MessagingError> {
        let exchange = self.topology.exchange();
        let mut round = 0;
        loop {
            round += 1;
            match publish_batch(channel, &exchange, batch).await? {
                None => return Ok(()),
                Some(message_id) if round >= NACKED_ROUNDS => {
                    return Err(MessagingError::NotConfirmed { message_id });
                }
                Some(message_id) => {
                    let delay = self.settings.reconnect.delay(round);
                    warn!(%message_id, retry_in = ?delay, "RabbitMQ nacked a publication; republishing the batch");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn refresh_lag(&self, at: LogPosition) -> Result<(), eventstore::StoreError> {
        // An estimate (see `newest_position`), which is all a gauge needs.
        let newest = self.store.newest_position().await?;
        metrics::gauge!("relay_lag_events", "relay" => self.settings.name.clone())
            .set((newest - at.position).max(0) as f64);
        Ok(())
    }

    fn set_active_gauge(&self, active: bool) {
        metrics::gauge!("relay_active", "relay" => self.settings.name.clone()).set(if active {
            1.0
        } else {
            0.0
        });
    }
}

/// The confirmed position the checkpoint has not been saved at yet, and when it may be.
#[derive(Debug)]
struct Unsaved {
    position: Option<LogPosition>,
    every: Duration,
    saved_at: tokio::time::Instant,
}

impl Unsaved {
    fn new(every: Duration) -> Self {
        Self {
            position: None,
            every,
            saved_at: tokio::time::Instant::now(),
        }
    }

    fn confirmed(&mut self, position: LogPosition) {
        self.position = Some(position);
    }

    /// The position to save now, whatever the interval (on shutdown, or when it is due).
    fn take(&mut self) -> Option<LogPosition> {
        let position = self.position.take();
        if position.is_some() {
            self.saved_at = tokio::time::Instant::now();
        }
        position
    }

    /// The position to save if its interval has passed.
    fn take_due(&mut self) -> Option<LogPosition> {
        if tokio::time::Instant::now() >= self.due_at() {
            self.take()
        } else {
            None
        }
    }

    /// `Some` once a position is waiting and its interval has passed. With none waiting it is
    /// `None` at once, which switches its `select!` branch off (rather than firing in a loop).
    async fn due(&self) -> Option<()> {
        self.position?;
        tokio::time::sleep_until(self.due_at()).await;
        Some(())
    }

    fn due_at(&self) -> tokio::time::Instant {
        self.saved_at + self.every
    }
}

/// Ends the lock session, which releases the advisory lock for the next relay. Bounded: a
/// database that went away does not answer, and dropping the connection ends the session too.
async fn release(lock: PgConnection) {
    let _ = tokio::time::timeout(Duration::from_secs(5), lock.close()).await;
}

/// Publishes every event, in order, then awaits every confirm. `Some(message id)` of the first
/// nacked message, `None` when all were acked.
async fn publish_batch(
    channel: &Channel,
    exchange: &str,
    batch: &[RecordedEvent],
) -> Result<Option<String>, MessagingError> {
    let mut confirms = Vec::with_capacity(batch.len());
    for event in batch {
        let mut envelope = Envelope::from(event);
        let routing_key = envelope.routing_key();
        // The publication continues the trace of the command that appended the event, and
        // consumers continue from the publication: the AMQP header carries this hop, the body
        // the event as recorded.
        let hop = info_span!(
            parent: None,
            "publish",
            otel.name = %format_args!("{routing_key} publish"),
            otel.kind = "producer",
            messaging.system = "rabbitmq",
            messaging.operation.type = "publish",
            messaging.destination.name = %exchange,
            messaging.rabbitmq.destination.routing_key = %routing_key,
            messaging.message.id = %event.event_id,
        );
        platform::telemetry::continue_trace(&hop, event.metadata.traceparent.as_deref());
        let body = envelope.to_body()?;
        if let Some(traceparent) = platform::telemetry::traceparent_of(&hop) {
            envelope.metadata.traceparent = Some(traceparent);
        }
        let confirm = channel
            .basic_publish(
                exchange,
                &routing_key,
                BasicPublishOptions::default(),
                &body,
                envelope.properties(),
            )
            .instrument(hop)
            .await?;
        confirms.push((event.event_id, confirm));
    }
    let mut nacked = None;
    for (event_id, confirm) in confirms {
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
            .await
            .map_err(|_| MessagingError::NotConfirmed {
                message_id: event_id.to_string(),
            })??;
        if !confirmation.is_ack() && nacked.is_none() {
            nacked = Some(event_id.to_string());
        }
    }
    Ok(nacked)
}

/// Turns `NOTIFY eventstore_appended` into wake-ups, reconnecting on its own. Runs as a task so
/// the relay's wait (`Notify::notified`) is cancel-safe; bursts of notifications coalesce into
/// one stored permit.
async fn forward_notifications(pool: PgPool, wake: Arc<Notify>, backoff: Backoff) {
    let mut failures = 0u32;
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(APPENDED_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listening {
            Ok(mut listener) => {
                failures = 0;
                // Notifications sent while not listening are lost; look once to be sure.
                wake.notify_one();
                while let Ok(_notification) = listener.recv().await {
                    wake.notify_one();
                }
                debug!("LISTEN connection lost; polling until it is back");
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                debug!(error = %error, "cannot LISTEN; polling until it works");
            }
        }
        tokio::time::sleep(backoff.delay(failures.max(1))).await;
    }
}
