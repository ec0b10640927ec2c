//! `till probe`: the container health check. One image runs every service, so it asks each
//! operations address the settings give (`/livez`; the development issuer's JWKS) and is
//! healthy when one answers 200 — the service this container runs.

use std::net::SocketAddr;
use std::time::Duration;

use till::settings::SystemConfig;

pub async fn run(config: &SystemConfig) -> anyhow::Result<()> {
    let local = |addr: SocketAddr| format!("http://127.0.0.1:{}", addr.port());
    let mut urls: Vec<String> = [
        config.command_api_addr,
        config.query_api_addr,
        config.relay_ops_addr,
        config.projectors_ops_addr,
        config.processes_ops_addr,
        config.gateway.ops_listen,
    ]
    .into_iter()
    .map(|addr| format!("{}/livez", local(addr)))
    .collect();
    if let Some(issuer) = config.dev_issuer_addr {
        urls.push(format!("{}/.well-known/jwks.json", local(issuer)));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for url in &urls {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            println!("healthy: {url}");
            return Ok(());
        }
    }
    anyhow::bail!("no service answers here: asked {}", urls.join(", "))
}
