//! The one way a command is executed: plan → decide → append, for commands on one stream and
//! on several alike.
//!
//! A handler says how to decide its command as a [`Plan`]: it loads what it needs through
//! [`Reads`], calls the domain, and names each stream's share ([`Write`]); the first write is
//! the stream the command is about (its `If-Match`, its `ETag`). [`execute`] does the rest, in
//! one loop:
//!
//! - Commands on one stream take turns in this process ([`crate::turns`]), so they queue
//!   rather than race one another.
//! - `If-Match` is checked against the command's own stream before anything is decided, for
//!   every command (412 on a mismatch).
//! - The first attempt may decide on cached aggregate states: the append's version checks prove
//!   them current. A refusal, a mismatch or a command that changes nothing is only answered
//!   from fresh reads.
//! - Every stream of a plan is appended (or, without events, checked) atomically at the version
//!   it was decided on; if any moved meanwhile (another replica, a process manager, another
//!   stream of a multi-stream plan) the command is decided again on the new states,
//!   after a short random pause, up to [`MAX_ATTEMPTS`] times, then answers 409.
//! - With an `Idempotency-Key`, the append runs in a transaction that also records the answer;
//!   a deterministic refusal is recorded too, so a retry gets the same answer.
//! - The answer carries `ETag` (the command's stream's new version) and `X-Consistency-Token`
//!   (every stream written), and appended events are counted by type.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::{Aggregate, DomainEvent};
use eventstore::{
    AppendError, EventStore, ExpectedVersion, Metadata, NewEvent, StoreError, StreamAppend,
    conflict_backoff,
};
use platform::consistency::{self, ConsistencyToken};
use platform::problem::Problem;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::context::CommandContext;
use crate::error::{contention_problem, rejection_problem, store_problem, version_mismatch};
use crate::idempotency::{self, Claim, StoredResponse};

/// Set on a response replayed for a repeated `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// Attempts before a command that keeps losing races answers 409.
pub const MAX_ATTEMPTS: u32 = 8;

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

/// One stream's share of a command: the version it was decided on and the events to append
/// there. A write without events only checks the version (a product whose price was used).
#[derive(Debug, Clone)]
pub struct Write {
    pub stream_id: String,
    /// The stream's version when the command was decided (0: it does not exist yet).
    pub version: u64,
    pub events: Vec<NewEvent>,
    /// Event types, for metrics.
    pub event_types: Vec<&'static str>,
}

impl Write {
    /// Appends `events` (fresh ids, the command's metadata) to a stream read at `version`.
    pub fn new<E: DomainEvent>(
        stream_id: String,
        version: u64,
        events: &[E],
        metadata: &Metadata,
    ) -> Result<Self, Problem> {
        let new = events
            .iter()
            .map(|e| NewEvent::from_domain(Uuid::now_v7(), e, metadata.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| store_problem(&e))?;
        Ok(Self {
            stream_id,
            version,
            events: new,
            event_types: events.iter().map(DomainEvent::event_type).collect(),
        })
    }

    /// Appends nothing, but the command only holds if the stream is still at `version`.
    pub fn check(stream_id: String, version: u64) -> Self {
        Self {
            stream_id,
            version,
            events: Vec::new(),
            event_types: Vec::new(),
        }
    }

    /// The stream's version once the events are appended.
    pub fn version_after(&self) -> u64 {
        self.version + self.events.len() as u64
    }

    fn to_append(&self) -> StreamAppend {
        StreamAppend {
            stream_id: self.stream_id.clone(),
            expected: ExpectedVersion::Exact(self.version),
            events: self.events.clone(),
        }
    }
}

/// Run once a plan's writes committed.
type AfterCommit = Box<dyn FnOnce(&EventStore) + Send + Sync>;

/// What a command decided: the command's own stream's write first, the other streams' after
/// it, the answer if they commit, and what to remember once they did.
pub struct Plan {
    writes: Vec<Write>,
    reply: Reply,
    after_commit: Vec<AfterCommit>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("writes", &self.writes)
            .field("reply", &self.reply)
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// A plan whose command is about `target`'s stream.
    pub fn new(target: Write, reply: Reply) -> Self {
        Self {
            writes: vec![target],
            reply,
            after_commit: Vec::new(),
        }
    }

    /// Another stream that changes, or must stay as it was read, with the command.
    pub fn and(mut self, write: Write) -> Self {
        self.writes.push(write);
        self
    }

    /// Keeps `state` (the aggregate of `stream_id` after this plan's events, at `version`) in
    /// the aggregate cache once the plan committed.
    pub fn remember<A: Aggregate>(mut self, stream_id: String, state: A, version: u64) -> Self {
        self.after_commit.push(Box::new(move |store| {
            store.remember(&stream_id, &state, version)
        }));
        self
    }

    fn target(&self) -> &Write {
        &self.writes[0]
    }

    fn appends_anything(&self) -> bool {
        self.writes.iter().any(|w| !w.events.is_empty())
    }

