//! The catalog view: one row per product with price, stock on hand and held, and a full-text
//! search column (`read_products_v<n>.products`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::product::ProductEvent;
use eventstore::RecordedEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::copy::CopyRows;
use crate::error::ProjectionError;
use crate::tables::{PRODUCTS, PgProjection};

/// Stream type this projection reads.
pub const STREAM_TYPE: &str = domain::values::ProductId::STREAM_TYPE;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ProductRow {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_amount: i64,
    pub currency: String,
    pub available: i64,
    pub reserved: i64,
    pub discontinued: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The pictures' URLs as a JSON array, served whole.
    pub image_urls: String,
}

/// A list of pictures as the view stores it.
fn image_urls_json(urls: &[domain::values::ImageUrl]) -> String {
    serde_json::to_string(urls).unwrap_or_else(|_| "[]".to_owned())
}

fn decode(event: &RecordedEvent) -> Result<ProductEvent, ProjectionError> {
    event.decode().map_err(|e| ProjectionError::Undecodable {
        event_id: event.event_id,
        reason: e.to_string(),
    })
}

/// Folds one event into a product's row.
pub fn apply(
    row: Option<ProductRow>,
    recorded: &RecordedEvent,
) -> Result<Option<ProductRow>, ProjectionError> {
    let event = decode(recorded)?;
    let mut row = match (row, event) {
        (None, ProductEvent::ProductCreated(new)) => {
            return Ok(Some(ProductRow {
                product_id: new.product_id.0,
                sku: new.sku.as_str().to_owned(),
                name: new.name.as_str().to_owned(),
                description: new.description.as_str().to_owned(),
                category: new.category.as_str().to_owned(),
                price_amount: new.price.amount,
                currency: new.price.currency.to_string(),
                available: i64::from(new.stock),
                reserved: 0,
                discontinued: false,
                version: recorded.version as i64,
                created_at: recorded.recorded_at,
                updated_at: recorded.recorded_at,
                image_urls: image_urls_json(&new.image_urls),
            }));
        }
        // Only a creation starts a product; nothing else can apply to a missing one.
        (None, _) => return Ok(None),
        (Some(row), event) => {
            let mut row = row;
            match event {
                ProductEvent::ProductCreated(_) => {}
                ProductEvent::ProductDetailsChanged {
                    name,
                    description,
                    category,
                    image_urls,
                    ..
                } => {
                    row.name = name.as_str().to_owned();
                    row.description = description.as_str().to_owned();
                    row.category = category.as_str().to_owned();
                    row.image_urls = image_urls_json(&image_urls);
                }
                ProductEvent::ProductPriceChanged { new_price, .. } => {
                    row.price_amount = new_price.amount;
                    row.currency = new_price.currency.to_string();
                }
                ProductEvent::ProductStockAdjusted { available, .. } => {
                    row.available = i64::from(available);
                }
                ProductEvent::ProductDiscontinued { .. } => row.discontinued = true,
                ProductEvent::StockReserved {
                    quantity,
                    available,
                    ..
                } => {
                    row.available = i64::from(available);
                    row.reserved += i64::from(quantity);
                }
                ProductEvent::StockReleased {
                    quantity,
                    available,
                    ..
                } => {
                    row.available = i64::from(available);
                    row.reserved -= i64::from(quantity);
                }
            }
            row
        }
    };
    row.version = recorded.version as i64;
    row.updated_at = recorded.recorded_at;
    Ok(Some(row))
}

const COLUMNS: &str = "product_id, sku, name, description, category, price_amount, currency, \
available, reserved, discontinued, version, created_at, updated_at, image_urls";

/// The products projection, for [`crate::tables::apply_live`] and rebuilds.
#[derive(Debug, Clone, Copy)]
pub struct Products;

impl PgProjection for Products {
    const NAME: &'static str = PRODUCTS;
    const STREAM_TYPE: &'static str = STREAM_TYPE;
    type View = ProductRow;

    fn version(view: &ProductRow) -> u64 {
        view.version as u64
    }

    fn apply(
        view: Option<ProductRow>,
        event: &RecordedEvent,
    ) -> Result<Option<ProductRow>, ProjectionError> {
        apply(view, event)
    }

    async fn load(
        tx: &mut Transaction<'_, Postgres>,
        schema: &str,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, ProductRow>, sqlx::Error> {
        let rows: Vec<ProductRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM \"{schema}\".products WHERE product_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.into_iter().map(|r| (r.product_id, r)).collect())
    }

    const TABLE: &'static str = "products";
    const COLUMNS: &'static str = COLUMNS;

    fn copy_row(row: &ProductRow, rows: &mut CopyRows) -> Result<(), serde_json::Error> {
        rows.uuid(row.product_id)
            .text(&row.sku)
            .text(&row.name)
            .text(&row.description)
            .text(&row.category)
            .int8(row.price_amount)
            .text(&row.currency)
            .int8(row.available)
            .int8(row.reserved)
            .bool(row.discontinued)
            .int8(row.version)
            .timestamptz(row.created_at)
            .timestamptz(row.updated_at)
            .text(&row.image_urls);
        Ok(())
    }

    async fn upsert(
        tx: &mut Transaction<'_, Postgres>,
        schema: &str,
        rows: &[ProductRow],
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        macro_rules! column {
            ($field:ident) => {
                rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
            };
        }
        // `unnest` in the select list (a ProjectSet) streams the arrays; `UNNEST` in FROM
        // first copies every array into a tuple store of its own, which made the statement a
        // third dearer.
        sqlx::query_scalar(&format!(
            "INSERT INTO \"{schema}\".products ({COLUMNS}) \
             SELECT unnest($1::uuid[]), unnest($2::text[]), unnest($3::text[]), \
                             unnest($4::text[]), unnest($5::text[]), unnest($6::int8[]), \
                             unnest($7::text[]), unnest($8::int8[]), unnest($9::int8[]), \
                             unnest($10::bool[]), unnest($11::int8[]), \
                             unnest($12::timestamptz[]), unnest($13::timestamptz[]), \
                             unnest($14::text[]) \
             ON CONFLICT (product_id) DO UPDATE SET \
               sku = EXCLUDED.sku, name = EXCLUDED.name, description = EXCLUDED.description, \
               category = EXCLUDED.category, price_amount = EXCLUDED.price_amount, \
               currency = EXCLUDED.currency, available = EXCLUDED.available, \
               reserved = EXCLUDED.reserved, discontinued = EXCLUDED.discontinued, \
               version = EXCLUDED.version, updated_at = EXCLUDED.updated_at, \
               image_urls = EXCLUDED.image_urls \
             WHERE products.version < EXCLUDED.version \
             RETURNING product_id"
        ))
        .bind(column!(product_id))
        .bind(column!(sku))
        .bind(column!(name))
        .bind(column!(description))
        .bind(column!(category))
        .bind(column!(price_amount))
        .bind(column!(currency))
        .bind(column!(available))
        .bind(column!(reserved))
        .bind(column!(discontinued))
        .bind(column!(version))
        .bind(column!(created_at))
        .bind(column!(updated_at))
        .bind(column!(image_urls))
        .fetch_all(&mut **tx)
        .await
    }
}
