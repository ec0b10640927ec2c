//! From checkout to paid, end to end through the gateway: stock reservation, payments with the
//! simulated provider, deadlines, cancel and refund, the race for the last units, and
//! redelivery of every process input.

use std::time::{Duration, Instant};

use eventstore::LogPosition;
use messaging::Handler;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{Reply, TestSystem, token};

const ADMIN: &str = "admin";

async fn order_view(system: &TestSystem, user: &str, order: &str) -> Reply {
    let who = if user == ADMIN {
        token(ADMIN, &["admin"])
    } else {
        token(user, &[])
    };
    system
        .send(
            Method::GET,
            &format!("/v1/orders/{order}"),
            Some(&who),
            None,
        )
        .await
}

async fn product_view(system: &TestSystem, product: &str, after: Option<&Reply>) -> Value {
    let mut request = system.request(Method::GET, &format!("/v1/products/{product}"), None);
    if let Some(token) = after.and_then(|r| r.header("x-consistency-token")) {
        request = request.header("x-consistency-token", token);
    }
    Reply::from(request.send().await.unwrap()).await.body
}

/// Waits until the product view shows `available`.
async fn wait_for_available(system: &TestSystem, product: &str, available: i64) {
    let started = Instant::now();
    while product_view(system, product, None).await["available"] != available {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "available never became {available}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cart for `user` with `quantity` of `product`, checked out; returns the checkout reply.
async fn checkout(system: &TestSystem, user: &str, product: &str, quantity: u32) -> Reply {
    let cart = system.cart(user).await;
    let added = system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &token(user, &[]),
            json!({ "product_id": product, "quantity": quantity }),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{added:?}");
    system
        .send(
            Method::POST,
            &format!("/v1/carts/{cart}/checkout"),
            Some(&token(user, &[])),
            None,
        )
        .await
}

async fn ship(system: &TestSystem, order: &str) -> Reply {
    system
        .post(
            &format!("/v1/orders/{order}/ship"),
            &token(ADMIN, &["admin"]),
            json!({ "carrier": "DHL", "tracking_number": "JD0146 0000 1234" }),
        )
        .await
}

async fn refund(system: &TestSystem, user: &str, order: &str, body: Value) -> Reply {
    let roles: &[&str] = if user == ADMIN { &["admin"] } else { &[] };
    system
        .post(
            &format!("/v1/orders/{order}/refund"),
            &token(user, roles),
            body,
        )
        .await
}

async fn pay(system: &TestSystem, user: &str, order: &str, payment_token: &str) -> Reply {
    system
        .post(
            &format!("/v1/orders/{order}/pay"),
            &token(user, &[]),
            json!({ "payment_token": payment_token }),
        )
        .await
}

#[tokio::test]
async fn happy_path_to_paid_and_shipped() {
    let system = TestSystem::start_full().await;
    let product = system.product("FLOW-1", 1500, 5).await;
    let checked_out = checkout(&system, "alice", &product, 2).await;
    assert_eq!(checked_out.status, StatusCode::ACCEPTED, "{checked_out:?}");
    let order = checked_out.body["order_id"].as_str().unwrap().to_owned();

    // Right after the 202, the order is there for whoever holds the consistency token.
    let token_header = checked_out.header("x-consistency-token").unwrap();
    assert!(
        token_header.contains(&format!("order-{order}@1")),
        "{token_header}"
    );
    let first = system
        .request(
            Method::GET,
            &format!("/v1/orders/{order}"),
            Some(&token("alice", &[])),
        )
        .header("x-consistency-token", token_header)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);

    let unpaid = system
        .order_becomes("alice", &order, "awaiting_payment")
        .await;
    // Nothing fulfilled yet: every part is there, empty (the stored document leaves them out).
    for (part, empty) in [
        ("shipment", Value::Null),
        ("delivered_at", Value::Null),
        ("payments", json!([])),
        ("refunds", json!([])),
    ] {
        assert_eq!(unpaid.get(part), Some(&empty), "{part} in {unpaid}");
    }
    wait_for_available(&system, &product, 3).await;
    assert_eq!(
        pay(&system, "alice", &order, "tok_ok").await.status,
        StatusCode::ACCEPTED
    );
    system.order_becomes("alice", &order, "paid").await;
    // Shipping needs the carrier and its tracking number.
    let untracked = system
        .post(
            &format!("/v1/orders/{order}/ship"),
            &token(ADMIN, &["admin"]),
            json!({ "carrier": "DHL", "tracking_number": " " }),
        )
        .await;
    assert_eq!(
        (untracked.status, untracked.problem_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed"),
        "{untracked:?}"
    );
    let shipped = ship(&system, &order).await;
    assert_eq!(shipped.status, StatusCode::ACCEPTED, "{shipped:?}");
    let view = system.order_becomes("alice", &order, "shipped").await;
    assert_eq!(view["shipment"]["carrier"], "DHL", "{view}");
    assert_eq!(view["shipment"]["tracking_number"], "JD0146 0000 1234");
    assert!(view["shipment"]["shipped_at"].is_string(), "{view}");
    let payments = view["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 1, "{view}");
    assert_eq!(payments[0]["status"], "captured");
    assert_eq!(
        payments[0]["amount"],
        json!({ "amount": 3000, "currency": "EUR" })
    );
    assert_eq!(view["refunds"], json!([]));

    let history: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        [
            "placed",
            "stock_reserved",
            "awaiting_payment",
            "payment_pending",
            "paid",
            "shipped"
        ]
    );
    assert_eq!(view["total"], json!({ "amount": 3000, "currency": "EUR" }));
    assert_eq!(view["lines"][0]["quantity"], 2);

    // The order's events, without the payment token.
    let events = system
        .send(
            Method::GET,
            &format!("/v1/orders/{order}/events"),
            Some(&token("alice", &[])),
            None,
        )
        .await;
    let items = events.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert!(items.iter().all(|e| e["data"].get("token").is_none()));
    // Another customer sees none of it.
    let stranger = system
        .send(
            Method::GET,
            &format!("/v1/orders/{order}/events"),
            Some(&token("mallory", &[])),
            None,
        )
        .await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);
    assert_eq!(
        order_view(&system, "mallory", &order).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        order_view(&system, ADMIN, &order).await.status,
        StatusCode::OK
    );

    // Delivered: by an admin, once, and only after shipping.
    let deliver = |who: &str, roles: &[&str]| {
        let token = token(who, roles);
        let path = format!("/v1/orders/{order}/deliver");
        let system = &system;
        async move { system.send(Method::POST, &path, Some(&token), None).await }
    };
    let by_owner = deliver("alice", &[]).await;
    assert_eq!(
        (by_owner.status, by_owner.problem_code()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let delivered = deliver(ADMIN, &["admin"]).await;
    assert_eq!(delivered.status, StatusCode::ACCEPTED, "{delivered:?}");
    let view = system.order_becomes("alice", &order, "delivered").await;
    assert_eq!(view["history"].as_array().unwrap().len(), 7);
    assert!(view["delivered_at"].is_string(), "{view}");
    let again = deliver(ADMIN, &["admin"]).await;
    assert_eq!(
        (again.status, again.problem_code()),
        (StatusCode::CONFLICT, "illegal-order-transition")
    );
}

#[tokio::test]
async fn a_declined_payment_can_be_retried_and_slow_and_flaky_providers_get_there() {
    let system = TestSystem::start_full().await;
    let product = system.product("FLOW-2", 700, 10).await;
    let order = checkout(&system, "bob", &product, 1).await.body["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    system
        .order_becomes("bob", &order, "awaiting_payment")
        .await;
    pay(&system, "bob", &order, "tok_declined").await;
    let declined = system
        .order_becomes("bob", &order, "payment_declined")
        .await;
    assert_eq!(
        declined["history"].as_array().unwrap().last().unwrap()["detail"],
        "card declined"
    );
    // Paying again while the first payment is with the provider is refused; after, accepted.
    assert_eq!(
        pay(&system, "bob", &order, "tok_ok").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        pay(&system, "bob", &order, "tok_ok").await.status,
        StatusCode::CONFLICT
    );
    system.order_becomes("bob", &order, "paid").await;

    for (user, payment_token) in [("carol", "tok_slow"), ("dave", "tok_error")] {
        let order = checkout(&system, user, &product, 1).await.body["order_id"]
            .as_str()
            .unwrap()
            .to_owned();
        system.order_becomes(user, &order, "awaiting_payment").await;
        pay(&system, user, &order, payment_token).await;
        system.order_becomes(user, &order, "paid").await;
    }
    // Every payment was charged once, whatever the retries.
    let charges: Vec<(String, i32)> =
        sqlx::query_as("SELECT outcome, attempts FROM provider_sim.charges ORDER BY created_at")
            .fetch_all(&system.db.pool)
            .await
            .unwrap();
    let captured = charges.iter().filter(|(o, _)| o == "captured").count();
    assert_eq!(captured, 3, "{charges:?}");
    assert!(
        charges.iter().any(|(_, attempts)| *attempts == 3),
        "tok_error took three attempts: {charges:?}"
    );
}

#[tokio::test]
async fn an_order_without_stock_is_rejected_and_holds_nothing() {
    let system = TestSystem::start_full().await;
    let product = system.product("FLOW-3", 100, 2).await;
    let cart = system.cart("erin").await;
    system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &token("erin", &[]),
            json!({ "product_id": product, "quantity": 2 }),
        )
        .await;
    // The shelf empties after the item went into the cart.
    let emptied = system
        .post(
            &format!("/v1/products/{product}/stock"),
            &token(ADMIN, &["admin"]),
            json!({ "delta": -1 }),
        )
        .await;
    assert_eq!(emptied.status, StatusCode::OK);
    let order = system
        .send(
            Method::POST,
            &format!("/v1/carts/{cart}/checkout"),
            Some(&token("erin", &[])),
            None,
        )
        .await;
    let order = order.body["order_id"].as_str().unwrap().to_owned();
    let rejected = system.order_becomes("erin", &order, "rejected").await;
    assert!(
        rejected["history"].as_array().unwrap().last().unwrap()["detail"]
            .as_str()
            .unwrap()
            .contains("available")
    );
    wait_for_available(&system, &product, 1).await;
    assert_eq!(product_view(&system, &product, None).await["available"], 1);
}

#[tokio::test]
async fn an_unpaid_order_expires_at_its_deadline_and_gives_its_stock_back() {
    let system =
        TestSystem::start_full_with(|config| config.payment_window = Duration::from_secs(1)).await;
    let product = system.product("FLOW-4", 100, 4).await;
    let order = checkout(&system, "frank", &product, 3).await.body["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    system
        .order_becomes("frank", &order, "awaiting_payment")
        .await;
    system.order_becomes("frank", &order, "expired").await;
    wait_for_available(&system, &product, 4).await;
    // The deadline fired once: one OrderExpired, no deadline left.
    let expired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventstore.events WHERE event_type = 'OrderExpired'",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM process.deadlines")
        .fetch_one(&system.db.pool)
        .await
        .unwrap();
    assert_eq!((expired, left), (1, 0));
    // Paying an expired order is refused.
    assert_eq!(
        pay(&system, "frank", &order, "tok_ok").await.status,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_it_and_releases_the_stock() {
    let system = TestSystem::start_full().await;
    let product = system.product("FLOW-5", 2500, 3).await;
    let order = checkout(&system, "gina", &product, 2).await.body["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    system
        .order_becomes("gina", &order, "awaiting_payment")
        .await;
    pay(&system, "gina", &order, "tok_ok").await;
    system.order_becomes("gina", &order, "paid").await;
    let cancelled = system
        .post(
            &format!("/v1/orders/{order}/cancel"),
            &token("gina", &[]),
            json!({ "reason": "too late" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{cancelled:?}");
    system.order_becomes("gina", &order, "refunded").await;
    wait_for_available(&system, &product, 3).await;
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM provider_sim.charges")
        .fetch_one(&system.db.pool)
        .await
        .unwrap();
    assert_eq!(outcome, "refunded");
    let view = order_view(&system, "gina", &order).await.body;
    let refunds = view["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{view}");
    assert_eq!(
        (
            refunds[0]["status"].as_str(),
            refunds[0]["amount"]["amount"].as_i64()
        ),
        (Some("refunded"), Some(5000))
    );
    // Shipping a refunded order is an illegal transition.
    let shipped = ship(&system, &order).await;
    assert_eq!(
        (shipped.status, shipped.problem_code()),
        (StatusCode::CONFLICT, "illegal-order-transition")
    );
}

#[tokio::test]
async fn an_admin_refunds_a_shipped_order_in_parts_never_more_than_was_paid() {
    let system = TestSystem::start_full().await;
    let product = system.product("FLOW-6", 1000, 5).await;
    let order = checkout(&system, "hana", &product, 3).await.body["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    system
        .order_becomes("hana", &order, "awaiting_payment")
        .await;

    // Nothing to refund before payment.
    let early = refund(&system, ADMIN, &order, json!({ "reason": "goodwill" })).await;
    assert_eq!(
        (early.status, early.problem_code()),
        (StatusCode::CONFLICT, "illegal-order-transition"),
        "{early:?}"
    );
    pay(&system, "hana", &order, "tok_ok").await;
    system.order_becomes("hana", &order, "paid").await;
    assert_eq!(ship(&system, &order).await.status, StatusCode::ACCEPTED);
    system.order_becomes("hana", &order, "shipped").await;

    // The owner may not refund themselves; bad bodies change nothing.
    let by_owner = refund(&system, "hana", &order, json!({ "reason": "mine" })).await;
    assert_eq!(by_owner.status, StatusCode::FORBIDDEN, "{by_owner:?}");
    for (body, code) in [
        (json!({}), "validation-failed"),
        (json!({ "reason": "" }), "validation-failed"),
        (
            json!({ "reason": "x", "amount": { "amount": -1, "currency": "EUR" } }),
            "validation-failed",
        ),
        (
            json!({ "reason": "x", "amount": { "amount": 100, "currency": "USD" } }),
            "currency-mismatch",
        ),
        (
            json!({ "reason": "x", "amount": { "amount": 3001, "currency": "EUR" } }),
            "refund-exceeds-payment",
        ),
    ] {
        let refused = refund(&system, ADMIN, &order, body.clone()).await;
        assert_eq!(refused.problem_code(), code, "{body}: {refused:?}");
        assert!(refused.status.is_client_error(), "{refused:?}");
    }

    // A partial refund, retried with the same idempotency key: given back once.
    let partial = json!({ "reason": "one mug arrived broken", "amount": { "amount": 1000, "currency": "EUR" } });
    let send_partial = || {
        system
            .request(
                Method::POST,
                &format!("/v1/orders/{order}/refund"),
                Some(&token(ADMIN, &["admin"])),
            )
            .header("idempotency-key", "refund-broken-mug")
            .json(&partial)
            .send()
    };
    let first = Reply::from(send_partial().await.unwrap()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    let again = Reply::from(send_partial().await.unwrap()).await;
    assert_eq!(again.body["refund_id"], first.body["refund_id"]);
    let refund_id = first.body["refund_id"].as_str().unwrap().to_owned();

    let view = wait_for(&system, "hana", &order, |view| {
        view["refunds"][0]["status"] == "refunded"
    })
    .await;
    assert_eq!(
        view["status"], "shipped",
        "a partial refund keeps the status"
    );
    let refunds = view["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 1, "{view}");
    assert_eq!(refunds[0]["refund_id"], refund_id.as_str());
    assert_eq!(refunds[0]["reason"], "one mug arrived broken");
    assert_eq!(
        refunds[0]["amount"],
        json!({ "amount": 1000, "currency": "EUR" })
    );

    // More than what is left is refused; the rest (no amount) is accepted.
    let too_much = refund(
        &system,
        ADMIN,
        &order,
        json!({ "reason": "x", "amount": { "amount": 2001, "currency": "EUR" } }),
    )
    .await;
    assert_eq!(
        (too_much.status, too_much.problem_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "refund-exceeds-payment"),
        "{too_much:?}"
    );
    let rest = refund(&system, ADMIN, &order, json!({ "reason": "keep the rest" })).await;
    assert_eq!(rest.status, StatusCode::ACCEPTED, "{rest:?}");
    let view = system.order_becomes("hana", &order, "refunded").await;
    assert_eq!(view["refunds"][1]["amount"]["amount"], 2000, "{view}");
    let nothing_left = refund(&system, ADMIN, &order, json!({ "reason": "again" })).await;
    assert_eq!(nothing_left.status.as_u16() / 100, 4, "{nothing_left:?}");

    // The provider gave back exactly what was paid, in two refunds.
    let (count, total): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(sum(amount), 0)::int8 FROM provider_sim.refunds")
            .fetch_one(&system.db.pool)
            .await
            .unwrap();
    assert_eq!((count, total), (2, 3000));
}

#[tokio::test]
async fn cancelling_after_a_partial_refund_gives_back_only_the_rest() {
    let system = TestSystem::start_full().await;
    let product = system.product("FLOW-7", 2500, 2).await;
    let order = checkout(&system, "ines", &product, 1).await.body["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    system
        .order_becomes("ines", &order, "awaiting_payment")
        .await;
    pay(&system, "ines", &order, "tok_ok").await;
    system.order_becomes("ines", &order, "paid").await;
    let partial = refund(
        &system,
        ADMIN,
        &order,
        json!({ "reason": "late", "amount": { "amount": 500, "currency": "EUR" } }),
    )
    .await;
    assert_eq!(partial.status, StatusCode::ACCEPTED, "{partial:?}");
    let cancelled = system
        .post(
            &format!("/v1/orders/{order}/cancel"),
            &token("ines", &[]),
            json!({ "reason": "too late anyway" }),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{cancelled:?}");
    let view = system.order_becomes("ines", &order, "refunded").await;
    let amounts: Vec<i64> = view["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount"]["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [500, 2000], "{view}");
    let total: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(amount), 0)::int8 FROM provider_sim.refunds")
            .fetch_one(&system.db.pool)
            .await
            .unwrap();
    assert_eq!(total, 2500);
}

/// Polls the order view until `done` holds (or fails after 20 s).
async fn wait_for(
    system: &TestSystem,
    user: &str,
    order: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let view = order_view(system, user, order).await;
        if done(&view.body) {
            return view.body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "order {order} never got there: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn fifty_checkouts_race_for_ten_units() {
    let system = TestSystem::start_full().await;
    let product = system.product("RACE-10", 100, 10).await;
    let mut carts = Vec::new();
    for n in 0..50 {
        let user = format!("racer-{n}");
        let cart = system.cart(&user).await;
        let added = system
            .post(
                &format!("/v1/carts/{cart}/items"),
                &token(&user, &[]),
                json!({ "product_id": product, "quantity": 1 }),
            )
            .await;
        assert_eq!(added.status, StatusCode::OK);
        carts.push((user, cart));
    }
    let mut tasks = Vec::new();
    for (user, cart) in carts {
        let (http, url) = (
            system.http.clone(),
            format!("{}/v1/carts/{cart}/checkout", system.gateway),
        );
        tasks.push(tokio::spawn(async move {
            let reply = Reply::from(
                http.post(url)
                    .bearer_auth(token(&user, &[]))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            (user, reply.body["order_id"].as_str().map(str::to_owned))
        }));
    }
    let mut orders = Vec::new();
    for task in tasks {
        let (user, order) = task.await.unwrap();
        orders.push((user, order.expect("every checkout placed an order")));
    }
    // Wait until every order has left "placed", then count.
    let mut statuses = Vec::new();
    for (user, order) in &orders {
        let started = Instant::now();
        loop {
            let status = order_view(&system, user, order).await.body["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if status == "awaiting_payment" || status == "rejected" {
                statuses.push(status);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "order stuck in {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "awaiting_payment").count(),
        10
    );
    assert_eq!(statuses.iter().filter(|s| *s == "rejected").count(), 40);
    let (state, _) = system
        .store
        .load::<domain::product::Product>(&format!("product-{product}"))
        .await
        .unwrap();
    let state = state.0.unwrap();
    assert_eq!((state.available, state.reservations.len()), (0, 10));
    // And never below zero at any point: every StockReserved recorded a non-negative level.
    let levels: Vec<i64> = sqlx::query_scalar(
        "SELECT (data->>'available')::int8 FROM eventstore.events WHERE stream_id = $1 AND event_type = 'StockReserved'",
    )
    .bind(format!("product-{product}"))
    .fetch_all(&system.db.pool)
    .await
    .unwrap();
    assert_eq!(levels.len(), 10);
    assert!(levels.iter().all(|l| *l >= 0));
}

#[tokio::test]
async fn redelivering_every_process_input_changes_nothing() {
    let system = TestSystem::start_full().await;
    let product = system.product("AGAIN-1", 900, 10).await;
    let paid = checkout(&system, "hal", &product, 2).await.body["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cancelled = checkout(&system, "ida", &product, 1).await.body["order_id"]
        .as_str()
        .unwrap()
        .to_owned();
    system.order_becomes("hal", &paid, "awaiting_payment").await;
    system
        .order_becomes("ida", &cancelled, "awaiting_payment")
        .await;
    pay(&system, "hal", &paid, "tok_ok").await;
    system.order_becomes("hal", &paid, "paid").await;
    system
        .post(
            &format!("/v1/orders/{cancelled}/cancel"),
            &token("ida", &[]),
            json!({}),
        )
        .await;
    system.order_becomes("ida", &cancelled, "cancelled").await;
    wait_for_available(&system, &product, 8).await;

    let snapshot = || async {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT stream_id, max(version) FROM eventstore.events GROUP BY stream_id ORDER BY stream_id")
            .fetch_all(&system.db.pool)
            .await
            .unwrap();
        let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_sim.charges")
            .fetch_one(&system.db.pool)
            .await
            .unwrap();
        (rows, charges)
    };
    let before = snapshot().await;
    // Hand every order and payment event to a second order process, as a redelivery would.
    let process = processes::OrderProcess {
        store: system.store.clone(),
        pool: system.db.pool.clone(),
        provider: processes::SimulatedProvider {
            pool: system.db.pool.clone(),
            slow: Duration::ZERO,
        },
        payment_window: chrono::Duration::seconds(60),
    };
    let events = system
        .store
        .read_log(LogPosition::START, 10_000)
        .await
        .unwrap();
    let mut handled = 0;
    for event in events
        .into_iter()
        .filter(|e| matches!(e.stream_type(), "order" | "payment"))
    {
        process
            .handle(messaging::Envelope::from(&event))
            .await
            .expect("a redelivery is handled");
        handled += 1;
    }
    assert_eq!(handled, 11, "5 + 4 order events and 2 payment events");
    assert_eq!(
        snapshot().await,
        before,
        "no stream moved and nothing was charged again"
    );
}
