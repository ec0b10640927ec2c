//! The operators' routes over HTTP, as the console uses them: a rebuild asked for with
//! `POST /v1/admin/projections/{name}/rebuild` runs on the projectors while the old version
//! serves, and its progress shows in the projection's status; a consumer's dead letters are
//! listed, redriven and dropped; the relay's and consumers' backlogs are shown; none of it to
//! anyone but an admin.

use std::time::Duration;

use eventstore::{ExpectedVersion, NewEvent};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::eventually::PATIENCE;
use testkit::{Reply, TestSystem, token};
use uuid::Uuid;

fn admin() -> String {
    token("ops", &["admin"])
}

/// GETs `path` as an admin until `ready` holds for its body; the body then.
async fn admin_get_until(system: &TestSystem, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let reply = system.send(Method::GET, path, Some(&admin()), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
        if ready(&reply.body) {
            return reply.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never got there; last: {:#}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_send(system: &TestSystem, method: Method, path: &str) -> Reply {
    system.send(method, path, Some(&admin()), None).await
}

#[tokio::test]
async fn an_admin_rebuilds_a_projection_over_http_and_watches_it_finish() {
    let system = TestSystem::start_full().await;
    let mut products = Vec::new();
    for n in 0..3 {
        products.push(system.product(&format!("OPS-{n}"), 100 + n, 5).await);
    }
    admin_get_until(&system, "/v1/admin/projections/products", |p| {
        p["lag_events"] == 0 && p["events_applied"] == 3
    })
    .await;

    // Nobody but an admin, and only a projection that exists.
    let customer = system
        .send(
            Method::POST,
            "/v1/admin/projections/products/rebuild",
            Some(&token("alice", &[])),
            None,
        )
        .await;
    assert_eq!(customer.status, StatusCode::FORBIDDEN);
    let unknown = admin_send(
        &system,
        Method::POST,
        "/v1/admin/projections/invoices/rebuild",
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.problem_code(), "projection-not-found");
    assert!(
        unknown.body["detail"]
            .as_str()
            .unwrap()
            .contains("products"),
        "the problem names the projections there are: {unknown:?}"
    );

    let asked = admin_send(
        &system,
        Method::POST,
        "/v1/admin/projections/products/rebuild",
    )
    .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{asked:?}");
    assert_eq!(
        asked.header("location"),
        Some("/v1/admin/projections/products")
    );
    assert_eq!(asked.body["requested_by"], "ops");
    assert!(["requested", "running"].contains(&asked.body["state"].as_str().unwrap()));
    // A second request while the first is open is refused, saying whose is under way.
    let again = admin_send(
        &system,
        Method::POST,
        "/v1/admin/projections/products/rebuild",
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{again:?}");
    assert_eq!(again.problem_code(), "rebuild-in-progress");
    assert!(again.body["detail"].as_str().unwrap().contains("ops"));

    let done = admin_get_until(&system, "/v1/admin/projections/products", |p| {
        p["rebuild"]["state"] == "rebuilt"
    })
    .await;
    let rebuild = &done["rebuild"];
    assert_eq!(rebuild["id"], asked.body["id"]);
    assert_eq!(rebuild["version"], 2);
    assert_eq!(rebuild["events_total"], 3);
    assert_eq!(rebuild["events_done"], 3);
    assert!(rebuild["started_at"].is_string() && rebuild["finished_at"].is_string());
    assert!(rebuild["events_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(done["serving_version"], 2);
    assert_eq!(done["rebuilding_version"], Value::Null);

    // The new version serves the same catalog, and keeps following new events.
    let listed = system.send(Method::GET, "/v1/products", None, None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 3);
    system.product("OPS-AFTER", 500, 1).await;
    admin_get_until(&system, "/v1/admin/projections/products", |p| {
        p["lag_events"] == 0 && p["serving_version"] == 2
    })
    .await;
    let listed = system.send(Method::GET, "/v1/products", None, None).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 4);

    // Once finished, a new one may be asked for.
    let next = admin_send(
        &system,
        Method::POST,
        "/v1/admin/projections/products/rebuild",
    )
    .await;
    assert_eq!(next.status, StatusCode::ACCEPTED, "{next:?}");
    assert_ne!(next.body["id"], asked.body["id"]);
}

#[tokio::test]
async fn every_projection_rebuilds_over_http_and_the_list_shows_each_ones_newest_rebuild() {
    let system = TestSystem::start_full().await;
    let product = system.product("OPS-ALL", 700, 10).await;
    let cart = system.cart("bob").await;
    let added = system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &token("bob", &[]),
            json!({ "product_id": product, "quantity": 1 }),
        )
        .await;
    assert!(added.status.is_success(), "{added:?}");
    for name in ["products", "orders", "carts"] {
        let asked = admin_send(
            &system,
            Method::POST,
            &format!("/v1/admin/projections/{name}/rebuild"),
        )
        .await;
        assert_eq!(asked.status, StatusCode::ACCEPTED, "{name}: {asked:?}");
    }
    let listed = admin_get_until(&system, "/v1/admin/projections", |list| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["rebuild"]["state"] == "rebuilt")
    })
    .await;
    for projection in listed["items"].as_array().unwrap() {
        assert_eq!(projection["serving_version"], 2, "{projection:#}");
    }
    // The rebuilt carts view still has bob's cart.
    let read = system
        .send(
            Method::GET,
            &format!("/v1/carts/{cart}"),
            Some(&token("bob", &[])),
            None,
        )
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.body["items"].as_array().unwrap().len(), 1);
}

/// The routes that ask the broker, with a consumer that exists.
fn bus_routes() -> Vec<(Method, String)> {
    let consumer = carts_consumer();
    vec![
        (Method::GET, "/v1/admin/consumers".to_owned()),
        (Method::GET, format!("/v1/admin/dead-letters/{consumer}")),
        (
            Method::POST,
            format!("/v1/admin/dead-letters/{consumer}/redrive"),
        ),
        (Method::DELETE, format!("/v1/admin/dead-letters/{consumer}")),
    ]
}

fn carts_consumer() -> &'static str {
    platform::read_models::projection(platform::read_models::CARTS)
        .expect("carts is a projection")
        .consumer
}

