//! Read handlers, one module per resource.

pub mod admin;
pub mod carts;
pub mod events;
pub mod me;
pub mod orders;
pub mod products;

use platform::problem::Problem;
use uuid::Uuid;

/// A path id; anything that is not a UUID names nothing (404).
pub fn path_id(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw)
        .map_err(|_| Problem::not_found(&format!("{what}-not-found"), format!("{what} not found")))
}
