//! Read handlers, one module per resource.

pub mod admin;
pub mod carts;
pub mod consumers;
pub mod events;
pub mod me;
pub mod orders;
pub mod products;

use eventstore::RecordedEvent;
use platform::problem::Problem;
use serde_json::Value;
use uuid::Uuid;

/// Fields of stored events never shown to a client, not even an admin (payment tokens).
const SECRET_FIELDS: [&str; 1] = ["token"];

/// An event's data as clients see it: without [`SECRET_FIELDS`].
pub fn shown_data(event: &RecordedEvent) -> Value {
    without_secrets(event.data.to_value())
}

/// Event data without [`SECRET_FIELDS`].
pub fn without_secrets(mut data: Value) -> Value {
    if let Some(fields) = data.as_object_mut() {
        for secret in SECRET_FIELDS {
            fields.remove(secret);
        }
    }
    data
}

/// A path id; anything that is not a UUID names nothing (404).
pub fn path_id(raw: &str, what: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw)
        .map_err(|_| Problem::not_found(&format!("{what}-not-found"), format!("{what} not found")))
}
