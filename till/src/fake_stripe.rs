//! A local fake of the parts of Stripe's HTTP API Tillstream calls, speaking Stripe's request
//! and response shapes (form-encoded requests, JSON answers, `Idempotency-Key`, bearer API
//! key), so the Stripe adapter is tested over real HTTP (`testkit` re-exports it), and so the
//! Stripe path can be run locally without a Stripe account (`till fake-stripe`). It sends
//! signed webhooks to the URL it is given, on time, late, twice or never, as a test asks.
//!
//! Test payment methods (Stripe's own names where Stripe has one):
//! - `pm_card_visa`: succeeds.
//! - `pm_card_chargeDeclined`: declined (402 card error; the intent needs another method).
//! - `pm_card_authenticationRequired`: `requires_action` until [`FakeStripe::complete_action`].
//! - `pm_card_processing`: `processing`, then succeeds shortly after (by webhook only).
//! - `pm_card_flaky`: Stripe fails (500) twice per idempotency key, then succeeds.
//! - anything else: 400, no such payment method.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// How the fake delivers webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliveries {
    OnTime,
    /// Lost: never sent.
    Never,
    /// Sent twice.
    Twice,
    /// Sent after this long.
    Late(Duration),
}

#[derive(Debug, Default)]
struct Ledger {
    intents: HashMap<String, Value>,
    /// Stored answers by idempotency key: a retry gets the first answer again.
    answers: HashMap<String, (u16, Value)>,
    /// Requests per idempotency key, failed ones included.
    attempts: HashMap<String, u32>,
    /// Charges made per idempotency key: must never exceed one.
    charges: HashMap<String, u32>,
    refunds: Vec<Value>,
    events: u64,
}

#[derive(Debug)]
struct Fake {
    api_key: String,
    secret: String,
    webhook_url: Mutex<Option<String>>,
    deliveries: Mutex<Deliveries>,
    ledger: Mutex<Ledger>,
    http: reqwest::Client,
}

/// The running fake; stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct FakeStripe {
    pub url: String,
    fake: Arc<Fake>,
}

