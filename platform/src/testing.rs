//! Throwaway databases for integration tests.
//!
//! Each [`TestDatabase`] is a new database with a random name on the server of `DATABASE_URL`
//! (default: the local Postgres), migrated, and dropped again when the value is dropped, so
//! tests run in parallel and can run twice in a row.

use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;

use crate::database::{PoolSettings, connect, create_and_migrate, with_database_name};
use crate::settings::database_url;

/// A migrated database of its own; dropped (with any open connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates and migrates a fresh database. Panics with a clear message if Postgres is down,
    /// which is what a test wants.
    pub async fn new() -> Self {
        Self::with_pool_size(16).await
    }

    pub async fn with_pool_size(max_connections: u32) -> Self {
        let name = format!("tillstream_test_{}", uuid::Uuid::new_v4().simple());
        let url = with_database_name(&database_url(), &name);
        create_and_migrate(&url)
            .await
            .expect("create the test database");
        let settings = PoolSettings {
            max_connections,
            ..PoolSettings::default()
        };
        let pool = connect(&url, &settings)
            .await
            .expect("connect to the test database");
        Self { url, pool }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let url = self.url.clone();
        // Drop runs outside async; a short-lived runtime on its own thread does the cleanup.
        // The pool is not closed from there: its connections belong to the test's runtime,
        // which is blocked in this drop. `DROP DATABASE … WITH (FORCE)` ends them instead.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = sqlx::Postgres::force_drop_database(&url).await;
            });
        })
        .join();
    }
}
