//! `till bench rebuild`: seeds N events (default 1,000,000), then rebuilds each projection from
//! the store and prints its events/s next to the raw scan rate of the same events (a streamed
//! `SELECT` of their rows in the rebuild's order), measured just before and just after it.
//! `--runs N` rebuilds each projection N times on the same seeded store and adds the medians.

use clap::Args;
use std::time::Instant;

use eventstore::EventStore;
use futures::TryStreamExt;
use platform::read_models::{CartKeys, PROJECTIONS, projection, projection_names};
use projectors::rebuild::{BATCH, rebuild};
use sqlx::{ConnectOptions, Connection};

use super::report::verdict;
use super::scratch::ScratchDatabase;

#[derive(Debug, Clone, Args)]
pub struct RebuildBenchArgs {
    /// Events seeded before rebuilding.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Rebuild only these projections (repeatable); all of them by default.
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
    /// Rebuilds of each projection, one after another on the same seeded store (each beside
    /// its own raw scan), to see the spread without seeding again.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
}

pub async fn run(args: RebuildBenchArgs) -> anyhow::Result<()> {
    if let Some(unknown) = args.projections.iter().find(|p| projection(p).is_none()) {
        anyhow::bail!(
            "no projection {unknown:?}; there are: {}",
            projection_names()
        );
    }
    let scratch = ScratchDatabase::create(4).await?;
    let started = Instant::now();
    let seeded = super::seed::seed(&scratch.pool, args.events).await?;
    println!(
        "till bench rebuild: seeded {} events ({} product, {} cart, {} order) in {:.1} s",
        seeded.total(),
        seeded.products,
        seeded.carts,
        seeded.orders,
        started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE eventstore.events")
        .execute(&scratch.pool)
        .await?;
    // Seeding writes about a gigabyte of WAL, which sets off a checkpoint that would otherwise
    // still be writing the seed's pages out during the first rebuild (stalling its writes for a
    // second or more): the seed's cost, not the rebuild's. The baseline and each rebuild start
    // from a checkpointed store.
    sqlx::query("CHECKPOINT").execute(&scratch.pool).await?;
    let store = EventStore::new(scratch.pool.clone());
    let keys = CartKeys {
        prefix: format!(
            "bench-rebuild-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
    };
    let client = redis::Client::open(platform::settings::redis_url())?;
    let mut redis = redis::aio::ConnectionManager::new(client).await?;
    for (name, stream_type) in
        PROJECTIONS
            .iter()
            .map(|p| (p.name, p.stream_type))
            .filter(|(name, _)| {
                args.projections.is_empty() || args.projections.iter().any(|p| p == name)
            })
    {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(
                rebuild_beside_scan(&scratch.pool, &store, &mut redis, &keys, name, stream_type)
                    .await?,
            );
        }
        if runs.len() > 1 {
            let median = |mut values: Vec<f64>| {
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            };
            println!(
                "{name:<9} median of {} runs: {:.0} events/s, {:.0}% of the scan",
                runs.len(),
                median(runs.iter().map(|(rate, _)| *rate).collect()),
                100.0 * median(runs.iter().map(|(_, share)| *share).collect()),
            );
        }
    }
    let keys_left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", keys.prefix))
        .query_async(&mut redis)
        .await?;
    if !keys_left.is_empty() {
        let _: () = redis::cmd("UNLINK")
            .arg(keys_left)
            .query_async(&mut redis)
            .await?;
    }
    scratch.drop_database().await;
    Ok(())
}

/// One rebuild of `name`, printed beside the raw scan of its events; returns its events/s and
/// their share of the scan's rate.
async fn rebuild_beside_scan(
    pool: &sqlx::PgPool,
    store: &EventStore,
    redis: &mut redis::aio::ConnectionManager,
    keys: &CartKeys,
    name: &str,
    stream_type: &str,
) -> anyhow::Result<(f64, f64)> {
    // Baseline: the rows alone, scanned just before and just after the rebuild, so that the
    // machine drifting during the run (it does, by a fifth and more) moves both sides.
    let scan_before = raw_scan_rate(pool, stream_type).await?;
    let done = rebuild(store, redis, keys, name, BATCH, |_| {}, || false)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the rebuild was interrupted"))?;
    let scan_after = raw_scan_rate(pool, stream_type).await?;
    let scan_rate = (scan_before + scan_after) / 2.0;
    // Issue 20 asks the orders rebuild for 200k events/s and 60% of its raw scan; the
    // others keep their first targets.
    let (target, share) = match name {
        "carts" => (150_000.0, None),
        "orders" => (200_000.0, Some(0.60)),
        _ => (100_000.0, None),
    };
    let of_scan = done.per_second() / scan_rate.max(f64::EPSILON);
    println!(
        "{name:<9} rebuilt {:>8} events in {:>6.2} s = {:>8.0} events/s   raw scan {scan_rate:>8.0} rows/s (before {scan_before:.0}, after {scan_after:.0}) ({:.0}%)   target >= {target:.0} {}{}",
        done.events,
        done.elapsed.as_secs_f64(),
        done.per_second(),
        100.0 * of_scan,
        verdict(done.per_second() >= target),
        share.map_or(String::new(), |share| format!(
            "   >= {:.0}% of the scan {}",
            share * 100.0,
            verdict(of_scan >= share)
        )),
    );
    Ok((done.per_second(), of_scan))
}

/// The baseline: the rows of `stream_type` alone (their data as text, not decoded), streamed in
/// the order a rebuild reads them, in rows per second.
async fn raw_scan_rate(pool: &sqlx::PgPool, stream_type: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (first, last) = eventstore::stream_type_range(stream_type);
    let mut scan = eventstore::stream_order_options(pool).connect().await?;
    let scanned = sqlx::query_scalar::<_, String>(
        "SELECT data::text FROM eventstore.events WHERE stream_id > $1 AND stream_id < $2 \
         ORDER BY stream_id, version",
    )
    .bind(first)
    .bind(last)
    .fetch(&mut scan)
    .try_fold(0u64, |n, _| async move { Ok(n + 1) })
    .await?;
    scan.close().await?;
    Ok(scanned as f64 / started.elapsed().as_secs_f64())
}
