//! `till bench append`: N writers append single-event commands (each to its own stream, at the
//! exact expected version, the way a command does) for T seconds; then the same writers run
//! plain single-row INSERTs of the same payload into a table with only a primary key. Both
//! phases run in one scratch database, so the ratio compares the event store with what this
//! Postgres can do at all on this machine.

use clap::Args;
use std::time::Duration;

use eventstore::{EventStore, ExpectedVersion, NewEvent};
use uuid::Uuid;

use super::load::{self, Load, Recorder};
use super::report::{Phase, verdict};
use super::scratch::{ScratchDatabase, baseline_worker, metadata, payload};

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

pub async fn run(args: AppendBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.writers > 0 && args.seconds > 0,
        "writers and seconds must be positive"
    );
    let scratch = ScratchDatabase::create(u32::try_from(args.writers).unwrap_or(u32::MAX)).await?;
    println!(
        "till bench append: {} writers, {} s per phase (+{} s warm-up), database {}",
        args.writers,
        args.seconds,
        args.warmup,
        platform::settings::redact(&scratch.url)
    );
    let load = Load {
        workers: args.writers,
        warmup: Duration::from_secs(args.warmup),
        measured: Duration::from_secs(args.seconds),
    };
    let pool = scratch.pool.clone();
    let baseline = load::run("baseline: single-row INSERT", load, |_, recorder| {
        baseline_worker(pool.clone(), recorder)
    })
    .await?;
    let store = EventStore::new(scratch.pool.clone());
    let appends = load::run("event store: append", load, |_, recorder| {
        append_worker(store.clone(), recorder)
    })
    .await?;
    scratch.drop_database().await;

    println!("{}", baseline.line());
    println!("{}", appends.line());
    let ratio = appends.per_second() / baseline.per_second().max(f64::EPSILON);
    println!(
        "ratio (append / baseline): {:.0}%   target at 32 writers: >= 60%   {}",
        ratio * 100.0,
        verdict(ratio >= 0.6)
    );
    Ok(())
}

/// Appends one event at a time to a stream of its own, at the exact expected version.
async fn append_worker(store: EventStore, mut recorder: Recorder) -> anyhow::Result<Phase> {
    let stream = domain::values::CartId(Uuid::new_v4()).stream_id();
    let mut version = 0;
    while recorder.running() {
        recorder
            .time(async {
                let event = NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: "CartItemAdded".into(),
                    data: payload(),
                    metadata: metadata(),
                };
                version = store
                    .append(&stream, ExpectedVersion::Exact(version), &[event])
                    .await?
                    .version;
                Ok(0)
            })
            .await?;
    }
    Ok(recorder.finish())
}
