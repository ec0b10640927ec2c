//! How far behind each projection is, as Prometheus gauges (`projection_lag_events`,
//! `projection_lag_seconds`), refreshed by the projector service. The query API's
//! `/v1/admin/projections` reports the same figures from the same SQL function (`read.lag`).

use chrono::{DateTime, Utc};
use platform::read_models::{CartKeys, PROJECTIONS, Storage};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::error::ProjectionError;

/// Lag of one projection's serving version.
#[derive(Debug, Clone, PartialEq)]
pub struct Lag {
    pub projection: &'static str,
    pub events: i64,
    pub seconds: f64,
}

/// Measures every projection's lag and publishes it as gauges.
pub async fn measure(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    keys: &CartKeys,
) -> Result<Vec<Lag>, ProjectionError> {
    let mut lags = Vec::new();
    for p in &PROJECTIONS {
        let (projection, stream_type) = (p.name, p.stream_type);
        let serving = platform::read_models::serving_version(pool, projection).await?;
        let (transaction_id, position): (i64, i64) = if p.storage == Storage::Redis {
            let (tx, pos): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
                .arg(keys.progress(serving))
                .arg("transaction_id")
                .arg("position")
                .query_async(redis)
                .await?;
            (tx.unwrap_or(0), pos.unwrap_or(0))
        } else {
            sqlx::query_as(
                "SELECT transaction_id, position FROM read.progress WHERE projection = $1 AND version = $2 \
                 ORDER BY transaction_id DESC, position DESC LIMIT 1",
            )
            .bind(projection)
            .bind(serving)
            .fetch_optional(pool)
            .await?
            .unwrap_or((0, 0))
        };
        let (events, oldest): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT lag_events, oldest_unapplied FROM read.lag($1, $2, $3)")
                .bind(stream_type)
                .bind(transaction_id)
                .bind(position)
                .fetch_one(pool)
                .await?;
        let seconds = oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        metrics::gauge!("projection_lag_events", "projection" => projection).set(events as f64);
        metrics::gauge!("projection_lag_seconds", "projection" => projection).set(seconds);
        lags.push(Lag {
            projection,
            events,
            seconds,
        });
    }
    Ok(lags)
}
