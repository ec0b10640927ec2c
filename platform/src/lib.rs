//! What every Tillstream service shares.
//!
//! - [`settings`]: connection settings from the standard environment variables, with defaults
//!   that point at the local services.
//! - [`consistency`]: the `X-Consistency-Token` a command answers with and a read waits for.
//! - [`database`]: connecting to Postgres, creating the database and migrating it, with errors
//!   that say which dependency is down and how to start it.
//! - [`identity`]: RS256 JWT verification against a JWKS, and the [`identity::Principal`],
//!   [`identity::Admin`] extractors; [`dev_issuer`]: the local issuer for development and tests.
//! - [`problem`]: RFC 9457 problem+json responses.
//! - [`read_models`]: where each read model version lives (schemas, Redis keys).
//! - [`http`]: `/livez`, `/readyz`, `/metrics`, request metrics, graceful shutdown.
//! - [`telemetry`]: tracing subscriber set-up.

pub mod consistency;
pub mod database;
pub mod dev_issuer;
pub mod http;
pub mod identity;
pub mod problem;
pub mod read_models;
pub mod settings;
pub mod telemetry;
