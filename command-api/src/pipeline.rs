//! The one way a command is executed: load → decide → append (through the event store), with
//! `If-Match`, `Idempotency-Key`, metrics, and a response that carries the new version (`ETag`)
//! and a consistency token (`X-Consistency-Token`) the query side can wait for.
//!
//! Without an idempotency key the event store's own retrying `execute` runs (one statement per
//! append). With a key, each attempt runs in a transaction that also records the response.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{Aggregate, DomainEvent};
use eventstore::{CommandOptions, EventIds, ExecuteError, Executed, conflict_backoff};
use platform::problem::Problem;
use serde_json::{Value, json};

use crate::AppState;
use crate::context::CommandContext;
use crate::error::{contention_problem, execute_problem, store_problem};
use crate::idempotency::{self, Claim, StoredResponse};

/// Header with the token a client sends back to read its own write.
pub const CONSISTENCY_TOKEN: &str = "x-consistency-token";
/// Set on a response replayed for a repeated `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Attempts before a command that keeps losing races answers 409.
const MAX_ATTEMPTS: u32 = 8;

/// Waits before deciding again after the `attempt`-th lost race (see
/// [`eventstore::conflict_backoff`]); not after the last one, which answers 409 at once.
async fn pause_after_conflict(attempt: u32) {
    if attempt < MAX_ATTEMPTS {
        tokio::time::sleep(conflict_backoff(attempt)).await;
    }
}

/// What a handler answers when its command went through.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub location: Option<String>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            location: None,
        }
    }

    pub fn created(body: Value, location: String) -> Self {
        Self {
            status: StatusCode::CREATED,
            body,
            location: Some(location),
        }
    }

    pub fn accepted(body: Value, location: Option<String>) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            body,
            location,
        }
    }
}

/// The consistency token for a stream at a version: `<stream id>@<version>`. Several tokens
/// may be joined with `;`.
pub fn consistency_token(stream_id: &str, version: u64) -> String {
    format!("{stream_id}@{version}")
}

/// Runs `command` against the aggregate in `stream_id` and answers with `reply` on success.
pub async fn run<A>(
    state: &AppState,
    ctx: &CommandContext,
    request_hash: &[u8],
    stream_id: String,
    command: A::Command,
    reply: impl Fn(&Executed<A>) -> Reply,
) -> Response
where
    A: Aggregate,
    A::Command: Clone,
{
    let options = CommandOptions {
        expected_version: ctx.expected_version,
        metadata: ctx.metadata.clone(),
        event_ids: EventIds::Fresh,
        max_attempts: MAX_ATTEMPTS,
    };
    let Some(key) = &ctx.idempotency_key else {
        return match state
            .store
            .execute::<A>(&stream_id, command, &options)
            .await
        {
            Ok(executed) => {
                record(&executed);
                success(&stream_id, &executed, reply(&executed)).into_response()
            }
            Err(e) => execute_problem(&e).into_response(),
        };
    };
    match run_idempotent::<A>(
        state,
        ctx,
        key,
        request_hash,
        &stream_id,
        command,
        &options,
        &reply,
    )
    .await
    {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_idempotent<A>(
    state: &AppState,
    ctx: &CommandContext,
    key: &str,
    request_hash: &[u8],
    stream_id: &str,
    command: A::Command,
    options: &CommandOptions,
    reply: &impl Fn(&Executed<A>) -> Reply,
) -> Result<Response, Problem>
where
    A: Aggregate,
    A::Command: Clone,
{
    let principal = ctx.principal.user_id.as_str();
    let db = |e: sqlx::Error| store_problem(&eventstore::StoreError::Database(e));
    for attempt in 1..=MAX_ATTEMPTS {
        let mut tx = state.store.pool().begin().await.map_err(db)?;
        if let Some(answer) = answer_from_key(&mut tx, principal, key, request_hash).await? {
            return Ok(answer);
        }
        let outcome = state
            .store
            .decide_and_append_in::<A>(&mut tx, stream_id, command.clone(), options)
            .await;
        let (stored, appended) = match outcome {
            Ok(executed) => {
                let response = success(stream_id, &executed, reply(&executed));
                (response, Some(executed))
            }
            Err(ExecuteError::Conflicted { .. }) if attempt < MAX_ATTEMPTS => {
                tx.rollback().await.map_err(db)?;
                pause_after_conflict(attempt).await;
                continue;
            }
            // Deterministic answers to this request are kept, so a retry gets the same one.
            Err(e @ (ExecuteError::Rejected(_) | ExecuteError::VersionMismatch { .. })) => {
                (stored_problem(&execute_problem(&e)), None)
            }
            // Transient or infrastructure failures are not: the client may retry the key.
            Err(e) => return Err(execute_problem(&e)),
        };
        idempotency::save(&mut tx, principal, key, request_hash, &stored)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if let Some(executed) = appended {
            if !executed.positions.is_empty() {
                state.store.announce_appended();
            }
            record(&executed);
        }
        return Ok(stored.into_response());
    }
    Err(contention_problem())
}

/// Claims an `Idempotency-Key` in the command's transaction. `Some` is the answer to give
/// instead of running the command: the stored response of the same request, or why the key
/// cannot be used now.
async fn answer_from_key(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    principal: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<Option<Response>, Problem> {
    let claim = idempotency::claim(tx, principal, key, request_hash)
        .await
        .map_err(|e| store_problem(&eventstore::StoreError::Database(e)))?;
    match claim {
        Claim::Acquired => Ok(None),
        Claim::Replay(stored) => {
            metrics::counter!("idempotent_replays_total").increment(1);
            Ok(Some(replayed(stored)))
        }
        Claim::Mismatch => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
        )
        .with_detail("this Idempotency-Key was used for a different request")),
        Claim::InProgress => Err(Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-progress",
            "Request in progress",
        )
        .with_detail("a request with this Idempotency-Key is still being processed")),
    }
}