    /// The answer to the plan once committed.
    fn success(&self) -> StoredResponse {
        let version = self.target().version_after();
        // The command's own stream is always named (even unchanged), the others when written.
        let written = self
            .writes
            .iter()
            .enumerate()
            .filter(|(i, w)| *i == 0 || !w.events.is_empty())
            .map(|(_, w)| (w.stream_id.as_str(), w.version_after()));
        let mut headers = vec![
            (header::ETAG.to_string(), format!("\"{version}\"")),
            (
                consistency::HEADER.to_owned(),
                ConsistencyToken::for_streams(written).to_string(),
            ),
        ];
        if let Some(location) = &self.reply.location {
            headers.push((header::LOCATION.to_string(), location.clone()));
        }
        let mut body = self.reply.body.clone();
        if let Value::Object(fields) = &mut body {
            fields.insert("version".into(), json!(version));
        }
        StoredResponse {
            status: self.reply.status.as_u16(),
            headers,
            body: Some(body),
        }
    }

    /// Counts the events and remembers the new states: the plan committed.
    fn committed(self, store: &EventStore) {
        eventstore::record_appended(
            self.writes
                .iter()
                .flat_map(|w| w.event_types.iter().copied()),
        );
        for remember in self.after_commit {
            remember(store);
        }
    }
}

/// How one attempt reads aggregate states: from the cache on a first attempt, from their
/// streams after a refusal or a lost race.
#[derive(Debug, Clone, Copy)]
pub struct Reads<'a> {
    store: &'a EventStore,
    if_match: Option<u64>,
    fresh: bool,
}

impl Reads<'_> {
    /// The stream the command is about: with `If-Match`, a different version is refused (412)
    /// before anything is decided.
    pub async fn target<A: Aggregate>(&self, stream_id: &str) -> Result<(A, u64), Problem> {
        let (state, version) = self.consult::<A>(stream_id).await?;
        match self.if_match {
            Some(expected) if expected != version => Err(version_mismatch(expected, version)),
            _ => Ok((state, version)),
        }
    }

    /// A stream the command only consults (a product whose catalog entry it uses); make it a
    /// [`Write::check`] of the plan so the command fails if it moves.
    pub async fn consult<A: Aggregate>(&self, stream_id: &str) -> Result<(A, u64), Problem> {
        if !self.fresh
            && let Some(cached) = self.store.cached::<A>(stream_id)
        {
            return Ok(cached);
        }
        self.store
            .load::<A>(stream_id)
            .await
            .map_err(|e| store_problem(&e))
    }
}

/// A command on one aggregate: decides `command` on the state of `stream_id` and appends
/// what it decided there; `reply` shapes the answer from the state after it.
pub async fn run<A>(
    state: &AppState,
    ctx: &CommandContext,
    request_hash: &[u8],
    stream_id: String,
    command: A::Command,
    reply: impl Fn(&A) -> Reply,
) -> Response
where
    A: Aggregate,
    A::Command: Clone,
{
    let (stream_id, command, reply) = (&stream_id, &command, &reply);
    execute(
        state,
        ctx,
        request_hash,
        stream_id,
        move |reads| async move {
            let (aggregate, version) = reads.target::<A>(stream_id).await?;
            let events = aggregate
                .decide(command.clone())
                .map_err(|r| rejection_problem(&r))?;
            let write = Write::new(stream_id.clone(), version, &events, &ctx.metadata)?;
            let after = write.version_after();
            let aggregate = events.iter().fold(aggregate, |a, e| a.evolve(e));
            Ok(Plan::new(write, reply(&aggregate)).remember(stream_id.clone(), aggregate, after))
        },
    )
    .await
}

