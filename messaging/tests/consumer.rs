//! The consumer runner and the dead-letter tools against the real Postgres and RabbitMQ, fed by
//! the real relay: a poison message is retried exactly `max_attempts` times and dead-lettered
//! while everything else flows; a permanent failure dead-letters at once; a redelivered message
//! is harmless; dead letters can be listed (without losing them), redriven and dropped; gaps in a
//! stream are filled from the event store.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventstore::{EventStore, RecordedEvent};
use lapin::BasicProperties;
use messaging::consumer::{REASON_PERMANENT, REASON_RETRIES_EXHAUSTED, REASON_UNDECODABLE};
use messaging::{
    Backoff, ConsumerHandle, ConsumerRunner, ConsumerSettings, Envelope, Handler, HandlerError,
    Relay, RelaySettings, dead_letters,
};
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;
use uuid::Uuid;

mod support;
use support::*;

/// An in-memory read model that applies events per stream in order, and records
/// every call so the tests can count attempts.
#[derive(Debug, Default)]
struct Model {
    versions: HashMap<String, u64>,
    applied: HashMap<Uuid, u32>,
    applied_at: HashMap<Uuid, Instant>,
    calls: HashMap<Uuid, Vec<Instant>>,
}

#[derive(Debug, Clone)]
struct TestHandler {
    store: EventStore,
    model: Arc<Mutex<Model>>,
    /// Always fails transiently.
    poison: Arc<Mutex<HashSet<Uuid>>>,
    /// Fail permanently while `failing` is set.
    bad: Arc<Mutex<HashSet<Uuid>>>,
    failing: Arc<AtomicBool>,
}

impl TestHandler {
    fn new(store: &EventStore) -> Self {
        Self {
            store: store.clone(),
            model: Arc::default(),
            poison: Arc::default(),
            bad: Arc::default(),
            failing: Arc::new(AtomicBool::new(true)),
        }
    }

    fn calls(&self, id: Uuid) -> usize {
        self.model
            .lock()
            .unwrap()
            .calls
            .get(&id)
            .map_or(0, Vec::len)
    }

    fn applied(&self, id: Uuid) -> u32 {
        self.model
            .lock()
            .unwrap()
            .applied
            .get(&id)
            .copied()
            .unwrap_or(0)
    }

    fn all_applied(&self, ids: &[Uuid]) -> bool {
        let model = self.model.lock().unwrap();
        ids.iter().all(|id| model.applied.contains_key(id))
    }
}

impl Handler for TestHandler {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        let stored = {
            let mut model = self.model.lock().unwrap();
            model
                .calls
                .entry(envelope.event_id)
                .or_default()
                .push(Instant::now());
            model
                .versions
                .get(&envelope.stream_id)
                .copied()
                .unwrap_or(0)
        };
        if self.poison.lock().unwrap().contains(&envelope.event_id) {
            return Err(HandlerError::transient("poison: the database is 'down'"));
        }
        if self.failing.load(Ordering::SeqCst)
            && self.bad.lock().unwrap().contains(&envelope.event_id)
        {
            return Err(HandlerError::permanent("bad event: cannot be applied"));
        }
        // Like a projection: what the model holds is skipped; anything newer is read from the
        // store, so an event that overtook an earlier one's retry fills the gap.
        let events: Vec<RecordedEvent> = match envelope.version > stored {
            false => Vec::new(),
            true => self
                .store
                .read_stream(&envelope.stream_id, stored)
                .await
                .map_err(HandlerError::transient)?
                .into_iter()
                .take_while(|e| e.version <= envelope.version)
                .collect(),
        };
        let mut model = self.model.lock().unwrap();
        for event in events {
            *model.applied.entry(event.event_id).or_default() += 1;
            model.applied_at.insert(event.event_id, Instant::now());
            model
                .versions
                .insert(event.stream_id.clone(), event.version);
        }
        Ok(())
    }
}

