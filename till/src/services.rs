//! Starting Tillstream's services, alone (`till serve <service>`), all in one process
//! (`till up`), or inside a test. Each service is a library; this module only wires a
//! [`SystemConfig`], listeners and the shared shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use eventstore::{EventStore, GroupCommit};
use messaging::{
    ConsumerGroup, ConsumerSettings, Handler, Relay, RelaySettings, RelayState, Topology,
};
use platform::database::{PoolSettings, connect, create_and_migrate};
use platform::dev_issuer::DevIssuer;
use platform::http::{Readiness, operational_routes};
use platform::identity::JwtVerifier;
use platform::read_models::CartKeys;
use platform::read_models::PROJECTIONS;
use platform::settings::redact;
use processes::stripe::StripeProvider;
use processes::{AnyProvider, ORDER_PROCESS, OrderProcess, SimulatedProvider};
use projectors::live::LiveProjector;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::settings::{Payments, SystemConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// The local development token issuer (JWKS).
    DevIssuer,
    /// The write side.
    CommandApi,
    /// The read side.
    QueryApi,
    /// Event store → RabbitMQ.
    Relay,
    /// The read-model projectors (products, orders, carts).
    Projectors,
    /// The order process (stock, payments, refunds) and the payment deadline worker.
    Processes,
    /// The public port: auth, rate limits, routing.
    Gateway,
}

impl Service {
    /// Everything, in start order (the gateway last, so it can point at the others).
    pub const ALL: [Service; 7] = [
        Service::DevIssuer,
        Service::CommandApi,
        Service::QueryApi,
        Service::Relay,
        Service::Projectors,
        Service::Processes,
        Service::Gateway,
    ];

    /// The service's name on the command line (`till serve <slug>`).
    pub fn slug(self) -> &'static str {
        match self {
            Self::DevIssuer => "dev-issuer",
            Self::CommandApi => "command-api",
            Self::QueryApi => "query-api",
            Self::Relay => "relay",
            Self::Projectors => "projectors",
            Self::Processes => "processes",
            Self::Gateway => "gateway",
        }
    }

    fn needs_database(self) -> bool {
        !matches!(self, Self::Gateway | Self::DevIssuer)
    }

    /// Services whose statements are all keyed lookups and appends: they get a pool that
    /// plans each statement once (see [`PoolSettings::generic_plans`]).
    fn writes_events(self) -> bool {
        matches!(self, Self::CommandApi | Self::Processes)
    }

    fn needs_redis(self) -> bool {
        // (The gateway keeps its rate limits there too, on a connection of its own.)
        matches!(self, Self::QueryApi | Self::Projectors)
    }

    fn needs_rabbitmq(self) -> bool {
        matches!(self, Self::Relay | Self::Projectors | Self::Processes)
    }
}

/// The relay's pool when it runs alone: it reads the log one batch at a time.
const RELAY_CONNECTIONS: u32 = 2;

/// How often each projectors replica looks for rebuilds an admin asked for (a click in the
/// console starts within this).
const REBUILD_REQUESTS_INTERVAL: Duration = Duration::from_millis(500);

/// Aggregate states the command API keeps in memory (a few KiB each at most).
pub const COMMAND_CACHE_CAPACITY: usize = 4096;

/// A started HTTP service: its name and address, for the banner and for tests.
#[derive(Debug, Clone)]
pub struct Started {
    pub service: Service,
    pub name: &'static str,
    pub addr: SocketAddr,
}

async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!(
            "{name} cannot listen on {addr}: is another instance running? (its address variable moves it)"
        )
    })?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Connects to Redis, or says where it was expected and how to start it.