fn record<A: Aggregate>(executed: &Executed<A>) {
    for event in &executed.events {
        metrics::counter!("events_appended_total", "type" => event.event_type()).increment(1);
    }
}

/// The response to a command that went through.
fn success<A: Aggregate>(stream_id: &str, executed: &Executed<A>, reply: Reply) -> StoredResponse {
    let mut headers = vec![
        (
            header::ETAG.to_string(),
            format!("\"{}\"", executed.version),
        ),
        (
            CONSISTENCY_TOKEN.to_owned(),
            consistency_token(stream_id, executed.version),
        ),
    ];
    if let Some(location) = reply.location {
        headers.push((header::LOCATION.to_string(), location));
    }
    let mut body = reply.body;
    if let Value::Object(fields) = &mut body {
        fields.insert("version".into(), json!(executed.version));
    }
    StoredResponse {
        status: reply.status.as_u16(),
        headers,
        body: Some(body),
    }
}

fn stored_problem(problem: &Problem) -> StoredResponse {
    let mut headers: Vec<(String, String)> = problem
        .headers
        .iter()
        .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_owned())))
        .collect();
    headers.push((
        header::CONTENT_TYPE.to_string(),
        "application/problem+json".into(),
    ));
    StoredResponse {
        status: problem.status,
        headers,
        body: serde_json::to_value(problem).ok(),
    }
}

fn replayed(mut stored: StoredResponse) -> Response {
    stored
        .headers
        .push((IDEMPOTENT_REPLAYED.to_owned(), "true".into()));
    stored.into_response()
}

impl IntoResponse for StoredResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        match self.body {
            Some(body) if headers.contains_key(header::CONTENT_TYPE) => {
                (status, headers, body.to_string()).into_response()
            }
            Some(body) => (status, headers, axum::Json(body)).into_response(),
            None => (status, headers).into_response(),
        }
    }
}

/// Appends to several streams that must change together (a checkout closes the cart and
/// places the order), decided by [`multi::Plan`]s.
pub mod multi {
    use super::*;
    use eventstore::{AppendError, ExpectedVersion, NewEvent};

    /// One stream's share of a command.
    #[derive(Debug, Clone)]
    pub struct Write {
        pub stream_id: String,
        pub expected: ExpectedVersion,
        pub events: Vec<NewEvent>,
        /// Event types, for metrics.
        pub event_types: Vec<&'static str>,
    }

    /// Run once a plan's writes committed.
    pub type AfterCommit = Box<dyn FnOnce(&eventstore::EventStore) + Send>;

    /// What a multi-stream command decided: the writes, the reply if they commit, and what
    /// to remember once they did (the new states, for the aggregate cache).
    pub struct Plan {
        pub writes: Vec<Write>,
        pub reply: Reply,
        pub after_commit: Option<AfterCommit>,
    }

