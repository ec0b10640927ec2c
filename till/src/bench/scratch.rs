//! The scratch database a benchmark runs in (`<database>_bench`): created fresh, migrated, and
//! dropped at the end, so benchmarks never touch real data. Also the raw-INSERT baseline every
//! benchmark measures next to its own figures.

use anyhow::Context;
use serde_json::json;
use sqlx::PgPool;
use sqlx::migrate::MigrateDatabase;
use uuid::Uuid;

use super::load::Recorder;
use super::report::Phase;

#[derive(Debug)]
pub struct ScratchDatabase {
    pub url: String,
    pub pool: PgPool,
}

impl ScratchDatabase {
    pub async fn create(max_connections: u32) -> anyhow::Result<Self> {
        let base = platform::settings::database_url();
        let name = format!(
            "{}_bench",
            base.rsplit('/')
                .next()
                .and_then(|s| s.split('?').next())
                .filter(|s| !s.is_empty())
                .unwrap_or("tillstream")
        );
        let url = platform::database::with_database_name(&base, &name);
        let _ = sqlx::Postgres::force_drop_database(&url).await;
        platform::database::create_and_migrate(&url).await?;
        let settings = platform::database::PoolSettings {
            max_connections,
            ..Default::default()
        };
        let pool = platform::database::connect(&url, &settings).await?;
        sqlx::query(
            "CREATE TABLE bench_baseline (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             event_id uuid NOT NULL, data jsonb NOT NULL, metadata jsonb NOT NULL)",
        )
        .execute(&pool)
        .await
        .context("creating the baseline table")?;
        Ok(Self { url, pool })
    }

    pub async fn drop_database(self) {
        self.pool.close().await;
        let _ = sqlx::Postgres::force_drop_database(&self.url).await;
    }
}

/// The payload of a typical command: an item added to a cart.
pub fn payload() -> serde_json::Value {
    json!({
        "cart_id": Uuid::new_v4(),
        "product_id": Uuid::new_v4(),
        "sku": "MUG-CLASSIC-350",
        "name": "Classic mug, 350 ml",
        "unit_price": { "amount": 1290, "currency": "EUR" },
        "added": 1,
        "quantity": 2
    })
}

/// Metadata as a user command carries it.
pub fn metadata() -> eventstore::Metadata {
    eventstore::Metadata {
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
        actor: Some("bench-shopper".into()),
        idempotency_key: None,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    }
}

/// A baseline worker: plain single-row INSERTs of the same payload, as fast as they go.
pub async fn baseline_worker(pool: PgPool, mut recorder: Recorder) -> anyhow::Result<Phase> {
    while recorder.running() {
        recorder
            .time(async {
                sqlx::query(
                    "INSERT INTO bench_baseline (event_id, data, metadata) VALUES ($1, $2, $3)",
                )
                .bind(Uuid::now_v7())
                .bind(payload())
                .bind(serde_json::to_value(metadata())?)
                .execute(&pool)
                .await?;
                Ok(0)
            })
            .await?;
    }
    Ok(recorder.finish())
}
