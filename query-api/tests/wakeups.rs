//! Read-your-writes wake-ups through the real Redis: a read waiting for its cart is woken by
//! the projector's announcement, other announcements do not end its wait, a lost announcement
//! costs one recheck, and with Redis down reads poll and still time out cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use platform::consistency::Awaited;
use platform::problem::Problem;
use platform::read_models::{CartKeys, CartsApplied};
use query_api::consistency::{CartWakeups, Held, wait_for};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The view the read checks: its stored version, and how often it was checked.
#[derive(Default)]
struct View {
    version: AtomicU64,
    checks: AtomicU64,
}

struct Setup {
    keys: CartKeys,
    client: redis::Client,
    shutdown: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn setup() -> Setup {
    Setup {
        keys: CartKeys {
            prefix: format!("test-wakeups-{}", Uuid::new_v4().simple()),
        },
        client: redis::Client::open(platform::settings::redis_url()).unwrap(),
        shutdown: CancellationToken::new(),
    }
}

/// Runs `wakeups`' subscription to the setup's channel until the setup is dropped.
fn spawn_listener(setup: &Setup, wakeups: &Arc<CartWakeups>) {
    let (w, client, keys, shutdown) = (
        wakeups.clone(),
        setup.client.clone(),
        setup.keys.clone(),
        setup.shutdown.clone(),
    );
    tokio::spawn(async move { w.listen(client, keys, shutdown).await });
}

/// A subscription to the setup's channel, running until the setup is dropped.
async fn listening(setup: &Setup, recheck: Duration) -> Arc<CartWakeups> {
    let wakeups = Arc::new(CartWakeups::new(recheck));
    spawn_listener(setup, &wakeups);
    for _ in 0..500 {
        if wakeups.is_listening() {
            return wakeups;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never subscribed to the announcements");
}

async fn announce(setup: &Setup, applied: CartsApplied) {
    let mut redis = setup
        .client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(setup.keys.applied_channel())
        .arg(applied.to_message())
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// Starts a read of `cart` at version 2 in projection version 1, waiting up to `limit`.
fn waiting_read(
    wakeups: Arc<CartWakeups>,
    view: Arc<View>,
    cart: Uuid,
    limit: Duration,
) -> tokio::task::JoinHandle<Result<(), Problem>> {
    tokio::spawn(async move {
        let awaited = [Awaited {
            stream_type: "cart".into(),
            id: cart,
            version: 2,
        }];
        // The stream is real and the caller's: what is measured is the wait itself.
        let genuine = |_| async { Ok(true) };
        wait_for(
            &awaited,
            "cart",
            limit,
            Some((&wakeups, 1)),
            genuine,
            |_| {
                let view = view.clone();
                async move {
                    view.checks.fetch_add(1, Ordering::SeqCst);
                    // Not vouching for the stream: the store is asked at once (and says
                    // yes), so only announcements and rechecks wake the read, never the
                    // end of `OWN_STREAM_GRACE`.
                    Ok(Held {
                        version: view.version.load(Ordering::SeqCst),
                        callers_own: false,
                    })
                }
            },
        )
        .await
    })
}

async fn first_check(view: &View) {
    while view.checks.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (bounded) for a read to end, and expects it to have found its view.
async fn finishes(read: tokio::task::JoinHandle<Result<(), Problem>>, why: &str) {
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect(why)
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_waiting_read_is_woken_by_its_carts_announcement_not_by_others() {
    let setup = setup();
    // Rechecks only after a minute: within this test, only an announcement can wake the read.
    let wakeups = listening(&setup, Duration::from_secs(60)).await;
    let (cart, view) = (Uuid::new_v4(), Arc::new(View::default()));
    view.version.store(1, Ordering::SeqCst);
    let read = waiting_read(wakeups, view.clone(), cart, Duration::from_secs(120));
    first_check(&view).await;

    view.version.store(2, Ordering::SeqCst);
    // Another cart, the right cart at an older version, the right cart in another projection
    // version: none of these is the read's.
    for applied in [(1, Uuid::new_v4(), 2), (1, cart, 1), (2, cart, 2)] {
        announce(
            &setup,
            CartsApplied {
                version: applied.0,
                carts: vec![(applied.1, applied.2)],
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !read.is_finished(),
        "woken by an announcement that was not its cart's"
    );
    assert_eq!(view.checks.load(Ordering::SeqCst), 1);

    announce(
        &setup,
        CartsApplied {
            version: 1,
            carts: vec![(Uuid::new_v4(), 9), (cart, 2)],
        },
    )
    .await;
    finishes(read, "the announcement woke the read").await;
    assert_eq!(
        view.checks.load(Ordering::SeqCst),
        2,
        "one check per wake-up"
    );
}

#[tokio::test]
async fn a_lost_announcement_costs_one_recheck() {
    let setup = setup();
    let wakeups = listening(&setup, Duration::from_millis(200)).await;
    let (cart, view) = (Uuid::new_v4(), Arc::new(View::default()));
    let read = waiting_read(wakeups, view.clone(), cart, Duration::from_secs(60));
    first_check(&view).await;

    view.version.store(2, Ordering::SeqCst);
    finishes(read, "the recheck found the view").await;
    assert_eq!(view.checks.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn with_redis_down_reads_poll_and_time_out_with_a_clear_answer() {
    let mut setup = setup();
    // Nothing listens there: the subscription keeps failing (and retrying).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    setup.client =
        redis::Client::open(format!("redis://{}/", closed.local_addr().unwrap())).unwrap();
    drop(closed);
    let wakeups = Arc::new(CartWakeups::new(Duration::from_secs(60)));
    spawn_listener(&setup, &wakeups);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!wakeups.is_listening());

    let (cart, view) = (Uuid::new_v4(), Arc::new(View::default()));
    let read = waiting_read(wakeups.clone(), view.clone(), cart, Duration::from_secs(60));
    first_check(&view).await;
    view.version.store(2, Ordering::SeqCst);
    finishes(read, "polling found the view").await;

    let view = Arc::new(View::default());
    let problem = waiting_read(wakeups, view.clone(), cart, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(problem.status, 503);
    assert_eq!(problem.code(), "consistency-timeout");
    assert!(view.checks.load(Ordering::SeqCst) > 2, "it polled");
}
