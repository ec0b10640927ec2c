//! The one migrator for Tillstream's database.
//!
//! Every table lives in a migration under `eventstore-migrations/migrations/`: the event store
//! and checkpoints, idempotency keys and the read-model schemas as their issues add them. The
//! files are embedded at compile time, so every binary carries the schema it was built for, and
//! applying them is safe to repeat (sqlx records what ran in `_sqlx_migrations`).

/// All migrations, embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
