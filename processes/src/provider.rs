//! The payment provider port and the simulated provider behind it.
//!
//! The order process charges and refunds through [`PaymentProvider`], always outside any
//! transaction and with the payment id as the provider's idempotency key, so a crash between
//! the call and recording its outcome never charges twice.

use std::time::Duration;

use domain::values::PaymentId;
use sqlx::PgPool;

/// What the payment provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured { reference: String },
    Declined { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Try again later; the charge did not happen.
    #[error("the payment provider failed: {0}")]
    Transient(String),
    #[error("the provider's ledger failed")]
    Database(#[from] sqlx::Error),
}

/// A payment provider. Calls with the same payment id are idempotent: the provider charges at
/// most once per payment id and answers a repeated call with the first outcome.
pub trait PaymentProvider: Send + Sync + 'static {
    fn charge(
        &self,
        payment_id: PaymentId,
        amount: domain::values::Money,
        token: &str,
    ) -> impl Future<Output = Result<ChargeOutcome, ProviderError>> + Send;

    fn refund(
        &self,
        payment_id: PaymentId,
    ) -> impl Future<Output = Result<(), ProviderError>> + Send;
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
    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: domain::values::Money,
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

    async fn refund(&self, payment_id: PaymentId) -> Result<(), ProviderError> {
        sqlx::query(
            "UPDATE provider_sim.charges SET outcome = 'refunded' \
             WHERE payment_id = $1 AND outcome = 'captured'",
        )
        .bind(payment_id.0)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
