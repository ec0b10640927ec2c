//! The read side end to end: commands through the gateway, events through the relay and
//! RabbitMQ into the projectors, views through the query API — read back right after each
//! command with its consistency token.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{Reply, TestSystem, token};

/// Sends a GET through the gateway carrying the consistency token of `after`.
async fn read_after(system: &TestSystem, path: &str, token: Option<&str>, after: &Reply) -> Reply {
    let consistency = after
        .header("x-consistency-token")
        .expect("a consistency token");
    let mut request = system
        .request(Method::GET, path, token)
        .header("x-consistency-token", consistency);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Reply::from(request.send().await.expect("answer")).await
}

#[tokio::test]
async fn a_client_reads_its_own_writes_right_after_each_command() {
    let system = TestSystem::start_full().await;
    let admin = token("admin", &["admin"]);
    let alice = token("alice", &[]);

    let created = system
        .post(
            "/v1/products",
            &admin,
            json!({ "sku": "read-1", "name": "Blue enamel mug", "description": "holds 350 ml",
                    "category": "kitchen", "price": { "amount": 1290, "currency": "EUR" }, "stock": 7 }),
        )
        .await;
    let product = created.body["product_id"].as_str().unwrap().to_owned();
    let view = read_after(&system, &format!("/v1/products/{product}"), None, &created).await;
    assert_eq!(view.status, StatusCode::OK, "{view:?}");
    assert_eq!(view.body["name"], "Blue enamel mug");
    assert_eq!(view.body["available"], 7);
    assert_eq!(view.header("etag"), Some("\"1\""));

    let repriced = system
        .post(
            &format!("/v1/products/{product}/price"),
            &admin,
            json!({ "price": { "amount": 990, "currency": "EUR" } }),
        )
        .await;
    let view = read_after(&system, &format!("/v1/products/{product}"), None, &repriced).await;
    assert_eq!(
        view.body["price"],
        json!({ "amount": 990, "currency": "EUR" })
    );

    let cart_reply = system
        .send(Method::POST, "/v1/carts", Some(&alice), None)
        .await;
    let cart = cart_reply.body["cart_id"].as_str().unwrap().to_owned();
    let view = read_after(
        &system,
        &format!("/v1/carts/{cart}"),
        Some(&alice),
        &cart_reply,
    )
    .await;
    assert_eq!(
        (view.status, view.body["status"].as_str()),
        (StatusCode::OK, Some("open")),
        "{view:?}"
    );

    let added = system
        .post(
            &format!("/v1/carts/{cart}/items"),
            &alice,
            json!({ "product_id": product, "quantity": 3 }),
        )
        .await;
    let view = read_after(&system, &format!("/v1/carts/{cart}"), Some(&alice), &added).await;
    assert_eq!(view.body["items"][0]["quantity"], 3, "{view:?}");
    assert_eq!(
        view.body["total"],
        json!({ "amount": 2970, "currency": "EUR" })
    );
    assert_eq!(view.header("etag"), Some("\"2\""));

    let changed = system
        .send(
            Method::PUT,
            &format!("/v1/carts/{cart}/items/{product}"),
            Some(&alice),
            Some(json!({ "quantity": 1 })),
        )
        .await;
    let view = read_after(
        &system,
        &format!("/v1/carts/{cart}"),
        Some(&alice),
        &changed,
    )
    .await;
    assert_eq!(view.body["total"]["amount"], 990);

    let checked_out = system
        .send(
            Method::POST,
            &format!("/v1/carts/{cart}/checkout"),
            Some(&alice),
            None,
        )
        .await;
    let view = read_after(
        &system,
        &format!("/v1/carts/{cart}"),
        Some(&alice),
        &checked_out,
    )
    .await;
    assert_eq!(view.body["status"], "checked_out");
    assert_eq!(view.body["order_id"], checked_out.body["order_id"]);

    // A cart is its owner's: others (admins included) are told it does not exist.
    for other in [token("mallory", &[]), admin.clone()] {
        let reply = system
            .send(
                Method::GET,
                &format!("/v1/carts/{cart}"),
                Some(&other),
                None,
            )
            .await;
        assert_eq!(
            (reply.status, reply.problem_code()),
            (StatusCode::NOT_FOUND, "cart-not-found")
        );
    }
    // If-None-Match with the current ETag: 304, nothing sent again.
    let etag = view.header("etag").unwrap().to_owned();
    let cached = system
        .request(Method::GET, &format!("/v1/carts/{cart}"), Some(&alice))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn the_catalog_is_searchable_filterable_and_paged() {
    let system = TestSystem::start_full().await;
    let admin = token("admin", &["admin"]);
    let mut last = None;
    for (i, (name, category)) in [
        ("Blue mug", "kitchen"),
        ("Red mug", "kitchen"),
        ("Garden hose", "garden"),
        ("Blue watering can", "garden"),
        ("Teapot", "kitchen"),
    ]
    .iter()
    .enumerate()
    {
        last = Some(
            system
                .post("/v1/products", &admin, json!({ "sku": format!("CAT-{i}"), "name": name,
                    "category": category, "price": { "amount": 100, "currency": "EUR" }, "stock": 1 }))
                .await,
        );
    }
    // Wait once for the last product; the relay publishes in log order, so the rest are there.
    let everything = read_after(
        &system,
        "/v1/products?limit=100",
        None,
        last.as_ref().unwrap(),
    )
    .await;
    assert_eq!(everything.body["items"].as_array().unwrap().len(), 5);

    let blue = system
        .send(Method::GET, "/v1/products?q=blue", None, None)
        .await;
    let names: Vec<&str> = blue.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.contains("Blue")));
    let garden = system
        .send(Method::GET, "/v1/products?category=garden", None, None)
        .await;
    assert_eq!(garden.body["items"].as_array().unwrap().len(), 2);

    // Pages of two: every product exactly once, then no cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/products?limit=2&cursor={c}"),
            None => "/v1/products?limit=2".to_owned(),
        };
        let page = system.send(Method::GET, &path, None, None).await;
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["product_id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5));

    for bad in [
        "/v1/products?limit=0",
        "/v1/products?limit=101",
        "/v1/products?cursor=zzz",
    ] {
        let reply = system.send(Method::GET, bad, None, None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {reply:?}"
        );
    }
    let bad_token = system
        .request(Method::GET, "/v1/products", None)
        .header("x-consistency-token", "nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn projections_report_their_progress_to_admins_only() {
    let system = TestSystem::start_full().await;
    let admin = token("admin", &["admin"]);
    let created = system
        .post(
            "/v1/products",
            &admin,
            json!({ "sku": "ADM-1", "name": "X", "category": "c",
            "price": { "amount": 100, "currency": "EUR" }, "stock": 1 }),
        )
        .await;
    read_after(&system, "/v1/products", None, &created).await;
    let reply = system
        .send(Method::GET, "/v1/admin/projections", Some(&admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let items = reply.body["items"].as_array().unwrap();
    let products: &Value = items.iter().find(|p| p["name"] == "products").unwrap();
    assert_eq!(products["lag_events"], 0);
    assert_eq!(products["serving_version"], 1);
    assert_eq!(products["rebuilding_version"], Value::Null);
    assert!(products["checkpoint"]["position"].as_i64().unwrap() > 0);
    let customer = system
        .send(
            Method::GET,
            "/v1/admin/projections",
            Some(&token("alice", &[])),
            None,
        )
        .await;
    assert_eq!(customer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn admins_read_the_event_log_and_a_stream_with_trace_ids_and_nobody_else_does() {
    let system = TestSystem::start_full().await;
    let admin = token("admin", &["admin"]);
    let mut products = Vec::new();
    for n in 0..3 {
        let created = system
            .post(
                "/v1/products",
                &admin,
                json!({ "sku": format!("LOG-{n}"), "name": "X", "category": "c",
                "price": { "amount": 100, "currency": "EUR" }, "stock": 1 }),
            )
            .await;
        products.push(created.body["product_id"].as_str().unwrap().to_owned());
    }
    let cart = system.cart("alice").await;

    // Newest first, one type, in pages that continue where the last one ended.
    let page = |query: String| {
        let system = &system;
        let admin = admin.clone();
        async move {
            system
                .send(
                    Method::GET,
                    &format!("/v1/admin/events?{query}"),
                    Some(&admin),
                    None,
                )
                .await
        }
    };
    let first = page("stream_type=product&limit=2".into()).await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let items = first.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["stream_id"], format!("product-{}", products[2]));
    assert!(items[0]["position"].as_i64() > items[1]["position"].as_i64());
    // The trace id is there when the command ran in a trace (services always do; this test's
    // in-process system has no tracer, so it is null here — the browser test sees real ones).
    let trace = &items[0]["metadata"]["trace_id"];
    assert!(
        trace.is_null() || trace.as_str().is_some_and(|t| t.len() == 32),
        "{trace}"
    );
    assert_eq!(items[0]["metadata"]["actor"], "admin");
    let before = first.body["next_before"].as_i64().unwrap();
    let second = page(format!("stream_type=product&limit=2&before={before}")).await;
    let older = second.body["items"].as_array().unwrap();
    assert_eq!(older[0]["stream_id"], format!("product-{}", products[0]));
    let carts = page("stream_type=cart".into()).await;
    assert_eq!(carts.body["items"][0]["stream_id"], format!("cart-{cart}"));

    let stream = system
        .send(
            Method::GET,
            &format!("/v1/admin/streams/product-{}", products[1]),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(stream.status, StatusCode::OK, "{stream:?}");
    assert_eq!(stream.body["items"][0]["type"], "ProductCreated");
    assert_eq!(stream.body["items"][0]["data"]["sku"], "LOG-1");

    for (path, status) in [
        (
            "/v1/admin/events?stream_type=invoice",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/events?before=-1",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/v1/admin/events?limit=1000",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/v1/admin/streams/invoice-1", StatusCode::NOT_FOUND),
        ("/v1/admin/streams/nonsense", StatusCode::NOT_FOUND),
        (
            "/v1/admin/streams/order-00000000-0000-0000-0000-000000000000",
            StatusCode::NOT_FOUND,
        ),
    ] {
        let reply = system.send(Method::GET, path, Some(&admin), None).await;
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        assert_eq!(
            reply.headers["content-type"], "application/problem+json",
            "{path}"
        );
    }
    let alice = token("alice", &[]);
    for path in [
        "/v1/admin/events".to_owned(),
        format!("/v1/admin/streams/cart-{cart}"),
    ] {
        let reply = system.send(Method::GET, &path, Some(&alice), None).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}");
    }
}

/// A GET with `consistency` as its token; the answer and how long it took.
async fn read_with_token(
    system: &TestSystem,
    path: &str,
    token: Option<&str>,
    consistency: &str,
) -> (Reply, std::time::Duration) {
    let started = std::time::Instant::now();
    let reply = Reply::from(
        system
            .request(Method::GET, path, token)
            .header("x-consistency-token", consistency)
            .send()
            .await
            .unwrap(),
    )
    .await;
    (reply, started.elapsed())
}

#[tokio::test]
async fn a_read_whose_view_never_catches_up_is_told_so_not_served_stale() {
    // No projectors: the views never catch up with anything.
    let system = TestSystem::start_without_projectors_with(|config| {
        config.consistency_wait = std::time::Duration::from_millis(300)
    })
    .await;
    let alice = token("alice", &[]);
    let cart = system.cart("alice").await;
    let (reply, _) = read_with_token(
        &system,
        &format!("/v1/carts/{cart}"),
        Some(&alice),
        &format!("cart-{cart}@1"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.problem_code()),
        (StatusCode::SERVICE_UNAVAILABLE, "consistency-timeout")
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    // A token for a kind of stream the route does not serve is no reason to wait.
    let other = system
        .request(Method::GET, "/v1/products", None)
        .header("x-consistency-token", format!("payment-{cart}@9"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

/// A token the caller may not read, for a stream that does not exist, or for a version no
/// stream has reached costs no wait and answers exactly as without it: it reveals nothing.
#[tokio::test]
async fn a_token_for_someone_elses_or_no_stream_costs_nothing_and_reveals_nothing() {
    let wait = std::time::Duration::from_secs(3);
    let system =
        TestSystem::start_without_projectors_with(|config| config.consistency_wait = wait).await;
    let (alice, bob) = (token("alice", &[]), token("bob", &[]));
    let alices_cart = system.cart("alice").await;
    let bobs_cart = system.cart("bob").await;
    let product = system.product("TOKEN-1", 100, 5).await;
    let nothing = uuid::Uuid::new_v4();

    let cases = [
        (
            format!("/v1/carts/{alices_cart}"),
            Some(&alice),
            format!("cart-{bobs_cart}@1"),
        ),
        (
            format!("/v1/carts/{alices_cart}"),
            Some(&alice),
            format!("cart-{nothing}@3"),
        ),
        (
            format!("/v1/carts/{bobs_cart}"),
            Some(&alice),
            format!("cart-{bobs_cart}@1"),
        ),
        (
            format!("/v1/carts/{alices_cart}"),
            Some(&alice),
            format!("cart-{alices_cart}@9"),
        ),
        (
            format!("/v1/orders/{nothing}"),
            Some(&bob),
            format!("order-{nothing}@1"),
        ),
        (
            "/v1/orders".to_owned(),
            Some(&bob),
            format!("order-{nothing}@1"),
        ),
        (
            format!("/v1/products/{nothing}"),
            None,
            format!("product-{nothing}@5"),
        ),
        (
            format!("/v1/products/{product}"),
            None,
            format!("product-{product}@7"),
        ),
        (
            "/v1/products".to_owned(),
            None,
            format!("product-{nothing}@1"),
        ),
    ];
    for (path, caller, consistency) in cases {
        let caller = caller.map(String::as_str);
        let (with_token, took) = read_with_token(&system, &path, caller, &consistency).await;
        assert!(
            took < wait / 2,
            "{path} with {consistency} waited {took:?}: {with_token:?}"
        );
        let without = system.send(Method::GET, &path, caller, None).await;
        assert_eq!(
            (with_token.status, &with_token.body),
            (without.status, &without.body),
            "{path} with {consistency}"
        );
    }
}

/// Query values that no column can hold (NUL) or that carry control characters are the
/// client's mistake: 400 problem+json, never a 500.
#[tokio::test]
async fn queries_with_control_characters_are_refused() {
    let system = TestSystem::start_full().await;
    let alice = token("alice", &[]);
    for (path, caller) in [
        ("/v1/products?q=%00", None),
        ("/v1/products?q=mug%00", None),
        ("/v1/products?category=a%00b", None),
        ("/v1/products?q=%1B%5B31m", None),
        ("/v1/orders?status=%00", Some(&alice)),
        ("/v1/orders?limit=%00", Some(&alice)),
    ] {
        let reply = system
            .send(Method::GET, path, caller.map(String::as_str), None)
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {reply:?}");
        assert_eq!(reply.problem_code(), "invalid-query", "{path}");
    }
    // Control: the same queries without the bad bytes are fine.
    for (path, caller) in [
        ("/v1/products?q=mug", None),
        ("/v1/orders?status=paid", Some(&alice)),
    ] {
        let reply = system
            .send(Method::GET, path, caller.map(String::as_str), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {reply:?}");
    }
}

/// Whatever refuses a request — a handler, the router, an extractor before any handler runs —
/// answers problem+json.
#[tokio::test]
async fn every_error_any_service_answers_is_problem_json() {
    let system = TestSystem::start_full().await;
    let alice = token("alice", &[]);
    let cases = [
        (Method::GET, "/v1/orders/%FF", Some(&alice)),
        (Method::GET, "/v1/carts/%FF%FE", Some(&alice)),
        (Method::GET, "/v1/products/%FF", None),
        (Method::GET, "/v1/orders/%FF/events", Some(&alice)),
        (Method::POST, "/v1/carts/%FF/checkout", Some(&alice)),
        (Method::DELETE, "/v1/carts/%FF/items/%FF", Some(&alice)),
        (Method::GET, "/v1/nothing-here", None),
        (Method::PATCH, "/v1/carts", Some(&alice)),
        (Method::GET, "/v1/orders?limit=many", Some(&alice)),
    ];
    for (method, path, caller) in cases {
        let reply = system
            .send(method.clone(), path, caller.map(String::as_str), None)
            .await;
        assert!(reply.status.is_client_error(), "{method} {path}: {reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json"),
            "{method} {path}: {reply:?}"
        );
        assert_eq!(
            reply.body["status"],
            reply.status.as_u16(),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn me_says_who_the_token_names() {
    let system = TestSystem::start_full().await;
    for (user, roles) in [("alice", vec![]), ("root", vec!["admin"])] {
        let reply = system
            .send(Method::GET, "/v1/me", Some(&token(user, &roles)), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.body, json!({ "user_id": user, "roles": roles }));
        assert_eq!(reply.header("cache-control"), Some("private, no-store"));
    }
    let anonymous = system.send(Method::GET, "/v1/me", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}

/// The catalog may be cached briefly by anyone; a user's own views only by their client, and
/// only after asking again.
#[tokio::test]
async fn public_reads_are_cacheable_and_private_ones_are_not() {
    let system = TestSystem::start_full().await;
    let alice = token("alice", &[]);
    let product = system.product("CACHE-1", 100, 5).await;
    let cart = system.cart("alice").await;
    let product_path = format!("/v1/products/{product}");
    let product_view = eventually_ok(&system, &product_path, None).await;
    let cart_view = eventually_ok(&system, &format!("/v1/carts/{cart}"), Some(&alice)).await;
    let catalog = system.send(Method::GET, "/v1/products", None, None).await;
    for public in [&product_view, &catalog] {
        assert_eq!(public.header("cache-control"), Some("public, max-age=5"));
        assert!(public.header("etag").is_some());
        assert!(
            public
                .header("vary")
                .is_some_and(|v| v.contains("X-Consistency-Token")),
            "{public:?}"
        );
    }
    assert_eq!(cart_view.header("cache-control"), Some("private, no-cache"));
    // A revalidation that finds nothing new says so with the same caching rules.
    let etag = product_view.header("etag").unwrap().to_owned();
    let unchanged = Reply::from(
        system
            .request(Method::GET, &product_path, None)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.header("cache-control"), Some("public, max-age=5"));
    assert_eq!(unchanged.header("etag"), Some(etag.as_str()));
}

/// GETs `path` until the view is there (the projectors are asynchronous).
async fn eventually_ok(system: &TestSystem, path: &str, caller: Option<&str>) -> Reply {
    for _ in 0..200 {
        let reply = system.send(Method::GET, path, caller, None).await;
        if reply.status == StatusCode::OK {
            return reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{path} never answered 200");
}

/// The catalog an admin edits: pictures on create, a PATCH that changes only what it names,
/// and the categories with their counts.
#[tokio::test]
async fn admins_edit_product_details_and_everyone_sees_categories() {
    let system = TestSystem::start_full().await;
    let (admin, alice) = (token("admin", &["admin"]), token("alice", &[]));
    let created = system
        .post(
            "/v1/products",
            &admin,
            json!({ "sku": "EDIT-1", "name": "Mug", "description": "plain", "category": "kitchen",
                    "price": { "amount": 900, "currency": "EUR" }, "stock": 3,
                    "image_urls": ["https://img.example/mug.jpg"] }),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let product = created.body["product_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/products/{product}");
    let view = read_after(&system, &path, None, &created).await;
    assert_eq!(
        view.body["image_urls"],
        json!(["https://img.example/mug.jpg"])
    );

    let patch = |token: &str, body: Value| {
        system
            .request(Method::PATCH, &path, Some(token))
            .json(&body)
            .send()
    };
    let edited = Reply::from(
        patch(
            &admin,
            json!({ "name": "Blue mug", "category": "tableware", "image_urls": [] }),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (edited.status, edited.header("etag")),
        (StatusCode::OK, Some("\"2\"")),
        "{edited:?}"
    );
    let view = read_after(&system, &path, None, &edited).await;
    assert_eq!(view.body["name"], "Blue mug");
    assert_eq!(view.body["description"], "plain", "untouched fields stay");
    assert_eq!(view.body["category"], "tableware");
    assert_eq!(view.body["image_urls"], json!([]));
    let found = system
        .send(Method::GET, "/v1/products?q=blue", None, None)
        .await;
    assert_eq!(found.body["items"][0]["product_id"], product.as_str());

    // Refusals change nothing.
    for (who, body, status) in [
        (&alice, json!({ "name": "Mine now" }), StatusCode::FORBIDDEN),
        (&admin, json!({}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            &admin,
            json!({ "image_urls": ["ftp://x/a.jpg"] }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &admin,
            json!({ "name": "" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            &admin,
            json!({ "price": 1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let refused = Reply::from(patch(who, body.clone()).await.unwrap()).await;
        assert_eq!(refused.status, status, "{body}: {refused:?}");
    }
    let stale = Reply::from(
        system
            .request(Method::PATCH, &path, Some(&admin))
            .header("if-match", "\"1\"")
            .json(&json!({ "name": "Late" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{stale:?}");
    let unknown = Reply::from(
        system
            .request(
                Method::PATCH,
                &format!("/v1/products/{}", uuid::Uuid::new_v4()),
                Some(&admin),
            )
            .json(&json!({ "name": "Ghost" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{unknown:?}");
    assert_eq!(
        system
            .store
            .stream_version(&format!("product-{product}"))
            .await
            .unwrap(),
        2
    );

    // Categories: products on sale per category, for anyone.
    let second = system.product("EDIT-2", 100, 1).await; // category "tests"
    let gone = system.product("EDIT-3", 100, 1).await;
    let discontinued = system
        .post(
            &format!("/v1/products/{gone}/discontinue"),
            &admin,
            json!({}),
        )
        .await;
    let both = format!(
        "product-{second}@1;{}",
        discontinued.header("x-consistency-token").unwrap()
    );
    let (categories, _) = read_with_token(&system, "/v1/categories", None, &both).await;
    assert_eq!(categories.status, StatusCode::OK, "{categories:?}");
    assert_eq!(
        categories.body,
        json!({ "items": [
            { "category": "tableware", "products": 1 },
            { "category": "tests", "products": 1 },
        ] })
    );
    assert_eq!(
        categories.header("cache-control"),
        Some("public, max-age=5")
    );
}

/// A shopper finds their own carts without keeping their ids, newest first, by status.
#[tokio::test]
async fn shoppers_list_their_own_carts() {
    let system = TestSystem::start_full().await;
    let (alice, bob) = (token("alice", &[]), token("bob", &[]));
    let product = system.product("LIST-1", 100, 10).await;
    let first = system.cart("alice").await;
    let added = system
        .post(
            &format!("/v1/carts/{first}/items"),
            &alice,
            json!({ "product_id": product, "quantity": 1 }),
        )
        .await;
    assert_eq!(added.status, StatusCode::OK, "{added:?}");
    let checked_out = system
        .send(
            Method::POST,
            &format!("/v1/carts/{first}/checkout"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(checked_out.status, StatusCode::ACCEPTED, "{checked_out:?}");
    let opened = system
        .send(Method::POST, "/v1/carts", Some(&alice), None)
        .await;
    let second = opened.body["cart_id"].as_str().unwrap().to_owned();
    let bobs = system.cart("bob").await;

    // Read-your-writes: the token of the last command covers the newest cart.
    let both = format!(
        "{};{}",
        checked_out.header("x-consistency-token").unwrap(),
        opened.header("x-consistency-token").unwrap()
    );
    let ids = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cart_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (all, _) = read_with_token(&system, "/v1/carts", Some(&alice), &both).await;
    assert_eq!(all.status, StatusCode::OK, "{all:?}");
    assert_eq!(ids(&all), [second.clone(), first.clone()], "newest first");
    assert_eq!(all.header("cache-control"), Some("private, no-cache"));
    let open = system
        .send(Method::GET, "/v1/carts?status=open", Some(&alice), None)
        .await;
    assert_eq!(ids(&open), [second.as_str()]);
    let done = system
        .send(
            Method::GET,
            "/v1/carts?status=checked_out",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(ids(&done), [first.as_str()]);
    assert_eq!(done.body["items"][0]["status"], "checked_out");

    // Bob sees his own only; a bad status is the client's mistake; nobody lists anonymously.
    let (bobs_list, _) =
        read_with_token(&system, "/v1/carts", Some(&bob), &format!("cart-{bobs}@1")).await;
    assert_eq!(ids(&bobs_list), [bobs]);
    let bad = system
        .send(Method::GET, "/v1/carts?status=lost", Some(&alice), None)
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
    let anonymous = system.send(Method::GET, "/v1/carts", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}
