//! Seeing inside the running system, as an operator would: the services run as separate
//! processes (`till serve …`) exporting traces over OTLP/HTTP to a local receiver that decodes
//! the real protobuf, and answering `/metrics` on their operations ports.
//!
//! - One purchase (add to cart → checkout → pay) shows as connected traces: gateway → command
//!   API → append → relay → every projector and the order process, each process step's own
//!   appends and publications in the same trace.
//! - Every metric a dashboard panel or an alert rule uses is exported by the running system.
//! - A collector that is down neither fails nor slows a command and its read.

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
        self.call_after(method, path, token, body, None).await
    }

    /// Like `call`, waiting for the write that answered `consistency` to be visible.
    async fn call_after(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        consistency: Option<&str>,
    ) -> (StatusCode, Value, String) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.gateway))
            .bearer_auth(token);
        if let Some(consistency) = consistency {
            request = request.header("x-consistency-token", consistency);
        }
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
        let consistency = response
            .headers()
            .get("x-consistency-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body: Value = response.json().await.unwrap_or(Value::Null);
        if let (Some(token), Value::Object(fields)) = (consistency, &mut body) {
            fields.insert("consistency_token".into(), token.into());
        }
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

/// Waits until the receiver holds spans of `trace` for which `complete` holds; prints them as
/// a tree.
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
            println!(
                "{what}, trace {trace}:\n{}",
                testkit::otlp_receiver::render_tree(&spans)
            );
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

/// Whether every span's parent (or linked span) has arrived: each service exports in its own
/// batches, so a child can arrive before its parent does.
fn connected(spans: &[ReceivedSpan]) -> bool {
    let ids = by_id(spans);
    spans.iter().all(|span| {
        span.parent_span_id.is_empty()
            || ids.contains_key(span.parent_span_id.as_str())
            || !span.links.is_empty()
    })
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
    let (pay_trace, paid) = loop {
        let (status, body, trace) = shop
            .call(
                post.clone(),
                &format!("/v1/orders/{order}/pay"),
                &alice,
                Some(json!({ "payment_token": "tok_ok" })),
            )
            .await;
        if status.is_success() {
            break (trace, body);
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
    let spans = by_id(&add);
    let find = |service: &str, name: &str| {
        add.iter()
            .find(|s| s.service == service && s.name.contains(name))
            .unwrap_or_else(|| panic!("no {service} span named {name}"))
    };
    let gateway = add
        .iter()
        .find(|s| s.service == "tillstream-gateway" && s.parent_span_id.is_empty())
        .expect("the gateway's span");
    assert_eq!(
        gateway.name, "POST /v1/carts/{id}/items",
        "named by the API's route"
    );
    assert_eq!(
        gateway.attribute("http.route"),
        Some("/v1/carts/{id}/items")
    );
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
                // No span whose parent is outside the trace, once every batch is in.
                && connected(spans)
        },
    )
    .await;
    let roots: Vec<_> = checkout
        .iter()
        .filter(|s| s.trace_id == checkout_trace && s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:?}");

    // Paying: the order process calls the provider inside the trace.
    trace_until(&receiver, &pay_trace, "the payment", |spans| {
        has(spans, "tillstream-processes", "payment.charge")
            && has(spans, "tillstream-projectors", "projector.orders")
    })
    .await;

    // A read waits for the shopper's own write inside its trace.
    let (status, _, read_trace) = shop
        .call_after(
            reqwest::Method::GET,
            &format!("/v1/orders/{order}"),
            &alice,
            None,
            paid["consistency_token"].as_str(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    trace_until(&receiver, &read_trace, "the query API's read", |spans| {
        has(spans, "tillstream-query-api", "GET /v1/orders/{id}")
            && has(spans, "tillstream-query-api", "consistency.wait")
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

    // Every metric a dashboard panel or an alert rule reads is exported.
    let exported = exported(&processes).await;
    let missing: Vec<_> = metrics_used()
        .into_iter()
        .filter(|(name, _)| !exported.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:#?}\nexported: {exported:#?}"
    );
    // And the public port serves none of it.
    let public = reqwest::get(format!("{}/metrics", processes.url("gateway")))
        .await
        .unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_neither_fails_nor_slows_the_api() {
    let db = TestDatabase::new().await;
    let prefix = testkit::redis::test_prefix();
    let bus = TestBus::with_topology(messaging::Topology::new(prefix.clone()));
    for (consumer, _) in till::services::consumers() {
        bus.consumer(consumer);
    }
    let nowhere = format!("http://127.0.0.1:{}", testkit::free_port());
    let mut processes = Processes::new(
        env!("CARGO_BIN_EXE_till"),
        &Dependencies {
            database_url: db.url.clone(),
            amqp_url: platform::settings::amqp_url(),
            redis_url: platform::settings::redis_url(),
            prefix: prefix.clone(),
        },
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere),
            ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
        ],
    );
    processes.start_all().await;
    let shop = Shop {
        http: reqwest::Client::new(),
        gateway: processes.url("gateway"),
    };
    let alice = token("alice", &[]);
    for _ in 0..20 {
        let started = Instant::now();
        let (status, cart, _) = shop
            .call(reqwest::Method::POST, "/v1/carts", &alice, None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{cart}");
        let id = cart["cart_id"].as_str().unwrap();
        // Read-your-writes: the read waits for the projector, through relay and bus.
        let (status, view, _) = shop
            .call_after(
                reqwest::Method::GET,
                &format!("/v1/carts/{id}"),
                &alice,
                None,
                cart["consistency_token"].as_str(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a command and its read took {:?} with the collector down",
            started.elapsed()
        );
    }
}

/// The metric names a PromQL expression reads: identifiers outside label matchers, ranges,
/// strings and grouping lists, minus PromQL's own words.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const PROMQL: [&str; 24] = [
        "sum",
        "by",
        "without",
        "rate",
        "irate",
        "increase",
        "max",
        "min",
        "avg",
        "count",
        "histogram_quantile",
        "and",
        "or",
        "unless",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "vector",
        "abs",
        "clamp_min",
        "offset",
        "bool",
        "topk",
    ];
    let mut cleaned = String::new();
    let mut depth = (0, 0); // inside {…}, inside […]
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' => in_string = !in_string,
            '{' if !in_string => depth.0 += 1,
            '}' if !in_string => depth.0 -= 1,
            '[' if !in_string => depth.1 += 1,
            ']' if !in_string => depth.1 -= 1,
            c if !in_string && depth == (0, 0) => cleaned.push(c),
            _ => {}
        }
        if matches!(c, '}' | ']' | '"') {
            cleaned.push(' ');
        }
    }
    // `by (label, …)` and `without (…)` name labels, not metrics.
    let mut names = BTreeSet::new();
    let mut grouping = false;
    for token in
        cleaned.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '(' || c == ')'))
    {
        for part in token.split_inclusive(['(', ')']) {
            let word = part.trim_matches(['(', ')']);
            if grouping && part.ends_with(')') {
                grouping = false;
                continue;
            }
            if word == "by" || word == "without" {
                grouping = true;
                continue;
            }
            if grouping || word.is_empty() || PROMQL.contains(&word) {
                continue;
            }
            if word.starts_with(|c: char| c.is_ascii_lowercase()) {
                names.insert(word.to_owned());
            }
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, service, route) (rate(http_request_duration_seconds_bucket{status=~"5.."}[5m]))) / max(relay_active) and on() vector(0)"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "http_request_duration_seconds_bucket".to_owned(),
            "relay_active".to_owned()
        ])
    );
}

/// Every metric the dashboards and alert rules use, with where it is used.
fn metrics_used() -> Vec<(String, String)> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut used = Vec::new();
    for entry in std::fs::read_dir(deploy.join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                for name in metric_names(target["expr"].as_str().expect("an expression")) {
                    used.push((name, format!("{} / {}", path.display(), panel["title"])));
                }
            }
        }
    }
    let rules = std::fs::read_to_string(deploy.join("prometheus/alerts.yml")).unwrap();
    // The rules' `expr:` values, single-line or block.
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = expr.trim().trim_start_matches('|').to_owned();
        while let Some(next) = lines.peek() {
            if next.trim_start().contains(':') && !next.trim_start().starts_with('/') {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
            lines.next();
        }
        for name in metric_names(&expr) {
            used.push((name, "deploy/prometheus/alerts.yml".to_owned()));
        }
    }
    used
}

/// What the running services export, from every operations port.
async fn exported(processes: &Processes) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for service in testkit::processes::SERVICES {
        let url = format!("{}/metrics", processes.operations_url(service));
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_owned());
        }
    }
    names
}
