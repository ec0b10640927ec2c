//! Shared by the event store's integration tests.

use std::time::Duration;

use eventstore::{Metadata, NewEvent};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// Waits until every event in the table is below the global-log horizon, i.e. readable.
///
/// Transaction ids are cluster-wide: a test elsewhere that holds a transaction open (the
/// late-commit test does, for seconds) holds back every global-log reader on the server. Tests
/// that read the log wait for the horizon instead of assuming it has passed.
#[allow(dead_code)] // not every test crate that includes this module uses it
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

/// A new event of type `Noted` carrying `n`.
#[allow(dead_code)] // not every test crate that includes this module uses it
pub fn noted(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Noted".into(),
        data: json!({ "n": n }),
        metadata: Metadata::default(),
    }
}
