//! Appends against the real Postgres: expected versions, races on one stream, idempotent
//! retries, appends inside a caller's transaction, and load → decide → append under contention.

use std::collections::HashSet;
use std::sync::Arc;

use domain::Aggregate;
use domain::product::{NewProduct, Product, ProductCommand, ProductRejection};
use domain::values::{Category, Description, Money, OrderId, ProductId, ProductName, Sku};
use eventstore::{
    AppendError, CommandOptions, EventStore, ExecuteError, ExpectedVersion, Metadata, NewEvent,
};
use serde_json::json;
use testkit::TestDatabase;
use tokio::sync::Barrier;
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Noted".into(),
        data: json!({ "n": n }),
        metadata: Metadata {
            actor: Some("test".into()),
            ..Metadata::default()
        },
    }
}

fn stream() -> String {
    format!("test-{}", Uuid::new_v4())
}

#[tokio::test]
async fn expected_versions_are_enforced_and_conflicts_report_the_actual_version() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let s = stream();

    let err = store
        .append(&s, ExpectedVersion::StreamExists, &[event(1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::WrongExpectedVersion { actual: 0, .. }),
        "{err:?}"
    );

    let first = store
        .append(&s, ExpectedVersion::NoStream, &[event(1), event(2)])
        .await
        .unwrap();
    assert_eq!(first.version, 2);
    assert_eq!(first.positions.len(), 2);
    assert!(first.positions[0] < first.positions[1]);

    let err = store
        .append(&s, ExpectedVersion::NoStream, &[event(3)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::WrongExpectedVersion { actual: 2, .. }),
        "{err:?}"
    );
    let err = store
        .append(&s, ExpectedVersion::Exact(1), &[event(3)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::WrongExpectedVersion { actual: 2, .. }),
        "{err:?}"
    );

    assert_eq!(
        store
            .append(&s, ExpectedVersion::Exact(2), &[event(3)])
            .await
            .unwrap()
            .version,
        3
    );
    assert_eq!(
        store
            .append(&s, ExpectedVersion::StreamExists, &[event(4)])
            .await
            .unwrap()
            .version,
        4
    );
    assert_eq!(
        store
            .append(&s, ExpectedVersion::Any, &[event(5)])
            .await
            .unwrap()
            .version,
        5
    );

    // A failed append wrote nothing.
    let stored = store.read_stream(&s, 0).await.unwrap();
    let ns: Vec<u64> = stored
        .iter()
        .map(|e| e.data.to_value()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, vec![1, 2, 3, 4, 5]);
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    assert_eq!(stored[0].metadata.actor.as_deref(), Some("test"));
    assert_eq!(store.read_stream(&s, 3).await.unwrap().len(), 2);
}

#[tokio::test]
async fn exactly_one_of_many_racing_writers_wins_a_version() {
    let db = TestDatabase::with_pool_size(40).await;
    let store = EventStore::new(db.pool.clone());
    let s = stream();
    store
        .append(&s, ExpectedVersion::NoStream, &[event(0)])
        .await
        .unwrap();

    let writers = 32;
    let barrier = Arc::new(Barrier::new(writers));
    let mut tasks = Vec::new();
    for n in 0..writers {
        let (store, s, barrier) = (store.clone(), s.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .append(&s, ExpectedVersion::Exact(1), &[event(n as u64)])
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(appended) => {
                wins += 1;
                assert_eq!(appended.version, 2);
            }
            Err(AppendError::WrongExpectedVersion { actual: 2, .. }) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.stream_version(&s).await.unwrap(), 2);
}

#[tokio::test]
async fn concurrent_writers_on_one_stream_lose_nothing_and_leave_no_gaps() {
    let db = TestDatabase::with_pool_size(24).await;
    let store = EventStore::new(db.pool.clone());
    let s = stream();
    let (writers, per_writer) = (16u64, 25u64);

    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut conflicts = 0;
            for i in 0..per_writer {
                let e = event(w * 1000 + i);
                loop {
                    let version = store.stream_version(&s).await.unwrap();
                    match store
                        .append(
                            &s,
                            ExpectedVersion::Exact(version),
                            std::slice::from_ref(&e),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(AppendError::WrongExpectedVersion { .. }) => conflicts += 1,
                        Err(other) => panic!("unexpected error: {other:?}"),
                    }
                }
                ids.push(e.event_id);
            }
            (ids, conflicts)
        }));
    }
    let mut written = HashSet::new();
    let mut conflicts = 0;
    for task in tasks {
        let (ids, c) = task.await.unwrap();
        written.extend(ids);
        conflicts += c;
    }

    let stored = store.read_stream(&s, 0).await.unwrap();
    let total = (writers * per_writer) as usize;
    assert_eq!(stored.len(), total);
    let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=total as u64).collect::<Vec<_>>(),
        "versions are contiguous"
    );
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(
        stored_ids, written,
        "every acknowledged event is stored exactly once"
    );
    // Not an assertion of speed: a sanity check that the test really raced.
    assert!(
        conflicts > 0,
        "16 writers on one stream should have conflicted at least once"
    );
}

