//! The relay against the real Postgres and RabbitMQ: everything appended is published, nothing is
//! lost when a relay dies mid-stream, one relay of a name publishes at a time, LISTEN wakes it,
//! and it survives both the broker and the database going away.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use eventstore::{EventStore, LogPosition, load_checkpoint};
use messaging::envelope::{header_int, header_str};
use messaging::{Relay, RelayHandle, RelaySettings, RelayState};
use testkit::TestDatabase;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

mod support;
use support::*;

/// What every relay test starts from: a database of its own, a bus of its own, and a probe
/// queue bound to every event on it.
struct Rig {
    db: TestDatabase,
    store: EventStore,
    bus: TestBus,
    conn: lapin::Connection,
    probe: Probe,
}

impl Rig {
    async fn new() -> Self {
        init_tracing();
        let db = TestDatabase::new().await;
        let store = EventStore::new(db.pool.clone());
        let bus = TestBus::new();
        let conn = amqp().await;
        let probe = Probe::start(&conn, &bus).await;
        Self {
            db,
            store,
            bus,
            conn,
            probe,
        }
    }
}

fn settings(batch_size: i64) -> RelaySettings {
    RelaySettings {
        batch_size,
        ..RelaySettings::new(amqp_url())
    }
}

fn spawn_relay(
    store: &EventStore,
    bus: &TestBus,
    settings: RelaySettings,
) -> (RelayHandle, CancellationToken, AbortOnDropHandle<()>) {
    let relay = Relay::new(store.clone(), bus.topology.clone(), settings);
    let handle = relay.handle();
    let shutdown = CancellationToken::new();
    let task = AbortOnDropHandle::new(tokio::spawn(relay.run(shutdown.clone())));
    (handle, shutdown, task)
}

