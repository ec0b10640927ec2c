//! The order process: what happens after checkout, driven by events.
//!
//! ```text
//! OrderPlaced            → reserve each product's stock (optimistic, retried on conflict)
//!                          → all held: ConfirmStockReserved (pay by now + window)
//!                          → one short: release what was held, Reject the order
//! OrderAwaitingPayment   → a durable deadline (process.deadlines)
//! OrderPaymentRequested  → open the payment stream
//! PaymentRequested       → charge the provider (outside any transaction; the payment id is the
//!                          provider's idempotency key) → Captured | Declined | retry later
//! PaymentCaptured/Declined → record it on the order
//! OrderCancelled/Expired → release the stock; refund what is left of a captured payment
//! OrderRefundRequested   → the provider gives the amount back (the refund id is its idempotency
//!                          key) → PaymentRefunded
//! PaymentRefunded        → record the refund on the order
//! ```
//!
//! Every step is idempotent: events are delivered at least once, so each command the process
//! sends derives its event ids from the event that caused it, and a command the aggregate
//! refuses because it already happened (an order that already moved on) counts as done.

use domain::order::{Order, OrderCommand, OrderEvent};
use domain::payment::{Payment, PaymentCommand, PaymentEvent};
use domain::process::{payment_deadline, reservations};
use domain::product::{Product, ProductCommand, ProductRejection};
use domain::values::{Money, OrderId, PaymentId, RefundId};
use domain::{Aggregate, Rejection, RejectionKind};
use eventstore::{CommandOptions, EventIds, EventStore, ExecuteError, Metadata, RecordedEvent};
use messaging::{Envelope, Handler, HandlerError};
use sqlx::PgPool;

use crate::provider::{ChargeOutcome, PaymentProvider, ProviderError};

/// Consumer name and bindings of the order process.
pub const ORDER_PROCESS: (&str, &[&str]) = ("process.orders", &["order.*", "payment.*"]);

/// The order process, as a bus consumer.
#[derive(Debug, Clone)]
pub struct OrderProcess<P> {
    pub store: EventStore,
    pub pool: PgPool,
    pub provider: P,
    /// How long an order with stock held waits for payment before it expires.
    pub payment_window: chrono::Duration,
}

fn transient(e: impl std::error::Error + Send + Sync + 'static) -> HandlerError {
    HandlerError::transient(e)
}

/// Options for a command caused by `cause`: ids derived from it, metadata linking back.
fn caused_by(cause: &RecordedEvent) -> CommandOptions {
    CommandOptions {
        expected_version: None,
        metadata: Metadata {
            correlation_id: cause.metadata.correlation_id,
            causation_id: Some(cause.event_id),
            actor: Some("order-process".into()),
            idempotency_key: None,
            // The step's own span (a child of the event's delivery) when traced.
            traceparent: platform::telemetry::current_traceparent()
                .or_else(|| cause.metadata.traceparent.clone()),
        },
        event_ids: EventIds::DerivedFrom(cause.event_id),
        max_attempts: 16,
    }
}

/// Runs a command; a rejection that says "this already happened / no longer applies" (the
/// aggregate's state moved on) counts as done, since events arrive at least once.
async fn settle<A>(
    store: &EventStore,
    stream_id: &str,
    command: A::Command,
    options: &CommandOptions,
) -> Result<Option<A>, HandlerError>
where
    A: Aggregate,
    A::Command: Clone,
{
    match store.execute::<A>(stream_id, command, options).await {
        Ok(done) => Ok(Some(done.state)),
        Err(ExecuteError::Rejected(r)) if r.kind() == RejectionKind::InvalidState => {
            tracing::debug!(stream_id, rejection = %r, "already settled");
            Ok(None)
        }
        Err(ExecuteError::Rejected(r)) => Err(HandlerError::permanent(r)),
        Err(e) => Err(transient(e)),
    }
}

