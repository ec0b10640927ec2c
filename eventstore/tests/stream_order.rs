//! Reading one stream type in stream order, as rebuilds do: exactly that type's events, each
//! stream's in version order, whatever the batch size, walking the `(stream_id, version)` index.

use eventstore::{EventStore, ExpectedVersion, Metadata, NewEvent};
use serde_json::json;
use sqlx::{ConnectOptions, Connection};
use testkit::TestDatabase;
use uuid::Uuid;

fn events(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: "Noted".into(),
            data: json!({ "n": i }),
            metadata: Metadata::default(),
        })
        .collect()
}

#[tokio::test]
async fn reading_one_stream_type_in_stream_order_returns_exactly_its_events() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    // Types whose ids sort right next to `order-…`: a prefix of it, one it is a prefix of, and
    // neighbours either side.
    let mut expected = Vec::new();
    for (stream_type, streams) in [
        ("ord", 2),
        ("order", 7),
        ("orders", 2),
        ("orderz", 1),
        ("p", 2),
    ] {
        for s in 0..streams {
            let stream = format!("{stream_type}-{}", Uuid::new_v4());
            let n = 1 + s % 4;
            store
                .append(&stream, ExpectedVersion::NoStream, &events(n))
                .await
                .unwrap();
            if stream_type == "order" {
                expected.extend((1..=n as u64).map(|v| (stream.clone(), v)));
            }
        }
    }
    expected.sort();

    for batch_size in [1, 3, 100] {
        let mut batches: Vec<Vec<(String, u64)>> = Vec::new();
        store
            .scan_streams_of_type("order", batch_size, |batch| {
                batches.push(
                    batch
                        .into_iter()
                        .map(|e| (e.stream_id, e.version))
                        .collect(),
                );
                std::future::ready(true)
            })
            .await
            .unwrap();
        let read: Vec<(String, u64)> = batches.concat();
        assert_eq!(read, expected, "batch size {batch_size}");
        // Whole streams per batch: every batch starts a stream at its first version, and
        // every batch but the last holds at least the size asked for.
        for (i, batch) in batches.iter().enumerate() {
            assert_eq!(
                batch[0].1, 1,
                "batch {i} of size {batch_size} starts mid-stream"
            );
            if i + 1 < batches.len() {
                assert!(
                    batch.len() >= batch_size,
                    "batch {i}: {} events",
                    batch.len()
                );
            }
        }
        // Streams of up to four events, so a batch closes within three events of its size.
        assert!(batches.iter().all(|b| b.len() < batch_size + 4));
    }

    // A stream longer than a batch may grow to is split: the batch closes at its cap, and the
    // next one continues the stream.
    let long = format!("order-{}", Uuid::new_v4());
    let cap = 2 * eventstore::store::SCAN_BATCH_CAP;
    store
        .append(&long, ExpectedVersion::NoStream, &events(cap + 1))
        .await
        .unwrap();
    let mut of_long: Vec<Vec<u64>> = Vec::new();
    store
        .scan_streams_of_type("order", 2, |batch| {
            let versions: Vec<u64> = batch
                .iter()
                .filter(|e| e.stream_id == long)
                .map(|e| e.version)
                .collect();
            if !versions.is_empty() {
                of_long.push(versions);
            }
            assert!(batch.len() <= cap);
            std::future::ready(true)
        })
        .await
        .unwrap();
    assert_eq!(of_long.concat(), (1..=cap as u64 + 1).collect::<Vec<_>>());
    assert!(of_long.len() >= 2, "{of_long:?}");

    // A consumer that has had enough stops the read.
    assert_eq!(batches_handed_over(&store, "order", 2, false).await, 1);
}

