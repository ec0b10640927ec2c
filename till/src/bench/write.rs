//! `till bench write`: M simulated shoppers through the gateway for T seconds — open a cart, add
//! three products, change a quantity, remove one, check out, again — with real tokens. The
//! gateway and the command API run as separate processes of this binary (`till serve …`), so
//! each one's peak memory can be read from the kernel; then again both in one process, where
//! the gateway hands requests to the API without a socket (as under `till up`). The same run
//! measures the raw-INSERT baseline of this machine's Postgres at the same concurrency, before
//! and after the shoppers, and compares with the mean of the two. With `--tracing`, the same load
//! runs again with every span exported over OTLP to a receiver in this process, and the report
//! says what exporting costs.

use clap::Args;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use platform::dev_issuer::DevIssuer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::load::{self, Load, Recorder, outcomes_line};
use super::report::{Phase, verdict};
use super::scratch::{ScratchDatabase, baseline_worker};

#[derive(Debug, Clone, Args)]
pub struct WriteBenchArgs {
    /// Concurrent shoppers, each with a token of their own.
    #[arg(long, default_value_t = 32)]
    pub shoppers: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of warm-up (not measured).
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Run the load a second time with every span exported over OTLP (to a receiver in this
    /// process) and report the overhead.
    #[arg(long)]
    pub tracing: bool,
}

const AUDIENCE: &str = "api://tillstream-bench";

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A service running as a child process.
struct ServiceProcess {
    name: &'static str,
    child: Child,
    log: std::path::PathBuf,
}

impl ServiceProcess {
    /// Peak resident memory (VmHWM) in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    }
}

async fn spawn_service(
    name: &'static str,
    services: &[&str],
    env: &[(&str, String)],
) -> anyhow::Result<ServiceProcess> {
    let log = std::env::temp_dir().join(format!("till-bench-{}.log", services.join("+")));
    let file = std::fs::File::create(&log)?;
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .args(services)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(ServiceProcess { name, child, log })
}

async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    service: &mut ServiceProcess,
) -> anyhow::Result<()> {
    for _ in 0..300 {
        if let Ok(Some(status)) = service.child.try_wait() {
            let log = std::fs::read_to_string(&service.log).unwrap_or_default();
            bail!(
                "{} exited ({status}) before it was ready:\n{log}",
                service.name
            );
        }
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} was not ready at {url} within 30 s", service.name)
}

pub async fn run(args: WriteBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.shoppers > 0 && args.seconds > 0,
        "shoppers and seconds must be positive"
    );
    let scratch = ScratchDatabase::create(u32::try_from(args.shoppers).unwrap_or(32)).await?;

    // The token issuer lives in this process; the services fetch its JWKS like any issuer's.
    let jwks_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let issuer_url = format!("http://{}/", jwks_listener.local_addr()?);
    let issuer = DevIssuer::ephemeral(&issuer_url, AUDIENCE)?;
    let jwks_router = issuer.router();
    tokio::spawn(async move { axum::serve(jwks_listener, jwks_router).await });

    let (command_addr, gateway_addr, query_addr) = (free_port()?, free_port()?, free_port()?);
    let gateway_ops_addr = free_port()?;
    let env = vec![
        ("DATABASE_URL", scratch.url.clone()),
        ("TILL_COMMAND_API_ADDR", command_addr.to_string()),
        ("TILL_GATEWAY_ADDR", gateway_addr.to_string()),
        ("TILL_GATEWAY_OPS_ADDR", gateway_ops_addr.to_string()),
        ("TILL_COMMAND_API_URL", format!("http://{command_addr}")),
        ("TILL_QUERY_API_URL", format!("http://{query_addr}")),
        ("TILL_JWT_ISSUER", issuer_url.clone()),
        ("TILL_JWT_AUDIENCE", AUDIENCE.to_owned()),
        (
            "TILL_JWKS_URL",
            format!("{issuer_url}.well-known/jwks.json"),
        ),
        // Every simulated shopper comes from 127.0.0.1; the per-IP limit would be the bottleneck.
        ("TILL_RATE_PER_IP", "1000000/1000000".to_owned()),
    ];
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.shoppers * 2)
        .build()?;
    println!(
        "till bench write: {} shoppers through the gateway, {} s (+{} s warm-up); services as processes",
        args.shoppers, args.seconds, args.warmup
    );
    let load = Load {
        workers: args.shoppers,
        warmup: Duration::from_secs(args.warmup),
        measured: Duration::from_secs(args.seconds),
    };
    let gateway = Gateway {
        env: &env,
        issuer: &issuer,
        http: &http,
        command_addr,
        gateway_addr,
        gateway_ops_addr,
        load,
    };
    // The baseline brackets the measured phases (before and after, their mean is the reference):
    // a machine that drifts while the bench runs moves both sides of the ratio alike.
    let pool = scratch.pool.clone();
    let insert = |label| {
        let pool = pool.clone();
        load::run(label, load, move |_, recorder| {
            baseline_worker(pool.clone(), recorder)
        })
    };
    let before = insert("baseline: single-row INSERT, before").await?;
    let (shoppers, rss) = gateway
        .measure(
            "commands through the gateway",
            "BENCH",
            Layout::Separate,
            &[],
        )
        .await?;
    let (together, together_rss) = gateway
        .measure(
            "… gateway + API in one process",
            "TOGETHER",
            Layout::Together,
            &[],
        )
        .await?;
    // The same load with every span exported, to a receiver in this process.
    let traced = match args.tracing {
        true => {
            let receiver = till::otlp_receiver::OtlpReceiver::start().await?;
            let exporting = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone())];
            let (traced, _) = gateway
                .measure(
                    "… with traces exported (OTLP)",
                    "TRACED",
                    Layout::Separate,
                    &exporting,
                )
                .await?;
            Some((traced, receiver.count()))
        }
        false => None,
    };

    let after = insert("baseline: single-row INSERT, after").await?;
    scratch.drop_database().await;

    println!("{}", before.line());
    println!("{}", after.line());
    let baseline = (before.per_second() + after.per_second()) / 2.0;
    println!("baseline: {baseline:.0} INSERTs/s, the mean of before and after");
    report(&shoppers, baseline, &rss);
    report_together(&together, baseline, &together_rss);
    if let Some((traced, spans)) = traced {
        println!("{}", traced.line());
        let overhead = 1.0 - traced.per_second() / shoppers.per_second().max(f64::EPSILON);
        println!(
            "tracing: {spans} spans exported; throughput {:.0}% of the run without exporting, \
             overhead {:.1}%   target < 10% {}",
            (1.0 - overhead) * 100.0,
            overhead * 100.0,
            verdict(overhead < 0.10)
        );
    }
    Ok(())
}

