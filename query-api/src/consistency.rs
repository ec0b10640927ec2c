//! Read-your-writes. A command answers with `X-Consistency-Token: <stream>@<version>` (several
//! joined by `;`); a read that sends it back waits, bounded, until the view it serves holds each
//! of those streams at that version or later. Streams the view does not hold are ignored.
//!
//! A waiting read checks the view, then waits for a reason to check again. For carts that is the
//! projector's announcement of the carts it just wrote ([`CartWakeups`], Redis pub/sub): the
//! read checks again when its cart is announced, so a thousand waiting reads cost no polling.
//! Announcements are only hints (the view is always what is checked), so a lost one costs at
//! most [`ANNOUNCED_RECHECK`]; while the subscription is down, and for the Postgres views,
//! reads poll with a short backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use eventstore::EventStore;
use platform::consistency::{Awaited, ConsistencyToken};
use platform::identity::Principal;
use platform::problem::Problem;
use platform::read_models::{CartKeys, CartsApplied};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How long a read that relies on announcements waits before it checks again anyway (the
/// default of [`CartWakeups`]).
pub const ANNOUNCED_RECHECK: Duration = Duration::from_millis(100);
/// Polling backoff without announcements: from the first to the last pause.
const POLL_PAUSES: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(10));

/// The consistency token a read sent; a malformed one is the client's mistake (400).
pub fn parse(headers: &HeaderMap) -> Result<Vec<Awaited>, Problem> {
    ConsistencyToken::from_headers(headers)
        .map(|token| token.streams().to_vec())
        .map_err(|e| Problem::bad_request("invalid-consistency-token", e.to_string()))
}

/// Who may read the streams a read's token names.
#[derive(Debug, Clone, Copy)]
pub enum Readers<'a> {
    /// Public streams (the catalog).
    Anyone,
    /// The stream's customer only (carts).
    Owner(&'a Principal),
    /// The stream's customer, or an admin (orders).
    OwnerOrAdmin(&'a Principal),
}

/// Whether a token entry is worth waiting for: it names a stream that exists at least at that
/// version, and `readers` may read it (its first event names its customer). Anything else —
/// another user's cart, a stream that does not exist, a version from the future — is ignored,
/// so it costs no wait and the answer is the same as without it: it reveals nothing.
pub async fn genuine(
    store: &EventStore,
    wanted: Awaited,
    readers: Readers<'_>,
) -> Result<bool, Problem> {
    // The first event names the customer; only it and the stream's reach are needed, not the
    // history (a long cart's whole stream per waiting read was a quarter of the query API's CPU).
    let Some(first) = store
        .first_event_if_reached(&wanted.stream_id(), wanted.version)
        .await
        .map_err(|e| Problem::internal(&e))?
    else {
        return Ok(false);
    };
    let owned_by = |principal: &Principal| {
        first.data.to_value()["customer_id"].as_str() == Some(principal.user_id.as_str())
    };
    Ok(match readers {
        Readers::Anyone => true,
        Readers::Owner(principal) => owned_by(principal),
        Readers::OwnerOrAdmin(principal) => principal.is_admin() || owned_by(principal),
    })
}

/// Waits until `current(awaited)` reports a version at or past each awaited one, until
/// `limit`. `current` returns the version the view holds (0 = not there yet). An entry the view
/// does not hold yet is waited for only if `genuine` says so (see [`genuine`]). With `wakeups`
/// (announcements of the projection version the read serves), a check waits for the stream to
/// be announced; without, it polls.
#[tracing::instrument(
    name = "consistency.wait",
    skip_all,
    fields(stream_type = %stream_type, awaited = awaited.len()),
)]
pub async fn wait_for<F, Fut, G, GFut>(
    awaited: &[Awaited],
    stream_type: &str,
    limit: Duration,
    wakeups: Option<(&CartWakeups, i32)>,
    mut genuine: G,
    mut current: F,
) -> Result<(), Problem>
where
    F: FnMut(uuid::Uuid) -> Fut,
    Fut: Future<Output = Result<u64, Problem>>,
    G: FnMut(Awaited) -> GFut,
    GFut: Future<Output = Result<bool, Problem>>,
{
    let started = Instant::now();
    'streams: for wanted in awaited.iter().filter(|a| a.stream_type == stream_type) {
        // Subscribed before the first check, so an announcement between the check and the
        // wait is not missed.
        let mut announcements = wakeups.map(|(w, version)| (w, w.subscribe(), version));
        let mut pause = POLL_PAUSES.0;
        let mut checked = false;
        loop {
            if current(wanted.id).await? >= wanted.version {
                break;
            }
            if !checked {
                if !genuine(wanted.clone()).await? {
                    metrics::counter!("consistency_tokens_ignored_total").increment(1);
                    continue 'streams;
                }
                checked = true;
            }
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(timed_out(wanted, limit));
            }
            match &mut announcements {
                Some((wakeups, feed, version)) if wakeups.is_listening() => {
                    let wait = left.min(wakeups.recheck);
                    announced(feed, *version, wanted, wait).await;
                }
                _ => {
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(POLL_PAUSES.1);
                }
            }
        }
    }
    metrics::histogram!("consistency_wait_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

fn timed_out(wanted: &Awaited, limit: Duration) -> Problem {
    metrics::counter!("consistency_wait_timeouts_total").increment(1);
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "consistency-timeout",
        "Not consistent yet",
    )
    .with_detail(format!(
        "the read model has not caught up with {}@{} within {} ms; retry",
        wanted.stream_id(),
        wanted.version,
        limit.as_millis()
    ))
    .with_header(header::RETRY_AFTER, "1")
}

