//! The order and its lifecycle.
//!
//! ```text
//! Placed ─▶ StockReserved ─▶ AwaitingPayment ─▶ PaymentPending ─▶ Paid ─▶ Shipped ─▶ Delivered
//!   │                          │        ▲            │              │
//!   ▼                          │        └─ PaymentDeclined ◀────────┘(declined)
//! Rejected (no stock)          ▼                                    ▼
//!                    Expired (unpaid at deadline)       Cancelled ─▶ Refunded (if it was paid)
//! ```
//!
//! Cancel is allowed from every state before shipping except while a payment is with the
//! provider (its outcome must be known first). Every other move is a rejection.
//!
//! Refunds: an admin may refund a paid, shipped or delivered order, in full or in parts, never
//! more in total than was paid. A refund is first *requested* on the order (which reserves its
//! amount, so two refunds racing cannot together exceed the payment), then given back by the
//! provider and *recorded*; the order is `refunded` once everything paid has come back.
//! Cancelling a paid order refunds whatever no earlier refund has claimed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cart::CartLine;
use crate::values::{
    Actor, Carrier, CartId, Currency, CustomerId, InvalidValue, Money, OrderId, PaymentId,
    RefundId, TrackingNumber,
};
use crate::{Aggregate, event_types, rejection_codes};

/// An opaque token from the payment provider's client-side form, 1 to 256 visible characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PaymentToken(String);

impl PaymentToken {
    pub const MAX_CHARS: usize = 256;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_CHARS
            && raw.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(InvalidValue::new(
                "payment_token",
                "must be 1 to 256 visible ASCII characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    StockReserved,
    AwaitingPayment,
    PaymentPending,
    PaymentDeclined,
    Paid,
    Shipped,
    Delivered,
    Rejected,
    Expired,
    Cancelled,
    Refunded,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::StockReserved => "stock_reserved",
            Self::AwaitingPayment => "awaiting_payment",
            Self::PaymentPending => "payment_pending",
            Self::PaymentDeclined => "payment_declined",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
        }
    }

