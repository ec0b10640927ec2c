//! `till demo`: a scripted session through the gateway, printing each step and, at the end,
//! the read models. An admin stocks the catalog; alice and bob fill carts and check out; alice
//! pays; bob is declined, then pays; carol checks out and cancels.
//!
//! Tokens come from the development issuer, like any client's. Running it again is fine:
//! products are found by their SKU and everything else is new.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use domain::values::{ProductId, Sku};
use platform::dev_issuer::DevIssuer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Client {
    http: reqwest::Client,
    base: String,
    issuer: DevIssuer,
}

struct Answer {
    status: StatusCode,
    body: Value,
    consistency: Option<String>,
}

impl Client {
    fn token(&self, user: &str) -> anyhow::Result<String> {
        let roles: &[&str] = if user == "admin" { &["admin"] } else { &[] };
        self.issuer.token(user, roles, Duration::from_secs(600))
    }

    async fn send(
        &self,
        user: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        after: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token(user)?);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(token) = after {
            request = request.header("x-consistency-token", token);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("the gateway at {}", self.base))?;
        let status = response.status();
        let consistency = response
            .headers()
            .get("x-consistency-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.json().await.unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            consistency,
        })
    }

    async fn expect(
        &self,
        user: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        want: StatusCode,
    ) -> anyhow::Result<Answer> {
        let answer = self.send(user, method.clone(), path, body, None).await?;
        if answer.status != want {
            bail!(
                "{method} {path} as {user}: expected {want}, got {}: {}",
                answer.status,
                answer.body
            );
        }
        Ok(answer)
    }

    /// Polls an order until it reaches `status`.
    async fn order_becomes(&self, user: &str, order: &str, status: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let view = self
                .send(
                    user,
                    Method::GET,
                    &format!("/v1/orders/{order}"),
                    None,
                    None,
                )
                .await?;
            if view.body["status"] == status {
                return Ok(view.body);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "order {order} did not become {status} (it is {})",
                    view.body["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn step(text: impl AsRef<str>) {
    println!("  • {}", text.as_ref());
}

fn money(value: &Value) -> String {
    let amount = value["amount"].as_i64().unwrap_or(0);
    format!(
        "{}.{:02} {}",
        amount / 100,
        amount % 100,
        value["currency"].as_str().unwrap_or("")
    )
}

/// Runs the demo against the gateway at `base`, with tokens from `issuer`.
pub async fn run(base: &str, issuer: DevIssuer) -> anyhow::Result<()> {
    let client = Client {
        http: reqwest::Client::new(),
        base: base.trim_end_matches('/').to_owned(),
        issuer,
    };
    println!("Demo against {}", client.base);

    println!("1. An admin stocks the catalog");
    let mut products = Vec::new();
    let mut last_write = None;
    for (sku, name, price, stock) in [
        ("DEMO-MUG", "Enamel mug", 1290, 20),
        ("DEMO-TEA", "Green tea, 100 g", 750, 50),
        ("DEMO-POT", "Cast-iron teapot", 4900, 5),
    ] {
        let body = json!({ "sku": sku, "name": name, "description": "demo", "category": "kitchen",
                           "price": { "amount": price, "currency": "EUR" }, "stock": stock });
        let created = client
            .send("admin", Method::POST, "/v1/products", Some(body), None)
            .await?;
        let id = ProductId::for_sku(&Sku::parse(sku)?).to_string();
        if created.status == StatusCode::CREATED {
            last_write = created.consistency.clone();
        }
        match created.status {
            StatusCode::CREATED => step(format!(
                "created {name} ({sku}) at {} with {stock} in stock",
                money(&json!({"amount": price, "currency": "EUR"}))
            )),
            StatusCode::CONFLICT => step(format!("{name} ({sku}) is already in the catalog")),
            other => bail!("creating {sku}: {other}: {}", created.body),
        }
        products.push(id);
    }
    let catalog = client
        .send(
            "alice",
            Method::GET,
            "/v1/products?q=tea",
            None,
            last_write.as_deref(),
        )
        .await?;
    step(format!(
        "anyone can search: q=tea finds {} product(s)",
        catalog.body["items"].as_array().map_or(0, Vec::len)
    ));

    println!("2. Two shoppers fill carts and check out");
    let mut orders = Vec::new();
    for (user, items) in [("alice", [(0, 2), (1, 1)]), ("bob", [(2, 1), (1, 3)])] {
        let cart = client
            .expect(user, Method::POST, "/v1/carts", None, StatusCode::CREATED)
            .await?;
        let cart_id = cart.body["cart_id"].as_str().context("cart id")?.to_owned();
        let mut last = None;
        for (product, quantity) in items {
            let added = client
                .expect(
                    user,
                    Method::POST,
                    &format!("/v1/carts/{cart_id}/items"),
                    Some(json!({ "product_id": products[product], "quantity": quantity })),
                    StatusCode::OK,
                )
                .await?;
            last = added.consistency;
        }
        let view = client
            .send(
                user,
                Method::GET,
                &format!("/v1/carts/{cart_id}"),
                None,
                last.as_deref(),
            )
            .await?;
        step(format!(
            "{user}'s cart: {} items, total {}",
            view.body["item_count"],
            money(&view.body["total"])
        ));
        let checkout = client
            .expect(
                user,
                Method::POST,
                &format!("/v1/carts/{cart_id}/checkout"),
                None,
                StatusCode::ACCEPTED,
            )
            .await?;
        let order = checkout.body["order_id"]
            .as_str()
            .context("order id")?
            .to_owned();
        let placed = client
            .send(
                user,
                Method::GET,
                &format!("/v1/orders/{order}"),
                None,
                checkout.consistency.as_deref(),
            )
            .await?;
        step(format!(
            "{user} checked out: order {order} is {} right away",
            placed.body["status"]
        ));
        orders.push((user, order));
    }
    for (user, order) in &orders {
        client
            .order_becomes(user, order, "awaiting_payment")
            .await?;
        step(format!(
            "{user}'s stock is reserved; the order awaits payment"
        ));
    }

    println!("3. Payments");
    let (alice, alice_order) = &orders[0];
    client
        .expect(
            alice,
            Method::POST,
            &format!("/v1/orders/{alice_order}/pay"),
            Some(json!({ "payment_token": "tok_ok" })),
            StatusCode::ACCEPTED,
        )
        .await?;
    client.order_becomes(alice, alice_order, "paid").await?;
    step("alice paid with tok_ok: paid");
    let (bob, bob_order) = &orders[1];
    client
        .expect(
            bob,
            Method::POST,
            &format!("/v1/orders/{bob_order}/pay"),
            Some(json!({ "payment_token": "tok_declined" })),
            StatusCode::ACCEPTED,
        )
        .await?;
    client
        .order_becomes(bob, bob_order, "payment_declined")
        .await?;
    step("bob paid with tok_declined: declined, the order stays payable");
    client
        .expect(
            bob,
            Method::POST,
            &format!("/v1/orders/{bob_order}/pay"),
            Some(json!({ "payment_token": "tok_ok" })),
            StatusCode::ACCEPTED,
        )
        .await?;
    client.order_becomes(bob, bob_order, "paid").await?;
    step("bob paid again with tok_ok: paid");

    println!("4. A cancellation, and a shipment");
    let cart = client
        .expect(
            "carol",
            Method::POST,
            "/v1/carts",
            None,
            StatusCode::CREATED,
        )
        .await?;
    let cart_id = cart.body["cart_id"].as_str().context("cart id")?.to_owned();
    client
        .expect(
            "carol",
            Method::POST,
            &format!("/v1/carts/{cart_id}/items"),
            Some(json!({ "product_id": products[2], "quantity": 2 })),
            StatusCode::OK,
        )
        .await?;
    let checkout = client
        .expect(
            "carol",
            Method::POST,
            &format!("/v1/carts/{cart_id}/checkout"),
            None,
            StatusCode::ACCEPTED,
        )
        .await?;
    let carol_order = checkout.body["order_id"]
        .as_str()
        .context("order id")?
        .to_owned();
    client
        .order_becomes("carol", &carol_order, "awaiting_payment")
        .await?;
    client
        .expect(
            "carol",
            Method::POST,
            &format!("/v1/orders/{carol_order}/cancel"),
            Some(json!({ "reason": "changed my mind" })),
            StatusCode::ACCEPTED,
        )
        .await?;
    client
        .order_becomes("carol", &carol_order, "cancelled")
        .await?;
    step("carol checked out two teapots, then cancelled: the stock is released");
    client
        .expect(
            "admin",
            Method::POST,
            &format!("/v1/orders/{alice_order}/ship"),
            Some(json!({ "carrier": "DHL", "tracking_number": "JD0146 0000 1234" })),
            StatusCode::ACCEPTED,
        )
        .await?;
    client.order_becomes(alice, alice_order, "shipped").await?;
    step("the admin shipped alice's order with DHL, tracking number JD0146 0000 1234");
    let sneaky = client
        .send(
            "mallory",
            Method::GET,
            &format!("/v1/orders/{alice_order}"),
            None,
            None,
        )
        .await?;
    step(format!(
        "mallory asks for alice's order: {} (it does not exist for her)",
        sneaky.status
    ));

    println!("5. The read models now");
    for (user, order) in orders
        .iter()
        .map(|(u, o)| (*u, o.clone()))
        .chain([("carol", carol_order)])
    {
        let view = client
            .send(
                user,
                Method::GET,
                &format!("/v1/orders/{order}"),
                None,
                None,
            )
            .await?;
        let history: Vec<&str> = view.body["history"]
            .as_array()
            .map(|h| h.iter().filter_map(|e| e["status"].as_str()).collect())
            .unwrap_or_default();
        println!(
            "  order of {user:<6} {:<10} {:>12}   {}",
            view.body["status"].as_str().unwrap_or("?"),
            money(&view.body["total"]),
            history.join(" → ")
        );
    }
    for product in &products {
        let view = client
            .send(
                "alice",
                Method::GET,
                &format!("/v1/products/{product}"),
                None,
                None,
            )
            .await?;
        println!(
            "  product {:<20} {:>10}   {} available",
            view.body["name"].as_str().unwrap_or("?"),
            money(&view.body["price"]),
            view.body["available"]
        );
    }
    let projections = client
        .send("admin", Method::GET, "/v1/admin/projections", None, None)
        .await?;
    for p in projections.body["items"].as_array().into_iter().flatten() {
        println!(
            "  projection {:<9} serving v{}   lag {} events",
            p["name"].as_str().unwrap_or("?"),
            p["serving_version"],
            p["lag_events"]
        );
    }
    println!("Demo complete.");
    Ok(())
}
