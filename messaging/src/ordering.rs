//! Idempotent, in-order application of events per stream, for read models.
//!
//! The bus delivers at least once and, after a retry, out of order. A read model that stores, per
//! stream, the version it has applied up to stays exact with one rule ([`classify`]):
//!
//! - version ≤ stored: seen already (a duplicate, or filled in earlier from the store) → skip;
//! - version = stored + 1: the next one → apply;
//! - version > stored + 1: events are missing (an earlier one is waiting for a retry, or was
//!   dead-lettered) → read the missing ones from the event store and apply them first. A gap is
//!   never ignored: the store has every event the bus can carry.
//!
//! [`events_to_apply`] does the reading: it returns exactly the events the caller must apply, in
//! order, for one incoming envelope. The caller applies them and stores the last one's version in
//! the same transaction as the read-model change.

use eventstore::{EventStore, RecordedEvent, StoreError};
use tracing::instrument;

use crate::envelope::Envelope;

/// What to do with an incoming event, given the version the read model has stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Already applied: acknowledge and do nothing.
    Skip,
    /// The next event of the stream: apply it.
    Apply,
    /// Versions `stored + 1 ..= incoming - 1` are missing: read them from the store, apply them,
    /// then this one.
    FillGap { stored: u64, incoming: u64 },
}

/// The pure rule. `stored` is 0 for a stream the read model has never seen.
pub fn classify(stored: u64, incoming: u64) -> Apply {
    match incoming {
        v if v <= stored => Apply::Skip,
        v if v == stored + 1 => Apply::Apply,
        v => Apply::FillGap {
            stored,
            incoming: v,
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrderingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store does not hold the versions the envelope implies. The event store's log is the
    /// source of the bus, so this means the message and the store disagree (another database?).
    #[error(
        "stream {stream_id}: the store has no contiguous versions {from}..{to}, found {found:?}"
    )]
    MissingInStore {
        stream_id: String,
        from: u64,
        to: u64,
        found: Vec<u64>,
    },
}

/// The events to apply, in version order, for `incoming` when the read model has `stored`:
/// empty (skip), the incoming event alone, or the missing events from the store followed by it.
#[instrument(level = "debug", skip(store, incoming), fields(stream_id = %incoming.stream_id, version = incoming.version))]
pub async fn events_to_apply(
    store: &EventStore,
    stored: u64,
    incoming: &Envelope,
) -> Result<Vec<RecordedEvent>, OrderingError> {
    match classify(stored, incoming.version) {
        Apply::Skip => Ok(Vec::new()),
        Apply::Apply => Ok(vec![incoming.clone().into()]),
        Apply::FillGap {
            stored,
            incoming: version,
        } => {
            let mut events: Vec<RecordedEvent> = store
                .read_stream(&incoming.stream_id, stored)
                .await?
                .into_iter()
                .take_while(|e| e.version < version)
                .collect();
            let contiguous = events.len() as u64 == version - stored - 1
                && events
                    .iter()
                    .zip(stored + 1..)
                    .all(|(e, expected)| e.version == expected);
            if !contiguous {
                return Err(OrderingError::MissingInStore {
                    stream_id: incoming.stream_id.clone(),
                    from: stored + 1,
                    to: version - 1,
                    found: events.iter().map(|e| e.version).collect(),
                });
            }
            tracing::debug!(missing = events.len(), "filling a gap from the event store");
            events.push(incoming.clone().into());
            Ok(events)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_or_below_the_stored_version_is_skipped() {
        assert_eq!(classify(5, 5), Apply::Skip);
        assert_eq!(classify(5, 1), Apply::Skip);
        assert_eq!(classify(1, 0), Apply::Skip);
    }

    #[test]
    fn the_next_version_is_applied() {
        assert_eq!(classify(0, 1), Apply::Apply);
        assert_eq!(classify(7, 8), Apply::Apply);
    }

    #[test]
    fn a_jump_is_a_gap_never_an_apply() {
        assert_eq!(
            classify(0, 2),
            Apply::FillGap {
                stored: 0,
                incoming: 2
            }
        );
        assert_eq!(
            classify(3, 10),
            Apply::FillGap {
                stored: 3,
                incoming: 10
            }
        );
    }

    #[test]
    fn no_version_is_both_skipped_and_applied() {
        for stored in 0..20u64 {
            for incoming in 0..40u64 {
                let c = classify(stored, incoming);
                match c {
                    Apply::Skip => assert!(incoming <= stored),
                    Apply::Apply => assert_eq!(incoming, stored + 1),
                    Apply::FillGap { .. } => assert!(incoming > stored + 1),
                }
            }
        }
    }
}