impl FakeStripe {
    /// Starts on a free port, accepting `api_key` and signing webhooks with `secret`.
    pub async fn start(api_key: &str, secret: &str) -> Self {
        Self::start_on("127.0.0.1:0", api_key, secret)
            .await
            .expect("bind a free port")
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: &str, api_key: &str, secret: &str) -> std::io::Result<Self> {
        let fake = Arc::new(Fake {
            api_key: api_key.to_owned(),
            secret: secret.to_owned(),
            webhook_url: Mutex::new(None),
            deliveries: Mutex::new(Deliveries::OnTime),
            ledger: Mutex::new(Ledger::default()),
            http: reqwest::Client::new(),
        });
        let app = Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/{id}", get(get_intent))
            .route("/v1/refunds", post(create_refund))
            .with_state(fake.clone());
        let listener = TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { url, fake })
    }

    /// Where webhooks go.
    pub fn send_webhooks_to(&self, url: &str) {
        *self.fake.webhook_url.lock().unwrap() = Some(url.to_owned());
    }

    pub fn deliver(&self, deliveries: Deliveries) {
        *self.fake.deliveries.lock().unwrap() = deliveries;
    }

    /// Charges made under an idempotency key (a payment id): never more than one.
    pub fn charges(&self, key: &str) -> u32 {
        self.fake
            .ledger
            .lock()
            .unwrap()
            .charges
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Requests made under an idempotency key, failed ones included.
    pub fn attempts(&self, key: &str) -> u32 {
        self.fake
            .ledger
            .lock()
            .unwrap()
            .attempts
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// The amounts refunded of a PaymentIntent, in order.
    pub fn refunds(&self, intent: &str) -> Vec<i64> {
        self.fake
            .ledger
            .lock()
            .unwrap()
            .refunds
            .iter()
            .filter(|r| r["payment_intent"] == intent)
            .filter_map(|r| r["amount"].as_i64())
            .collect()
    }

    /// The intent made for a payment id.
    pub fn intent_of(&self, payment_id: &str) -> Option<Value> {
        self.fake
            .ledger
            .lock()
            .unwrap()
            .intents
            .values()
            .find(|i| i["metadata"]["payment_id"] == payment_id)
            .cloned()
    }

    /// The customer completes the authentication an intent waits for: it succeeds.
    pub async fn complete_action(&self, intent: &str) {
        let object = {
            let mut ledger = self.fake.ledger.lock().unwrap();
            let intent = ledger.intents.get_mut(intent).expect("a known intent");
            intent["status"] = json!("succeeded");
            intent.clone()
        };
        self.fake.webhook("payment_intent.succeeded", object);
    }

    /// A signed webhook with this event, as Stripe would send it (for tests of the endpoint).
    pub fn signed(&self, event: &Value, timestamp: i64) -> (String, String) {
        let body = event.to_string();
        let signature = processes::stripe::sign(body.as_bytes(), &self.fake.secret, timestamp);
        (body, signature)
    }
}

impl Fake {
    fn authorised(&self, headers: &HeaderMap) -> bool {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == format!("Bearer {}", self.api_key))
    }

    /// Sends an event about `object` to the webhook URL, as the deliveries setting says.
    fn webhook(self: &Arc<Self>, kind: &str, object: Value) {
        let Some(url) = self.webhook_url.lock().unwrap().clone() else {
            return;
        };
        let id = {
            let mut ledger = self.ledger.lock().unwrap();
            ledger.events += 1;
            format!("evt_{}", ledger.events)
        };
        let event =
            json!({ "id": id, "object": "event", "type": kind, "data": { "object": object } });
        let deliveries = *self.deliveries.lock().unwrap();
        let (times, delay) = match deliveries {
            Deliveries::Never => return,
            Deliveries::OnTime => (1, Duration::from_millis(20)),
            Deliveries::Twice => (2, Duration::from_millis(20)),
            Deliveries::Late(delay) => (1, delay),
        };
        let fake = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for _ in 0..times {
                let body = event.to_string();
                let now = chrono_now();
                let signature = processes::stripe::sign(body.as_bytes(), &fake.secret, now);
                // Stripe retries failed deliveries for days; a few tries do here.
                for _ in 0..20 {
                    let sent = fake
                        .http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("stripe-signature", &signature)
                        .body(body.clone())
                        .send()
                        .await;
                    if sent.is_ok_and(|r| r.status().is_success()) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The `metadata[<name>]` fields of a form, as Stripe's `metadata` object.
fn metadata(form: &HashMap<String, String>) -> serde_json::Map<String, Value> {
    form.iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_owned(), json!(v)))
        })
        .collect()
}

fn error(status: StatusCode, kind: &str, message: &str, extra: Value) -> (u16, Value) {
    let mut error = json!({ "type": kind, "message": message });
    if let (Some(error), Some(extra)) = (error.as_object_mut(), extra.as_object()) {
        error.extend(extra.clone());
    }
    (status.as_u16(), json!({ "error": error }))
}

fn answer((status, body): (u16, Value)) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

/// Runs `make` once per idempotency key; a retry with the key gets the stored answer (except
/// a 5xx, which Stripe does not keep: the retry runs again).
fn idempotent(
    fake: &Fake,
    headers: &HeaderMap,
    make: impl FnOnce(&mut Ledger, &str) -> (u16, Value),
) -> Response {
    if !fake.authorised(headers) {
        return answer(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided",
            json!({}),
        ));
    }
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return answer(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "this fake wants an Idempotency-Key on every POST",
            json!({}),
        ));
    };
    let mut ledger = fake.ledger.lock().unwrap();
    *ledger.attempts.entry(key.clone()).or_default() += 1;
    if let Some(stored) = ledger.answers.get(&key) {
        return answer(stored.clone());
    }
    let made = make(&mut ledger, &key);
    if made.0 < 500 {
        ledger.answers.insert(key, made.clone());
    }
    answer(made)
}