/// Appends one event with a known id to a new stream.
async fn append_with_id(store: &EventStore, id: Uuid) {
    let mut e = event("Noted");
    e.event_id = id;
    store
        .append(&stream(), eventstore::ExpectedVersion::NoStream, &[e])
        .await
        .unwrap();
}

struct Running {
    handle: ConsumerHandle,
    shutdown: CancellationToken,
    task: AbortOnDropHandle<()>,
}

fn consumer_settings(bus: &TestBus, name: &str) -> ConsumerSettings {
    ConsumerSettings {
        prefetch: 16,
        max_attempts: 5,
        retry_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
        reconnect: Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
        ..ConsumerSettings::new(bus.consumer(name), ["test.*"], amqp_url())
    }
}

async fn start_consumer(bus: &TestBus, name: &str, handler: TestHandler) -> Running {
    start_consumer_with(bus, consumer_settings(bus, name), handler).await
}

async fn start_consumer_with(
    bus: &TestBus,
    settings: ConsumerSettings,
    handler: TestHandler,
) -> Running {
    let runner = ConsumerRunner::new(bus.topology.clone(), settings, handler);
    let handle = runner.handle();
    let shutdown = CancellationToken::new();
    let task = AbortOnDropHandle::new(tokio::spawn(runner.run(shutdown.clone())));
    within("the consumer to connect", handle.wait_for(|s| s.connected)).await;
    Running {
        handle,
        shutdown,
        task,
    }
}

fn start_relay(store: &EventStore, bus: &TestBus) -> (CancellationToken, AbortOnDropHandle<()>) {
    let relay = Relay::new(
        store.clone(),
        bus.topology.clone(),
        RelaySettings::new(amqp_url()),
    );
    let shutdown = CancellationToken::new();
    let task = AbortOnDropHandle::new(tokio::spawn(relay.run(shutdown.clone())));
    (shutdown, task)
}

