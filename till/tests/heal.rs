//! Redis losing its data (a restart without persistence, a flush): owners keep seeing their
//! carts throughout (read repair), and the carts view rebuilds itself from the event store
//! without an operator.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::{TestSystem, eventually, token};

const OWNERS: usize = 12;

async fn cart_view(
    system: &TestSystem,
    owner: &str,
    cart: &str,
) -> (StatusCode, serde_json::Value) {
    let reply = system
        .send(
            Method::GET,
            &format!("/v1/carts/{cart}"),
            Some(&token(owner, &[])),
            None,
        )
        .await;
    (reply.status, reply.body)
}

#[tokio::test]
async fn carts_are_served_throughout_a_redis_data_loss_and_the_view_rebuilds_itself() {
    let system = TestSystem::start_full().await;
    let product = system.product("HEAL-1", 300, 1_000).await;
    let mut carts: HashMap<String, (String, u64)> = HashMap::new();
    for n in 0..OWNERS {
        let owner = format!("healer-{n}");
        let cart = system.cart(&owner).await;
        let quantity = (n % 3 + 1) as u64;
        let added = system
            .post(
                &format!("/v1/carts/{cart}/items"),
                &token(&owner, &[]),
                json!({ "product_id": product, "quantity": quantity }),
            )
            .await;
        assert_eq!(added.status, StatusCode::OK, "{added:?}");
        carts.insert(owner, (cart, quantity));
    }
    for (owner, (cart, quantity)) in &carts {
        eventually("every cart view to show its items", || async {
            cart_view(&system, owner, cart).await.1["item_count"] == *quantity
        })
        .await;
    }
    let pool = &system.db.pool;
    let before = platform::read_models::serving_version(pool, "carts")
        .await
        .unwrap();

    let lost = testkit::redis::delete_keys(&system.cart_keys.prefix)
        .await
        .unwrap();
    assert!(lost > OWNERS, "the views were in Redis ({lost} keys)");

    // At once, before any rebuild: every owner still sees their cart, and nobody else does.
    for (owner, (cart, quantity)) in &carts {
        let (status, view) = cart_view(&system, owner, cart).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{owner}'s cart after the loss: {view}"
        );
        assert_eq!(view["item_count"], *quantity, "{view}");
        let (stranger, _) = cart_view(&system, "stranger", cart).await;
        assert_eq!(stranger, StatusCode::NOT_FOUND);
    }

    // The projectors notice and rebuild into a new version, which then serves every cart and
    // every owner's list.
    eventually("the carts view to be rebuilt", || async {
        platform::read_models::serving_version(pool, "carts")
            .await
            .unwrap()
            > before
    })
    .await;
    for (owner, (cart, _)) in &carts {
        let listed = system
            .send(Method::GET, "/v1/carts", Some(&token(owner, &[])), None)
            .await;
        assert_eq!(listed.status, StatusCode::OK);
        let ids: Vec<&str> = listed.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cart_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [cart.as_str()], "{owner}'s list after the rebuild");
    }
    eventually("only the serving version to keep a marker", || async {
        let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM read.redis_epochs")
            .fetch_all(pool)
            .await
            .unwrap();
        let serving = platform::read_models::serving_version(pool, "carts")
            .await
            .unwrap();
        versions == [serving]
    })
    .await;

    // Nothing was lost: a change after the heal lands on the right view.
    let (owner, (cart, quantity)) = carts.iter().next().unwrap();
    let changed = system
        .send(
            Method::PUT,
            &format!("/v1/carts/{cart}/items/{product}"),
            Some(&token(owner, &[])),
            Some(json!({ "quantity": quantity + 1 })),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
    eventually("the change to show", || async {
        cart_view(&system, owner, cart).await.1["item_count"] == quantity + 1
    })
    .await;
}
