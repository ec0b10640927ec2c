//! The Postgres event store.
//!
//! - [`store`]: [`EventStore`] — append with an expected version, read a stream, read the
//!   global log without ever skipping an event that commits late.
//! - [`execute`]: load → decide → append for any [`domain::Aggregate`], with bounded retry.
//! - [`multi`]: atomic appends to several streams in one statement.
//! - [`group`]: group commit — concurrent appends to different streams share one statement and
//!   one commit.
//! - [`cache`]: in-process aggregate states, trusted only where an append proves them current.
//! - [`checkpoint`]: named positions of global-log readers.
//! - `connections`: the connections appends and stream reads run on (no round trip to hand
//!   one back).
//! - [`scan`]: a rebuild's read of one stream type in stream order, as binary `COPY`.
//! - [`upcast`]: lifting stored events of an older schema version to the current one.
//! - [`model`] and [`error`]: the types they share.
//!
//! The schema is in `eventstore-migrations/migrations/0001_event_store.sql`.

pub mod cache;
pub mod checkpoint;
mod connections;
pub mod error;
pub mod execute;
pub mod group;
pub mod model;
pub mod multi;
pub mod scan;
pub mod store;
pub mod upcast;

pub use checkpoint::{load_checkpoint, save_checkpoint};
pub use connections::DatabaseFailure;
pub use error::{AppendError, StoreError};
pub use execute::{
    CommandOptions, EventIds, ExecuteError, Executed, conflict_backoff, record_appended,
};
pub use group::{GroupCommit, GroupStats};
pub use model::{
    Appended, EventData, ExpectedVersion, LogPosition, Metadata, NewEvent, RecordedEvent,
};
pub use multi::StreamAppend;
pub use store::{APPENDED_CHANNEL, EventStore, stream_order_options, stream_type_range};
pub use upcast::Upcasters;
