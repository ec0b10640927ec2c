//! `till bench pipeline`: how fast events get from the event store to the read models.
//!
//! 1. Broker baseline: RabbitMQ alone, in this run — persistent publishes with confirms (in
//!    batches, as the relay does), then consuming them with acks.
//! 2. Throughput: N events of carts, products and orders are seeded straight into the store;
//!    then the relay and the projectors start and the clock runs until every projection has
//!    applied every event. Sustained events/s = N / that time.
//! 3. Freshness: commands through the gateway at a fixed rate; each is read back through the
//!    query API with its consistency token; freshness = command answered → view visible.
//!
//! With `--workers 1,2,4`, step 2 runs once per worker count — that many projector services
//! on each consumer's work, in a fresh scratch database each time — and step 3 is skipped: how
//! projection throughput scales with workers, next to the broker's baseline. `--partitions 1,8`
//! runs each count once per layout: 1 = one queue per consumer (the workers compete for its
//! messages), P > 1 = the work split into P partitions by stream id (see
//! `messaging::partitions`).
//!
//! Everything runs in one process against a scratch database, a bus prefix and a Redis prefix
//! of the run's own, all removed at the end.

use clap::Args;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use domain::values::{ProductId, Sku};

use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use platform::dev_issuer::DevIssuer;
use reqwest::StatusCode;
use serde_json::json;
use till::services::{self, Service};
use till::settings::SystemConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::report::verdict;
use super::scratch::ScratchDatabase;

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
    /// Measure throughput with each of these numbers of projector workers (e.g. `1,2,4`)
    /// instead of the single run and the freshness run.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// With `--workers`: the partition counts to measure each worker count with (1 = one
    /// queue per consumer, competing workers).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub partitions: Vec<u16>,
}

const AUDIENCE: &str = "api://tillstream-bench";

pub async fn run(args: PipelineBenchArgs) -> anyhow::Result<()> {
    let scratch = ScratchDatabase::create(8).await?;
    let run_id = Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{}", &run_id[..8]);
    println!(
        "till bench pipeline: {} seeded events; {} commands/s for {} s; bus prefix {prefix}",
        args.events, args.rate, args.seconds
    );

    let (publish, consume) = broker_baseline(&prefix, args.events).await?;
    println!(
        "broker baseline: persistent publish with confirms {publish:>8.0} msg/s   consume with acks {consume:>8.0} msg/s"
    );

    if !args.workers.is_empty() {
        scratch.drop_database().await;
        return workers_sweep(&args, &prefix, publish, consume).await;
    }

    // The whole system, in this process, with its own names.
    let jwks = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let issuer_url = format!("http://{}/", jwks.local_addr()?);
    let issuer = DevIssuer::ephemeral(&issuer_url, AUDIENCE)?;
    let jwks_router = issuer.router();
    tokio::spawn(async move { axum::serve(jwks, jwks_router).await });
    let mut config = SystemConfig::from_process_env()?;
    let any = "127.0.0.1:0".parse()?;
    config.database_url = scratch.url.clone();
    config.dev_issuer_addr = None;
    config.identity = platform::identity::IdentitySettings {
        issuer: issuer_url.clone(),
        audience: AUDIENCE.into(),
        jwks_url: format!("{issuer_url}.well-known/jwks.json"),
        leeway: Duration::from_secs(30),
        refresh_interval: Duration::from_secs(30),
    };
    config.topology = messaging::Topology::new(prefix.clone());
    config.cart_keys = platform::read_models::CartKeys {
        prefix: prefix.clone(),
    };
    config.command_api_addr = any;
    config.query_api_addr = any;
    config.relay_ops_addr = any;
    config.projectors_ops_addr = any;
    config.processes_ops_addr = any;
    config.relay_poll_interval = Duration::from_millis(50);
    config.gateway.listen = any;
    config.gateway.per_ip = (1_000_000, 1_000_000);
    config.link_gateway = true;

    // Throughput: seed first, then start the pipeline and time it to the end.
    let seeded = super::seed::seed(&scratch.pool, args.events).await?.total();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let started_at = Instant::now();
    services::start(
        &[Service::Relay, Service::Projectors],
        &config,
        &mut tasks,
        &shutdown,
    )
    .await?;
    let caught_up =
        wait_until_applied(&scratch.pool, &config, seeded, Duration::from_secs(600)).await?;
    let elapsed = started_at.elapsed();
    let throughput = seeded as f64 / elapsed.as_secs_f64();
    println!(
        "throughput: {seeded} events through relay and projectors in {:.2} s = {throughput:>8.0} events/s   target >= 5000 {}",
        elapsed.as_secs_f64(),
        verdict(caught_up && throughput >= 5000.0)
    );

    // Freshness: the rest of the system joins, then commands at a fixed rate.
    let started = services::start(
        &[Service::CommandApi, Service::QueryApi, Service::Gateway],
        &config,
        &mut tasks,
        &shutdown,
    )
    .await?;
    let gateway = started
        .iter()
        .find(|s| s.service == Service::Gateway)
        .map(|s| format!("http://{}", s.addr))
        .context("the gateway started")?;
    let (freshness, rate, failures) = freshness(&gateway, &issuer, &args).await?;
    let p = |q: f64| freshness.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "freshness at {rate:.0} commands/s: p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} commands, {failures} failed)   target p99 <= 30 ms {}",
        p(0.5),
        p(0.99),
        freshness.max() as f64 / 1000.0,
        freshness.len(),
        verdict(p(0.99) <= 30.0 && failures == 0)
    );

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    cleanup(&config).await;
    scratch.drop_database().await;
    Ok(())
}

