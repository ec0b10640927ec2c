//! Every command route through the gateway with real tokens: happy paths, who may do what,
//! bad input, `If-Match`, `Idempotency-Key`, races, and the gateway's own answers.

use std::collections::HashMap;
use std::time::Duration;

use domain::cart::CartLine;
use domain::order::{Order, OrderCommand, PaymentToken};
use domain::product::Product;
use domain::values::{
    Actor, Carrier, CartId, CustomerId, Money, OrderId, PaymentId, ProductId, ProductName,
    Quantity, Sku, TrackingNumber,
};
use eventstore::CommandOptions;
use reqwest::{Method, StatusCode};
use serde_json::json;
use testkit::{Reply, TestSystem, token};
use uuid::Uuid;

const OWNER: &str = "alice";
const OTHER: &str = "mallory";

fn admin() -> String {
    token("admin", &["admin"])
}

/// Seeds an order owned by `owner` straight into the store (the order process arrives with its
/// own issue): placed, stock reserved, and optionally paid.
/// How far a seeded order has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seed {
    AwaitingPayment,
    Paid,
    Shipped,
}

async fn seed_order(system: &TestSystem, owner: &str, stage: Seed) -> String {
    let order_id = OrderId(Uuid::now_v7());
    let stream = order_id.stream_id();
    let line = CartLine {
        product_id: ProductId(Uuid::new_v4()),
        sku: Sku::parse("SEED-1").unwrap(),
        name: ProductName::parse("Seed").unwrap(),
        unit_price: Money::price(500, "EUR").unwrap(),
        quantity: Quantity::parse(2).unwrap(),
    };
    let mut commands = vec![
        OrderCommand::Place {
            order_id,
            cart_id: CartId(Uuid::new_v4()),
            customer_id: CustomerId::parse(owner).unwrap(),
            lines: vec![line],
        },
        OrderCommand::ConfirmStockReserved {
            pay_by: chrono::Utc::now() + chrono::Duration::minutes(15),
        },
    ];
    if stage >= Seed::Paid {
        let payment_id = PaymentId(Uuid::new_v4());
        commands.push(OrderCommand::RequestPayment {
            actor: Actor::customer(CustomerId::parse(owner).unwrap()),
            payment_id,
            token: PaymentToken::parse("tok_ok").unwrap(),
        });
        commands.push(OrderCommand::RecordPaymentCaptured {
            payment_id,
            provider: "simulated".into(),
            provider_reference: format!("sim_{}", payment_id.0.simple()),
        });
    }
    if stage >= Seed::Shipped {
        commands.push(OrderCommand::Ship {
            actor: Actor::admin(CustomerId::parse("admin").unwrap()),
            carrier: Carrier::parse("DHL").unwrap(),
            tracking_number: TrackingNumber::parse("JD0001").unwrap(),
        });
    }
    for command in commands {
        system
            .store
            .execute::<Order>(&stream, command, &CommandOptions::default())
            .await
            .expect("seed order");
    }
    order_id.to_string()
}

