//! Partitioned consumers against the real Postgres and RabbitMQ (with its consistent-hash
//! exchange plugin), fed by the real relay: two workers share the partitions, every stream's
//! events reach the handler in order (also when a partition is given up with deliveries in hand),
//! a worker cut off from the broker hands its partitions to the other, and changing the number of partitions moves what is queued into the new layout.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventstore::{EventStore, ExpectedVersion};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use messaging::{
    Backoff, ConsumerGroup, ConsumerHandle, ConsumerSettings, Envelope, Handler, HandlerError,
    Partition, Relay, RelaySettings, Topology,
};
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

mod support;
use support::*;

/// What every worker handed the handler: (worker, stream, version), in order.
type Log = Arc<Mutex<Vec<(usize, String, u64)>>>;

#[derive(Clone)]
struct Recorder {
    worker: usize,
    log: Log,
    /// Work per event, so a stream's events overlap between workers if they could.
    pause: Duration,
}

impl Handler for Recorder {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        tokio::time::sleep(self.pause).await;
        self.log
            .lock()
            .unwrap()
            .push((self.worker, envelope.stream_id, envelope.version));
        Ok(())
    }
}

struct Worker {
    handles: Vec<ConsumerHandle>,
    partitions: Vec<Arc<Partition>>,
    _tasks: Vec<AbortOnDropHandle<()>>,
}

/// How a test worker runs.
struct WorkerSettings<'a> {
    url: &'a str,
    /// Work per event.
    pause: Duration,
    /// Whether its balancer runs; without, only the test gives partitions up.
    balanced: bool,
}

/// Starts one worker of consumer `name`: a runner per partition, and the balancer if asked.
async fn start_worker(
    topology: &Topology,
    name: &str,
    worker: usize,
    log: &Log,
    how: WorkerSettings<'_>,
) -> Worker {
    let settings = ConsumerSettings {
        prefetch: 8,
        reconnect: Backoff::new(Duration::from_millis(50), Duration::from_millis(500)),
        ..ConsumerSettings::new(name, ["test.*"], how.url)
    };
    let group = ConsumerGroup::new(topology, settings, |_| Recorder {
        worker,
        log: log.clone(),
        pause: how.pause,
    });
    let shutdown = CancellationToken::new();
    let handles: Vec<ConsumerHandle> = group.runners.iter().map(|r| r.handle()).collect();
    let partitions = group
        .runners
        .iter()
        .map(|r| r.partition().expect("partitioned").clone())
        .collect();
    let mut tasks: Vec<AbortOnDropHandle<()>> = group
        .runners
        .into_iter()
        .map(|r| AbortOnDropHandle::new(tokio::spawn(r.run(shutdown.clone()))))
        .collect();
    if how.balanced {
        let balancer = group.balancer.expect("partitioned");
        tasks.push(AbortOnDropHandle::new(tokio::spawn(
            balancer.run(shutdown.clone()),
        )));
    }
    for handle in &handles {
        within(
            "a partition's runner to connect",
            handle.wait_for(|s| s.connected),
        )
        .await;
    }
    Worker {
        handles,
        partitions,
        _tasks: tasks,
    }
}

/// The relay of `store` to `topology`'s exchange, running until dropped.
fn start_relay(store: &EventStore, topology: &Topology) -> AbortOnDropHandle<()> {
    let relay = Relay::new(
        store.clone(),
        topology.clone(),
        RelaySettings::new(amqp_url()),
    );
    AbortOnDropHandle::new(tokio::spawn(relay.run(CancellationToken::new())))
}

/// Streams of `versions` events each, appended round by round so the streams interleave.
async fn append_rounds(store: &EventStore, streams: &[String], versions: usize) {
    for _ in 0..versions {
        for stream_id in streams {
            store
                .append(stream_id, ExpectedVersion::Any, &[event("Noted")])
                .await
                .unwrap();
        }
    }
}