pub async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    let unreachable = || {
        format!(
            "Redis is not reachable at {}: start it with `redis-server --daemonize yes` (or \
             `docker compose up -d redis`), or point REDIS_URL at a running server",
            redact(url)
        )
    };
    let client = redis::Client::open(url).with_context(unreachable)?;
    // A request while Redis is away fails within about a second (503 to the caller) instead of
    // waiting out the crate's default of six reconnection attempts (~13 s, past the gateway's
    // upstream timeout); the manager keeps reconnecting on later requests.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(3))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(2)
        .set_max_delay(500);
    tokio::time::timeout(
        Duration::from_secs(5),
        redis::aio::ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| anyhow::anyhow!(unreachable()))?
    .with_context(unreachable)
}

/// Every consumer of the bus: its name and binding patterns — each projection of the registry
/// and each process. The relay declares their queues before it publishes anything, so no event
/// is ever routed to nowhere on a fresh broker (a message to a topic exchange with no matching
/// queue is dropped).
pub fn consumers() -> Vec<(&'static str, Vec<String>)> {
    let mut consumers: Vec<(&'static str, Vec<String>)> = PROJECTIONS
        .iter()
        .map(|p| (p.consumer, vec![p.binding()]))
        .collect();
    let (name, bindings) = ORDER_PROCESS;
    consumers.push((name, bindings.iter().map(|b| (*b).to_owned()).collect()));
    consumers
}

/// The relay's name on `topology`'s bus: its lock and its checkpoint in the event store.
pub fn relay_name(topology: &Topology) -> String {
    format!("relay:{}", topology.prefix())
}

/// Connects to RabbitMQ — or says where it was expected and how to start it; the relay and the
/// consumers reconnect by themselves later, this is for a clear message at start-up — and
/// declares every consumer's queue (see [`consumers`]).
async fn prepare_bus(config: &SystemConfig) -> anyhow::Result<()> {
    let url = &config.amqp_url;
    let connection = tokio::time::timeout(
        Duration::from_secs(5),
        messaging::connect(url, "till-start-up"),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| {
        format!(
            "RabbitMQ is not reachable at {}: start it with `rabbitmq-server -detached` (or \
                 `docker compose up -d rabbitmq`), or point AMQP_URL at a running broker",
            redact(url)
        )
    })?;
    let channel = connection.create_channel().await?;
    let partitioned = config.topology.partitions() > 1;
    for (name, bindings) in consumers() {
        config
            .topology
            .declare_consumer(&channel, name, &bindings)
            .await
            .with_context(|| match partitioned {
                // The usual cause: the exchange type is a plugin's.
                true => format!(
                    "declaring the {} partitions of {name} (TILL_PARTITIONS > 1 needs RabbitMQ's                      consistent-hash exchange: `rabbitmq-plugins enable                      rabbitmq_consistent_hash_exchange`)",
                    config.topology.partitions()
                ),
                false => format!("declaring the queue of {name}"),
            })?;
        config
            .topology
            .retire_other_layouts(&connection, name, &bindings)
            .await
            .with_context(|| format!("retiring an earlier partition layout of {name}"))?;
    }
    let _ = connection.close(200, "declared").await;
    Ok(())
}

/// The pools `services` need: one for the write side and one for everything else, each
/// only if some service uses it.
async fn databases(
    services: &[Service],
    config: &SystemConfig,
) -> anyhow::Result<(Option<PgPool>, Option<PgPool>)> {
    if !services.iter().any(|s| s.needs_database()) {
        return Ok((None, None));
    }
    create_and_migrate(&config.database_url).await?;
    let pool = |generic_plans: bool| {
        let settings = PoolSettings {
            max_connections: config.database_connections,
            generic_plans,
            ..PoolSettings::default()
        };
        async move { connect(&config.database_url, &settings).await }
    };
    let writes = match services.iter().any(|s| s.writes_events()) {
        true => Some(pool(true).await?),
        false => None,
    };
    let readers: Vec<&Service> = services
        .iter()
        .filter(|s| s.needs_database() && !s.writes_events())
        .collect();
    let reads = match readers.as_slice() {
        [] => None,
        // The relay alone reads the log one batch at a time: two connections are plenty.
        [Service::Relay] => Some(
            connect(
                &config.database_url,
                &PoolSettings {
                    max_connections: RELAY_CONNECTIONS.min(config.database_connections),
                    ..PoolSettings::default()
                },
            )
            .await?,
        ),
        _ => Some(pool(false).await?),
    };
    Ok((writes, reads))
}

/// Keeps the `db_pool_connections{pool, state}` gauges (in use, idle, max) current.
async fn report_pool_use(
    name: &'static str,
    pool: PgPool,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        let (size, idle) = (pool.size(), pool.num_idle() as u32);
        let gauge = |state: &'static str, value: u32| {
            metrics::gauge!("db_pool_connections", "pool" => name, "state" => state)
                .set(f64::from(value));
        };
        gauge("in_use", size.saturating_sub(idle));
        gauge("idle", idle);
        gauge("max", pool.options().get_max_connections());
    }
    Ok(())
}

