//! Clean-up from `Drop`, which is not async and may run while the test's runtime is blocked or
//! unwinding: the future runs to completion on a runtime of its own, on a thread of its own.

use std::time::Duration;

/// Runs `cleanup` to completion before returning; failures are the cleanup's to ignore.
pub(crate) fn run_to_completion(cleanup: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            cleanup.await;
            // lapin's I/O loop winds down on its own thread; give it a moment before this
            // runtime (its reactor) goes away, or it logs a spurious error.
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
    })
    .join();
}