#[tokio::test]
async fn a_retried_append_with_the_same_event_ids_is_stored_once() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let s = stream();
    let batch = vec![event(1), event(2)];

    let first = store
        .append(&s, ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    assert!(!first.already_stored);
    // The client lost the answer and retries the very same append.
    let retry = store
        .append(&s, ExpectedVersion::NoStream, &batch)
        .await
        .unwrap();
    assert!(retry.already_stored);
    assert_eq!(retry.version, first.version);
    assert_eq!(retry.positions, first.positions);

    // Even after someone else appended, the retry is recognised rather than a conflict.
    store
        .append(&s, ExpectedVersion::Exact(2), &[event(3)])
        .await
        .unwrap();
    let late = store
        .append(&s, ExpectedVersion::Exact(0), &batch)
        .await
        .unwrap();
    assert!(late.already_stored);
    assert_eq!(late.positions, first.positions);
    assert_eq!(store.read_stream(&s, 0).await.unwrap().len(), 3);

    // Any-version appends are retried too: a duplicate must not be appended again at version 4.
    let any_retry = store
        .append(&s, ExpectedVersion::Any, &batch)
        .await
        .unwrap();
    assert!(any_retry.already_stored);
    assert_eq!(store.read_stream(&s, 0).await.unwrap().len(), 3);

    // Reusing one id in a different append is an error, not silently accepted.
    let err = store
        .append(&stream(), ExpectedVersion::Any, &[batch[0].clone()])
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::EventIdReused { .. }), "{err:?}");
    let err = store
        .append(&s, ExpectedVersion::Any, &[batch[0].clone(), event(9)])
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::EventIdReused { .. }), "{err:?}");
    assert_eq!(store.read_stream(&s, 0).await.unwrap().len(), 3);
}

