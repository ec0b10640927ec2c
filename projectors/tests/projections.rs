//! Projections against the real Postgres and Redis: every event is applied exactly once however
//! it is delivered — twice, out of order, with gaps — and the views equal what the domain says.

use std::collections::BTreeMap;

use domain::Aggregate;
use domain::cart::{Cart, CartCommand, CatalogEntry};
use domain::order::{Order, OrderCommand, OrderStatus, PaymentToken};
use domain::product::{NewProduct, Product, ProductCommand};
use domain::values::{
    Actor, Carrier, CartId, Category, CustomerId, Description, Money, OrderId, PaymentId,
    ProductId, ProductName, Quantity, RefundId, Sku, TrackingNumber,
};
use eventstore::{CommandOptions, EventStore, LogPosition, RecordedEvent};
use platform::read_models::{CartKeys, ORDERS, PRODUCTS, schema};
use projectors::tables::apply_live;
use projectors::{carts, orders::Orders, products::Products};
use redis::aio::ConnectionManager;
use testkit::TestDatabase;
use uuid::Uuid;

struct Fixture {
    db: TestDatabase,
    store: EventStore,
    redis: ConnectionManager,
    keys: CartKeys,
}

impl Fixture {
    async fn new() -> Self {
        let db = TestDatabase::new().await;
        let store = EventStore::new(db.pool.clone());
        let client = redis::Client::open(platform::settings::redis_url()).unwrap();
        let redis = ConnectionManager::new(client).await.unwrap();
        let keys = CartKeys {
            prefix: testkit::redis::test_prefix(),
        };
        Self {
            db,
            store,
            redis,
            keys,
        }
    }

    async fn run<A: Aggregate>(&self, stream: &str, command: A::Command) -> A
    where
        A::Command: Clone,
    {
        self.store
            .execute::<A>(stream, command, &CommandOptions::default())
            .await
            .expect("command accepted")
            .state
    }

    async fn all_events(&self) -> Vec<RecordedEvent> {
        // Nothing else writes to this database; wait for the horizon like a relay would.
        testkit::wait_for_log_horizon(&self.db.pool).await;
        self.store
            .read_log(LogPosition::START, 100_000)
            .await
            .unwrap()
    }

    async fn apply(&mut self, events: &[RecordedEvent]) -> (u64, u64, u64) {
        let p = apply_live::<Products>(&self.db.pool, &self.store, 0, events)
            .await
            .unwrap();
        let o = apply_live::<Orders>(&self.db.pool, &self.store, 0, events)
            .await
            .unwrap();
        let c = carts::apply_live(
            &self.db.pool,
            &mut self.redis,
            &self.keys,
            &self.store,
            events,
        )
        .await
        .unwrap();
        (p, o, c)
    }

    /// Every view, as comparable text.
    async fn snapshot(
        &mut self,
        products_version: i32,
        orders_version: i32,
    ) -> BTreeMap<String, String> {
        let mut views = BTreeMap::new();
        let products: Vec<(Uuid, String)> = sqlx::query_as(&format!(
            "SELECT product_id, row_to_json(p)::text FROM \"{}\".products p",
            schema(PRODUCTS, products_version)
        ))
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        let orders: Vec<(Uuid, String)> = sqlx::query_as(&format!(
            "SELECT o.order_id, row_to_json(o)::text FROM \"{s}\".orders o",
            s = schema(ORDERS, orders_version)
        ))
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        for (id, json) in products {
            views.insert(format!("product {id}"), json);
        }
        for (id, json) in orders {
            views.insert(format!("order {id}"), json);
        }
        let cart_keys: Vec<String> = redis::cmd("KEYS")
            .arg(self.keys.pattern(1))
            .query_async(&mut self.redis)
            .await
            .unwrap();
        for key in cart_keys.into_iter().filter(|k| is_cart_key(k)) {
            let view: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("view")
                .query_async(&mut self.redis)
                .await
                .unwrap();
            views.insert(key, view.unwrap_or_default());
        }
        views
    }

