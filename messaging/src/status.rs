//! A read-only, cheaply cloned view of a running loop's status (the relay's, a consumer's),
//! for health checks and tests.

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct StatusHandle<T> {
    status: watch::Receiver<T>,
}

impl<T: Clone> StatusHandle<T> {
    pub(crate) fn new(status: watch::Receiver<T>) -> Self {
        Self { status }
    }

    pub fn status(&self) -> T {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `predicate`; returns that status (or the last one if
    /// the loop is gone).
    pub async fn wait_for(&self, predicate: impl FnMut(&T) -> bool) -> T {
        let mut rx = self.status.clone();
        let found = rx.wait_for(predicate).await.map(|s| s.clone()).ok();
        found.unwrap_or_else(|| rx.borrow().clone())
    }
}
