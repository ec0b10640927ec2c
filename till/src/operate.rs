//! The operator's commands: projections (list, status, rebuild), dead letters, events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use eventstore::EventStore;
use indicatif::{ProgressBar, ProgressStyle};
use platform::read_models::CartKeys;
use platform::read_models::{PROJECTIONS, projection, projection_names};
use projectors::rebuild::{BATCH, rebuild};

use crate::cli::{DeadLettersCommand, EventsCommand, ProjectionsCommand};

async fn connect() -> anyhow::Result<(sqlx::PgPool, EventStore)> {
    let url = platform::settings::database_url();
    platform::database::create_and_migrate(&url).await?;
    let pool = platform::database::connect(&url, &Default::default()).await?;
    Ok((pool.clone(), EventStore::new(pool)))
}

async fn redis() -> anyhow::Result<redis::aio::ConnectionManager> {
    let url = platform::settings::redis_url();
    let client = redis::Client::open(url.as_str())?;
    redis::aio::ConnectionManager::new(client)
        .await
        .with_context(|| {
            format!(
                "Redis is not reachable at {}",
                platform::settings::redact(&url)
            )
        })
}

pub async fn projections(command: ProjectionsCommand) -> anyhow::Result<()> {
    let (pool, store) = connect().await?;
    let mut redis = redis().await?;
    let keys = CartKeys {
        prefix: platform::read_models::redis_prefix(),
    };
    match command {
        ProjectionsCommand::List => {
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
        ProjectionsCommand::Status => {
            println!("{:<10} {:>12} {:>12}", "name", "lag events", "lag seconds");
            for lag in projectors::status::measure(&pool, &mut redis, &keys).await? {
                println!(
                    "{:<10} {:>12} {:>12.1}",
                    lag.projection, lag.events, lag.seconds
                );
            }
        }
        ProjectionsCommand::Rebuild { name, all } => {
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
                    &keys,
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

pub async fn dead_letters(command: DeadLettersCommand) -> anyhow::Result<()> {
    let url = platform::settings::amqp_url();
    let connection = messaging::connect(&url, "till dead-letters")
        .await
        .with_context(|| {
            format!(
                "RabbitMQ is not reachable at {}",
                platform::settings::redact(&url)
            )
        })?;
    let topology = messaging::Topology::default();
    let known = |consumer: &str| -> anyhow::Result<()> {
        let names: Vec<&str> = till::services::consumers()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        anyhow::ensure!(
            names.contains(&consumer),
            "no consumer named {consumer}; known: {}",
            names.join(", ")
        );
        Ok(())
    };
    match command {
        DeadLettersCommand::List { consumer, limit } => {
            known(&consumer)?;
            let letters =
                messaging::dead_letters::list(&connection, &topology, &consumer, limit).await?;
            println!("{} dead letter(s) of {consumer}", letters.len());
            for letter in letters {
                println!("{letter:?}");
            }
        }
        DeadLettersCommand::Redrive { consumer } => {
            known(&consumer)?;
            let n = messaging::dead_letters::redrive(&connection, &topology, &consumer).await?;
            println!("redrove {n} dead letter(s) to {consumer}");
        }
        DeadLettersCommand::Drop { consumer } => {
            known(&consumer)?;
            let n = messaging::dead_letters::drop_all(&connection, &topology, &consumer).await?;
            println!("dropped {n} dead letter(s) of {consumer}");
        }
    }
    let _ = connection.close(200, "done").await;
    Ok(())
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

pub async fn events(command: EventsCommand) -> anyhow::Result<()> {
    let (_, store) = connect().await?;
    match command {
        EventsCommand::Stream { stream_id } => {
            let events = store.read_stream(&stream_id, 0).await?;
            anyhow::ensure!(!events.is_empty(), "no stream {stream_id}");
            events.iter().for_each(print_event);
        }
        EventsCommand::Tail { last, follow } => {
            let mut at = store
                .log_position_before_last(u64::try_from(last).unwrap_or_default())
                .await?;
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