/// Executes the command that `decide` plans (see the module docs); `stream_id` is the
/// command's own stream, the plan's first write.
pub async fn execute<'s, F, Fut>(
    state: &'s AppState,
    ctx: &CommandContext,
    request_hash: &[u8],
    stream_id: &str,
    decide: F,
) -> Response
where
    F: Fn(Reads<'s>) -> Fut,
    Fut: Future<Output = Result<Plan, Problem>>,
{
    let _turn = state.turns.take(stream_id).await;
    match attempts(state, ctx, request_hash, stream_id, decide).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn attempts<'s, F, Fut>(
    state: &'s AppState,
    ctx: &CommandContext,
    request_hash: &[u8],
    stream_id: &str,
    decide: F,
) -> Result<Response, Problem>
where
    F: Fn(Reads<'s>) -> Fut,
    Fut: Future<Output = Result<Plan, Problem>>,
{
    let mut fresh = !state.store.caches_aggregates();
    for attempt in 1..=MAX_ATTEMPTS {
        let reads = Reads {
            store: &state.store,
            if_match: ctx.expected_version,
            fresh,
        };
        let plan = match decide(reads).await {
            Ok(plan) => plan,
            Err(_) if !fresh => {
                fresh = true;
                continue;
            }
            Err(refusal) => return refuse(state, ctx, request_hash, refusal).await,
        };
        // Reads::target checks If-Match; this holds every plan to it, whatever it read.
        // The turn taken is the plan's own stream's, or it serialises nothing.
        debug_assert_eq!(plan.target().stream_id, stream_id);
        let target_version = plan.target().version;
        let mismatch = ctx.expected_version.filter(|v| *v != target_version);
        if (mismatch.is_some() || !plan.appends_anything()) && !fresh {
            fresh = true;
            continue;
        }
        if let Some(expected) = mismatch {
            let refusal = version_mismatch(expected, target_version);
            return refuse(state, ctx, request_hash, refusal).await;
        }
        match commit(state, ctx, request_hash, &plan).await? {
            Committed::Answered(response) => {
                plan.committed(&state.store);
                return Ok(response);
            }
            Committed::Replayed(response) => return Ok(response),
            Committed::Conflicted => {
                fresh = true;
                if attempt < MAX_ATTEMPTS {
                    tokio::time::sleep(conflict_backoff(attempt)).await;
                }
            }
        }
    }
    Err(contention_problem())
}

/// How one attempt to commit a plan ended.
enum Committed {
    /// The plan's events (and the answer, with a key) committed.
    Answered(Response),
    /// The key's earlier answer; nothing was appended.
    Replayed(Response),
    /// A stream moved since the plan was decided; nothing was appended.
    Conflicted,
}

async fn commit(
    state: &AppState,
    ctx: &CommandContext,
    request_hash: &[u8],
    plan: &Plan,
) -> Result<Committed, Problem> {
    let answer = plan.success();
    let appends: Vec<StreamAppend> = plan.writes.iter().map(Write::to_append).collect();
    let Some(key) = &ctx.idempotency_key else {
        if plan.appends_anything() {
            match state.store.append_streams(&appends).await {
                Ok(_) => {}
                Err(AppendError::WrongExpectedVersion { .. }) => return Ok(Committed::Conflicted),
                Err(e) => return Err(append_problem(e)),
            }
        }
        return Ok(Committed::Answered(answer.into_response()));
    };
    let principal = ctx.principal.user_id.as_str();
    let mut tx = state.store.pool().begin().await.map_err(db_problem)?;
    if let Some(earlier) = claim(&mut tx, principal, key, request_hash).await? {
        return Ok(Committed::Replayed(earlier));
    }
    if plan.appends_anything() {
        match state.store.append_streams_in(&mut tx, &appends).await {
            Ok(_) => {}
            Err(AppendError::WrongExpectedVersion { .. }) => {
                tx.rollback().await.map_err(db_problem)?;
                return Ok(Committed::Conflicted);
            }
            Err(e) => return Err(append_problem(e)),
        }
    }
    idempotency::save(&mut tx, principal, key, request_hash, &answer)
        .await
        .map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    if plan.appends_anything() {
        state.store.announce_appended();
    }
    Ok(Committed::Answered(answer.into_response()))
}

/// Answers a refusal decided on fresh reads. A client error is the request's deterministic
/// answer: with a key it is kept, so a retry gets it again; an outage is not, so a retry runs.
async fn refuse(
    state: &AppState,
    ctx: &CommandContext,
    request_hash: &[u8],
    refusal: Problem,
) -> Result<Response, Problem> {
    let Some(key) = ctx
        .idempotency_key
        .as_deref()
        .filter(|_| refusal.status < 500)
    else {
        return Err(refusal);
    };
    let principal = ctx.principal.user_id.as_str();
    let mut tx = state.store.pool().begin().await.map_err(db_problem)?;
    if let Some(earlier) = claim(&mut tx, principal, key, request_hash).await? {
        return Ok(earlier);
    }
    idempotency::save(
        &mut tx,
        principal,
        key,
        request_hash,
        &stored_problem(&refusal),
    )
    .await
    .map_err(db_problem)?;
    tx.commit().await.map_err(db_problem)?;
    Err(refusal)
}

/// Claims an `Idempotency-Key` in the command's transaction. `Some` is the stored answer of
/// the same request, to give instead of running the command.
async fn claim(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    principal: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<Option<Response>, Problem> {
    match idempotency::claim(tx, principal, key, request_hash)
        .await
        .map_err(db_problem)?
    {
        Claim::Acquired => Ok(None),
        Claim::Replay(mut stored) => {
            metrics::counter!("idempotent_replays_total").increment(1);
            stored
                .headers
                .push((IDEMPOTENT_REPLAYED.to_owned(), "true".into()));
            Ok(Some(stored.into_response()))
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

fn db_problem(e: sqlx::Error) -> Problem {
    store_problem(&StoreError::Database(e))
}

fn append_problem(e: AppendError) -> Problem {
    match e {
        AppendError::Store(e) => store_problem(&e),
        // Fresh event ids are never stored already; a clash is a bug, not the client's.
        e => Problem::internal(&e),
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