#[tokio::test]
async fn dead_letters_are_inspected_redriven_and_dropped_over_http() {
    let system = TestSystem::start_full().await;
    let consumer = carts_consumer();
    let path = format!("/v1/admin/dead-letters/{consumer}");
    let cart = system.cart("carol").await;
    // An event no cart projection can read, as a bug or a bad migration might leave behind.
    let event_id = Uuid::now_v7();
    system
        .store
        .append(
            &format!("cart-{cart}"),
            ExpectedVersion::Exact(1),
            &[NewEvent {
                event_id,
                event_type: "CartExploded".into(),
                data: json!({ "boom": true, "token": "tok_secret" }),
                metadata: Default::default(),
            }],
        )
        .await
        .unwrap();

    // The count is the queue's depth after the peek, so a letter that arrives between the two
    // is counted before it is listed: wait until it is both.
    let listed = admin_get_until(&system, &path, |l| {
        l["count"] == 1 && l["items"].as_array().is_some_and(|items| items.len() == 1)
    })
    .await;
    let letter = &listed["items"][0];
    assert_eq!(letter["message_id"], event_id.to_string());
    assert_eq!(letter["event"]["type"], "CartExploded");
    assert_eq!(letter["event"]["stream_id"], format!("cart-{cart}"));
    assert_eq!(
        letter["event"]["data"],
        json!({ "boom": true }),
        "no secrets shown"
    );
    assert_eq!(letter["redriven"], 0);
    assert!(letter["reason"].is_string() && letter["last_error"].is_string());
    // Looking leaves it in place.
    let again = admin_send(&system, Method::GET, &path).await;
    assert_eq!(again.body["count"], 1);

    // The consumers' overview counts it, and shows the relay caught up.
    let overview = admin_get_until(&system, "/v1/admin/consumers", |o| {
        o["relay"]["lag_events"] == 0
    })
    .await;
    let carts = overview["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == consumer)
        .expect("the carts projector is listed");
    assert_eq!(carts["dead_letters"], 1);
    assert_eq!(carts["partitions"], 1);
    assert_eq!(carts["queues"][0]["consumers"], 1, "{carts:#}");
    assert!(overview["relay"]["head_position"].as_i64().unwrap() > 0);
    assert!(
        overview["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "process.orders")
    );

    // Redriven, it fails again and comes back once, marked as redriven.
    let redriven = admin_send(&system, Method::POST, &format!("{path}/redrive")).await;
    assert_eq!(redriven.status, StatusCode::OK, "{redriven:?}");
    assert_eq!(redriven.body["redriven"], 1);
    let back = admin_get_until(&system, &path, |l| l["items"][0]["redriven"] == 1).await;
    assert_eq!(back["count"], 1);

    // Right after a look (which puts what it saw back), a drop finds them all.
    let dropped = admin_send(&system, Method::DELETE, &path).await;
    assert_eq!(dropped.status, StatusCode::OK, "{dropped:?}");
    assert_eq!(dropped.body["dropped"], 1);
    let empty = admin_send(&system, Method::GET, &path).await;
    assert_eq!(empty.body["count"], 0);
    assert_eq!(empty.body["items"], json!([]));
}

#[tokio::test]
async fn the_bus_routes_refuse_everyone_but_admins_and_bad_input() {
    let system = TestSystem::start_full().await;
    let consumer = carts_consumer();
    let customer = token("alice", &[]);
    let mut routes = bus_routes();
    routes.push((Method::GET, "/v1/admin/projections/products".to_owned()));
    for (method, path) in routes {
        let reply = system
            .send(method.clone(), &path, Some(&customer), None)
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{method} {path}");
        let anonymous = system.send(method.clone(), &path, None, None).await;
        assert_eq!(
            anonymous.status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }
    for (method, path, status, code) in [
        (
            Method::GET,
            "/v1/admin/dead-letters/projector.invoices".to_owned(),
            StatusCode::NOT_FOUND,
            "consumer-not-found",
        ),
        (
            Method::POST,
            "/v1/admin/dead-letters/nobody/redrive".to_owned(),
            StatusCode::NOT_FOUND,
            "consumer-not-found",
        ),
        (
            Method::DELETE,
            "/v1/admin/dead-letters/nobody".to_owned(),
            StatusCode::NOT_FOUND,
            "consumer-not-found",
        ),
        (
            Method::GET,
            format!("/v1/admin/dead-letters/{consumer}?limit=0"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            Method::GET,
            "/v1/admin/projections/nothing".to_owned(),
            StatusCode::NOT_FOUND,
            "projection-not-found",
        ),
    ] {
        let reply = admin_send(&system, method.clone(), &path).await;
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        assert_eq!(reply.problem_code(), code, "{method} {path}");
    }
}

/// A request outlives whoever could run it: it waits while no projectors replica runs and while
/// another rebuild of the projection holds its lock (`till projections rebuild`, the carts
/// healer), then runs.
#[tokio::test]
async fn a_requested_rebuild_waits_for_a_projectors_replica_and_for_a_running_rebuild() {
    let system = TestSystem::start_without_projectors().await;
    system.product("OPS-WAIT", 300, 2).await;
    let asked = admin_send(
        &system,
        Method::POST,
        "/v1/admin/projections/orders/rebuild",
    )
    .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{asked:?}");
    assert_eq!(asked.body["state"], "requested");

    // Someone else's rebuild of orders holds the lock while the projectors start.
    let mut cli = system.db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(projectors::rebuild::lock_key("orders"))
        .execute(&mut *cli)
        .await
        .unwrap();
    let _projectors = system.start_projectors().await;
    // Several of the replica's looks (every 500 ms) find the lock taken.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let waiting = admin_send(&system, Method::GET, "/v1/admin/projections/orders").await;
    assert_eq!(waiting.body["rebuild"]["state"], "requested", "{waiting:?}");
    assert_eq!(waiting.body["serving_version"], 1);

    sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(projectors::rebuild::lock_key("orders"))
        .execute(&mut *cli)
        .await
        .unwrap();
    let done = admin_get_until(&system, "/v1/admin/projections/orders", |p| {
        p["rebuild"]["state"] == "rebuilt"
    })
    .await;
    assert_eq!(done["serving_version"], 2);
    assert_eq!(done["rebuild"]["id"], asked.body["id"]);
}

/// Reads never need the broker, so the query API starts and serves without it; the routes that
/// ask the broker say it cannot be reached (503), and a rebuild request still records.
#[tokio::test]
async fn without_the_broker_the_bus_routes_answer_503_and_the_rest_works() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("amqp://guest:guest@{}/%2f", closed.local_addr().unwrap());
    drop(closed);
    let system = TestSystem::start_apis_with(|config| config.amqp_url = nowhere).await;
    for (method, path) in bus_routes() {
        let reply = admin_send(&system, method.clone(), &path).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {reply:?}"
        );
        assert_eq!(
            reply.problem_code(),
            "broker-unavailable",
            "{method} {path}"
        );
    }
    let projections = admin_send(&system, Method::GET, "/v1/admin/projections").await;
    assert_eq!(projections.status, StatusCode::OK, "{projections:?}");
    let asked = admin_send(
        &system,
        Method::POST,
        "/v1/admin/projections/orders/rebuild",
    )
    .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{asked:?}");
}
