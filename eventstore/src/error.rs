//! Errors of the event store, kept in the three classes of the house style: a concurrency
//! conflict ([`AppendError::WrongExpectedVersion`]) is retried or answered 409/412; a rejection
//! never comes from here; everything else is infrastructure ([`StoreError`]).

use uuid::Uuid;

use crate::model::ExpectedVersion;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The stream was not at the expected version: someone else appended first.
    #[error("stream {stream_id} is at version {actual}; the append expected {expected}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// An event id of this append is stored already, but not as this same append.
    #[error("event id {event_id} is already stored in stream {stored_in} as a different append")]
    EventIdReused { event_id: Uuid, stored_in: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for AppendError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Database(e))
    }
}

/// Infrastructure failures: the database, or a stored shape that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event store database error")]
    Database(#[from] sqlx::Error),
    #[error("cannot encode a {event_type} event: {reason}")]
    Encode { event_type: String, reason: String },
    #[error("cannot decode stored event {event_id} ({event_type}): {reason}")]
    Decode {
        event_id: Uuid,
        event_type: String,
        reason: String,
    },
    #[error(
        "stored event {event_id} has schema version {stored}, newer than this build's {current}"
    )]
    FromTheFuture {
        event_id: Uuid,
        stored: i32,
        current: i32,
    },
}
