//! Payment provider webhooks, once verified (the command API checks the signature), turned into
//! commands on our payment streams. Each provider event id is stored once
//! (`process.provider_events`); the commands are idempotent besides (their event ids derive
//! from the provider's event id, and "already recorded" counts as done), so a webhook and the
//! order process's own call may report the same outcome in any order, and twice: the payment
//! records it once.

use domain::payment::{Payment, PaymentCommand};
use domain::values::{Money, PaymentId};
use domain::{Rejection, RejectionKind};
use eventstore::{CommandOptions, EventIds, EventStore, ExecuteError, Metadata, StoreError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::stripe::{Event, WebhookNews, read_webhook};

/// What became of a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Its news was recorded (or had been, by the order process).
    Recorded,
    /// Seen before: nothing done.
    Duplicate,
    /// Not about one of our payments, or not an event we act on.
    Ignored,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the event store failed")]
    Store(#[from] StoreError),
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
    #[error("recording the webhook failed: {0}")]
    Execute(String),
}

/// Applies one verified Stripe event.
pub async fn apply_stripe_event(
    store: &EventStore,
    pool: &PgPool,
    event: &Event,
) -> Result<Applied, WebhookError> {
    let seen: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM process.provider_events \
         WHERE provider = 'stripe' AND event_id = $1)",
    )
    .bind(&event.id)
    .fetch_one(pool)
    .await?;
    if seen {
        return Ok(Applied::Duplicate);
    }
    let applied = match read_webhook(event) {
        WebhookNews::Ignored => Applied::Ignored,
        WebhookNews::Captured {
            payment_id,
            reference,
        } => {
            let command = PaymentCommand::RecordCaptured {
                provider_reference: reference,
            };
            record(store, payment_id, command, &event.id, 0).await?
        }
        WebhookNews::Declined { payment_id, reason } => {
            let command = PaymentCommand::RecordDeclined { reason };
            record(store, payment_id, command, &event.id, 0).await?
        }
        WebhookNews::Refunded {
            payment_id,
            refunds,
        } => {
            let (payment, _) = store.load::<Payment>(&payment_id.stream_id()).await?;
            let Some(payment) = payment.0 else {
                return Ok(Applied::Ignored);
            };
            for (n, (refund_id, amount, stripe_id)) in refunds.into_iter().enumerate() {
                let command = PaymentCommand::Refund {
                    refund_id,
                    amount: Money {
                        amount,
                        currency: payment.amount.currency,
                    },
                    reason: "refunded at the provider".to_owned(),
                    provider_refund_id: Some(stripe_id),
                };
                record(store, payment_id, command, &event.id, n + 1).await?;
            }
            Applied::Recorded
        }
    };
    // Stored after the news is recorded: a failure before here is retried by the provider,
    // and recording twice changes nothing.
    sqlx::query(
        "INSERT INTO process.provider_events (provider, event_id, event_type) \
         VALUES ('stripe', $1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .execute(pool)
    .await?;
    Ok(applied)
}

/// Runs one command on a payment; "already so" (the order process or an earlier delivery got
/// there first) counts as recorded, and a payment that is not ours as ignored.
async fn record(
    store: &EventStore,
    payment_id: PaymentId,
    command: PaymentCommand,
    provider_event: &str,
    n: usize,
) -> Result<Applied, WebhookError> {
    let cause = Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("stripe:{provider_event}:{n}").as_bytes(),
    );
    let options = CommandOptions {
        expected_version: None,
        metadata: Metadata {
            correlation_id: Some(cause),
            causation_id: None,
            actor: Some("stripe-webhook".into()),
            idempotency_key: None,
            traceparent: platform::telemetry::current_traceparent(),
        },
        event_ids: EventIds::DerivedFrom(cause),
        max_attempts: 16,
    };
    match store
        .execute::<Payment>(&payment_id.stream_id(), command, &options)
        .await
    {
        Ok(_) => Ok(Applied::Recorded),
        Err(ExecuteError::Rejected(r)) if r.kind() == RejectionKind::InvalidState => {
            tracing::debug!(%payment_id, rejection = %r, "webhook news already recorded");
            Ok(Applied::Recorded)
        }
        Err(ExecuteError::Rejected(r)) if r.kind() == RejectionKind::NotFound => {
            tracing::info!(%payment_id, "webhook about a payment that is not ours");
            Ok(Applied::Ignored)
        }
        Err(e) => Err(WebhookError::Execute(e.to_string())),
    }
}
