//! `till projections list | status | rebuild <name> | rebuild --all`: the read models' versions,
//! their lag, and rebuilding one without downtime (`projectors::rebuild`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use platform::read_models::{PROJECTIONS, projection, projection_names};
use projectors::rebuild::{BATCH, rebuild};
use till::settings::SystemConfig;

#[derive(Debug, Subcommand)]
pub enum Command {
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

pub async fn run(command: Command, config: &SystemConfig) -> anyhow::Result<()> {
    let (pool, store) = super::database(config).await?;
    let mut redis = till::services::connect_redis(&config.redis_url).await?;
    let keys = &config.cart_keys;
    match command {
        Command::List => {
            let rows: Vec<(String, i32, Option<i32>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
                "SELECT name, serving_version, building_version, switched_at FROM read.projections ORDER BY name",
            )
            .fetch_all(&pool)
            .await?;
            println!(
                "{:<10} {:>8} {:>10}  switched at",
                "name", "serving", "building"
            );
            for (name, serving, building, at) in rows {
                let building = building.map_or("-".to_owned(), |b| format!("v{b}"));
                println!(
                    "{name:<10} {:>8} {building:>10}  {at}",
                    format!("v{serving}")
                );
            }
        }
        Command::Status => {
            println!("{:<10} {:>12} {:>12}", "name", "lag events", "lag seconds");
            for lag in projectors::status::measure(&pool, &mut redis, keys).await? {
                println!(
                    "{:<10} {:>12} {:>12.1}",
                    lag.projection, lag.events, lag.seconds
                );
            }
        }
        Command::Rebuild { name, all } => {
            let names: Vec<String> = match (name, all) {
                (_, true) => PROJECTIONS.iter().map(|p| p.name.to_owned()).collect(),
                (Some(name), false) => vec![name],
                (None, false) => {
                    anyhow::bail!("name a projection ({}) or pass --all", projection_names())
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    flag.store(true, Ordering::SeqCst);
                }
            });
            for name in names {
                let stream_type = projection(&name).map(|p| p.stream_type).with_context(|| {
                    format!("no projection named {name}; try {}", projection_names())
                })?;
                let total = store.count_events_of_type(stream_type).await?;
                let bar = ProgressBar::new(total.max(0) as u64);
                bar.set_style(ProgressStyle::with_template(
                    "{prefix:>9} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}",
                )?);
                bar.set_prefix(name.clone());
                let outcome = rebuild(
                    &store,
                    &mut redis,
                    keys,
                    &name,
                    BATCH,
                    |done| bar.set_position(done),
                    || stop.load(Ordering::SeqCst),
                )
                .await?;
                bar.finish_and_clear();
                match outcome {
                    Some(done) => println!(
                        "{name}: rebuilt {} events into v{} in {:.2} s ({:.0} events/s); now serving v{}",
                        done.events,
                        done.version,
                        done.elapsed.as_secs_f64(),
                        done.per_second(),
                        done.version
                    ),
                    None => {
                        println!(
                            "{name}: interrupted; the previous version keeps serving, run again to start over"
                        );
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}
