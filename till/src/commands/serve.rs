//! `till serve <service>`: one service alone, as compose or Kubernetes run it.

use till::services::{self, Service};
use till::settings::SystemConfig;
use tokio::task::JoinSet;

pub async fn run(service: Service, config: &SystemConfig) -> anyhow::Result<()> {
    let shutdown = platform::http::shutdown_on_signal();
    let mut tasks = JoinSet::new();
    for s in services::start(&[service], config, &mut tasks, &shutdown).await? {
        tracing::info!(service = s.name, addr = %s.addr, "listening");
    }
    services::run_until_stopped(tasks, shutdown).await
}