/// Every entry's version follows the stream's highest version handled so far: no stream
/// reached the handler out of order (a replay of what was handled already is allowed).
fn assert_in_order(log: &[(usize, String, u64)]) {
    let mut highest: HashMap<&str, u64> = HashMap::new();
    for (worker, stream_id, version) in log {
        let seen = highest.entry(stream_id).or_default();
        assert!(
            *version <= *seen + 1,
            "worker {worker} got version {version} of {stream_id} after version {seen}"
        );
        *seen = (*seen).max(*version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_the_partitions_in_stream_order_and_one_takes_over_from_a_dead_one() {
    init_tracing();
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = TestBus::partitioned(4);
    let name = bus.consumer("partitioned");
    let log: Log = Arc::default();

    // Worker 0 reaches the broker through a proxy that can be cut: its death.
    let proxy = CuttableProxy::start().await;
    let balanced = |url| WorkerSettings {
        url,
        pause: Duration::from_millis(1),
        balanced: true,
    };
    let first = start_worker(&bus.topology, &name, 0, &log, balanced(&proxy.url)).await;
    let url = amqp_url();
    let second = start_worker(&bus.topology, &name, 1, &log, balanced(&url)).await;
    let _relay = start_relay(&store, &bus.topology);

    // Load until the balancer has seen worker 0 (the first to subscribe, so active on every
    // partition) busy on more than its share and handed some partitions to worker 1.
    let streams: Vec<String> = (0..40).map(|_| stream()).collect();
    let handled_by = |worker: usize| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(w, _, _)| *w == worker)
            .count()
    };
    let mut rounds = 0;
    while handled_by(0) == 0 || handled_by(1) == 0 {
        assert!(rounds < 200, "worker 1 never got a partition");
        append_rounds(&store, &streams, 1).await;
        rounds += 1;
    }

    // Worker 0 dies: its connections drop and it cannot come back.
    let before_the_kill = log.lock().unwrap().len();
    proxy.stop.cancel();
    proxy.cut();
    let before = handled_by(1);
    append_rounds(&store, &streams, 10).await;
    let expected: HashSet<(String, u64)> = streams
        .iter()
        .flat_map(|s| (1..=rounds + 10).map(move |v| (s.clone(), v)))
        .collect();
    eventually("every event handled", || async {
        let log = log.lock().unwrap();
        let handled: HashSet<(String, u64)> = log.iter().map(|(_, s, v)| (s.clone(), *v)).collect();
        expected.is_subset(&handled)
    })
    .await;
    assert!(
        handled_by(1) >= before + 400,
        "worker 1 took over every partition"
    );
    // The cut worker notices on its own time (its I/O loop sees the socket close); the other may
    // have handled everything by then.
    eventually("the cut worker reports itself disconnected", || async {
        first.handles.iter().all(|h| !h.status().connected)
    })
    .await;
    assert!(second.handles.iter().all(|h| h.status().connected));
    // Until the kill — through the balancer's hand-overs — every stream arrived in order. At the
    // kill itself the dead worker may still finish the event in hand while the other starts on
    // the next ones (nothing fences a worker the broker has written off); the projections'
    // version check and gap filling are what keep that moment correct.
    assert_in_order(&log.lock().unwrap()[..before_the_kill]);
}

/// The moment of a hand-over, made to happen again and again with deliveries in hand and events
/// arriving: a worker that gives a partition up while it holds prefetched, unhandled events
/// passes them to the next worker in line ahead of the newer ones, and nothing breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_handed_back_and_forth_under_load_keep_the_stream_in_order() {
    init_tracing();
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = TestBus::partitioned(2);
    let name = bus.consumer("handover");
    let log: Log = Arc::default();
    let url = amqp_url();
    // Slower than the events arrive, so the active worker always holds a full prefetch.
    let by_hand = || WorkerSettings {
        url: &url,
        pause: Duration::from_millis(2),
        balanced: false,
    };
    // Worker 0 subscribes first, so it is active on both partitions; worker 1 waits in line.
    let workers = [
        start_worker(&bus.topology, &name, 0, &log, by_hand()).await,
        start_worker(&bus.topology, &name, 1, &log, by_hand()).await,
    ];
    let _relay = start_relay(&store, &bus.topology);

    // Two writers appending to their streams as fast as they can: events reach the queues at
    // every moment of a hand-over.
    let per_stream = 300;
    let appenders: Vec<_> = (0..2)
        .map(|_| {
            let store = store.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let stream_id = stream();
                for _ in 0..per_stream {
                    store
                        .append(&stream_id, ExpectedVersion::Any, &[event("Noted")])
                        .await
                        .unwrap();
                }
            }))
        })
        .collect();
    let handled = || log.lock().unwrap().len();
    // Each hand-over passes the stream to the other worker while events keep arriving.
    for turn in 0..10 {
        let goal = (turn + 1) * 30;
        eventually("the active worker is into the stream", || async {
            handled() >= goal
        })
        .await;
        for partition in &workers[turn % 2].partitions {
            partition.give_up();
        }
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    eventually("every event handled", || async {
        let log = log.lock().unwrap();
        let handled: HashSet<(&str, u64)> = log.iter().map(|(_, s, v)| (s.as_str(), *v)).collect();
        handled.len() == 2 * per_stream
    })
    .await;
    let log = log.lock().unwrap();
    assert!(
        log.iter().any(|(worker, _, _)| *worker == 1),
        "worker 1 took streams over"
    );
    assert_in_order(&log);
    // No session broke on the way. (A basic.cancel of the active consumer with messages ready
    // makes RabbitMQ 3.10's queue process crash on the next publish, which cancels every
    // consumer of the queue.)
    for worker in &workers {
        for handle in &worker.handles {
            assert_eq!(handle.status().failures_total, 0, "{:?}", handle.status());
        }
    }
}

