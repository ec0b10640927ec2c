//! The command line, declared with clap. Every flag has a default that works on a fresh
//! machine; connection URLs come from `DATABASE_URL`, `AMQP_URL` and `REDIS_URL`.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "till",
    version,
    about = "Tillstream: event-sourced commerce backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in this process against the local Postgres, Redis and RabbitMQ.
    Up {
        /// Run the scripted demo once everything is up (and keep running).
        #[arg(long)]
        demo: bool,
    },
    /// Run the scripted demo against a running gateway.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
    /// Run one service alone (as docker-compose or Kubernetes would).
    Serve {
        #[arg(value_enum)]
        service: till::services::Service,
    },
    /// Create the database if it is missing and apply every migration (safe to repeat).
    Migrate,
    /// Print a token from the local development issuer.
    Token(TokenArgs),
    /// List, inspect and rebuild read-model projections.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// A consumer's dead letters: list, redrive to its queue, or drop.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLettersCommand),
    /// Inspect the event store.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Benchmarks that print their figures next to a baseline measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Concurrent single-event appends vs. plain single-row INSERTs of the same payload.
    Append(AppendBenchArgs),
    /// Simulated shoppers sending commands through the gateway vs. plain INSERTs.
    Write(WriteBenchArgs),
    /// Events from the store to the read models: throughput and freshness vs. RabbitMQ alone.
    Pipeline(PipelineBenchArgs),
    /// Projection rebuilds from the store vs. a raw scan of the events.
    Rebuild(RebuildBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RebuildBenchArgs {
    /// Events seeded before rebuilding.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Rebuild only these projections (repeatable); all of them by default.
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct PipelineBenchArgs {
    /// Events seeded for the throughput run.
    #[arg(long, default_value_t = 50_000)]
    pub events: u64,
    /// Commands per second for the freshness run.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of the freshness run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct WriteBenchArgs {
    /// Concurrent shoppers, each with a token of their own.
    #[arg(long, default_value_t = 32)]
    pub shoppers: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of warm-up (not measured).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
}

#[derive(Debug, Clone, Args)]
pub struct AppendBenchArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// Seconds each measured phase runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of warm-up before each phase (not measured).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// A role to grant; repeat for several (`--role admin`).
    #[arg(long)]
    pub role: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Every projection with its serving version and any rebuild in progress.
    List,
    /// Checkpoint, lag in events and seconds, per projection.
    Status,
    /// Build a new version from the event store, switch to it, drop the old one.
    Rebuild {
        /// products, orders or carts.
        name: Option<String>,
        /// Rebuild every projection.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Show up to `limit` dead letters without removing them.
    List {
        consumer: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send every dead letter back to the consumer's queue.
    Redrive { consumer: String },
    /// Delete every dead letter.
    Drop { consumer: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Every event of one stream, e.g. `order-<uuid>`.
    Stream { stream_id: String },
    /// The newest events of the global log; `--follow` keeps printing new ones.
    Tail {
        #[arg(long, default_value_t = 20)]
        last: i64,
        #[arg(long)]
        follow: bool,
    },
}
