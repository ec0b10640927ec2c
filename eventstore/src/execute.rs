//! Load → decide → append: how a command changes an aggregate.
//!
//! The stream is replayed into the aggregate's state, the pure `decide` runs, and the events are
//! appended at exactly the version that was read. If another writer got there first, the whole
//! cycle runs again on the new state, after a short random pause ([`conflict_backoff`]), a
//! bounded number of times; the rules are re-checked against what actually happened, never
//! bypassed. A client that sent its own expected version (`If-Match`) is told about the mismatch
//! instead of being retried past it.

use std::time::Duration;

use domain::Aggregate;
use rand::Rng;
use sqlx::postgres::PgConnection;
use tracing::instrument;
use uuid::Uuid;

use crate::error::{AppendError, StoreError};
use crate::group::AppendQueue;
use crate::model::{ExpectedVersion, Metadata, NewEvent, RecordedEvent};
use crate::store::{EventStore, on_live_connection};

/// How long a writer that lost a race waits before deciding again: a random time up to 1 ms,
/// doubled for every race it has lost, at most 32 ms ("full jitter"). Writers that lose together
/// would otherwise retry together, and of N of them racing on one stream the last would lose
/// N - 1 times in a row and run out of attempts; spread out, a retry mostly finds the stream
/// quiet. Every loop that decides a command again after a lost race uses it (an
/// [`ExpectedVersion::Any`] append decides nothing and retries at once).
pub fn conflict_backoff(lost: u32) -> Duration {
    let ceiling_micros = 1_000u64 << lost.saturating_sub(1).min(5);
    Duration::from_micros(rand::thread_rng().gen_range(0..=ceiling_micros))
}

/// How ids of new events are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventIds {
    /// Fresh time-ordered ids (UUID v7): commands from users.
    Fresh,
    /// Derived from the id of the causing event, so that handling one event twice can never
    /// store its effects twice: process managers.
    DerivedFrom(Uuid),
}

/// Options of one command execution.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// The version the client saw (`If-Match`); a different current version fails the command.
    pub expected_version: Option<u64>,
    pub metadata: Metadata,
    pub event_ids: EventIds,
    /// Attempts before a command that keeps losing races gives up.
    pub max_attempts: u32,
}

impl Default for CommandOptions {
    fn default() -> Self {
        Self {
            expected_version: None,
            metadata: Metadata::default(),
            event_ids: EventIds::Fresh,
            max_attempts: 8,
        }
    }
}