/// Projection throughput with 1, 2, … projector workers for each partition count, each run in
/// a fresh scratch database and bus prefix: N events seeded, then the relay and `workers`
/// projector services start, and the clock runs until every event is applied.
async fn workers_sweep(
    args: &PipelineBenchArgs,
    prefix: &str,
    publish: f64,
    consume: f64,
) -> anyhow::Result<()> {
    for &partitions in &args.partitions {
        anyhow::ensure!(
            (1..=messaging::topology::MAX_PARTITIONS).contains(&partitions),
            "--partitions takes counts from 1 to {}",
            messaging::topology::MAX_PARTITIONS
        );
        match partitions {
            1 => println!("\none queue per consumer, workers competing for its messages"),
            p => {
                println!("\n{p} partitions per consumer by stream id, single active consumer each")
            }
        }
        println!("workers   events/s   vs. broker consume   time");
        let mut first: Option<f64> = None;
        for &workers in &args.workers {
            sweep_one(args, prefix, partitions, workers, consume, &mut first).await?;
        }
    }
    println!(
        "(broker baseline this run: publish with confirms {publish:.0} msg/s, consume with acks {consume:.0} msg/s)"
    );
    Ok(())
}

/// One row of the sweep.
async fn sweep_one(
    args: &PipelineBenchArgs,
    prefix: &str,
    partitions: u16,
    workers: usize,
    consume: f64,
    first: &mut Option<f64>,
) -> anyhow::Result<()> {
    anyhow::ensure!(workers > 0, "--workers takes positive counts");
    let scratch = ScratchDatabase::create(8).await?;
    let mut config = SystemConfig::from_process_env()?;
    let any = "127.0.0.1:0".parse()?;
    let run_prefix = format!("{prefix}-p{partitions}w{workers}");
    config.database_url = scratch.url.clone();
    config.dev_issuer_addr = None;
    config.topology = messaging::Topology::new(run_prefix.clone()).with_partitions(partitions);
    config.cart_keys = platform::read_models::CartKeys { prefix: run_prefix };
    config.relay_ops_addr = any;
    config.projectors_ops_addr = any;
    config.relay_poll_interval = Duration::from_millis(50);
    let seeded = super::seed::seed(&scratch.pool, args.events).await?.total();
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let started_at = Instant::now();
    services::start(&[Service::Relay], &config, &mut tasks, &shutdown).await?;
    for _ in 0..workers {
        services::start(&[Service::Projectors], &config, &mut tasks, &shutdown).await?;
    }
    let caught_up =
        wait_until_applied(&scratch.pool, &config, seeded, Duration::from_secs(600)).await?;
    let elapsed = started_at.elapsed();
    let rate = seeded as f64 / elapsed.as_secs_f64();
    let speedup = rate / *first.get_or_insert(rate);
    println!(
        "{workers:>7}   {rate:>8.0}   {:>8.0}% ({speedup:.2}× one worker)   {:.2} s{}",
        rate / consume.max(f64::EPSILON) * 100.0,
        elapsed.as_secs_f64(),
        if caught_up {
            ""
        } else {
            "   (did not catch up)"
        }
    );
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    cleanup(&config).await;
    scratch.drop_database().await;
    Ok(())
}

