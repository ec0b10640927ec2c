//! `till bench commands`: the in-process command path on the workload of the cqrs-es +
//! postgres-es comparison — W workers, each opening a cart and adding 5 items to it, every
//! command a load → decide → append of the cart aggregate (no aggregate cache: each command
//! reads its stream, as the peer does) — with and without group commit, and as the command API
//! runs it (group commit and its aggregate cache), beside plain single-row INSERTs of a similar
//! payload from as many workers, all in one scratch database in one run.

use std::time::Duration;

use clap::Args;
use domain::cart::{Cart, CartCommand, CatalogEntry};
use domain::values::{Actor, CartId, CustomerId, Money, ProductId, ProductName, Quantity, Sku};
use eventstore::{CommandOptions, EventStore, GroupCommit};
use uuid::Uuid;

use super::load::{self, Load, Recorder};
use super::report::{Phase, verdict};
use super::scratch::{ScratchDatabase, baseline_worker};

#[derive(Debug, Clone, Args)]
pub struct CommandsBenchArgs {
    /// Concurrent workers (the comparison's figure is at 32).
    #[arg(long, default_value_t = 32)]
    pub workers: usize,
    /// Seconds each measured phase runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of warm-up before each phase (not measured).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Appends per batch at most, with group commit.
    #[arg(long, default_value_t = GroupCommit::default().max_batch)]
    pub max_batch: usize,
}

pub async fn run(args: CommandsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.workers > 0 && args.seconds > 0 && args.max_batch > 0,
        "workers, seconds and max-batch must be positive"
    );
    // The workers', and the group-commit writer's and reader's.
    let connections = u32::try_from(args.workers + 2).unwrap_or(u32::MAX);
    let scratch = ScratchDatabase::create(connections).await?;
    println!(
        "till bench commands: {} workers, each a cart and 5 adds (load → decide → append), \
         {} s per phase (+{} s warm-up), database {}",
        args.workers,
        args.seconds,
        args.warmup,
        platform::settings::redact(&scratch.url)
    );
    let load = Load {
        workers: args.workers,
        warmup: Duration::from_secs(args.warmup),
        measured: Duration::from_secs(args.seconds),
    };
    let pool = scratch.pool.clone();
    let baseline = load::run("baseline: single-row INSERT", load, |_, recorder| {
        baseline_worker(pool.clone(), recorder)
    })
    .await?;
    let alone = EventStore::new(scratch.pool.clone());
    let one_by_one = load::run("commands, a commit each", load, |n, recorder| {
        cart_worker(alone.clone(), n, recorder)
    })
    .await?;
    let grouped = EventStore::new(scratch.pool.clone()).with_group_commit(GroupCommit {
        max_batch: args.max_batch,
    });
    let group_commit = load::run("commands, group commit", load, |n, recorder| {
        cart_worker(grouped.clone(), n, recorder)
    })
    .await?;
    // The command API's own configuration: group commit and the aggregate cache, which lets a
    // command decide on the state its previous append proved current instead of loading it.
    let cached = grouped
        .clone()
        .with_aggregate_cache(till::services::COMMAND_CACHE_CAPACITY);
    let with_cache = load::run("group commit + state cache", load, |n, recorder| {
        cart_worker(cached.clone(), n, recorder)
    })
    .await?;
    let stats = grouped.group_stats().expect("group commit is on");
    let per_batch = stats.appends() as f64 / stats.batches().max(1) as f64;
    let rerun = stats.rerun();
    drop((grouped, cached));
    scratch.drop_database().await;

    println!("{}", baseline.line());
    for phase in [&one_by_one, &group_commit, &with_cache] {
        println!(
            "{}   = {:.2} × baseline",
            phase.line(),
            phase.per_second() / baseline.per_second().max(f64::EPSILON)
        );
    }
    println!(
        "group commit (both phases): {per_batch:.1} appends per commit on average (at most {} per \
         batch); {rerun} batch(es) ran again one by one",
        args.max_batch
    );
    let met = |phase: &Phase| {
        let ratio = phase.per_second() / baseline.per_second().max(f64::EPSILON);
        let p99 = phase.ms(0.99);
        let met = verdict(ratio >= 1.0 && p99 <= 10.0);
        format!("{ratio:.2} ×, p99 {p99:.2} ms   {met}")
    };
    println!(
        "target at 32 workers, >= 1.0 × the INSERT rate with p99 <= 10 ms:\n  \
         as the command API runs (group commit + state cache): {}\n  \
         every command reading its stream (the peer's way):     {}",
        met(&with_cache),
        met(&group_commit)
    );
    Ok(())
}

/// The products the carts take, as the command side would have read them from the catalog.
fn catalog() -> Vec<CatalogEntry> {
    (0..5)
        .map(|n| CatalogEntry {
            product_id: ProductId(Uuid::new_v4()),
            sku: Sku::parse(&format!("BENCH-{n}")).expect("a valid sku"),
            name: ProductName::parse(&format!("Bench product {n}")).expect("a valid name"),
            unit_price: Money::price(1_000 + n, "EUR").expect("a valid price"),
            available: 1_000_000,
            discontinued: false,
        })
        .collect()
}

/// Opens a cart and adds the 5 products to it, one command each; again until the phase ends.
/// Every command is timed (the cart's creation too).
async fn cart_worker(store: EventStore, n: usize, mut recorder: Recorder) -> anyhow::Result<Phase> {
    let products = catalog();
    let owner = CustomerId::parse(&format!("bench-{n}")).expect("a valid customer id");
    let actor = Actor::customer(owner.clone());
    let options = CommandOptions::default();
    let quantity = Quantity::parse(1).expect("a valid quantity");
    while recorder.running() {
        let cart_id = CartId(Uuid::now_v7());
        let stream = cart_id.stream_id();
        let mut commands = vec![CartCommand::Create {
            cart_id,
            owner: owner.clone(),
        }];
        commands.extend(products.iter().map(|product| CartCommand::AddItem {
            actor: actor.clone(),
            product: product.clone(),
            quantity,
        }));
        for command in commands {
            recorder
                .time(async {
                    store
                        .execute::<Cart>(&stream, command, &options)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                    Ok(0)
                })
                .await?;
        }
    }
    Ok(recorder.finish())
}
