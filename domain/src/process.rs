//! Pure rules of the processes that span aggregates (checkout → stock → payment → deadline).
//!
//! Process managers react to events that may be delivered more than once, so every id they
//! create is derived from the event that caused it: handling the same event twice produces the
//! same ids, and the event store's idempotent append turns the second attempt into a no-op.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::cart::CartLine;
use crate::values::{ProductId, Units};

/// Namespace for ids derived by Tillstream's process managers (UUID v5).
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8f1c_2b4e_7a3d_4c59_9e61_0d2f_5b7a_c3e1);

/// A stable id for the `purpose` of handling the event `cause`.
pub fn derived_id(cause: Uuid, purpose: &str) -> Uuid {
    let mut name = Vec::with_capacity(16 + purpose.len());
    name.extend_from_slice(cause.as_bytes());
    name.extend_from_slice(purpose.as_bytes());
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, &name)
}

/// When an order whose stock was reserved at `reserved_at` expires unless paid.
pub fn payment_deadline(reserved_at: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    reserved_at + window
}

/// The stock to reserve for a set of order lines, one entry per product in id order, so that
/// concurrent checkouts touch shared products in the same order.
pub fn reservations(lines: &[CartLine]) -> Vec<(ProductId, Units)> {
    let mut plan: Vec<(ProductId, Units)> = Vec::with_capacity(lines.len());
    for line in lines {
        match plan.iter_mut().find(|(id, _)| *id == line.product_id) {
            Some((_, units)) => *units += line.quantity.get(),
            None => plan.push((line.product_id, line.quantity.get())),
        }
    }
    plan.sort_by_key(|(id, _)| *id);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct_per_purpose() {
        let cause = Uuid::from_u128(42);
        assert_eq!(derived_id(cause, "reserve"), derived_id(cause, "reserve"));
        assert_ne!(derived_id(cause, "reserve"), derived_id(cause, "release"));
        assert_ne!(
            derived_id(cause, "reserve"),
            derived_id(Uuid::from_u128(43), "reserve")
        );
    }

    #[test]
    fn deadline_is_reservation_time_plus_window() {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        assert_eq!(
            payment_deadline(at, Duration::minutes(15)).timestamp(),
            1_700_000_000 + 900
        );
    }
}
