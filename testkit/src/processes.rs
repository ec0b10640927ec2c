//! The system as separate processes, `till serve <service>` each, as compose and Kubernetes
//! run it: for the tests that kill a process, count what each one exports, or read what each
//! one's operations port says. Every service gets free ports, the test's database, bus prefix
//! and Redis prefix, and the test issuer; the test adds or overrides variables.

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
    ports: HashMap<&'static str, u16>,
    children: HashMap<&'static str, Child>,
    /// One log file per service.
    pub logs: std::path::PathBuf,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

impl Processes {
    /// The environment for every service of `binary` (the `till` executable, from
    /// `env!("CARGO_BIN_EXE_till")`), plus `extra` (later entries win). Nothing starts yet.
    pub fn new(binary: &str, dependencies: &Dependencies, extra: &[(&str, String)]) -> Self {
        let ports: HashMap<&'static str, u16> = SERVICES
            .iter()
            .copied()
            .chain(["gateway-ops"])
            .map(|s| (s, free_port()))
            .collect();
        let addr = |service: &str| format!("127.0.0.1:{}", ports[service]);
        let url = |service: &str| format!("http://127.0.0.1:{}", ports[service]);
        let identity = crate::system::identity();
        let prefix = &dependencies.prefix;
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", dependencies.database_url.clone()),
            ("AMQP_URL", dependencies.amqp_url.clone()),
            ("REDIS_URL", dependencies.redis_url.clone()),
            ("TILL_REDIS_PREFIX", prefix.clone()),
            ("TILL_BUS_PREFIX", prefix.clone()),
            ("TILL_DATABASE_CONNECTIONS", "4".to_owned()),
            ("TILL_JWT_ISSUER", identity.issuer.clone()),
            ("TILL_JWT_AUDIENCE", identity.audience.clone()),
            ("TILL_JWKS_URL", identity.jwks_url.clone()),
            ("TILL_GATEWAY_ADDR", addr("gateway")),
            ("TILL_GATEWAY_OPS_ADDR", addr("gateway-ops")),
            ("TILL_COMMAND_API_ADDR", addr("command-api")),
            ("TILL_QUERY_API_ADDR", addr("query-api")),
            ("TILL_RELAY_ADDR", addr("relay")),
            ("TILL_PROJECTORS_ADDR", addr("projectors")),
            ("TILL_PROCESSES_ADDR", addr("processes")),
            ("TILL_COMMAND_API_URL", url("command-api")),
            ("TILL_QUERY_API_URL", url("query-api")),
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
            children: HashMap::new(),
            logs,
        }
    }

    /// `http://…` of a service's port: the public one for the gateway, the only one for the
    /// others; `"gateway-ops"` is the gateway's operations port.
    pub fn url(&self, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[service])
    }

    /// Where a service answers `/livez`, `/readyz` and `/metrics`.
    pub fn operations_url(&self, service: &str) -> String {
        self.url(if service == "gateway" {
            "gateway-ops"
        } else {
            service
        })
    }

    /// Starts every service and waits until each is ready.
    pub async fn start_all(&mut self) {
        for service in SERVICES {
            self.spawn(service);
        }
        for service in SERVICES {
            self.wait_ready(service).await;
        }
    }

    /// Starts `till serve <service>`, appending to its log.
    pub fn spawn(&mut self, service: &'static str) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{service}.log")))
            .expect("log file");
        let child = Command::new(&self.binary)
            .args(["serve", service])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start till serve");
        self.children.insert(service, child);
    }

    /// SIGKILL: no shutdown, no flush, whatever was in flight is lost to the process.
    pub fn kill(&mut self, service: &'static str) {
        if let Some(mut child) = self.children.remove(service) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (up to 60 s) until the service's `/readyz` answers 200.
    pub async fn wait_ready(&self, service: &'static str) {
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

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
