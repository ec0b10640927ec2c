//! Shared by the event store's integration tests.

use std::time::Duration;

use sqlx::PgPool;

/// Waits until every event in the table is below the global-log horizon, i.e. readable.
///
/// Transaction ids are cluster-wide: a test elsewhere that holds a transaction open (the
/// late-commit test does, for seconds) holds back every global-log reader on the server. Tests
/// that read the log wait for the horizon instead of assuming it has passed.
pub async fn wait_for_log_horizon(pool: &PgPool) {
    for _ in 0..600 {
        let passed: bool = sqlx::query_scalar(
            "SELECT coalesce(max(transaction_id) < pg_snapshot_xmin(pg_current_snapshot()), true) \
             FROM eventstore.events",
        )
        .fetch_one(pool)
        .await
        .expect("query the horizon");
        if passed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the global-log horizon did not pass the newest event within 30 s");
}
