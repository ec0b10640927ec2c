//! Upcasting: stored events keep the shape they were written in forever; when a type's shape
//! changes, it gets a new schema version and a function that lifts the previous shape to it.
//! Reads lift every event to its type's current version before anyone decodes it.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::error::StoreError;
use crate::model::{EventData, RecordedEvent};

type Lift = Box<dyn Fn(Value) -> Value + Send + Sync>;

/// Per event type, the chain of lifts from schema version 1 upwards.
#[derive(Default)]
pub struct Upcasters {
    chains: HashMap<String, Vec<Lift>>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: HashMap<&str, i32> = self
            .chains
            .keys()
            .map(|t| (t.as_str(), self.current_version(t)))
            .collect();
        f.debug_struct("Upcasters")
            .field("current_versions", &versions)
            .finish()
    }
}

/// `data` with each missing field set to its text default.
fn with_default(mut data: Value, fields: &[(&str, &str)]) -> Value {
    if let Value::Object(object) = &mut data {
        for (field, default) in fields {
            object
                .entry(*field)
                .or_insert_with(|| Value::String((*default).to_owned()));
        }
    }
    data
}

/// `data` with `field` set to null when missing.
fn with_null(mut data: Value, field: &str) -> Value {
    if let Value::Object(object) = &mut data {
        object.entry(field).or_insert(Value::Null);
    }
    data
}

fn refund_id_from_payment_id(mut data: Value) -> Value {
    if let Value::Object(object) = &mut data
        && let Some(payment_id) = object.get("payment_id").cloned()
    {
        object.entry("refund_id").or_insert(payment_id);
    }
    data
}

impl Upcasters {
    /// Every change of a stored event's shape Tillstream has made, oldest first per type. A
    /// store made with [`crate::EventStore::new`] reads through these and writes each type at
    /// its newest version.
    pub fn tillstream() -> Self {
        Self::default()
            // v2: products have pictures; a v1 product had none.
            .register("ProductCreated", |mut data| {
                if let Value::Object(fields) = &mut data {
                    fields
                        .entry("image_urls")
                        .or_insert_with(|| Value::Array(Vec::new()));
                }
                data
            })
            // v2: a shipment names its carrier and tracking number; v1 recorded neither.
            .register("OrderShipped", |data| {
                with_default(data, &[("carrier", ""), ("tracking_number", "")])
            })
            // v2: refunds have ids of their own, and may be partial; the one v1 refund (all of
            // a cancelled order's payment) is known by its payment's id.
            .register("OrderRefunded", refund_id_from_payment_id)
            .register("PaymentRefunded", refund_id_from_payment_id)
            // v3: refunds name the provider's id of them (before Stripe: the simulated
            // provider's, which kept none).
            .register("OrderRefunded", |data| {
                with_null(
                    with_default(data, &[("provider", "simulated")]),
                    "provider_refund_id",
                )
            })
            .register("PaymentRefunded", |data| {
                with_null(data, "provider_refund_id")
            })
            // v2: payments name their provider (and its id of the payment, once paid); before
            // Stripe every payment was the simulated provider's, its id not kept.
            .register("OrderPaid", |data| {
                with_default(data, &[("provider", "simulated")])
            })
            .register("OrderPaymentDeclined", |data| {
                with_default(data, &[("provider", "simulated")])
            })
    }

    /// Registers the lift from `event_type`'s latest version `n` to `n + 1`. Call in order.
    pub fn register(
        mut self,
        event_type: &str,
        lift: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.chains
            .entry(event_type.to_owned())
            .or_default()
            .push(Box::new(lift));
        self
    }

    /// The schema version new events of this type are written with.
    pub fn current_version(&self, event_type: &str) -> i32 {
        let lifts = self.chains.get(event_type).map_or(0, Vec::len);
        1 + i32::try_from(lifts).unwrap_or(i32::MAX - 1)
    }

    /// Lifts a stored event to its type's current schema version.
    pub fn upcast(&self, mut event: RecordedEvent) -> Result<RecordedEvent, StoreError> {
        let current = self.current_version(&event.event_type);
        if event.schema_version > current {
            return Err(StoreError::FromTheFuture {
                event_id: event.event_id,
                stored: event.schema_version,
                current,
            });
        }
        if let Some(chain) = self.chains.get(&event.event_type) {
            let from = usize::try_from(event.schema_version.max(1) - 1).unwrap_or(0);
            let lifts = &chain[from..];
            if !lifts.is_empty() {
                let data = lifts
                    .iter()
                    .fold(event.data.to_value(), |data, lift| lift(data));
                event.data = EventData::from_value(&data);
            }
        }
        event.schema_version = current;
        Ok(event)
    }
}
