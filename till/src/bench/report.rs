//! Latency recording and the printed summary shared by the benchmarks.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// How every bench prints whether a figure meets its target.
pub fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

/// Latencies of one phase, in microseconds, with the operation count and elapsed time.
#[derive(Debug)]
pub struct Phase {
    pub name: &'static str,
    pub latencies_us: Histogram<u64>,
    pub elapsed: Duration,
    /// Operations by outcome (an HTTP status, or 0 where there is none).
    pub outcomes: BTreeMap<u16, u64>,
}

impl Phase {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            // 1 µs to 60 s at 3 significant figures.
            latencies_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            elapsed: Duration::ZERO,
            outcomes: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies_us.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Phase) {
        let _ = self.latencies_us.add(&other.latencies_us);
        for (outcome, count) in &other.outcomes {
            *self.outcomes.entry(*outcome).or_default() += count;
        }
    }

    pub fn ops(&self) -> u64 {
        self.latencies_us.len()
    }

    pub fn per_second(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    pub fn ms(&self, quantile: f64) -> f64 {
        self.latencies_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// One aligned line: name, count, rate, p50/p99/max.
    pub fn line(&self) -> String {
        format!(
            "{:<28} {:>9} ops {:>10.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>8.2} ms",
            self.name,
            self.ops(),
            self.per_second(),
            self.ms(0.50),
            self.ms(0.99),
            self.latencies_us.max() as f64 / 1000.0,
        )
    }
}