    async fn cleanup(mut self) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.keys.prefix))
            .query_async(&mut self.redis)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut self.redis)
                .await
                .unwrap();
        }
    }
}

/// A small shop's worth of history: products, carts, orders through their lifecycles.
async fn scenario(f: &Fixture) -> (Vec<ProductId>, Vec<CartId>, Vec<OrderId>) {
    let mut products = Vec::new();
    for i in 0..4 {
        let sku = Sku::parse(&format!("SKU-{i}")).unwrap();
        let id = ProductId::for_sku(&sku);
        f.run::<Product>(
            &id.stream_id(),
            ProductCommand::Create(NewProduct {
                product_id: id,
                sku,
                name: ProductName::parse(&format!("Product {i}")).unwrap(),
                description: Description::parse("sturdy and blue").unwrap(),
                category: Category::parse(if i % 2 == 0 { "kitchen" } else { "garden" }).unwrap(),
                price: Money::price(1000 + i * 100, "EUR").unwrap(),
                stock: 50,
                image_urls: Vec::new(),
            }),
        )
        .await;
        products.push(id);
    }
    f.run::<Product>(
        &products[0].stream_id(),
        ProductCommand::ChangePrice {
            price: Money::price(1500, "EUR").unwrap(),
        },
    )
    .await;
    f.run::<Product>(
        &products[1].stream_id(),
        ProductCommand::AdjustStock { delta: -10 },
    )
    .await;
    f.run::<Product>(&products[3].stream_id(), ProductCommand::Discontinue)
        .await;

    let mut carts = Vec::new();
    for c in 0..6 {
        let owner = CustomerId::parse(&format!("shopper-{c}")).unwrap();
        let actor = Actor::customer(owner.clone());
        let cart = CartId(Uuid::now_v7());
        f.run::<Cart>(
            &cart.stream_id(),
            CartCommand::Create {
                cart_id: cart,
                owner,
            },
        )
        .await;
        for p in products.iter().take(3) {
            let (state, _) = f.store.load::<Product>(&p.stream_id()).await.unwrap();
            let d = state.0.unwrap();
            f.run::<Cart>(
                &cart.stream_id(),
                CartCommand::AddItem {
                    actor: actor.clone(),
                    product: CatalogEntry {
                        product_id: *p,
                        sku: d.sku,
                        name: d.name,
                        unit_price: d.price,
                        available: d.available,
                        discontinued: d.discontinued,
                    },
                    quantity: Quantity::parse(1 + c % 3).unwrap(),
                },
            )
            .await;
        }
        f.run::<Cart>(
            &cart.stream_id(),
            CartCommand::ChangeQuantity {
                actor: actor.clone(),
                product_id: products[0],
                quantity: Quantity::parse(5).unwrap(),
            },
        )
        .await;
        f.run::<Cart>(
            &cart.stream_id(),
            CartCommand::RemoveItem {
                actor: actor.clone(),
                product_id: products[2],
            },
        )
        .await;
        if c % 2 == 0 {
            f.run::<Cart>(
                &cart.stream_id(),
                CartCommand::CheckOut {
                    actor,
                    order_id: OrderId(Uuid::now_v7()),
                },
            )
            .await;
        }
        carts.push(cart);
    }

    let mut orders = Vec::new();
    for (o, cart_id) in carts.iter().enumerate().take(5) {
        let owner = CustomerId::parse(&format!("shopper-{o}")).unwrap();
        let order = OrderId(Uuid::now_v7());
        let (cart, _) = f.store.load::<Cart>(&cart_id.stream_id()).await.unwrap();
        let lines = cart.0.unwrap().lines;
        f.run::<Order>(
            &order.stream_id(),
            OrderCommand::Place {
                order_id: order,
                cart_id: *cart_id,
                customer_id: owner.clone(),
                lines: lines.clone(),
            },
        )
        .await;
        for line in &lines {
            f.run::<Product>(
                &line.product_id.stream_id(),
                ProductCommand::Reserve {
                    order_id: order,
                    quantity: line.quantity.get(),
                },
            )
            .await;
        }
        f.run::<Order>(
            &order.stream_id(),
            OrderCommand::ConfirmStockReserved {
                pay_by: chrono::Utc::now() + chrono::Duration::minutes(15),
            },
        )
        .await;
        if o >= 1 {
            let payment_id = PaymentId(Uuid::now_v7());
            f.run::<Order>(
                &order.stream_id(),
                OrderCommand::RequestPayment {
                    actor: Actor::customer(owner.clone()),
                    payment_id,
                    token: PaymentToken::parse("tok_ok").unwrap(),
                },
            )
            .await;
            if o == 2 {
                f.run::<Order>(
                    &order.stream_id(),
                    OrderCommand::RecordPaymentDeclined {
                        payment_id,
                        provider: "stripe".into(),
                        reason: "card declined".into(),
                    },
                )
                .await;
            } else {
                f.run::<Order>(
                    &order.stream_id(),
                    OrderCommand::RecordPaymentCaptured {
                        payment_id,
                        provider: "stripe".into(),
                        provider_reference: "pi_1".into(),
                    },
                )
                .await;
            }
        }
        if o == 3 {
            let admin = Actor::admin(CustomerId::parse("admin").unwrap());
            f.run::<Order>(
                &order.stream_id(),
                OrderCommand::Ship {
                    actor: admin.clone(),
                    carrier: Carrier::parse("DHL").unwrap(),
                    tracking_number: TrackingNumber::parse("JD0001").unwrap(),
                },
            )
            .await;
            // A partial refund, requested and given back.
            let (state, _) = f.store.load::<Order>(&order.stream_id()).await.unwrap();
            let state = state.0.unwrap();
            let amount = Money {
                amount: 1,
                ..state.total
            };
            let refund_id = RefundId(Uuid::now_v7());
            f.run::<Order>(
                &order.stream_id(),
                OrderCommand::Refund {
                    actor: admin,
                    refund_id,
                    amount: Some(amount),
                    reason: "scratched".into(),
                },
            )
            .await;
            f.run::<Order>(
                &order.stream_id(),
                OrderCommand::RecordRefund {
                    payment_id: state.payment.unwrap(),
                    refund_id,
                    amount,
                    provider: "stripe".into(),
                    provider_refund_id: Some("re_1".into()),
                },
            )
            .await;
        }
        if o == 4 {
            f.run::<Order>(
                &order.stream_id(),
                OrderCommand::Cancel {
                    actor: Actor::customer(owner),
                    reason: "changed my mind".into(),
                },
            )
            .await;
            for line in &lines {
                f.run::<Product>(
                    &line.product_id.stream_id(),
                    ProductCommand::Release { order_id: order },
                )
                .await;
            }
        }
        orders.push(order);
    }
    (products, carts, orders)
}

