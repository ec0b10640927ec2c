//! Rebuilding projections while the system runs: commands keep flowing, queries never fail or
//! see an empty view, and the result equals a clean replay; an interrupted rebuild leaves the
//! old version serving and the next run completes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eventstore::LogPosition;
use platform::read_models::{ORDERS, PRODUCTS, schema};
use reqwest::Method;
use serde_json::json;
use testkit::{TestSystem, token};
use uuid::Uuid;

async fn serving(system: &TestSystem, name: &str) -> (i32, Option<i32>) {
    sqlx::query_as("SELECT serving_version, building_version FROM read.projections WHERE name = $1")
        .bind(name)
        .fetch_one(&system.db.pool)
        .await
        .unwrap()
}

/// Rows of a Postgres projection version as comparable text, keyed by id.
async fn pg_rows(system: &TestSystem, name: &str, version: i32) -> BTreeMap<String, String> {
    let table = if name == PRODUCTS {
        "products"
    } else {
        "orders"
    };
    let id = if name == PRODUCTS {
        "product_id"
    } else {
        "order_id"
    };
    let rows: Vec<(Uuid, String)> = sqlx::query_as(&format!(
        "SELECT {id}, (to_jsonb(t) - 'updated_at' - 'created_at')::text FROM \"{}\".{table} t",
        schema(name, version)
    ))
    .fetch_all(&system.db.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, json)| (id.to_string(), json))
        .collect()
}

/// The definitions of a version's indexes, its schema's name left out.
async fn indexes(system: &TestSystem, name: &str, version: i32) -> Vec<String> {
    let schema = schema(name, version);
    let definitions: Vec<String> = sqlx::query_scalar(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i \
         JOIN pg_class t ON t.oid = i.indrelid \
         WHERE t.relnamespace = $1::regnamespace ORDER BY 1",
    )
    .bind(&schema)
    .fetch_all(&system.db.pool)
    .await
    .unwrap();
    definitions
        .into_iter()
        .map(|d| d.replace(&schema, "<schema>"))
        .collect()
}

async fn redis() -> redis::aio::ConnectionManager {
    redis::aio::ConnectionManager::new(
        redis::Client::open(platform::settings::redis_url()).unwrap(),
    )
    .await
    .unwrap()
}

/// Rebuilds `projection` to the end, as `till projections rebuild` does.
async fn rebuild_now(
    system: &TestSystem,
    redis: &mut redis::aio::ConnectionManager,
    projection: &str,
) -> Result<Option<projectors::rebuild::Rebuilt>, projectors::ProjectionError> {
    projectors::rebuild::rebuild(
        &system.store,
        redis,
        &system.cart_keys,
        projection,
        10,
        |_| {},
        || false,
    )
    .await
}

/// Cart views of a version, keyed by cart id.
async fn cart_views(system: &TestSystem, version: i32) -> BTreeMap<String, String> {
    let mut redis = redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(system.cart_keys.pattern(version))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut views = BTreeMap::new();
    for key in keys.into_iter().filter(|k| is_cart_key(k)) {
        let view: String = redis::cmd("HGET")
            .arg(&key)
            .arg("view")
            .query_async(&mut redis)
            .await
            .unwrap();
        let mut view: serde_json::Value = serde_json::from_str(&view).unwrap();
        view.as_object_mut().unwrap().remove("updated_at");
        views.insert(key.rsplit(':').next().unwrap().to_owned(), view.to_string());
    }
    views
}