    /// Whether the order still holds stock that a cancel or expiry must give back.
    pub fn holds_stock(self) -> bool {
        matches!(
            self,
            Self::Placed
                | Self::StockReserved
                | Self::AwaitingPayment
                | Self::PaymentPending
                | Self::PaymentDeclined
                | Self::Paid
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Places the order from a checked-out cart, with prices re-checked against the catalog.
    Place {
        order_id: OrderId,
        cart_id: CartId,
        customer_id: CustomerId,
        lines: Vec<CartLine>,
    },
    /// Every line's stock is held; the order now waits for payment until `pay_by`.
    ConfirmStockReserved {
        pay_by: DateTime<Utc>,
    },
    /// A line could not be reserved.
    Reject {
        reason: String,
    },
    RequestPayment {
        actor: Actor,
        payment_id: PaymentId,
        token: PaymentToken,
    },
    /// The provider (`stripe`, `simulated`) captured the payment under its own id.
    RecordPaymentCaptured {
        payment_id: PaymentId,
        provider: String,
        provider_reference: String,
    },
    RecordPaymentDeclined {
        payment_id: PaymentId,
        provider: String,
        reason: String,
    },
    /// The provider waits for the customer (e.g. 3-D Secure) before it decides.
    RecordPaymentActionRequired {
        payment_id: PaymentId,
        provider: String,
        provider_reference: String,
    },
    /// The payment deadline passed; `now` is the clock reading of whoever fires it.
    Expire {
        now: DateTime<Utc>,
    },
    Cancel {
        actor: Actor,
        reason: String,
    },
    /// An admin gives back `amount` of the payment (everything not yet claimed by another
    /// refund when `None`).
    Refund {
        actor: Actor,
        refund_id: RefundId,
        amount: Option<Money>,
        reason: String,
    },
    /// The provider gave a refund back (under its own id for it, when it has one).
    RecordRefund {
        payment_id: PaymentId,
        refund_id: RefundId,
        amount: Money,
        provider: String,
        provider_refund_id: Option<String>,
    },
    Ship {
        actor: Actor,
        carrier: Carrier,
        tracking_number: TrackingNumber,
    },
    /// The carrier handed the parcel over (admin).
    Deliver {
        actor: Actor,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderPlaced {
        order_id: OrderId,
        cart_id: CartId,
        customer_id: CustomerId,
        lines: Vec<CartLine>,
        total: Money,
    },
    OrderStockReserved {
        order_id: OrderId,
    },
    OrderAwaitingPayment {
        order_id: OrderId,
        pay_by: DateTime<Utc>,
    },
    OrderRejected {
        order_id: OrderId,
        reason: String,
    },
    OrderPaymentRequested {
        order_id: OrderId,
        customer_id: CustomerId,
        payment_id: PaymentId,
        amount: Money,
        token: PaymentToken,
    },
    /// Schema v2 added the provider and its id of the payment (v1 events were all the
    /// simulated provider's, their ids not kept).
    OrderPaid {
        order_id: OrderId,
        payment_id: PaymentId,
        amount: Money,
        provider: String,
        provider_reference: Option<String>,
    },
    /// The payment waits for the customer to act at the provider; the order still waits for
    /// its outcome.
    OrderPaymentActionRequired {
        order_id: OrderId,
        payment_id: PaymentId,
        provider: String,
        provider_reference: String,
    },
    /// Schema v2 added the provider (v1: the simulated one).
    OrderPaymentDeclined {
        order_id: OrderId,
        payment_id: PaymentId,
        provider: String,
        reason: String,
    },
    OrderExpired {
        order_id: OrderId,
        pay_by: DateTime<Utc>,
    },
    /// `refund` names the captured payment to give back, if the order was paid.
    OrderCancelled {
        order_id: OrderId,
        by: CustomerId,
        reason: String,
        refund: Option<PaymentId>,
    },
    /// An admin asked for `amount` of the payment back; the order process has the provider
    /// refund it.
    OrderRefundRequested {
        order_id: OrderId,
        payment_id: PaymentId,
        refund_id: RefundId,
        amount: Money,
        reason: String,
        by: CustomerId,
    },
    /// Schema v2 added `refund_id` (a v1 event, the one full refund of a cancelled order, is
    /// read with the payment's id as its refund id).
    /// Schema v3 added the provider and its id of the refund.
    OrderRefunded {
        order_id: OrderId,
        payment_id: PaymentId,
        refund_id: RefundId,
        amount: Money,
        provider: String,
        provider_refund_id: Option<String>,
    },
    /// Schema v2 added the carrier and tracking number (empty in events of v1).
    OrderShipped {
        order_id: OrderId,
        carrier: Carrier,
        tracking_number: TrackingNumber,
    },
    OrderDelivered {
        order_id: OrderId,
    },
}

event_types!(OrderEvent {
    OrderPlaced,
    OrderStockReserved,
    OrderAwaitingPayment,
    OrderRejected,
    OrderPaymentRequested,
    OrderPaid,
    OrderPaymentActionRequired,
    OrderPaymentDeclined,
    OrderExpired,
    OrderCancelled,
    OrderRefundRequested,
    OrderRefunded,
    OrderShipped,
    OrderDelivered,
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderRejection {
    #[error("order not found")]
    NotFound,
    #[error("an order with this id already exists")]
    AlreadyExists,
    #[error("an order needs at least one line")]
    NoLines,
    #[error("the order lines do not share one currency")]
    MixedCurrencies,
    #[error("an order whose total is zero cannot be paid")]
    ZeroTotal,
    #[error("cannot {action} an order that is {status}", status = status.as_str())]
    IllegalTransition {
        action: &'static str,
        status: OrderStatus,
    },
    #[error("a payment for this order is already in progress")]
    PaymentInProgress,
    #[error("the payment {0} is not this order's current payment")]
    UnknownPayment(PaymentId),
    #[error("the payment deadline {0} has not passed")]
    DeadlineNotReached(DateTime<Utc>),
    #[error("only the order's owner may do this")]
    NotOwner,
    #[error("only an admin may do this")]
    AdminOnly,
    #[error("a refund must be positive")]
    NonPositiveRefund,
    #[error("the order was paid in {order}, not in the refund's currency")]
    RefundCurrency { order: Currency },
    #[error("at most {refundable} can still be refunded")]
    RefundExceedsPayment { refundable: Money },
    #[error("the refund {0} is already recorded")]
    RefundRecorded(RefundId),
    #[error("the payment is already recorded as waiting for the customer")]
    PaymentActionRecorded,
}

rejection_codes!(OrderRejection {
    NotFound => (NotFound, "order-not-found"),
    AlreadyExists => (InvalidState, "order-exists"),
    NoLines => (Unprocessable, "order-without-lines"),
    MixedCurrencies => (Unprocessable, "currency-mismatch"),
    ZeroTotal => (Unprocessable, "zero-total"),
    IllegalTransition => (InvalidState, "illegal-order-transition"),
    PaymentInProgress => (InvalidState, "payment-in-progress"),
    UnknownPayment => (InvalidState, "unknown-payment"),
    DeadlineNotReached => (InvalidState, "deadline-not-reached"),
    NotOwner => (Forbidden, "not-order-owner"),
    AdminOnly => (Forbidden, "admin-only"),
    NonPositiveRefund => (Unprocessable, "non-positive-amount"),
    RefundCurrency => (Unprocessable, "currency-mismatch"),
    RefundExceedsPayment => (Unprocessable, "refund-exceeds-payment"),
    RefundRecorded => (InvalidState, "refund-recorded"),
    PaymentActionRecorded => (InvalidState, "payment-action-recorded"),
});

/// An order as its events describe it; `None` until placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Order(pub Option<OrderDetails>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDetails {
    pub order_id: OrderId,
    pub cart_id: CartId,
    pub customer_id: CustomerId,
    pub lines: Vec<CartLine>,
    pub total: Money,
    pub status: OrderStatus,
    pub pay_by: Option<DateTime<Utc>>,
    /// The payment with the provider (while pending) or the one that captured (once paid).
    pub payment: Option<PaymentId>,
    /// The pending payment waits for the customer to act at the provider.
    pub payment_action_required: bool,
    /// Sum of the refunds admins have requested (whether given back yet or not).
    pub refunds_requested: Money,
    /// Sum of the refunds given back, and their ids.
    pub refunded: Money,
    pub refund_ids: Vec<RefundId>,
}

impl OrderDetails {
    fn illegal(&self, action: &'static str) -> OrderRejection {
        OrderRejection::IllegalTransition {
            action,
            status: self.status,
        }
    }

    /// Owner-only actions: a stranger is told the order does not exist, an admin that it is
    /// not theirs to do.
    fn check_owner(&self, actor: &Actor) -> Result<(), OrderRejection> {
        match (actor.id == self.customer_id, actor.is_admin) {
            (true, _) => Ok(()),
            (false, true) => Err(OrderRejection::NotOwner),
            (false, false) => Err(OrderRejection::NotFound),
        }
    }

    fn check_owner_or_admin(&self, actor: &Actor) -> Result<(), OrderRejection> {
        if actor.is_admin || actor.id == self.customer_id {
            Ok(())
        } else {
            Err(OrderRejection::NotFound)
        }
    }

    /// What is left to refund once every requested refund is given back: the whole total of a
    /// paid order without refunds.
    pub fn refundable(&self) -> Money {
        self.total
            .minus(self.refunds_requested)
            .unwrap_or(Money::zero(self.total.currency))
    }

    fn check_admin(actor: &Actor) -> Result<(), OrderRejection> {
        if actor.is_admin {
            Ok(())
        } else {
            Err(OrderRejection::AdminOnly)
        }
    }

    fn refund(
        &self,
        actor: Actor,
        refund_id: RefundId,
        amount: Option<Money>,
        reason: String,
    ) -> Result<Vec<OrderEvent>, OrderRejection> {
        use OrderStatus as S;
        Self::check_admin(&actor)?;
        let payment_id = match (self.status, self.payment) {
            (S::Paid | S::Shipped | S::Delivered, Some(payment_id)) => payment_id,
            _ => return Err(self.illegal("refund")),
        };
        if let Some(asked) = amount {
            if asked.amount <= 0 {
                return Err(OrderRejection::NonPositiveRefund);
            }
            if asked.currency != self.total.currency {
                return Err(OrderRejection::RefundCurrency {
                    order: self.total.currency,
                });
            }
        }
        let refundable = self.refundable();
        let amount = amount.unwrap_or(refundable);
        if refundable.amount == 0 || amount.amount > refundable.amount {
            return Err(OrderRejection::RefundExceedsPayment { refundable });
        }
        Ok(vec![OrderEvent::OrderRefundRequested {
            order_id: self.order_id,
            payment_id,
            refund_id,
            amount,
            reason,
            by: actor.id,
        }])
    }

    fn pending_payment(&self, payment_id: PaymentId) -> Result<(), OrderRejection> {
        if self.status != OrderStatus::PaymentPending {
            return Err(self.illegal("record a payment result for"));
        }
        if self.payment != Some(payment_id) {
            return Err(OrderRejection::UnknownPayment(payment_id));
        }
        Ok(())
    }

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderRejection> {
        use OrderStatus as S;
        let order_id = self.order_id;
        match command {
            OrderCommand::Place { .. } => Err(OrderRejection::AlreadyExists),
            OrderCommand::ConfirmStockReserved { pay_by } => match self.status {
                S::Placed => Ok(vec![
                    OrderEvent::OrderStockReserved { order_id },
                    OrderEvent::OrderAwaitingPayment { order_id, pay_by },
                ]),
                _ => Err(self.illegal("confirm stock for")),
            },
            OrderCommand::Reject { reason } => match self.status {
                S::Placed => Ok(vec![OrderEvent::OrderRejected { order_id, reason }]),
                _ => Err(self.illegal("reject")),
            },
            OrderCommand::RequestPayment {
                actor,
                payment_id,
                token,
            } => {
                self.check_owner(&actor)?;
                match self.status {
                    S::AwaitingPayment | S::PaymentDeclined => {
                        Ok(vec![OrderEvent::OrderPaymentRequested {
                            order_id,
                            customer_id: self.customer_id.clone(),
                            payment_id,
                            amount: self.total,
                            token,
                        }])
                    }
                    S::PaymentPending => Err(OrderRejection::PaymentInProgress),
                    _ => Err(self.illegal("pay")),
                }
            }
            OrderCommand::RecordPaymentCaptured {
                payment_id,
                provider,
                provider_reference,
            } => {
                self.pending_payment(payment_id)?;
                Ok(vec![OrderEvent::OrderPaid {
                    order_id,
                    payment_id,
                    amount: self.total,
                    provider,
                    provider_reference: Some(provider_reference),
                }])
            }
            OrderCommand::RecordPaymentActionRequired {
                payment_id,
                provider,
                provider_reference,
            } => {
                self.pending_payment(payment_id)?;
                if self.payment_action_required {
                    return Err(OrderRejection::PaymentActionRecorded);
                }
                Ok(vec![OrderEvent::OrderPaymentActionRequired {
                    order_id,
                    payment_id,
                    provider,
                    provider_reference,
                }])
            }
            OrderCommand::RecordPaymentDeclined {
                payment_id,
                provider,
                reason,
            } => {
                self.pending_payment(payment_id)?;
                Ok(vec![OrderEvent::OrderPaymentDeclined {
                    order_id,
                    payment_id,
                    provider,
                    reason,
                }])
            }
            OrderCommand::Expire { now } => match (self.status, self.pay_by) {
                (S::AwaitingPayment | S::PaymentDeclined, Some(pay_by)) if now >= pay_by => {
                    Ok(vec![OrderEvent::OrderExpired { order_id, pay_by }])
                }
                (S::AwaitingPayment | S::PaymentDeclined, Some(pay_by)) => {
                    Err(OrderRejection::DeadlineNotReached(pay_by))
                }
                _ => Err(self.illegal("expire")),
            },
            OrderCommand::Cancel { actor, reason } => {
                self.check_owner_or_admin(&actor)?;
                let refund = match self.status {
                    S::Placed | S::StockReserved | S::AwaitingPayment | S::PaymentDeclined => None,
                    S::Paid => self.payment,
                    S::PaymentPending => return Err(OrderRejection::PaymentInProgress),
                    _ => return Err(self.illegal("cancel")),
                };
                Ok(vec![OrderEvent::OrderCancelled {
                    order_id,
                    by: actor.id,
                    reason,
                    refund,
                }])
            }
            OrderCommand::Refund {
                actor,
                refund_id,
                amount,
                reason,
            } => self.refund(actor, refund_id, amount, reason),
            OrderCommand::RecordRefund {
                payment_id,
                refund_id,
                amount,
                provider,
                provider_refund_id,
            } => {
                if self.refund_ids.contains(&refund_id) {
                    return Err(OrderRejection::RefundRecorded(refund_id));
                }
                if self.payment != Some(payment_id) {
                    return Err(OrderRejection::UnknownPayment(payment_id));
                }
                match self.status {
                    S::Paid | S::Shipped | S::Delivered | S::Cancelled | S::Refunded => {
                        Ok(vec![OrderEvent::OrderRefunded {
                            order_id,
                            payment_id,
                            refund_id,
                            amount,
                            provider,
                            provider_refund_id,
                        }])
                    }
                    _ => Err(self.illegal("record a refund of")),
                }
            }
            OrderCommand::Ship {
                actor,
                carrier,
                tracking_number,
            } => {
                Self::check_admin(&actor)?;
                match self.status {
                    S::Paid => Ok(vec![OrderEvent::OrderShipped {
                        order_id,
                        carrier,
                        tracking_number,
                    }]),
                    _ => Err(self.illegal("ship")),
                }
            }
            OrderCommand::Deliver { actor } => {
                Self::check_admin(&actor)?;
                match self.status {
                    S::Shipped => Ok(vec![OrderEvent::OrderDelivered { order_id }]),
                    _ => Err(self.illegal("deliver")),
                }
            }
        }
    }
}

/// The order total of a set of lines; `None` when empty or the currencies differ.
pub fn order_total(lines: &[CartLine]) -> Option<Money> {
    let currency = lines.first()?.unit_price.currency;
    lines.iter().try_fold(Money::zero(currency), |sum, line| {
        sum.plus(line.line_total())
    })
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Rejection = OrderRejection;
    const STREAM_TYPE: &'static str = OrderId::STREAM_TYPE;

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderRejection> {
        match (&self.0, command) {
            (
                None,
                OrderCommand::Place {
                    order_id,
                    cart_id,
                    customer_id,
                    lines,
                },
            ) => {
                if lines.is_empty() {
                    return Err(OrderRejection::NoLines);
                }
                let total = order_total(&lines).ok_or(OrderRejection::MixedCurrencies)?;
                if total.amount == 0 {
                    return Err(OrderRejection::ZeroTotal);
                }
                Ok(vec![OrderEvent::OrderPlaced {
                    order_id,
                    cart_id,
                    customer_id,
                    lines,
                    total,
                }])
            }
            (None, _) => Err(OrderRejection::NotFound),
            (Some(order), command) => order.decide(command),
        }
    }

    fn evolve(self, event: &OrderEvent) -> Self {
        use OrderStatus as S;
        let Some(mut order) = self.0 else {
            return match event {
                OrderEvent::OrderPlaced {
                    order_id,
                    cart_id,
                    customer_id,
                    lines,
                    total,
                } => Order(Some(OrderDetails {
                    order_id: *order_id,
                    cart_id: *cart_id,
                    customer_id: customer_id.clone(),
                    lines: lines.clone(),
                    total: *total,
                    status: S::Placed,
                    pay_by: None,
                    payment: None,
                    payment_action_required: false,
                    refunds_requested: Money::zero(total.currency),
                    refunded: Money::zero(total.currency),
                    refund_ids: Vec::new(),
                })),
                _ => Order(None),
            };
        };
        match event {
            OrderEvent::OrderPlaced { .. } => {}
            OrderEvent::OrderStockReserved { .. } => order.status = S::StockReserved,
            OrderEvent::OrderAwaitingPayment { pay_by, .. } => {
                order.status = S::AwaitingPayment;
                order.pay_by = Some(*pay_by);
            }
            OrderEvent::OrderRejected { .. } => order.status = S::Rejected,
            OrderEvent::OrderPaymentRequested { payment_id, .. } => {
                order.status = S::PaymentPending;
                order.payment = Some(*payment_id);
                order.payment_action_required = false;
            }
            OrderEvent::OrderPaymentActionRequired { .. } => order.payment_action_required = true,
            OrderEvent::OrderPaid { .. } => {
                order.status = S::Paid;
                order.payment_action_required = false;
            }
            OrderEvent::OrderPaymentDeclined { .. } => {
                order.status = S::PaymentDeclined;
                order.payment = None;
                order.payment_action_required = false;
            }
            OrderEvent::OrderExpired { .. } => order.status = S::Expired,
            OrderEvent::OrderCancelled { .. } => order.status = S::Cancelled,
            OrderEvent::OrderRefundRequested { amount, .. } => {
                order.refunds_requested = order
                    .refunds_requested
                    .plus(*amount)
                    .unwrap_or(order.refunds_requested);
            }
            OrderEvent::OrderRefunded {
                refund_id, amount, ..
            } => {
                order.refunded = order.refunded.plus(*amount).unwrap_or(order.refunded);
                order.refund_ids.push(*refund_id);
                // Refunded once everything paid came back: a cancelled order's last refund (the
                // rest), or admin refunds that add up to the total.
                if order.refunded.amount >= order.total.amount {
                    order.status = S::Refunded;
                }
            }
            OrderEvent::OrderShipped { .. } => order.status = S::Shipped,
            OrderEvent::OrderDelivered { .. } => order.status = S::Delivered,
        }
        Order(Some(order))
    }
}
