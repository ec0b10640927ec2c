//! Connecting to Postgres: create the database if it is missing, apply the migrations, and say
//! clearly which dependency is unreachable and how to start it.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};

use crate::settings::redact;

/// How to start Postgres when it is not running, for error messages.
const START_POSTGRES: &str = "start it with `pg_ctlcluster $(ls /etc/postgresql) main start` \
(or `docker compose up -d postgres`), or point DATABASE_URL at a running server";

/// A pooled connection idle for this long is pinged before it is handed out again.
const CHECK_CONNECTIONS_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pooled connection idle for this long is closed.
pub const IDLE_CONNECTIONS_CLOSED_AFTER: Duration = Duration::from_secs(30);

/// Pool sizing and timeouts for a service.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// Plan each prepared statement once (`plan_cache_mode = force_generic_plan`). For pools
    /// whose statements are all keyed lookups and appends, such as the write side's: Postgres
    /// otherwise re-plans every execution of a statement that unnests array parameters (its
    /// generic plan's row estimate never wins), and under `till bench write` that planning
    /// was a third of Postgres's CPU time. Not for pools that run optional-filter queries
    /// (`$1 IS NULL OR …`), whose generic plans cannot use an index.
    pub generic_plans: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            generic_plans: false,
        }
    }
}

/// Creates the database if it does not exist and applies every migration. Safe to repeat.
pub async fn create_and_migrate(url: &str) -> anyhow::Result<()> {
    let exists = Postgres::database_exists(url)
        .await
        .map_err(|e| unreachable_error(url, e))?;
    if !exists {
        // Two processes may race to create it; losing that race is fine.
        if let Err(e) = Postgres::create_database(url).await
            && !Postgres::database_exists(url).await.unwrap_or(false)
        {
            return Err(e).with_context(|| format!("creating the database at {}", redact(url)));
        }
        tracing::info!(url = %redact(url), "created database");
    }
    let pool = connect(
        url,
        &PoolSettings {
            max_connections: 2,
            ..PoolSettings::default()
        },
    )
    .await?;
    eventstore_migrations::MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("migrating the database at {}", redact(url)))?;
    pool.close().await;
    Ok(())
}

/// Connects a pool and checks that the server answers.
pub async fn connect(url: &str, settings: &PoolSettings) -> anyhow::Result<PgPool> {
    let mut options: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .with_context(|| format!("DATABASE_URL {} is not a valid Postgres URL", redact(url)))?;
    if settings.generic_plans {
        options = options.options([("plan_cache_mode", "force_generic_plan")]);
    }
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // sqlx pings every connection it hands out by default: a round trip to Postgres before
        // each statement, which under `till bench write` doubled the server's wake-ups per
        // command. Like HikariCP, only a connection that sat idle for a while is checked; a
        // busy one was proven alive by its last statement moments ago.
        .test_before_acquire(false)
        // An idle system gives its connections back (two replicas of everything share one
        // Postgres's max_connections).
        .min_connections(0)
        .idle_timeout(IDLE_CONNECTIONS_CLOSED_AFTER)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_CONNECTIONS_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(|e| unreachable_error(url, e))?;
    Ok(pool)
}

fn unreachable_error(url: &str, error: sqlx::Error) -> anyhow::Error {
    anyhow::Error::new(error).context(format!(
        "Postgres is not reachable at {}: {START_POSTGRES}",
        redact(url)
    ))
}

/// The same server URL with another database name, e.g. for a scratch or test database.
pub fn with_database_name(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{server}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::with_database_name;

    #[test]
    fn database_name_is_replaced_keeping_credentials_and_options() {
        assert_eq!(
            with_database_name("postgres://u:p@h:5432/app?sslmode=disable", "scratch"),
            "postgres://u:p@h:5432/scratch?sslmode=disable"
        );
        assert_eq!(
            with_database_name("postgres://h", "scratch"),
            "postgres://h/scratch"
        );
    }
}