impl<P: PaymentProvider> OrderProcess<P> {
    async fn on_order_placed(
        &self,
        event: &RecordedEvent,
        order_id: OrderId,
    ) -> Result<(), HandlerError> {
        let (order, _) = self
            .store
            .load::<Order>(&order_id.stream_id())
            .await
            .map_err(transient)?;
        let Some(order) = order.0 else { return Ok(()) };
        // Only a placed order reserves. A redelivered OrderPlaced of an order that moved on (and
        // may have released its stock already) must not hold stock again.
        if order.status != domain::order::OrderStatus::Placed {
            return Ok(());
        }
        let plan = reservations(&order.lines);
        let options = caused_by(event);
        let mut shortage = None;
        for (product_id, quantity) in &plan {
            let reserve = ProductCommand::Reserve {
                order_id,
                quantity: *quantity,
            };
            match self
                .store
                .execute::<Product>(&product_id.stream_id(), reserve, &options)
                .await
            {
                Ok(_) => {}
                Err(ExecuteError::Rejected(
                    r @ (ProductRejection::InsufficientStock { .. }
                    | ProductRejection::Discontinued
                    | ProductRejection::NotFound),
                )) => {
                    shortage = Some(format!("{product_id}: {r}"));
                    break;
                }
                Err(ExecuteError::Rejected(r)) => return Err(HandlerError::permanent(r)),
                Err(e) => return Err(transient(e)),
            }
        }
        let command = match shortage {
            None => OrderCommand::ConfirmStockReserved {
                pay_by: payment_deadline(event.recorded_at, self.payment_window),
            },
            Some(reason) => {
                self.release(
                    event,
                    order_id,
                    &plan.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                )
                .await?;
                OrderCommand::Reject { reason }
            }
        };
        settle::<Order>(&self.store, &order_id.stream_id(), command, &options).await?;
        Ok(())
    }

    async fn release(
        &self,
        cause: &RecordedEvent,
        order_id: OrderId,
        products: &[domain::values::ProductId],
    ) -> Result<(), HandlerError> {
        let options = caused_by(cause);
        for product_id in products {
            settle::<Product>(
                &self.store,
                &product_id.stream_id(),
                ProductCommand::Release { order_id },
                &options,
            )
            .await?;
        }
        Ok(())
    }

    async fn on_order_closed(
        &self,
        event: &RecordedEvent,
        order_id: OrderId,
        refund: Option<PaymentId>,
    ) -> Result<(), HandlerError> {
        let (order, _) = self
            .store
            .load::<Order>(&order_id.stream_id())
            .await
            .map_err(transient)?;
        let Some(order) = order.0 else { return Ok(()) };
        let products: Vec<_> = reservations(&order.lines)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        self.release(event, order_id, &products).await?;
        self.forget_deadline(order_id).await?;
        // What admins refunded before the cancel is theirs; the cancel gives back the rest,
        // under a refund id derived from the cancel itself.
        let rest = order.refundable();
        if let Some(payment_id) = refund
            && rest.amount > 0
        {
            let refund_id = RefundId(event.event_id);
            self.give_back(event, payment_id, refund_id, rest, "order cancelled")
                .await?;
        }
        Ok(())
    }

    /// Has the provider refund `amount` of a payment, then records it on the payment. The
    /// payment is asked first (its `decide` is pure): a refund it already recorded is done, and
    /// one it would refuse (more than is left) never reaches the provider.
    async fn give_back(
        &self,
        cause: &RecordedEvent,
        payment_id: PaymentId,
        refund_id: RefundId,
        amount: Money,
        reason: &str,
    ) -> Result<(), HandlerError> {
        let (payment, _) = self
            .store
            .load::<Payment>(&payment_id.stream_id())
            .await
            .map_err(transient)?;
        let refund = |provider_refund_id| PaymentCommand::Refund {
            refund_id,
            amount,
            reason: reason.to_owned(),
            provider_refund_id,
        };
        match payment.decide(refund(None)) {
            Ok(_) => {}
            // Recorded already, or nothing left to give back: settled, as in `settle`.
            Err(r) if r.kind() == RejectionKind::InvalidState => return Ok(()),
            Err(rejection) => return Err(HandlerError::permanent(rejection)),
        }
        let reference = payment
            .0
            .as_ref()
            .and_then(|p| p.provider_reference.clone())
            .unwrap_or_default();
        let provider_refund_id = match self
            .provider
            .refund(payment_id, &reference, refund_id, amount)
            .await
        {
            Ok(id) => id,
            Err(refused @ ProviderError::Refused(_)) => {
                return Err(HandlerError::permanent(refused));
            }
            Err(e) => return Err(transient(e)),
        };
        settle::<Payment>(
            &self.store,
            &payment_id.stream_id(),
            refund(Some(provider_refund_id)),
            &caused_by(cause),
        )
        .await?;
        Ok(())
    }