/// Publishes `count` events of `streams` streams to the events exchange, as the relay would.
async fn publish_events(topology: &Topology, count: usize, streams: usize) {
    let connection = amqp().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for n in 0..count {
        let mut headers = FieldTable::default();
        headers.insert(
            "stream_id".into(),
            AMQPValue::LongString(LongString::from(format!("stream-{}", n % streams))),
        );
        let confirm = channel
            .basic_publish(
                &topology.exchange(),
                "test.Noted",
                BasicPublishOptions::default(),
                format!("{n}").as_bytes(),
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    let _ = connection.close(200, "published").await;
}

/// Messages in each of `queues`; `None` for a queue that does not exist.
async fn queued(queues: &[String]) -> Vec<Option<u32>> {
    let connection = amqp().await;
    let mut counts = Vec::new();
    for queue in queues {
        let channel = connection.create_channel().await.unwrap();
        let declared = channel
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        counts.push(declared.ok().map(|q| q.message_count()));
    }
    let _ = connection.close(200, "counted").await;
    counts
}

/// Declares `topology`'s layout of `name` and retires the others, as a starting worker does.
async fn relayout(topology: &Topology, name: &str) -> u64 {
    let connection = amqp().await;
    let channel = connection.create_channel().await.unwrap();
    let bindings = ["test.*".to_owned()];
    topology
        .declare_consumer(&channel, name, &bindings)
        .await
        .unwrap();
    let moved = topology
        .retire_other_layouts(&connection, name, &bindings)
        .await
        .unwrap();
    let _ = connection.close(200, "declared").await;
    moved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_number_of_partitions_moves_what_is_queued_into_the_new_layout() {
    init_tracing();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let one = Topology::new(prefix.clone());
    let (four, two) = (
        one.clone().with_partitions(4),
        one.clone().with_partitions(2),
    );
    // Cleaned up in the layout the test ends with.
    let bus = TestBus::with_topology(one.clone());
    let name = bus.consumer("relayout");
    let sum = |counts: &[Option<u32>]| counts.iter().flatten().sum::<u32>();

    assert_eq!(relayout(&one, &name).await, 0);
    publish_events(&one, 100, 10).await;
    assert_eq!(queued(&one.work_queues(&name)).await, [Some(100)]);

    // One queue → four partitions: all 100 move, the old queue goes, new events split.
    assert_eq!(relayout(&four, &name).await, 100);
    assert_eq!(
        queued(&[one.queue(&name)]).await,
        [None],
        "the old queue is gone"
    );
    publish_events(&four, 20, 10).await;
    let counts = queued(&four.work_queues(&name)).await;
    assert_eq!(sum(&counts), 120, "{counts:?}");
    assert!(
        counts.iter().filter(|c| c.unwrap_or(0) > 0).count() >= 2,
        "ten streams spread over the partitions: {counts:?}"
    );

    // Four → two: partitions 2 and 3 move into 0 and 1 and go.
    let moved = relayout(&two, &name).await;
    assert_eq!(u64::from(counts[2].unwrap() + counts[3].unwrap()), moved);
    let after = queued(&four.work_queues(&name)).await;
    assert_eq!(after[2..], [None, None], "{after:?}");
    assert_eq!(sum(&after), 120);

    // Two → none: everything back in one queue, the hash exchange and its queues gone.
    assert_eq!(relayout(&one, &name).await, 120);
    assert_eq!(queued(&one.work_queues(&name)).await, [Some(120)]);
    assert_eq!(queued(&two.work_queues(&name)).await, [None, None]);
    publish_events(&one, 5, 5).await;
    assert_eq!(queued(&one.work_queues(&name)).await, [Some(125)]);
}
