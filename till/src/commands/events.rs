//! `till events stream <id> | tail [--last N] [--follow]`: the event store as it is, read through
//! `eventstore` (the global log gap-safely).

use std::time::Duration;

use clap::Subcommand;
use till::settings::SystemConfig;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every event of one stream, e.g. `order-<uuid>`.
    Stream { stream_id: String },
    /// The newest events of the global log; `--follow` keeps printing new ones.
    Tail {
        #[arg(long, default_value_t = 20)]
        last: u64,
        #[arg(long)]
        follow: bool,
    },
}

fn print_event(e: &eventstore::RecordedEvent) {
    println!(
        "{:>8} {} {}@{} {} {}",
        e.position,
        e.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        e.stream_id,
        e.version,
        e.event_type,
        e.data.as_str()
    );
}

pub async fn run(command: Command, config: &SystemConfig) -> anyhow::Result<()> {
    let (_, store) = super::database(config).await?;
    match command {
        Command::Stream { stream_id } => {
            let events = store.read_stream(&stream_id, 0).await?;
            anyhow::ensure!(!events.is_empty(), "no stream {stream_id}");
            events.iter().for_each(print_event);
        }
        Command::Tail { last, follow } => {
            let mut at = store.log_position_before_last(last).await?;
            loop {
                let batch = store.read_log(at, 1000).await?;
                batch.iter().for_each(print_event);
                if let Some(e) = batch.last() {
                    at = e.log_position();
                }
                if !follow {
                    return Ok(());
                }
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
    Ok(())
}
