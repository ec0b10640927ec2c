//! The fault drill: the system as separate processes (`till serve …`, as compose runs them),
//! shoppers buying through the gateway, and meanwhile every service killed with SIGKILL and
//! started again in turn, RabbitMQ and Postgres taken away and given back (a TCP proxy in front
//! of each resets every connection and refuses new ones, as a restart does, for this drill's
//! system only), and Redis losing its data. Afterwards, what users rely on must hold:
//!
//! - no answer was a 500 (outages answer 503 and are retried, with the same idempotency key);
//! - every command answered 2xx is in the store exactly once;
//! - every accepted payment ends paid;
//! - stock units are conserved, and every unit held is held by an order that holds stock;
//! - every owner sees each cart at least at the version its last 2xx answered;
//! - the live read models equal a rebuild from the event store;
//! - no consumer has dead letters.
//!
//! It prints what it did and its counts.
//!
//! The scale-out drill runs the same shoppers and checks against two replicas of every service
//! (two gateways the shoppers balance across, two workers sharing each consumer's work in four
//! partitions by stream id, an active relay and a standby), and kills one replica of each kind with SIGKILL for good, timing how long the
//! standby relay takes to publish again and counting the Postgres connections the system held.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::order::Order;
use domain::product::Product;
use domain::values::ProductId;
use eventstore::EventStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::processes::{Dependencies, Processes, SERVICES};
use testkit::{TcpProxy, TestBus, TestDatabase, eventually, token};

const SHOPPERS: usize = 6;
const PRODUCTS: usize = 3;
const STOCK: i64 = 400;
/// Which drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One replica of each service, each killed and restarted; outages; Redis data loss.
    Faults,
    /// Two replicas of each service; one of each killed for good.
    Replicas,
}

impl Kind {
    fn report(self) -> &'static str {
        match self {
            Kind::Faults => "fault_drill",
            Kind::Replicas => "scale_out",
        }
    }
}

/// One drill at a time: each runs a dozen processes on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Prints a line of the drill's record and keeps it for CI's log
/// (`target/tmp/reports/<drill>.txt`, which `.ci/run` prints).
fn say(kind: Kind, line: String) {
    use std::io::Write;
    println!("{line}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reports");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut file) = File::options()
        .create(true)
        .append(true)
        .open(dir.join(format!("{}.txt", kind.report())))
    {
        let _ = writeln!(file, "{line}");
    }
}

/// What the shoppers saw.
#[derive(Debug, Default)]
struct Record {
    statuses: BTreeMap<u16, usize>,
    /// Answers that are bugs: a 500, or any 5xx but the outage ones.
    server_errors: Vec<String>,
    /// Idempotency key of every command answered 2xx.
    accepted: Vec<String>,
    /// Per cart, its owner and the version its last 2xx answered.
    carts: HashMap<String, (String, u64)>,
    /// Orders whose payment was accepted (202).
    paid: Vec<String>,
    retries: usize,
}

struct Shopper {
    http: reqwest::Client,
    /// Every gateway; each attempt takes the next, as a round-robin balancer would.
    gateways: Arc<Vec<String>>,
    turn: std::sync::atomic::AtomicUsize,
    user: String,
    record: Arc<Mutex<Record>>,
}

