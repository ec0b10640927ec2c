//! The connections the store's own statements run on (appends, stream reads): a deadpool of
//! sqlx connections opened with the settings of the store's `PgPool`.
//!
//! Why not the `PgPool` itself: sqlx pings every connection it takes back, a round trip to
//! Postgres after each statement. Under `till bench write` that was one wake-up of a Postgres
//! backend per command for nothing, about a tenth of the machine's CPU per command. Here a
//! connection goes back to the pool as it is; like HikariCP, only one that sat idle for
//! [`CHECK_IDLE_FOR`] is pinged before it is handed out again, and one whose statement failed
//! for a connection-level reason (I/O, protocol) is closed instead of reused.
//!
//! A statement cancelled half-way (its request dropped) needs nothing here: sqlx finishes the
//! exchange (flushes what was left unsent, reads the answers still due) before the
//! connection's next statement.
//!
//! Transactions, and everything else, stay on the `PgPool` ([`crate::EventStore::pool`]).

use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleResult};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgDatabaseError, PgSeverity};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::error::{AppendError, StoreError};

/// A connection idle for this long is pinged before it is handed out again.
pub const CHECK_IDLE_FOR: Duration = Duration::from_secs(1);

/// The store's connections; cheap to clone.
#[derive(Clone)]
pub(crate) struct Connections {
    pool: managed::Pool<Opener>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("Connections")
            .field("size", &status.size)
            .field("max_size", &status.max_size)
            .finish()
    }
}

/// One connection, and whether its last statement showed it broken.
pub(crate) struct Lane {
    pub(crate) conn: PgConnection,
    broken: bool,
}

/// A connection taken from [`Connections`]; goes back when dropped.
pub(crate) type Taken = Object<Opener>;

impl Lane {
    /// Notes how the statements on this connection ended: a connection-level failure (the
    /// socket or the protocol, not a statement) closes the connection instead of returning it.
    pub(crate) fn note<T, E: DatabaseFailure>(&mut self, result: &Result<T, E>) {
        if let Err(e) = result {
            self.broken |= e.database_error().is_some_and(is_connection_failure);
        }
    }
}

/// Errors that may carry the database driver's error.
pub trait DatabaseFailure {
    fn database_error(&self) -> Option<&sqlx::Error>;
}

impl DatabaseFailure for sqlx::Error {
    fn database_error(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

impl DatabaseFailure for StoreError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            StoreError::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl DatabaseFailure for AppendError {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            AppendError::Store(e) => e.database_error(),
            _ => None,
        }
    }
}

/// The connection cannot be used again: the socket or the protocol failed, or the server ended
/// the session.
fn is_connection_failure(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
    ) || session_ended(e)
}

/// The server ended the session (a FATAL error: `pg_terminate_backend`, a shutdown or restart).
/// Unlike a broken socket, this says the statement took no effect: the server was ending the
/// session instead of running it, or rolled it back to end the session.
pub(crate) fn session_ended(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<PgDatabaseError>()
            .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)),
        _ => false,
    }
}

/// Opens connections for the pool and checks them on their way out of it.
pub(crate) struct Opener {
    options: PgConnectOptions,
}

impl managed::Manager for Opener {
    type Type = Lane;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Lane, sqlx::Error> {
        Ok(Lane {
            conn: self.options.connect().await?,
            broken: false,
        })
    }

    async fn recycle(&self, lane: &mut Lane, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        if lane.broken {
            return Err(managed::RecycleError::message("the connection failed"));
        }
        if metrics.last_used() >= CHECK_IDLE_FOR {
            lane.conn.ping().await?;
        }
        Ok(())
    }
}

/// Closes connections idle for longer than `idle` now and then, as the `PgPool` does, until
/// the pool is dropped: an idle system gives its connections back to Postgres.
fn close_idle(pool: &managed::Pool<Opener>, idle: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = pool.weak();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(idle.min(Duration::from_secs(10)));
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            pool.retain(|_, metrics| metrics.last_used() < idle);
        }
    });
}

impl Connections {
    /// As many connections as `pool` may hold, opened with its options, and the same wait for
    /// a free one.
    pub(crate) fn like(pool: &PgPool) -> Self {
        let settings = pool.options();
        let opener = Opener {
            options: (*pool.connect_options()).clone(),
        };
        let pool = managed::Pool::builder(opener)
            .max_size(settings.get_max_connections() as usize)
            .wait_timeout(Some(settings.get_acquire_timeout()))
            .create_timeout(Some(settings.get_acquire_timeout()))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime and timeouts builds");
        if let Some(idle) = settings.get_idle_timeout() {
            close_idle(&pool, idle);
        }
        Self { pool }
    }

    /// The most connections open at once.
    pub(crate) fn max_size(&self) -> usize {
        self.pool.status().max_size
    }

    /// Runs `f` on a connection and notes how it ended (see [`Lane::note`]).
    pub(crate) async fn with<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
        E: DatabaseFailure + From<sqlx::Error>,
    {
        let mut taken = self.get().await.map_err(E::from)?;
        let result = f(&mut taken.conn).await;
        taken.note(&result);
        result
    }

    /// A connection, as the `PgPool` would fail to give one: timeouts as `PoolTimedOut`.
    pub(crate) async fn get(&self) -> Result<Taken, sqlx::Error> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
            PoolError::Closed => sqlx::Error::PoolClosed,
            PoolError::NoRuntimeSpecified | PoolError::PostCreateHook(_) => {
                sqlx::Error::Configuration("the event store's connection pool".into())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_connection_failure;

    #[test]
    fn only_connection_level_failures_close_the_connection() {
        let io = sqlx::Error::Io(std::io::Error::other("reset"));
        assert!(is_connection_failure(&io));
        assert!(is_connection_failure(&sqlx::Error::Protocol("x".into())));
        assert!(!is_connection_failure(&sqlx::Error::RowNotFound));
        assert!(!is_connection_failure(&sqlx::Error::PoolTimedOut));
    }
}