/// RabbitMQ alone: publish `count` envelope-sized persistent messages with confirms in batches
/// of 500, then consume them with acks. Returns (publish/s, consume/s).
async fn broker_baseline(prefix: &str, count: u64) -> anyhow::Result<(f64, f64)> {
    let connection = messaging::connect(&platform::settings::amqp_url(), "bench-baseline").await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = format!("{prefix}.baseline");
    channel
        .queue_declare(
            &queue,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let body = serde_json::to_vec(&json!({ "event_id": Uuid::new_v4(), "data": "x".repeat(480) }))?;
    let properties = BasicProperties::default().with_delivery_mode(2);
    let started = Instant::now();
    let mut sent = 0;
    while sent < count {
        let batch = (count - sent).min(500);
        let mut confirms = Vec::with_capacity(batch as usize);
        for _ in 0..batch {
            confirms.push(
                channel
                    .basic_publish(
                        "",
                        &queue,
                        BasicPublishOptions::default(),
                        &body,
                        properties.clone(),
                    )
                    .await?,
            );
        }
        for confirm in confirms {
            confirm.await?;
        }
        sent += batch;
    }
    let publish = count as f64 / started.elapsed().as_secs_f64();

    channel.basic_qos(500, Default::default()).await?;
    let mut consumer = channel
        .basic_consume(
            &queue,
            "bench",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut received = 0;
    while received < count {
        let delivery = consumer
            .next()
            .await
            .context("the baseline queue ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        received += 1;
    }
    let consume = count as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "baseline done").await;
    Ok((publish, consume))
}

/// Waits until the three projections together report `expected` applied events.
async fn wait_until_applied(
    pool: &sqlx::PgPool,
    config: &SystemConfig,
    expected: u64,
    limit: Duration,
) -> anyhow::Result<bool> {
    let client = redis::Client::open(config.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    while started.elapsed() < limit {
        let postgres: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(events), 0)::int8 FROM read.progress WHERE version = 1",
        )
        .fetch_one(pool)
        .await?;
        let carts: Option<i64> = redis::cmd("HGET")
            .arg(config.cart_keys.progress(1))
            .arg("events")
            .query_async(&mut redis)
            .await?;
        if postgres + carts.unwrap_or(0) >= expected as i64 {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(false)
}

/// Commands at `args.rate` per second for `args.seconds`, each read back with its token.
async fn freshness(
    gateway: &str,
    issuer: &DevIssuer,
    args: &PipelineBenchArgs,
) -> anyhow::Result<(Histogram<u64>, f64, u64)> {
    // A cart per shopper, so commands do not contend on one stream. Each shopper waits for its
    // answer and read-back before its next command; one that fell behind (a slow read) sends
    // its missed commands at once, so the rate asked for is the rate sent.
    let shoppers = (args.rate / 10).clamp(16, 1_000);
    // One request in flight per shopper: keep a connection for each, never reopen them.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::try_from(shoppers).unwrap_or(usize::MAX))
        .build()?;
    let mut carts = Vec::new();
    for n in 0..shoppers {
        let token = issuer.token(&format!("fresh-{n}"), &[], Duration::from_secs(3600))?;
        let reply: serde_json::Value = http
            .post(format!("{gateway}/v1/carts"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let cart = reply["cart_id"].as_str().context("a cart id")?.to_owned();
        carts.push((token, cart));
    }
    // The first twenty products the seed made (one every ten rounds).
    let products: Vec<String> = (0..20)
        .map(|i| {
            Sku::parse(&format!("SEED-{}", i * 10)).map(|sku| ProductId::for_sku(&sku).to_string())
        })
        .collect::<Result<_, _>>()?;
    let products = Arc::new(products);
    // Each shopper sends its commands one after another (as a person does), at rate/shoppers
    // per second; all together they send `args.rate` per second.
    let period = Duration::from_secs_f64(carts.len() as f64 / args.rate as f64);
    let per_shopper = args.rate * args.seconds / carts.len() as u64;
    let started = Instant::now();
    let mut probes = JoinSet::new();
    for (n, (token, cart)) in carts.into_iter().enumerate() {
        let (http, gateway) = (http.clone(), gateway.to_owned());
        let product = products[n % products.len()].clone();
        // Shoppers start spread over one period, so the commands arrive evenly, not in waves.
        let first = tokio::time::Instant::now() + period.mul_f64(n as f64 / shoppers as f64);
        probes.spawn(async move {
            let mut outcomes = Vec::new();
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for k in 0..per_shopper {
                tick.tick().await;
                // Add one, then set it back to one: the cart never grows past a line.
                let command = if k.is_multiple_of(2) {
                    http.post(format!("{gateway}/v1/carts/{cart}/items"))
                        .json(&json!({ "product_id": product, "quantity": 1 }))
                } else {
                    http.put(format!("{gateway}/v1/carts/{cart}/items/{product}"))
                        .json(&json!({ "quantity": 1 }))
                };
                outcomes.push(probe(&http, &gateway, &token, &cart, command).await);
            }
            outcomes
        });
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failures = 0;
    let mut reasons: std::collections::BTreeMap<String, u64> = Default::default();
    while let Some(outcomes) = probes.join_next().await {
        for outcome in outcomes? {
            match outcome {
                Ok(latency) => histogram.saturating_record(latency.as_micros() as u64),
                Err(reason) => {
                    failures += 1;
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
    }
    let sent_for = started.elapsed();
    for (reason, count) in reasons {
        println!("  failed: {reason} ×{count}");
    }
    let sent = histogram.len() + failures;
    Ok((histogram, sent as f64 / sent_for.as_secs_f64(), failures))
}

/// Sends one command, then reads the cart back with the command's consistency token; returns
/// the time from the command's answer to the view's.
async fn probe(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    cart: &str,
    command: reqwest::RequestBuilder,
) -> Result<Duration, String> {
    let response = command
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("command answered {}", response.status()));
    }
    let consistency = response
        .headers()
        .get("x-consistency-token")
        .and_then(|v| v.to_str().ok())
        .ok_or("no consistency token")?
        .to_owned();
    let accepted = Instant::now();
    let read = http
        .get(format!("{gateway}/v1/carts/{cart}"))
        .bearer_auth(token)
        .header("x-consistency-token", consistency)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match read.status() {
        StatusCode::OK => Ok(accepted.elapsed()),
        status => Err(format!("read answered {status}")),
    }
}
/// Removes the run's queues, exchange and Redis keys.
async fn cleanup(config: &SystemConfig) {
    if let Ok(connection) = messaging::connect(&config.amqp_url, "bench-cleanup").await
        && let Ok(channel) = connection.create_channel().await
    {
        for (consumer, _) in services::consumers() {
            let _ = config.topology.delete_consumer(&channel, consumer).await;
        }
        let _ = config.topology.delete_exchange(&channel).await;
        let _ = connection.close(200, "bench done").await;
    }
    if let Ok(client) = redis::Client::open(config.redis_url.as_str())
        && let Ok(mut redis) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", config.cart_keys.prefix))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
        }
    }
}
