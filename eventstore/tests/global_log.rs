//! The global log against the real Postgres: a reader never passes an event whose transaction
//! commits late, and sees every event exactly once; checkpoints only move forward.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use eventstore::{
    EventStore, ExpectedVersion, LogPosition, Metadata, NewEvent, load_checkpoint, save_checkpoint,
};
use serde_json::json;
use testkit::TestDatabase;
use uuid::Uuid;

mod support;

fn event() -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Noted".into(),
        data: json!({}),
        metadata: Metadata::default(),
    }
}

#[tokio::test]
async fn a_reader_waits_for_a_late_commit_and_then_sees_every_event_exactly_once() {
    let db = TestDatabase::with_pool_size(32).await;
    let store = EventStore::new(db.pool.clone());
    let stop_writers = Arc::new(AtomicBool::new(false));
    let writers_done = Arc::new(AtomicBool::new(false));
    let hold_open = Arc::new(AtomicBool::new(true));
    let held_txid = Arc::new(AtomicU64::new(u64::MAX));

    // Many writers on many streams, for as long as the test runs.
    let mut writers = Vec::new();
    for _ in 0..8 {
        let (store, stop) = (store.clone(), stop_writers.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let e = event();
                let stream = format!("test-{}", Uuid::new_v4());
                store
                    .append(&stream, ExpectedVersion::NoStream, std::slice::from_ref(&e))
                    .await
                    .unwrap();
                acked.push(e.event_id);
            }
            acked
        }));
    }

    // The reader follows the log from the start, asserting as it goes.
    let reader = {
        let (store, hold_open, held_txid, done) = (
            store.clone(),
            hold_open.clone(),
            held_txid.clone(),
            writers_done.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut at = LogPosition::START;
            loop {
                // Read the flag first: once set, every write has committed before this read.
                let finished = done.load(Ordering::SeqCst);
                let batch = store.read_log(at, 250).await.unwrap();
                for e in &batch {
                    assert!(e.log_position() > at, "the log goes forward");
                    if hold_open.load(Ordering::SeqCst) {
                        assert!(
                            e.transaction_id < held_txid.load(Ordering::SeqCst),
                            "read past an open transaction: {e:?}"
                        );
                    }
                    at = e.log_position();
                    seen.push(e.event_id);
                }
                if batch.is_empty() {
                    if finished {
                        // Empty can also mean "held back by a transaction elsewhere on the
                        // server"; caught up means the horizon has passed every write.
                        testkit::wait_for_log_horizon(store.pool()).await;
                        if store.read_log(at, 1).await.unwrap().is_empty() {
                            return seen;
                        }
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;

    // One transaction appends early and commits late.
    let held_event = event();
    let mut tx = db.pool.begin().await.unwrap();
    let txid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::int8")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    held_txid.store(txid as u64, Ordering::SeqCst);
    let held = store
        .append_in(
            &mut tx,
            "test-held",
            ExpectedVersion::NoStream,
            std::slice::from_ref(&held_event),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let overtaken: i64 =
        sqlx::query_scalar("SELECT count(*) FROM eventstore.events WHERE position > $1")
            .bind(held.positions[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    hold_open.store(false, Ordering::SeqCst);
    tx.commit().await.unwrap();

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_writers.store(true, Ordering::SeqCst);
    let mut acked = HashSet::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    writers_done.store(true, Ordering::SeqCst);
    acked.insert(held_event.event_id);
    let seen = reader.await.unwrap();

    // The scenario really happened: later positions committed while the held one was open,
    // which a reader ordering by position alone would have skipped.
    assert!(
        overtaken > 100,
        "only {overtaken} events overtook the held one"
    );

    let table: HashSet<Uuid> = sqlx::query_scalar("SELECT event_id FROM eventstore.events")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let seen_set: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(seen.len(), seen_set.len(), "no event was read twice");
    // Counted differences, so a failure prints numbers rather than thousands of ids.
    let missed = table.difference(&seen_set).count();
    let invented = seen_set.difference(&table).count();
    assert_eq!(
        (missed, invented),
        (0, 0),
        "reader vs table: (missed, not in table)"
    );
    let lost = acked.difference(&table).count();
    let unacked = table.difference(&acked).count();
    assert_eq!(
        (lost, unacked),
        (0, 0),
        "acknowledged vs table: (lost, unacknowledged)"
    );
    assert!(seen_set.contains(&held_event.event_id));
}

#[tokio::test]
async fn the_log_can_be_read_in_batches() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    for i in 0..30 {
        let kind = if i % 3 == 0 { "cart" } else { "order" };
        let stream = format!("{kind}-{}", Uuid::new_v4());
        store
            .append(&stream, ExpectedVersion::NoStream, &[event()])
            .await
            .unwrap();
    }
    testkit::wait_for_log_horizon(&db.pool).await;
    let mut at = LogPosition::START;
    let mut seen = HashSet::new();
    loop {
        let batch = store.read_log(at, 4).await.unwrap();
        let Some(last) = batch.last() else { break };
        assert!(batch.len() <= 4);
        assert!(batch.iter().all(|e| e.log_position() > at));
        seen.extend(batch.iter().map(|e| e.event_id));
        at = last.log_position();
    }
    assert_eq!(seen.len(), 30);
    assert_eq!(store.head().await.unwrap().1, 30);
}

#[tokio::test]
async fn checkpoints_only_move_forward() {
    let db = TestDatabase::new().await;
    assert_eq!(load_checkpoint(&db.pool, "relay").await.unwrap(), None);
    let later = LogPosition {
        transaction_id: 900,
        position: 40,
    };
    let earlier = LogPosition {
        transaction_id: 899,
        position: 41,
    };
    save_checkpoint(&db.pool, "relay", later).await.unwrap();
    save_checkpoint(&db.pool, "relay", earlier).await.unwrap();
    assert_eq!(
        load_checkpoint(&db.pool, "relay").await.unwrap(),
        Some(later)
    );
    let next = LogPosition {
        transaction_id: 901,
        position: 2,
    };
    save_checkpoint(&db.pool, "relay", next).await.unwrap();
    assert_eq!(
        load_checkpoint(&db.pool, "relay").await.unwrap(),
        Some(next)
    );
    assert_eq!(load_checkpoint(&db.pool, "other").await.unwrap(), None);
}

#[tokio::test]
async fn appends_wake_listeners_on_the_appended_channel() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone()).with_append_notifications();
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener.listen(eventstore::APPENDED_CHANNEL).await.unwrap();

    store
        .append("test-wake", ExpectedVersion::NoStream, &[event()])
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(
        matches!(woken, Ok(Ok(_))),
        "no notification within 5 s: {woken:?}"
    );

    // A store without notifications stays silent.
    let quiet = EventStore::new(db.pool.clone());
    quiet
        .append("test-quiet", ExpectedVersion::NoStream, &[event()])
        .await
        .unwrap();
    let silence = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(silence.is_err(), "unexpected notification: {silence:?}");
}

/// Reading the log must walk the `(transaction_id, position)` index, not sort the table: a sort
/// makes every batch cost the whole table, and a rebuild or a relay far behind quadratic.
#[tokio::test]
async fn reading_the_global_log_walks_the_index_instead_of_sorting_the_table() {
    let db = TestDatabase::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    // With sorting priced out, a plan that can avoid it does; one that cannot still sorts.
    sqlx::query("SET enable_sort = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let explain = format!("EXPLAIN {}", eventstore::store::global_log_sql());
    let plan = sqlx::query_scalar::<_, String>(&explain)
        .bind(0i64)
        .bind(0i64)
        .bind(1000i64)
        .fetch_all(&mut *conn)
        .await
        .unwrap()
        .join("\n");
    assert!(
        plan.contains("events_global_log") && !plan.contains("Sort"),
        "the log read sorts instead of walking the index:\n{plan}"
    );
}
