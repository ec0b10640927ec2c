//! The connections appends and stream reads run on (`eventstore::connections`): handed back
//! without a round trip, so they must recover by themselves from a statement cancelled
//! half-way and from a connection the server has ended.

use std::time::Duration;

use eventstore::{AppendError, EventStore, ExpectedVersion, StoreError, StreamAppend};
use platform::database::{PoolSettings, connect};
use testkit::TestDatabase;
use uuid::Uuid;

mod support;
use support::noted;

async fn store_with(url: &str, connections: u32) -> (sqlx::PgPool, EventStore) {
    store_with_settings(
        url,
        PoolSettings {
            max_connections: connections,
            ..PoolSettings::default()
        },
    )
    .await
}

async fn store_with_settings(url: &str, settings: PoolSettings) -> (sqlx::PgPool, EventStore) {
    let pool = connect(url, &settings).await.unwrap();
    (pool.clone(), EventStore::new(pool))
}

/// Ends every other session on the test database, as a server restart or an operator would.
async fn terminate_other_sessions(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn versions(store: &EventStore, stream: &str) -> Vec<u64> {
    let events = store.read_stream(stream, 0).await.unwrap();
    events.iter().map(|e| e.version).collect()
}

#[tokio::test]
async fn a_statement_cancelled_half_way_leaves_the_connection_usable() {
    let db = TestDatabase::new().await;
    let (_pool, store) = store_with(&db.url, 1).await;
    let stream = format!("test-{}", Uuid::new_v4());
    store
        .append(&stream, ExpectedVersion::NoStream, &[noted(1)])
        .await
        .unwrap();

    // The request that ran this statement went away while Postgres was still working on it.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        store.on_connection(async |conn| sqlx::query("SELECT pg_sleep(0.3)").execute(conn).await),
    )
    .await;
    assert!(cancelled.is_err(), "the statement was cut off");

    // The store's one connection answers the next statements correctly.
    let appended = store
        .append(&stream, ExpectedVersion::Exact(1), &[noted(2)])
        .await
        .unwrap();
    assert_eq!(appended.version, 2);
    assert_eq!(versions(&store, &stream).await, vec![1, 2]);
}

#[tokio::test]
async fn sessions_the_server_ended_are_replaced() {
    let db = TestDatabase::new().await;
    let (pool, store) = store_with(&db.url, 2).await;
    let stream = format!("test-{}", Uuid::new_v4());
    // Two appends at once: the store opens both of its connections.
    let (first, second) = ([noted(1)], [noted(2)]);
    let (a, b) = tokio::join!(
        store.append(&stream, ExpectedVersion::Any, &first),
        store.append(&stream, ExpectedVersion::Any, &second),
    );
    a.unwrap();
    b.unwrap();
    assert!(terminate_other_sessions(&pool).await >= 2);

    // Right away (too soon for the idle check): appends and reads, which are safe to repeat,
    // go through on the next connection as if nothing had happened.
    for n in 3..=6 {
        store
            .append(&stream, ExpectedVersion::Exact(n - 1), &[noted(n)])
            .await
            .unwrap();
    }
    assert_eq!(versions(&store, &stream).await, (1..=6).collect::<Vec<_>>());

    // A multi-stream append is not repeated (a checkout decided twice could act twice): it
    // fails clearly, once per dead connection at most, and the dead ones are not reused.
    // Two statements that overlap for sure, so the store holds two connections again (two
    // quick reads at once may both run on one, one after the other, on a busy machine).
    let overlapping = || {
        store.on_connection(async |conn| sqlx::query("SELECT pg_sleep(0.2)").execute(conn).await)
    };
    let (a, b) = tokio::join!(overlapping(), overlapping());
    a.unwrap();
    b.unwrap();
    assert!(terminate_other_sessions(&pool).await >= 2);
    let other = format!("test-{}", Uuid::new_v4());
    let mut failures = 0;
    let mut version = 6;
    for n in 7..=10 {
        let writes = [
            StreamAppend {
                stream_id: stream.clone(),
                expected: ExpectedVersion::Exact(version),
                events: vec![noted(n)],
            },
            StreamAppend {
                stream_id: other.clone(),
                expected: ExpectedVersion::Any,
                events: vec![noted(n)],
            },
        ];
        match store.append_streams(&writes).await {
            Ok(versions) => version = versions[0],
            Err(AppendError::Store(StoreError::Database(_))) => failures += 1,
            Err(unexpected) => panic!("unexpected failure: {unexpected}"),
        }
    }
    assert!(
        failures <= 2,
        "{failures} failures for two dead connections"
    );
    assert_eq!(version, 10 - failures);
    assert_eq!(
        versions(&store, &stream).await,
        (1..=version).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
}

#[tokio::test]
async fn an_idle_connection_is_checked_before_it_is_used() {
    let db = TestDatabase::new().await;
    let (pool, store) = store_with(&db.url, 1).await;
    let stream = format!("test-{}", Uuid::new_v4());
    store
        .append(&stream, ExpectedVersion::NoStream, &[noted(1)])
        .await
        .unwrap();
    assert!(terminate_other_sessions(&pool).await >= 1);
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    // Idle for more than a second: pinged, found dead, replaced; the append never sees it.
    let appended = store
        .append(&stream, ExpectedVersion::Exact(1), &[noted(2)])
        .await
        .unwrap();
    assert_eq!(appended.version, 2);
}

#[tokio::test]
async fn with_every_connection_busy_a_call_fails_after_the_pools_wait() {
    let db = TestDatabase::new().await;
    let (_pool, store) = store_with_settings(
        &db.url,
        PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(200),
            ..PoolSettings::default()
        },
    )
    .await;
    let stream = format!("test-{}", Uuid::new_v4());

    // The store's one connection is busy for a second; an append meanwhile waits for the
    // pool's acquire timeout, not longer, and says why it failed.
    let busy =
        store.on_connection(async |conn| sqlx::query("SELECT pg_sleep(1)").execute(conn).await);
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let appended = store
            .append(&stream, ExpectedVersion::NoStream, &[noted(1)])
            .await;
        (appended, started.elapsed())
    };
    let (busy, (appended, waited)) = tokio::join!(busy, waiting);
    busy.unwrap();
    assert!(
        matches!(
            appended,
            Err(AppendError::Store(StoreError::Database(
                sqlx::Error::PoolTimedOut
            )))
        ),
        "{appended:?}"
    );
    assert!(waited < Duration::from_millis(800), "waited {waited:?}");

    // Nothing was written, and once the connection is free the append goes through.
    assert_eq!(versions(&store, &stream).await, Vec::<u64>::new());
    let appended = store
        .append(&stream, ExpectedVersion::NoStream, &[noted(1)])
        .await
        .unwrap();
    assert_eq!(appended.version, 1);
}
