//! Thin handlers: extract → build the domain command (or a [`crate::driver::Plan`]) → the driver →
//! respond.

pub mod carts;
pub mod orders;
pub mod products;
pub mod webhooks;

use platform::problem::Problem;
use uuid::Uuid;

/// A path id. Something that is not a UUID names nothing that exists: 404, like any unknown id.
pub fn path_id(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw)
        .map_err(|_| Problem::not_found(&format!("{what}-not-found"), format!("{what} not found")))
}
