//! Throwaway databases for integration tests, and the global-log horizon they wait for.
//!
//! Each [`TestDatabase`] is a new database with a random name on the server of `DATABASE_URL`
//! (default: the local Postgres), migrated, and dropped again when the value is dropped, so
//! tests run in parallel and can run twice in a row.

use platform::database::{PoolSettings, connect, create_and_migrate, with_database_name};
use platform::settings::database_url;
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;

use crate::eventually::eventually;

/// A migrated database of its own; dropped (with any open connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates and migrates a fresh database. Panics with a clear message if Postgres is down,
    /// which is what a test wants.
    pub async fn new() -> Self {
        Self::with_pool_size(16).await
    }

    pub async fn with_pool_size(max_connections: u32) -> Self {
        let name = format!("tillstream_test_{}", uuid::Uuid::new_v4().simple());
        let url = with_database_name(&database_url(), &name);
        create_and_migrate(&url)
            .await
            .expect("create the test database");
        let settings = PoolSettings {
            max_connections,
            ..PoolSettings::default()
        };
        let pool = connect(&url, &settings)
            .await
            .expect("connect to the test database");
        Self { url, pool }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // The pool is not closed here: its connections belong to the test's runtime, which is
        // blocked in this drop. `DROP DATABASE … WITH (FORCE)` ends them instead.
        let url = self.url.clone();
        crate::cleanup::run_to_completion(async move {
            let _ = sqlx::Postgres::force_drop_database(&url).await;
        });
    }
}

/// Waits until every event in the table is below the global-log horizon, i.e. readable.
///
/// Transaction ids are cluster-wide: a test elsewhere that holds a transaction open (the
/// late-commit test does, for seconds) holds back every global-log reader on the server. Tests
/// that read the log wait for the horizon instead of assuming it has passed.
pub async fn wait_for_log_horizon(pool: &PgPool) {
    eventually(
        "the global-log horizon to pass the newest event",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(max(transaction_id) < pg_snapshot_xmin(pg_current_snapshot()), \
                 true) FROM eventstore.events",
            )
            .fetch_one(pool)
            .await
            .expect("query the horizon")
        },
    )
    .await;
}

/// Why a wait on the global log may stall: events still above the horizon, and the oldest open
/// transactions on the whole server (any of them holds every log reader back).
pub async fn stall_report(pool: &PgPool) -> String {
    let above: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM eventstore.events \
         WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())",
    )
    .fetch_one(pool)
    .await;
    type Activity = (
        i32,
        Option<String>,
        Option<String>,
        Option<f64>,
        Option<String>,
    );
    let oldest: Result<Vec<Activity>, _> = sqlx::query_as(
        "SELECT pid, datname::text, state, \
                extract(epoch FROM now() - xact_start)::float8, left(query, 100) \
         FROM pg_stat_activity \
         WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) \
           AND pid <> pg_backend_pid() \
         ORDER BY xact_start LIMIT 5",
    )
    .fetch_all(pool)
    .await;
    format!(
        "events above the global-log horizon: {above:?}; oldest open transactions on the \
         server (pid, database, state, seconds, query): {oldest:?}"
    )
}