/// A command that went through.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    /// The state after the new events.
    pub state: A,
    /// The new events; empty when the command changed nothing.
    pub events: Vec<A::Event>,
    /// The stream's version after the command.
    pub version: u64,
    /// Global positions of the new events.
    pub positions: Vec<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<R: std::error::Error + 'static> {
    /// The business rules said no.
    #[error(transparent)]
    Rejected(R),
    /// The client's expected version (`If-Match`) is not the current one.
    #[error("the stream is at version {actual}, not the expected {expected}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// Every attempt lost a race with another writer.
    #[error("gave up after {attempts} attempts that all conflicted with other writers")]
    Contention { attempts: u32 },
    /// A single attempt ([`EventStore::decide_and_append_in`]) lost a race; decide again.
    #[error("another writer appended first; the stream is now at version {actual}")]
    Conflicted { actual: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts committed events by type (`events_appended_total`). Callers that commit their own
/// transaction call it after the commit.
pub fn record_appended<T: Into<metrics::SharedString>>(event_types: impl IntoIterator<Item = T>) {
    for event_type in event_types {
        metrics::counter!("events_appended_total", "type" => event_type).increment(1);
    }
}

impl EventStore {
    /// The aggregate's current state and version, from its stream: read whole, or, with an
    /// aggregate cache, only the events after the cached version.
    #[instrument(level = "debug", skip(self), err(level = "debug"))]
    pub async fn load<A>(&self, stream_id: &str) -> Result<(A, u64), StoreError>
    where
        A: Aggregate,
    {
        match self.grouped() {
            Some(queue) => self.load_grouped::<A>(queue, stream_id).await,
            None => on_live_connection!(self, |conn| self.load_on::<A>(conn, stream_id).await),
        }
    }

    /// [`EventStore::load`] through the group-commit store's read queue (see [`crate::group`]).
    #[instrument(
        name = "eventstore.load",
        skip(self, queue),
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT"),
        err(level = "debug")
    )]
    async fn load_grouped<A: Aggregate>(
        &self,
        queue: &AppendQueue,
        stream_id: &str,
    ) -> Result<(A, u64), StoreError> {
        let (state, version) = self.cached_or_default::<A>(stream_id);
        let newer = queue.read(stream_id, version).await?;
        self.fold_newer(stream_id, state, version, &newer)
    }

    fn cached_or_default<A: Aggregate>(&self, stream_id: &str) -> (A, u64) {
        let cached = self.cache.as_ref().and_then(|c| c.get::<A>(stream_id));
        cached.unwrap_or_default()
    }

    /// `state` at `version`, with `newer` events applied (and cached).
    fn fold_newer<A: Aggregate>(
        &self,
        stream_id: &str,
        mut state: A,
        mut version: u64,
        newer: &[RecordedEvent],
    ) -> Result<(A, u64), StoreError> {
        for event in newer {
            state = state.evolve(&event.decode::<A::Event>()?);
            version = event.version;
        }
        if let Some(cache) = &self.cache {
            cache.put(stream_id, &state, version);
        }
        Ok((state, version))
    }

    /// The cached state and version of an aggregate, if the cache holds it. Only to be trusted
    /// by a caller whose append checks that version (see [`crate::cache`]).
    pub fn cached<A: Aggregate>(&self, stream_id: &str) -> Option<(A, u64)> {
        self.cache.as_ref().and_then(|c| c.get::<A>(stream_id))
    }

    /// Whether [`EventStore::cached`] can answer at all (the store keeps an aggregate cache).
    pub fn caches_aggregates(&self) -> bool {
        self.cache.is_some()
    }

    /// Puts a state the caller has just appended (at `version`) into the cache. Only call it
    /// after the append committed.
    pub fn remember<A: Aggregate>(&self, stream_id: &str, state: &A, version: u64) {
        if let Some(cache) = &self.cache {
            cache.put(stream_id, state, version);
        }
    }

    /// Like [`EventStore::load`], on the caller's connection.
    #[instrument(
        name = "eventstore.load",
        skip(self, conn),
        fields(otel.kind = "client", db.system = "postgresql", db.operation.name = "SELECT"),
        err(level = "debug")
    )]
    pub async fn load_on<A>(
        &self,
        conn: &mut sqlx::PgConnection,
        stream_id: &str,
    ) -> Result<(A, u64), StoreError>
    where
        A: Aggregate,
    {
        let (state, version) = self.cached_or_default::<A>(stream_id);
        let newer = self.read_stream_on(conn, stream_id, version).await?;
        self.fold_newer(stream_id, state, version, &newer)
    }

    /// Runs `command` against the aggregate in `stream_id`: load, decide, append, retrying on
    /// conflicts (see the module docs). With an aggregate cache, the first try decides on the
    /// cached state and lets the append's version check prove it current.
    #[instrument(level = "debug", skip(self, command, options), err(level = "debug"))]
    pub async fn execute<A>(
        &self,
        stream_id: &str,
        command: A::Command,
        options: &CommandOptions,
    ) -> Result<Executed<A>, ExecuteError<A::Rejection>>
    where
        A: Aggregate,
        A::Command: Clone,
    {
        let mut attempt = 0;
        let mut trust_cache = true;
        loop {
            let cached = match (&self.cache, trust_cache) {
                (Some(cache), true) => cache.get::<A>(stream_id),
                _ => None,
            };
            let from_cache = cached.is_some();
            let (state, version) = match cached {
                Some(cached) => cached,
                None => self.load::<A>(stream_id).await?,
            };
            // Anything but an append is only answered from a fresh load: nothing else would
            // catch a stale cached state.
            let decided = match options.expected_version {
                Some(expected) if expected != version => Err(ExecuteError::VersionMismatch {
                    expected,
                    actual: version,
                }),
                _ => state
                    .decide(command.clone())
                    .map_err(ExecuteError::Rejected),
            };
            let events = match decided {
                Ok(events) if !events.is_empty() => events,
                _ if from_cache => {
                    trust_cache = false;
                    continue;
                }
                Ok(events) => {
                    return Ok(Executed {
                        state,
                        events,
                        version,
                        positions: vec![],
                    });
                }
                Err(e) => return Err(e),
            };
            attempt += 1;
            let new_events = to_new_events(stream_id, version, &events, options)?;
            match self
                .append(stream_id, ExpectedVersion::Exact(version), &new_events)
                .await
            {
                Ok(appended) => {
                    record_appended(new_events.iter().map(|e| e.event_type.clone()));
                    let state = events.iter().fold(state, |s, e| s.evolve(e));
                    if let Some(cache) = &self.cache {
                        cache.put(stream_id, &state, appended.version);
                    }
                    return Ok(Executed {
                        state,
                        events,
                        version: appended.version,
                        positions: appended.positions,
                    });
                }
                Err(AppendError::WrongExpectedVersion { actual, .. }) => {
                    trust_cache = false;
                    if let Some(cache) = &self.cache {
                        cache.forget(stream_id);
                    }
                    if let Some(expected) = options.expected_version {
                        return Err(ExecuteError::VersionMismatch { expected, actual });
                    }
                    if attempt >= options.max_attempts {
                        return Err(ExecuteError::Contention { attempts: attempt });
                    }
                    metrics::counter!("command_conflicts_total", "stream_type" => A::STREAM_TYPE)
                        .increment(1);
                    tracing::debug!(stream_id, attempt, "version conflict, deciding again");
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
                Err(AppendError::EventIdReused {
                    event_id,
                    stored_in,
                }) => {
                    return Err(ExecuteError::Store(StoreError::Encode {
                        event_type: "event id".into(),
                        reason: format!("{event_id} is already used in {stored_in}"),
                    }));
                }
                Err(AppendError::Store(e)) => return Err(e.into()),
            }
        }
    }
}

