//! Upcasting: an event stored in an old shape is read in the current shape.

use domain::cart::{Cart, CartEvent};
use domain::values::{CartId, CustomerId};
use eventstore::{EventStore, ExpectedVersion, NewEvent, StoreError, Upcasters};
use serde_json::{Value, json};
use testkit::TestDatabase;
use uuid::Uuid;

mod support;

/// Pretend version 1 of `CartCreated` called the owner `shopper`; version 2 renamed it.
fn upcasters() -> Upcasters {
    Upcasters::default().register("CartCreated", |mut data: Value| {
        if let Some(object) = data.as_object_mut()
            && let Some(shopper) = object.remove("shopper")
        {
            object.insert("customer_id".into(), shopper);
        }
        data
    })
}

async fn insert_raw(db: &TestDatabase, stream_id: &str, schema_version: i32, data: Value) -> Uuid {
    let event_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO eventstore.events (stream_id, version, event_id, event_type, schema_version, data) \
         VALUES ($1, 1, $2, 'CartCreated', $3, $4)",
    )
    .bind(stream_id)
    .bind(event_id)
    .bind(schema_version)
    .bind(data)
    .execute(&db.pool)
    .await
    .unwrap();
    event_id
}

#[tokio::test]
async fn old_schema_versions_are_lifted_on_read_and_new_events_use_the_current_one() {
    let db = TestDatabase::new().await;
    let store = EventStore::with_upcasters(db.pool.clone(), upcasters());
    let cart_id = CartId(Uuid::new_v4());
    insert_raw(
        &db,
        &cart_id.stream_id(),
        1,
        json!({ "cart_id": cart_id, "shopper": "alice" }),
    )
    .await;

    let stored = store.read_stream(&cart_id.stream_id(), 0).await.unwrap();
    assert_eq!(stored[0].schema_version, 2);
    let decoded: CartEvent = stored[0].decode().unwrap();
    assert_eq!(
        decoded,
        CartEvent::CartCreated {
            cart_id,
            customer_id: CustomerId::parse("alice").unwrap()
        }
    );
    let (cart, version) = store.load::<Cart>(&cart_id.stream_id()).await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(cart.0.unwrap().owner.as_str(), "alice");

    // The same lift applies on the global log.
    testkit::wait_for_log_horizon(&db.pool).await;
    let log = store.read_log(Default::default(), 10).await.unwrap();
    assert_eq!(log[0].data.to_value()["customer_id"], "alice");

    // New events are written with the current schema version.
    let other = CartId(Uuid::new_v4());
    let created = CartEvent::CartCreated {
        cart_id: other,
        customer_id: CustomerId::parse("bob").unwrap(),
    };
    let new = NewEvent::from_domain(Uuid::new_v4(), &created, Default::default()).unwrap();
    store
        .append(&other.stream_id(), ExpectedVersion::NoStream, &[new])
        .await
        .unwrap();
    let written: i32 =
        sqlx::query_scalar("SELECT schema_version FROM eventstore.events WHERE stream_id = $1")
            .bind(other.stream_id())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(written, 2);
}

