//! The payment provider port and the simulated provider behind it.
//!
//! The order process charges and refunds through [`PaymentProvider`], always outside any
//! transaction and with the payment id as the provider's idempotency key, so a crash between
//! the call and recording its outcome never charges twice.

use std::time::Duration;

use domain::values::{Money, PaymentId, RefundId};
use sqlx::PgPool;

/// What the payment provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured {
        reference: String,
    },
    Declined {
        reason: String,
    },
    /// Not decided yet (processing, or the customer must act): a webhook or the
    /// reconciliation brings the outcome.
    Pending {
        reference: String,
        action_required: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Try again later; the charge did not happen.
    #[error("the payment provider failed: {0}")]
    Transient(String),
    /// The provider will not do it, however often it is asked (a refund above what is left).
    #[error("the payment provider refused: {0}")]
    Refused(String),
    #[error("the provider's ledger failed")]
    Database(#[from] sqlx::Error),
}

/// A payment provider. Calls with the same payment id are idempotent: the provider charges at
/// most once per payment id and answers a repeated call with the first outcome.
pub trait PaymentProvider: Send + Sync + 'static {
    /// How the order views name it (`simulated`, `stripe`).
    fn name(&self) -> &'static str;

    fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
    ) -> impl Future<Output = Result<ChargeOutcome, ProviderError>> + Send;

    /// Gives `amount` of a captured payment back (`reference`: the provider's id of it);
    /// returns the provider's id of the refund. The refund id is the idempotency key: a
    /// repeated call gives nothing back twice.
    fn refund(
        &self,
        payment_id: PaymentId,
        reference: &str,
        refund_id: RefundId,
        amount: Money,
    ) -> impl Future<Output = Result<String, ProviderError>> + Send;
}

/// The simulated provider of development and tests, with its ledger in Postgres
/// (`provider_sim.charges`) so that it, too, survives restarts. Test tokens: `tok_ok` is
/// captured; `tok_declined` is declined; `tok_slow` is captured after `slow`; `tok_error`
/// fails transiently twice, then is captured; anything else is declined.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    pub pool: PgPool,
    pub slow: Duration,
}

impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        let (outcome, reference, attempts): (String, String, i32) = sqlx::query_as(
            "INSERT INTO provider_sim.charges (payment_id, amount, currency, outcome, reference) \
             VALUES ($1, $2, $3, 'pending', '') \
             ON CONFLICT (payment_id) DO UPDATE SET attempts = provider_sim.charges.attempts + 1 \
             RETURNING outcome, reference, attempts",
        )
        .bind(payment_id.0)
        .bind(amount.amount)
        .bind(amount.currency.to_string())
        .fetch_one(&self.pool)
        .await?;
        match outcome.as_str() {
            "captured" | "refunded" => return Ok(ChargeOutcome::Captured { reference }),
            "declined" => {
                return Ok(ChargeOutcome::Declined { reason: reference });
            }
            _ => {}
        }
        let decided = match token {
            "tok_ok" => ChargeOutcome::Captured {
                reference: format!("sim_{}", payment_id.0.simple()),
            },
            "tok_slow" => {
                tokio::time::sleep(self.slow).await;
                ChargeOutcome::Captured {
                    reference: format!("sim_{}", payment_id.0.simple()),
                }
            }
            "tok_error" if attempts < 3 => {
                return Err(ProviderError::Transient(format!(
                    "simulated outage (attempt {attempts})"
                )));
            }
            "tok_error" => ChargeOutcome::Captured {
                reference: format!("sim_{}", payment_id.0.simple()),
            },
            "tok_declined" => ChargeOutcome::Declined {
                reason: "card declined".into(),
            },
            _ => ChargeOutcome::Declined {
                reason: "invalid payment token".into(),
            },
        };
        let (outcome, reference) = match &decided {
            ChargeOutcome::Captured { reference } => ("captured", reference.as_str()),
            ChargeOutcome::Declined { reason } => ("declined", reason.as_str()),
            ChargeOutcome::Pending { .. } => return Ok(decided),
        };
        sqlx::query(
            "UPDATE provider_sim.charges SET outcome = $2, reference = $3 \
             WHERE payment_id = $1 AND outcome = 'pending'",
        )
        .bind(payment_id.0)
        .bind(outcome)
        .bind(reference)
        .execute(&self.pool)
        .await?;
        Ok(decided)
    }

    /// Like a real provider, refuses to give back more than was captured in total.
    async fn refund(
        &self,
        payment_id: PaymentId,
        _reference: &str,
        refund_id: RefundId,
        amount: Money,
    ) -> Result<String, ProviderError> {
        let provider_refund_id = format!("simref_{}", refund_id.0.simple());
        let mut tx = self.pool.begin().await?;
        // The charge row is locked so that two refunds of one payment are counted one at a time.
        let charge: Option<(i64, String)> = sqlx::query_as(
            "SELECT amount, currency FROM provider_sim.charges \
             WHERE payment_id = $1 AND outcome IN ('captured', 'refunded') FOR UPDATE",
        )
        .bind(payment_id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((captured, currency)) = charge else {
            return Err(ProviderError::Refused(format!(
                "no captured charge {payment_id}"
            )));
        };
        let (known, refunded): (bool, i64) = sqlx::query_as(
            "SELECT coalesce(bool_or(refund_id = $2), false), coalesce(sum(amount), 0)::int8 \
             FROM provider_sim.refunds WHERE payment_id = $1",
        )
        .bind(payment_id.0)
        .bind(refund_id.0)
        .fetch_one(&mut *tx)
        .await?;
        if known {
            return Ok(provider_refund_id);
        }
        if currency != amount.currency.as_str() || refunded + amount.amount > captured {
            return Err(ProviderError::Refused(format!(
                "{amount} is more than the {} {currency} left of {payment_id}",
                captured - refunded
            )));
        }
        sqlx::query(
            "INSERT INTO provider_sim.refunds (refund_id, payment_id, amount) VALUES ($1, $2, $3)",
        )
        .bind(refund_id.0)
        .bind(payment_id.0)
        .bind(amount.amount)
        .execute(&mut *tx)
        .await?;
        if refunded + amount.amount == captured {
            sqlx::query(
                "UPDATE provider_sim.charges SET outcome = 'refunded' WHERE payment_id = $1",
            )
            .bind(payment_id.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(provider_refund_id)
    }
}

/// The provider the settings chose (`TILL_PAYMENT_PROVIDER`).
#[derive(Debug, Clone)]
pub enum AnyProvider {
    Simulated(SimulatedProvider),
    Stripe(crate::stripe::StripeProvider),
}

impl PaymentProvider for AnyProvider {
    fn name(&self) -> &'static str {
        match self {
            Self::Simulated(p) => p.name(),
            Self::Stripe(p) => p.name(),
        }
    }

    #[tracing::instrument(
        name = "payment.charge",
        skip(self, amount, token),
        fields(otel.kind = "client", peer.service = self.name(), %payment_id),
        err(level = "debug")
    )]
    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        match self {
            Self::Simulated(p) => p.charge(payment_id, amount, token).await,
            Self::Stripe(p) => p.charge(payment_id, amount, token).await,
        }
    }

    #[tracing::instrument(
        name = "payment.refund",
        skip(self, reference, amount),
        fields(otel.kind = "client", peer.service = self.name(), %payment_id, %refund_id),
        err(level = "debug")
    )]
    async fn refund(
        &self,
        payment_id: PaymentId,
        reference: &str,
        refund_id: RefundId,
        amount: Money,
    ) -> Result<String, ProviderError> {
        match self {
            Self::Simulated(p) => p.refund(payment_id, reference, refund_id, amount).await,
            Self::Stripe(p) => p.refund(payment_id, reference, refund_id, amount).await,
        }
    }
}
