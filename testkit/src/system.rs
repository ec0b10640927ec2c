//! An in-process Tillstream for end-to-end tests: its own database, bus and key prefix, a
//! development issuer, and the services on free ports. Requests go through the gateway with
//! real RS256 tokens, exactly as a client's would.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use eventstore::EventStore;
use platform::dev_issuer::DevIssuer;
use platform::identity::IdentitySettings;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use till::services::{self, Service};
use till::settings::SystemConfig;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::TestBus;
use crate::database::TestDatabase;

pub const AUDIENCE: &str = "api://tillstream-test";

/// One issuer (and its JWKS server, on a thread of its own) for the whole test binary: key
/// generation is the slow part, and every test can share the key.
pub fn issuer() -> &'static DevIssuer {
    static ISSUER: OnceLock<DevIssuer> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the JWKS server");
        let addr = listener.local_addr().expect("address");
        let issuer = DevIssuer::ephemeral(&format!("http://{addr}/"), AUDIENCE).expect("issuer");
        let router = issuer.router();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, router).await.expect("serve JWKS");
            });
        });
        issuer
    })
}

pub fn identity() -> IdentitySettings {
    let issuer = issuer();
    IdentitySettings {
        issuer: issuer.issuer().to_owned(),
        audience: issuer.audience().to_owned(),
        jwks_url: format!("{}.well-known/jwks.json", issuer.issuer()),
        leeway: Duration::from_secs(30),
        refresh_interval: Duration::from_secs(30),
    }
}

pub fn token(sub: &str, roles: &[&str]) -> String {
    issuer()
        .token(sub, roles, Duration::from_secs(600))
        .expect("sign a token")
}

pub struct TestSystem {
    pub db: TestDatabase,
    pub store: EventStore,
    pub gateway: String,
    /// The gateway's operations port (`/livez`, `/readyz`, `/metrics`).
    pub gateway_ops: String,
    pub command_api: String,
    pub http: reqwest::Client,
    pub topology: messaging::Topology,
    pub cart_keys: platform::read_models::CartKeys,
    pub config: SystemConfig,
    shutdown: CancellationToken,
    /// The bus, when the relay runs: its queues and exchange are deleted after the test.
    _bus: Option<TestBus>,
}

impl std::fmt::Debug for TestSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestSystem")
            .field("gateway", &self.gateway)
            .field("database", &self.db.url)
            .finish_non_exhaustive()
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if self._bus.is_some() {
            crate::redis::delete_keys_after(self.cart_keys.prefix.clone());
        }
    }
}

/// The settings of a system on `database_url` with a bus and key prefix named after `id`,
/// every service on a free port, short timers, and tokens from [`issuer`]. The gateway's
/// upstreams point nowhere until [`SystemConfig::link_gateway`] links them.
pub fn settings_for_tests(database_url: &str, id: &str) -> SystemConfig {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    // A port nothing listens on, for the query API when it is not started.
    let closed = std::net::TcpListener::bind(any).expect("bind");
    let nowhere = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let gateway = gateway::GatewaySettings {
        listen: any,
        ops_listen: any,
        command_api: nowhere.clone(),
        query_api: nowhere,
        per_user: (10_000, 10_000),
        per_ip: (10_000, 10_000),
        upstream_timeout: Duration::from_secs(10),
        cors_origins: vec![],
        sign_in_url: None,
    };
    SystemConfig {
        database_url: database_url.to_owned(),
        database_connections: 24,
        append_batch: eventstore::GroupCommit::default().max_batch,
        amqp_url: platform::settings::amqp_url(),
        redis_url: platform::settings::redis_url(),
        identity: identity(),
        dev_issuer_addr: None,
        topology: messaging::Topology::new(format!("test-{id}")),
        cart_keys: platform::read_models::CartKeys {
            prefix: format!("test-{id}"),
        },
        command_api_addr: any,
        query_api_addr: any,
        consistency_wait: Duration::from_secs(5),
        relay_poll_interval: Duration::from_millis(50),
        relay_ops_addr: any,
        projectors_ops_addr: any,
        processes_ops_addr: any,
        payment_window: Duration::from_secs(60),
        deadline_interval: Duration::from_millis(100),
        redis_check_interval: Duration::from_millis(200),
        provider_slow: Duration::from_millis(300),
        payments: till::settings::Payments::Simulated,
        reconcile_after: Duration::from_secs(1),
        gateway,
        link_gateway: true,
    }
}

