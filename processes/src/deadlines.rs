//! Payment deadlines: an order whose stock is held waits for payment until its deadline
//! (`process.deadlines`, written by the order process); then the deadline worker expires it,
//! and the order process releases the stock.

use std::time::Duration;

use chrono::Utc;
use domain::Rejection;
use domain::order::{Order, OrderCommand, OrderRejection};
use domain::values::OrderId;
use eventstore::{CommandOptions, EventIds, EventStore, ExecuteError, Metadata};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Deadlines fired per round at most.
const DEADLINES_PER_ROUND: i64 = 100;

/// How often the overdue gauge is refreshed.
const OVERDUE_REFRESH: Duration = Duration::from_secs(15);

/// `order_deadlines_overdue`: deadlines due for over a minute and still not fired — the
/// worker is down or failing (an alert watches it).
async fn count_overdue(store: &EventStore) {
    let overdue: Result<i64, _> = sqlx::query_scalar(
        "SELECT count(*) FROM process.deadlines WHERE due_at < now() - interval '1 minute'",
    )
    .fetch_one(store.pool())
    .await;
    match overdue {
        Ok(n) => metrics::gauge!("order_deadlines_overdue").set(n as f64),
        Err(e) => tracing::warn!(error = %e, "counting overdue deadlines failed"),
    }
}

/// Fires due deadlines every `interval` until `shutdown`.
pub async fn run(store: EventStore, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    let mut overdue_counted: Option<std::time::Instant> = None;
    // Reconciliation runs only with a real provider; its series exists anyway, at zero.
    metrics::counter!("payments_reconciled_total").increment(0);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if overdue_counted.is_none_or(|t| t.elapsed() >= OVERDUE_REFRESH) {
                    overdue_counted = Some(std::time::Instant::now());
                    count_overdue(&store).await;
                }
                match fire_due_deadlines(&store, DEADLINES_PER_ROUND).await {
                    Ok(fired) if fired > 0 => tracing::info!(fired, "orders expired"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "firing deadlines failed"),
                }
            }
        }
    }
}

/// Expires orders whose payment deadline passed. Each due deadline is taken `FOR UPDATE SKIP
/// LOCKED` (so several workers share the load), the order's `Expire` is appended and the
/// deadline deleted in one transaction: it fires exactly once, and a crash leaves it due.
pub async fn fire_due_deadlines(store: &EventStore, limit: i64) -> Result<u64, sqlx::Error> {
    let mut tx = store.pool().begin().await?;
    let due: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT order_id FROM process.deadlines WHERE due_at <= now() \
         ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut fired = 0;
    for (order_id,) in due {
        let order_id = OrderId(order_id);
        // Each expiry starts a trace of its own, which the order process continues.
        let span =
            tracing::info_span!(parent: None, "deadline", otel.name = "order expire", %order_id);
        let options = CommandOptions {
            metadata: Metadata {
                actor: Some("deadline-worker".into()),
                traceparent: platform::telemetry::traceparent_of(&span),
                ..Metadata::default()
            },
            event_ids: EventIds::DerivedFrom(order_id.0),
            ..CommandOptions::default()
        };
        let outcome = store
            .decide_and_append_in::<Order>(
                &mut tx,
                &order_id.stream_id(),
                OrderCommand::Expire { now: Utc::now() },
                &options,
            )
            .instrument(span)
            .await;
        let done = match outcome {
            Ok(_) => {
                fired += 1;
                true
            }
            // Paid, cancelled or already expired: nothing left to expire.
            Err(ExecuteError::Rejected(
                OrderRejection::IllegalTransition { .. } | OrderRejection::NotFound,
            )) => true,
            Err(ExecuteError::Rejected(r)) => {
                tracing::debug!(%order_id, rejection = %r, code = r.code(), "deadline not fired");
                false
            }
            Err(e) => {
                tracing::warn!(%order_id, error = %e, "deadline failed; it stays due");
                false
            }
        };
        if done {
            sqlx::query("DELETE FROM process.deadlines WHERE order_id = $1")
                .bind(order_id.0)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    if fired > 0 {
        eventstore::record_appended(std::iter::repeat_n("OrderExpired", fired as usize));
        store.announce_appended();
    }
    Ok(fired)
}
