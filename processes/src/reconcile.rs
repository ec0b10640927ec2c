//! The reconciliation of payments the provider has not decided yet: a webhook may be lost, so
//! every pending payment older than a setting is looked up at the provider and its outcome
//! recorded, as the webhook would have. The order process keeps the list
//! (`process.pending_payments`); recording is idempotent, so a webhook arriving meanwhile, or a
//! second replica doing the same, changes nothing.

use std::time::Duration;

use domain::payment::{Payment, PaymentCommand};
use domain::values::PaymentId;
use domain::{Rejection, RejectionKind};
use eventstore::{CommandOptions, EventStore, ExecuteError};
use tokio_util::sync::CancellationToken;

use crate::provider::ChargeOutcome;
use crate::stripe::StripeProvider;

/// Asks about pending payments older than `after`, every `interval`, until `shutdown`.
pub async fn run(
    store: EventStore,
    provider: StripeProvider,
    after: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = reconcile_once(&store, &provider, after).await {
            tracing::warn!(error = %e, "payment reconciliation failed; trying again later");
        }
    }
}

/// One pass; returns how many payments got their outcome.
pub async fn reconcile_once(
    store: &EventStore,
    provider: &StripeProvider,
    after: Duration,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let stale: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT payment_id, provider_reference FROM process.pending_payments \
         WHERE since < now() - make_interval(secs => $1) ORDER BY since LIMIT 100",
    )
    .bind(after.as_secs_f64())
    .fetch_all(store.pool())
    .await?;
    let mut settled = 0;
    for (payment_id, reference) in stale {
        let payment_id = PaymentId(payment_id);
        let command = match provider.payment_status(&reference).await {
            Ok(ChargeOutcome::Captured { reference }) => PaymentCommand::RecordCaptured {
                provider_reference: reference,
            },
            Ok(ChargeOutcome::Declined { reason }) => PaymentCommand::RecordDeclined { reason },
            Ok(ChargeOutcome::Pending { .. }) | Err(_) => {
                // Still undecided (or Stripe unreachable): ask again after another while.
                sqlx::query(
                    "UPDATE process.pending_payments SET since = now() WHERE payment_id = $1",
                )
                .bind(payment_id.0)
                .execute(store.pool())
                .await?;
                continue;
            }
        };
        let options = CommandOptions {
            max_attempts: 16,
            ..CommandOptions::default()
        };
        match store
            .execute::<Payment>(&payment_id.stream_id(), command, &options)
            .await
        {
            Ok(_) => {
                settled += 1;
                metrics::counter!("payments_reconciled_total").increment(1);
                tracing::info!(%payment_id, reference, "payment outcome recovered by reconciliation");
            }
            Err(ExecuteError::Rejected(r)) if r.kind() == RejectionKind::InvalidState => {}
            Err(e) => return Err(Box::new(e)),
        }
        sqlx::query("DELETE FROM process.pending_payments WHERE payment_id = $1")
            .bind(payment_id.0)
            .execute(store.pool())
            .await?;
    }
    Ok(settled)
}
