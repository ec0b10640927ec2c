//! The projectors as bus consumers: each projection is a [`messaging::Handler`] on a queue of
//! its own, bound to its stream type's events.

use std::marker::PhantomData;

use eventstore::{EventStore, RecordedEvent};
use messaging::{Envelope, Handler, HandlerError};
use platform::read_models::CartKeys;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::error::ProjectionError;
use crate::orders::Orders;
use crate::products::Products;
use crate::tables::{PgProjection, apply_live};

/// Consumer name and binding of each projector.
pub const PRODUCTS_CONSUMER: (&str, &str) = ("projector.products", "product.*");
pub const ORDERS_CONSUMER: (&str, &str) = ("projector.orders", "order.*");
pub const CARTS_CONSUMER: (&str, &str) = ("projector.carts", "cart.*");

fn handler_error(error: ProjectionError) -> HandlerError {
    if error.is_transient() {
        HandlerError::transient(error)
    } else {
        HandlerError::permanent(error)
    }
}

/// A Postgres projection fed from the bus.
#[derive(Debug, Clone)]
pub struct PgProjector<P> {
    pool: PgPool,
    store: EventStore,
    projection: PhantomData<fn() -> P>,
}

impl<P> PgProjector<P> {
    pub fn new(pool: PgPool, store: EventStore) -> Self {
        Self {
            pool,
            store,
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
        apply_live::<P>(&self.pool, &self.store, &events)
            .await
            .map(|_| ())
            .map_err(handler_error)
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
        crate::carts::apply_live(&self.pool, &mut redis, &self.keys, &self.store, &events)
            .await
            .map(|_| ())
            .map_err(handler_error)
    }
}

/// Consumer settings for a projector: large prefetch and batches, so a busy stream is written
/// in a few transactions per second rather than one per event; a short linger keeps a quiet
/// stream's events from waiting.
pub fn consumer_settings(
    (name, binding): (&str, &str),
    amqp_url: String,
) -> messaging::ConsumerSettings {
    let mut settings = messaging::ConsumerSettings::new(name, [binding], amqp_url);
    settings.prefetch = 512;
    settings.batch_size = 256;
    settings.batch_linger = std::time::Duration::from_millis(2);
    settings
}