async fn wait_active(handle: &RelayHandle) {
    within(
        "the relay to become active",
        handle.wait_for(|s| s.state == RelayState::Active),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_appended_while_the_relay_runs_is_published_once_in_the_table() {
    let Rig {
        db,
        store,
        bus,
        conn,
        mut probe,
    } = Rig::new().await;
    let (handle, shutdown, task) = spawn_relay(&store, &bus, settings(500));
    wait_active(&handle).await;

    let started = Instant::now();
    let appended = append_concurrently(&store, 8, 250, "Noted").await;
    let in_table = stored_ids(&db.pool).await;
    assert_eq!(appended.len(), 2000);
    assert_eq!(in_table, appended.iter().copied().collect::<HashSet<_>>());

    probe.until_all(&in_table, &db.pool).await;
    let elapsed = started.elapsed();
    info!(
        events = in_table.len(),
        ?elapsed,
        events_per_second = (in_table.len() as f64 / elapsed.as_secs_f64()).round(),
        duplicates = probe.duplicates(),
        "append + relay + delivery"
    );
    assert_eq!(probe.ids(), in_table, "published ids = ids in the table");
    assert_eq!(
        probe.duplicates(),
        0,
        "a relay that never died publishes once"
    );

    // Every message carries what the bus contract promises.
    for m in &probe.messages {
        let e = &m.envelope;
        assert_eq!(m.routing_key, format!("test.{}", e.event_type));
        assert_eq!(m.routing_key, e.routing_key());
        let p = &m.properties;
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(e.event_id.to_string())
        );
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("Noted"));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert!(p.timestamp().is_some());
        assert_eq!(header_str(p, "stream_id"), Some(e.stream_id.as_str()));
        assert_eq!(header_int(p, "version"), Some(e.version as i64));
        assert_eq!(header_int(p, "position"), Some(e.position));
        assert_eq!(
            header_str(p, "correlation_id"),
            e.metadata.correlation_id.map(|c| c.to_string()).as_deref()
        );
        assert_eq!(
            header_str(p, "traceparent"),
            e.metadata.traceparent.as_deref()
        );
    }
    // Within a stream, messages arrive in version order (one publisher, one queue).
    let mut last_version = std::collections::HashMap::new();
    for m in &probe.messages {
        let previous = last_version.insert(m.envelope.stream_id.clone(), m.envelope.version);
        assert!(previous.is_none_or(|v| v < m.envelope.version));
    }

    // The checkpoint is the newest position, saved once everything was confirmed.
    let newest = probe
        .messages
        .iter()
        .map(|m| m.envelope.log_position())
        .max()
        .unwrap();
    let status = within(
        "the relay to report the newest event",
        handle.wait_for(|s| s.last_published == Some(newest)),
    )
    .await;
    assert_eq!(
        load_checkpoint(&db.pool, "relay").await.unwrap(),
        Some(newest)
    );
    assert!(status.amqp_connected);
    assert_eq!(status.last_published, Some(newest));
    assert_eq!(status.published_total, 2000);

    shutdown.cancel();
    within("the relay to stop", task).await.unwrap();
    assert_eq!(handle.status().state, RelayState::Stopped);
    conn.close(200, "done").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_killed_mid_stream_lose_nothing() {
    let Rig {
        db,
        store,
        bus,
        conn,
        mut probe,
    } = Rig::new().await;

    // Writers keep appending while relays are killed under them.
    let writers = {
        let store = store.clone();
        tokio::spawn(async move { append_concurrently(&store, 4, 750, "Noted").await })
    };

    // The first relay is aborted (a crash: no clean-up code runs) in the middle of a batch:
    // the probe sees messages as soon as they are published, before their batch is confirmed
    // and checkpointed.
    let (first, _, task) = spawn_relay(&store, &bus, settings(50));
    assert!(probe.until(PATIENCE, |p| p.seen.len() >= 625).await);
    task.abort();
    let _ = task.await;

    // The second is shut down through its token, also mid-batch.
    let (second, shutdown, task) = spawn_relay(&store, &bus, settings(50));
    assert!(probe.until(PATIENCE, |p| p.seen.len() >= 1275).await);
    shutdown.cancel();
    within("the second relay to stop", task).await.unwrap();

    // The third finishes the job.
    let (third, shutdown, task) = spawn_relay(&store, &bus, settings(50));
    let appended: HashSet<_> = writers.await.unwrap().into_iter().collect();
    let in_table = stored_ids(&db.pool).await;
    assert_eq!(in_table, appended);
    probe.until_all(&in_table, &db.pool).await;
    // Give late duplicates of the last batch a moment to show up, so they are counted.
    probe.until(Duration::from_millis(500), |_| false).await;

    info!(
        events = in_table.len(),
        duplicates = probe.duplicates(),
        published_by = ?[
            first.status().published_total,
            second.status().published_total,
            third.status().published_total
        ],
        "relays killed mid-stream"
    );
    assert_eq!(probe.ids(), in_table, "nothing lost, nothing invented");
    let newest = probe
        .messages
        .iter()
        .map(|m| m.envelope.log_position())
        .max();
    eventually("the checkpoint to reach the newest event", || async {
        load_checkpoint(&db.pool, "relay").await.unwrap() == newest
    })
    .await;
    assert_eq!(third.status().state, RelayState::Active);

    shutdown.cancel();
    within("the third relay to stop", task).await.unwrap();
    conn.close(200, "done").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_of_one_name_never_publish_at_the_same_time() {
    let Rig {
        db,
        store,
        bus,
        conn,
        mut probe,
    } = Rig::new().await;

    let (a, stop_a, task_a) = spawn_relay(&store, &bus, settings(100));
    wait_active(&a).await;
    let (b, stop_b, task_b) = spawn_relay(&store, &bus, settings(100));
    within(
        "the second relay to wait for the lock",
        b.wait_for(|s| s.state == RelayState::WaitingForLock),
    )
    .await;

    // Both statuses are sampled all along: they must never both say Active.
    let both_active = Arc::new(AtomicU32::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (a, b, both, on) = (a.clone(), b.clone(), both_active.clone(), sampling.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                if a.status().state == RelayState::Active && b.status().state == RelayState::Active
                {
                    both.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    let first: HashSet<_> = append_concurrently(&store, 4, 100, "Noted")
        .await
        .into_iter()
        .collect();
    probe.until_all(&first, &db.pool).await;
    within(
        "the first relay to count its batches",
        a.wait_for(|s| s.published_total >= 400),
    )
    .await;
    assert_eq!(b.status().published_total, 0, "the waiting relay published");
    assert_eq!(b.status().state, RelayState::WaitingForLock);
    assert_eq!(a.status().published_total, 400);

    stop_a.cancel();
    within("the first relay to stop", task_a).await.unwrap();
    let took_over = Instant::now();
    wait_active(&b).await;
    info!(takeover = ?took_over.elapsed(), "the waiting relay took over");

    let second: HashSet<_> = append_concurrently(&store, 4, 100, "Noted")
        .await
        .into_iter()
        .collect();
    probe.until_all(&second, &db.pool).await;
    // The status counts a batch once its checkpoint is saved, a moment after the confirms.
    within(
        "the second relay to count its batches",
        b.wait_for(|s| s.published_total >= 400),
    )
    .await;
    assert_eq!(a.status().published_total, 400, "a stopped relay published");
    assert_eq!(b.status().published_total, 400);
    assert_eq!(
        probe.duplicates(),
        0,
        "a clean hand-over republishes nothing"
    );
    assert_eq!(probe.ids(), stored_ids(&db.pool).await);

    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    assert_eq!(
        both_active.load(Ordering::Relaxed),
        0,
        "both relays were active at once"
    );

    stop_b.cancel();
    within("the second relay to stop", task_b).await.unwrap();
    conn.close(200, "done").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_wakes_the_relay_long_before_its_poll_interval() {
    let Rig {
        db,
        store,
        bus,
        conn,
        mut probe,
    } = Rig::new().await;
    let (handle, shutdown, task) = spawn_relay(
        &store,
        &bus,
        RelaySettings {
            poll_interval: Duration::from_secs(60),
            ..settings(100)
        },
    );
    wait_active(&handle).await;
    // Let the relay finish its first (empty) read and go to sleep.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let ids: HashSet<_> = append_to(&store, &stream(), 1, "Noted")
        .await
        .into_iter()
        .collect();
    // Only notify once the event is readable, so the wake-up is what the test measures.
    wait_for_log_horizon(&db.pool).await;
    let notified = Instant::now();
    sqlx::query("SELECT pg_notify('eventstore_appended', '')")
        .execute(&db.pool)
        .await
        .unwrap();
    let arrived = probe
        .until(Duration::from_secs(10), |p| {
            ids.iter().all(|id| p.seen.contains_key(id))
        })
        .await;
    assert!(arrived, "the notification did not wake the relay");
    info!(latency = ?notified.elapsed(), "NOTIFY → published");

    shutdown.cancel();
    within("the relay to stop", task).await.unwrap();
    conn.close(200, "done").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_survives_the_broker_and_the_database_going_away() {
    let Rig {
        db,
        store,
        bus,
        conn,
        mut probe,
    } = Rig::new().await;
    let proxy = CuttableProxy::start().await;
    let (handle, shutdown, task) = spawn_relay(
        &store,
        &bus,
        RelaySettings {
            amqp_url: proxy.url.clone(),
            reconnect: messaging::Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
            ..settings(50)
        },
    );
    wait_active(&handle).await;
    let mut expected: HashSet<_> = append_concurrently(&store, 2, 100, "Noted")
        .await
        .into_iter()
        .collect();
    probe.until_all(&expected, &db.pool).await;

    // The broker goes away (every connection through the proxy is cut) while events arrive.
    let writers = {
        let store = store.clone();
        tokio::spawn(async move { append_concurrently(&store, 2, 200, "Noted").await })
    };
    proxy.cut();
    within(
        "the relay to notice the broker is gone",
        handle.wait_for(|s| s.failures_total >= 1),
    )
    .await;
    expected.extend(writers.await.unwrap());
    probe.until_all(&expected, &db.pool).await;
    wait_active(&handle).await;

    // The database goes away: every session of the test database is terminated, the relay's
    // lock session included.
    let failures_before = handle.status().failures_total;
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(terminated >= 2, "the relay's sessions were not found");
    within(
        "the relay to notice its lock session is gone",
        handle.wait_for(|s| s.failures_total > failures_before),
    )
    .await;
    expected.extend(append_concurrently(&store, 2, 100, "Noted").await);
    probe.until_all(&expected, &db.pool).await;
    wait_active(&handle).await;

    info!(
        duplicates = probe.duplicates(),
        last_error = ?handle.status().last_error,
        "recovered from a broker cut and a database restart"
    );
    assert_eq!(probe.ids(), stored_ids(&db.pool).await);
    let checkpoint = load_checkpoint(&db.pool, "relay").await.unwrap();
    assert!(checkpoint > Some(LogPosition::START));

    shutdown.cancel();
    within("the relay to stop", task).await.unwrap();
    proxy.stop.cancel();
    conn.close(200, "done").await.unwrap();
}

/// Under light load every batch is an event or two; the checkpoint is saved at most once per
/// interval, not once per batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_batches_save_the_checkpoint_at_most_once_per_interval() {
    let Rig {
        db,
        store,
        bus,
        conn,
        mut probe,
    } = Rig::new().await;
    let interval = Duration::from_millis(500);
    let (handle, shutdown, task) = spawn_relay(
        &store,
        &bus,
        RelaySettings {
            checkpoint_interval: interval,
            ..settings(500)
        },
    );
    wait_active(&handle).await;

    // One event at a time for three seconds, counting the saved checkpoint's moves.
    let stream_id = stream();
    let started = Instant::now();
    let mut ids = HashSet::new();
    let (mut moves, mut last) = (0, None);
    while started.elapsed() < Duration::from_secs(3) {
        ids.extend(append_to(&store, &stream_id, 1, "Noted").await);
        let checkpoint = load_checkpoint(&db.pool, "relay").await.unwrap();
        if checkpoint != last {
            moves += 1;
            last = checkpoint;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let watched = started.elapsed();
    probe.until_all(&ids, &db.pool).await;
    // A watch can only miss moves, never see more than there were.
    let most = (watched.as_millis() / interval.as_millis()) as usize + 1;
    assert!(moves >= 2, "the checkpoint moved {moves} times");
    assert!(
        moves <= most,
        "{moves} checkpoint saves for {} events in {watched:?}, at most {most} expected",
        ids.len()
    );
    shutdown.cancel();
    within("the relay to stop", task).await.unwrap();
    conn.close(200, "done").await.unwrap();
}

/// A relay that stops before its next save is due saves where it got to on the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopping_relay_saves_its_checkpoint() {
    let Rig {
        db,
        store,
        bus,
        conn,
        mut probe,
    } = Rig::new().await;
    let (handle, shutdown, task) = spawn_relay(
        &store,
        &bus,
        RelaySettings {
            checkpoint_interval: Duration::from_secs(3600),
            ..settings(500)
        },
    );
    wait_active(&handle).await;
    let ids: HashSet<_> = append_to(&store, &stream(), 5, "Noted")
        .await
        .into_iter()
        .collect();
    within(
        "the relay to have every event confirmed",
        handle.wait_for(|s| s.published_total >= 5),
    )
    .await;
    probe.until_all(&ids, &db.pool).await;
    assert_eq!(
        load_checkpoint(&db.pool, "relay").await.unwrap(),
        None,
        "no save due within the hour"
    );

    shutdown.cancel();
    within("the relay to stop", task).await.unwrap();
    let newest = probe
        .messages
        .iter()
        .map(|m| m.envelope.log_position())
        .max();
    assert!(newest.is_some());
    assert_eq!(load_checkpoint(&db.pool, "relay").await.unwrap(), newest);
    assert_eq!(handle.status().last_published, newest);
    conn.close(200, "done").await.unwrap();
}
