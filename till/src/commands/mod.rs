//! One module per `till` subcommand (crates.io's `admin/` is the model): each declares its own
//! arguments (clap) and a `run` that does the work through the libraries. The services
//! themselves are wired in `till::services`; the benchmarks are in `bench/`.
//!
//! - [`up`], [`serve`]: run the whole system, or one service, until Ctrl-C.
//! - [`migrate`]: create and migrate the database.
//! - [`config`]: print the effective settings; [`probe`]: the container health check.
//! - [`token`], [`demo`]: development tokens and the scripted demo through the public API.
//! - [`projections`], [`dead_letters`], [`events`]: operating a running system.

pub mod config;
pub mod dead_letters;
pub mod demo;
pub mod events;
pub mod migrate;
pub mod probe;
pub mod projections;
pub mod serve;
pub mod token;
pub mod up;

use eventstore::EventStore;
use till::settings::SystemConfig;

/// The database (created and migrated if need be) and an event store on it, for the operator's
/// commands.
async fn database(config: &SystemConfig) -> anyhow::Result<(sqlx::PgPool, EventStore)> {
    platform::database::create_and_migrate(&config.database_url).await?;
    let pool = platform::database::connect(&config.database_url, &Default::default()).await?;
    Ok((pool.clone(), EventStore::new(pool)))
}
