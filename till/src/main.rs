//! `till`: the one Tillstream binary. Runs the services, migrates the database, issues
//! development tokens and benchmarks the system.
//!
//! Where things live: `cli.rs` declares the commands (clap), `services.rs` starts services,
//! `bench/` holds the benchmarks; each subcommand's wiring is a small function below.

mod bench;
mod cli;
mod operate;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::task::JoinSet;

use crate::cli::{BenchCommand, Cli, Command, TokenArgs};
use till::demo;
use till::services::{self, Service, SystemConfig};

/// mimalloc instead of glibc's malloc: a rebuild allocates many short-lived buffers (JSON
/// documents, rows), and under glibc malloc and free were a quarter of its client CPU. Measured
/// A/B, alternating: a 1M-event orders rebuild went from 61-64k to 76-81k events/s; commands
/// through the gateway were no faster or slower; each service's peak RSS grew by about 10 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    platform::telemetry::init();
    match cli.command {
        Command::Up { demo } => up(demo).await,
        Command::Demo { gateway } => {
            demo::run(&gateway, platform::dev_issuer::DevIssuer::load_default()?).await
        }
        Command::Serve { service } => serve(service).await,
        Command::Migrate => migrate().await,
        Command::Token(args) => token(args),
        Command::Projections(command) => operate::projections(command).await,
        Command::DeadLetters(command) => operate::dead_letters(command).await,
        Command::Events(command) => operate::events(command).await,
        Command::Bench(BenchCommand::Append(args)) => bench::append::run(args).await,
        Command::Bench(BenchCommand::Write(args)) => bench::write::run(args).await,
        Command::Bench(BenchCommand::Pipeline(args)) => bench::pipeline::run(args).await,
        Command::Bench(BenchCommand::Rebuild(args)) => bench::rebuild::run(args).await,
    }
}

async fn up(demo: bool) -> anyhow::Result<()> {
    let config = SystemConfig::from_env()?;
    let shutdown = platform::http::shutdown_on_signal();
    let mut tasks = JoinSet::new();
    let started = services::start(&Service::ALL, &config, &mut tasks, &shutdown).await?;
    println!("Tillstream is up:");
    for s in &started {
        println!("  {:<20} http://{}", s.name, s.addr);
    }
    println!(
        "  {:<20} {} (exchange {})",
        "bus",
        platform::settings::redact(&config.amqp_url),
        config.topology.exchange()
    );
    println!(
        "  {:<20} issuer {}, audience {}",
        "tokens", config.identity.issuer, config.identity.audience
    );
    if config.dev_issuer_addr.is_some() {
        println!("Get a token with `till token --sub alice` (add `--role admin` for the catalog).");
    }
    println!("Ctrl-C stops everything.");
    if demo {
        let gateway = started
            .iter()
            .find(|s| s.service == Service::Gateway)
            .map(|s| format!("http://{}", s.addr))
            .context("the gateway is up")?;
        let issuer = platform::dev_issuer::DevIssuer::load_default()?;
        if let Err(e) = demo::run(&gateway, issuer).await {
            shutdown.cancel();
            let _ = services::run_until_stopped(tasks, shutdown).await;
            return Err(e.context("the demo failed"));
        }
        println!("The system keeps running; Ctrl-C stops it.");
    }
    services::run_until_stopped(tasks, shutdown).await
}

async fn serve(service: Service) -> anyhow::Result<()> {
    let config = SystemConfig::from_env()?;
    let shutdown = platform::http::shutdown_on_signal();
    let mut tasks = JoinSet::new();
    for s in services::start(&[service], &config, &mut tasks, &shutdown).await? {
        tracing::info!(service = s.name, addr = %s.addr, "listening");
    }
    services::run_until_stopped(tasks, shutdown).await
}

async fn migrate() -> anyhow::Result<()> {
    let url = platform::settings::database_url();
    platform::database::create_and_migrate(&url)
        .await
        .context("till migrate")?;
    tracing::info!(url = %platform::settings::redact(&url), "database is migrated");
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let issuer = platform::dev_issuer::DevIssuer::load_default()?;
    let roles: Vec<&str> = args.role.iter().map(String::as_str).collect();
    println!(
        "{}",
        issuer.token(&args.sub, &roles, Duration::from_secs(args.ttl))?
    );
    Ok(())
}
