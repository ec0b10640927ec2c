//! The OpenAPI document the gateway serves: it describes exactly the routes that exist (the
//! contract's list, design page §7), every route it describes is served, and every method a
//! described path does not document is refused; the docs UI is served with its own assets.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use testkit::{Reply, TestSystem, token};

/// The public API of design page §7 (those routes built so far), as `METHOD /path`.
const CONTRACT: [&str; 34] = [
    "POST /v1/products",
    "GET /v1/products",
    "GET /v1/products/{id}",
    "PATCH /v1/products/{id}",
    "POST /v1/products/{id}/price",
    "POST /v1/products/{id}/stock",
    "POST /v1/products/{id}/discontinue",
    "GET /v1/categories",
    "GET /v1/me",
    "POST /v1/carts",
    "GET /v1/carts",
    "GET /v1/carts/{id}",
    "POST /v1/carts/{id}/items",
    "PUT /v1/carts/{id}/items/{product_id}",
    "DELETE /v1/carts/{id}/items/{product_id}",
    "POST /v1/carts/{id}/checkout",
    "GET /v1/orders",
    "GET /v1/orders/{id}",
    "GET /v1/orders/{id}/events",
    "POST /v1/orders/{id}/pay",
    "POST /v1/orders/{id}/cancel",
    "POST /v1/orders/{id}/ship",
    "POST /v1/orders/{id}/deliver",
    "POST /v1/orders/{id}/refund",
    "GET /v1/admin/projections",
    "GET /v1/admin/projections/{name}",
    "POST /v1/admin/projections/{name}/rebuild",
    "GET /v1/admin/consumers",
    "GET /v1/admin/dead-letters/{consumer}",
    "POST /v1/admin/dead-letters/{consumer}/redrive",
    "DELETE /v1/admin/dead-letters/{consumer}",
    "GET /v1/admin/events",
    "GET /v1/admin/streams/{stream_id}",
    "POST /v1/webhooks/payments/{provider}",
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn document(system: &TestSystem) -> serde_json::Value {
    let reply = system
        .send(Method::GET, "/v1/openapi.json", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

fn operations(document: &serde_json::Value) -> BTreeSet<String> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.to_ascii_lowercase()).is_some() {
                operations.insert(format!("{method} {path}"));
            }
        }
    }
    operations
}

#[tokio::test]
async fn the_document_describes_exactly_the_contract() {
    let system = TestSystem::start().await;
    let document = document(&system).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    let described = operations(&document);
    let contract: BTreeSet<String> = CONTRACT.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        described.difference(&contract).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "described but not in the contract"
    );
    assert_eq!(
        contract.difference(&described).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "in the contract but not described"
    );
    // Every operation answers errors as problems, and says how it succeeds.
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("default"),
                "{method} {path} lacks its default problem"
            );
            assert!(
                responses.contains_key("401"),
                "{method} {path} lacks the gateway's 401"
            );
            assert!(
                responses.keys().any(|status| status.starts_with('2')),
                "{method} {path} lacks its success"
            );
        }
    }
    let same = system.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(same.body, document);
}

/// Each described path, asked with each method as an admin: a described method reaches a
/// handler (whatever it answers, it is not "no such route"), an undescribed one is refused as
/// no such route or method. A route added beside the documented list fails here.
#[tokio::test]
async fn what_is_described_is_served_and_nothing_else() {
    let system = TestSystem::start_full().await;
    let described = operations(&document(&system).await);
    let admin = token("admin", &["admin"]);
    let paths: BTreeSet<&str> = CONTRACT
        .iter()
        .map(|s| s.split_once(' ').unwrap().1)
        .collect();
    let mut wrong = Vec::new();
    for path in paths {
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000001")
            .replace("{product_id}", "00000000-0000-0000-0000-000000000002");
        for method in METHODS {
            let reply = Reply::from(
                system
                    .request(
                        Method::from_bytes(method.as_bytes()).unwrap(),
                        &concrete,
                        Some(&admin),
                    )
                    .header("content-type", "application/json")
                    .body("{}")
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            let code = reply.body["type"].as_str().unwrap_or_default();
            let unrouted =
                code.ends_with("/route-not-found") || code.ends_with("/method-not-allowed");
            let operation = format!("{method} {path}");
            if described.contains(&operation) == unrouted {
                wrong.push(format!("{operation}: {} {code}", reply.status));
            }
        }
    }
    assert!(wrong.is_empty(), "routes and document disagree: {wrong:#?}");
}

#[tokio::test]
async fn the_docs_ui_is_served_with_its_own_assets() {
    let system = TestSystem::start().await;
    let page = system
        .request(Method::GET, "/docs", None)
        .send()
        .await
        .unwrap();
    assert_eq!(page.url().path(), "/v1/docs/", "/docs leads to the docs UI");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://"),
        "loads something from elsewhere: {html}"
    );
    for asset in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "swagger-initializer.js",
    ] {
        let served = system
            .request(Method::GET, &format!("/v1/docs/{asset}"), None)
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), StatusCode::OK, "{asset}");
    }
    let initializer = system
        .request(Method::GET, "/v1/docs/swagger-initializer.js", None)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/v1/openapi.json"), "{initializer}");
}
