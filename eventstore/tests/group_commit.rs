//! Group commit against the real Postgres: concurrent appends share statements and commits, yet
//! each is answered as if it had been appended alone — a conflict, a refused event or a retry
//! in one never changes what its batch-mates get, multi-stream appends stay all or nothing,
//! and appends on one stream still race exactly as before.

use std::collections::HashSet;

use eventstore::{
    AppendError, EventStore, ExpectedVersion, GroupCommit, Metadata, NewEvent, StreamAppend,
};
use futures::future::join_all;
use serde_json::json;
use testkit::TestDatabase;
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Noted".into(),
        data: json!({ "n": n }),
        metadata: Metadata::default(),
    }
}

fn stream() -> String {
    format!("test-{}", Uuid::new_v4())
}

fn grouped(db: &TestDatabase) -> EventStore {
    EventStore::new(db.pool.clone()).with_group_commit(GroupCommit { max_batch: 64 })
}

async fn stored_ids(store: &EventStore, stream_id: &str) -> Vec<Uuid> {
    store
        .read_stream(stream_id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect()
}

#[tokio::test]
async fn concurrent_appends_share_commits_and_each_gets_its_own_versions_and_positions() {
    let db = TestDatabase::new().await;
    let store = grouped(&db);
    let appends: Vec<(String, Vec<NewEvent>)> = (0..200)
        .map(|n| (stream(), vec![event(n), event(n + 1000)]))
        .collect();
    let outcomes = join_all(
        appends
            .iter()
            .map(|(s, events)| store.append(s, ExpectedVersion::NoStream, events)),
    )
    .await;
    let mut positions = HashSet::new();
    for ((stream_id, events), outcome) in appends.iter().zip(outcomes) {
        let appended = outcome.unwrap();
        assert_eq!(appended.version, 2);
        assert!(!appended.already_stored);
        assert_eq!(appended.positions.len(), 2);
        assert!(appended.positions[0] < appended.positions[1]);
        positions.extend(appended.positions);
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        assert_eq!(stored_ids(&store, stream_id).await, ids);
    }
    assert_eq!(
        positions.len(),
        400,
        "every event has a position of its own"
    );
    // A grouped read of several streams, each from where its reader's state ends.
    let (first, second) = (&appends[0].0, &appends[1].0);
    let read = store
        .read_streams(&[
            (first.as_str(), 1),
            (second.as_str(), 0),
            (first.as_str(), 1),
        ])
        .await
        .unwrap();
    let versions = |s: &str| read[s].iter().map(|e| e.version).collect::<Vec<_>>();
    assert_eq!(versions(first), vec![2]);
    assert_eq!(versions(second), vec![1, 2]);
    let stats = store.group_stats().unwrap();
    assert_eq!(stats.appends(), 200);
    assert!(
        stats.batches() < 100,
        "200 appends at once were committed in {} batches",
        stats.batches()
    );
}

#[tokio::test]
async fn in_one_batch_a_conflict_fails_only_its_own_append_and_multi_stream_appends_stay_whole() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (alone, stale, pair_a, pair_b, broken_a, broken_b) =
        (stream(), stream(), stream(), stream(), stream(), stream());
    store
        .append(&broken_b, ExpectedVersion::NoStream, &[event(0)])
        .await
        .unwrap();
    let first = [StreamAppend {
        stream_id: alone.clone(),
        expected: ExpectedVersion::NoStream,
        events: vec![event(1)],
    }];
    // Decided on version 5 of a stream that has none: a conflict.
    let second = [StreamAppend {
        stream_id: stale.clone(),
        expected: ExpectedVersion::Exact(5),
        events: vec![event(2)],
    }];
    // Two streams, both as expected.
    let third = [
        StreamAppend {
            stream_id: pair_a.clone(),
            expected: ExpectedVersion::NoStream,
            events: vec![event(3), event(4)],
        },
        StreamAppend {
            stream_id: pair_b.clone(),
            expected: ExpectedVersion::Any,
            events: vec![event(5)],
        },
    ];
    // Two streams, the second not as expected: neither is written.
    let fourth = [
        StreamAppend {
            stream_id: broken_a.clone(),
            expected: ExpectedVersion::NoStream,
            events: vec![event(6)],
        },
        StreamAppend {
            stream_id: broken_b.clone(),
            expected: ExpectedVersion::NoStream,
            events: vec![event(7)],
        },
    ];
    let outcomes = store
        .append_groups(&[&first, &second, &third, &fourth])
        .await
        .expect("the statement as a whole succeeds");
    let versions = |o: &Result<Vec<eventstore::Appended>, AppendError>| {
        o.as_ref()
            .unwrap()
            .iter()
            .map(|a| a.version)
            .collect::<Vec<_>>()
    };
    assert_eq!(versions(&outcomes[0]), vec![1]);
    assert!(
        matches!(&outcomes[1], Err(AppendError::WrongExpectedVersion { stream_id, actual: 0, .. }) if *stream_id == stale),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(versions(&outcomes[2]), vec![2, 1]);
    assert!(
        matches!(&outcomes[3], Err(AppendError::WrongExpectedVersion { stream_id, actual: 1, .. }) if *stream_id == broken_b),
        "{:?}",
        outcomes[3]
    );
    assert_eq!(stored_ids(&store, &alone).await.len(), 1);
    assert!(stored_ids(&store, &stale).await.is_empty());
    assert_eq!(stored_ids(&store, &pair_a).await.len(), 2);
    assert_eq!(stored_ids(&store, &pair_b).await.len(), 1);
    assert!(stored_ids(&store, &broken_a).await.is_empty());
    assert_eq!(stored_ids(&store, &broken_b).await.len(), 1);
}

#[tokio::test]
async fn a_batch_whose_statement_fails_writes_nothing_and_through_the_queue_each_is_answered_alone()
{
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    // An append that is stored already; retrying it reuses its event ids.
    let done = stream();
    let done_events = vec![event(1), event(2)];
    let first = store
        .append(&done, ExpectedVersion::NoStream, &done_events)
        .await
        .unwrap();
    let other = stream();
    // Any version: the statement tries to insert the stored ids again.
    let retry = [StreamAppend {
        stream_id: done.clone(),
        expected: ExpectedVersion::Any,
        events: done_events.clone(),
    }];
    let fresh = [StreamAppend {
        stream_id: other.clone(),
        expected: ExpectedVersion::NoStream,
        events: vec![event(3)],
    }];
    let whole = store.append_groups(&[&fresh, &retry]).await;
    assert!(whole.is_err(), "a reused event id fails the statement");
    assert!(
        stored_ids(&store, &other).await.is_empty(),
        "nothing of the batch was written"
    );

    // A retry whose expectation no longer holds (the stream exists now) is left out of a
    // batch's statement, and still answered as a retry.
    let retry_expecting_no_stream = [StreamAppend {
        stream_id: done.clone(),
        expected: ExpectedVersion::NoStream,
        events: done_events.clone(),
    }];
    let outcomes = store
        .append_groups(&[&fresh, &retry_expecting_no_stream])
        .await
        .expect("the statement succeeds");
    assert_eq!(outcomes[0].as_ref().unwrap()[0].version, 1);
    let retried = &outcomes[1].as_ref().unwrap()[0];
    assert!(retried.already_stored);
    assert_eq!(retried.positions, first.positions);

    // Through the queue the same mix, among many others, is answered as if alone: the retry
    // finds its events stored, the others are appended.
    let store = grouped(&db);
    let others: Vec<String> = (0..50).map(|_| stream()).collect();
    let (retried, appended) = tokio::join!(
        store.append(&done, ExpectedVersion::NoStream, &done_events),
        join_all(others.iter().map(|s| async {
            store
                .append(s, ExpectedVersion::NoStream, &[event(9)])
                .await
        }))
    );
    let retried = retried.unwrap();
    assert!(retried.already_stored);
    assert_eq!(retried.positions, first.positions);
    for (s, outcome) in others.iter().zip(appended) {
        assert_eq!(outcome.unwrap().version, 1);
        assert_eq!(stored_ids(&store, s).await.len(), 1);
    }
}

#[tokio::test]
async fn an_event_postgres_refuses_fails_only_the_append_that_carries_it() {
    let db = TestDatabase::new().await;
    let store = grouped(&db);
    // jsonb cannot hold a NUL character.
    let poisoned = NewEvent {
        data: json!({ "note": "nul \u{0000} inside" }),
        ..event(0)
    };
    let bad = stream();
    let goods: Vec<String> = (0..40).map(|_| stream()).collect();
    let (refused, accepted) = tokio::join!(
        store.append(
            &bad,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&poisoned)
        ),
        join_all(goods.iter().map(|s| async {
            store
                .append(s, ExpectedVersion::NoStream, &[event(1)])
                .await
        }))
    );
    assert!(matches!(refused, Err(AppendError::Store(_))), "{refused:?}");
    assert!(stored_ids(&store, &bad).await.is_empty());
    for (s, outcome) in goods.iter().zip(accepted) {
        assert_eq!(outcome.unwrap().version, 1, "{s}");
    }
}