impl TestSystem {
    /// The write side only: gateway and command API (reads answer 503).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The write side, with the settings changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut SystemConfig)) -> Self {
        Self::launch(&[Service::CommandApi, Service::Gateway], configure).await
    }

    /// Everything, with the settings changed by `configure`.
    pub async fn start_full_with(configure: impl FnOnce(&mut SystemConfig)) -> Self {
        Self::launch(&Service::ALL, configure).await
    }

    /// Everything: gateway, command and query APIs, relay and projectors, on a bus and a Redis
    /// prefix of this test's own.
    pub async fn start_full() -> Self {
        Self::launch(&Service::ALL, |_| {}).await
    }

    /// Everything but the projectors, which the test starts (and stops) itself with
    /// [`TestSystem::start_projectors`].
    pub async fn start_without_projectors() -> Self {
        Self::start_without_projectors_with(|_| {}).await
    }

    /// Everything but the projectors, with the settings changed by `configure`.
    pub async fn start_without_projectors_with(configure: impl FnOnce(&mut SystemConfig)) -> Self {
        let services: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|s| *s != Service::Projectors)
            .collect();
        Self::launch(&services, configure).await
    }

    /// The gateway and both APIs, nothing on the bus: for what the APIs do when RabbitMQ is
    /// away (they start without it).
    pub async fn start_apis_with(configure: impl FnOnce(&mut SystemConfig)) -> Self {
        let apis = [Service::CommandApi, Service::QueryApi, Service::Gateway];
        Self::launch(&apis, configure).await
    }

    /// Starts the projectors; cancelling the returned token stops them (like a killed process:
    /// whatever they had not acked is redelivered to the next ones).
    pub async fn start_projectors(&self) -> CancellationToken {
        let token = self.shutdown.child_token();
        let mut tasks = JoinSet::new();
        services::start(&[Service::Projectors], &self.config, &mut tasks, &token)
            .await
            .expect("start the projectors");
        tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
        token
    }

    async fn launch(services: &[Service], configure: impl FnOnce(&mut SystemConfig)) -> Self {
        let db = TestDatabase::with_pool_size(8).await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut config = settings_for_tests(&db.url, &id);
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let started = services::start(services, &config, &mut tasks, &shutdown)
            .await
            .expect("start the system");
        // The services run until the shutdown token is cancelled (on drop).
        tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
        let addr = |service: Service| {
            started
                .iter()
                .find(|s| s.service == service)
                .map(|s| format!("http://{}", s.addr))
                .unwrap_or_default()
        };
        Self {
            store: EventStore::new(db.pool.clone()),
            gateway: addr(Service::Gateway),
            gateway_ops: started
                .iter()
                .find(|s| s.name == "gateway (ops)")
                .map(|s| format!("http://{}", s.addr))
                .unwrap_or_default(),
            command_api: addr(Service::CommandApi),
            http: reqwest::Client::new(),
            topology: config.topology.clone(),
            cart_keys: config.cart_keys.clone(),
            _bus: services.contains(&Service::Relay).then(|| {
                let bus = TestBus::with_topology(config.topology.clone());
                for (consumer, _) in services::consumers() {
                    bus.consumer(consumer);
                }
                bus
            }),
            config,
            db,
            shutdown,
        }
    }

    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.gateway));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::from(request.send().await.expect("the gateway answers")).await
    }

    /// Polls `user`'s view of `order` until its status is `want`; returns that view (panics
    /// after 20 s, showing the last one).
    pub async fn order_becomes(&self, user: &str, order: &str, want: &str) -> Value {
        let started = std::time::Instant::now();
        loop {
            let view = self
                .send(
                    Method::GET,
                    &format!("/v1/orders/{order}"),
                    Some(&token(user, &[])),
                    None,
                )
                .await;
            if view.body["status"] == want {
                return view.body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "order {order} never became {want}: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    /// Creates a product as an admin; returns its id.
    pub async fn product(&self, sku: &str, price: i64, stock: u32) -> String {
        let reply = self
            .post(
                "/v1/products",
                &token("admin", &["admin"]),
                serde_json::json!({
                    "sku": sku, "name": format!("Product {sku}"), "description": "",
                    "category": "tests", "price": { "amount": price, "currency": "EUR" },
                    "stock": stock
                }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body["product_id"]
            .as_str()
            .expect("product id")
            .to_owned()
    }

    /// Opens a cart for `user`; returns its id.
    pub async fn cart(&self, user: &str) -> String {
        let reply = self
            .send(Method::POST, "/v1/carts", Some(&token(user, &[])), None)
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body["cart_id"].as_str().expect("cart id").to_owned()
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem `type`'s last segment, for problem+json answers.
    pub fn problem_code(&self) -> &str {
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "not a problem: {self:?}"
        );
        self.body["type"]
            .as_str()
            .and_then(|t| t.rsplit('/').next())
            .unwrap_or_default()
    }
}