#[tokio::test]
async fn an_event_from_a_newer_build_is_an_error_not_a_guess() {
    let db = TestDatabase::new().await;
    let store = EventStore::with_upcasters(db.pool.clone(), upcasters());
    let cart_id = CartId(Uuid::new_v4());
    insert_raw(
        &db,
        &cart_id.stream_id(),
        3,
        json!({ "cart_id": cart_id, "owner_v3": "x" }),
    )
    .await;
    let err = store
        .read_stream(&cart_id.stream_id(), 0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FromTheFuture {
                stored: 3,
                current: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_undecodable_event_names_itself() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let cart_id = CartId(Uuid::new_v4());
    let event_id = insert_raw(&db, &cart_id.stream_id(), 1, json!({ "cart_id": 42 })).await;
    let err = store.load::<Cart>(&cart_id.stream_id()).await.unwrap_err();
    match err {
        StoreError::Decode {
            event_id: id,
            event_type,
            ..
        } => {
            assert_eq!(id, event_id);
            assert_eq!(event_type, "CartCreated");
        }
        other => panic!("unexpected error: {other:?}"),
    }
}

/// The real upcasters: a product created before products had pictures reads with none, and
/// new ones are written at the current version.
#[tokio::test]
async fn a_product_created_before_pictures_reads_with_none() {
    use domain::product::{Product, ProductEvent};
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let product_id = Uuid::new_v4();
    let stream_id = format!("product-{product_id}");
    sqlx::query(
        "INSERT INTO eventstore.events (stream_id, version, event_id, event_type, schema_version, data) \
         VALUES ($1, 1, $2, 'ProductCreated', 1, $3)",
    )
    .bind(&stream_id)
    .bind(Uuid::new_v4())
    .bind(json!({
        "product_id": product_id, "sku": "OLD-1", "name": "Old mug", "description": "",
        "category": "kitchen", "price": { "amount": 100, "currency": "EUR" }, "stock": 3
    }))
    .execute(&db.pool)
    .await
    .unwrap();
    let events = store.read_stream(&stream_id, 0).await.unwrap();
    assert_eq!(events[0].schema_version, 2);
    let Ok(ProductEvent::ProductCreated(created)) = events[0].decode::<ProductEvent>() else {
        panic!("not a ProductCreated: {:?}", events[0]);
    };
    assert!(created.image_urls.is_empty());
    let (product, _) = store.load::<Product>(&stream_id).await.unwrap();
    assert_eq!(product.0.map(|p| p.available), Some(3));
    assert_eq!(Upcasters::tillstream().current_version("ProductCreated"), 2);
}

/// The real upcasters: a v1 shipment (no carrier) and a v1 refund (no refund id, always the
/// whole payment of a cancelled order) read in today's shapes.
#[tokio::test]
async fn v1_shipments_and_refunds_read_in_their_current_shapes() {
    use domain::order::OrderEvent;
    use domain::payment::PaymentEvent;
    use domain::values::RefundId;
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    let (order_id, payment_id) = (Uuid::new_v4(), Uuid::new_v4());
    let money = json!({ "amount": 500, "currency": "EUR" });
    let stored = [
        (
            format!("order-{order_id}"),
            1,
            "OrderShipped",
            json!({ "order_id": order_id }),
        ),
        (
            format!("order-{order_id}"),
            2,
            "OrderRefunded",
            json!({ "order_id": order_id, "payment_id": payment_id, "amount": money }),
        ),
        (
            format!("order-{order_id}"),
            3,
            "OrderPaid",
            json!({ "order_id": order_id, "payment_id": payment_id, "amount": money }),
        ),
        (
            format!("payment-{payment_id}"),
            1,
            "PaymentRefunded",
            json!({ "order_id": order_id, "payment_id": payment_id, "amount": money,
                    "reason": "order cancelled" }),
        ),
    ];
    for (stream_id, version, event_type, data) in &stored {
        sqlx::query(
            "INSERT INTO eventstore.events (stream_id, version, event_id, event_type, schema_version, data) \
             VALUES ($1, $2, $3, $4, 1, $5)",
        )
        .bind(stream_id)
        .bind(*version as i64)
        .bind(Uuid::new_v4())
        .bind(event_type)
        .bind(data)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let order = store
        .read_stream(&format!("order-{order_id}"), 0)
        .await
        .unwrap();
    match order[0].decode::<OrderEvent>().unwrap() {
        OrderEvent::OrderShipped {
            carrier,
            tracking_number,
            ..
        } => assert_eq!((carrier.as_str(), tracking_number.as_str()), ("", "")),
        other => panic!("{other:?}"),
    }
    match order[1].decode::<OrderEvent>().unwrap() {
        OrderEvent::OrderRefunded {
            refund_id,
            amount,
            provider,
            provider_refund_id,
            ..
        } => {
            assert_eq!(refund_id, RefundId(payment_id));
            assert_eq!(amount.amount, 500);
            assert_eq!((provider.as_str(), provider_refund_id), ("simulated", None));
        }
        other => panic!("{other:?}"),
    }
    let payment = store
        .read_stream(&format!("payment-{payment_id}"), 0)
        .await
        .unwrap();
    match payment[0].decode::<PaymentEvent>().unwrap() {
        PaymentEvent::PaymentRefunded { refund_id, .. } => {
            assert_eq!(refund_id, RefundId(payment_id))
        }
        other => panic!("{other:?}"),
    }
    match order[2].decode::<OrderEvent>().unwrap() {
        OrderEvent::OrderPaid {
            provider,
            provider_reference,
            ..
        } => assert_eq!((provider.as_str(), provider_reference), ("simulated", None)),
        other => panic!("{other:?}"),
    }
    for (event_type, version) in [
        ("OrderShipped", 2),
        ("OrderPaid", 2),
        ("OrderRefunded", 3),
        ("PaymentRefunded", 3),
    ] {
        assert_eq!(
            Upcasters::tillstream().current_version(event_type),
            version,
            "{event_type}"
        );
    }
}