#[tokio::test]
async fn every_projection_in_the_registry_has_a_live_projector_and_a_serving_version() {
    let f = Fixture::new().await;
    for projection in &platform::read_models::PROJECTIONS {
        projectors::live::LiveProjector::for_projection(
            projection,
            0,
            f.db.pool.clone(),
            f.redis.clone(),
            f.keys.clone(),
            f.store.clone(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", projection.name));
        let serving = platform::read_models::serving_version(&f.db.pool, projection.name)
            .await
            .unwrap_or_else(|e| panic!("{} has no row in read.projections: {e}", projection.name));
        assert!(serving >= 1, "{}", projection.name);
    }
}

#[tokio::test]
async fn views_match_the_domain_after_one_clean_pass() {
    let mut f = Fixture::new().await;
    let (products, carts, orders) = scenario(&f).await;
    let events = f.all_events().await;
    let (p, o, c) = f.apply(&events).await;
    assert_eq!(p + o + c, events.len() as u64, "every event applied once");

    for id in &products {
        let (state, version) = f.store.load::<Product>(&id.stream_id()).await.unwrap();
        let d = state.0.unwrap();
        let (available, reserved, price, discontinued, stored): (i64, i64, i64, bool, i64) = sqlx::query_as(
            "SELECT available, reserved, price_amount, discontinued, version FROM read_products_v1.products WHERE product_id = $1",
        )
        .bind(id.0)
        .fetch_one(&f.db.pool)
        .await
        .unwrap();
        assert_eq!(available, i64::from(d.available));
        assert_eq!(
            reserved,
            d.reservations.values().map(|u| i64::from(*u)).sum::<i64>()
        );
        assert_eq!(
            (price, discontinued, stored as u64),
            (d.price.amount, d.discontinued, version)
        );
    }
    for id in &orders {
        let (state, version) = f.store.load::<Order>(&id.stream_id()).await.unwrap();
        let d = state.0.unwrap();
        let (status, stored, history, fulfilment): (String, i64, i64, serde_json::Value) =
            sqlx::query_as(
                "SELECT status, version, json_array_length(history::json)::int8, \
                        fulfilment::json \
                 FROM read_orders_v1.orders WHERE order_id = $1",
            )
            .bind(id.0)
            .fetch_one(&f.db.pool)
            .await
            .unwrap();
        assert_eq!(
            (status.as_str(), stored as u64, history as u64),
            (d.status.as_str(), version, version)
        );
        // An empty part is left out of the stored document.
        let part = |name: &str| fulfilment[name].as_array().cloned().unwrap_or_default();
        let refunded: i64 = part("refunds")
            .iter()
            .filter(|r| r["status"] == "refunded")
            .map(|r| r["amount"]["amount"].as_i64().unwrap())
            .sum();
        assert_eq!(refunded, d.refunded.amount, "{fulfilment}");
        assert_eq!(
            part("payments").len(),
            usize::from(d.payment.is_some() || d.status == OrderStatus::PaymentDeclined),
            "{fulfilment}"
        );
        if let Some(payment) = part("payments").first() {
            assert_eq!(payment["provider"], "stripe", "{fulfilment}");
        }
        if d.status == OrderStatus::Shipped {
            assert_eq!(fulfilment["shipment"]["carrier"], "DHL", "{fulfilment}");
            assert_eq!(fulfilment["shipment"]["tracking_number"], "JD0001");
        }
    }
    for id in &carts {
        let (state, version) = f.store.load::<Cart>(&id.stream_id()).await.unwrap();
        let d = state.0.unwrap();
        let view = carts::read(&mut f.redis, &f.keys, 1, id.0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.version, version);
        assert_eq!(view.items.len(), d.lines.len());
        assert_eq!(view.total.map(|t| t.amount), d.total().map(|t| t.amount));
        assert_eq!(view.status == "checked_out", d.checked_out.is_some());
    }
    f.cleanup().await;
}

#[tokio::test]
async fn duplicates_reordering_and_gaps_change_nothing() {
    let mut reference = Fixture::new().await;
    scenario(&reference).await;
    let events = reference.all_events().await;
    reference.apply(&events).await;
    let expected = reference.snapshot(1, 1).await;

    // The same history, delivered badly into a second set of views.
    let mut f = Fixture::new().await;
    scenario(&f).await;
    let events = f.all_events().await;
    // Every 5th event is never delivered in the first pass, so later events of its stream
    // arrive across a gap and must pull it from the store; batches arrive in reverse order.
    let first_pass: Vec<RecordedEvent> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 0)
        .map(|(_, e)| e.clone())
        .collect();
    let mut applied = 0;
    for batch in first_pass.chunks(7).rev() {
        let reversed: Vec<RecordedEvent> = batch.iter().rev().cloned().collect();
        let (p, o, c) = f.apply(&reversed).await;
        applied += p + o + c;
    }
    // Then everything again, as a redelivery would.
    for batch in events.chunks(5) {
        let (p, o, c) = f.apply(batch).await;
        applied += p + o + c;
    }
    assert_eq!(
        applied,
        events.len() as u64,
        "each event took effect exactly once"
    );
    let actual = f.snapshot(1, 1).await;
    assert_eq!(actual.len(), expected.len());
    // Ids differ between the two fixtures (fresh UUIDs), so compare shapes: same statuses,
    // totals and versions per kind of view.
    let shape = |views: &BTreeMap<String, String>| {
        let mut shapes: Vec<String> = views
            .values()
            .map(|json| {
                let v: serde_json::Value =
                    serde_json::from_str(json.split("[{").next().unwrap_or(json))
                        .unwrap_or_default();
                format!(
                    "{}|{}|{}|{}|{}",
                    v["status"], v["version"], v["total_amount"], v["available"], v["item_count"]
                )
            })
            .collect();
        shapes.sort();
        shapes
    };
    assert_eq!(shape(&actual), shape(&expected));

    // A full redelivery now changes nothing at all.
    let before = f.snapshot(1, 1).await;
    assert_eq!(f.apply(&events).await, (0, 0, 0));
    assert_eq!(f.snapshot(1, 1).await, before);
    reference.cleanup().await;
    f.cleanup().await;
}

#[tokio::test]
async fn a_replay_from_scratch_builds_the_same_views_as_the_live_run() {
    let mut f = Fixture::new().await;
    scenario(&f).await;
    let events = f.all_events().await;
    // Live: in small batches as they would arrive.
    for batch in events.chunks(4) {
        f.apply(batch).await;
    }
    let live = f.snapshot(1, 1).await;
    // Replay: everything at once into fresh version-2 tables.
    sqlx::query("SELECT read.create_products_tables('read_products_v2'), read.create_orders_tables('read_orders_v2')")
        .execute(&f.db.pool)
        .await
        .unwrap();
    let mut tx = f.db.pool.begin().await.unwrap();
    projectors::tables::apply_to::<projectors::products::Products>(
        &mut tx,
        &schema(PRODUCTS, 2),
        &f.store,
        &events,
    )
    .await
    .unwrap();
    projectors::tables::apply_to::<projectors::orders::Orders>(
        &mut tx,
        &schema(ORDERS, 2),
        &f.store,
        &events,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let replayed = f.snapshot(2, 2).await;
    assert_eq!(
        replayed, live,
        "views built live and by replay are identical"
    );
    f.cleanup().await;
}

/// A rebuild's fill: whole streams read in stream order, inserted with a binary COPY. Returns
/// the events that took effect, and whether a batch continued a stream split by the scan's cap
/// (which takes the checked path).
async fn fill_version(f: &Fixture, version: i32, batch_size: usize) -> (u64, bool) {
    let (mut applied, mut split) = (0, false);
    for stream_type in [
        projectors::products::STREAM_TYPE,
        projectors::orders::STREAM_TYPE,
    ] {
        let mut batches = Vec::new();
        f.store
            .scan_streams_of_type(stream_type, batch_size, |batch| {
                batches.push(batch);
                std::future::ready(true)
            })
            .await
            .unwrap();
        for batch in batches {
            split |= batch[0].version > 1;
            let mut tx = f.db.pool.begin().await.unwrap();
            applied += if stream_type == projectors::products::STREAM_TYPE {
                let schema = schema(PRODUCTS, version);
                projectors::tables::fill::<Products>(&mut tx, &schema, &f.store, &batch).await
            } else {
                let schema = schema(ORDERS, version);
                projectors::tables::fill::<Orders>(&mut tx, &schema, &f.store, &batch).await
            }
            .unwrap();
            tx.commit().await.unwrap();
        }
    }
    (applied, split)
}

async fn create_tables(f: &Fixture, version: i32) {
    sqlx::query("SELECT read.create_products_tables($1), read.create_orders_tables($2)")
        .bind(schema(PRODUCTS, version))
        .bind(schema(ORDERS, version))
        .execute(&f.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rebuild_fill_copies_the_views_the_live_run_built_and_never_overwrites_a_newer_one() {
    let mut f = Fixture::new().await;
    let (_, _, orders) = scenario(&f).await;
    let events = f.all_events().await;
    for batch in events.chunks(4) {
        f.apply(batch).await;
    }
    let live = f.snapshot(1, 1).await;
    let postgres_events = events
        .iter()
        .filter(|e| matches!(e.stream_type(), "product" | "order"))
        .count() as u64;

    // Into empty tables: every row by COPY, every event counted, every view as built live.
    create_tables(&f, 2).await;
    assert_eq!(fill_version(&f, 2, 3).await.0, postgres_events);
    assert_eq!(f.snapshot(2, 2).await, live, "filled by COPY");
    // Batches of one, capped at a few events: the long product streams are split, and their
    // later batches continue what the earlier ones stored.
    create_tables(&f, 4).await;
    assert_eq!(fill_version(&f, 4, 1).await, (postgres_events, true));
    assert_eq!(f.snapshot(4, 4).await, live, "long streams split");

    // Into tables the live projector has written to meanwhile: one order stored as it is now,
    // another only as far as its first event. The COPY meets them, the batch is written with
    // the checked upsert instead: the current one is kept, the stale one replaced.
    create_tables(&f, 3).await;
    let (current, stale) = (orders[0].0, orders[1].0);
    sqlx::query(
        "INSERT INTO read_orders_v3.orders SELECT * FROM read_orders_v1.orders WHERE order_id = $1",
    )
    .bind(current)
    .execute(&f.db.pool)
    .await
    .unwrap();
    let stale_first: Vec<RecordedEvent> = events
        .iter()
        .filter(|e| e.stream_id == format!("order-{stale}") && e.version == 1)
        .cloned()
        .collect();
    let mut tx = f.db.pool.begin().await.unwrap();
    projectors::tables::apply_to::<Orders>(&mut tx, &schema(ORDERS, 3), &f.store, &stale_first)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let current_events = events
        .iter()
        .filter(|e| e.stream_id == format!("order-{current}"))
        .count() as u64;
    assert!(current_events > 1);
    assert_eq!(
        fill_version(&f, 3, 1_000).await.0,
        postgres_events - current_events,
        "the stored current view took none of its events again"
    );
    assert_eq!(f.snapshot(3, 3).await, live, "filled around stored views");
    f.cleanup().await;
}

/// Redis forgets its scripts when it restarts (or on SCRIPT FLUSH); cart writes must not depend
/// on a script loaded earlier.
#[tokio::test]
async fn cart_views_are_written_after_redis_forgot_its_scripts() {
    let mut f = Fixture::new().await;
    let (_, carts, _) = scenario(&f).await;
    let events = f.all_events().await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut f.redis)
        .await
        .unwrap();
    let (_, _, c) = f.apply(&events).await;
    assert!(c > 0);
    for id in &carts {
        let view = carts::read(&mut f.redis, &f.keys, 1, id.0).await.unwrap();
        assert!(view.is_some(), "cart {id:?} has no view");
    }
    f.cleanup().await;
}

/// Reads waiting for their own cart write are woken by the projector's announcement: it must
/// name every cart of the batch, at the version its view is now at, in the serving version.
#[tokio::test]
async fn a_cart_batch_announces_each_cart_at_its_views_version() {
    use futures::StreamExt;
    use platform::read_models::CartsApplied;

    let mut f = Fixture::new().await;
    let (_, carts, _) = scenario(&f).await;
    let events = f.all_events().await;
    let client = redis::Client::open(platform::settings::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(f.keys.applied_channel()).await.unwrap();

    f.apply(&events).await;

    let message: String = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        pubsub.on_message().next(),
    )
    .await
    .expect("an announcement")
    .unwrap()
    .get_payload()
    .unwrap();
    let applied = CartsApplied::parse(&message).expect("a well-formed announcement");
    assert_eq!(applied.version, 1);
    assert_eq!(applied.carts.len(), carts.len());
    for id in &carts {
        let view = carts::read(&mut f.redis, &f.keys, 1, id.0)
            .await
            .unwrap()
            .unwrap();
        assert!(
            applied.covers(id.0, view.version),
            "cart {id:?} at {}",
            view.version
        );
        assert!(!applied.covers(id.0, view.version + 1));
    }
    f.cleanup().await;
}

/// A cart's hash, not the version's progress or marker: its last part is the cart's id.
fn is_cart_key(key: &str) -> bool {
    key.rsplit(':')
        .next()
        .is_some_and(|id| uuid::Uuid::parse_str(id).is_ok())
}
