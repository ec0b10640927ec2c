//! The system as separate processes, `till serve <service>` each, as compose and Kubernetes
//! run it: for the tests that kill a process, count what each one exports, or read what each
//! one's operations port says. Every service gets free ports, the test's database, bus prefix
//! and Redis prefix, and the test issuer; the test adds or overrides variables.
//!
//! With replicas ([`Processes::replicated`]), each service runs N times: instance `gateway` is
//! the first, `gateway#2` the second, and so on. Gateway `#n` forwards to command API `#n` and
//! query API `#n` (a client balances across gateways, as a load balancer would).

use std::collections::HashMap;
use std::fs::File;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Every service that `till serve` runs, in start order (the gateway last).
pub const SERVICES: [&str; 6] = [
    "command-api",
    "query-api",
    "relay",
    "projectors",
    "processes",
    "gateway",
];

/// Where the processes find their dependencies.
#[derive(Debug, Clone)]
pub struct Dependencies {
    pub database_url: String,
    pub amqp_url: String,
    pub redis_url: String,
    /// The bus and Redis key prefix of the test.
    pub prefix: String,
}

/// Running `till serve` processes; killed when dropped.
#[derive(Debug)]
pub struct Processes {
    binary: String,
    env: Vec<(String, String)>,
    /// Free ports by instance name (`gateway`, `gateway#2`, `gateway-ops`, `gateway-ops#2`, …).
    ports: HashMap<String, u16>,
    replicas: usize,
    children: HashMap<String, Child>,
    /// One log file per service.
    pub logs: std::path::PathBuf,
}

/// A local port nothing listens on (free a moment ago).
pub fn free_port() -> u16 {
    // Not a port the kernel hands out itself (binding port 0, or any outgoing connection,
    // takes one from the ephemeral range, 32768–60999 by default): one of those was once
    // taken by another socket between this test choosing it and its process binding it. Below
    // that range, each port is handed out once per test binary, from a random start so
    // binaries run one after another do not reuse each other's; one still in use is skipped.
    const FIRST: u16 = 10_000;
    const SPAN: u16 = 22_000;
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU16> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| std::sync::atomic::AtomicU16::new(rand::random::<u16>() % SPAN));
    loop {
        let offset = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SPAN;
        let port = FIRST + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Processes {
    /// The environment for every service of `binary` (the `till` executable, from
    /// `env!("CARGO_BIN_EXE_till")`), plus `extra` (later entries win). Nothing starts yet.
    pub fn new(binary: &str, dependencies: &Dependencies, extra: &[(&str, String)]) -> Self {
        Self::replicated(binary, dependencies, extra, 1)
    }

    /// Like [`Processes::new`], with `replicas` instances of every service.
    pub fn replicated(
        binary: &str,
        dependencies: &Dependencies,
        extra: &[(&str, String)],
        replicas: usize,
    ) -> Self {
        let ports: HashMap<String, u16> = (1..=replicas)
            .flat_map(|n| {
                SERVICES
                    .iter()
                    .copied()
                    .chain(["gateway-ops"])
                    .map(move |s| (instance(s, n), free_port()))
            })
            .collect();
        let identity = crate::system::identity();
        let prefix = &dependencies.prefix;
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", dependencies.database_url.clone()),
            ("AMQP_URL", dependencies.amqp_url.clone()),
            ("REDIS_URL", dependencies.redis_url.clone()),
            ("TILL_REDIS_PREFIX", prefix.clone()),
            ("TILL_BUS_PREFIX", prefix.clone()),
            ("TILL_JWT_ISSUER", identity.issuer.clone()),
            ("TILL_JWT_AUDIENCE", identity.audience.clone()),
            ("TILL_JWKS_URL", identity.jwks_url.clone()),
            ("TILL_RATE_PER_USER", "100000/100000".to_owned()),
            ("TILL_RATE_PER_IP", "100000/100000".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        let logs = std::env::temp_dir().join(format!("till-processes-{prefix}"));
        std::fs::create_dir_all(&logs).expect("log directory");
        Self {
            binary: binary.to_owned(),
            env,
            ports,
            replicas,
            children: HashMap::new(),
            logs,
        }
    }

    /// Every instance's name, in start order (each service's replicas, the gateways last).
    pub fn instances(&self) -> Vec<String> {
        SERVICES
            .iter()
            .flat_map(|s| (1..=self.replicas).map(move |n| instance(s, n)))
            .collect()
    }

    /// The addresses an instance listens on and forwards to (replica `#n` of a gateway uses
    /// the APIs' replica `#n`).
    fn addresses(&self, name: &str) -> Vec<(String, String)> {
        let n = replica_of(name);
        let addr = |service: &str| format!("127.0.0.1:{}", self.ports[&instance(service, n)]);
        let url = |service: &str| format!("http://{}", addr(service));
        [
            ("TILL_GATEWAY_ADDR", addr("gateway")),
            ("TILL_GATEWAY_OPS_ADDR", addr("gateway-ops")),
            ("TILL_COMMAND_API_ADDR", addr("command-api")),
            ("TILL_QUERY_API_ADDR", addr("query-api")),
            ("TILL_RELAY_ADDR", addr("relay")),
            ("TILL_PROJECTORS_ADDR", addr("projectors")),
            ("TILL_PROCESSES_ADDR", addr("processes")),
            ("TILL_COMMAND_API_URL", url("command-api")),
            ("TILL_QUERY_API_URL", url("query-api")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// `http://…` of a service's port: the public one for the gateway, the only one for the
    /// others; `"gateway-ops"` is the gateway's operations port.
    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    /// The public URL of every gateway.
    pub fn gateways(&self) -> Vec<String> {
        (1..=self.replicas)
            .map(|n| self.url(&instance("gateway", n)))
            .collect()
    }

    /// Where a service answers `/livez`, `/readyz` and `/metrics`.
    pub fn operations_url(&self, service: &str) -> String {
        match service.split_once('#') {
            Some(("gateway", n)) => self.url(&format!("gateway-ops#{n}")),
            None if service == "gateway" => self.url("gateway-ops"),
            _ => self.url(service),
        }
    }

    /// Starts every instance and waits until each is ready.
    pub async fn start_all(&mut self) {
        for name in self.instances() {
            self.spawn(&name);
        }
        for name in self.instances() {
            self.wait_ready(&name).await;
        }
    }

    /// Starts instance `name` (`till serve <service>`), appending to its log.
    pub fn spawn(&mut self, name: &str) {
        let service = name.split('#').next().unwrap_or(name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(&self.binary)
            .args(["serve", service])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(self.addresses(name))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start till serve");
        self.children.insert(name.to_owned(), child);
    }

    /// SIGKILL: no shutdown, no flush, whatever was in flight is lost to the process.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.children.remove(name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (up to 60 s) until the instance's `/readyz` answers 200.
    pub async fn wait_ready(&self, service: &str) {
        let url = format!("{}/readyz", self.operations_url(service));
        let started = Instant::now();
        loop {
            if let Ok(reply) = reqwest::get(&url).await
                && reply.status() == reqwest::StatusCode::OK
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{service} not ready after 60 s; see {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The name of replica `n` of `service`: `service` for the first, `service#n` after.
pub fn instance(service: &str, n: usize) -> String {
    match n {
        1 => service.to_owned(),
        n => format!("{service}#{n}"),
    }
}

fn replica_of(name: &str) -> usize {
    name.split_once('#')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1)
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
