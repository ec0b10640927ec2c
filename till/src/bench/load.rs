//! A closed-loop load runner: N workers each run their own loop of operations for a warm-up,
//! then a measured window; every operation's latency and outcome (an HTTP status, or 0 for
//! "ok" where there is none) is recorded by the worker's [`Recorder`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::report::Phase;

/// How long and how wide a load runs.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub workers: usize,
    pub warmup: Duration,
    pub measured: Duration,
}

/// Given to each worker: records what it does, and says when to stop.
#[derive(Debug)]
pub struct Recorder {
    phase: Phase,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    /// Runs one operation and records its latency and outcome if the window is open.
    pub async fn time<F>(&mut self, operation: F) -> anyhow::Result<u16>
    where
        F: Future<Output = anyhow::Result<u16>>,
    {
        let started = Instant::now();
        let outcome = operation.await?;
        if self.measuring.load(Ordering::Relaxed) {
            self.phase.record(started.elapsed());
            *self.phase.outcomes.entry(outcome).or_default() += 1;
        }
        Ok(outcome)
    }

    pub fn finish(self) -> Phase {
        self.phase
    }
}

/// Runs `load.workers` copies of `worker` and merges what they recorded.
pub async fn run<W, Fut>(name: &'static str, load: Load, worker: W) -> anyhow::Result<Phase>
where
    W: Fn(usize, Recorder) -> Fut,
    Fut: Future<Output = anyhow::Result<Phase>> + Send + 'static,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(load.workers);
    for n in 0..load.workers {
        let recorder = Recorder {
            phase: Phase::new(name),
            measuring: measuring.clone(),
            stop: stop.clone(),
        };
        tasks.push(tokio::spawn(worker(n, recorder)));
    }
    tokio::time::sleep(load.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(load.measured).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut total = Phase::new(name);
    total.elapsed = elapsed;
    for task in tasks {
        let phase = task.await??;
        total.merge(&phase);
    }
    Ok(total)
}

/// Outcome counts as `status×count` pairs, for the summary.
pub fn outcomes_line(outcomes: &BTreeMap<u16, u64>) -> String {
    outcomes
        .iter()
        .map(|(status, count)| format!("{status}×{count}"))
        .collect::<Vec<_>>()
        .join("  ")
}
