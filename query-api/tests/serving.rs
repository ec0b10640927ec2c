//! Serving versions remembered between reads, against the real Postgres: remembered only while
//! switches are heard, forgotten on a switch's notification, and asked for again while the
//! listening connection is down.

use std::sync::Arc;

use platform::read_models::SWITCHED_CHANNEL;
use query_api::serving::ServingVersions;
use testkit::{TestDatabase, eventually};
use tokio_util::sync::CancellationToken;

/// Sets the serving version of `projection` behind the readers' backs (no notification).
async fn set_quietly(db: &TestDatabase, projection: &str, version: i32) {
    set(&db.pool, projection, version).await;
}

/// Sets it as a rebuild's switch does: with the notification, in the same transaction.
async fn switch(db: &TestDatabase, projection: &str, version: i32) {
    let mut tx = db.pool.begin().await.unwrap();
    set(&mut *tx, projection, version).await;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(SWITCHED_CHANNEL)
        .bind(projection)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn set(executor: impl sqlx::PgExecutor<'_>, projection: &str, version: i32) {
    sqlx::query("UPDATE read.projections SET serving_version = $2 WHERE name = $1")
        .bind(projection)
        .bind(version)
        .execute(executor)
        .await
        .unwrap();
}

async fn listening(db: &TestDatabase, shutdown: &CancellationToken) -> Arc<ServingVersions> {
    let versions = Arc::new(ServingVersions::default());
    let (v, url, stop) = (versions.clone(), db.url.clone(), shutdown.clone());
    tokio::spawn(async move { v.listen(&url, stop).await });
    eventually("listening for switches", || async {
        versions.is_listening()
    })
    .await;
    versions
}

#[tokio::test]
async fn without_listening_every_read_asks_postgres() {
    let db = TestDatabase::new().await;
    let versions = Arc::new(ServingVersions::default());
    // Trying to listen where no Postgres answers: it keeps trying, and reads keep asking.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!(
        "postgres://postgres@{}/nothing",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let shutdown = CancellationToken::new();
    let (v, stop) = (versions.clone(), shutdown.clone());
    let trying = tokio::spawn(async move { v.listen(&nowhere, stop).await });
    assert_eq!(versions.get(&db.pool, "products").await.unwrap(), 1);
    set_quietly(&db, "products", 7).await;
    assert_eq!(versions.get(&db.pool, "products").await.unwrap(), 7);
    assert!(!versions.is_listening());
    // And it stops when told, even in the middle of trying.
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), trying)
        .await
        .expect("stopped at once")
        .unwrap();
}

#[tokio::test]
async fn a_remembered_version_holds_until_a_switch_is_heard() {
    let db = TestDatabase::new().await;
    let shutdown = CancellationToken::new();
    let versions = listening(&db, &shutdown).await;
    assert_eq!(versions.get(&db.pool, "products").await.unwrap(), 1);
    assert_eq!(versions.get(&db.pool, "orders").await.unwrap(), 1);
    // Not asked again: a change nobody announced goes unseen.
    set_quietly(&db, "products", 5).await;
    set_quietly(&db, "orders", 9).await;
    assert_eq!(versions.get(&db.pool, "products").await.unwrap(), 1);
    assert_eq!(versions.get(&db.pool, "orders").await.unwrap(), 1);
    // A switch is heard, and every projection's version is read afresh.
    switch(&db, "products", 2).await;
    eventually("the switch to be heard", || async {
        versions.get(&db.pool, "products").await.unwrap() == 2
    })
    .await;
    assert_eq!(versions.get(&db.pool, "orders").await.unwrap(), 9);
    shutdown.cancel();
}

#[tokio::test]
async fn a_lost_listening_connection_forgets_everything_and_listens_again() {
    let db = TestDatabase::new().await;
    let shutdown = CancellationToken::new();
    let versions = listening(&db, &shutdown).await;
    assert_eq!(versions.get(&db.pool, "products").await.unwrap(), 1);
    set_quietly(&db, "products", 3).await;

    // The listening session ends (a restart, a network cut): a switch then would go unheard.
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ended, [true], "one listening session");
    eventually("the lost connection to be noticed", || async {
        !versions.is_listening()
    })
    .await;
    // Nothing remembered is trusted now, nor once it listens again.
    assert_eq!(versions.get(&db.pool, "products").await.unwrap(), 3);
    eventually("listening again", || async { versions.is_listening() }).await;
    set_quietly(&db, "products", 4).await;
    assert_eq!(versions.get(&db.pool, "products").await.unwrap(), 4);
    shutdown.cancel();
}
