//! Seeding a scratch event store with a shop's worth of valid events, fast: rows go straight
//! into `eventstore.events` in bulk (UNNEST, 5,000 at a time), each stream's versions
//! contiguous, every event one the projectors can apply. Benchmarks measure what comes after
//! seeding, so the seeding itself takes the shortest path rather than the command path.

use domain::DomainEvent;
use domain::cart::{CartEvent, CartLine};
use domain::order::OrderEvent;
use domain::product::{NewProduct, ProductEvent};
use domain::values::{
    CartId, Category, CustomerId, Description, Money, OrderId, ProductId, ProductName, Quantity,
    Sku,
};
use eventstore::{Metadata, NewEvent};
use sqlx::PgPool;
use uuid::Uuid;

/// How many events of each stream type were seeded.
#[derive(Debug, Default, Clone, Copy)]
pub struct Seeded {
    pub products: u64,
    pub carts: u64,
    pub orders: u64,
}

impl Seeded {
    pub fn total(&self) -> u64 {
        self.products + self.carts + self.orders
    }
}

const FLUSH: usize = 5_000;

struct Rows {
    pool: PgPool,
    stream_ids: Vec<String>,
    versions: Vec<i64>,
    events: Vec<NewEvent>,
}

impl Rows {
    fn push<E: DomainEvent>(
        &mut self,
        stream_id: &str,
        version: i64,
        event: &E,
    ) -> anyhow::Result<()> {
        self.stream_ids.push(stream_id.to_owned());
        self.versions.push(version);
        self.events.push(NewEvent::from_domain(
            Uuid::now_v7(),
            event,
            Metadata::default(),
        )?);
        Ok(())
    }

    async fn flush(&mut self, force: bool) -> anyhow::Result<()> {
        if self.events.is_empty() || (!force && self.events.len() < FLUSH) {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO eventstore.events (stream_id, version, event_id, event_type, data) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::uuid[], $4::text[], $5::jsonb[])",
        )
        .bind(std::mem::take(&mut self.stream_ids))
        .bind(std::mem::take(&mut self.versions))
        .bind(self.events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(
            self.events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            self.events
                .iter()
                .map(|e| e.data.clone())
                .collect::<Vec<_>>(),
        )
        .execute(&self.pool)
        .await?;
        self.events.clear();
        Ok(())
    }
}

/// Seeds about `target` events: per 10 rounds one product (created, then 9 stock adjustments);
/// per round a cart (created, 4 items, checked out) and its order (placed, stock reserved,
/// awaiting payment).
pub async fn seed(pool: &PgPool, target: u64) -> anyhow::Result<Seeded> {
    let eur = |amount| Money::price(amount, "EUR").expect("valid price");
    let mut rows = Rows {
        pool: pool.clone(),
        stream_ids: Vec::new(),
        versions: Vec::new(),
        events: Vec::new(),
    };
    let mut seeded = Seeded::default();
    let mut products: Vec<(ProductId, Sku, Money)> = Vec::new();
    let name = ProductName::parse("Seeded product")?;
    let mut round = 0u64;
    while seeded.total() < target {
        if round.is_multiple_of(10) {
            let sku = Sku::parse(&format!("SEED-{round}"))?;
            let product_id = ProductId::for_sku(&sku);
            let stream = product_id.stream_id();
            let price = eur(100 + (round % 50) as i64);
            rows.push(
                &stream,
                1,
                &ProductEvent::ProductCreated(NewProduct {
                    product_id,
                    sku: sku.clone(),
                    name: name.clone(),
                    description: Description::parse("seeded")?,
                    category: Category::parse("bench")?,
                    price,
                    stock: 1_000_000,
                    image_urls: Vec::new(),
                }),
            )?;
            for k in 1..=9u32 {
                rows.push(
                    &stream,
                    i64::from(k) + 1,
                    &ProductEvent::ProductStockAdjusted {
                        product_id,
                        delta: 1,
                        available: 1_000_000 + k,
                    },
                )?;
            }
            seeded.products += 10;
            products.push((product_id, sku, price));
        }
        let cart_id = CartId(Uuid::now_v7());
        let cart = cart_id.stream_id();
        let customer_id = CustomerId::parse(&format!("shopper-{}", round % 1000))?;
        rows.push(
            &cart,
            1,
            &CartEvent::CartCreated {
                cart_id,
                customer_id: customer_id.clone(),
            },
        )?;
        let mut lines = Vec::new();
        for k in 0..4u64 {
            let (product_id, sku, price) =
                products[((round + k * 7) % products.len() as u64) as usize].clone();
            let quantity = Quantity::parse(1)?;
            rows.push(
                &cart,
                k as i64 + 2,
                &CartEvent::CartItemAdded {
                    cart_id,
                    product_id,
                    sku: sku.clone(),
                    name: name.clone(),
                    unit_price: price,
                    added: quantity,
                    quantity,
                },
            )?;
            lines.push(CartLine {
                product_id,
                sku,
                name: name.clone(),
                unit_price: price,
                quantity,
            });
        }
        let order_id = OrderId(Uuid::now_v7());
        let total = domain::order::order_total(&lines).expect("one currency");
        rows.push(
            &cart,
            6,
            &CartEvent::CartCheckedOut {
                cart_id,
                customer_id: customer_id.clone(),
                order_id,
                lines: lines.clone(),
                total,
            },
        )?;
        let order = order_id.stream_id();
        rows.push(
            &order,
            1,
            &OrderEvent::OrderPlaced {
                order_id,
                cart_id,
                customer_id,
                lines,
                total,
            },
        )?;
        rows.push(&order, 2, &OrderEvent::OrderStockReserved { order_id })?;
        rows.push(
            &order,
            3,
            &OrderEvent::OrderAwaitingPayment {
                order_id,
                pay_by: chrono::Utc::now() + chrono::Duration::minutes(15),
            },
        )?;
        seeded.carts += 6;
        seeded.orders += 3;
        round += 1;
        rows.flush(false).await?;
    }
    rows.flush(true).await?;
    Ok(seeded)
}
