//! Payments through Stripe, end to end through the gateway against a local fake of Stripe's
//! HTTP API (`testkit::FakeStripe`): the confirm's answer and the signed webhooks may each bring
//! the outcome, in any order and twice, and the order ends in the same state once.

use std::time::{Duration, Instant};

use processes::stripe::StripeSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::fake_stripe::Deliveries;
use testkit::{FakeStripe, Reply, TestSystem, token};
use till::settings::Payments;

const API_KEY: &str = "sk_test_tillstream";
const SECRET: &str = "whsec_tillstream";
const ADMIN: &str = "admin";

async fn start() -> (TestSystem, FakeStripe) {
    let stripe = FakeStripe::start(API_KEY, SECRET).await;
    let settings = StripeSettings {
        api_base: stripe.url.clone(),
        api_key: API_KEY.to_owned(),
        webhook_secrets: vec!["whsec_old".to_owned(), SECRET.to_owned()],
    };
    let system = TestSystem::start_full_with(|config| {
        config.payments = Payments::Stripe(settings);
    })
    .await;
    stripe.send_webhooks_to(&format!("{}/v1/webhooks/payments/stripe", system.gateway));
    (system, stripe)
}

/// An order of `user` for one unit, awaiting payment.
async fn order(system: &TestSystem, user: &str, sku: &str) -> String {
    let product = system.product(sku, 1500, 10).await;
    let cart = system.cart(user).await;
    let added = system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &token(user, &[]),
            json!({ "product_id": product, "quantity": 1 }),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{added:?}");
    let placed = system
        .send(
            Method::POST,
            &format!("/v1/carts/{cart}/checkout"),
            Some(&token(user, &[])),
            None,
        )
        .await;
    let order = placed.body["order_id"].as_str().unwrap().to_owned();
    system.order_becomes(user, &order, "awaiting_payment").await;
    order
}

async fn pay(system: &TestSystem, user: &str, order: &str, method: &str) -> String {
    let paid = system
        .post(
            &format!("/v1/orders/{order}/pay"),
            &token(user, &[]),
            json!({ "payment_token": method }),
        )
        .await;
    assert_eq!(paid.status, StatusCode::ACCEPTED, "{paid:?}");
    paid.body["payment_id"].as_str().unwrap().to_owned()
}

/// The types of a payment stream's events, in order.
async fn payment_events(system: &TestSystem, payment_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT event_type FROM eventstore.events WHERE stream_id = $1 ORDER BY version",
    )
    .bind(format!("payment-{payment_id}"))
    .fetch_all(&system.db.pool)
    .await
    .unwrap()
}

async fn post_webhook(system: &TestSystem, body: String, signature: Option<String>) -> Reply {
    let mut request = system
        .http
        .post(format!("{}/v1/webhooks/payments/stripe", system.gateway))
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    Reply::from(request.send().await.unwrap()).await
}

#[tokio::test]
async fn a_payment_succeeds_by_the_confirm_alone_and_by_the_webhook_alone() {
    let (system, stripe) = start().await;
    // The confirm answers `succeeded`; every webhook is lost.
    stripe.deliver(Deliveries::Never);
    let order = order(&system, "sam", "STRIPE-1").await;
    let payment = pay(&system, "sam", &order, "pm_card_visa").await;
    let view = system.order_becomes("sam", &order, "paid").await;
    assert_eq!(stripe.charges(&payment), 1);
    // The order view names the provider and its id of the payment.
    let intent = stripe.intent_of(&payment).unwrap();
    assert_eq!(view["payments"][0]["provider"], "stripe", "{view}");
    assert_eq!(
        view["payments"][0]["provider_reference"], intent["id"],
        "{view}"
    );
    assert_eq!(view["payments"][0]["status"], "captured");

    // The confirm answers `processing`; only the webhook says it succeeded.
    stripe.deliver(Deliveries::OnTime);
    let order = order_again(&system, "sam", "STRIPE-1B").await;
    let payment = pay(&system, "sam", &order, "pm_card_processing").await;
    system.order_becomes("sam", &order, "paid").await;
    let events = payment_events(&system, &payment).await;
    assert_eq!(
        events.iter().filter(|e| *e == "PaymentCaptured").count(),
        1,
        "{events:?}"
    );
}

async fn order_again(system: &TestSystem, user: &str, sku: &str) -> String {
    order(system, user, sku).await
}

