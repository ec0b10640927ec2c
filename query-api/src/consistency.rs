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
//!
//! A token entry is only waited for if it is genuine (see [`genuine`]): a question to the event
//! store, asked once per entry. When the view already holds the stream and names the caller as
//! its customer, it is asked only if the request's wait outlasts [`OWN_STREAM_GRACE`]: the
//! usual read-your-writes wait (the caller's own cart one event behind) then costs the store
//! nothing. Every other entry is asked about at once, even when the view has caught up with it,
//! so another user's stream, a stream that does not exist and a made-up version all cost the
//! same: one question, no wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use eventstore::EventStore;
use platform::consistency::{Awaited, ConsistencyToken};
use platform::identity::Principal;
use platform::problem::Problem;
use platform::read_models::{CartKeys, CartsApplied};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a read that relies on announcements waits before it checks again anyway (the
/// default of [`CartWakeups`]).
pub const ANNOUNCED_RECHECK: Duration = Duration::from_millis(100);
/// How long a request may wait on the view's word that an awaited stream is the caller's own
/// before the event store is asked whether the awaited versions exist. Counted once per
/// request, however many entries its token names: a version from the future of one's own
/// stream costs the caller at most this much, and nobody else anything.
pub const OWN_STREAM_GRACE: Duration = Duration::from_millis(20);
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

impl Readers<'_> {
    /// Whether these readers may read a stream whose customer is `customer` (`None`: a stream
    /// with no customer, such as a product).
    pub fn may_read(self, customer: Option<&str>) -> bool {
        match self {
            Readers::Anyone => true,
            Readers::Owner(_) => customer.is_some_and(|c| self.is_customer(c)),
            Readers::OwnerOrAdmin(principal) => {
                principal.is_admin() || customer.is_some_and(|c| self.is_customer(c))
            }
        }
    }

    /// Whether the caller is `customer` (never for [`Readers::Anyone`]: nobody's own).
    pub fn is_customer(self, customer: &str) -> bool {
        match self {
            Readers::Anyone => false,
            Readers::Owner(principal) | Readers::OwnerOrAdmin(principal) => {
                principal.user_id == customer
            }
        }
    }
}

/// What a view holds of an awaited stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The stream's version in the view (0: not there yet).
    pub version: u64,
    /// Whether the view names the caller as the stream's customer (false when it does not
    /// hold the stream).
    pub callers_own: bool,
}

impl Held {
    /// A stream the view does not hold.
    pub const NOTHING: Held = Held {
        version: 0,
        callers_own: false,
    };
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
    Ok(readers.may_read(first.data.to_value()["customer_id"].as_str()))
}

/// Waits until `current(awaited)` reports a version at or past each awaited one, until
/// `limit`. `current` says what the view holds of the stream ([`Held`]). An entry is waited for
/// only if `genuine` says so (see [`genuine`]); for the caller's own stream that is asked only
/// once the request has waited [`OWN_STREAM_GRACE`], for any other at once (see the module
/// docs). With `wakeups` (announcements of the projection version the read serves), a check
/// waits for the stream to be announced; without, it polls.
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
    Fut: Future<Output = Result<Held, Problem>>,
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
            let held = current(wanted.id).await?;
            let reached = held.version >= wanted.version;
            if reached && (held.callers_own || checked) {
                break;
            }
            let left = limit.saturating_sub(started.elapsed());
            let grace = OWN_STREAM_GRACE.saturating_sub(started.elapsed());
            // Anything but the caller's own stream is asked about at once, caught up or not;
            // the caller's own only once the grace or the whole wait is over.
            let ask = !held.callers_own || grace.is_zero() || left.is_zero();
            if !checked && ask {
                if !genuine(wanted.clone()).await? {
                    metrics::counter!("consistency_tokens_ignored_total").increment(1);
                    continue 'streams;
                }
                checked = true;
                if reached {
                    break;
                }
            }
            if left.is_zero() {
                return Err(timed_out(wanted, limit));
            }
            let left = if checked { left } else { left.min(grace) };
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

/// A Postgres projection's table of views: one row per stream, keyed by `id_column`, with its
/// `version` and, for streams of a customer, the customer in `customer_column`.
#[derive(Debug, Clone, Copy)]
pub struct ViewTable {
    pub projection: &'static str,
    pub stream_type: &'static str,
    pub table: &'static str,
    pub id_column: &'static str,
    pub customer_column: Option<&'static str>,
}

