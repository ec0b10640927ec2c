//! Projection failures. All are infrastructure failures (retried by the consumer runner) except
//! [`ProjectionError::Undecodable`], which no retry can fix (dead-lettered), and
//! [`ProjectionError::UnknownProjection`], an operator's typo.

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read-model database error")]
    Database(#[from] sqlx::Error),
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Store(#[from] eventstore::StoreError),
    #[error("event {event_id} cannot be projected: {reason}")]
    Undecodable { event_id: Uuid, reason: String },
    #[error("no projection named {0}; there are products, orders and carts")]
    UnknownProjection(String),
    #[error(
        "a rebuild of {0} is already running (by an operator, or the projectors healing it); wait for it to finish"
    )]
    RebuildRunning(String),
}

impl ProjectionError {
    /// Whether trying again can help.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            Self::Undecodable { .. } | Self::UnknownProjection(_) | Self::RebuildRunning(_)
        )
    }
}
