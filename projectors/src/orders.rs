//! The orders view: one row per order with its status, and its lines, status history (one
//! entry per event) and fulfilment (shipment, delivery, payments, refunds) as JSON documents in
//! the API's shape, stored as text (`read_orders_v<n>.orders`; migration 0010 says why).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::order::{OrderEvent, OrderStatus};
use eventstore::RecordedEvent;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::MoneyView;
use crate::copy::CopyRows;
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
    pub fulfilment: Json<Fulfilment>,
}

/// What became of an order after checkout, as the API shows it. A part that is empty (no
/// shipment yet, no payments) is left out of the stored document, which the query API and this
/// projector read as empty. Most orders are stored before anything is fulfilled, and 62 bytes
/// less per row is a sixth fewer pages for a rebuild to write where it tips a row under a
/// page's sixth (the bench's four-line orders: six rows to a page instead of five). Rows written
/// before fulfilment was projected hold `{}`, read the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Fulfilment {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipment: Option<ShipmentView>,
    #[serde(
        serialize_with = "crate::timestamps::optional_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub delivered_at: Option<DateTime<Utc>>,
    /// Every payment attempt, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub payments: Vec<PaymentView>,
    /// Every refund, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refunds: Vec<RefundView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Shipment)]
pub struct ShipmentView {
    pub carrier: String,
    pub tracking_number: String,
    #[serde(serialize_with = "crate::timestamps::rfc3339")]
    pub shipped_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Payment)]
pub struct PaymentView {
    pub payment_id: Uuid,
    /// Who took it (`simulated`, `stripe`), once it is decided.
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's id of the payment (a Stripe PaymentIntent), once captured.
    #[serde(default)]
    pub provider_reference: Option<String>,
    pub amount: MoneyView,
    /// `pending`, `action_required` (the customer must act at the provider), `captured` or
    /// `declined`.
    pub status: String,
    #[serde(serialize_with = "crate::timestamps::rfc3339")]
    pub requested_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::optional_rfc3339")]
    pub settled_at: Option<DateTime<Utc>>,
    /// Why it was declined.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Refund)]
pub struct RefundView {
    pub refund_id: Uuid,
    pub payment_id: Uuid,
    pub amount: MoneyView,
    /// `requested` (the provider has not given it back yet) or `refunded`.
    pub status: String,
    /// The admin's reason; none for the refund of a cancelled order.
    pub reason: Option<String>,
    /// Who gave it back (`simulated`, `stripe`), once it did.
    #[serde(default)]
    pub provider: Option<String>,
    /// The provider's id of the refund (a Stripe `re_…`), once given back.
    #[serde(default)]
    pub provider_refund_id: Option<String>,
    #[serde(serialize_with = "crate::timestamps::rfc3339")]
    pub requested_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timestamps::optional_rfc3339")]
    pub refunded_at: Option<DateTime<Utc>>,
}

impl Fulfilment {
    fn payment(&mut self, payment_id: Uuid) -> Option<&mut PaymentView> {
        self.payments
            .iter_mut()
            .find(|p| p.payment_id == payment_id)
    }

