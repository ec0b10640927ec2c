//! `till serve <service>…`: one service alone, as compose or Kubernetes run it, or several in
//! one process (started in the order of `till up`, the gateway last).

use till::services::{self, Service};
use till::settings::SystemConfig;
use tokio::task::JoinSet;

pub async fn run(chosen: &[Service], config: &SystemConfig) -> anyhow::Result<()> {
    let shutdown = platform::http::shutdown_on_signal();
    let mut tasks = JoinSet::new();
    let in_order: Vec<Service> = Service::ALL
        .into_iter()
        .filter(|s| chosen.contains(s))
        .collect();
    for s in services::start(&in_order, config, &mut tasks, &shutdown).await? {
        tracing::info!(service = s.name, addr = %s.addr, "listening");
    }
    services::run_until_stopped(tasks, shutdown).await
}