/// Waits until the live projections have applied the whole log, replays the log from scratch
/// into a version of its own and asserts that `live` holds exactly the same views; returns
/// the replayed version. The order process goes on appending (stock reservations) for a while
/// after the last command, so a comparison that raced with a late append is made again, each
/// time into a new version; a difference while nothing was appended fails the test.
async fn live_equals_a_clean_replay(
    system: &TestSystem,
    redis: &mut redis::aio::ConnectionManager,
    live: i32,
) -> i32 {
    let started = Instant::now();
    for replayed in 99.. {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the projections never settled"
        );
        let head = system.store.head().await.unwrap();
        let lags = projectors::status::measure(&system.db.pool, redis, &system.cart_keys)
            .await
            .unwrap();
        if lags.iter().any(|l| l.events > 0) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let events = system
            .store
            .read_log(LogPosition::START, 1_000_000)
            .await
            .unwrap();
        sqlx::query("SELECT read.create_products_tables($1), read.create_orders_tables($2)")
            .bind(schema(PRODUCTS, replayed))
            .bind(schema(ORDERS, replayed))
            .execute(&system.db.pool)
            .await
            .unwrap();
        let mut tx = system.db.pool.begin().await.unwrap();
        projectors::tables::apply_to::<projectors::products::Products>(
            &mut tx,
            &schema(PRODUCTS, replayed),
            &system.store,
            &events,
        )
        .await
        .unwrap();
        projectors::tables::apply_to::<projectors::orders::Orders>(
            &mut tx,
            &schema(ORDERS, replayed),
            &system.store,
            &events,
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        projectors::carts::apply_to(redis, &system.cart_keys, replayed, &system.store, &events)
            .await
            .unwrap();
        let views = async |version| {
            (
                pg_rows(system, PRODUCTS, version).await,
                pg_rows(system, ORDERS, version).await,
                cart_views(system, version).await,
            )
        };
        let (live_views, replayed_views) = (views(live).await, views(replayed).await);
        if live_views == replayed_views {
            return replayed;
        }
        if system.store.head().await.unwrap() == head {
            // Nothing was appended since the projections caught up: a real difference.
            assert_eq!(live_views.0, replayed_views.0, "products");
            assert_eq!(live_views.1, replayed_views.1, "orders");
            assert_eq!(live_views.2, replayed_views.2, "carts");
        }
    }
    unreachable!("the loop returns or fails")
}

