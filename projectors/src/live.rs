//! The projectors as bus consumers: each projection of the registry
//! ([`platform::read_models::PROJECTIONS`]) is a [`messaging::Handler`] on a queue of its own,
//! bound to its stream type's events; [`LiveProjector::for_projection`] makes the one it names.

use std::marker::PhantomData;

use eventstore::{EventStore, RecordedEvent};
use messaging::{Envelope, Handler, HandlerError};
use platform::read_models::{CARTS, CartKeys, ORDERS, PRODUCTS, Projection};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tracing::Instrument;

use crate::error::ProjectionError;
use crate::orders::Orders;
use crate::products::Products;
use crate::tables::{PgProjection, apply_live};

fn handler_error(error: ProjectionError) -> HandlerError {
    if error.is_transient() {
        HandlerError::transient(error)
    } else {
        HandlerError::permanent(error)
    }
}

/// Freshness: how long after its append each event became visible in the read model.
fn record_freshness(projection: &'static str, events: &[RecordedEvent]) {
    let now = chrono::Utc::now();
    let histogram = metrics::histogram!("projection_freshness_seconds", "projection" => projection);
    for event in events {
        let age = (now - event.recorded_at)
            .num_microseconds()
            .unwrap_or(i64::MAX);
        histogram.record(age.max(0) as f64 / 1e6);
    }
}

/// A Postgres projection fed from the bus, in lane `lane` (its partition; see
/// [`crate::tables::record_progress`]).
#[derive(Debug, Clone)]
pub struct PgProjector<P> {
    pool: PgPool,
    store: EventStore,
    lane: u16,
    projection: PhantomData<fn() -> P>,
}

impl<P> PgProjector<P> {
    pub fn new(pool: PgPool, store: EventStore, lane: u16) -> Self {
        Self {
            pool,
            store,
            lane,
            projection: PhantomData,
        }
    }
}

impl<P: PgProjection + 'static> Handler for PgProjector<P> {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        self.handle_batch(vec![envelope]).await
    }

    /// One transaction for the whole batch.
    async fn handle_batch(&self, envelopes: Vec<Envelope>) -> Result<(), HandlerError> {
        let events: Vec<RecordedEvent> = envelopes.into_iter().map(RecordedEvent::from).collect();
        let span = tracing::info_span!(
            "project",
            otel.name = %format_args!("{} apply", P::NAME),
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "UPSERT",
            events = events.len(),
        );
        apply_live::<P>(&self.pool, &self.store, self.lane, &events)
            .instrument(span)
            .await
            .map_err(handler_error)?;
        record_freshness(P::NAME, &events);
        Ok(())
    }
}

pub type ProductsProjector = PgProjector<Products>;
pub type OrdersProjector = PgProjector<Orders>;

/// The cart projection fed from the bus.
#[derive(Clone)]
pub struct CartsProjector {
    pool: PgPool,
    redis: ConnectionManager,
    keys: CartKeys,
    store: EventStore,
}

impl std::fmt::Debug for CartsProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CartsProjector")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl CartsProjector {
    pub fn new(pool: PgPool, redis: ConnectionManager, keys: CartKeys, store: EventStore) -> Self {
        Self {
            pool,
            redis,
            keys,
            store,
        }
    }
}

impl Handler for CartsProjector {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        self.handle_batch(vec![envelope]).await
    }

    /// Two pipelines (read, compare-and-set) for the whole batch.
    async fn handle_batch(&self, envelopes: Vec<Envelope>) -> Result<(), HandlerError> {
        let events: Vec<RecordedEvent> = envelopes.into_iter().map(RecordedEvent::from).collect();
        let mut redis = self.redis.clone();
        let span = tracing::info_span!(
            "project",
            otel.name = "carts apply",
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = "EVALSHA",
            events = events.len(),
        );
        crate::carts::apply_live(&self.pool, &mut redis, &self.keys, &self.store, &events)
            .instrument(span)
            .await
            .map_err(handler_error)?;
        record_freshness(CARTS, &events);
        Ok(())
    }
}

/// The live projector of each projection in the registry.
#[derive(Debug, Clone)]
pub enum LiveProjector {
    Products(ProductsProjector),
    Orders(OrdersProjector),
    Carts(CartsProjector),
}

impl LiveProjector {
    /// The projector of `projection` for partition `lane` (0 without partitions), writing
    /// through the given connections.
    pub fn for_projection(
        projection: &Projection,
        lane: u16,
        pool: PgPool,
        redis: ConnectionManager,
        keys: CartKeys,
        store: EventStore,
    ) -> Result<Self, ProjectionError> {
        // Each series exists from the start, at zero, so dashboards and alerts see it.
        metrics::counter!("projection_rebuild_events_total", "projection" => projection.name)
            .increment(0);
        metrics::counter!("projection_gaps_filled_total").increment(0);
        metrics::counter!("read_model_heals_total", "projection" => CARTS).increment(0);
        Ok(match projection.name {
            PRODUCTS => Self::Products(PgProjector::new(pool, store, lane)),
            ORDERS => Self::Orders(PgProjector::new(pool, store, lane)),
            CARTS => Self::Carts(CartsProjector::new(pool, redis, keys, store)),
            other => return Err(ProjectionError::UnknownProjection(other.to_owned())),
        })
    }
}

impl LiveProjector {
    /// The same projector for partition `lane` (Postgres projections record their progress
    /// per lane; see [`crate::tables::record_progress`]).
    pub fn in_lane(&self, lane: u16) -> Self {
        match self {
            Self::Products(p) => Self::Products(PgProjector { lane, ..p.clone() }),
            Self::Orders(p) => Self::Orders(PgProjector { lane, ..p.clone() }),
            Self::Carts(p) => Self::Carts(p.clone()),
        }
    }
}

impl Handler for LiveProjector {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        self.handle_batch(vec![envelope]).await
    }

    async fn handle_batch(&self, envelopes: Vec<Envelope>) -> Result<(), HandlerError> {
        match self {
            Self::Products(p) => p.handle_batch(envelopes).await,
            Self::Orders(p) => p.handle_batch(envelopes).await,
            Self::Carts(p) => p.handle_batch(envelopes).await,
        }
    }
}

/// Consumer settings for a projector: large prefetch and batches, so a busy stream is written
/// in a few transactions per second rather than one per event; a short linger keeps a quiet
/// stream's events from waiting.
pub fn consumer_settings(projection: &Projection, amqp_url: String) -> messaging::ConsumerSettings {
    let mut settings =
        messaging::ConsumerSettings::new(projection.consumer, [projection.binding()], amqp_url);
    settings.prefetch = 512;
    settings.batch_size = 256;
    settings.batch_linger = std::time::Duration::from_millis(2);
    settings
}
