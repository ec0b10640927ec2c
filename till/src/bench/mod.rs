//! `till bench …`: benchmarks that measure Tillstream against a baseline taken on the same
//! machine in the same run, so the ratio means something wherever it runs.
//!
//! - [`append`]: event store appends vs. plain INSERTs.
//! - [`commands`]: the in-process command path (load → decide → append), with and without group
//!   commit, vs. plain INSERTs.
//! - [`write`]: simulated shoppers through the gateway, services as separate processes.
//! - [`pipeline`]: relay and projector throughput, and command-to-view freshness.
//! - [`rebuild`]: projection rebuild speed vs. a raw scan of the events table.
//! - `load`: the closed-loop runner; `scratch`: the throwaway database and the INSERT
//!   baseline; `report`: latency histograms and summary lines.

pub mod append;
pub mod commands;
mod load;
pub mod pipeline;
pub mod rebuild;
mod report;
mod scratch;
mod seed;
pub mod write;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Concurrent single-event appends vs. plain single-row INSERTs of the same payload.
    Append(append::AppendBenchArgs),
    /// Cart commands in process (load → decide → append), a commit each and grouped, vs. INSERTs.
    Commands(commands::CommandsBenchArgs),
    /// Simulated shoppers sending commands through the gateway vs. plain INSERTs.
    Write(write::WriteBenchArgs),
    /// Events from the store to the read models: throughput and freshness vs. RabbitMQ alone.
    Pipeline(pipeline::PipelineBenchArgs),
    /// Projection rebuilds from the store vs. a raw scan of the events.
    Rebuild(rebuild::RebuildBenchArgs),
}

/// Runs the benchmark `command` names.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Append(args) => append::run(args).await,
        Command::Commands(args) => commands::run(args).await,
        Command::Write(args) => write::run(args).await,
        Command::Pipeline(args) => pipeline::run(args).await,
        Command::Rebuild(args) => rebuild::run(args).await,
    }
}
