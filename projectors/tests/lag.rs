//! `read.lag`, behind the lag gauges and `GET /v1/admin/projections`: how many events of a
//! stream type a projection has not applied yet, the oldest one's time, and the head.

use eventstore::{EventStore, ExpectedVersion, LogPosition, Metadata, NewEvent};
use serde_json::json;
use testkit::TestDatabase;
use uuid::Uuid;

fn event() -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Noted".into(),
        data: json!({}),
        metadata: Metadata::default(),
    }
}

async fn lag(db: &TestDatabase, stream_type: &str, at: LogPosition) -> (i64, bool, i64) {
    let (events, oldest, head): (i64, Option<chrono::DateTime<chrono::Utc>>, i64) = sqlx::query_as(
        "SELECT lag_events, oldest_unapplied, head_position FROM read.lag($1, $2, $3)",
    )
    .bind(stream_type)
    .bind(at.transaction_id as i64)
    .bind(at.position)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    (events, oldest.is_some(), head)
}

#[tokio::test]
async fn lag_counts_only_the_types_unapplied_events_and_the_head_is_its_newest() {
    let db = TestDatabase::new().await;
    let store = EventStore::new(db.pool.clone());
    // carts and "cartel" (a type whose name starts with another's) interleaved.
    let mut carts = Vec::new();
    for _ in 0..3 {
        let cart = store
            .append(
                &format!("cart-{}", Uuid::new_v4()),
                ExpectedVersion::NoStream,
                &[event(), event()],
            )
            .await
            .unwrap();
        carts.extend(cart.positions);
        store
            .append(
                &format!("cartel-{}", Uuid::new_v4()),
                ExpectedVersion::NoStream,
                &[event()],
            )
            .await
            .unwrap();
    }
    let log = store.read_log(LogPosition::START, 100).await.unwrap();
    let at = |position: i64| {
        log.iter()
            .find(|e| e.position == position)
            .map(|e| e.log_position())
            .unwrap()
    };
    let newest_cart = *carts.last().unwrap();

    assert_eq!(
        lag(&db, "cart", LogPosition::START).await,
        (6, true, newest_cart)
    );
    // Applied up to the second cart's first event: three cart events are left.
    assert_eq!(lag(&db, "cart", at(carts[2])).await, (3, true, newest_cart));
    // Applied everything: nothing left, and the head is where it stands.
    assert_eq!(
        lag(&db, "cart", at(newest_cart)).await,
        (0, false, newest_cart)
    );
    assert_eq!(lag(&db, "cartel", LogPosition::START).await.0, 3);
    assert_eq!(lag(&db, "order", LogPosition::START).await, (0, false, 0));
}
