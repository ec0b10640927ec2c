//! One payment attempt against the provider, and its refund.
//!
//! The payment id doubles as the provider's idempotency key, so recording the outcome of a call
//! that was already made (after a crash between the call and the append) never charges twice.
//!
//! ```text
//! Requested ─▶ Captured ─▶ (partial refunds…) ─▶ Refunded (everything given back)
//!     │ ▲ ▲
//!     │ │ └── Pending (the provider decides later: processing, or the customer must act)
//!     │ └──── AttemptFailed (transient, retried)
//!     ▼
//!  Declined
//! ```
//!
//! A captured payment is refunded in one or more parts, each with its own refund id (the
//! provider's idempotency key for it), never more in total than was captured.

use serde::{Deserialize, Serialize};

use crate::order::PaymentToken;
use crate::values::{Money, OrderId, PaymentId, RefundId};
use crate::{Aggregate, event_types, rejection_codes};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Requested,
    Captured,
    Declined,
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    Request {
        payment_id: PaymentId,
        order_id: OrderId,
        amount: Money,
        token: PaymentToken,
    },
    /// The provider failed transiently; the worker will try again.
    RecordAttemptFailed {
        error: String,
    },
    /// The provider has not decided yet; a webhook or the reconciliation will tell.
    RecordPending {
        provider_reference: String,
        action_required: bool,
    },
    RecordCaptured {
        provider_reference: String,
    },
    RecordDeclined {
        reason: String,
    },
    /// The provider gave `amount` back (under its own id for it, when it has one).
    Refund {
        refund_id: RefundId,
        amount: Money,
        reason: String,
        provider_refund_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PaymentEvent {
    PaymentRequested {
        payment_id: PaymentId,
        order_id: OrderId,
        amount: Money,
        token: PaymentToken,
    },
    PaymentAttemptFailed {
        payment_id: PaymentId,
        attempt: u32,
        error: String,
    },
    /// The provider holds the payment undecided (`action_required`: the customer must act,
    /// e.g. 3-D Secure; otherwise it is processing).
    PaymentPending {
        payment_id: PaymentId,
        order_id: OrderId,
        provider_reference: String,
        action_required: bool,
    },
    PaymentCaptured {
        payment_id: PaymentId,
        order_id: OrderId,
        amount: Money,
        provider_reference: String,
    },
    PaymentDeclined {
        payment_id: PaymentId,
        order_id: OrderId,
        reason: String,
    },
    /// Schema v2 added `refund_id` (a v1 event, the one full refund of a cancelled order, is
    /// read with the payment's id as its refund id); v3 the provider's id of the refund.
    PaymentRefunded {
        payment_id: PaymentId,
        order_id: OrderId,
        refund_id: RefundId,
        amount: Money,
        reason: String,
        provider_refund_id: Option<String>,
    },
}

event_types!(PaymentEvent {
    PaymentRequested,
    PaymentAttemptFailed,
    PaymentPending,
    PaymentCaptured,
    PaymentDeclined,
    PaymentRefunded,
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentRejection {
    #[error("payment not found")]
    NotFound,
    #[error("a payment with this id already exists")]
    AlreadyExists,
    #[error("a payment amount must be positive")]
    NonPositiveAmount,
    #[error("at most {refundable} of this payment can still be refunded")]
    RefundExceedsCapture { refundable: Money },
    #[error("the refund {0} is already recorded")]
    RefundRecorded(RefundId),
    #[error("the payment is already recorded as pending so")]
    PendingRecorded,
    #[error("cannot {action} a payment that is {status:?}")]
    IllegalTransition {
        action: &'static str,
        status: PaymentStatus,
    },
}

rejection_codes!(PaymentRejection {
    NotFound => (NotFound, "payment-not-found"),
    AlreadyExists => (InvalidState, "payment-exists"),
    NonPositiveAmount => (Unprocessable, "non-positive-amount"),
    RefundExceedsCapture => (Unprocessable, "refund-exceeds-payment"),
    RefundRecorded => (InvalidState, "refund-recorded"),
    PendingRecorded => (InvalidState, "payment-pending-recorded"),
    IllegalTransition => (InvalidState, "illegal-payment-transition"),
});

/// A payment as its events describe it; `None` until requested.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payment(pub Option<PaymentDetails>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentDetails {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub amount: Money,
    pub token: PaymentToken,
    pub status: PaymentStatus,
    pub failed_attempts: u32,
    /// The provider's id of the payment (a Stripe PaymentIntent), once it answered.
    pub provider_reference: Option<String>,
    /// The provider waits for the customer (pending only).
    pub action_required: bool,
    /// Sum of the refunds given back, and their ids.
    pub refunded: Money,
    pub refund_ids: Vec<RefundId>,
}

impl PaymentDetails {
    fn requested(&self, action: &'static str) -> Result<(), PaymentRejection> {
        match self.status {
            PaymentStatus::Requested => Ok(()),
            status => Err(PaymentRejection::IllegalTransition { action, status }),
        }
    }

    fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        let (payment_id, order_id, amount) = (self.payment_id, self.order_id, self.amount);
        match command {
            PaymentCommand::Request { .. } => Err(PaymentRejection::AlreadyExists),
            PaymentCommand::RecordAttemptFailed { error } => {
                self.requested("record a failed attempt of")?;
                Ok(vec![PaymentEvent::PaymentAttemptFailed {
                    payment_id,
                    attempt: self.failed_attempts + 1,
                    error,
                }])
            }
            PaymentCommand::RecordPending {
                provider_reference,
                action_required,
            } => {
                self.requested("record a pending outcome of")?;
                if self.provider_reference.as_deref() == Some(provider_reference.as_str())
                    && self.action_required == action_required
                {
                    return Err(PaymentRejection::PendingRecorded);
                }
                Ok(vec![PaymentEvent::PaymentPending {
                    payment_id,
                    order_id,
                    provider_reference,
                    action_required,
                }])
            }
            PaymentCommand::RecordCaptured { provider_reference } => {
                self.requested("capture")?;
                Ok(vec![PaymentEvent::PaymentCaptured {
                    payment_id,
                    order_id,
                    amount,
                    provider_reference,
                }])
            }
            PaymentCommand::RecordDeclined { reason } => {
                self.requested("decline")?;
                Ok(vec![PaymentEvent::PaymentDeclined {
                    payment_id,
                    order_id,
                    reason,
                }])
            }
            PaymentCommand::Refund {
                refund_id,
                amount: refund,
                reason,
                provider_refund_id,
            } => {
                if self.refund_ids.contains(&refund_id) {
                    return Err(PaymentRejection::RefundRecorded(refund_id));
                }
                if self.status != PaymentStatus::Captured {
                    return Err(PaymentRejection::IllegalTransition {
                        action: "refund",
                        status: self.status,
                    });
                }
                if refund.amount <= 0 {
                    return Err(PaymentRejection::NonPositiveAmount);
                }
                let refundable = amount.minus(self.refunded).unwrap_or(amount);
                if refund.currency != amount.currency || refund.amount > refundable.amount {
                    return Err(PaymentRejection::RefundExceedsCapture { refundable });
                }
                Ok(vec![PaymentEvent::PaymentRefunded {
                    payment_id,
                    order_id,
                    refund_id,
                    amount: refund,
                    reason,
                    provider_refund_id,
                }])
            }
        }
    }
}

impl Aggregate for Payment {
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Rejection = PaymentRejection;
    const STREAM_TYPE: &'static str = PaymentId::STREAM_TYPE;

    fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, PaymentRejection> {
        match (&self.0, command) {
            (
                None,
                PaymentCommand::Request {
                    payment_id,
                    order_id,
                    amount,
                    token,
                },
            ) => {
                if amount.amount <= 0 {
                    return Err(PaymentRejection::NonPositiveAmount);
                }
                Ok(vec![PaymentEvent::PaymentRequested {
                    payment_id,
                    order_id,
                    amount,
                    token,
                }])
            }
            (None, _) => Err(PaymentRejection::NotFound),
            (Some(payment), command) => payment.decide(command),
        }
    }

    fn evolve(self, event: &PaymentEvent) -> Self {
        let Some(mut payment) = self.0 else {
            return match event {
                PaymentEvent::PaymentRequested {
                    payment_id,
                    order_id,
                    amount,
                    token,
                } => Payment(Some(PaymentDetails {
                    payment_id: *payment_id,
                    order_id: *order_id,
                    amount: *amount,
                    token: token.clone(),
                    status: PaymentStatus::Requested,
                    failed_attempts: 0,
                    provider_reference: None,
                    action_required: false,
                    refunded: Money::zero(amount.currency),
                    refund_ids: Vec::new(),
                })),
                _ => Payment(None),
            };
        };
        match event {
            PaymentEvent::PaymentRequested { .. } => {}
            PaymentEvent::PaymentAttemptFailed { attempt, .. } => {
                payment.failed_attempts = *attempt;
            }
            PaymentEvent::PaymentPending {
                provider_reference,
                action_required,
                ..
            } => {
                payment.provider_reference = Some(provider_reference.clone());
                payment.action_required = *action_required;
            }
            PaymentEvent::PaymentCaptured {
                provider_reference, ..
            } => {
                payment.status = PaymentStatus::Captured;
                payment.provider_reference = Some(provider_reference.clone());
                payment.action_required = false;
            }
            PaymentEvent::PaymentDeclined { .. } => payment.status = PaymentStatus::Declined,
            PaymentEvent::PaymentRefunded {
                refund_id, amount, ..
            } => {
                payment.refunded = payment.refunded.plus(*amount).unwrap_or(payment.refunded);
                payment.refund_ids.push(*refund_id);
                if payment.refunded.amount >= payment.amount.amount {
                    payment.status = PaymentStatus::Refunded;
                }
            }
        }
        Payment(Some(payment))
    }
}
