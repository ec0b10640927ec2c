//! Seeing inside the running system, as an operator would: the services run as separate
//! processes (`till serve …`) exporting traces over OTLP/HTTP to a local receiver that decodes
//! the real protobuf, and answering `/metrics` on their operations ports.
//!
//! - One purchase (add to cart → checkout → pay) shows as connected traces: gateway → command
//!   API → append → relay → every projector and the order process, each process step's own
//!   appends and publications in the same trace.
//! - Every metric a dashboard panel or an alert rule uses is exported by the running system.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::processes::{Dependencies, Processes};
use testkit::{OtlpReceiver, ReceivedSpan, TestBus, TestDatabase, token};

struct Shop {
    http: reqwest::Client,
    gateway: String,
}

impl Shop {
    /// Sends a command or read; returns the status, body and the trace id of the answer.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.gateway))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the gateway answers");
        let status = response.status();
        let trace = response
            .headers()
            .get("traceresponse")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split('-').nth(1))
            .expect("every answer names its trace")
            .to_owned();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, trace)
    }
}

fn by_id(spans: &[ReceivedSpan]) -> HashMap<&str, &ReceivedSpan> {
    spans.iter().map(|s| (s.span_id.as_str(), s)).collect()
}

/// The span `span` continues: its parent, or the span it links to.
fn caused_by<'a>(
    span: &ReceivedSpan,
    spans: &HashMap<&str, &'a ReceivedSpan>,
) -> Option<&'a ReceivedSpan> {
    spans
        .get(span.parent_span_id.as_str())
        .copied()
        .or_else(|| {
            span.links
                .iter()
                .find_map(|(_, id)| spans.get(id.as_str()).copied())
        })
}

