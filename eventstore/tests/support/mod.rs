//! Shared by the event store's integration tests.

use eventstore::{Metadata, NewEvent};
use serde_json::json;
use uuid::Uuid;

/// A new event of type `Noted` carrying `n`.
#[allow(dead_code)] // not every test crate that includes this module uses it
pub fn noted(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Noted".into(),
        data: json!({ "n": n }),
        metadata: Metadata::default(),
    }
}
