//! `till up [--demo]`: every service in this process against the local Postgres, Redis and
//! RabbitMQ; with `--demo`, the scripted demo runs once everything is up.

use anyhow::Context;
use till::services::{self, Service};
use till::settings::SystemConfig;
use tokio::task::JoinSet;

/// The operator UIs of the compose stack that answer on this machine (Grafana, Prometheus,
/// RabbitMQ's management UI), with where to start.
async fn running_uis() -> Vec<(&'static str, String)> {
    let candidates = [
        ("Grafana", 3000, "/d/tillstream-overview"),
        ("Prometheus", 9090, "/alerts"),
        ("RabbitMQ", 15672, "/"),
    ];
    let mut up = Vec::new();
    for (name, port, path) in candidates {
        let probe = tokio::net::TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(_)) = tokio::time::timeout(std::time::Duration::from_millis(200), probe).await
        {
            up.push((name, format!("http://localhost:{port}{path}")));
        }
    }
    up
}

pub async fn run(demo: bool, config: &SystemConfig, exporting_traces: bool) -> anyhow::Result<()> {
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
    match std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    {
        Ok(endpoint) if exporting_traces => {
            println!("  {:<20} exported to {endpoint} (OTLP/HTTP)", "traces");
        }
        _ => println!(
            "  {:<20} not exported; set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://localhost:4318 \
             with `docker compose up -d otel-collector grafana`)",
            "traces"
        ),
    }
    for (name, url) in running_uis().await {
        println!("  {name:<20} {url}");
    }
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
