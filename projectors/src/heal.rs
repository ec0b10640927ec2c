//! Redis read models heal themselves after Redis loses its data (a restart without
//! persistence, a flush).
//!
//! Each version of the carts projection carries a marker, an epoch: a random id written to
//! Redis (`<prefix>:carts:v<n>:epoch`) and to Postgres (`read.redis_epochs`) when the version
//! is created ([`mark`]). Redis loses the marker with everything else, Postgres keeps it. The
//! [`Healer`] compares the two every few seconds; when the serving version's marker is gone it
//! logs, counts (`read_model_data_loss_total`) and rebuilds the projection from the event store
//! into a new version while the old one serves, with no operator. Meanwhile the live projector
//! rewrites each cart it touches from its whole stream, and the query API answers a missing
//! cart by folding its stream (read repair), so owners keep seeing their carts throughout.

use std::time::Duration;

use eventstore::EventStore;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ProjectionError;
use crate::tables::CARTS;
use platform::read_models::CartKeys;

/// Gives `version` of the carts projection a fresh marker, in Postgres and in Redis.
pub async fn mark(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    version: i32,
) -> Result<(), ProjectionError> {
    let epoch = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO read.redis_epochs (projection, version, epoch) VALUES ($1, $2, $3) \
         ON CONFLICT (projection, version) DO UPDATE SET epoch = EXCLUDED.epoch",
    )
    .bind(CARTS)
    .bind(version)
    .bind(epoch)
    .execute(pool)
    .await?;
    let _: () = redis::cmd("SET")
        .arg(keys.epoch(version))
        .arg(epoch.to_string())
        .query_async(redis)
        .await?;
    Ok(())
}

/// Forgets the marker of a dropped version.
pub async fn forget(pool: &PgPool, version: i32) -> Result<(), ProjectionError> {
    sqlx::query("DELETE FROM read.redis_epochs WHERE projection = $1 AND version = $2")
        .bind(CARTS)
        .bind(version)
        .execute(pool)
        .await?;
    Ok(())
}

/// What the markers say about a version's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Redis holds the marker Postgres expects.
    Intact,
    /// The marker is missing or another: the data is gone.
    Lost,
    /// Postgres expects no marker: the version predates markers.
    Unmarked,
}

/// Compares `version`'s marker in Redis with the one Postgres expects.
pub async fn health(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    version: i32,
) -> Result<Health, ProjectionError> {
    let expected: Option<Uuid> = sqlx::query_scalar(
        "SELECT epoch FROM read.redis_epochs WHERE projection = $1 AND version = $2",
    )
    .bind(CARTS)
    .bind(version)
    .fetch_optional(pool)
    .await?;
    let Some(expected) = expected else {
        return Ok(Health::Unmarked);
    };
    let found: Option<String> = redis::cmd("GET")
        .arg(keys.epoch(version))
        .query_async(redis)
        .await?;
    Ok(if found == Some(expected.to_string()) {
        Health::Intact
    } else {
        Health::Lost
    })
}

/// Watches the carts projection's serving version and rebuilds it when Redis lost it.
#[derive(Clone)]
pub struct Healer {
    pub store: EventStore,
    pub redis: ConnectionManager,
    pub keys: CartKeys,
    /// How often the markers are compared.
    pub interval: Duration,
}

impl std::fmt::Debug for Healer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Healer")
            .field("keys", &self.keys)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Events per batch of a healing rebuild.
const REBUILD_BATCH: i64 = 2_000;

impl Healer {
    /// Runs until `shutdown`; a failed check (Redis or Postgres away) is retried next tick.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut suspect = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.check_once(&mut suspect, &shutdown).await {
                tracing::warn!(error = %e, "could not check the carts view for data loss");
            }
        }
    }

    /// One comparison of the serving version's marker, and the repair if it is lost. A version
    /// is rebuilt only when found lost twice in a row (`suspect` remembers the first time): a
    /// replica that catches another one half-way through marking a version must not rebuild it.
    async fn check_once(
        &mut self,
        suspect: &mut Option<i32>,
        shutdown: &CancellationToken,
    ) -> Result<(), ProjectionError> {
        let pool = self.store.pool().clone();
        let serving = platform::read_models::serving_version(&pool, CARTS).await?;
        let health = health(&pool, &mut self.redis, &self.keys, serving).await?;
        let seen_lost_before = suspect.take() == Some(serving);
        match health {
            Health::Intact => Ok(()),
            Health::Unmarked => self.establish(&pool, serving).await,
            Health::Lost if !seen_lost_before => {
                *suspect = Some(serving);
                Ok(())
            }
            Health::Lost => {
                tracing::warn!(
                    projection = CARTS,
                    version = serving,
                    "Redis lost the carts view (its marker is gone): rebuilding it from the event store"
                );
                metrics::counter!("read_model_data_loss_total", "projection" => CARTS).increment(1);
                self.rebuild(shutdown).await
            }
        }
    }

    /// A version without a marker (the first version of a new installation, or one from
    /// before markers) is marked as it is. Whether Redis lost it before can no longer be told
    /// (no progress yet may only mean the projectors have not run), and read repair serves its
    /// carts either way.
    /// Every replica that finds it unmarked writes the same marker: the first one recorded.
    async fn establish(&mut self, pool: &PgPool, serving: i32) -> Result<(), ProjectionError> {
        let epoch: Uuid = sqlx::query_scalar(
            "WITH new AS (INSERT INTO read.redis_epochs (projection, version, epoch) \
                          VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING epoch) \
             SELECT epoch FROM new \
             UNION ALL SELECT epoch FROM read.redis_epochs WHERE projection = $1 AND version = $2 \
             LIMIT 1",
        )
        .bind(CARTS)
        .bind(serving)
        .bind(Uuid::new_v4())
        .fetch_one(pool)
        .await?;
        let _: () = redis::cmd("SET")
            .arg(self.keys.epoch(serving))
            .arg(epoch.to_string())
            .query_async(&mut self.redis)
            .await?;
        Ok(())
    }

    /// Rebuilds the carts projection, unless a rebuild of it already runs (another replica
    /// healing it, or an operator): that one makes it whole.
    async fn rebuild(&mut self, shutdown: &CancellationToken) -> Result<(), ProjectionError> {
        let rebuilt = crate::rebuild::rebuild(
            &self.store,
            &mut self.redis,
            &self.keys,
            CARTS,
            REBUILD_BATCH,
            |_| {},
            || shutdown.is_cancelled(),
        )
        .await;
        let rebuilt = match rebuilt {
            Err(ProjectionError::RebuildRunning(_)) => return Ok(()),
            other => other?,
        };
        if let Some(done) = rebuilt {
            metrics::counter!("read_model_heals_total", "projection" => CARTS).increment(1);
            tracing::info!(
                projection = CARTS,
                version = done.version,
                events = done.events,
                "the carts view is whole again"
            );
        }
        Ok(())
    }
}