#[tokio::test]
async fn appends_in_a_transaction_commit_or_roll_back_with_it() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (a, b) = (stream(), stream());

    // Two streams in one transaction, rolled back: nothing is stored.
    let mut tx = db.pool.begin().await.unwrap();
    store
        .append_in(&mut tx, &a, ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    store
        .append_in(&mut tx, &b, ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.stream_version(&a).await.unwrap(), 0);
    assert_eq!(store.stream_version(&b).await.unwrap(), 0);

    // A conflict inside the transaction leaves it usable for the caller's other writes.
    store
        .append(&b, ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    store
        .append_in(&mut tx, &a, ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();
    let err = store
        .append_in(&mut tx, &b, ExpectedVersion::NoStream, &[event(2)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::WrongExpectedVersion { actual: 1, .. }),
        "{err:?}"
    );
    let retried = store
        .append_in(&mut tx, &b, ExpectedVersion::Exact(1), &[event(2)])
        .await
        .unwrap();
    assert_eq!(retried.version, 2);
    tx.commit().await.unwrap();
    assert_eq!(store.stream_version(&a).await.unwrap(), 1);
    assert_eq!(store.stream_version(&b).await.unwrap(), 2);

    // An idempotent retry inside a transaction is recognised too.
    let batch = [event(3)];
    store
        .append(&a, ExpectedVersion::Exact(1), &batch)
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let again = store
        .append_in(&mut tx, &a, ExpectedVersion::Exact(1), &batch)
        .await
        .unwrap();
    assert!(again.already_stored);
    tx.commit().await.unwrap();
    assert_eq!(store.stream_version(&a).await.unwrap(), 2);
}

fn new_product(stock: u32) -> (ProductId, ProductCommand) {
    let product_id = ProductId(Uuid::new_v4());
    let command = ProductCommand::Create(NewProduct {
        product_id,
        sku: Sku::parse("MUG-1").unwrap(),
        name: ProductName::parse("Mug").unwrap(),
        description: Description::parse("").unwrap(),
        category: Category::parse("kitchen").unwrap(),
        price: Money::price(1200, "EUR").unwrap(),
        stock,
        image_urls: Vec::new(),
    });
    (product_id, command)
}

#[tokio::test]
async fn the_last_units_are_reserved_once_under_contention() {
    let db = TestDatabase::with_pool_size(40).await;
    let store = EventStore::new(db.pool.clone());
    let (product_id, create) = new_product(10);
    let stream_id = product_id.stream_id();
    store
        .execute::<Product>(&stream_id, create, &CommandOptions::default())
        .await
        .unwrap();

    let buyers = 30;
    let barrier = Arc::new(Barrier::new(buyers));
    let options = CommandOptions {
        max_attempts: 64,
        ..CommandOptions::default()
    };
    let mut tasks = Vec::new();
    for _ in 0..buyers {
        let (store, stream_id, barrier, options) = (
            store.clone(),
            stream_id.clone(),
            barrier.clone(),
            options.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let reserve = ProductCommand::Reserve {
                order_id: OrderId(Uuid::new_v4()),
                quantity: 1,
            };
            store
                .execute::<Product>(&stream_id, reserve, &options)
                .await
        }));
    }
    let (mut reserved, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(done) => {
                assert_eq!(done.events.len(), 1);
                reserved += 1;
            }
            Err(ExecuteError::Rejected(ProductRejection::InsufficientStock {
                available: 0,
                ..
            })) => refused += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!((reserved, refused), (10, 20));
    let (product, version) = store.load::<Product>(&stream_id).await.unwrap();
    let details = product.0.unwrap();
    assert_eq!(details.available, 0);
    assert_eq!(details.reservations.len(), 10);
    assert_eq!(version, 11);
}

#[tokio::test]
async fn if_match_fails_fast_and_no_op_commands_append_nothing() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (product_id, create) = new_product(5);
    let stream_id = product_id.stream_id();
    store
        .execute::<Product>(&stream_id, create, &CommandOptions::default())
        .await
        .unwrap();

    let stale = CommandOptions {
        expected_version: Some(7),
        ..CommandOptions::default()
    };
    let err = store
        .execute::<Product>(&stream_id, ProductCommand::AdjustStock { delta: 1 }, &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::VersionMismatch {
                expected: 7,
                actual: 1
            }
        ),
        "{err:?}"
    );

    let current = CommandOptions {
        expected_version: Some(1),
        ..CommandOptions::default()
    };
    let done = store
        .execute::<Product>(
            &stream_id,
            ProductCommand::AdjustStock { delta: 1 },
            &current,
        )
        .await
        .unwrap();
    assert_eq!(done.version, 2);

    // Releasing a reservation that does not exist decides nothing: no event, same version.
    let release = ProductCommand::Release {
        order_id: OrderId(Uuid::new_v4()),
    };
    let done = store
        .execute::<Product>(&stream_id, release, &CommandOptions::default())
        .await
        .unwrap();
    assert!(done.events.is_empty());
    assert_eq!(done.version, 2);
    assert_eq!(store.stream_version(&stream_id).await.unwrap(), 2);

    // Rejections write nothing either.
    let err = store
        .execute::<Product>(
            &stream_id,
            ProductCommand::AdjustStock { delta: -100 },
            &CommandOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Rejected(ProductRejection::StockOutOfRange { result: -94 })
        ),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&stream_id).await.unwrap(), 2);
    let (state, _) = store.load::<Product>(&stream_id).await.unwrap();
    let stored: Vec<_> = store
        .read_stream(&stream_id, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.decode().unwrap())
        .collect();
    assert_eq!(state, Product::replay(&stored));
    assert_eq!(state.0.unwrap().available, 6);
}

