//! `till up [--demo]`: every service in this process against the local Postgres, Redis and
//! RabbitMQ; with `--demo`, the scripted demo runs once everything is up.

use anyhow::Context;
use till::services::{self, Service};
use till::settings::SystemConfig;
use tokio::task::JoinSet;

pub async fn run(demo: bool, config: &SystemConfig) -> anyhow::Result<()> {
    let shutdown = platform::http::shutdown_on_signal();
    let mut tasks = JoinSet::new();
    let started = services::start(&Service::ALL, config, &mut tasks, &shutdown).await?;
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
        if let Err(e) = till::demo::run(&gateway, issuer).await {
            shutdown.cancel();
            let _ = services::run_until_stopped(tasks, shutdown).await;
            return Err(e.context("the demo failed"));
        }
        println!("The system keeps running; Ctrl-C stops it.");
    }
    services::run_until_stopped(tasks, shutdown).await
}