    impl std::fmt::Debug for Plan {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Plan")
                .field("writes", &self.writes)
                .field("reply", &self.reply)
                .finish_non_exhaustive()
        }
    }

    /// Decides with `decide` (which loads what it needs), appends every write in one
    /// transaction (with the idempotency record, if there is a key), and decides again if any
    /// stream moved meanwhile. The answer's `ETag` is the first stream's new version; the
    /// consistency token names every stream written.
    pub async fn run<F, Fut>(
        state: &AppState,
        ctx: &CommandContext,
        request_hash: &[u8],
        decide: F,
    ) -> Response
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Plan, Problem>>,
    {
        match attempt_all(state, ctx, request_hash, decide).await {
            Ok(response) => response,
            Err(problem) => problem.into_response(),
        }
    }

    async fn attempt_all<F, Fut>(
        state: &AppState,
        ctx: &CommandContext,
        request_hash: &[u8],
        decide: F,
    ) -> Result<Response, Problem>
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Plan, Problem>>,
    {
        if ctx.idempotency_key.is_none() {
            return append_in_one_statement(state, decide).await;
        }
        let principal = ctx.principal.user_id.as_str();
        let db = |e: sqlx::Error| store_problem(&eventstore::StoreError::Database(e));
        for attempt in 1..=MAX_ATTEMPTS {
            // Decided before the transaction opens: deciding loads streams through the pool,
            // and a command that held a connection while waiting for another could starve
            // the pool under load.
            let decided = decide(true).await;
            let mut tx = state.store.pool().begin().await.map_err(db)?;
            if let Some(key) = &ctx.idempotency_key
                && let Some(answer) = answer_from_key(&mut tx, principal, key, request_hash).await?
            {
                return Ok(answer);
            }
            let plan = match decided {
                Ok(plan) => plan,
                Err(problem) => {
                    // A refusal is a deterministic answer: keep it for the key, like a rejection.
                    if let Some(key) = &ctx.idempotency_key
                        && problem.status < 500
                    {
                        idempotency::save(
                            &mut tx,
                            principal,
                            key,
                            request_hash,
                            &stored_problem(&problem),
                        )
                        .await
                        .map_err(db)?;
                        tx.commit().await.map_err(db)?;
                    }
                    return Err(problem);
                }
            };
            let mut versions = Vec::with_capacity(plan.writes.len());
            let mut conflicted = false;
            for write in &plan.writes {
                match state
                    .store
                    .append_in(&mut tx, &write.stream_id, write.expected, &write.events)
                    .await
                {
                    Ok(_) if write.events.is_empty() => {}
                    Ok(appended) => versions.push((write.stream_id.clone(), appended.version)),
                    Err(AppendError::WrongExpectedVersion { .. }) => {
                        conflicted = true;
                        break;
                    }
                    Err(AppendError::Store(e)) => return Err(store_problem(&e)),
                    Err(e @ AppendError::EventIdReused { .. }) => {
                        return Err(Problem::internal(&e));
                    }
                }
            }
            if conflicted {
                tx.rollback().await.map_err(db)?;
                pause_after_conflict(attempt).await;
                continue;
            }
            let stored = plan_success(&versions, plan.reply);
            if let Some(key) = &ctx.idempotency_key {
                idempotency::save(&mut tx, principal, key, request_hash, &stored)
                    .await
                    .map_err(db)?;
            }
            tx.commit().await.map_err(db)?;
            state.store.announce_appended();
            if let Some(remember) = plan.after_commit {
                remember(&state.store);
            }
            for write in &plan.writes {
                for event_type in &write.event_types {
                    metrics::counter!("events_appended_total", "type" => *event_type).increment(1);
                }
            }
            return Ok(stored.into_response());
        }
        Err(contention_problem())
    }

    /// Without an idempotency record to keep, the writes need no transaction of their own:
    /// one multi-stream append statement is atomic, and a single round trip.
    async fn append_in_one_statement<F, Fut>(
        state: &AppState,
        decide: F,
    ) -> Result<Response, Problem>
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Plan, Problem>>,
    {
        // The first try may decide on cached states (the statement checks their versions);
        // a refusal or a conflict is decided again on fresh ones.
        let mut fresh = false;
        for attempt in 1..=MAX_ATTEMPTS {
            let plan = match decide(fresh).await {
                Ok(plan) => plan,
                Err(_) if !fresh => {
                    fresh = true;
                    continue;
                }
                Err(problem) => return Err(problem),
            };
            let appends: Vec<eventstore::StreamAppend> = plan
                .writes
                .iter()
                .map(|w| eventstore::StreamAppend {
                    stream_id: w.stream_id.clone(),
                    expected: w.expected,
                    events: w.events.clone(),
                })
                .collect();
            match state.store.append_streams(&appends).await {
                Ok(versions) => {
                    if let Some(remember) = plan.after_commit {
                        remember(&state.store);
                    }
                    for write in &plan.writes {
                        for event_type in &write.event_types {
                            metrics::counter!("events_appended_total", "type" => *event_type)
                                .increment(1);
                        }
                    }
                    // Streams that were only checked (no events) are not part of the answer.
                    let versions: Vec<(String, u64)> = plan
                        .writes
                        .iter()
                        .zip(versions)
                        .filter(|(w, _)| !w.events.is_empty())
                        .map(|(w, v)| (w.stream_id.clone(), v))
                        .collect();
                    return Ok(plan_success(&versions, plan.reply).into_response());
                }
                Err(AppendError::WrongExpectedVersion { .. }) => {
                    fresh = true;
                    pause_after_conflict(attempt).await;
                    continue;
                }
                Err(AppendError::Store(e)) => return Err(store_problem(&e)),
                Err(e) => return Err(Problem::internal(&e)),
            }
        }
        Err(contention_problem())
    }

    fn plan_success(versions: &[(String, u64)], reply: Reply) -> StoredResponse {
        let first = versions.first().map_or(0, |(_, v)| *v);
        let token = versions
            .iter()
            .map(|(stream, version)| consistency_token(stream, *version))
            .collect::<Vec<_>>()
            .join(";");
        let mut headers = vec![
            (header::ETAG.to_string(), format!("\"{first}\"")),
            (CONSISTENCY_TOKEN.to_owned(), token),
        ];
        if let Some(location) = reply.location {
            headers.push((header::LOCATION.to_string(), location));
        }
        let mut body = reply.body;
        if let Value::Object(fields) = &mut body {
            fields.insert("version".into(), json!(first));
        }
        StoredResponse {
            status: reply.status.as_u16(),
            headers,
            body: Some(body),
        }
    }
}