/// How the gateway and the command API run.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// Each in a process of its own, the gateway forwarding over HTTP (compose, Kubernetes).
    Separate,
    /// Both in one process (`till serve command-api gateway`, as `till up` runs them): the
    /// gateway hands requests to the command API without a socket.
    Together,
}

/// The gateway and the command API as processes, and the load driven through them.
struct Gateway<'a> {
    env: &'a [(&'a str, String)],
    issuer: &'a DevIssuer,
    http: &'a reqwest::Client,
    command_addr: SocketAddr,
    gateway_addr: SocketAddr,
    gateway_ops_addr: SocketAddr,
    load: Load,
}

impl Gateway<'_> {
    /// Starts the services (with `extra` variables), seeds products under `sku` and runs the
    /// shoppers; returns the phase and each service's peak RSS. The services stop after.
    async fn measure(
        &self,
        label: &'static str,
        sku: &str,
        layout: Layout,
        extra: &[(&str, String)],
    ) -> anyhow::Result<(Phase, Vec<(&'static str, Option<f64>)>)> {
        let env: Vec<(&str, String)> = self
            .env
            .iter()
            .cloned()
            .chain(extra.iter().cloned())
            .collect();
        let http = self.http;
        let mut processes = match layout {
            Layout::Separate => vec![
                spawn_service("command API", &["command-api"], &env).await?,
                spawn_service("gateway", &["gateway"], &env).await?,
            ],
            Layout::Together => {
                vec![spawn_service("both, one process", &["command-api", "gateway"], &env).await?]
            }
        };
        wait_ready(
            http,
            &format!("http://{}/readyz", self.command_addr),
            &mut processes[0],
        )
        .await?;
        let gateway = processes.len() - 1;
        wait_ready(
            http,
            &format!("http://{}/readyz", self.gateway_ops_addr),
            &mut processes[gateway],
        )
        .await?;
        let base = format!("http://{}", self.gateway_addr);
        let admin = self
            .issuer
            .token("bench-admin", &["admin"], Duration::from_secs(3600))?;
        let mut products = Vec::new();
        for i in 0..20 {
            let response = http
                .post(format!("{base}/v1/products"))
                .bearer_auth(&admin)
                .json(&json!({
                    "sku": format!("{sku}-{i}"), "name": format!("Bench product {i}"),
                    "category": "bench", "price": { "amount": 500 + i * 10, "currency": "EUR" },
                    "stock": 1_000_000_000
                }))
                .send()
                .await?;
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            anyhow::ensure!(
                status == StatusCode::CREATED,
                "seeding products: {status} {body}"
            );
            products.push(body["product_id"].as_str().unwrap_or_default().to_owned());
        }
        let issuer = self.issuer;
        let phase = load::run(label, self.load, |n, recorder| {
            let token = issuer
                .token(&format!("shopper-{n}"), &[], Duration::from_secs(3600))
                .unwrap_or_default();
            shopper(
                http.clone(),
                base.clone(),
                token,
                products.clone(),
                n,
                recorder,
            )
        })
        .await?;
        let rss = processes
            .iter()
            .map(|s| (s.name, s.peak_rss_mib()))
            .collect();
        Ok((phase, rss))
    }
}