/// Starts `services` into `tasks`; they stop when `shutdown` is cancelled.
pub async fn start(
    services: &[Service],
    config: &SystemConfig,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Started>> {
    // The metrics recorder first: series registered while the services are built count.
    let _ = platform::http::metrics_handle();
    let verifier = JwtVerifier::new(config.identity.clone());
    if services.iter().any(|s| s.needs_rabbitmq()) {
        prepare_bus(config).await?;
    }
    let redis = match services.iter().any(|s| s.needs_redis()) {
        true => Some(connect_redis(&config.redis_url).await?),
        false => None,
    };
    let (write_pool, pool) = databases(services, config).await?;
    for (name, pool) in [("writes", &write_pool), ("reads", &pool)] {
        if let Some(pool) = pool {
            tasks.spawn(report_pool_use(name, pool.clone(), shutdown.clone()));
        }
    }
    // One store per pool, cloned into each service: a store's own connections (see
    // `eventstore::connections`) and its append notifier are shared by its clones, not opened
    // again per service.
    let write_store = write_pool.clone().map(|pool| {
        let store = EventStore::new(pool).with_append_notifications();
        match config.append_batch {
            1 => store,
            max_batch => store.with_group_commit(GroupCommit { max_batch }),
        }
    });
    let store = pool.clone().map(EventStore::new);
    let mut started: Vec<Started> = Vec::new();
    let mut gateway_settings = config.gateway.clone();
    let mut local_apis = gateway::LocalUpstreams::default();

    for &service in services {
        match service {
            Service::DevIssuer => {
                // Only when tokens come from it; with a real issuer there is nothing to serve.
                let Some(addr) = config.dev_issuer_addr else {
                    continue;
                };
                let issuer = DevIssuer::load_default()?;
                let (listener, addr) = bind("the development issuer", addr).await?;
                spawn_http(tasks, listener, issuer.router(), shutdown);
                started.push(Started {
                    service,
                    name: "dev issuer (JWKS)",
                    addr,
                });
            }
            Service::CommandApi => {
                let state = command_api::AppState {
                    store: write_store
                        .clone()
                        .context("needs the database")?
                        .with_aggregate_cache(COMMAND_CACHE_CAPACITY),
                    verifier: Arc::clone(&verifier),
                    stripe_webhook_secrets: Arc::new(config.payments.stripe_webhook_secrets()),
                    turns: Arc::default(),
                };
                let (listener, addr) = bind("the command API", config.command_api_addr).await?;
                let api = command_api::router(state);
                local_apis.command_api = Some(api.clone());
                spawn_http(tasks, listener, api, shutdown);
                if config.link_gateway {
                    gateway_settings.command_api = format!("http://{addr}");
                }
                started.push(Started {
                    service,
                    name: "command API",
                    addr,
                });
            }
            Service::QueryApi => {
                let cart_wakeups = Arc::new(query_api::consistency::CartWakeups::default());
                let client = redis::Client::open(config.redis_url.as_str())?;
                let (wakeups, keys, stop) = (
                    Arc::clone(&cart_wakeups),
                    config.cart_keys.clone(),
                    shutdown.clone(),
                );
                tasks.spawn(async move {
                    wakeups.listen(client, keys, stop).await;
                    Ok(())
                });
                let serving = Arc::new(query_api::serving::ServingVersions::default());
                let (versions, url, stop) = (
                    Arc::clone(&serving),
                    config.database_url.clone(),
                    shutdown.clone(),
                );
                tasks.spawn(async move {
                    versions.listen(&url, stop).await;
                    Ok(())
                });
                let state = query_api::AppState {
                    pool: pool.clone().context("needs the database")?,
                    store: store.clone().context("needs the database")?,
                    redis: redis.clone().context("needs Redis")?,
                    cart_keys: config.cart_keys.clone(),
                    verifier: Arc::clone(&verifier),
                    consistency_wait: config.consistency_wait,
                    cart_wakeups,
                    serving,
                    operations: Arc::new(query_api::routes::consumers::Operations {
                        broker: messaging::backlog::BrokerLink::new(
                            config.amqp_url.clone(),
                            "query-api (operations)",
                        ),
                        topology: config.topology.clone(),
                        consumers: consumers().into_iter().map(|(name, _)| name).collect(),
                        relay_checkpoint: relay_name(&config.topology),
                    }),
                };
                let (listener, addr) = bind("the query API", config.query_api_addr).await?;
                let api = query_api::router(state);
                local_apis.query_api = Some(api.clone());
                spawn_http(tasks, listener, api, shutdown);
                if config.link_gateway {
                    gateway_settings.query_api = format!("http://{addr}");
                }
                started.push(Started {
                    service,
                    name: "query API",
                    addr,
                });
            }
            Service::Relay => {
                let mut settings = RelaySettings::new(config.amqp_url.clone());
                settings.poll_interval = config.relay_poll_interval;
                // One relay per bus: the lock and checkpoint are named after the topology.
                settings.name = relay_name(&config.topology);
                settings.checkpoint = settings.name.clone();
                let relay = Relay::new(
                    store.clone().context("needs the database")?,
                    config.topology.clone(),
                    settings,
                );
                let handle = relay.handle();
                let readiness = Readiness::default().check("relay", move || {
                    let status = handle.status();
                    async move {
                        match status.state {
                            RelayState::Active if status.amqp_connected => Ok(()),
                            RelayState::WaitingForLock => Ok(()),
                            state => Err(format!(
                                "{state:?}: {}",
                                status.last_error.unwrap_or_default()
                            )),
                        }
                    }
                });
                let (listener, addr) =
                    bind("the relay's operations port", config.relay_ops_addr).await?;
                spawn_http(tasks, listener, operational_routes(readiness), shutdown);
                started.push(Started {
                    service,
                    name: "relay (ops)",
                    addr,
                });
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    relay.run(shutdown).await;
                    Ok(())
                });
            }
            Service::Projectors => {
                let pool = pool.clone().context("needs the database")?;
                let redis = redis.clone().context("needs Redis")?;
                let store = store.clone().context("needs the database")?;
                let mut handles = Vec::with_capacity(PROJECTIONS.len());
                for projection in &PROJECTIONS {
                    let projector = LiveProjector::for_projection(
                        projection,
                        0,
                        pool.clone(),
                        redis.clone(),
                        config.cart_keys.clone(),
                        store.clone(),
                    )?;
                    let settings =
                        projectors::live::consumer_settings(projection, config.amqp_url.clone());
                    handles.extend(spawn_consumer(
                        tasks,
                        &config.topology,
                        settings,
                        |partition| projector.in_lane(partition),
                        shutdown,
                    ));
                }
                let readiness = Readiness::default().check("consumers", move || {
                    let down: Vec<String> = handles
                        .iter()
                        .filter(|(_, h)| !h.status().connected)
                        .map(|(name, _)| name.clone())
                        .collect();
                    async move {
                        match down.is_empty() {
                            true => Ok(()),
                            false => Err(format!("not connected: {}", down.join(", "))),
                        }
                    }
                });
                let (listener, addr) = bind(
                    "the projectors' operations port",
                    config.projectors_ops_addr,
                )
                .await?;
                spawn_http(tasks, listener, operational_routes(readiness), shutdown);
                started.push(Started {
                    service,
                    name: "projectors (ops)",
                    addr,
                });
                let healer = projectors::heal::Healer {
                    store: store.clone(),
                    redis: redis.clone(),
                    keys: config.cart_keys.clone(),
                    interval: config.redis_check_interval,
                };
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    healer.run(stop).await;
                    Ok(())
                });
                let requests = projectors::requests::RebuildRequests {
                    store: store.clone(),
                    redis: redis.clone(),
                    keys: config.cart_keys.clone(),
                    interval: REBUILD_REQUESTS_INTERVAL,
                };
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    requests.run(stop).await;
                    Ok(())
                });
                spawn_lag_monitor(tasks, pool, redis, config.cart_keys.clone(), shutdown);
            }
            Service::Processes => {
                let pool = write_pool.clone().context("needs the database")?;
                let store = write_store.clone().context("needs the database")?;
                let process = OrderProcess {
                    store: store.clone(),
                    pool: pool.clone(),
                    provider: match &config.payments {
                        Payments::Simulated => AnyProvider::Simulated(SimulatedProvider {
                            pool,
                            slow: config.provider_slow,
                        }),
                        Payments::Stripe(stripe) => {
                            AnyProvider::Stripe(StripeProvider::new(stripe.clone()))
                        }
                    },
                    payment_window: chrono::Duration::from_std(config.payment_window)?,
                };
                let (name, bindings) = ORDER_PROCESS;
                let settings =
                    ConsumerSettings::new(name, bindings.iter().copied(), config.amqp_url.clone());
                let handles = spawn_consumer(
                    tasks,
                    &config.topology,
                    settings,
                    |_| process.clone(),
                    shutdown,
                );
                let readiness = Readiness::default().check("order process", move || {
                    let down: Vec<String> = handles
                        .iter()
                        .map(|(_, h)| h.status())
                        .filter(|status| !status.connected)
                        .map(|status| status.last_error.unwrap_or_else(|| "not connected".into()))
                        .collect();
                    async move {
                        match down.first() {
                            None => Ok(()),
                            Some(error) => Err(error.clone()),
                        }
                    }
                });
                let (listener, addr) =
                    bind("the processes' operations port", config.processes_ops_addr).await?;
                spawn_http(tasks, listener, operational_routes(readiness), shutdown);
                started.push(Started {
                    service,
                    name: "processes (ops)",
                    addr,
                });
                if let Payments::Stripe(stripe) = &config.payments {
                    // Lost webhooks: ask Stripe about payments left undecided.
                    let (store, provider) = (store.clone(), StripeProvider::new(stripe.clone()));
                    let after = config.reconcile_after;
                    let interval = (after / 4).max(Duration::from_millis(250));
                    let stop = shutdown.clone();
                    tasks.spawn(async move {
                        processes::reconcile::run(store, provider, after, interval, stop).await;
                        Ok(())
                    });
                }
                let (interval, shutdown) = (config.deadline_interval, shutdown.clone());
                tasks.spawn(async move {
                    processes::deadlines::run(store, interval, shutdown).await;
                    Ok(())
                });
            }
            Service::Gateway => {
                // A connection of its own: a verdict given up on (Redis slow or away) must not
                // hold up the query API's reads on a shared one.
                let limits = gateway::RateLimits::shared(
                    connect_redis(&config.redis_url).await?,
                    &config.cart_keys.prefix,
                    gateway_settings.per_ip,
                    gateway_settings.per_user,
                );
                // The APIs started above, in this process, are called without a socket.
                let routers = gateway::router_with(
                    gateway_settings.clone(),
                    Arc::clone(&verifier),
                    limits,
                    local_apis.clone(),
                )?;
                let (listener, addr) = bind("the gateway", gateway_settings.listen).await?;
                spawn_http(tasks, listener, routers.public, shutdown);
                started.push(Started {
                    service,
                    name: "gateway",
                    addr,
                });
                let (listener, addr) =
                    bind("the gateway's operations port", gateway_settings.ops_listen).await?;
                spawn_http(tasks, listener, routers.operations, shutdown);
                started.push(Started {
                    service,
                    name: "gateway (ops)",
                    addr,
                });
            }
        }
    }
    Ok(started)
}