async fn create_intent(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut news = None;
    let response = idempotent(&fake, &headers, |ledger, key| {
        let method = form.get("payment_method").cloned().unwrap_or_default();
        if method == "pm_card_flaky" && ledger.attempts.get(key).copied().unwrap_or(0) <= 2 {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "An unknown error occurred",
                json!({}),
            );
        }
        let (status, error_message) = match method.as_str() {
            "pm_card_visa" | "pm_card_flaky" => ("succeeded", None),
            "pm_card_chargeDeclined" => {
                ("requires_payment_method", Some("Your card was declined."))
            }
            "pm_card_authenticationRequired" => ("requires_action", None),
            "pm_card_processing" => ("processing", None),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("No such PaymentMethod: '{method}'"),
                    json!({ "code": "resource_missing" }),
                );
            }
        };
        let id = format!("pi_{}", ledger.intents.len() + 1);
        let metadata = metadata(&form);
        let mut intent = json!({
            "id": id, "object": "payment_intent", "status": status,
            "amount": form.get("amount").and_then(|a| a.parse::<i64>().ok()),
            "currency": form.get("currency"), "metadata": metadata,
            "last_payment_error": null,
        });
        if let Some(message) = error_message {
            intent["last_payment_error"] =
                json!({ "type": "card_error", "code": "card_declined", "message": message });
        }
        *ledger.charges.entry(key.to_owned()).or_default() += 1;
        ledger.intents.insert(id, intent.clone());
        news = match status {
            "succeeded" => Some(("payment_intent.succeeded", intent.clone())),
            "requires_payment_method" => Some(("payment_intent.payment_failed", intent.clone())),
            "processing" => {
                let mut done = intent.clone();
                done["status"] = json!("succeeded");
                Some(("payment_intent.succeeded", done))
            }
            _ => None,
        };
        match error_message {
            Some(message) => error(
                StatusCode::PAYMENT_REQUIRED,
                "card_error",
                message,
                json!({ "code": "card_declined", "payment_intent": intent }),
            ),
            None => (200, intent),
        }
    });
    if let Some((kind, object)) = news {
        if object["status"] == "succeeded"
            && let Some(id) = object["id"].as_str()
        {
            // A processing intent succeeds at Stripe by the time the webhook says so.
            fake.ledger
                .lock()
                .unwrap()
                .intents
                .insert(id.to_owned(), object.clone());
        }
        fake.webhook(kind, object);
    }
    response
}

async fn get_intent(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !fake.authorised(&headers) {
        return answer(error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided",
            json!({}),
        ));
    }
    match fake.ledger.lock().unwrap().intents.get(&id) {
        Some(intent) => answer((200, intent.clone())),
        None => answer(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!("No such payment_intent: '{id}'"),
            json!({ "code": "resource_missing" }),
        )),
    }
}

async fn create_refund(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut news = None;
    let response = idempotent(&fake, &headers, |ledger, _| {
        let intent_id = form.get("payment_intent").cloned().unwrap_or_default();
        let Some(intent) = ledger.intents.get(&intent_id).cloned() else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("No such payment_intent: '{intent_id}'"),
                json!({ "code": "resource_missing" }),
            );
        };
        let captured = intent["amount"].as_i64().unwrap_or(0);
        let refunded: i64 = ledger
            .refunds
            .iter()
            .filter(|r| r["payment_intent"] == intent_id.as_str())
            .filter_map(|r| r["amount"].as_i64())
            .sum();
        let amount = form
            .get("amount")
            .and_then(|a| a.parse::<i64>().ok())
            .unwrap_or(captured - refunded);
        if intent["status"] != "succeeded" || amount <= 0 || refunded + amount > captured {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Refund amount is greater than unrefunded amount on charge",
                json!({ "code": "amount_too_large" }),
            );
        }
        let metadata = metadata(&form);
        let refund = json!({
            "id": format!("re_{}", ledger.refunds.len() + 1), "object": "refund",
            "amount": amount, "payment_intent": intent_id, "status": "succeeded",
            "metadata": metadata,
        });
        ledger.refunds.push(refund.clone());
        let all: Vec<Value> = ledger
            .refunds
            .iter()
            .filter(|r| r["payment_intent"] == intent_id.as_str())
            .cloned()
            .collect();
        news = Some(json!({
            "id": format!("ch_{}", intent_id.trim_start_matches("pi_")), "object": "charge",
            "payment_intent": intent_id, "amount": captured,
            "amount_refunded": refunded + amount, "metadata": intent["metadata"],
            "refunds": { "object": "list", "data": all },
        }));
        (200, refund)
    });
    if let Some(charge) = news {
        fake.webhook("charge.refunded", charge);
    }
    response
}