/// Waits until the receiver holds spans of `trace` for which `complete` holds.
async fn trace_until(
    receiver: &OtlpReceiver,
    trace: &str,
    what: &str,
    complete: impl Fn(&[ReceivedSpan]) -> bool,
) -> Vec<ReceivedSpan> {
    let started = Instant::now();
    loop {
        let spans = receiver.trace(trace);
        if complete(&spans) {
            return spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "trace {trace} never showed {what}; it has:\n{}\nall spans received: {:#?}",
            testkit::otlp_receiver::render_tree(&spans),
            receiver
                .spans()
                .iter()
                .map(|s| format!(
                    "{} {} {} {}",
                    s.service, s.name, s.trace_id, s.parent_span_id
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has(spans: &[ReceivedSpan], service: &str, name: &str) -> bool {
    spans
        .iter()
        .any(|s| s.service == service && s.name.contains(name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_purchase_is_one_connected_trace_from_the_gateway_to_every_projector_and_process() {
    let db = TestDatabase::new().await;
    let prefix = testkit::redis::test_prefix();
    let bus = TestBus::with_topology(messaging::Topology::new(prefix.clone()));
    for (consumer, _) in till::services::consumers() {
        bus.consumer(consumer);
    }
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut processes = Processes::new(
        env!("CARGO_BIN_EXE_till"),
        &Dependencies {
            database_url: db.url.clone(),
            amqp_url: platform::settings::amqp_url(),
            redis_url: platform::settings::redis_url(),
            prefix: prefix.clone(),
        },
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
        ],
    );
    processes.start_all().await;
    let shop = Shop {
        http: reqwest::Client::new(),
        gateway: processes.url("gateway"),
    };
    let (admin, alice) = (token("admin", &["admin"]), token("alice", &[]));
    let post = reqwest::Method::POST;

    let (status, product, _) = shop
        .call(
            post.clone(),
            "/v1/products",
            &admin,
            Some(json!({
                "sku": "TRACE-1", "name": "Traced kettle", "category": "kitchen",
                "price": { "amount": 2500, "currency": "EUR" }, "stock": 5
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    let product = product["product_id"].as_str().unwrap().to_owned();
    let (status, cart, _) = shop.call(post.clone(), "/v1/carts", &alice, None).await;
    assert_eq!(status, StatusCode::CREATED, "{cart}");
    let cart = cart["cart_id"].as_str().unwrap().to_owned();
    let (status, added, add_trace) = shop
        .call(
            post.clone(),
            &format!("/v1/carts/{cart}/items"),
            &alice,
            Some(json!({ "product_id": product, "quantity": 2 })),
        )
        .await;
    assert!(status.is_success(), "{status} {added}");
    let (status, order, checkout_trace) = shop
        .call(
            post.clone(),
            &format!("/v1/carts/{cart}/checkout"),
            &alice,
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {order}");
    let order = order["order_id"].as_str().unwrap().to_owned();
    // Paying needs the stock held first.
    let started = Instant::now();
    let pay_trace = loop {
        let (status, body, trace) = shop
            .call(
                post.clone(),
                &format!("/v1/orders/{order}/pay"),
                &alice,
                Some(json!({ "payment_token": "tok_ok" })),
            )
            .await;
        if status.is_success() {
            break trace;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Adding to the cart: gateway → command API → append → relay → carts projector.
    let add = trace_until(&receiver, &add_trace, "the carts projector", |spans| {
        has(spans, "tillstream-projectors", "projector.carts")
            && has(spans, "tillstream-projectors", "carts apply")
    })
    .await;
    println!(
        "add to cart, trace {add_trace}:\n{}",
        testkit::otlp_receiver::render_tree(&add)
    );
    let spans = by_id(&add);
    let find = |service: &str, name: &str| {
        add.iter()
            .find(|s| s.service == service && s.name.contains(name))
            .unwrap_or_else(|| panic!("no {service} span named {name}"))
    };
    let gateway = find("tillstream-gateway", "POST /v1/{*path}");
    assert_eq!(gateway.parent_span_id, "", "the gateway starts the trace");
    assert_eq!(gateway.attribute("http.response.status_code"), Some("200"));
    let command = find("tillstream-command-api", "/v1/carts/{id}/items");
    let hop = caused_by(command, &spans).expect("the command API continues the trace");
    assert_eq!(
        (
            hop.service.as_str(),
            caused_by(hop, &spans).map(|s| &s.span_id)
        ),
        ("tillstream-gateway", Some(&gateway.span_id)),
        "the command API's span is a child of the gateway's forward"
    );
    let append = find("tillstream-command-api", "eventstore.append");
    assert_eq!(append.attribute("db.system"), Some("postgresql"));
    let publish = find("tillstream-relay", "publish");
    assert_eq!(publish.attribute("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        caused_by(publish, &spans).map(|s| s.service.as_str()),
        Some("tillstream-command-api"),
        "the relay continues the command's trace"
    );
    let projector = find("tillstream-projectors", "projector.carts");
    assert_eq!(
        caused_by(projector, &spans).map(|s| &s.span_id),
        Some(&publish.span_id),
        "the projector continues from the publication"
    );
    assert_eq!(
        find("tillstream-projectors", "carts apply").attribute("db.system"),
        Some("redis")
    );

    // Checking out: the orders projector, and the order process holding stock — its own
    // appends published and projected (products) in the same trace.
    let checkout = trace_until(
        &receiver,
        &checkout_trace,
        "the order process and the orders and products projectors",
        |spans| {
            has(spans, "tillstream-projectors", "projector.orders")
                && has(spans, "tillstream-projectors", "projector.products")
                && has(spans, "tillstream-processes", "process.orders")
                && has(spans, "tillstream-processes", "eventstore.append")
        },
    )
    .await;
    println!(
        "checkout, trace {checkout_trace}:\n{}",
        testkit::otlp_receiver::render_tree(&checkout)
    );
    let spans = by_id(&checkout);
    for span in &checkout {
        let connected = span.parent_span_id.is_empty()
            || spans.contains_key(span.parent_span_id.as_str())
            || !span.links.is_empty();
        assert!(
            connected,
            "{}: {} has a parent outside the trace",
            span.service, span.name
        );
    }
    let roots: Vec<_> = checkout
        .iter()
        .filter(|s| s.trace_id == checkout_trace && s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");

    // Paying: the order process calls the provider inside the trace.
    let pay = trace_until(&receiver, &pay_trace, "the payment", |spans| {
        has(spans, "tillstream-processes", "payment.charge")
            && has(spans, "tillstream-projectors", "projector.orders")
    })
    .await;
    println!(
        "pay, trace {pay_trace}:\n{}",
        testkit::otlp_receiver::render_tree(&pay)
    );

    // A read waits for the shopper's own write inside its trace.
    let (status, _, read_trace) = shop
        .call(
            reqwest::Method::GET,
            &format!("/v1/orders/{order}"),
            &alice,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    trace_until(&receiver, &read_trace, "the query API's read", |spans| {
        has(spans, "tillstream-query-api", "GET /v1/orders/{id}")
    })
    .await;

    // Every service exported, under its own name.
    let services: BTreeSet<String> = receiver.spans().into_iter().map(|s| s.service).collect();
    for service in [
        "tillstream-gateway",
        "tillstream-command-api",
        "tillstream-query-api",
        "tillstream-relay",
        "tillstream-projectors",
        "tillstream-processes",
    ] {
        assert!(
            services.contains(service),
            "{service} missing: {services:?}"
        );
    }
}