    /// A decided payment needs no reconciliation.
    async fn forget_pending(&self, payment_id: PaymentId) -> Result<(), HandlerError> {
        self.forget(
            "DELETE FROM process.pending_payments WHERE payment_id = $1",
            payment_id.0,
        )
        .await
    }

    /// A paid, cancelled or expired order has no deadline left to fire.
    async fn forget_deadline(&self, order_id: OrderId) -> Result<(), HandlerError> {
        self.forget(
            "DELETE FROM process.deadlines WHERE order_id = $1",
            order_id.0,
        )
        .await
    }

    /// Deletes what the process kept about `id`.
    async fn forget(&self, statement: &'static str, id: uuid::Uuid) -> Result<(), HandlerError> {
        sqlx::query(statement)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(transient)?;
        Ok(())
    }

    async fn on_payment_requested(
        &self,
        event: &RecordedEvent,
        payment_id: PaymentId,
    ) -> Result<(), HandlerError> {
        let (payment, _) = self
            .store
            .load::<Payment>(&payment_id.stream_id())
            .await
            .map_err(transient)?;
        let Some(payment) = payment.0 else {
            return Ok(());
        };
        if payment.status != domain::payment::PaymentStatus::Requested {
            return Ok(());
        }
        // No transaction is open here: the provider may take its time.
        let outcome = match self
            .provider
            .charge(payment_id, payment.amount, payment.token.as_str())
            .await
        {
            Ok(outcome) => outcome,
            Err(ProviderError::Transient(error)) => {
                settle::<Payment>(
                    &self.store,
                    &payment_id.stream_id(),
                    PaymentCommand::RecordAttemptFailed {
                        error: error.clone(),
                    },
                    &CommandOptions {
                        event_ids: EventIds::Fresh,
                        ..caused_by(event)
                    },
                )
                .await?;
                return Err(HandlerError::transient(ProviderError::Transient(error)));
            }
            Err(e) => return Err(transient(e)),
        };
        let command = match outcome {
            ChargeOutcome::Captured { reference } => PaymentCommand::RecordCaptured {
                provider_reference: reference,
            },
            ChargeOutcome::Declined { reason } => PaymentCommand::RecordDeclined { reason },
            ChargeOutcome::Pending {
                reference,
                action_required,
            } => PaymentCommand::RecordPending {
                provider_reference: reference,
                action_required,
            },
        };
        settle::<Payment>(
            &self.store,
            &payment_id.stream_id(),
            command,
            &caused_by(event),
        )
        .await?;
        Ok(())
    }

