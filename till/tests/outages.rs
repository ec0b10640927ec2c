//! Outages answer 503 with `Retry-After`, never 500: Postgres or Redis taken away from this
//! test's system (a proxy in front of it resets every connection, as a restart does), then given
//! back. `/readyz` says so while it lasts; a keyed command refused during the outage and retried
//! after it completes exactly once.

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::{Reply, TcpProxy, TestSystem, eventually, token};

async fn ready(url: &str) -> StatusCode {
    reqwest::get(format!("{url}/readyz"))
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

#[track_caller]
fn assert_outage(reply: &Reply, what: &str) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {reply:?}"
    );
    assert_eq!(reply.problem_code(), "dependency-unavailable", "{what}");
    assert_eq!(reply.header("retry-after"), Some("2"), "{what}");
}

async fn product_visible(system: &TestSystem, product: &str) {
    eventually("the product view", || async {
        system
            .send(Method::GET, &format!("/v1/products/{product}"), None, None)
            .await
            .status
            == StatusCode::OK
    })
    .await;
}

async fn open_cart(system: &TestSystem, key: &str) -> Reply {
    Reply::from(
        system
            .request(Method::POST, "/v1/carts", Some(&token("olga", &[])))
            .header("idempotency-key", key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn a_postgres_outage_is_503_and_a_keyed_retry_after_it_completes_once() {
    let postgres = TcpProxy::in_front_of(&platform::settings::database_url()).await;
    let system = TestSystem::start_full_with(|config| {
        config.database_url = postgres.redirect(&config.database_url);
    })
    .await;
    let product = system.product("DOWN-1", 500, 5).await;
    product_visible(&system, &product).await;

    postgres.cut();
    assert_outage(&open_cart(&system, "olga-cart-1").await, "a command");
    assert_outage(
        &system
            .send(Method::GET, &format!("/v1/products/{product}"), None, None)
            .await,
        "a read",
    );
    assert_eq!(
        ready(&system.command_api).await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    postgres.restore();
    eventually("the command API to be ready again", || async {
        ready(&system.command_api).await == StatusCode::OK
    })
    .await;
    let opened = open_cart(&system, "olga-cart-1").await;
    assert_eq!(opened.status, StatusCode::CREATED, "{opened:?}");
    let again = open_cart(&system, "olga-cart-1").await;
    assert_eq!(again.body["cart_id"], opened.body["cart_id"]);
    let carts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventstore.events WHERE event_type = 'CartCreated' \
         AND data->>'customer_id' = 'olga'",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    assert_eq!(carts, 1, "the keyed command completed exactly once");
    product_visible(&system, &product).await;
}

#[tokio::test]
async fn a_redis_outage_is_503_for_cart_reads_and_nothing_else() {
    let redis = TcpProxy::in_front_of(&platform::settings::redis_url()).await;
    let system = TestSystem::start_full_with(|config| {
        config.redis_url = redis.redirect(&config.redis_url);
    })
    .await;
    let product = system.product("DOWN-2", 500, 5).await;
    let cart = system.cart("petra").await;
    product_visible(&system, &product).await;

    redis.cut();
    let read = system
        .send(
            Method::GET,
            &format!("/v1/carts/{cart}"),
            Some(&token("petra", &[])),
            None,
        )
        .await;
    assert_outage(&read, "a cart read");
    // The catalog does not need Redis.
    let catalog = system
        .send(Method::GET, &format!("/v1/products/{product}"), None, None)
        .await;
    assert_eq!(catalog.status, StatusCode::OK, "{catalog:?}");

    redis.restore();
    eventually("cart reads to work again", || async {
        system
            .send(
                Method::GET,
                &format!("/v1/carts/{cart}"),
                Some(&token("petra", &[])),
                None,
            )
            .await
            .status
            == StatusCode::OK
    })
    .await;
    let added = system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &token("petra", &[]),
            json!({ "product_id": product, "quantity": 1 }),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{added:?}");
}

#[tokio::test]
async fn a_rabbitmq_outage_delays_the_views_and_refuses_nothing() {
    let rabbitmq = TcpProxy::in_front_of(&platform::settings::amqp_url()).await;
    let system = TestSystem::start_full_with(|config| {
        config.amqp_url = rabbitmq.redirect(&config.amqp_url);
    })
    .await;
    let before = system.product("DOWN-3", 500, 5).await;
    product_visible(&system, &before).await;

    rabbitmq.cut();
    // Commands only need the event store: accepted while the bus is away.
    let during = system.product("DOWN-4", 700, 5).await;
    let cart = system.cart("quinn").await;
    let read = system
        .send(Method::GET, &format!("/v1/products/{before}"), None, None)
        .await;
    assert_eq!(
        read.status,
        StatusCode::OK,
        "reads serve what they have: {read:?}"
    );

    rabbitmq.restore();
    // The relay publishes what was appended meanwhile; the views catch up.
    product_visible(&system, &during).await;
    // (The owner's list, not the cart itself: a missing cart view is read-repaired.)
    eventually("the owner's list to show the cart", || async {
        let listed = system
            .send(Method::GET, "/v1/carts", Some(&token("quinn", &[])), None)
            .await;
        listed.body["items"][0]["cart_id"] == cart.as_str()
    })
    .await;
}