impl Shopper {
    /// Sends a command until it gets an answer that is not an outage, always with the same
    /// idempotency key; `Ok` for 2xx.
    async fn command(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: &str,
    ) -> Result<(Value, u64), (u16, Value)> {
        let started = Instant::now();
        loop {
            let gateway =
                &self.gateways[self.turn.fetch_add(1, Ordering::Relaxed) % self.gateways.len()];
            let mut request = self
                .http
                .request(method.clone(), format!("{gateway}{path}"))
                .bearer_auth(token(&self.user, &[]))
                .header("idempotency-key", key)
                .timeout(Duration::from_secs(20));
            if let Some(body) = &body {
                request = request.json(body);
            }
            let outcome = request.send().await;
            let retry = match outcome {
                Err(_) => true, // the gateway itself is down
                Ok(reply) => {
                    let status = reply.status().as_u16();
                    let version = reply
                        .headers()
                        .get("etag")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim_matches('"').parse().ok())
                        .unwrap_or(0);
                    let body: Value = reply.json().await.unwrap_or(Value::Null);
                    let mut record = self.record.lock().unwrap();
                    *record.statuses.entry(status).or_default() += 1;
                    match status {
                        200..=299 => {
                            record.accepted.push(key.to_owned());
                            return Ok((body, version));
                        }
                        // Outages, and a keyed request still running elsewhere: retry.
                        502..=504 => true,
                        409 if body["type"]
                            .as_str()
                            .unwrap_or("")
                            .ends_with("/request-in-progress") =>
                        {
                            true
                        }
                        500..=599 => {
                            record
                                .server_errors
                                .push(format!("{method} {path}: {status} {body}"));
                            true
                        }
                        _ => return Err((status, body)),
                    }
                }
            };
            assert!(retry);
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{method} {path} never got through"
            );
            self.record.lock().unwrap().retries += 1;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn shop(self, products: Vec<String>, stop: Arc<AtomicBool>) {
        let mut round = 0;
        while !stop.load(Ordering::SeqCst) {
            round += 1;
            let tag = format!("{}-{round}", self.user);
            let Ok((created, version)) = self
                .command(Method::POST, "/v1/carts", None, &format!("{tag}-cart"))
                .await
            else {
                continue;
            };
            let cart = created["cart_id"].as_str().unwrap().to_owned();
            self.saw(&cart, version);
            let product = &products[round % products.len()];
            let item = json!({ "product_id": product, "quantity": 1 + round % 2 });
            let path = format!("/v1/carts/{cart}/items");
            let Ok((_, version)) = self
                .command(Method::POST, &path, Some(item), &format!("{tag}-item"))
                .await
            else {
                continue;
            };
            self.saw(&cart, version);
            if round % 2 == 0 {
                continue; // an abandoned cart
            }
            let path = format!("/v1/carts/{cart}/checkout");
            let Ok((placed, version)) = self
                .command(Method::POST, &path, None, &format!("{tag}-checkout"))
                .await
            else {
                continue;
            };
            self.saw(&cart, version);
            let order = placed["order_id"].as_str().unwrap().to_owned();
            self.pay(&order, &tag).await;
        }
    }