#[tokio::test]
async fn appends_racing_on_one_stream_still_let_exactly_one_in_at_each_version() {
    let db = TestDatabase::new().await;
    let store = grouped(&db);
    let contested = stream();
    let racers: Vec<NewEvent> = (0..20).map(event).collect();
    let outcomes = join_all(racers.iter().map(|e| {
        store.append(
            &contested,
            ExpectedVersion::Exact(0),
            std::slice::from_ref(e),
        )
    }))
    .await;
    let winners = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(winners, 1, "{outcomes:?}");
    for outcome in outcomes.iter().filter(|o| o.is_err()) {
        assert!(
            matches!(
                outcome,
                Err(AppendError::WrongExpectedVersion { actual: 1, .. })
            ),
            "{outcome:?}"
        );
    }
    assert_eq!(stored_ids(&store, &contested).await.len(), 1);

    // `Any` appends on one stream all get in, each at a version of its own.
    let shared = stream();
    let events: Vec<NewEvent> = (0..30).map(event).collect();
    let outcomes = join_all(
        events
            .iter()
            .map(|e| store.append(&shared, ExpectedVersion::Any, std::slice::from_ref(e))),
    )
    .await;
    let versions: HashSet<u64> = outcomes.into_iter().map(|o| o.unwrap().version).collect();
    assert_eq!(versions, (1..=30).collect());
}

