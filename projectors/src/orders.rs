//! The orders view: one row per order with its status, and its lines and status history (one
//! entry per event) as JSON arrays in the API's shape, stored as text
//! (`read_orders_v<n>.orders`; migration 0010 says why).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::order::{OrderEvent, OrderStatus};
use eventstore::RecordedEvent;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::MoneyView;
use crate::error::ProjectionError;
use crate::tables::{ORDERS, PgProjection};

/// Stream type this projection reads.
pub const STREAM_TYPE: &str = domain::values::OrderId::STREAM_TYPE;

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
    pub lines: Json<Vec<OrderLineView>>,
    pub history: Json<Vec<HistoryEntry>>,
}

/// One line of an order, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLineView {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_price: MoneyView,
    pub quantity: u32,
    pub line_total: MoneyView,
}

/// One event in an order's status history, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: i64,
    pub status: String,
    pub event: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// Folds one event into an order's row.
pub fn apply(
    row: Option<OrderRow>,
    recorded: &RecordedEvent,
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
            let money = |amount| MoneyView {
                amount,
                currency: total.currency,
            };
            let lines = lines
                .iter()
                .map(|line| OrderLineView {
                    product_id: line.product_id.0,
                    sku: line.sku.as_str().to_owned(),
                    name: line.name.as_str().to_owned(),
                    unit_price: money(line.unit_price.amount),
                    quantity: line.quantity.get(),
                    line_total: money(line.line_total().amount),
                })
                .collect();
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
                lines: Json(lines),
                history: Json(Vec::new()),
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
                OrderEvent::OrderDelivered { .. } => OrderStatus::Delivered,
            };
            row.status = status.as_str().to_owned();
            row
        }
    };
    row.version = recorded.version as i64;
    row.updated_at = at;
    row.history.0.push(HistoryEntry {
        version: row.version,
        status: row.status.clone(),
        event: recorded.event_type.clone(),
        detail,
        at,
    });
    Ok(Some(row))
}

const COLUMNS: &str = "order_id, customer_id, cart_id, status, total_amount, currency, pay_by, \
payment_id, placed_at, updated_at, version, lines, history";
/// [`COLUMNS`] as read back: the text documents as JSON, for sqlx's `Json`.
const SELECTED: &str = "order_id, customer_id, cart_id, status, total_amount, currency, pay_by, \
payment_id, placed_at, updated_at, version, lines::json AS lines, history::json AS history";

fn json_column<T: Serialize>(
    rows: &[OrderRow],
    field: impl Fn(&OrderRow) -> &T,
) -> Result<Vec<String>, sqlx::Error> {
    rows.iter()
        .map(|r| serde_json::to_string(field(r)).map_err(|e| sqlx::Error::Encode(Box::new(e))))
        .collect()
}

/// The orders projection, for [`crate::tables::apply_live`] and rebuilds.
#[derive(Debug, Clone, Copy)]
pub struct Orders;

impl PgProjection for Orders {
    const NAME: &'static str = ORDERS;
    const STREAM_TYPE: &'static str = STREAM_TYPE;
    type View = OrderRow;

    fn version(view: &OrderRow) -> u64 {
        view.version as u64
    }

    fn apply(
        view: Option<OrderRow>,
        event: &RecordedEvent,
    ) -> Result<Option<OrderRow>, ProjectionError> {
        apply(view, event)
    }

    async fn load(
        tx: &mut Transaction<'_, Postgres>,
        schema: &str,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, OrderRow>, sqlx::Error> {
        let rows: Vec<OrderRow> = sqlx::query_as(&format!(
            "SELECT {SELECTED} FROM \"{schema}\".orders WHERE order_id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.into_iter().map(|r| (r.order_id, r)).collect())
    }

    async fn upsert(
        tx: &mut Transaction<'_, Postgres>,
        schema: &str,
        rows: &[OrderRow],
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
            "INSERT INTO \"{schema}\".orders ({COLUMNS}) \
             SELECT unnest($1::uuid[]), unnest($2::text[]), unnest($3::uuid[]), \
                             unnest($4::text[]), unnest($5::int8[]), unnest($6::text[]), \
                             unnest($7::timestamptz[]), unnest($8::uuid[]), \
                             unnest($9::timestamptz[]), unnest($10::timestamptz[]), \
                             unnest($11::int8[]), unnest($12::text[]), unnest($13::text[]) \
             ON CONFLICT (order_id) DO UPDATE SET \
               status = EXCLUDED.status, pay_by = EXCLUDED.pay_by, \
               payment_id = EXCLUDED.payment_id, updated_at = EXCLUDED.updated_at, \
               version = EXCLUDED.version, history = EXCLUDED.history \
             WHERE orders.version < EXCLUDED.version \
             RETURNING order_id"
        ))
        .bind(column!(order_id))
        .bind(column!(customer_id))
        .bind(column!(cart_id))
        .bind(column!(status))
        .bind(column!(total_amount))
        .bind(column!(currency))
        .bind(column!(pay_by))
        .bind(column!(payment_id))
        .bind(column!(placed_at))
        .bind(column!(updated_at))
        .bind(column!(version))
        // As text, as stored: no JSON check on the way in (see migration 0010).
        .bind(json_column(rows, |r| &r.lines.0)?)
        .bind(json_column(rows, |r| &r.history.0)?)
        .fetch_all(&mut **tx)
        .await
    }
}
