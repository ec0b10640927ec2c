//! [`ServingVersions`]: which version of each projection reads are served from, remembered
//! between reads instead of asked of Postgres by every one of them.
//!
//! A rebuild's switch notifies [`SWITCHED_CHANNEL`] in its transaction, so the notification
//! arrives once the new version serves. A remembered version is only trusted while this process
//! listens on that channel: on every notification, on a lost or new listening connection, and
//! while not listening, everything remembered is forgotten and reads ask Postgres. A version
//! read just before a switch and handed in just after its notification is not remembered (the
//! [`Remembered::generation`] it was read in has passed).
//!
//! So a read can use a replaced version only within the notification's delivery time — the
//! same race a read has always had between asking for the version and reading the view.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use platform::read_models::{SWITCHED_CHANNEL, serving_version};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

/// Between two attempts to listen.
const RELISTEN: Duration = Duration::from_secs(1);

/// The serving versions this process has read, while it listens for switches. See the module
/// docs.
#[derive(Debug, Default)]
pub struct ServingVersions {
    remembered: Mutex<Remembered>,
    listening: AtomicBool,
}

#[derive(Debug, Default)]
struct Remembered {
    /// Moves on whenever what was remembered may be out of date.
    generation: u64,
    versions: HashMap<String, i32>,
}

impl ServingVersions {
    /// The version `projection` serves from: remembered, or read from `pool`.
    pub async fn get(&self, pool: &PgPool, projection: &str) -> Result<i32, sqlx::Error> {
        let generation = {
            let remembered = self.lock();
            if self.is_listening()
                && let Some(version) = remembered.versions.get(projection)
            {
                return Ok(*version);
            }
            remembered.generation
        };
        let version = serving_version(pool, projection).await?;
        let mut remembered = self.lock();
        if self.is_listening() && remembered.generation == generation {
            remembered.versions.insert(projection.to_owned(), version);
        }
        Ok(version)
    }

    /// Whether switches are being heard (versions are remembered) or not (every read asks).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Listens for switches on a connection of its own (to `database_url`) until `shutdown`,
    /// listening again after a pause whenever the connection is lost.
    pub async fn listen(&self, database_url: &str, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            // Connecting to a Postgres that is down retries for half a minute: not in the way
            // of a shutdown.
            let Some(listening) = shutdown
                .run_until_cancelled(async {
                    let mut listener = PgListener::connect(database_url).await?;
                    listener.listen(SWITCHED_CHANNEL).await?;
                    Ok::<_, sqlx::Error>(listener)
                })
                .await
            else {
                return;
            };
            match listening {
                Ok(mut listener) => {
                    // Anything read before now may predate a switch nobody heard.
                    self.forget();
                    self.listening.store(true, Ordering::SeqCst);
                    // `try_recv` answers `None` when the connection was lost; it would listen
                    // again on its own, but what was missed meanwhile is gone.
                    while let Some(Ok(Some(_switched))) =
                        shutdown.run_until_cancelled(listener.try_recv()).await
                    {
                        self.forget();
                    }
                    self.listening.store(false, Ordering::SeqCst);
                    self.forget();
                    tracing::debug!("not hearing projection switches; reads ask for versions");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for projection switches; reads ask for versions")
                }
            }
            let _ = shutdown
                .run_until_cancelled(tokio::time::sleep(RELISTEN))
                .await;
        }
    }

    fn forget(&self) {
        let mut remembered = self.lock();
        remembered.generation += 1;
        remembered.versions.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        // Nothing panics while holding it; a poisoned map is still a valid map.
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