/// Load → decide → append for many aggregates at once, through both queues: every load gets its
/// own stream (and sees its own previous append), every command lands once.
#[tokio::test]
async fn commands_on_many_aggregates_at_once_load_their_own_state_and_land_once() {
    use domain::cart::{Cart, CartCommand, CatalogEntry};
    use domain::values::{Actor, CartId, CustomerId, Money, ProductId, ProductName, Quantity, Sku};
    use eventstore::CommandOptions;

    let db = TestDatabase::new().await;
    let store = grouped(&db);
    let products: Vec<CatalogEntry> = (0..3)
        .map(|n| CatalogEntry {
            product_id: ProductId(Uuid::new_v4()),
            sku: Sku::parse(&format!("GROUP-{n}")).unwrap(),
            name: ProductName::parse(&format!("Grouped {n}")).unwrap(),
            unit_price: Money::price(100 * (n + 1), "EUR").unwrap(),
            available: 100,
            discontinued: false,
        })
        .collect();
    let shopper = |n: usize| {
        let owner = CustomerId::parse(&format!("shopper-{n}")).unwrap();
        let (store, products) = (&store, &products);
        async move {
            let cart_id = CartId(Uuid::now_v7());
            let stream = cart_id.stream_id();
            let options = CommandOptions::default();
            store
                .execute::<Cart>(
                    &stream,
                    CartCommand::Create {
                        cart_id,
                        owner: owner.clone(),
                    },
                    &options,
                )
                .await
                .unwrap();
            // Each add decides on the state the previous one appended.
            for (i, product) in products.iter().enumerate() {
                let executed = store
                    .execute::<Cart>(
                        &stream,
                        CartCommand::AddItem {
                            actor: Actor::customer(owner.clone()),
                            product: product.clone(),
                            quantity: Quantity::parse(n % 5 + 1).unwrap(),
                        },
                        &options,
                    )
                    .await
                    .unwrap();
                assert_eq!(executed.version, i as u64 + 2);
            }
            (stream, n)
        }
    };
    let carts = join_all((0..40).map(shopper)).await;
    for (stream, n) in carts {
        let (cart, version) = store.load::<Cart>(&stream).await.unwrap();
        assert_eq!(version, 4, "{stream}");
        let lines = cart.0.unwrap().lines;
        assert_eq!(lines.len(), 3);
        assert!(
            lines
                .iter()
                .all(|l| l.quantity == Quantity::parse(n % 5 + 1).unwrap())
        );
    }
    let stats = store.group_stats().unwrap();
    assert_eq!(stats.appends(), 160);
    assert!(stats.batches() < 160, "{} batches", stats.batches());
}