#[tokio::test]
async fn confirm_and_webhooks_in_any_order_and_twice_record_one_capture() {
    let (system, stripe) = start().await;
    for (n, deliveries) in [
        Deliveries::Twice,
        Deliveries::Late(Duration::from_millis(400)),
    ]
    .into_iter()
    .enumerate()
    {
        stripe.deliver(deliveries);
        let user = format!("tia-{n}");
        let order = order(&system, &user, &format!("STRIPE-2-{n}")).await;
        let payment = pay(&system, &user, &order, "pm_card_visa").await;
        system.order_becomes(&user, &order, "paid").await;
        // Let the late or second webhook arrive, then count.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let events = payment_events(&system, &payment).await;
        assert_eq!(
            events.iter().filter(|e| *e == "PaymentCaptured").count(),
            1,
            "{deliveries:?}: {events:?}"
        );
        assert_eq!(stripe.charges(&payment), 1);
        let view = system.order_becomes(&user, &order, "paid").await;
        let paid = view["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["event"] == "OrderPaid")
            .count();
        assert_eq!(paid, 1, "{view}");
    }
}

#[tokio::test]
async fn a_declined_card_can_be_retried_and_an_authentication_waits_for_the_customer() {
    let (system, stripe) = start().await;
    let order = order(&system, "uma", "STRIPE-3").await;
    pay(&system, "uma", &order, "pm_card_chargeDeclined").await;
    let declined = system
        .order_becomes("uma", &order, "payment_declined")
        .await;
    assert_eq!(
        declined["history"].as_array().unwrap().last().unwrap()["detail"],
        "Your card was declined."
    );
    pay(&system, "uma", &order, "pm_card_visa").await;
    system.order_becomes("uma", &order, "paid").await;

    // 3-D Secure: the payment waits, marked as waiting for the customer, until they act.
    let order = order_again(&system, "uma", "STRIPE-3B").await;
    let payment = pay(&system, "uma", &order, "pm_card_authenticationRequired").await;
    let started = Instant::now();
    while !payment_events(&system, &payment)
        .await
        .contains(&"PaymentPending".to_owned())
    {
        assert!(started.elapsed() < Duration::from_secs(20), "never pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    loop {
        let view = system.order_becomes("uma", &order, "payment_pending").await;
        if view["payments"][0]["status"] == "action_required" {
            assert_eq!(view["payments"][0]["provider"], "stripe");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{view}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let intent = stripe.intent_of(&payment).expect("an intent");
    stripe.complete_action(intent["id"].as_str().unwrap()).await;
    system.order_becomes("uma", &order, "paid").await;
}

#[tokio::test]
async fn refunds_in_part_and_in_full_go_through_stripe_never_above_the_payment() {
    let (system, stripe) = start().await;
    let order = order(&system, "vic", "STRIPE-4").await;
    let payment = pay(&system, "vic", &order, "pm_card_visa").await;
    system.order_becomes("vic", &order, "paid").await;
    let refund = |body: Value| {
        let system = &system;
        let order = order.clone();
        async move {
            system
                .post(
                    &format!("/v1/orders/{order}/refund"),
                    &token(ADMIN, &["admin"]),
                    body,
                )
                .await
        }
    };
    let part =
        refund(json!({ "reason": "scratched", "amount": { "amount": 400, "currency": "EUR" } }))
            .await;
    assert_eq!(part.status, StatusCode::ACCEPTED, "{part:?}");
    let too_much =
        refund(json!({ "reason": "x", "amount": { "amount": 1101, "currency": "EUR" } })).await;
    assert_eq!(too_much.problem_code(), "refund-exceeds-payment");
    let rest = refund(json!({ "reason": "returned" })).await;
    assert_eq!(rest.status, StatusCode::ACCEPTED, "{rest:?}");
    let view = system.order_becomes("vic", &order, "refunded").await;
    let intent = stripe.intent_of(&payment).unwrap();
    assert_eq!(stripe.refunds(intent["id"].as_str().unwrap()), [400, 1100]);
    let refunds = view["refunds"].as_array().unwrap();
    assert_eq!(refunds.len(), 2, "{view}");
    for refund in refunds {
        assert_eq!(refund["provider"], "stripe", "{view}");
        assert!(
            refund["provider_refund_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("re_")),
            "{view}"
        );
    }
}

#[tokio::test]
async fn a_webhook_with_a_bad_signature_changes_nothing_and_a_good_one_applies_once() {
    let (system, stripe) = start().await;
    stripe.deliver(Deliveries::Never);
    let order = order(&system, "wes", "STRIPE-5").await;
    let payment = pay(&system, "wes", &order, "pm_card_authenticationRequired").await;
    system.order_becomes("wes", &order, "payment_pending").await;
    let intent = loop {
        if let Some(intent) = stripe.intent_of(&payment) {
            break intent;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut succeeded = intent.clone();
    succeeded["status"] = json!("succeeded");
    let event = json!({
        "id": "evt_forged_or_not", "object": "event", "type": "payment_intent.succeeded",
        "data": { "object": succeeded },
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (body, signature) = stripe.signed(&event, now);
    let wrong_secret = processes::stripe::sign(body.as_bytes(), "whsec_guess", now);
    let (_, stale) = stripe.signed(&event, now - 600);
    let tampered = body.replace("succeeded", "succeeded ");
    for (what, body, signature) in [
        ("wrong secret", body.clone(), Some(wrong_secret)),
        ("stale timestamp", body.clone(), Some(stale)),
        ("tampered body", tampered, Some(signature.clone())),
        ("no signature", body.clone(), None),
    ] {
        let refused = post_webhook(&system, body, signature).await;
        assert_eq!(
            (refused.status, refused.problem_code()),
            (StatusCode::BAD_REQUEST, "invalid-signature"),
            "{what}"
        );
    }
    let events = payment_events(&system, &payment).await;
    assert!(
        !events.contains(&"PaymentCaptured".to_owned()),
        "{events:?}"
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM process.provider_events")
        .fetch_one(&system.db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 0);

    let applied = post_webhook(&system, body.clone(), Some(signature.clone())).await;
    assert_eq!(applied.status, StatusCode::OK, "{applied:?}");
    assert_eq!(applied.body["outcome"], "recorded");
    let again = post_webhook(&system, body, Some(signature)).await;
    assert_eq!(again.body["outcome"], "duplicate");
    system.order_becomes("wes", &order, "paid").await;
    let events = payment_events(&system, &payment).await;
    assert_eq!(
        events.iter().filter(|e| *e == "PaymentCaptured").count(),
        1,
        "{events:?}"
    );
}

#[tokio::test]
async fn stripe_failing_is_retried_and_charges_once() {
    let (system, stripe) = start().await;
    let order = order(&system, "xia", "STRIPE-6").await;
    let payment = pay(&system, "xia", &order, "pm_card_flaky").await;
    system.order_becomes("xia", &order, "paid").await;
    assert!(
        stripe.attempts(&payment) >= 3,
        "{}",
        stripe.attempts(&payment)
    );
    assert_eq!(stripe.charges(&payment), 1);
}

#[tokio::test]
async fn a_lost_webhook_is_recovered_by_the_reconciliation() {
    let (system, stripe) = start().await;
    // Processing at the confirm, and its webhook lost: only asking Stripe later can tell.
    stripe.deliver(Deliveries::Never);
    let order = order(&system, "yan", "STRIPE-7").await;
    let payment = pay(&system, "yan", &order, "pm_card_processing").await;
    system.order_becomes("yan", &order, "paid").await;
    let events = payment_events(&system, &payment).await;
    assert_eq!(
        events,
        ["PaymentRequested", "PaymentPending", "PaymentCaptured"],
        "pending, then captured by the reconciliation"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM process.pending_payments")
        .fetch_one(&system.db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_webhook_about_nothing_of_ours_or_not_an_event_or_for_another_provider_changes_nothing() {
    let (system, stripe) = start().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let strangers = json!({
        "id": "evt_not_ours", "object": "event", "type": "payment_intent.succeeded",
        "data": { "object": {
            "id": "pi_elsewhere", "object": "payment_intent", "status": "succeeded",
            "metadata": { "payment_id": "00000000-0000-0000-0000-00000000beef" },
        } },
    });
    let (body, signature) = stripe.signed(&strangers, now);
    let ignored = post_webhook(&system, body, Some(signature)).await;
    assert_eq!(ignored.status, StatusCode::OK, "{ignored:?}");
    assert_eq!(ignored.body["outcome"], "ignored");
    let payments: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventstore.events WHERE stream_id LIKE 'payment-%'",
    )
    .fetch_one(&system.db.pool)
    .await
    .unwrap();
    assert_eq!(payments, 0, "no payment stream for a stranger's payment");

    let (body, signature) = stripe.signed(&json!(["not", "an", "event"]), now);
    let malformed = post_webhook(&system, body, Some(signature)).await;
    assert_eq!(
        (malformed.status, malformed.problem_code()),
        (StatusCode::BAD_REQUEST, "malformed-event")
    );

    let elsewhere = system
        .http
        .post(format!("{}/v1/webhooks/payments/paypal", system.gateway))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let elsewhere = Reply::from(elsewhere).await;
    assert_eq!(
        (elsewhere.status, elsewhere.problem_code()),
        (StatusCode::NOT_FOUND, "unknown-payment-provider")
    );
}
