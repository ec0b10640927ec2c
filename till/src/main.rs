//! `till`: the one Tillstream binary. Runs the services, migrates the database, issues
//! development tokens, operates a running system and benchmarks it.
//!
//! Where things live: `cli.rs` declares the top-level commands (clap); `commands/` has one
//! module per subcommand with its arguments and its work; `bench/` holds the benchmarks; the
//! services and the settings tree are the library (`till::services`, `till::settings`).

mod bench;
mod cli;
mod commands;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::{
    config, dead_letters, demo, events, migrate, probe, projections, serve, token, up,
};
use till::settings::SystemConfig;

/// mimalloc instead of glibc's malloc: a rebuild allocates many short-lived buffers (JSON
/// documents, rows), and under glibc malloc and free were a quarter of its client CPU. Measured
/// A/B, alternating: a 1M-event orders rebuild went from 61-64k to 76-81k events/s; commands
/// through the gateway were no faster or slower. It is built to commit arena memory as it is
/// used, which keeps each service's peak RSS down (`.cargo/config.toml` has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = platform::telemetry::init(
        match cli.command.reports() {
            true => platform::telemetry::QUIET,
            false => platform::telemetry::SERVICE,
        },
        &cli.command.service_name(),
    );
    let outcome = run(cli.command, telemetry.exporting()).await;
    // Sends the spans still buffered before the process ends.
    telemetry.shutdown();
    outcome
}

async fn run(command: Command, exporting_traces: bool) -> anyhow::Result<()> {
    // Read once; a bad value stops here with a message naming the variable.
    let settings = || SystemConfig::from_process_env();
    match command {
        Command::Up { demo } => up::run(demo, &settings()?, exporting_traces).await,
        Command::Demo { gateway } => demo::run(&gateway).await,
        Command::Serve { services } => serve::run(&services, &settings()?).await,
        Command::Migrate => migrate::run(&settings()?).await,
        Command::Probe => probe::run(&settings()?).await,
        Command::Config => {
            config::run(&settings()?);
            Ok(())
        }
        Command::Token(args) => token::run(args),
        Command::Projections(command) => projections::run(command, &settings()?).await,
        Command::DeadLetters(command) => dead_letters::run(command, &settings()?).await,
        Command::Events(command) => events::run(command, &settings()?).await,
        Command::FakeStripe { addr, webhook_url } => {
            let (key, secret) = ("sk_test_local", "whsec_local");
            let fake = till::fake_stripe::FakeStripe::start_on(&addr, key, secret).await?;
            fake.send_webhooks_to(&webhook_url);
            println!(
                "a fake Stripe listens on {}; run the system against it with\n  \
                 TILL_PAYMENT_PROVIDER=stripe TILL_STRIPE_API_BASE={} \
                 TILL_STRIPE_API_KEY={key} TILL_STRIPE_WEBHOOK_SECRET={secret} till up\n\
                 and pay with pm_card_visa, pm_card_chargeDeclined, \
                 pm_card_authenticationRequired or pm_card_processing",
                fake.url, fake.url
            );
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Bench(command) => bench::run(command).await,
    }
}