/// Refreshes the projection lag gauges every few seconds.
fn spawn_lag_monitor(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    pool: PgPool,
    mut redis: redis::aio::ConnectionManager,
    keys: CartKeys,
    shutdown: &CancellationToken,
) {
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    if let Err(e) = projectors::status::measure(&pool, &mut redis, &keys).await {
                        tracing::warn!(error = %e, "measuring projection lag failed");
                    }
                }
            }
        }
    });
}

/// Starts a consumer's runners — one, or one per partition with its balancer — and returns
/// each one's queue and status.
fn spawn_consumer<H: Handler>(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    topology: &Topology,
    settings: ConsumerSettings,
    handler: impl FnMut(u16) -> H,
    shutdown: &CancellationToken,
) -> Vec<(String, messaging::ConsumerHandle)> {
    let group = ConsumerGroup::new(topology, settings, handler);
    let mut handles = Vec::with_capacity(group.runners.len());
    for runner in group.runners {
        handles.push((runner.queue().to_owned(), runner.handle()));
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            runner.run(shutdown).await;
            Ok(())
        });
    }
    if let Some(balancer) = group.balancer {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            balancer.run(shutdown).await;
            Ok(())
        });
    }
    handles
}

fn spawn_http(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    listener: TcpListener,
    router: axum::Router,
    shutdown: &CancellationToken,
) {
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        platform::http::serve(listener, router, shutdown).await?;
        Ok(())
    });
}

