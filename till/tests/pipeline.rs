//! The pipeline under failure: projectors stopped and restarted mid-stream lose and duplicate
//! nothing; a poisoned event is dead-lettered while everything else keeps flowing.

use std::time::Duration;

use domain::cart::Cart;
use eventstore::{ExpectedVersion, NewEvent};
use reqwest::Method;
use serde_json::json;
use testkit::{TestSystem, token};
use uuid::Uuid;

/// Waits until the cart view of every stream in `carts` has its stream's version.
async fn carts_caught_up(system: &TestSystem, carts: &[String], limit: Duration) -> bool {
    let client = redis::Client::open(platform::settings::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let started = std::time::Instant::now();
    'wait: while started.elapsed() < limit {
        for cart in carts {
            let want = system
                .store
                .stream_version(&format!("cart-{cart}"))
                .await
                .unwrap();
            let key = system.cart_keys.cart(1, Uuid::parse_str(cart).unwrap());
            let have: Option<u64> = redis::cmd("HGET")
                .arg(key)
                .arg("version")
                .query_async(&mut redis)
                .await
                .unwrap();
            if have != Some(want) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'wait;
            }
        }
        return true;
    }
    false
}

#[tokio::test]
async fn projectors_stopped_and_restarted_mid_stream_lose_and_duplicate_nothing() {
    let system = TestSystem::start_without_projectors().await;
    let product = system.product("KILL-1", 250, 1_000_000).await;
    let shoppers: Vec<(String, String)> = {
        let mut v = Vec::new();
        for n in 0..8 {
            let user = format!("shopper-{n}");
            let cart = system.cart(&user).await;
            v.push((user, cart));
        }
        v
    };
    let mut projectors = system.start_projectors().await;

    // Shoppers keep adding while the projectors are stopped and started three times.
    let writers: Vec<_> = shoppers
        .iter()
        .cloned()
        .map(|(user, cart)| {
            let (http, url, product) = (
                system.http.clone(),
                format!("{}/v1/carts/{cart}/items", system.gateway),
                product.clone(),
            );
            tokio::spawn(async move {
                let token = token(&user, &[]);
                for _ in 0..40 {
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "product_id": product, "quantity": 1 }))
                        .send()
                        .await
                        .unwrap();
                    assert!(
                        r.status().is_success() || r.status().as_u16() == 422,
                        "{}",
                        r.status()
                    );
                }
            })
        })
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        projectors.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        projectors = system.start_projectors().await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let carts: Vec<String> = shoppers.iter().map(|(_, c)| c.clone()).collect();
    assert!(
        carts_caught_up(&system, &carts, Duration::from_secs(60)).await,
        "the cart views caught up"
    );

    // Each view equals the domain's state of its stream: nothing lost, nothing applied twice
    // (a duplicate add would show as a larger quantity).
    for (user, cart) in &shoppers {
        let (state, _) = system
            .store
            .load::<Cart>(&format!("cart-{cart}"))
            .await
            .unwrap();
        let line = &state.0.unwrap().lines[0];
        let view = system
            .send(
                Method::GET,
                &format!("/v1/carts/{cart}"),
                Some(&token(user, &[])),
                None,
            )
            .await;
        assert_eq!(
            view.body["items"][0]["quantity"],
            line.quantity.get(),
            "{view:?}"
        );
    }
    // The projection counted every cart event exactly once.
    let client = redis::Client::open(platform::settings::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let counted: i64 = redis::cmd("HGET")
        .arg(system.cart_keys.progress(1))
        .arg("events")
        .query_async(&mut redis)
        .await
        .unwrap();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM eventstore.events WHERE stream_id LIKE 'cart-%'")
            .fetch_one(&system.db.pool)
            .await
            .unwrap();
    assert_eq!(counted, stored);
}

#[tokio::test]
async fn a_poisoned_event_is_dead_lettered_while_the_rest_flows() {
    let system = TestSystem::start_full().await;
    let product = system.product("POISON-1", 100, 1000).await;
    let poisoned = system.cart("alice").await;
    // An event no cart projection can read, as a bug or a bad migration might leave behind.
    let bad = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "CartExploded".into(),
        data: json!({ "boom": true }),
        metadata: Default::default(),
    };
    system
        .store
        .append(
            &format!("cart-{poisoned}"),
            ExpectedVersion::Exact(1),
            &[bad],
        )
        .await
        .unwrap();

    // Other shoppers carry on, and their views keep up.
    let mut healthy = Vec::new();
    for n in 0..5 {
        let user = format!("healthy-{n}");
        let cart = system.cart(&user).await;
        let r = system
            .post(
                &format!("/v1/carts/{cart}/items"),
                &token(&user, &[]),
                json!({ "product_id": product, "quantity": 2 }),
            )
            .await;
        assert!(r.status.is_success(), "{r:?}");
        healthy.push(cart);
    }
    assert!(carts_caught_up(&system, &healthy, Duration::from_secs(30)).await);

    // The poisoned event went to the carts projector's dead letters, once.
    let connection = messaging::connect(&platform::settings::amqp_url(), "test")
        .await
        .unwrap();
    let mut dead = 0;
    for _ in 0..100 {
        dead = messaging::dead_letters::count(&connection, &system.topology, carts_consumer())
            .await
            .unwrap();
        if dead > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead, 1);
    let letters =
        messaging::dead_letters::list(&connection, &system.topology, carts_consumer(), 10)
            .await
            .unwrap();
    assert_eq!(letters.len(), 1);
    let _ = connection.close(200, "done").await;
}

fn carts_consumer() -> &'static str {
    platform::read_models::projection(platform::read_models::CARTS)
        .expect("carts is a projection")
        .consumer
}