    fn settle_payment(&mut self, payment_id: Uuid, outcome: Settled, at: DateTime<Utc>) {
        if let Some(payment) = self.payment(payment_id) {
            payment.status = outcome.status.to_owned();
            payment.settled_at = Some(at);
            payment.detail = outcome.detail;
            payment.provider = Some(outcome.provider);
            payment.provider_reference = outcome.provider_reference;
        }
    }
}

/// How a payment ended, as the view shows it.
struct Settled {
    status: &'static str,
    provider: String,
    provider_reference: Option<String>,
    detail: Option<String>,
}

/// One line of an order, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = OrderLine)]
pub struct OrderLineView {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_price: MoneyView,
    pub quantity: u32,
    pub line_total: MoneyView,
}

/// One event in an order's status history, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub version: i64,
    pub status: String,
    pub event: String,
    pub detail: Option<String>,
    #[serde(serialize_with = "crate::timestamps::rfc3339")]
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
                fulfilment: Json(Fulfilment::default()),
            }
        }
        (None, _) => return Ok(None),
        (Some(mut row), event) => {
            let fulfilment = &mut row.fulfilment.0;
            // `None`: the status stays as it is.
            let status = match event {
                OrderEvent::OrderPlaced { .. } => Some(OrderStatus::Placed),
                OrderEvent::OrderStockReserved { .. } => Some(OrderStatus::StockReserved),
                OrderEvent::OrderAwaitingPayment { pay_by, .. } => {
                    row.pay_by = Some(pay_by);
                    Some(OrderStatus::AwaitingPayment)
                }
                OrderEvent::OrderRejected { reason, .. } => {
                    detail = Some(reason);
                    Some(OrderStatus::Rejected)
                }
                OrderEvent::OrderPaymentRequested {
                    payment_id, amount, ..
                } => {
                    row.payment_id = Some(payment_id.0);
                    fulfilment.payments.push(PaymentView {
                        payment_id: payment_id.0,
                        provider: None,
                        provider_reference: None,
                        amount: amount.into(),
                        status: "pending".into(),
                        requested_at: at,
                        settled_at: None,
                        detail: None,
                    });
                    Some(OrderStatus::PaymentPending)
                }
                OrderEvent::OrderPaid {
                    payment_id,
                    provider,
                    provider_reference,
                    ..
                } => {
                    let outcome = Settled {
                        status: "captured",
                        provider,
                        provider_reference,
                        detail: None,
                    };
                    fulfilment.settle_payment(payment_id.0, outcome, at);
                    Some(OrderStatus::Paid)
                }
                OrderEvent::OrderPaymentActionRequired {
                    payment_id,
                    provider,
                    provider_reference,
                    ..
                } => {
                    if let Some(payment) = fulfilment.payment(payment_id.0) {
                        payment.status = "action_required".to_owned();
                        payment.provider = Some(provider);
                        payment.provider_reference = Some(provider_reference);
                    }
                    None
                }
                OrderEvent::OrderPaymentDeclined {
                    payment_id,
                    provider,
                    reason,
                    ..
                } => {
                    let outcome = Settled {
                        status: "declined",
                        provider,
                        provider_reference: None,
                        detail: Some(reason.clone()),
                    };
                    fulfilment.settle_payment(payment_id.0, outcome, at);
                    detail = Some(reason);
                    row.payment_id = None;
                    Some(OrderStatus::PaymentDeclined)
                }
                OrderEvent::OrderExpired { .. } => Some(OrderStatus::Expired),
                OrderEvent::OrderCancelled { reason, .. } => {
                    detail = Some(reason);
                    Some(OrderStatus::Cancelled)
                }
                OrderEvent::OrderRefundRequested {
                    payment_id,
                    refund_id,
                    amount,
                    reason,
                    ..
                } => {
                    fulfilment.refunds.push(RefundView {
                        refund_id: refund_id.0,
                        payment_id: payment_id.0,
                        amount: amount.into(),
                        status: "requested".into(),
                        reason: Some(reason.clone()),
                        provider: None,
                        provider_refund_id: None,
                        requested_at: at,
                        refunded_at: None,
                    });
                    detail = Some(reason);
                    None
                }
                OrderEvent::OrderRefunded {
                    payment_id,
                    refund_id,
                    amount,
                    provider,
                    provider_refund_id,
                    ..
                } => {
                    let index = match fulfilment
                        .refunds
                        .iter()
                        .position(|r| r.refund_id == refund_id.0)
                    {
                        Some(index) => index,
                        // A cancelled order's refund is not requested first.
                        None => {
                            fulfilment.refunds.push(RefundView {
                                refund_id: refund_id.0,
                                payment_id: payment_id.0,
                                amount: amount.into(),
                                status: "requested".into(),
                                reason: None,
                                provider: None,
                                provider_refund_id: None,
                                requested_at: at,
                                refunded_at: None,
                            });
                            fulfilment.refunds.len() - 1
                        }
                    };
                    let refund = &mut fulfilment.refunds[index];
                    refund.status = "refunded".into();
                    refund.refunded_at = Some(at);
                    refund.provider = Some(provider);
                    refund.provider_refund_id = provider_refund_id;
                    let refunded: i64 = fulfilment
                        .refunds
                        .iter()
                        .filter(|r| r.status == "refunded")
                        .map(|r| r.amount.amount)
                        .sum();
                    if refunded >= row.total_amount {
                        Some(OrderStatus::Refunded)
                    } else {
                        None
                    }
                }
                OrderEvent::OrderShipped {
                    carrier,
                    tracking_number,
                    ..
                } => {
                    fulfilment.shipment = Some(ShipmentView {
                        carrier: carrier.as_str().to_owned(),
                        tracking_number: tracking_number.as_str().to_owned(),
                        shipped_at: at,
                    });
                    Some(OrderStatus::Shipped)
                }
                OrderEvent::OrderDelivered { .. } => {
                    fulfilment.delivered_at = Some(at);
                    Some(OrderStatus::Delivered)
                }
            };
            if let Some(status) = status {
                row.status = status.as_str().to_owned();
            }
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
payment_id, placed_at, updated_at, version, lines, history, fulfilment";
/// [`COLUMNS`] as read back: the text documents as JSON, for sqlx's `Json`.
const SELECTED: &str = "order_id, customer_id, cart_id, status, total_amount, currency, pay_by, \
payment_id, placed_at, updated_at, version, lines::json AS lines, history::json AS history, \
fulfilment::json AS fulfilment";

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

    const TABLE: &'static str = "orders";
    const COLUMNS: &'static str = COLUMNS;

    fn copy_row(row: &OrderRow, rows: &mut CopyRows) -> Result<(), serde_json::Error> {
        rows.uuid(row.order_id)
            .text(&row.customer_id)
            .uuid(row.cart_id)
            .text(&row.status)
            .int8(row.total_amount)
            .text(&row.currency)
            .optional_timestamptz(row.pay_by)
            .optional_uuid(row.payment_id)
            .timestamptz(row.placed_at)
            .timestamptz(row.updated_at)
            .int8(row.version)
            .json(&row.lines.0)?
            .json(&row.history.0)?
            .json(&row.fulfilment.0)?;
        Ok(())
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
                             unnest($11::int8[]), unnest($12::text[]), unnest($13::text[]), \
                             unnest($14::text[]) \
             ON CONFLICT (order_id) DO UPDATE SET \
               status = EXCLUDED.status, pay_by = EXCLUDED.pay_by, \
               payment_id = EXCLUDED.payment_id, updated_at = EXCLUDED.updated_at, \
               version = EXCLUDED.version, history = EXCLUDED.history, \
               fulfilment = EXCLUDED.fulfilment \
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
        .bind(json_column(rows, |r| &r.fulfilment.0)?)
        .fetch_all(&mut **tx)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfulfilled_order_stores_no_parts_and_reads_back_the_same() {
        let stored = serde_json::to_string(&Fulfilment::default()).unwrap();
        assert_eq!(stored, "{}");
        let read: Fulfilment = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, Fulfilment::default());
    }

    #[test]
    fn a_fulfilled_part_is_stored_and_the_empty_ones_are_not() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let fulfilment = Fulfilment {
            shipment: Some(ShipmentView {
                carrier: "DHL".into(),
                tracking_number: "JD0001".into(),
                shipped_at: at,
            }),
            ..Fulfilment::default()
        };
        let stored = serde_json::to_value(&fulfilment).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"shipment": {
                "carrier": "DHL", "tracking_number": "JD0001", "shipped_at": "2026-12-07T10:00:00Z"
            }})
        );
        let read: Fulfilment = serde_json::from_value(stored).unwrap();
        assert_eq!(read, fulfilment);
    }
}