#[tokio::test]
async fn stream_ids_compare_in_byte_order_and_the_read_walks_their_index() {
    let db = TestDatabase::new().await;
    let collation: Option<String> = sqlx::query_scalar(
        "SELECT collation_name FROM information_schema.columns \
         WHERE table_schema = 'eventstore' AND table_name = 'events' AND column_name = 'stream_id'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(collation.as_deref(), Some("C"));

    // As the scan runs it: on the store's stream-order connection.
    let mut scan = eventstore::stream_order_options(&db.pool)
        .connect()
        .await
        .unwrap();
    let explain = format!(
        "EXPLAIN {}",
        eventstore::scan::streams_between_sql("order-", "order.")
    );
    let plan = sqlx::query_scalar::<_, String>(&explain)
        .fetch_all(&mut scan)
        .await
        .unwrap()
        .join("\n");
    scan.close().await.unwrap();
    assert!(
        plan.contains("events_stream_version_unique") && !plan.contains("Sort"),
        "the stream-order read does not walk the stream index:\n{plan}"
    );
}

#[tokio::test]
async fn a_scanned_event_is_the_event_a_stream_read_returns_field_for_field() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let mut streams = Vec::new();
    for n in 0..3 {
        let stream = format!("order-{}", Uuid::new_v4());
        let appended: Vec<NewEvent> = (0..2)
            .map(|i| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: format!("Noted{i}"),
                // Text a copy must carry byte for byte: escapes, quotes, non-ASCII, nesting.
                data: json!({
                    "n": n,
                    "name": "Crème \"brûlée\"\n\\ 🍮",
                    "lines": [{ "qty": 2, "price": { "amount": 1250, "currency": "EUR" } }],
                    "none": null,
                }),
                metadata: Metadata {
                    correlation_id: Some(Uuid::now_v7()),
                    causation_id: Some(Uuid::now_v7()),
                    actor: Some(format!("customer-{n}")),
                    idempotency_key: Some("k'1".into()),
                    traceparent: Some(
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    ),
                },
            })
            .collect();
        store
            .append(&stream, ExpectedVersion::NoStream, &appended)
            .await
            .unwrap();
        streams.push(stream);
    }

    let mut scanned = Vec::new();
    store
        .scan_streams_of_type("order", 100, |batch| {
            scanned.extend(batch);
            std::future::ready(true)
        })
        .await
        .unwrap();
    let mut read = Vec::new();
    streams.sort();
    for stream in &streams {
        read.extend(store.read_stream(stream, 0).await.unwrap());
    }
    assert_eq!(scanned.len(), 6);
    assert_eq!(scanned, read);
    // Event data compares as JSON; its text must be the stored text itself.
    for (scanned, read) in scanned.iter().zip(&read) {
        assert_eq!(scanned.data.as_str(), read.data.as_str());
    }

    // A type without streams: a copy of no rows, and no batch.
    assert_eq!(batches_handed_over(&store, "invoice", 100, true).await, 0);
}

/// A scan whose connection dies half-way fails: a rebuild must never take the events it got as
/// all there are.
#[tokio::test]
async fn a_scan_whose_connection_is_lost_midway_fails_instead_of_ending_early() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    // About 25 MB on the wire: more than the sockets between Postgres and us can hold, so the
    // server is still sending when its backend is terminated.
    let padding = "x".repeat(1_500);
    let (streams, per_stream) = (40, 400);
    for _ in 0..streams {
        let appended: Vec<NewEvent> = (0..per_stream)
            .map(|i| NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "Noted".into(),
                data: json!({ "n": i, "padding": padding }),
                metadata: Metadata::default(),
            })
            .collect();
        store
            .append(
                &format!("order-{}", Uuid::new_v4()),
                ExpectedVersion::NoStream,
                &appended,
            )
            .await
            .unwrap();
    }

    let mut delivered = 0;
    let pool = db.pool.clone();
    let scanned = store
        .scan_streams_of_type("order", 10, |batch| {
            let first = delivered == 0;
            delivered += batch.len();
            let pool = pool.clone();
            async move {
                if first {
                    let terminated: i64 = sqlx::query_scalar(
                        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                         FROM pg_stat_activity \
                         WHERE datname = current_database() AND query LIKE 'COPY (SELECT%'",
                    )
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                    assert_eq!(terminated, 1, "the scan's backend");
                }
                true
            }
        })
        .await;
    assert!(
        scanned.is_err(),
        "the scan ended without an error after {delivered} of {} events",
        streams * per_stream
    );
    assert!(delivered < streams * per_stream);
}

/// How many batches a scan of `stream_type` hands to a consumer that answers `go_on` to each.
async fn batches_handed_over(
    store: &EventStore,
    stream_type: &str,
    batch_size: usize,
    go_on: bool,
) -> usize {
    let mut batches = 0;
    store
        .scan_streams_of_type(stream_type, batch_size, |_| {
            batches += 1;
            std::future::ready(go_on)
        })
        .await
        .unwrap();
    batches
}
