//! The orders view: one row per order with its status, its lines, and a status history entry per
//! event (`read_orders_v<n>.orders`, `.order_lines`, `.order_history`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::order::{OrderEvent, OrderStatus};
use eventstore::{EventStore, RecordedEvent};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::ordering::{new_events_by_stream, stream_ids};
use crate::tables::{ORDERS, PgProjection};

/// Stream type this projection reads.
pub const STREAM_TYPE: &str = "order";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub cart_id: Uuid,
    pub status: String,
    pub total_amount: i64,
    pub currency: String,
    pub pay_by: Option<DateTime<Utc>>,
    pub payment_id: Option<Uuid>,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLineRow {
    pub order_id: Uuid,
    pub line_no: i32,
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_amount: i64,
    pub quantity: i32,
    pub line_amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub order_id: Uuid,
    pub version: i64,
    pub status: String,
    pub event_type: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// What a batch changes: whole order rows, plus lines and history to add.
#[derive(Debug, Default)]
pub struct OrderChanges {
    pub rows: Vec<OrderRow>,
    pub lines: Vec<OrderLineRow>,
    pub history: Vec<HistoryRow>,
}

/// Folds one event into an order's row, adding its lines and history entry to `changes`.
pub fn apply(
    row: Option<OrderRow>,
    recorded: &RecordedEvent,
    changes: &mut OrderChanges,
) -> Result<Option<OrderRow>, ProjectionError> {
    let event: OrderEvent = recorded
        .decode()
        .map_err(|e| ProjectionError::Undecodable {
            event_id: recorded.event_id,
            reason: e.to_string(),
        })?;
    let at = recorded.recorded_at;
    let mut detail = None;
    let mut row = match (row, event) {
        (
            None,
            OrderEvent::OrderPlaced {
                order_id,
                cart_id,
                customer_id,
                lines,
                total,
            },
        ) => {
            for (i, line) in lines.iter().enumerate() {
                changes.lines.push(OrderLineRow {
                    order_id: order_id.0,
                    line_no: i as i32 + 1,
                    product_id: line.product_id.0,
                    sku: line.sku.as_str().to_owned(),
                    name: line.name.as_str().to_owned(),
                    unit_amount: line.unit_price.amount,
                    quantity: line.quantity.get() as i32,
                    line_amount: line.line_total().amount,
                });
            }
            OrderRow {
                order_id: order_id.0,
                customer_id: customer_id.as_str().to_owned(),
                cart_id: cart_id.0,
                status: OrderStatus::Placed.as_str().to_owned(),
                total_amount: total.amount,
                currency: total.currency.to_string(),
                pay_by: None,
                payment_id: None,
                placed_at: at,
                updated_at: at,
                version: 0,
            }
        }
        (None, _) => return Ok(None),
        (Some(mut row), event) => {
            let status = match event {
                OrderEvent::OrderPlaced { .. } => OrderStatus::Placed,
                OrderEvent::OrderStockReserved { .. } => OrderStatus::StockReserved,
                OrderEvent::OrderAwaitingPayment { pay_by, .. } => {
                    row.pay_by = Some(pay_by);
                    OrderStatus::AwaitingPayment
                }
                OrderEvent::OrderRejected { reason, .. } => {
                    detail = Some(reason);
                    OrderStatus::Rejected
                }
                OrderEvent::OrderPaymentRequested { payment_id, .. } => {
                    row.payment_id = Some(payment_id.0);
                    OrderStatus::PaymentPending
                }
                OrderEvent::OrderPaid { .. } => OrderStatus::Paid,
                OrderEvent::OrderPaymentDeclined { reason, .. } => {
                    detail = Some(reason);
                    row.payment_id = None;
                    OrderStatus::PaymentDeclined
                }
                OrderEvent::OrderExpired { .. } => OrderStatus::Expired,
                OrderEvent::OrderCancelled { reason, .. } => {
                    detail = Some(reason);
                    OrderStatus::Cancelled
                }
                OrderEvent::OrderRefunded { .. } => OrderStatus::Refunded,
                OrderEvent::OrderShipped { .. } => OrderStatus::Shipped,
            };
            row.status = status.as_str().to_owned();
            row
        }
    };
    row.version = recorded.version as i64;
    row.updated_at = at;
    changes.history.push(HistoryRow {
        order_id: row.order_id,
        version: row.version,
        status: row.status.clone(),
        event_type: recorded.event_type.clone(),
        detail,
        at,
    });
    Ok(Some(row))
}

const COLUMNS: &str = "order_id, customer_id, cart_id, status, total_amount, currency, pay_by, \
payment_id, placed_at, updated_at, version";

async fn load(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, OrderRow>, sqlx::Error> {
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM \"{schema}\".orders WHERE order_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| (r.order_id, r)).collect())
}

/// Writes a batch's changes with three statements (UNNEST).
pub async fn write(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    changes: &OrderChanges,
) -> Result<(), sqlx::Error> {
    macro_rules! column {
        ($rows:expr, $field:ident) => {
            $rows.iter().map(|r| r.$field.clone()).collect::<Vec<_>>()
        };
    }
    if !changes.rows.is_empty() {
        let rows = &changes.rows;
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".orders ({COLUMNS}) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int8[], \
                                  $6::text[], $7::timestamptz[], $8::uuid[], $9::timestamptz[], \
                                  $10::timestamptz[], $11::int8[]) \
             ON CONFLICT (order_id) DO UPDATE SET \
               status = EXCLUDED.status, pay_by = EXCLUDED.pay_by, \
               payment_id = EXCLUDED.payment_id, updated_at = EXCLUDED.updated_at, \
               version = EXCLUDED.version \
             WHERE orders.version < EXCLUDED.version"
        ))
        .bind(column!(rows, order_id))
        .bind(column!(rows, customer_id))
        .bind(column!(rows, cart_id))
        .bind(column!(rows, status))
        .bind(column!(rows, total_amount))
        .bind(column!(rows, currency))
        .bind(column!(rows, pay_by))
        .bind(column!(rows, payment_id))
        .bind(column!(rows, placed_at))
        .bind(column!(rows, updated_at))
        .bind(column!(rows, version))
        .execute(&mut **tx)
        .await?;
    }
    if !changes.lines.is_empty() {
        let lines = &changes.lines;
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".order_lines \
               (order_id, line_no, product_id, sku, name, unit_amount, quantity, line_amount) \
             SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::uuid[], $4::text[], $5::text[], \
                                  $6::int8[], $7::int4[], $8::int8[]) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(column!(lines, order_id))
        .bind(column!(lines, line_no))
        .bind(column!(lines, product_id))
        .bind(column!(lines, sku))
        .bind(column!(lines, name))
        .bind(column!(lines, unit_amount))
        .bind(column!(lines, quantity))
        .bind(column!(lines, line_amount))
        .execute(&mut **tx)
        .await?;
    }
    if !changes.history.is_empty() {
        let history = &changes.history;
        sqlx::query(&format!(
            "INSERT INTO \"{schema}\".order_history (order_id, version, status, event_type, detail, at) \
             SELECT * FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                                  $6::timestamptz[]) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(column!(history, order_id))
        .bind(column!(history, version))
        .bind(column!(history, status))
        .bind(column!(history, event_type))
        .bind(column!(history, detail))
        .bind(column!(history, at))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Applies order events to one version's tables (see [`crate::products::apply_to`]).
pub async fn apply_to(
    tx: &mut Transaction<'_, Postgres>,
    schema: &str,
    store: &EventStore,
    events: &[RecordedEvent],
) -> Result<u64, ProjectionError> {
    let ids = stream_ids(events, STREAM_TYPE);
    let mut rows = load(tx, schema, &ids).await?;
    let plan = new_events_by_stream(store, events, STREAM_TYPE, |id| {
        rows.get(&id).map_or(0, |r| r.version as u64)
    })
    .await?;
    let mut changes = OrderChanges::default();
    let mut applied = 0;
    for (id, new) in plan {
        let mut row = rows.remove(&id);
        for event in &new {
            row = apply(row, event, &mut changes)?;
        }
        applied += new.len() as u64;
        changes.rows.extend(row);
    }
    write(tx, schema, &changes).await?;
    Ok(applied)
}

/// The orders projection, for [`crate::tables::apply_live`] and rebuilds.
#[derive(Debug, Clone, Copy)]
pub struct Orders;

impl PgProjection for Orders {
    const NAME: &'static str = ORDERS;
    const STREAM_TYPE: &'static str = STREAM_TYPE;

    async fn apply_to(
        tx: &mut Transaction<'_, Postgres>,
        schema: &str,
        store: &EventStore,
        events: &[RecordedEvent],
    ) -> Result<u64, ProjectionError> {
        apply_to(tx, schema, store, events).await
    }
}