/// Returns once `wanted` is announced in projection `version`, announcements were missed
/// (the feed lagged or closed), or `wait` is over: each is a reason to check the view again.
async fn announced(
    feed: &mut broadcast::Receiver<Arc<CartsApplied>>,
    version: i32,
    wanted: &Awaited,
    wait: Duration,
) {
    let _ = tokio::time::timeout(wait, async {
        loop {
            match feed.recv().await {
                Ok(applied)
                    if applied.version == version && applied.covers(wanted.id, wanted.version) =>
                {
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
}

/// The cart projector's announcements of written carts, fanned out to waiting reads. One
/// subscription per query API process; [`CartWakeups::listen`] keeps it up.
#[derive(Debug)]
pub struct CartWakeups {
    feed: broadcast::Sender<Arc<CartsApplied>>,
    listening: AtomicBool,
    /// How long a read waits for an announcement before it checks its view anyway.
    recheck: Duration,
}

impl Default for CartWakeups {
    /// Rechecks after [`ANNOUNCED_RECHECK`].
    fn default() -> Self {
        Self::new(ANNOUNCED_RECHECK)
    }
}

impl CartWakeups {
    /// Not listening (until [`CartWakeups::listen`] runs): reads poll.
    pub fn new(recheck: Duration) -> Self {
        Self {
            // Announcements are small and consumed at once; a read that falls this far behind
            // just checks its view again.
            feed: broadcast::channel(1024).0,
            listening: AtomicBool::new(false),
            recheck,
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<CartsApplied>> {
        self.feed.subscribe()
    }

    /// Whether the subscription is up (reads wait for announcements) or not (reads poll).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Subscribes to the announcements of `keys` and passes them on until `shutdown`,
    /// subscribing again (after a pause) whenever the connection is lost.
    pub async fn listen(&self, client: redis::Client, keys: CartKeys, shutdown: CancellationToken) {
        use futures::StreamExt;
        let channel = keys.applied_channel();
        while !shutdown.is_cancelled() {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            }
            .await;
            match subscribed {
                Ok(mut pubsub) => {
                    self.listening.store(true, Ordering::Relaxed);
                    let mut messages = pubsub.on_message();
                    while let Some(Some(message)) =
                        shutdown.run_until_cancelled(messages.next()).await
                    {
                        let text: String = message.get_payload().unwrap_or_default();
                        if let Some(applied) = CartsApplied::parse(&text) {
                            // Nobody waiting is fine.
                            let _ = self.feed.send(Arc::new(applied));
                        }
                    }
                    self.listening.store(false, Ordering::Relaxed);
                    tracing::debug!("cart announcements lost; reads poll until they are back");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot subscribe to cart announcements; reads poll")
                }
            }
            let _ = shutdown
                .run_until_cancelled(tokio::time::sleep(Duration::from_secs(1)))
                .await;
        }
    }
}

/// The serving schema of a Postgres projection, after waiting for the request's consistency
/// token on it: `table` holds one row per stream, keyed by `id_column`, with its `version`.
pub async fn serving_schema(
    state: &crate::AppState,
    headers: &HeaderMap,
    readers: Readers<'_>,
    projection: &str,
    stream_type: &str,
    table: &str,
    id_column: &str,
) -> Result<String, Problem> {
    let awaited = parse(headers)?;
    let version = platform::read_models::serving_version(&state.pool, projection)
        .await
        .map_err(crate::db_problem)?;
    let schema = platform::read_models::schema(projection, version);
    let sql = format!("SELECT version FROM \"{schema}\".{table} WHERE {id_column} = $1");
    let store = &state.store;
    let genuine = move |wanted| genuine(store, wanted, readers);
    wait_for(
        &awaited,
        stream_type,
        state.consistency_wait,
        None,
        genuine,
        |id| {
            let (pool, sql) = (state.pool.clone(), sql.clone());
            async move {
                let version: Option<i64> = sqlx::query_scalar(&sql)
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
                    .map_err(crate::db_problem)?;
                Ok(version.unwrap_or(0) as u64)
            }
        },
    )
    .await?;
    Ok(schema)
}