#[tokio::test]
async fn cached_states_are_never_trusted_past_what_an_append_proves() {
    let db = TestDatabase::new().await;
    // Two command processes on one database, each with a cache of its own.
    let a = EventStore::new(db.pool.clone()).with_aggregate_cache(100);
    let b = EventStore::new(db.pool.clone()).with_aggregate_cache(100);
    let (product_id, create) = new_product(5);
    let stream_id = product_id.stream_id();
    let options = CommandOptions::default();
    a.execute::<Product>(&stream_id, create, &options)
        .await
        .unwrap();

    // A's cache says 5 available; B sells them all. A's stale decision must not stand.
    b.execute::<Product>(
        &stream_id,
        ProductCommand::AdjustStock { delta: -5 },
        &options,
    )
    .await
    .unwrap();
    let reserve = |order| ProductCommand::Reserve {
        order_id: OrderId(Uuid::from_u128(order)),
        quantity: 1,
    };
    let err = a
        .execute::<Product>(&stream_id, reserve(1), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Rejected(ProductRejection::InsufficientStock { available: 0, .. })
        ),
        "{err:?}"
    );

    // Now A's cache says 0; B restocks. A's stale rejection must not stand either.
    b.execute::<Product>(
        &stream_id,
        ProductCommand::AdjustStock { delta: 10 },
        &options,
    )
    .await
    .unwrap();
    let done = a
        .execute::<Product>(&stream_id, reserve(2), &options)
        .await
        .unwrap();
    assert_eq!(done.state.0.as_ref().unwrap().available, 9);

    // And a stale "nothing to do" is re-checked: A thinks order 3 holds nothing; B reserves for
    // it; A's release must release what B reserved.
    b.execute::<Product>(&stream_id, reserve(3), &options)
        .await
        .unwrap();
    let released = a
        .execute::<Product>(
            &stream_id,
            ProductCommand::Release {
                order_id: OrderId(Uuid::from_u128(3)),
            },
            &options,
        )
        .await
        .unwrap();
    assert_eq!(
        released.events.len(),
        1,
        "the release found B's reservation"
    );

    // Whatever each cache held, both agree with the stream in the end.
    let (fresh, version) = EventStore::new(db.pool.clone())
        .load::<Product>(&stream_id)
        .await
        .unwrap();
    assert_eq!(
        a.load::<Product>(&stream_id).await.unwrap(),
        (fresh.clone(), version)
    );
    assert_eq!(
        b.load::<Product>(&stream_id).await.unwrap(),
        (fresh, version)
    );
}

#[tokio::test]
async fn appends_to_several_streams_commit_together_or_not_at_all() {
    use eventstore::StreamAppend;
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (cart, order) = (stream(), stream());
    store
        .append(&cart, ExpectedVersion::NoStream, &[event(1)])
        .await
        .unwrap();

    let both = |cart_expected, order_expected| {
        vec![
            StreamAppend {
                stream_id: cart.clone(),
                expected: cart_expected,
                events: vec![event(2)],
            },
            StreamAppend {
                stream_id: order.clone(),
                expected: order_expected,
                events: vec![event(1), event(2)],
            },
        ]
    };
    // One stale expectation: nothing at all is written, and the error names that stream.
    let err = store
        .append_streams(&both(ExpectedVersion::Exact(7), ExpectedVersion::NoStream))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::WrongExpectedVersion { ref stream_id, actual: 1, .. } if *stream_id == cart),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&order).await.unwrap(), 0);

    assert_eq!(
        store
            .append_streams(&both(ExpectedVersion::Exact(1), ExpectedVersion::NoStream))
            .await
            .unwrap(),
        vec![2, 2]
    );
    let err = store
        .append_streams(&both(ExpectedVersion::Exact(2), ExpectedVersion::NoStream))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::WrongExpectedVersion { ref stream_id, actual: 2, .. } if *stream_id == order),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&cart).await.unwrap(), 2);

    // Racing multi-stream appends on the same cart: exactly one wins.
    let barrier = Arc::new(Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, cart, barrier) = (store.clone(), cart.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .append_streams(&[
                    StreamAppend {
                        stream_id: cart,
                        expected: ExpectedVersion::Exact(2),
                        events: vec![event(3)],
                    },
                    StreamAppend {
                        stream_id: stream(),
                        expected: ExpectedVersion::NoStream,
                        events: vec![event(1)],
                    },
                ])
                .await
        }));
    }
    let mut wins = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.stream_version(&cart).await.unwrap(), 3);
}

#[tokio::test]
async fn a_streams_first_event_is_read_only_once_the_stream_reached_the_version_asked() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let s = stream();
    assert!(store.first_event_if_reached(&s, 1).await.unwrap().is_none());
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            &[event(1), event(2), event(3)],
        )
        .await
        .unwrap();
    for reached in [1, 3] {
        let first = store
            .first_event_if_reached(&s, reached)
            .await
            .unwrap()
            .expect("the stream is at version 3");
        assert_eq!(
            (first.version, first.data.to_value()["n"].clone()),
            (1, json!(1))
        );
    }
    assert!(store.first_event_if_reached(&s, 4).await.unwrap().is_none());
    assert!(
        store
            .first_event_if_reached(&stream(), 1)
            .await
            .unwrap()
            .is_none()
    );
}