    async fn handle_event(&self, event: RecordedEvent) -> Result<(), HandlerError> {
        let undecodable = |e: eventstore::StoreError| HandlerError::permanent(e);
        match event.stream_type() {
            OrderId::STREAM_TYPE => match event.decode::<OrderEvent>().map_err(undecodable)? {
                OrderEvent::OrderPlaced { order_id, .. } => {
                    self.on_order_placed(&event, order_id).await
                }
                OrderEvent::OrderAwaitingPayment { order_id, pay_by } => {
                    sqlx::query(
                        "INSERT INTO process.deadlines (order_id, due_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    )
                    .bind(order_id.0)
                    .bind(pay_by)
                    .execute(&self.pool)
                    .await
                    .map_err(transient)?;
                    Ok(())
                }
                OrderEvent::OrderPaymentRequested {
                    order_id,
                    payment_id,
                    amount,
                    token,
                    ..
                } => {
                    let open = PaymentCommand::Request {
                        payment_id,
                        order_id,
                        amount,
                        token,
                    };
                    match self
                        .store
                        .execute::<Payment>(&payment_id.stream_id(), open, &caused_by(&event))
                        .await
                    {
                        Ok(_)
                        | Err(ExecuteError::Rejected(
                            domain::payment::PaymentRejection::AlreadyExists,
                        )) => Ok(()),
                        Err(ExecuteError::Rejected(r)) => Err(HandlerError::permanent(r)),
                        Err(e) => Err(transient(e)),
                    }
                }
                OrderEvent::OrderCancelled {
                    order_id, refund, ..
                } => self.on_order_closed(&event, order_id, refund).await,
                OrderEvent::OrderExpired { order_id, .. } => {
                    self.on_order_closed(&event, order_id, None).await
                }
                OrderEvent::OrderPaid { order_id, .. } => self.forget_deadline(order_id).await,
                OrderEvent::OrderRefundRequested {
                    payment_id,
                    refund_id,
                    amount,
                    reason,
                    ..
                } => {
                    self.give_back(&event, payment_id, refund_id, amount, &reason)
                        .await
                }
                _ => Ok(()),
            },
            PaymentId::STREAM_TYPE => {
                let on_order = |order_id: OrderId, command: OrderCommand| {
                    let options = caused_by(&event);
                    let store = self.store.clone();
                    async move {
                        settle::<Order>(&store, &order_id.stream_id(), command, &options)
                            .await
                            .map(|_| ())
                    }
                };
                match event.decode::<PaymentEvent>().map_err(undecodable)? {
                    PaymentEvent::PaymentRequested { payment_id, .. } => {
                        self.on_payment_requested(&event, payment_id).await
                    }
                    PaymentEvent::PaymentCaptured {
                        payment_id,
                        order_id,
                        provider_reference,
                        ..
                    } => {
                        self.forget_pending(payment_id).await?;
                        let captured = OrderCommand::RecordPaymentCaptured {
                            payment_id,
                            provider: self.provider.name().to_owned(),
                            provider_reference,
                        };
                        on_order(order_id, captured).await
                    }
                    PaymentEvent::PaymentDeclined {
                        payment_id,
                        order_id,
                        reason,
                    } => {
                        self.forget_pending(payment_id).await?;
                        on_order(
                            order_id,
                            OrderCommand::RecordPaymentDeclined {
                                payment_id,
                                provider: self.provider.name().to_owned(),
                                reason,
                            },
                        )
                        .await
                    }
                    PaymentEvent::PaymentRefunded {
                        payment_id,
                        order_id,
                        refund_id,
                        amount,
                        provider_refund_id,
                        ..
                    } => {
                        let record = OrderCommand::RecordRefund {
                            payment_id,
                            refund_id,
                            amount,
                            provider: self.provider.name().to_owned(),
                            provider_refund_id,
                        };
                        on_order(order_id, record).await
                    }
                    PaymentEvent::PaymentPending {
                        payment_id,
                        order_id,
                        provider_reference,
                        action_required,
                    } => {
                        // Until a webhook (or the reconciliation) brings the outcome.
                        sqlx::query(
                            "INSERT INTO process.pending_payments (payment_id, provider_reference) \
                             VALUES ($1, $2) ON CONFLICT (payment_id) \
                             DO UPDATE SET provider_reference = EXCLUDED.provider_reference",
                        )
                        .bind(payment_id.0)
                        .bind(&provider_reference)
                        .execute(&self.pool)
                        .await
                        .map_err(transient)?;
                        if !action_required {
                            return Ok(());
                        }
                        let waiting = OrderCommand::RecordPaymentActionRequired {
                            payment_id,
                            provider: self.provider.name().to_owned(),
                            provider_reference,
                        };
                        on_order(order_id, waiting).await
                    }
                    PaymentEvent::PaymentAttemptFailed { .. } => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

impl<P: PaymentProvider> Handler for OrderProcess<P> {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        self.handle_event(RecordedEvent::from(envelope)).await
    }
}
