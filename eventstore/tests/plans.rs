//! How Postgres plans the append statements. On an ordinary connection the multi-stream append
//! (most commands: a cart change also checks the product's stream) is re-planned at every
//! execution, because its generic plan's row estimate for the unnested arrays never wins; that
//! planning was a third of Postgres's CPU time under `till bench write`. The write side's pools
//! (`generic_plans`) plan each statement once, and appends must still be right there.

use eventstore::{AppendError, EventStore, ExpectedVersion, StreamAppend};
use platform::database::{PoolSettings, connect};
use testkit::TestDatabase;
use uuid::Uuid;

mod support;
use support::noted;

/// (generic, custom) plans made for the prepared statements that insert events, on the
/// store's one connection (prepared statements belong to their session).
async fn append_plans(store: &EventStore) -> (i64, i64) {
    store
        .on_connection(async |conn| {
            sqlx::query_as(
                "SELECT coalesce(sum(generic_plans), 0)::int8, \
                        coalesce(sum(custom_plans), 0)::int8 \
                 FROM pg_prepared_statements \
                 WHERE statement LIKE '%INSERT INTO eventstore.events%'",
            )
            .fetch_one(conn)
            .await
        })
        .await
        .unwrap()
}

/// Ten single-stream and ten two-stream appends, with a conflict in between; returns the
/// store's final versions of the two streams.
async fn appends(store: &EventStore) -> (u64, u64) {
    let (a, b) = (
        format!("test-{}", Uuid::new_v4()),
        format!("test-{}", Uuid::new_v4()),
    );
    for n in 0..10 {
        store
            .append(&a, ExpectedVersion::Exact(n), &[noted(n)])
            .await
            .unwrap();
    }
    let conflict = store
        .append(&a, ExpectedVersion::Exact(3), &[noted(99)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            conflict,
            AppendError::WrongExpectedVersion { actual: 10, .. }
        ),
        "{conflict:?}"
    );
    for n in 0..10 {
        let writes = [
            StreamAppend {
                stream_id: a.clone(),
                expected: ExpectedVersion::Exact(10 + n),
                events: vec![noted(n)],
            },
            StreamAppend {
                stream_id: b.clone(),
                expected: ExpectedVersion::Exact(n),
                events: vec![noted(n)],
            },
        ];
        store.append_streams(&writes).await.unwrap();
    }
    let version = |stream: String| async move {
        store
            .read_stream(&stream, 0)
            .await
            .unwrap()
            .last()
            .map_or(0, |e| e.version)
    };
    (version(a).await, version(b).await)
}

async fn one_connection(url: &str, generic_plans: bool) -> sqlx::PgPool {
    let settings = PoolSettings {
        max_connections: 1,
        generic_plans,
        ..PoolSettings::default()
    };
    connect(url, &settings).await.unwrap()
}

#[tokio::test]
async fn the_write_sides_connections_plan_appends_once() {
    let db = TestDatabase::new().await;
    let pool = one_connection(&db.url, true).await;
    let store = EventStore::new(pool.clone());

    assert_eq!(appends(&store).await, (20, 10));

    let (generic, custom) = append_plans(&store).await;
    assert_eq!(custom, 0, "no append was planned for its own parameters");
    assert!(generic >= 20, "the appends ran on generic plans: {generic}");
}
