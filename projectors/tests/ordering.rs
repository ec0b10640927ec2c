//! The per-stream ordering rule every projection applies, against the real event store: given
//! the version a view holds, an event at or below it is skipped, the next one is applied, and a
//! jump is filled from the event store first — never skipped.

use std::borrow::Cow;

use eventstore::{EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use projectors::ordering::new_events_by_stream;
use serde_json::json;
use testkit::TestDatabase;
use uuid::Uuid;

const STREAM_TYPE: &str = "cart";

/// A cart stream of `n` events, and the events as the store recorded them.
async fn stream_of(store: &EventStore, n: u64) -> (Uuid, Vec<RecordedEvent>) {
    let id = Uuid::new_v4();
    let stream_id = format!("{STREAM_TYPE}-{id}");
    let events: Vec<NewEvent> = (1..=n)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Noted".into(),
            data: json!({ "n": i }),
            metadata: Metadata::default(),
        })
        .collect();
    store
        .append(&stream_id, ExpectedVersion::NoStream, &events)
        .await
        .unwrap();
    (id, store.read_stream(&stream_id, 0).await.unwrap())
}

/// The versions to apply for `delivered`, when the view holds `stored`.
async fn to_apply(store: &EventStore, delivered: &[RecordedEvent], stored: u64) -> Vec<u64> {
    let plan = new_events_by_stream(store, delivered, STREAM_TYPE, |_| stored)
        .await
        .unwrap();
    plan.into_iter()
        .flat_map(|(_, events)| {
            events
                .into_iter()
                .map(|e: Cow<'_, RecordedEvent>| e.version)
        })
        .collect()
}

#[tokio::test]
async fn at_or_below_the_stored_version_is_skipped() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, events) = stream_of(&store, 5).await;
    assert!(to_apply(&store, &events[4..5], 5).await.is_empty());
    assert!(to_apply(&store, &events[0..1], 5).await.is_empty());
    assert!(to_apply(&store, &events[4..5], 9).await.is_empty());
}

#[tokio::test]
async fn the_next_version_is_applied() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, events) = stream_of(&store, 8).await;
    assert_eq!(to_apply(&store, &events[0..1], 0).await, [1]);
    assert_eq!(to_apply(&store, &events[7..8], 7).await, [8]);
    // A redelivery within a batch counts once.
    let twice = [events[7].clone(), events[7].clone()];
    assert_eq!(to_apply(&store, &twice, 7).await, [8]);
}

#[tokio::test]
async fn a_jump_is_filled_from_the_event_store_never_skipped() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    // A gap is read from the store, which also brings what the bus has not delivered yet.
    let (_, events) = stream_of(&store, 5).await;
    assert_eq!(to_apply(&store, &events[4..5], 2).await, [3, 4, 5]);
    assert_eq!(to_apply(&store, &events[1..2], 0).await, [1, 2, 3, 4, 5]);
    // A hole inside a batch is filled too.
    let holed = [events[1].clone(), events[3].clone()];
    assert_eq!(to_apply(&store, &holed, 1).await, [2, 3, 4, 5]);
    // Out of order within a batch is put in order, without a read.
    let reordered = [events[3].clone(), events[2].clone()];
    assert_eq!(to_apply(&store, &reordered, 2).await, [3, 4]);
}

#[tokio::test]
async fn no_version_is_both_skipped_and_applied() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, events) = stream_of(&store, 6).await;
    for stored in 0..8u64 {
        for delivered in &events {
            let applied = to_apply(&store, std::slice::from_ref(delivered), stored).await;
            let expected: Vec<u64> = match delivered.version {
                v if v <= stored => vec![],
                v if v == stored + 1 => vec![v],
                _ => (stored + 1..=6).collect(), // the gap, read from the store
            };
            assert_eq!(
                applied, expected,
                "stored {stored}, delivered {}",
                delivered.version
            );
        }
    }
}

#[tokio::test]
async fn the_store_is_the_truth_for_a_version_it_does_not_hold() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (_, events) = stream_of(&store, 5).await;
    // A message claiming version 9 of a stream the store holds up to 5 (another database's
    // bus, say) adds nothing the store does not have.
    let mut phantom = events[4].clone();
    phantom.version = 9;
    assert!(to_apply(&store, &[phantom], 5).await.is_empty());
}

#[tokio::test]
async fn a_rebuild_batch_is_taken_as_whole_streams_only_when_it_is_one() {
    use projectors::ordering::whole_streams;
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    // Three events each, so that the hole below is inside a stream whichever id sorts first.
    let (a, mut first) = stream_of(&store, 3).await;
    let (b, mut second) = stream_of(&store, 3).await;
    if a > b {
        std::mem::swap(&mut first, &mut second);
    }
    let (low, high) = (a.min(b), a.max(b));
    let batch: Vec<RecordedEvent> = first.iter().chain(&second).cloned().collect();
    let streams = whole_streams(&batch, STREAM_TYPE).expect("whole streams in order");
    let versions: Vec<(Uuid, Vec<u64>)> = streams
        .into_iter()
        .map(|(id, events)| (id, events.iter().map(|e| e.version).collect()))
        .collect();
    assert_eq!(
        versions,
        [
            (low, (1..=first.len() as u64).collect::<Vec<_>>()),
            (high, (1..=second.len() as u64).collect())
        ]
    );
    // Events of other types are not its business.
    assert_eq!(whole_streams(&batch, "order").map(|s| s.len()), Some(0));

    // Anything else goes the general way: a stream starting mid-way, a hole, a repeat, streams
    // out of order.
    let mid_way: Vec<RecordedEvent> = batch[1..].to_vec();
    let mut hole = batch.clone();
    hole.remove(1); // the first stream's version 2
    let mut repeat = batch.clone();
    repeat.insert(1, batch[0].clone());
    let backwards: Vec<RecordedEvent> = second.iter().chain(&first).cloned().collect();
    for (case, events) in [
        ("mid-way", mid_way),
        ("hole", hole),
        ("repeat", repeat),
        ("backwards", backwards),
    ] {
        assert!(whole_streams(&events, STREAM_TYPE).is_none(), "{case}");
    }
}