async fn stop(shutdown: CancellationToken, task: AbortOnDropHandle<()>) {
    shutdown.cancel();
    within("a task to stop", task).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_message_is_retried_to_the_limit_then_dead_lettered_while_the_rest_flows() {
    init_tracing();
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = TestBus::new();
    let conn = amqp().await;
    let handler = TestHandler::new(&store);
    // Retries 200, 400, 800, 1600 ms apart: the poison's last try is ~3 s after its first,
    // long after the rest of the queue has been handled.
    let consumer = start_consumer_with(
        &bus,
        ConsumerSettings {
            retry_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2)),
            ..consumer_settings(&bus, "projector")
        },
        handler.clone(),
    )
    .await;
    let (stop_relay, relay) = start_relay(&store, &bus);

    // The poison and the permanently bad event go first, each in a stream of its own, so the
    // rest of the queue is behind them.
    // Their ids are marked before they are appended: the relay is already running.
    let (poison, bad) = (Uuid::now_v7(), Uuid::now_v7());
    handler.poison.lock().unwrap().insert(poison);
    handler.bad.lock().unwrap().insert(bad);
    append_with_id(&store, poison).await;
    append_with_id(&store, bad).await;
    let normal = append_concurrently(&store, 6, 50, "Noted").await;

    let status = within_explained(
        &db.pool,
        "both failures to be dead-lettered",
        consumer.handle.wait_for(|s| s.dead_lettered >= 2),
    )
    .await;
    eventually_explained(&db.pool, "every other event to be applied", || async {
        handler.all_applied(&normal)
    })
    .await;

    assert_eq!(
        handler.calls(poison),
        5,
        "the poison was tried max_attempts times"
    );
    assert_eq!(handler.calls(bad), 1, "a permanent failure is not retried");
    assert_eq!(status.dead_lettered, 2);
    assert_eq!(status.retried, 4);
    {
        let model = handler.model.lock().unwrap();
        for id in &normal {
            assert_eq!(model.applied[id], 1, "applied exactly once");
        }
        // The queue kept flowing: everything else was applied before the poison's last try.
        let last_normal = normal.iter().map(|id| model.applied_at[id]).max().unwrap();
        let last_poison_try = *model.calls[&poison].last().unwrap();
        assert!(
            last_normal < last_poison_try,
            "the poison held up the queue"
        );
        let tries = &model.calls[&poison];
        let gaps: Vec<_> = tries.windows(2).map(|w| w[1] - w[0]).collect();
        info!(?gaps, "time between the poison's attempts");
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_millis(190)),
            "retries wait"
        );
    }

    let letters = dead_letters::list(&conn, &bus.topology, "projector", 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 2);
    let by_id: HashMap<_, _> = letters
        .iter()
        .map(|l| (l.message_id.clone().unwrap(), l))
        .collect();
    let p = by_id[&poison.to_string()];
    assert_eq!(p.reason.as_deref(), Some(REASON_RETRIES_EXHAUSTED));
    assert_eq!(p.attempts, Some(5));
    assert!(p.last_error.as_deref().unwrap().contains("poison"));
    assert_eq!(p.routing_key.as_deref(), Some("test.Noted"));
    assert_eq!(p.envelope.as_ref().unwrap().event_id, poison);
    let b = by_id[&bad.to_string()];
    assert_eq!(b.reason.as_deref(), Some(REASON_PERMANENT));
    assert_eq!(b.attempts, Some(1));
    assert!(b.last_error.as_deref().unwrap().contains("bad event"));

    // Redelivering an already applied message (a crash between commit and ack) is harmless.
    let again = normal[57];
    let stream_of_again: String =
        sqlx::query_scalar("SELECT stream_id FROM eventstore.events WHERE event_id = $1")
            .bind(again)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let recorded: RecordedEvent = store
        .read_stream(&stream_of_again, 0)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event_id == again)
        .unwrap();
    let envelope = Envelope::from(&recorded);
    let acked_before = consumer.handle.status().acked;
    publish_to_queue(
        &conn,
        &bus.topology.queue("projector"),
        &envelope.to_body().unwrap(),
        envelope.properties(),
    )
    .await;
    within(
        "the duplicate to be acked",
        consumer.handle.wait_for(|s| s.acked > acked_before),
    )
    .await;
    assert_eq!(handler.calls(again), 2, "the duplicate reached the handler");
    assert_eq!(handler.applied(again), 1, "…and changed nothing");

    stop(stop_relay, relay).await;
    stop(consumer.shutdown, consumer.task).await;
    conn.close(200, "done").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_can_be_listed_redriven_and_dropped() {
    init_tracing();
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = TestBus::new();
    let conn = amqp().await;
    let handler = TestHandler::new(&store);
    let consumer = start_consumer(&bus, "dlq", handler.clone()).await;
    let (stop_relay, relay) = start_relay(&store, &bus);
    let topology = &bus.topology;

    // Three bad events (own streams), five good ones, and one message that is not an envelope.
    let mut bad = Vec::new();
    for _ in 0..3 {
        let id = Uuid::now_v7();
        handler.bad.lock().unwrap().insert(id);
        bad.push(id);
    }
    for id in &bad {
        append_with_id(&store, *id).await;
    }
    let good = append_to(&store, &stream(), 5, "Noted").await;
    publish_to_queue(
        &conn,
        &topology.queue("dlq"),
        b"not an envelope",
        BasicProperties::default().with_message_id("garbage".into()),
    )
    .await;

    within_explained(
        &db.pool,
        "four dead letters",
        consumer.handle.wait_for(|s| s.dead_lettered >= 4),
    )
    .await;
    eventually_explained(&db.pool, "the good events", || async {
        handler.all_applied(&good)
    })
    .await;

    // Listing peeks: twice the same, nothing lost.
    let listed = dead_letters::list(&conn, topology, "dlq", 100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 4);
    let again = dead_letters::list(&conn, topology, "dlq", 100)
        .await
        .unwrap();
    assert_eq!(again, listed);
    assert_eq!(
        dead_letters::list(&conn, topology, "dlq", 1)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        dead_letters::count(&conn, topology, "dlq").await.unwrap(),
        4
    );
    let listed_ids: HashSet<_> = listed
        .iter()
        .filter_map(|l| l.envelope.as_ref().map(|e| e.event_id))
        .collect();
    assert_eq!(listed_ids, bad.iter().copied().collect());
    let garbage = listed
        .iter()
        .find(|l| l.envelope.is_none())
        .expect("the undecodable message");
    assert_eq!(garbage.reason.as_deref(), Some(REASON_UNDECODABLE));
    assert_eq!(garbage.message_id.as_deref(), Some("garbage"));

    // The cause is fixed; redrive moves all four back. The three events apply, the garbage
    // comes back to the dead letters once (not in a loop).
    handler.failing.store(false, Ordering::SeqCst);
    let moved = dead_letters::redrive(&conn, topology, "dlq").await.unwrap();
    assert_eq!(moved, 4);
    eventually("the redriven events to apply", || async {
        handler.all_applied(&bad)
    })
    .await;
    within(
        "the garbage to dead-letter again",
        consumer.handle.wait_for(|s| s.dead_lettered >= 5),
    )
    .await;
    let left = dead_letters::list(&conn, topology, "dlq", 100)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].redriven, 1);
    assert_eq!(left[0].reason.as_deref(), Some(REASON_UNDECODABLE));
    for id in &bad {
        assert_eq!(handler.calls(*id), 2);
        assert_eq!(handler.applied(*id), 1);
    }

    // Two more failures, then drop them all.
    handler.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let id = Uuid::now_v7();
        handler.bad.lock().unwrap().insert(id);
        append_with_id(&store, id).await;
    }
    within_explained(
        &db.pool,
        "two more dead letters",
        consumer.handle.wait_for(|s| s.dead_lettered >= 7),
    )
    .await;
    assert_eq!(
        dead_letters::drop_all(&conn, topology, "dlq")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        dead_letters::count(&conn, topology, "dlq").await.unwrap(),
        0
    );
    assert!(
        dead_letters::list(&conn, topology, "dlq", 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        dead_letters::redrive(&conn, topology, "dlq").await.unwrap(),
        0
    );

    stop(stop_relay, relay).await;
    stop(consumer.shutdown, consumer.task).await;
    conn.close(200, "done").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_consumer_survives_the_broker_going_away_and_applies_everything_once() {
    init_tracing();
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = TestBus::new();
    let proxy = CuttableProxy::start().await;
    let handler = TestHandler::new(&store);
    let consumer = start_consumer_with(
        &bus,
        ConsumerSettings {
            amqp_url: proxy.url.clone(),
            ..consumer_settings(&bus, "survivor")
        },
        handler.clone(),
    )
    .await;
    let (stop_relay, relay) = start_relay(&store, &bus);

    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.extend(append_to(&store, &stream(), 10, "Noted").await);
    }
    within_explained(
        &db.pool,
        "some events to be applied",
        consumer.handle.wait_for(|s| s.acked >= 50),
    )
    .await;
    // The broker goes away mid-stream: unacked messages are redelivered after the reconnect.
    proxy.cut();
    for _ in 0..10 {
        ids.extend(append_to(&store, &stream(), 10, "Noted").await);
    }
    eventually_explained(&db.pool, "every event to be applied", || async {
        handler.all_applied(&ids)
    })
    .await;
    let status = consumer.handle.status();
    assert!(status.failures_total >= 1, "the cut went unnoticed");
    assert!(status.connected);
    for id in &ids {
        assert_eq!(handler.applied(*id), 1, "applied exactly once");
    }
    info!(
        events = ids.len(),
        acked = status.acked,
        failures = status.failures_total,
        "consumer recovered from a broker cut"
    );

    stop(stop_relay, relay).await;
    stop(consumer.shutdown, consumer.task).await;
    proxy.stop.cancel();
}