impl EventStore {
    /// One load → decide → append attempt inside the caller's transaction, so the caller can
    /// commit other rows with the events (an idempotency record). A lost race is returned as
    /// [`ExecuteError::Conflicted`] (or `VersionMismatch` under `If-Match`): roll back and retry.
    #[instrument(
        level = "debug",
        skip(self, tx, command, options),
        err(level = "debug")
    )]
    pub async fn decide_and_append_in<A>(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        stream_id: &str,
        command: A::Command,
        options: &CommandOptions,
    ) -> Result<Executed<A>, ExecuteError<A::Rejection>>
    where
        A: Aggregate,
    {
        let (state, version) = self.load_on::<A>(tx, stream_id).await?;
        if let Some(expected) = options.expected_version
            && expected != version
        {
            return Err(ExecuteError::VersionMismatch {
                expected,
                actual: version,
            });
        }
        let events = state.decide(command).map_err(ExecuteError::Rejected)?;
        if events.is_empty() {
            return Ok(Executed {
                state,
                events,
                version,
                positions: vec![],
            });
        }
        let new_events = to_new_events(stream_id, version, &events, options)?;
        match self
            .append_in(tx, stream_id, ExpectedVersion::Exact(version), &new_events)
            .await
        {
            Ok(appended) => Ok(Executed {
                state: events.iter().fold(state, |s, e| s.evolve(e)),
                events,
                version: appended.version,
                positions: appended.positions,
            }),
            Err(AppendError::WrongExpectedVersion { actual, .. }) => {
                Err(match options.expected_version {
                    Some(expected) => ExecuteError::VersionMismatch { expected, actual },
                    None => ExecuteError::Conflicted { actual },
                })
            }
            Err(AppendError::EventIdReused {
                event_id,
                stored_in,
            }) => Err(ExecuteError::Store(StoreError::Encode {
                event_type: "event id".into(),
                reason: format!("{event_id} is already used in {stored_in}"),
            })),
            Err(AppendError::Store(e)) => Err(e.into()),
        }
    }
}

/// Serialises decided events with ids chosen as the options say. Derived ids depend on the
/// stream and the version each event will take, so a replayed decision yields the same ids.
pub fn to_new_events<E: domain::DomainEvent>(
    stream_id: &str,
    version: u64,
    events: &[E],
    options: &CommandOptions,
) -> Result<Vec<NewEvent>, StoreError> {
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let event_id = match options.event_ids {
                EventIds::Fresh => Uuid::now_v7(),
                EventIds::DerivedFrom(cause) => domain::process::derived_id(
                    cause,
                    &format!("{stream_id}@{}", version + 1 + i as u64),
                ),
            };
            NewEvent::from_domain(event_id, event, options.metadata.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_backoff_is_random_below_a_ceiling_that_doubles_up_to_32_ms() {
        for (lost, ceiling_ms) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 32), (1000, 32)] {
            let ceiling = Duration::from_millis(ceiling_ms);
            let waits: Vec<Duration> = (0..500).map(|_| conflict_backoff(lost)).collect();
            assert!(
                waits.iter().all(|w| *w <= ceiling),
                "lost {lost}: {waits:?}"
            );
            // Spread over the whole range, not one fixed pause: writers that lost together
            // must not all retry together.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "lost {lost}");
            assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "lost {lost}");
        }
    }
}