    /// Pays once the order awaits payment (a 409 before that is retried with a new key: a
    /// refused command's answer is kept under its key).
    async fn pay(&self, order: &str, tag: &str) {
        let path = format!("/v1/orders/{order}/pay");
        for attempt in 0..200 {
            let body = json!({ "payment_token": "tok_ok" });
            match self
                .command(
                    Method::POST,
                    &path,
                    Some(body),
                    &format!("{tag}-pay-{attempt}"),
                )
                .await
            {
                Ok(_) => {
                    self.record.lock().unwrap().paid.push(order.to_owned());
                    return;
                }
                Err((409, problem))
                    if problem["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("placed")) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return, // rejected (no stock): nothing to pay
            }
        }
    }

    fn saw(&self, cart: &str, version: u64) {
        self.record
            .lock()
            .unwrap()
            .carts
            .insert(cart.to_owned(), (self.user.clone(), version));
    }
}

/// Every view of the serving versions, as text, for comparing live views with a rebuild.
async fn snapshot(
    pool: &sqlx::PgPool,
    redis: &mut redis::aio::ConnectionManager,
    keys: &platform::read_models::CartKeys,
    carts: &[String],
) -> BTreeMap<String, String> {
    let mut views = BTreeMap::new();
    for (projection, table, id) in [
        ("products", "products", "product_id"),
        ("orders", "orders", "order_id"),
    ] {
        let version = platform::read_models::serving_version(pool, projection)
            .await
            .unwrap();
        let schema = platform::read_models::schema(projection, version);
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT {id}::text, row_to_json(t)::text FROM \"{schema}\".{table} t"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        views.extend(
            rows.into_iter()
                .map(|(id, row)| (format!("{table}/{id}"), row)),
        );
    }
    let version = platform::read_models::serving_version(pool, "carts")
        .await
        .unwrap();
    for cart in carts {
        let view: Option<String> = redis::cmd("HGET")
            .arg(keys.cart(version, cart.parse().unwrap()))
            .arg("view")
            .query_async(redis)
            .await
            .unwrap();
        views.insert(format!("carts/{cart}"), view.unwrap_or_default());
    }
    views
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_doubled_through_kills_outages_and_redis_data_loss() {
    drill(Kind::Faults).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_every_service_lose_nothing_when_one_of_each_is_killed() {
    drill(Kind::Replicas).await;
}

async fn drill(kind: Kind) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let say = |line: String| say(kind, line);
    let started = Instant::now();
    let _ = std::fs::remove_file(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("reports/{}.txt", kind.report())),
    );
    let db = TestDatabase::new().await;
    let prefix = testkit::redis::test_prefix();
    // The scale-out drill runs partitioned, so killing a worker hands its partitions over;
    // the fault drill keeps one queue per consumer, the default.
    let partitions: u16 = match kind {
        Kind::Faults => 1,
        Kind::Replicas => 4,
    };
    let topology = messaging::Topology::new(prefix.clone()).with_partitions(partitions);
    let bus = TestBus::with_topology(topology.clone());
    for (consumer, _) in till::services::consumers() {
        bus.consumer(consumer);
    }
    let keys = platform::read_models::CartKeys {
        prefix: prefix.clone(),
    };
    let postgres = TcpProxy::in_front_of(&db.url).await;
    let rabbitmq = TcpProxy::in_front_of(&platform::settings::amqp_url()).await;
    let redis_proxy = TcpProxy::in_front_of(&platform::settings::redis_url()).await;

    let replicas = match kind {
        Kind::Faults => 1,
        Kind::Replicas => 2,
    };
    let mut processes = Processes::replicated(
        env!("CARGO_BIN_EXE_till"),
        &Dependencies {
            database_url: postgres.redirect(&db.url),
            amqp_url: rabbitmq.redirect(&platform::settings::amqp_url()),
            redis_url: redis_proxy.redirect(&platform::settings::redis_url()),
            prefix: prefix.clone(),
        },
        &[
            ("TILL_REDIS_CHECK_INTERVAL_MS", "500".to_owned()),
            ("TILL_PAYMENT_WINDOW_SECS", "600".to_owned()),
            ("TILL_PARTITIONS", partitions.to_string()),
        ],
        replicas,
    );
    processes.start_all().await;
    let gateways = Arc::new(processes.gateways());
    // The last gateway is never killed (the scale-out drill kills the first of each kind).
    let gateway = gateways.last().expect("a gateway").clone();
    say(format!(
        "drill: {} processes up in {:.1} s",
        processes.instances().len(),
        started.elapsed().as_secs_f64()
    ));

    // The catalog.
    let http = reqwest::Client::new();
    let admin = token("admin", &["admin"]);
    let mut products = Vec::new();
    for n in 0..PRODUCTS {
        let created = http
            .post(format!("{gateway}/v1/products"))
            .bearer_auth(&admin)
            .json(&json!({
                "sku": format!("DRILL-{n}"), "name": format!("Drill {n}"), "category": "drill",
                "price": { "amount": 100 + n as i64, "currency": "EUR" }, "stock": STOCK
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let body: Value = created.json().await.unwrap();
        products.push(body["product_id"].as_str().unwrap().to_owned());
    }

    // Shoppers, while the faults happen.
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut shoppers = Vec::new();
    for n in 0..SHOPPERS {
        let shopper = Shopper {
            http: http.clone(),
            gateways: gateways.clone(),
            turn: std::sync::atomic::AtomicUsize::new(n),
            user: format!("drill-shopper-{n}"),
            record: record.clone(),
        };
        shoppers.push(tokio::spawn(shopper.shop(products.clone(), stop.clone())));
    }
    let pause = || tokio::time::sleep(Duration::from_millis(1500));
    let mut faults = Vec::new();
    match kind {
        Kind::Faults => {
            for service in SERVICES {
                pause().await;
                processes.kill(service);
                tokio::time::sleep(Duration::from_millis(300)).await;
                processes.spawn(service);
                processes.wait_ready(service).await;
                faults.push(format!("kill -9 {service}"));
            }
            for (name, proxy) in [("RabbitMQ", &rabbitmq), ("Postgres", &postgres)] {
                pause().await;
                proxy.cut();
                tokio::time::sleep(Duration::from_secs(3)).await;
                proxy.restore();
                faults.push(format!("{name} away for 3 s"));
            }
            pause().await;
            let lost = testkit::redis::delete_keys(&prefix).await.unwrap();
            faults.push(format!("Redis lost its data ({lost} keys)"));
        }
        Kind::Replicas => {
            pause().await;
            let held = connections(&db.pool).await;
            say(format!(
                "scale-out: {} processes hold {held} Postgres connections under load \
                 (default pool sizes; the test's own pool included)",
                processes.instances().len()
            ));
            for service in SERVICES {
                pause().await;
                let victim = match service {
                    // The active relay: its standby must take over.
                    "relay" => active_relay(&processes).await,
                    _ => service.to_owned(),
                };
                let killed = Instant::now();
                processes.kill(&victim);
                faults.push(format!("kill -9 {victim}"));
                if service == "relay" {
                    let took = relay_takeover(&processes, &victim, &db.pool, killed).await;
                    say(format!(
                        "scale-out: the standby relay published again {:.2} s after the \
                         active one was killed",
                        took.as_secs_f64()
                    ));
                    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
                }
            }
        }
    }
    pause().await;
    stop.store(true, Ordering::SeqCst);
    for shopper in shoppers {
        shopper.await.unwrap();
    }
    let record = Arc::try_unwrap(record).unwrap().into_inner().unwrap();
    say(format!(
        "drill: faults: {}\ndrill: answers by status {:?}, {} retries, {} commands accepted, \
         {} carts, {} payments",
        faults.join(", "),
        record.statuses,
        record.retries,
        record.accepted.len(),
        record.carts.len(),
        record.paid.len()
    ));

    // No 500.
    assert!(
        record.server_errors.is_empty(),
        "server errors: {:#?}",
        record.server_errors
    );
    assert!(
        record.paid.len() >= SHOPPERS,
        "the shoppers got little done: {record:?}"
    );

    // Every accepted command is in the store exactly once (one transaction per key).
    let store = EventStore::new(db.pool.clone());
    for key in &record.accepted {
        let transactions: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT transaction_id::text) FROM eventstore.events \
             WHERE metadata->>'idempotency_key' = $1",
        )
        .bind(key)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(
            transactions, 1,
            "command {key} is in the store {transactions} times"
        );
    }

    // Every accepted payment ends paid.
    for order in &record.paid {
        let stream = format!("order-{order}");
        eventually(&format!("order {order} to be paid"), || async {
            let (state, _) = store.load::<Order>(&stream).await.unwrap();
            state
                .0
                .is_some_and(|o| o.status == domain::order::OrderStatus::Paid)
        })
        .await;
    }

    // Stock: conserved, and held only by orders that hold stock.
    let order_streams: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT stream_id FROM eventstore.events WHERE stream_id LIKE 'order-%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut held_by_orders: HashMap<ProductId, i64> = HashMap::new();
    for stream in &order_streams {
        let (order, _) = store.load::<Order>(stream).await.unwrap();
        let order = order.0.unwrap();
        if order.status.holds_stock() {
            for line in &order.lines {
                *held_by_orders.entry(line.product_id).or_default() +=
                    i64::from(line.quantity.get());
            }
        }
    }
    for product in &products {
        let id = ProductId(product.parse().unwrap());
        let (state, _) = store.load::<Product>(&id.stream_id()).await.unwrap();
        let state = state.0.unwrap();
        let reserved: i64 = state.reservations.values().map(|u| i64::from(*u)).sum();
        assert_eq!(
            i64::from(state.available) + reserved,
            STOCK,
            "units of {product} not conserved"
        );
        assert_eq!(
            reserved,
            held_by_orders.get(&id).copied().unwrap_or(0),
            "units of {product} held by no order"
        );
    }

    // The views converge: no lag, the carts view whole again.
    eventually("every projection to catch up", || async {
        let reply = http
            .get(format!("{gateway}/v1/admin/projections"))
            .bearer_auth(&admin)
            .send()
            .await;
        let Ok(reply) = reply else { return false };
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        body["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|p| p["lag_events"] == 0))
    })
    .await;
    // With partitions a projection's checkpoint is its furthest partition's, so "no lag" can
    // come while another partition finishes its last batch: wait for every queue to drain too,
    // and for the batch in hand to commit.
    let broker = testkit::bus::amqp().await;
    eventually("every consumer's queues to drain", || async {
        let Ok(channel) = broker.create_channel().await else {
            return false;
        };
        let mut ready = 0;
        for (consumer, _) in till::services::consumers() {
            for queue in topology.work_queues(consumer) {
                let passive = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                match channel
                    .queue_declare(&queue, passive, lapin::types::FieldTable::default())
                    .await
                {
                    Ok(declared) => ready += declared.message_count(),
                    Err(_) => return false,
                }
            }
        }
        ready == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut redis = till::services::connect_redis(&platform::settings::redis_url())
        .await
        .unwrap();
    eventually("the carts view to be whole again", || async {
        let mut redis = redis.clone();
        let serving = platform::read_models::serving_version(&db.pool, "carts")
            .await
            .unwrap();
        projectors::heal::health(&db.pool, &mut redis, &keys, serving)
            .await
            .unwrap()
            == projectors::heal::Health::Intact
    })
    .await;

    // Every owner sees each cart at least at the version its last 2xx answered.
    for (cart, (owner, version)) in &record.carts {
        let reply = http
            .get(format!("{gateway}/v1/carts/{cart}"))
            .bearer_auth(token(owner, &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK, "{owner}'s cart {cart}");
        let seen: u64 = reply
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse().ok())
            .unwrap_or(0);
        assert!(
            seen >= *version,
            "{owner} sees cart {cart} at {seen}, answered {version}"
        );
    }

    // The live views equal a rebuild from the store.
    let carts: Vec<String> = record.carts.keys().cloned().collect();
    let live = snapshot(&db.pool, &mut redis, &keys, &carts).await;
    for projection in ["products", "orders", "carts"] {
        projectors::rebuild::rebuild(&store, &mut redis, &keys, projection, 500, |_| {}, || false)
            .await
            .unwrap();
    }
    let rebuilt = snapshot(&db.pool, &mut redis, &keys, &carts).await;
    let differing: Vec<&String> = live
        .iter()
        .filter(|(view, row)| rebuilt.get(*view) != Some(row))
        .map(|(view, _)| view)
        .collect();
    assert_eq!(live.len(), rebuilt.len());
    assert!(
        differing.is_empty(),
        "live views differ from a rebuild: {differing:?}"
    );

    // No dead letters.
    let connection = lapin::Connection::connect(
        &platform::settings::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    for (consumer, _) in till::services::consumers() {
        let dead = messaging::dead_letters::count(&connection, &topology, consumer)
            .await
            .unwrap();
        assert_eq!(dead, 0, "{consumer} has dead letters");
    }
    say(format!(
        "drill: every property held ({} views compared, {:.0} s in all; logs in {})",
        live.len(),
        started.elapsed().as_secs_f64(),
        processes.logs.display()
    ));
    drop(processes);
    drop(bus);
}

/// Connections to the drill's database right now (the test's own among them).
async fn connections(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The relay instance holding the lock (its `relay_active` gauge is 1).
async fn active_relay(processes: &Processes) -> String {
    let started = Instant::now();
    loop {
        for name in ["relay", "relay#2"] {
            if relay_active(processes, name).await {
                return name.to_owned();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no relay is active"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn relay_active(processes: &Processes, name: &str) -> bool {
    let url = format!("{}/metrics", processes.operations_url(name));
    let Ok(reply) = reqwest::get(&url).await else {
        return false;
    };
    let text = reply.text().await.unwrap_or_default();
    text.lines()
        .any(|l| l.starts_with("relay_active{") && l.trim_end().ends_with(" 1"))
}

/// How long after `killed` the other relay took the lock and published what was appended
/// after the kill (its checkpoint passes the newest event of that moment).
async fn relay_takeover(
    processes: &Processes,
    killed_relay: &str,
    pool: &sqlx::PgPool,
    killed: Instant,
) -> Duration {
    let newest_at_kill: i64 =
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM eventstore.events")
            .fetch_one(pool)
            .await
            .unwrap();
    let standby = if killed_relay == "relay" {
        "relay#2"
    } else {
        "relay"
    };
    loop {
        let published: Option<i64> = sqlx::query_scalar(
            "SELECT max(position) FROM eventstore.checkpoints WHERE name LIKE 'relay:%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if published.is_some_and(|p| p > newest_at_kill) && relay_active(processes, standby).await {
            return killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the standby relay never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
