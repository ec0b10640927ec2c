//! Per-stream ordering for projections: what to apply, given the version a view has stored.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use eventstore::{EventStore, RecordedEvent, StoreError};

use crate::error::ProjectionError;

/// Groups the events of one stream type by stream, each stream's events in version order
/// without duplicates.
fn by_stream<'a>(
    events: &'a [RecordedEvent],
    stream_type: &str,
) -> BTreeMap<&'a str, BTreeMap<u64, &'a RecordedEvent>> {
    let mut streams: BTreeMap<&str, BTreeMap<u64, &RecordedEvent>> = BTreeMap::new();
    for event in events.iter().filter(|e| e.stream_type() == stream_type) {
        streams
            .entry(event.stream_id.as_str())
            .or_default()
            .entry(event.version)
            .or_insert(event);
    }
    streams
}

/// The streams of `stream_type` in a batch whose stored view the batch needs: those whose events
/// here do not start at version 1. A stream that starts in the batch is folded from nothing;
/// should a view of it be stored already (the other writer, live projector or rebuild, got there
/// first), ours is written only if it is newer, as every write checks the version. In a rebuild,
/// which reads stream by stream, that leaves only the stream at a batch's edge to load.
pub fn streams_to_load(events: &[RecordedEvent], stream_type: &str) -> Vec<uuid::Uuid> {
    let mut first_versions: BTreeMap<&str, u64> = BTreeMap::new();
    for event in events.iter().filter(|e| e.stream_type() == stream_type) {
        let first = first_versions
            .entry(event.stream_id.as_str())
            .or_insert(event.version);
        *first = (*first).min(event.version);
    }
    first_versions
        .into_iter()
        .filter(|(_, first)| *first > 1)
        .filter_map(|(stream_id, _)| stream_uuid(stream_id))
        .collect()
}

/// The views a batch folded, and which events went into each.
#[derive(Debug)]
pub struct Folded<V> {
    pub views: Vec<V>,
    /// Per stream that has a view: how many events were folded, and the last one.
    events: HashMap<uuid::Uuid, (u64, uuid::Uuid)>,
}

impl<V> Folded<V> {
    /// How many events took effect, given the streams whose views were written (a write older
    /// than the stored view is refused and counts nothing).
    pub fn applied(&self, written: impl IntoIterator<Item = uuid::Uuid>) -> u64 {
        written
            .into_iter()
            .filter_map(|id| self.events.get(&id).map(|(n, _)| n))
            .sum()
    }

    /// How many events took effect when every view was written (a COPY into new rows).
    pub fn applied_to_every_view(&self) -> u64 {
        self.events.values().map(|(n, _)| n).sum()
    }

    /// The last event folded into a stream's view (to name in an error).
    pub fn last_event(&self, stream: uuid::Uuid) -> uuid::Uuid {
        self.events
            .get(&stream)
            .map_or(uuid::Uuid::nil(), |(_, e)| *e)
    }
}

/// Folds each stream's new events (from [`new_events_by_stream`]) onto its stored view, if
/// any. A stream whose fold ends with no view (events for something never created) is left out.
pub fn fold_streams<V>(
    plan: Vec<(uuid::Uuid, Vec<Cow<'_, RecordedEvent>>)>,
    mut stored: HashMap<uuid::Uuid, V>,
    apply: impl Fn(Option<V>, &RecordedEvent) -> Result<Option<V>, ProjectionError>,
) -> Result<Folded<V>, ProjectionError> {
    let mut folded = Folded {
        views: Vec::with_capacity(plan.len()),
        events: HashMap::with_capacity(plan.len()),
    };
    for (id, new) in plan {
        let mut view = stored.remove(&id);
        for event in &new {
            view = apply(view, event)?;
        }
        if let (Some(view), Some(last)) = (view, new.last()) {
            folded.events.insert(id, (new.len() as u64, last.event_id));
            folded.views.push(view);
        }
    }
    Ok(folded)
}

/// For each stream of `stream_type` in a batch, the events to fold onto its view, given the
/// version each view has stored: those after it, contiguous. Anything at or below the stored
/// version was applied before (a redelivery) and is dropped. A batch that does not continue
/// exactly at the stored version (or has a hole) has its stream read from the event store, so a
/// gap is filled and never skipped. Streams with nothing new are left out. Events are borrowed
/// from the batch unless they had to be read.
pub async fn new_events_by_stream<'a>(
    store: &EventStore,
    events: &'a [RecordedEvent],
    stream_type: &str,
    stored: impl Fn(uuid::Uuid) -> u64,
) -> Result<Vec<(uuid::Uuid, Vec<Cow<'a, RecordedEvent>>)>, StoreError> {
    let mut plan = Vec::new();
    for (stream_id, events) in by_stream(events, stream_type) {
        let Some(id) = stream_uuid(stream_id) else {
            continue;
        };
        let stored = stored(id);
        let new: Vec<&RecordedEvent> = events
            .into_values()
            .filter(|e| e.version > stored)
            .collect();
        let contiguous = new
            .iter()
            .enumerate()
            .all(|(i, e)| e.version == stored + 1 + i as u64);
        let new: Vec<Cow<'a, RecordedEvent>> = if contiguous {
            new.into_iter().map(Cow::Borrowed).collect()
        } else {
            metrics::counter!("projection_gaps_filled_total").increment(1);
            tracing::debug!(
                stream_id,
                stored,
                "gap in delivered events, reading the stream"
            );
            store
                .read_stream(stream_id, stored)
                .await?
                .into_iter()
                .map(Cow::Owned)
                .collect()
        };
        if !new.is_empty() {
            plan.push((id, new));
        }
    }
    Ok(plan)
}

/// A rebuild's batch as whole streams, for [`fold_streams`]: each stream of `stream_type` with
/// all its events from version 1, in one linear pass (a rebuild folds millions of events, and the
/// batch is in stream order already). `None` unless the batch is exactly that — streams in
/// ascending id order, each starting at version 1 with no hole — so that a caller can take the
/// general path ([`new_events_by_stream`]) instead.
pub fn whole_streams<'a>(
    events: &'a [RecordedEvent],
    stream_type: &str,
) -> Option<Vec<(uuid::Uuid, Vec<Cow<'a, RecordedEvent>>)>> {
    let mut streams: Vec<(uuid::Uuid, Vec<Cow<'a, RecordedEvent>>)> = Vec::new();
    for event in events.iter().filter(|e| e.stream_type() == stream_type) {
        match streams.last_mut() {
            Some((_, stream)) if stream[0].stream_id == event.stream_id => {
                if event.version != stream.len() as u64 + 1 {
                    return None;
                }
                stream.push(Cow::Borrowed(event));
            }
            last => {
                let ascending =
                    last.is_none_or(|(_, stream)| stream[0].stream_id < event.stream_id);
                if !ascending || event.version != 1 {
                    return None;
                }
                streams.push((stream_uuid(&event.stream_id)?, vec![Cow::Borrowed(event)]));
            }
        }
    }
    Some(streams)
}

/// The UUID part of a stream id (`cart-<uuid>`).
pub fn stream_uuid(stream_id: &str) -> Option<uuid::Uuid> {
    stream_id
        .split_once('-')
        .and_then(|(_, id)| uuid::Uuid::parse_str(id).ok())
}