/// The services-as-processes phase against `baseline` INSERTs/s.
fn report(shoppers: &Phase, baseline: f64, rss: &[(&str, Option<f64>)]) {
    println!("{}", shoppers.line());
    println!("  by status: {}", outcomes_line(&shoppers.outcomes));
    let ratio = shoppers.per_second() / baseline.max(f64::EPSILON);
    println!(
        "ratio (commands / raw INSERTs): {:.0}%   target >= 40% {}",
        ratio * 100.0,
        verdict(ratio >= 0.40)
    );
    print_rss(rss);
    let unexpected: u64 = shoppers
        .outcomes
        .iter()
        .filter(|(status, _)| !matches!(**status, 200 | 201 | 202 | 409))
        .map(|(_, n)| n)
        .sum();
    println!(
        "targets: p99 <= 15 ms {}   errors other than 409: {unexpected} {}",
        verdict(shoppers.ms(0.99) <= 15.0),
        verdict(unexpected == 0),
    );
}

/// Each service's peak RSS against the target of 32 MiB.
fn print_rss(rss: &[(&str, Option<f64>)]) {
    for (name, mib) in rss {
        match mib {
            Some(mib) => println!(
                "peak RSS {name:<12} {mib:>6.1} MiB   target <= 32 MiB   {}",
                verdict(*mib <= 32.0)
            ),
            None => println!("peak RSS {name:<12} unknown"),
        }
    }
}

/// The one-process layout, against the same baseline.
fn report_together(phase: &Phase, baseline: f64, rss: &[(&str, Option<f64>)]) {
    println!("{}", phase.line());
    let ratio = phase.per_second() / baseline.max(f64::EPSILON);
    println!(
        "ratio in one process (commands / raw INSERTs): {:.0}%   target >= 50% {}   p99 <= 15 ms {}",
        ratio * 100.0,
        verdict(ratio >= 0.50),
        verdict(phase.ms(0.99) <= 15.0)
    );
    // One process holds both services: no per-service target.
    for (name, mib) in rss {
        if let Some(mib) = mib {
            println!("peak RSS {name:<12} {mib:>6.1} MiB");
        }
    }
}

/// One shopper's loop: cart, three adds, a change, a removal, a checkout; again.
async fn shopper(
    http: reqwest::Client,
    base: String,
    token: String,
    products: Vec<String>,
    n: usize,
    mut recorder: Recorder,
) -> anyhow::Result<Phase> {
    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut request = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            Ok::<_, anyhow::Error>((status, body))
        }
    };
    let mut round = n;
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    while recorder.running() {
        let mut cart_body = Value::Null;
        recorder
            .time(async {
                let (status, body) = send(reqwest::Method::POST, "/v1/carts".into(), None).await?;
                cart_body = body;
                Ok(status)
            })
            .await?;
        let Some(cart) = cart_body["cart_id"].as_str().map(str::to_owned) else {
            *statuses.entry(0).or_default() += 1;
            continue;
        };
        let picks: Vec<&String> = (0..3)
            .map(|k| &products[(round + k * 7) % products.len()])
            .collect();
        round += 1;
        for product in &picks {
            let body = json!({ "product_id": product, "quantity": 1 });
            recorder
                .time(async {
                    Ok(send(
                        reqwest::Method::POST,
                        format!("/v1/carts/{cart}/items"),
                        Some(body),
                    )
                    .await?
                    .0)
                })
                .await?;
        }
        recorder
            .time(async {
                let path = format!("/v1/carts/{cart}/items/{}", picks[0]);
                Ok(
                    send(reqwest::Method::PUT, path, Some(json!({ "quantity": 2 })))
                        .await?
                        .0,
                )
            })
            .await?;
        recorder
            .time(async {
                let path = format!("/v1/carts/{cart}/items/{}", picks[1]);
                Ok(send(reqwest::Method::DELETE, path, None).await?.0)
            })
            .await?;
        recorder
            .time(async {
                Ok(send(
                    reqwest::Method::POST,
                    format!("/v1/carts/{cart}/checkout"),
                    None,
                )
                .await?
                .0)
            })
            .await?;
    }
    Ok(recorder.finish())
}