#[tokio::test]
async fn every_command_route_works_for_its_rightful_caller() {
    let system = TestSystem::start().await;
    let admin = admin();
    let alice = token(OWNER, &[]);

    // Catalog.
    let created = system
        .post(
            "/v1/products",
            &admin,
            json!({
                "sku": "mug-classic", "name": "Classic mug", "description": "350 ml",
                "category": "Kitchen", "price": { "amount": 1290, "currency": "EUR" }, "stock": 5
            }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let product = created.body["product_id"].as_str().unwrap().to_owned();
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/products/{product}").as_str())
    );
    assert_eq!(
        created.header("x-consistency-token"),
        Some(format!("product-{product}@1").as_str())
    );
    assert!(created.header("x-request-id").is_some());
    assert_eq!(created.body["version"], 1);

    let price = system
        .post(
            &format!("/v1/products/{product}/price"),
            &admin,
            json!({ "price": { "amount": 1490, "currency": "EUR" } }),
        )
        .await;
    assert_eq!(
        (price.status, price.header("etag")),
        (StatusCode::OK, Some("\"2\"")),
        "{price:?}"
    );
    let stock = system
        .post(
            &format!("/v1/products/{product}/stock"),
            &admin,
            json!({ "delta": 3 }),
        )
        .await;
    assert_eq!(stock.status, StatusCode::OK, "{stock:?}");
    assert_eq!(stock.body["available"], 8);

    // Cart: prices come from the catalog, not from the client.
    let cart = system.cart(OWNER).await;
    let added = system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &alice,
            json!({ "product_id": product, "quantity": 2 }),
        )
        .await;
    assert_eq!(
        (added.status, added.header("etag")),
        (StatusCode::OK, Some("\"2\"")),
        "{added:?}"
    );
    let changed = system
        .send(
            Method::PUT,
            &format!("/v1/carts/{cart}/items/{product}"),
            Some(&alice),
            Some(json!({ "quantity": 3 })),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{changed:?}");
    let removed = system
        .send(
            Method::DELETE,
            &format!("/v1/carts/{cart}/items/{product}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{removed:?}");
    system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &alice,
            json!({ "product_id": product, "quantity": 1 }),
        )
        .await;
    let checkout = system
        .send(
            Method::POST,
            &format!("/v1/carts/{cart}/checkout"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(checkout.status, StatusCode::ACCEPTED, "{checkout:?}");
    let order = checkout.body["order_id"].as_str().unwrap();
    assert_eq!(
        checkout.header("location"),
        Some(format!("/v1/orders/{order}").as_str())
    );

    let (cart_state, _) = system
        .store
        .load::<domain::cart::Cart>(&format!("cart-{cart}"))
        .await
        .unwrap();
    let cart_state = cart_state.0.unwrap();
    assert_eq!(
        cart_state.lines[0].unit_price.amount, 1490,
        "the catalog price at add time"
    );
    assert_eq!(
        cart_state.checked_out.map(|o| o.to_string()).as_deref(),
        Some(order)
    );

    // Orders.
    let payable = seed_order(&system, OWNER, Seed::AwaitingPayment).await;
    let paid = system
        .post(
            &format!("/v1/orders/{payable}/pay"),
            &alice,
            json!({ "payment_token": "tok_ok" }),
        )
        .await;
    assert_eq!(paid.status, StatusCode::ACCEPTED, "{paid:?}");
    assert!(paid.body["payment_id"].is_string());
    let cancellable = seed_order(&system, OWNER, Seed::AwaitingPayment).await;
    let cancelled = system
        .post(
            &format!("/v1/orders/{cancellable}/cancel"),
            &alice,
            json!({ "reason": "changed my mind" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{cancelled:?}");
    let shippable = seed_order(&system, OWNER, Seed::Paid).await;
    let shipped = system
        .post(
            &format!("/v1/orders/{shippable}/ship"),
            &admin,
            json!({ "carrier": "DHL", "tracking_number": "JD0001" }),
        )
        .await;
    assert_eq!(shipped.status, StatusCode::ACCEPTED, "{shipped:?}");

    let discontinued = system
        .send(
            Method::POST,
            &format!("/v1/products/{product}/discontinue"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(discontinued.status, StatusCode::OK, "{discontinued:?}");
}

/// Which status each kind of caller gets on each route.
#[tokio::test]
async fn the_authorization_matrix_holds() {
    let system = TestSystem::start().await;
    let product = system.product("AUTH-1", 1000, 1000).await;
    let callers: [(&str, Option<String>); 4] = [
        ("anonymous", None),
        ("customer", Some(token(OWNER, &[]))),
        ("another customer", Some(token(OTHER, &[]))),
        ("admin", Some(admin())),
    ];
    // Expected status per caller, in the order above.
    let mut outcomes: Vec<(String, [u16; 4], [u16; 4])> = Vec::new();
    let mut check =
        |route: String, expected: [u16; 4], got: [u16; 4]| outcomes.push((route, expected, got));

    // Catalog routes: admins only.
    let mut got = [0; 4];
    for (i, (_, t)) in callers.iter().enumerate() {
        let r = system
            .send(
                Method::POST,
                "/v1/products",
                t.as_deref(),
                Some(json!({
                    "sku": format!("M-{i}"), "name": "M", "category": "c",
                    "price": { "amount": 1, "currency": "EUR" }, "stock": 1
                })),
            )
            .await;
        got[i] = r.status.as_u16();
    }
    check("POST /v1/products".into(), [401, 403, 403, 201], got);
    for (suffix, body) in [
        (
            "price",
            Some(json!({ "price": { "amount": 999, "currency": "EUR" } })),
        ),
        ("stock", Some(json!({ "delta": 1 }))),
    ] {
        let mut got = [0; 4];
        for (i, (_, t)) in callers.iter().enumerate() {
            got[i] = system
                .send(
                    Method::POST,
                    &format!("/v1/products/{product}/{suffix}"),
                    t.as_deref(),
                    body.clone(),
                )
                .await
                .status
                .as_u16();
        }
        check(
            format!("POST /v1/products/{{id}}/{suffix}"),
            [401, 403, 403, 200],
            got,
        );
    }

    // Cart routes: the owner; everyone else is told the cart does not exist.
    let mut got = [0; 4];
    for (i, (_, t)) in callers.iter().enumerate() {
        got[i] = system
            .send(Method::POST, "/v1/carts", t.as_deref(), None)
            .await
            .status
            .as_u16();
    }
    check("POST /v1/carts".into(), [401, 201, 201, 201], got);
    let cart = system.cart(OWNER).await;
    let item = json!({ "product_id": product, "quantity": 1 });
    let mut routes: Vec<(Method, String, Option<serde_json::Value>, [u16; 4])> = vec![
        (
            Method::POST,
            format!("/v1/carts/{cart}/items"),
            Some(item.clone()),
            [401, 200, 404, 404],
        ),
        (
            Method::PUT,
            format!("/v1/carts/{cart}/items/{product}"),
            Some(json!({ "quantity": 2 })),
            [401, 200, 404, 404],
        ),
        (
            Method::DELETE,
            format!("/v1/carts/{cart}/items/{product}"),
            None,
            [401, 200, 404, 404],
        ),
    ];
    for (method, path, body, expected) in routes.drain(..) {
        let mut got = [0; 4];
        for (i, (_, t)) in callers.iter().enumerate() {
            got[i] = system
                .send(method.clone(), &path, t.as_deref(), body.clone())
                .await
                .status
                .as_u16();
        }
        check(format!("{method} {path}"), expected, got);
    }
    let mut got = [0; 4];
    for (i, (_, t)) in callers.iter().enumerate() {
        // A fresh filled cart per caller, so the owner's checkout does not change the others'.
        let cart = system.cart(OWNER).await;
        system
            .post(
                &format!("/v1/carts/{cart}/items"),
                &token(OWNER, &[]),
                item.clone(),
            )
            .await;
        got[i] = system
            .send(
                Method::POST,
                &format!("/v1/carts/{cart}/checkout"),
                t.as_deref(),
                None,
            )
            .await
            .status
            .as_u16();
    }
    check(
        "POST /v1/carts/{id}/checkout".into(),
        [401, 202, 404, 404],
        got,
    );

    // Orders: pay is the owner's (an admin is told it is not theirs); cancel is the owner's or
    // an admin's; ship, deliver and refund are an admin's.
    for (route, stage, body, expected) in [
        (
            "pay",
            Seed::AwaitingPayment,
            Some(json!({ "payment_token": "tok_ok" })),
            [401, 202, 404, 403],
        ),
        ("cancel", Seed::AwaitingPayment, None, [401, 202, 404, 202]),
        (
            "ship",
            Seed::Paid,
            Some(json!({ "carrier": "DHL", "tracking_number": "JD0001" })),
            [401, 403, 403, 202],
        ),
        ("deliver", Seed::Shipped, None, [401, 403, 403, 202]),
        (
            "refund",
            Seed::Shipped,
            Some(json!({ "reason": "goodwill", "amount": { "amount": 100, "currency": "EUR" } })),
            [401, 403, 403, 202],
        ),
    ] {
        let mut got = [0; 4];
        for (i, (_, t)) in callers.iter().enumerate() {
            let order = seed_order(&system, OWNER, stage).await;
            got[i] = system
                .send(
                    Method::POST,
                    &format!("/v1/orders/{order}/{route}"),
                    t.as_deref(),
                    body.clone(),
                )
                .await
                .status
                .as_u16();
        }
        check(format!("POST /v1/orders/{{id}}/{route}"), expected, got);
    }

    let wrong: Vec<_> = outcomes.iter().filter(|(_, e, g)| e != g).collect();
    assert!(
        wrong.is_empty(),
        "routes answering the wrong callers (route, expected, got): {wrong:#?}"
    );
    assert!(outcomes.len() >= 13);
}

#[tokio::test]
async fn bad_input_gets_a_problem_that_names_the_field_and_changes_nothing() {
    let system = TestSystem::start().await;
    let alice = token(OWNER, &[]);
    let product = system.product("BAD-1", 500, 10).await;
    let cart = system.cart(OWNER).await;
    let items = format!("/v1/carts/{cart}/items");

    let malformed = Reply::from(
        system
            .request(Method::POST, &items, Some(&alice))
            .header("content-type", "application/json")
            .body("{\"product_id\": ")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (malformed.status, malformed.problem_code()),
        (StatusCode::BAD_REQUEST, "malformed-json")
    );

    let not_json = Reply::from(
        system
            .request(Method::POST, &items, Some(&alice))
            .header("content-type", "text/plain")
            .body("product please")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(not_json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let cases = [
        (
            "wrong type",
            json!({ "product_id": product, "quantity": "two" }),
            "quantity",
        ),
        ("missing field", json!({ "product_id": product }), "body"),
        (
            "quantity 0",
            json!({ "product_id": product, "quantity": 0 }),
            "quantity",
        ),
        (
            "quantity 100",
            json!({ "product_id": product, "quantity": 100 }),
            "quantity",
        ),
        (
            "unknown product",
            json!({ "product_id": Uuid::new_v4(), "quantity": 1 }),
            "product_id",
        ),
        (
            "not a uuid",
            json!({ "product_id": "mug", "quantity": 1 }),
            "product_id",
        ),
        (
            "client-sent price",
            json!({ "product_id": product, "quantity": 1, "price": 1 }),
            "price",
        ),
    ];
    for (name, body, field) in cases {
        let reply = system.post(&items, &alice, body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}: {reply:?}"
        );
        assert_eq!(reply.problem_code(), "validation-failed", "{name}");
        assert_eq!(reply.body["errors"][0]["field"], field, "{name}: {reply:?}");
    }

    let admin = admin();
    for (name, body, field) in [
        (
            "bad currency",
            json!({ "sku": "X", "name": "X", "category": "c", "price": { "amount": 1, "currency": "eur" }, "stock": 1 }),
            "price.currency",
        ),
        (
            "negative price",
            json!({ "sku": "X", "name": "X", "category": "c", "price": { "amount": -1, "currency": "EUR" }, "stock": 1 }),
            "price.amount",
        ),
        (
            "float price",
            json!({ "sku": "X", "name": "X", "category": "c", "price": { "amount": 12.5, "currency": "EUR" }, "stock": 1 }),
            "price.amount",
        ),
        (
            "negative stock",
            json!({ "sku": "X", "name": "X", "category": "c", "price": { "amount": 1, "currency": "EUR" }, "stock": -1 }),
            "stock",
        ),
        (
            "empty name",
            json!({ "sku": "X", "name": " ", "category": "c", "price": { "amount": 1, "currency": "EUR" }, "stock": 1 }),
            "name",
        ),
        (
            "long name",
            json!({ "sku": "X", "name": "n".repeat(201), "category": "c", "price": { "amount": 1, "currency": "EUR" }, "stock": 1 }),
            "name",
        ),
        (
            "bad sku",
            json!({ "sku": "a b", "name": "X", "category": "c", "price": { "amount": 1, "currency": "EUR" }, "stock": 1 }),
            "sku",
        ),
    ] {
        let reply = system.post("/v1/products", &admin, body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name}: {reply:?}"
        );
        assert_eq!(reply.body["errors"][0]["field"], field, "{name}: {reply:?}");
    }

    // Oversize bodies stop at the gateway, and at the command API if sent there directly.
    let huge = json!({ "product_id": product, "quantity": 1, "padding": "x".repeat(70 * 1024) });
    let reply = system.post(&items, &alice, huge.clone()).await;
    assert_eq!(
        (reply.status, reply.problem_code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large")
    );
    let direct = system
        .http
        .post(format!("{}{items}", system.command_api))
        .bearer_auth(&alice)
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Unknown ids are 404 whatever their shape; a second product with the same SKU is 409.
    for path in [
        format!("/v1/carts/{}/items", Uuid::new_v4()),
        "/v1/carts/not-a-uuid/items".to_owned(),
    ] {
        let reply = system
            .post(
                &path,
                &alice,
                json!({ "product_id": product, "quantity": 1 }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {reply:?}");
    }
    let duplicate = system
        .post("/v1/products", &admin, json!({ "sku": "bad-1", "name": "Again", "category": "c", "price": { "amount": 1, "currency": "EUR" }, "stock": 1 }))
        .await;
    assert_eq!(
        (duplicate.status, duplicate.problem_code()),
        (StatusCode::CONFLICT, "product-exists")
    );

    // None of it changed the cart.
    assert_eq!(
        system
            .store
            .stream_version(&format!("cart-{cart}"))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn if_match_guards_against_lost_updates() {
    let system = TestSystem::start().await;
    let admin = admin();
    let product = system.product("ETAG-1", 100, 10).await;
    let path = format!("/v1/products/{product}/stock");
    let stale = system
        .request(Method::POST, &path, Some(&admin))
        .header("if-match", "\"7\"")
        .json(&json!({ "delta": 1 }))
        .send()
        .await
        .unwrap();
    let stale = Reply::from(stale).await;
    assert_eq!(
        (stale.status, stale.problem_code()),
        (StatusCode::PRECONDITION_FAILED, "version-mismatch")
    );
    let fresh = system
        .request(Method::POST, &path, Some(&admin))
        .header("if-match", "\"1\"")
        .json(&json!({ "delta": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::OK);
    let garbage = system
        .request(Method::POST, &path, Some(&admin))
        .header("if-match", "yesterday")
        .json(&json!({ "delta": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        system
            .store
            .stream_version(&format!("product-{product}"))
            .await
            .unwrap(),
        2
    );
}

/// A command sent with `If-Match` and, optionally, an `Idempotency-Key`.
async fn with_if_match(
    system: &TestSystem,
    token: &str,
    path: &str,
    if_match: &str,
    key: Option<&str>,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut request = system
        .request(Method::POST, path, Some(token))
        .header("if-match", if_match);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::from(request.send().await.unwrap()).await
}

/// A command with a stale `If-Match` (`stale`, while the stream is at `current`) is refused with
/// 412 with and without an `Idempotency-Key`, and the keyed refusal is the key's answer from
/// then on.
async fn refused_as_stale(
    system: &TestSystem,
    token: &str,
    path: &str,
    body: Option<serde_json::Value>,
    stale: &str,
    key: &str,
    current: u64,
) {
    for key in [None, Some(key)] {
        let refused = with_if_match(system, token, path, stale, key, body.clone()).await;
        assert_eq!(
            (refused.status, refused.problem_code()),
            (StatusCode::PRECONDITION_FAILED, "version-mismatch"),
            "{path}, key {key:?}: {refused:?}"
        );
        assert!(
            refused.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("at version {current}"))),
            "{refused:?}"
        );
    }
    let replayed = with_if_match(system, token, path, stale, Some(key), body).await;
    assert_eq!(
        replayed.status,
        StatusCode::PRECONDITION_FAILED,
        "{replayed:?}"
    );
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn if_match_guards_add_item_and_checkout_with_and_without_a_key() {
    let system = TestSystem::start().await;
    let alice = token(OWNER, &[]);
    let product = system.product("ETAG-2", 100, 50).await;
    let cart = system.cart(OWNER).await;
    let cart_stream = format!("cart-{cart}");
    let items = format!("/v1/carts/{cart}/items");
    let checkout = format!("/v1/carts/{cart}/checkout");
    let add = json!({ "product_id": product, "quantity": 1 });

    // The cart is at version 1 (created).
    refused_as_stale(
        &system,
        &alice,
        &items,
        Some(add.clone()),
        "\"7\"",
        "stale-add",
        1,
    )
    .await;
    assert_eq!(system.store.stream_version(&cart_stream).await.unwrap(), 1);

    // The current version goes through, with and without a key.
    let added = with_if_match(&system, &alice, &items, "\"1\"", None, Some(add.clone())).await;
    assert_eq!(
        (added.status, added.header("etag")),
        (StatusCode::OK, Some("\"2\""))
    );
    let keyed = with_if_match(
        &system,
        &alice,
        &items,
        "\"2\"",
        Some("add-2"),
        Some(add.clone()),
    )
    .await;
    assert_eq!(
        (keyed.status, keyed.header("etag")),
        (StatusCode::OK, Some("\"3\""))
    );

    // Checkout: a stale version places no order either.
    refused_as_stale(
        &system,
        &alice,
        &checkout,
        None,
        "\"2\"",
        "stale-checkout",
        3,
    )
    .await;
    assert_eq!(system.store.stream_version(&cart_stream).await.unwrap(), 3);

    let placed = with_if_match(
        &system,
        &alice,
        &checkout,
        "\"3\"",
        Some("checkout-1"),
        None,
    )
    .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{placed:?}");
    assert_eq!(placed.header("etag"), Some("\"4\""));
    let order = placed.body["order_id"].as_str().unwrap();
    assert_eq!(
        system
            .store
            .stream_version(&format!("order-{order}"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        placed.header("x-consistency-token"),
        Some(format!("cart-{cart}@4;order-{order}@1").as_str())
    );
}

#[tokio::test]
async fn a_discontinued_product_stops_checkout_with_the_same_answer_as_adding_it() {
    let system = TestSystem::start().await;
    let (admin, alice) = (admin(), token(OWNER, &[]));
    let product = system.product("GONE-1", 100, 50).await;
    let cart = system.cart(OWNER).await;
    let add = json!({ "product_id": product, "quantity": 1 });
    let added = system
        .post(&format!("/v1/carts/{cart}/items"), &alice, add.clone())
        .await;
    assert_eq!(added.status, StatusCode::OK, "{added:?}");
    let gone = system
        .post(
            &format!("/v1/products/{product}/discontinue"),
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{gone:?}");

    let at_checkout = system
        .send(
            Method::POST,
            &format!("/v1/carts/{cart}/checkout"),
            Some(&alice),
            None,
        )
        .await;
    let on_add = system
        .post(&format!("/v1/carts/{cart}/items"), &alice, add)
        .await;
    for refused in [&at_checkout, &on_add] {
        assert_eq!(
            (refused.status, refused.problem_code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "product-discontinued"),
            "{refused:?}"
        );
    }
    assert_eq!(
        system
            .store
            .stream_version(&format!("cart-{cart}"))
            .await
            .unwrap(),
        2,
        "nothing was appended to the cart"
    );
}

#[tokio::test]
async fn text_that_postgres_cannot_store_is_refused_and_changes_nothing() {
    let system = TestSystem::start().await;
    let (admin, alice) = (admin(), token(OWNER, &[]));
    let order = seed_order(&system, OWNER, Seed::AwaitingPayment).await;
    let stream = format!("order-{order}");
    let before = system.store.stream_version(&stream).await.unwrap();
    let cancel = system
        .post(
            &format!("/v1/orders/{order}/cancel"),
            &alice,
            json!({ "reason": "changed my mind\u{0}" }),
        )
        .await;
    assert_eq!(
        (cancel.status, cancel.problem_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed"),
        "{cancel:?}"
    );
    assert_eq!(system.store.stream_version(&stream).await.unwrap(), before);
    let product = system
        .post(
            "/v1/products",
            &admin,
            json!({ "sku": "NUL-1", "name": "Mug\u{0}", "description": "a\u{0}b",
                    "category": "kitchen", "price": { "amount": 100, "currency": "EUR" }, "stock": 1 }),
        )
        .await;
    assert_eq!(
        product.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{product:?}"
    );
    // Control: a reason with a line break is fine.
    let cancelled = system
        .post(
            &format!("/v1/orders/{order}/cancel"),
            &alice,
            json!({ "reason": "changed\nmy mind" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{cancelled:?}");
}

async fn with_key(
    system: &TestSystem,
    key: &str,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> Reply {
    let response = system
        .request(Method::POST, path, Some(token))
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    Reply::from(response).await
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_mismatches_and_report_work_in_progress() {
    let system = TestSystem::start().await;
    let alice = token(OWNER, &[]);
    let product = system.product("IDEM-1", 250, 50).await;
    let cart = system.cart(OWNER).await;
    let items = format!("/v1/carts/{cart}/items");
    let body = json!({ "product_id": product, "quantity": 2 });

    let first = with_key(&system, "add-1", &alice, &items, body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = with_key(&system, "add-1", &alice, &items, body.clone()).await;
    assert_eq!(again.status, first.status);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("etag"), first.header("etag"));
    assert_eq!(
        again.header("x-consistency-token"),
        first.header("x-consistency-token")
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        system
            .store
            .stream_version(&format!("cart-{cart}"))
            .await
            .unwrap(),
        2,
        "added once"
    );

    let other_body = with_key(
        &system,
        "add-1",
        &alice,
        &items,
        json!({ "product_id": product, "quantity": 3 }),
    )
    .await;
    assert_eq!(
        (other_body.status, other_body.problem_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused")
    );

    // Keys belong to their caller: another user's identical key is a different key.
    let bob_cart = system.cart("bob").await;
    let bob = with_key(
        &system,
        "add-1",
        &token("bob", &[]),
        &format!("/v1/carts/{bob_cart}/items"),
        body.clone(),
    )
    .await;
    assert_eq!(bob.status, StatusCode::OK, "{bob:?}");

    // A rejection is a deterministic answer and is replayed too.
    let too_many = json!({ "product_id": product, "quantity": 99 });
    let rejected = with_key(&system, "add-2", &alice, &items, too_many.clone()).await;
    assert_eq!(
        rejected.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{rejected:?}"
    );
    let replayed = with_key(&system, "add-2", &alice, &items, too_many).await;
    assert_eq!(
        (replayed.status, replayed.header("idempotent-replayed")),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("true"))
    );

    // While the first request with a key is running, a duplicate is told so (409), not queued.
    let mut holder = system.db.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7201))")
        .bind(format!("{OWNER}\nadd-3"))
        .execute(&mut *holder)
        .await
        .unwrap();
    let busy = with_key(&system, "add-3", &alice, &items, body.clone()).await;
    assert_eq!(
        (busy.status, busy.problem_code()),
        (StatusCode::CONFLICT, "idempotency-key-in-progress")
    );
    holder.rollback().await.unwrap();
    let after = with_key(&system, "add-3", &alice, &items, body.clone()).await;
    assert_eq!(after.status, StatusCode::OK);

    // Many identical requests at once: exactly one does the work.
    let version_before = system
        .store
        .stream_version(&format!("cart-{cart}"))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (http, url, alice, body) = (
            system.http.clone(),
            format!("{}{items}", system.gateway),
            alice.clone(),
            json!({ "product_id": product, "quantity": 1 }),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(alice)
                .header("idempotency-key", "burst")
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers().get("idempotent-replayed").is_some(),
            )
        }));
    }
    let mut outcomes: HashMap<(u16, bool), usize> = HashMap::new();
    for task in tasks {
        *outcomes.entry(task.await.unwrap()).or_default() += 1;
    }
    assert_eq!(
        outcomes.get(&(200, false)),
        Some(&1),
        "exactly one executed: {outcomes:?}"
    );
    assert!(
        outcomes
            .keys()
            .all(|k| matches!(k, (200, _) | (409, false))),
        "the others were replays or in-progress: {outcomes:?}"
    );
    assert_eq!(
        system
            .store
            .stream_version(&format!("cart-{cart}"))
            .await
            .unwrap(),
        version_before + 1
    );

    let bad_key = with_key(&system, &"k".repeat(300), &alice, &items, body).await;
    assert_eq!(bad_key.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn racing_commands_keep_stock_whole_and_carts_complete() {
    let system = TestSystem::start().await;
    let admin = admin();
    let last_unit = system.product("LAST-1", 100, 1).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, url, admin) = (
            system.http.clone(),
            format!("{}/v1/products/{last_unit}/stock", system.gateway),
            admin.clone(),
        );
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(admin)
                .json(&json!({ "delta": -1 }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 422),
        "{statuses:?}"
    );
    let (product, _) = system
        .store
        .load::<Product>(&format!("product-{last_unit}"))
        .await
        .unwrap();
    assert_eq!(product.0.unwrap().available, 0);

    // Concurrent adds of different products to one cart all land: they take turns on the cart
    // rather than race (and would retry a lost race).
    let alice = token(OWNER, &[]);
    let cart = system.cart(OWNER).await;
    let mut products = Vec::new();
    for i in 0..24 {
        products.push(system.product(&format!("RACE-{i}"), 100 + i, 10).await);
    }
    let mut tasks = Vec::new();
    for product in &products {
        let (http, url, alice, product) = (
            system.http.clone(),
            format!("{}/v1/carts/{cart}/items", system.gateway),
            alice.clone(),
            product.clone(),
        );
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(alice)
                .json(&json!({ "product_id": product, "quantity": 1 }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let (cart_state, version) = system
        .store
        .load::<domain::cart::Cart>(&format!("cart-{cart}"))
        .await
        .unwrap();
    assert_eq!(cart_state.0.unwrap().lines.len(), 24);
    assert_eq!(version, 25);
}

#[tokio::test]
async fn the_gateway_limits_rates_and_reports_missing_upstreams() {
    let system = TestSystem::start_with(|config| config.gateway.per_user = (1, 2)).await;
    let alice = token(OWNER, &[]);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let reply = system
            .send(Method::POST, "/v1/carts", Some(&alice), None)
            .await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = reply.header("retry-after").map(str::to_owned);
            assert_eq!(reply.problem_code(), "rate-limited");
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(&statuses[..2], &[201, 201], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert!(
        retry_after
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)
    );
    // Another user has a budget of their own.
    let bob = system
        .send(Method::POST, "/v1/carts", Some(&token("bob", &[])), None)
        .await;
    assert_eq!(bob.status, StatusCode::CREATED);

    // Reads go to the query API, which is not running in this test.
    let read = system
        .send(Method::GET, "/v1/orders", Some(&token("bob", &[])), None)
        .await;
    assert_eq!(
        (read.status, read.problem_code()),
        (StatusCode::SERVICE_UNAVAILABLE, "upstream-unavailable")
    );
    // Anonymous reads of the catalog pass the gateway (and meet the same missing upstream);
    // anonymous reads of anything else do not.
    let catalog = system.send(Method::GET, "/v1/products", None, None).await;
    assert_eq!(catalog.status, StatusCode::SERVICE_UNAVAILABLE);
    let orders = system.send(Method::GET, "/v1/orders", None, None).await;
    assert_eq!(orders.status, StatusCode::UNAUTHORIZED);
}

/// An upstream that takes the request and never answers gets the gateway's deadline: 504
/// problem+json, in about the configured time.
#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_is_a_504() {
    // Accepts connections and never answers on them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let system = TestSystem::start_with(|config| {
        config.gateway.query_api = silent_url;
        config.gateway.upstream_timeout = Duration::from_millis(300);
    })
    .await;
    let started = std::time::Instant::now();
    let read = system
        .send(Method::GET, "/v1/orders", Some(&token(OWNER, &[])), None)
        .await;
    assert_eq!(
        (read.status, read.problem_code()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn only_a_short_token_like_request_id_is_echoed() {
    let system = TestSystem::start().await;
    let long = "a".repeat(8 * 1024);
    for (sent, kept) in [
        ("order-42.retry_1:a", true),
        ("<script>alert(1)</script>", false),
        ("two words", false),
        (long.as_str(), false),
    ] {
        let reply = system
            .request(Method::GET, "/v1/products", None)
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let echoed = reply
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if kept {
            assert_eq!(echoed, sent);
        } else {
            assert!(
                uuid::Uuid::parse_str(&echoed).is_ok(),
                "{sent:.40}: a generated id instead, got {echoed:.40}"
            );
        }
    }
}

#[tokio::test]
async fn request_ids_health_and_metrics() {
    let system = TestSystem::start().await;
    let sent = system
        .request(Method::POST, "/v1/carts", Some(&token(OWNER, &[])))
        .header("x-request-id", "0192f3a0-0000-7000-8000-000000000001")
        .send()
        .await
        .unwrap();
    assert_eq!(
        sent.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("0192f3a0-0000-7000-8000-000000000001")
    );
    // The request id becomes the correlation id of the events.
    let cart = Reply::from(sent).await.body["cart_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = system
        .store
        .read_stream(&format!("cart-{cart}"), 0)
        .await
        .unwrap();
    assert_eq!(
        events[0]
            .metadata
            .correlation_id
            .map(|u| u.to_string())
            .as_deref(),
        Some("0192f3a0-0000-7000-8000-000000000001")
    );
    assert_eq!(events[0].metadata.actor.as_deref(), Some(OWNER));

    for base in [&system.gateway_ops, &system.command_api] {
        for path in ["/livez", "/readyz"] {
            let r = system
                .http
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{base}{path}");
        }
    }
    // The public port serves none of the operations routes: the metrics hold sales volume.
    for path in ["/livez", "/readyz", "/metrics"] {
        let public = system.send(Method::GET, path, None, None).await;
        assert_eq!(
            (public.status, public.problem_code()),
            (StatusCode::NOT_FOUND, "route-not-found"),
            "{path} on the public port"
        );
    }
    let metrics = system
        .http
        .get(format!("{}/metrics", system.gateway_ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("events_appended_total"), "{metrics}");
    // Made-up methods and paths add no series of their own: they are counted under
    // method="other" (and the catch-all route), a fixed few series. Only those are counted:
    // the recorder is shared with the tests running beside this one.
    let series = |metrics: &str| {
        assert!(
            !metrics.contains("made-up") && !metrics.contains("MADEUP"),
            "a made-up method or path became a label"
        );
        metrics
            .lines()
            .filter(|l| l.starts_with("http_requests_total{") && l.contains("method=\"other\""))
            .count()
    };
    for n in 0..200 {
        let method = Method::from_bytes(format!("MADEUP{n}").as_bytes()).unwrap();
        system
            .send(method, &format!("/v1/made-up-{n}"), None, None)
            .await;
    }
    let scrape = || async {
        system
            .http
            .get(format!("{}/metrics", system.gateway_ops))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = series(&scrape().await);
    assert!(
        (1..=3).contains(&before),
        "made-up requests are counted, in a few series: {before}"
    );
    for n in 200..400 {
        let method = Method::from_bytes(format!("MADEUP{n}").as_bytes()).unwrap();
        system
            .send(method, &format!("/v1/made-up-{n}"), None, None)
            .await;
    }
    assert_eq!(
        series(&scrape().await),
        before,
        "new series per made-up method or path"
    );
    let unknown = system.send(Method::GET, "/nowhere", None, None).await;
    assert_eq!(
        (unknown.status, unknown.problem_code()),
        (StatusCode::NOT_FOUND, "route-not-found")
    );
}

#[tokio::test]
async fn a_command_that_loses_every_race_answers_409_and_writes_nothing() {
    let system = TestSystem::start().await;
    let alice = token(OWNER, &[]);
    let product = system.product("HOT-1", 100, 10).await;
    let cart = system.cart(OWNER).await;
    let items = format!("/v1/carts/{cart}/items");
    let body = json!({ "product_id": product, "quantity": 1 });
    // Every append to this cart loses, as to another writer that always gets there first.
    sqlx::query(&format!(
        "CREATE FUNCTION public.always_taken() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.stream_id = 'cart-{cart}' THEN \
             RAISE unique_violation USING CONSTRAINT = 'events_stream_version_unique'; \
           END IF; \
           RETURN NEW; \
         END $$"
    ))
    .execute(&system.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER always_taken BEFORE INSERT ON eventstore.events \
         FOR EACH ROW EXECUTE FUNCTION public.always_taken()",
    )
    .execute(&system.db.pool)
    .await
    .unwrap();

    // Without a key (one multi-stream statement per attempt) and with one (a transaction that
    // also keeps the answer): both give up with a clear 409.
    let plain = system.post(&items, &alice, body.clone()).await;
    assert_eq!(plain.status, StatusCode::CONFLICT, "{plain:?}");
    assert_eq!(plain.problem_code(), "concurrency-conflict");
    let keyed = with_key(&system, "hot-1", &alice, &items, body.clone()).await;
    assert_eq!(keyed.status, StatusCode::CONFLICT, "{keyed:?}");
    assert_eq!(keyed.problem_code(), "concurrency-conflict");
    let cart_stream = format!("cart-{cart}");
    let (state, version) = system
        .store
        .load::<domain::cart::Cart>(&cart_stream)
        .await
        .unwrap();
    assert_eq!(version, 1, "nothing was appended");
    assert!(state.0.unwrap().lines.is_empty());

    // A lost race is not a deterministic answer: the key is not spent on it, and the same
    // request goes through once the stream is free.
    sqlx::query("DROP TRIGGER always_taken ON eventstore.events")
        .execute(&system.db.pool)
        .await
        .unwrap();
    let retried = with_key(&system, "hot-1", &alice, &items, body).await;
    assert_eq!(retried.status, StatusCode::OK, "{retried:?}");
    assert_eq!(system.store.stream_version(&cart_stream).await.unwrap(), 2);
}