/// A handled batch is acked as a whole, with one multiple-ack for its last delivery: once the
/// consumer has stopped (and its channel has given back whatever it had not acked), nothing it
/// handled is left in the queue to be delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handled_batch_is_acked_whole_and_nothing_is_left_to_redeliver() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;

    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = TestBus::new();
    let handler = TestHandler::new(&store);
    let consumer = start_consumer_with(
        &bus,
        ConsumerSettings {
            prefetch: 64,
            batch_size: 32,
            batch_linger: Duration::from_millis(50),
            ..consumer_settings(&bus, "batches")
        },
        handler.clone(),
    )
    .await;
    let (stop_relay, relay) = start_relay(&store, &bus);
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.extend(append_to(&store, &stream(), 10, "Noted").await);
    }
    within_explained(
        &db.pool,
        "every event to be handled and acked",
        consumer.handle.wait_for(|s| s.acked >= ids.len() as u64),
    )
    .await;
    stop(stop_relay, relay).await;
    stop(consumer.shutdown, consumer.task).await;

    let connection = amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let queue = channel
        .queue_declare(
            &bus.topology.queue("batches"),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        queue.message_count(),
        0,
        "handled messages left to redeliver"
    );
    for id in &ids {
        assert_eq!(handler.applied(*id), 1, "applied exactly once");
    }
}

