//! `till bench …`: benchmarks that measure Tillstream against a baseline taken on the same
//! machine in the same run, so the ratio means something wherever it runs.
//!
//! - [`append`]: event store appends vs. plain INSERTs.
//! - [`write`]: simulated shoppers through the gateway, services as separate processes.
//! - [`pipeline`]: relay and projector throughput, and command-to-view freshness.
//! - [`rebuild`]: projection rebuild speed vs. a raw scan of the events table.
//! - `load`: the closed-loop runner; `scratch`: the throwaway database and the INSERT
//!   baseline; `report`: latency histograms and summary lines.

pub mod append;
mod load;
pub mod pipeline;
pub mod rebuild;
mod report;
mod scratch;
mod seed;
pub mod write;