/// The serving schema of `view`'s projection, after waiting for the request's consistency
/// token on it.
pub async fn serving_schema(
    state: &crate::AppState,
    headers: &HeaderMap,
    readers: Readers<'_>,
    view: ViewTable,
) -> Result<String, Problem> {
    let awaited = parse(headers)?;
    let version = state
        .serving
        .get(&state.pool, view.projection)
        .await
        .map_err(crate::db_problem)?;
    let schema = platform::read_models::schema(view.projection, version);
    let sql = format!(
        "SELECT version, {} FROM \"{schema}\".{} WHERE {} = $1",
        view.customer_column.unwrap_or("NULL::text"),
        view.table,
        view.id_column
    );
    let store = &state.store;
    let genuine = move |wanted| genuine(store, wanted, readers);
    wait_for(
        &awaited,
        view.stream_type,
        state.consistency_wait,
        None,
        genuine,
        |id| {
            let (pool, sql) = (state.pool.clone(), sql.clone());
            async move {
                let row: Option<(i64, Option<String>)> = sqlx::query_as(&sql)
                    .bind(id)
                    .fetch_optional(&pool)
                    .await
                    .map_err(crate::db_problem)?;
                Ok(row.map_or(Held::NOTHING, |(version, customer)| Held {
                    version: version as u64,
                    callers_own: customer.is_some_and(|c| readers.is_customer(&c)),
                }))
            }
        },
    )
    .await?;
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    const LIMIT: Duration = Duration::from_secs(3);

    /// Waits for `entries` entries `cart-…@2` (polling, no announcements; on a paused clock)
    /// with the view reporting `held(n)` at its n-th check and the store saying `genuine`: the
    /// outcome, how often the store was asked, and how long it took.
    async fn wait(
        entries: usize,
        held: impl Fn(u32) -> Held,
        genuine: bool,
        limit: Duration,
    ) -> (Result<(), Problem>, u32, Duration) {
        let awaited: Vec<Awaited> = (0..entries)
            .map(|_| Awaited {
                stream_type: "cart".into(),
                id: uuid::Uuid::new_v4(),
                version: 2,
            })
            .collect();
        let (checks, asked) = (AtomicU32::new(0), AtomicU32::new(0));
        let started = Instant::now();
        let outcome = wait_for(
            &awaited,
            "cart",
            limit,
            None,
            |_| {
                asked.fetch_add(1, Ordering::SeqCst);
                async move { Ok(genuine) }
            },
            |_| {
                let held = held(checks.fetch_add(1, Ordering::SeqCst));
                async move { Ok(held) }
            },
        )
        .await;
        (outcome, asked.load(Ordering::SeqCst), started.elapsed())
    }

    fn own(version: u64) -> Held {
        Held {
            version,
            callers_own: true,
        }
    }

    fn someone_elses(version: u64) -> Held {
        Held {
            version,
            callers_own: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_own_stream_catching_up_costs_the_store_nothing() {
        let (outcome, asked, _) = wait(1, |n| own(if n < 2 { 1 } else { 2 }), true, LIMIT).await;
        assert!(outcome.is_ok());
        assert_eq!(
            asked, 0,
            "the store was asked about a stream the view vouches for"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_version_of_the_callers_own_stream_from_the_future_is_ignored_after_the_grace() {
        let (outcome, asked, took) = wait(1, |_| own(1), false, LIMIT).await;
        assert!(outcome.is_ok(), "ignored, not timed out: {outcome:?}");
        assert_eq!(asked, 1);
        assert!(took >= OWN_STREAM_GRACE, "asked before the grace: {took:?}");
        assert!(took < 2 * OWN_STREAM_GRACE, "waited on: {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_is_one_per_request_however_many_entries_the_token_names() {
        let (outcome, asked, took) = wait(50, |_| own(1), false, LIMIT).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(asked, 50);
        assert!(took < 2 * OWN_STREAM_GRACE, "fifty entries waited {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_genuine_version_the_view_never_reaches_times_out() {
        let limit = Duration::from_millis(200);
        let (outcome, asked, took) = wait(1, |_| own(1), true, limit).await;
        let problem = outcome.expect_err("the view never caught up");
        assert_eq!(problem.code(), "consistency-timeout");
        assert_eq!(asked, 1);
        assert!(took >= limit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_shorter_than_the_grace_still_asks_the_store_before_timing_out() {
        let (outcome, asked, _) = wait(1, |_| own(1), false, Duration::from_millis(5)).await;
        assert!(outcome.is_ok(), "a made-up version is ignored: {outcome:?}");
        assert_eq!(asked, 1);
    }

    /// Someone else's stream, behind or caught up, and a stream the view lacks all cost one
    /// question to the store and no wait: their answers cannot be told apart by their timing.
    #[tokio::test(start_paused = true)]
    async fn anything_but_the_callers_own_stream_is_asked_about_at_once_and_never_waited_for() {
        for held in [someone_elses(1), someone_elses(2), Held::NOTHING] {
            let (outcome, asked, took) = wait(1, |_| held, false, LIMIT).await;
            assert!(outcome.is_ok(), "{held:?}: {outcome:?}");
            assert_eq!(asked, 1, "{held:?}");
            assert!(took.is_zero(), "{held:?} waited {took:?}");
        }
        // A reader who may read it (an admin) waits for it once the store says it is genuine.
        let (outcome, asked, _) = wait(1, |n| someone_elses(n as u64), true, LIMIT).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(asked, 1);
    }

    #[test]
    fn readers_are_the_customer_anyone_or_an_admin_and_only_a_customer_owns() {
        let principal = |user: &str, roles: &[&str]| Principal {
            user_id: user.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        };
        let (alice, admin) = (principal("alice", &[]), principal("root", &["admin"]));
        assert!(Readers::Anyone.may_read(None));
        assert!(Readers::Owner(&alice).may_read(Some("alice")));
        assert!(!Readers::Owner(&alice).may_read(Some("bob")));
        assert!(!Readers::Owner(&alice).may_read(None));
        assert!(!Readers::Owner(&admin).may_read(Some("alice")));
        assert!(Readers::OwnerOrAdmin(&admin).may_read(Some("alice")));
        assert!(!Readers::OwnerOrAdmin(&alice).may_read(Some("alice ")));
        assert!(Readers::Owner(&alice).is_customer("alice"));
        assert!(!Readers::OwnerOrAdmin(&admin).is_customer("alice"));
        assert!(!Readers::Anyone.is_customer("alice"));
    }
}