#[tokio::test]
async fn a_rebuild_under_load_equals_a_clean_replay_and_never_empties_a_view() {
    let system = TestSystem::start_full().await;
    let products: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(system.product(&format!("REB-{i}"), 100 + i, 1_000).await);
        }
        v
    };
    let stop = Arc::new(AtomicBool::new(false));
    // Writers: shoppers adding and checking out the whole time.
    let mut writers = Vec::new();
    for n in 0..4 {
        let (http, gateway, products, stop) = (
            system.http.clone(),
            system.gateway.clone(),
            products.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let token = token(&format!("rebuilder-{n}"), &[]);
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                let cart: serde_json::Value = http
                    .post(format!("{gateway}/v1/carts"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let cart = cart["cart_id"].as_str().unwrap().to_owned();
                for p in products.iter().take(1 + k % 3) {
                    http.post(format!("{gateway}/v1/carts/{cart}/items"))
                        .bearer_auth(&token)
                        .json(&json!({ "product_id": p, "quantity": 1 }))
                        .send()
                        .await
                        .unwrap();
                }
                if k % 2 == 0 {
                    http.post(format!("{gateway}/v1/carts/{cart}/checkout"))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                }
                k += 1;
            }
            k
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Readers: the catalog and the orders list must never fail or come back empty.
    let failures = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for path in ["/v1/products?limit=100", "/v1/orders?limit=100"] {
        let (http, url, stop, failures, reads) = (
            system.http.clone(),
            format!("{}{path}", system.gateway),
            stop.clone(),
            failures.clone(),
            reads.clone(),
        );
        readers.push(tokio::spawn(async move {
            let admin = token("admin", &["admin"]);
            while !stop.load(Ordering::Relaxed) {
                let r = http.get(&url).bearer_auth(&admin).send().await.unwrap();
                let ok = r.status().is_success();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                if !ok || body["items"].as_array().is_none_or(Vec::is_empty) {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                reads.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let mut redis = redis().await;
    for name in ["products", "orders", "carts"] {
        let done = projectors::rebuild::rebuild(
            &system.store,
            &mut redis,
            &system.cart_keys,
            name,
            25,
            |_| {},
            || false,
        )
        .await
        .unwrap()
        .expect("not interrupted");
        assert_eq!(done.version, 2);
        assert_eq!(serving(&system, name).await, (2, None));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut commands = 0;
    for writer in writers {
        commands += writer.await.unwrap();
    }
    for reader in readers {
        reader.await.unwrap();
    }
    assert!(commands > 10, "the writers kept going ({commands} rounds)");
    assert!(reads.load(Ordering::Relaxed) > 20);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a query failed or saw an empty view during the rebuild"
    );

    // Let the live projectors finish, then compare with a clean replay of the whole store.
    let replayed = live_equals_a_clean_replay(&system, &mut redis, 2).await;
    // The indexes a rebuild leaves out while it fills are all there once it serves.
    for name in [PRODUCTS, ORDERS] {
        let rebuilt = indexes(&system, name, 2).await;
        assert!(rebuilt.len() >= 2, "{name}: {rebuilt:?}");
        assert_eq!(rebuilt, indexes(&system, name, replayed).await, "{name}");
    }
    // The old versions are gone.
    let old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'read_%_v1'",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    assert_eq!(old, 0);
    assert!(cart_views(&system, 1).await.is_empty());
}

#[tokio::test]
async fn an_interrupted_rebuild_leaves_the_old_version_serving_and_the_next_run_completes() {
    let system = TestSystem::start_full().await;
    let mut last = None;
    for i in 0..30 {
        last = Some(system.product(&format!("INT-{i}"), 100, 10).await);
    }
    assert!(last.is_some());
    // Wait until the live view has every product.
    let started = Instant::now();
    while pg_rows(&system, PRODUCTS, 1).await.len() < 30 {
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut redis = redis().await;
    let batches = AtomicU64::new(0);
    let interrupted = projectors::rebuild::rebuild(
        &system.store,
        &mut redis,
        &system.cart_keys,
        PRODUCTS,
        10,
        |_| {
            batches.fetch_add(1, Ordering::SeqCst);
        },
        || batches.load(Ordering::SeqCst) >= 1,
    )
    .await
    .unwrap();
    assert!(interrupted.is_none());
    assert_eq!(serving(&system, PRODUCTS).await, (1, Some(2)));
    // Still served from version 1, complete.
    let catalog = system
        .send(Method::GET, "/v1/products?limit=100", None, None)
        .await;
    assert_eq!(catalog.body["items"].as_array().unwrap().len(), 30);

    let done = projectors::rebuild::rebuild(
        &system.store,
        &mut redis,
        &system.cart_keys,
        PRODUCTS,
        10,
        |_| {},
        || false,
    )
    .await
    .unwrap()
    .expect("completed");
    assert_eq!((done.version, done.events), (2, 30));
    assert_eq!(serving(&system, PRODUCTS).await, (2, None));
    let catalog = system
        .send(Method::GET, "/v1/products?limit=100", None, None)
        .await;
    assert_eq!(catalog.body["items"].as_array().unwrap().len(), 30);
}

#[tokio::test]
async fn a_rebuild_while_another_of_the_same_projection_runs_is_refused() {
    let system = TestSystem::start_full().await;
    system.product("LOCK-1", 100, 1).await;
    // Another rebuild of the products holds the lock (in another process, say).
    let mut other = system.db.pool.acquire().await.unwrap();
    let key = projectors::rebuild::lock_key("products");
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(&key)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert!(held);
    let mut redis = redis().await;
    let err = rebuild_now(&system, &mut redis, "products")
        .await
        .unwrap_err();
    assert!(
        matches!(err, projectors::ProjectionError::RebuildRunning(ref name) if name == "products"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert_eq!(
        serving(&system, "products").await,
        (1, None),
        "nothing changed"
    );
    // Once the other is done, a rebuild runs.
    sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(&key)
        .execute(&mut *other)
        .await
        .unwrap();
    let done = rebuild_now(&system, &mut redis, "products")
        .await
        .unwrap()
        .expect("rebuilt");
    assert_eq!(serving(&system, "products").await, (done.version, None));
}

#[tokio::test]
async fn rebuilding_an_unknown_projection_is_refused_and_changes_nothing() {
    let system = TestSystem::start_full().await;
    let mut redis = redis().await;
    let err = rebuild_now(&system, &mut redis, "invoices")
        .await
        .unwrap_err();
    assert!(
        matches!(err, projectors::ProjectionError::UnknownProjection(ref name) if name == "invoices"),
        "{err:?}"
    );
    assert!(!err.is_transient());
    for name in ["products", "orders", "carts"] {
        assert_eq!(serving(&system, name).await, (1, None));
    }
}

/// Once the new version serves, it stands where the old one stood in the global log: a quiet
/// system shows no lag after a rebuild, without waiting for another event to come along.
#[tokio::test]
async fn a_rebuilt_version_takes_over_the_old_versions_place_in_the_log() {
    let system = TestSystem::start_full().await;
    let product = system.product("PLACE-1", 100, 10).await;
    let shopper = token("placer", &[]);
    let cart = system.post("/v1/carts", &shopper, json!({})).await;
    let cart = cart.body["cart_id"].as_str().unwrap().to_owned();
    let added = system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &shopper,
            json!({ "product_id": product, "quantity": 2 }),
        )
        .await;
    assert!(added.status.is_success(), "{:?}", added.body);
    let checkout = system
        .post(&format!("/v1/carts/{cart}/checkout"), &shopper, json!({}))
        .await;
    assert!(checkout.status.is_success(), "{:?}", checkout.body);
    // The order process has done its part (stock reserved, awaiting payment): nothing more is
    // coming.
    let order = format!("/v1/orders/{}", checkout.body["order_id"].as_str().unwrap());
    let started = Instant::now();
    while system
        .send(Method::GET, &order, Some(&shopper), None)
        .await
        .body["status"]
        != "awaiting_payment"
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the order process stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut redis = redis().await;
    let started = Instant::now();
    while lags(&system, &mut redis)
        .await
        .iter()
        .any(|(_, events)| *events > 0)
    {
        assert!(started.elapsed() < Duration::from_secs(20), "no catch-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in ["products", "orders", "carts"] {
        projectors::rebuild::rebuild(
            &system.store,
            &mut redis,
            &system.cart_keys,
            name,
            BATCH_OF_TWO,
            |_| {},
            || false,
        )
        .await
        .unwrap()
        .expect("not interrupted");
    }
    let after = lags(&system, &mut redis).await;
    assert!(
        after.iter().all(|(_, events)| *events == 0),
        "lag right after the rebuild: {after:?}"
    );
}

const BATCH_OF_TWO: i64 = 2;

async fn lags(
    system: &TestSystem,
    redis: &mut redis::aio::ConnectionManager,
) -> Vec<(&'static str, i64)> {
    projectors::status::measure(&system.db.pool, redis, &system.cart_keys)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.projection, l.events))
        .collect()
}

/// An event the projection cannot decode stops the rebuild with that event named; the batches
/// in flight finish, and the old version keeps serving.
#[tokio::test]
async fn a_rebuild_that_meets_an_undecodable_event_fails_and_the_old_version_keeps_serving() {
    let system = TestSystem::start_without_projectors().await;
    for i in 0..12 {
        system.product(&format!("BAD-{i}"), 100, 10).await;
    }
    let poison = eventstore::NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ProductCreated".into(),
        data: json!({ "not": "a product" }),
        metadata: eventstore::Metadata::default(),
    };
    system
        .store
        .append(
            &format!("product-{}", Uuid::new_v4()),
            eventstore::ExpectedVersion::NoStream,
            std::slice::from_ref(&poison),
        )
        .await
        .unwrap();
    let mut redis = redis().await;
    let err = projectors::rebuild::rebuild(
        &system.store,
        &mut redis,
        &system.cart_keys,
        PRODUCTS,
        BATCH_OF_TWO,
        |_| {},
        || false,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, projectors::ProjectionError::Undecodable { event_id, .. } if event_id == poison.event_id),
        "{err:?}"
    );
    assert_eq!(serving(&system, PRODUCTS).await, (1, Some(2)));
}

/// The operator's commands, run as the `till` binary against a live system: status, then a
/// rebuild of every projection, then status again.
#[tokio::test]
async fn till_projections_status_and_rebuild_all_work_from_the_command_line() {
    let system = TestSystem::start_full().await;
    let admin = token("admin", &["admin"]);
    let product = system
        .post(
            "/v1/products",
            &admin,
            json!({ "sku": "CLI-1", "name": "Mug", "category": "kitchen",
                    "price": { "amount": 900, "currency": "EUR" }, "stock": 3 }),
        )
        .await;
    assert_eq!(product.status, reqwest::StatusCode::CREATED, "{product:?}");
    let till = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_till"))
            .args(args)
            .env("DATABASE_URL", &system.db.url)
            .env("TILL_REDIS_PREFIX", &system.cart_keys.prefix)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "till {args:?}: {stdout}\n{stderr}");
        stdout
    };

    let status = till(&["projections", "status"]);
    for name in ["products", "orders", "carts"] {
        assert!(status.contains(name), "{status}");
    }
    let rebuilt = till(&["projections", "rebuild", "--all"]);
    assert!(
        rebuilt.contains("products: rebuilt 1 events into v2"),
        "{rebuilt}"
    );
    for name in ["products", "orders", "carts"] {
        assert_eq!(serving(&system, name).await, (2, None), "{name}");
    }
    let listed = till(&["projections", "list"]);
    assert!(listed.contains("v2"), "{listed}");
}

/// A cart's hash, not the version's progress or marker: its last part is the cart's id.
fn is_cart_key(key: &str) -> bool {
    key.rsplit(':')
        .next()
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
}