/// Records the size of every batch it is handed.
#[derive(Debug, Clone, Default)]
struct BatchSizes(Arc<Mutex<Vec<usize>>>);

impl Handler for BatchSizes {
    async fn handle(&self, _envelope: Envelope) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(1);
        Ok(())
    }

    async fn handle_batch(&self, envelopes: Vec<Envelope>) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push(envelopes.len());
        Ok(())
    }
}

/// A batch closes at its linger after its first delivery, however steadily messages keep
/// coming: a trickle of one event every 10 ms under a 100 ms linger is handled in batches of
/// about ten, not held back until 256 have gathered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_trickle_is_handled_at_the_linger_not_when_the_batch_is_full() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = TestBus::new();
    let sizes = BatchSizes::default();
    let runner = ConsumerRunner::new(
        bus.topology.clone(),
        ConsumerSettings {
            prefetch: 512,
            batch_size: 256,
            batch_linger: Duration::from_millis(100),
            ..consumer_settings(&bus, "trickle")
        },
        sizes.clone(),
    );
    let handle = runner.handle();
    let shutdown = CancellationToken::new();
    let task = AbortOnDropHandle::new(tokio::spawn(runner.run(shutdown.clone())));
    within("the consumer to connect", handle.wait_for(|s| s.connected)).await;
    // A relay that looks every 2 ms, so the events reach the queue one by one as they come.
    let relay = Relay::new(
        store.clone(),
        bus.topology.clone(),
        RelaySettings {
            poll_interval: Duration::from_millis(2),
            ..RelaySettings::new(amqp_url())
        },
    );
    let stop_relay = CancellationToken::new();
    let relay = AbortOnDropHandle::new(tokio::spawn(relay.run(stop_relay.clone())));
    let events = 150;
    let stream_id = stream();
    for _ in 0..events {
        append_to(&store, &stream_id, 1, "Noted").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    within_explained(
        &db.pool,
        "every event to be handled",
        handle.wait_for(|s| s.acked >= events),
    )
    .await;
    stop(stop_relay, relay).await;
    stop(shutdown, task).await;
    let sizes = sizes.0.lock().unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), events as usize);
    // 1.5 s of events under a 100 ms linger: about fifteen batches; one batch held open while
    // the trickle lasted would be one or two.
    assert!(sizes.len() >= 8, "batches: {sizes:?}");
}