/// Runs until a signal arrives or a service fails; then stops everything.
pub async fn run_until_stopped(
    mut tasks: JoinSet<anyhow::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut failure = None;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(result) = tasks.join_next() => {
            failure = match result {
                // Stopping because of the signal (SIGTERM from Kubernetes, Ctrl-C): the task saw
                // the shutdown before this select did. That is the clean way out, not a failure.
                Ok(Ok(())) if shutdown.is_cancelled() => None,
                Ok(Ok(())) => Some(anyhow::anyhow!("a service stopped unexpectedly")),
                Ok(Err(e)) => Some(e),
                Err(e) => Some(e.into()),
            };
            shutdown.cancel();
        }
    }
    while let Some(result) = tasks.join_next().await {
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "service stopped with an error");
        }
    }
    failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shutdown_is_a_clean_stop_even_when_a_service_sees_it_first() {
        // The services end as soon as the token is cancelled, so a task may finish before
        // run_until_stopped notices the cancellation itself; the signal handler's race.
        for _ in 0..50 {
            let shutdown = CancellationToken::new();
            let mut tasks = JoinSet::new();
            let token = shutdown.clone();
            tasks.spawn(async move {
                token.cancel();
                Ok(())
            });
            tokio::task::yield_now().await;
            run_until_stopped(tasks, shutdown)
                .await
                .expect("a stop on the shutdown signal is not a failure");
        }
    }

    #[tokio::test]
    async fn a_service_that_stops_on_its_own_is_a_failure() {
        let mut tasks = JoinSet::new();
        tasks.spawn(async { Ok(()) });
        let error = run_until_stopped(tasks, CancellationToken::new())
            .await
            .expect_err("nothing asked it to stop");
        assert_eq!(error.to_string(), "a service stopped unexpectedly");
    }
}
