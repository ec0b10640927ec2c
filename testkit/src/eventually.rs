//! Bounded waits for what happens asynchronously (the relay, the projectors), each failing with
//! a message that says what was awaited — and, for waits on the global log, why it may stall.

use std::time::Duration;

use sqlx::PgPool;

use crate::database::stall_report;

/// Generous: every global-log reader on the server waits for the oldest open transaction in the
/// cluster, and other test suites may hold one open for seconds.
pub const PATIENCE: Duration = Duration::from_secs(120);

async fn poll_until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Polls `check` until it is true; panics after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(poll_until(check).await, "timed out waiting for {what}");
}

/// Like [`eventually`], for waits that depend on the global log: the panic explains the horizon.
pub async fn eventually_explained<F, Fut>(pool: &PgPool, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !poll_until(check).await {
        panic!("timed out waiting for {what}; {}", stall_report(pool).await);
    }
}

/// Awaits `future` for at most [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Like [`within`], for waits that depend on the global log: the panic explains the horizon.
pub async fn within_explained<T>(pool: &PgPool, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}; {}", stall_report(pool).await),
    }
}
