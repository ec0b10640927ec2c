//! Migration 0007 moved order lines and history from side tables into the order's row, and
//! 0010 stores them as text. An orders version built before either must come out with every
//! line and history entry in place, in order, in the shape the API serves.

use serde_json::{Value, json};
use testkit::TestDatabase;

#[tokio::test]
async fn an_orders_version_from_before_0007_keeps_its_lines_and_history() {
    let db = TestDatabase::new().await;
    // An orders version in the old shape, as migration 0003 made them.
    sqlx::raw_sql(
        "CREATE SCHEMA read_orders_v9;
         CREATE TABLE read_orders_v9.orders (
             order_id uuid PRIMARY KEY, customer_id text NOT NULL, cart_id uuid NOT NULL,
             status text NOT NULL, total_amount bigint NOT NULL, currency text NOT NULL,
             pay_by timestamptz, payment_id uuid, placed_at timestamptz NOT NULL,
             updated_at timestamptz NOT NULL, version bigint NOT NULL);
         CREATE TABLE read_orders_v9.order_lines (
             order_id uuid NOT NULL, line_no integer NOT NULL, product_id uuid NOT NULL,
             sku text NOT NULL, name text NOT NULL, unit_amount bigint NOT NULL,
             quantity integer NOT NULL, line_amount bigint NOT NULL, PRIMARY KEY (order_id, line_no));
         CREATE TABLE read_orders_v9.order_history (
             order_id uuid NOT NULL, version bigint NOT NULL, status text NOT NULL,
             event_type text NOT NULL, detail text, at timestamptz NOT NULL,
             PRIMARY KEY (order_id, version));
         INSERT INTO read_orders_v9.orders VALUES
             ('00000000-0000-0000-0000-00000000000a', 'alice', gen_random_uuid(), 'rejected',
              1250, 'EUR', NULL, NULL, now(), now(), 2),
             ('00000000-0000-0000-0000-00000000000b', 'bob', gen_random_uuid(), 'placed',
              100, 'EUR', NULL, NULL, now(), now(), 1);
         INSERT INTO read_orders_v9.order_lines VALUES
             ('00000000-0000-0000-0000-00000000000a', 2, '00000000-0000-0000-0000-0000000000f2',
              'MUG-2', 'Mug', 250, 1, 250),
             ('00000000-0000-0000-0000-00000000000a', 1, '00000000-0000-0000-0000-0000000000f1',
              'TEE-1', 'Tee', 500, 2, 1000);
         INSERT INTO read_orders_v9.order_history VALUES
             ('00000000-0000-0000-0000-00000000000a', 2, 'rejected', 'OrderRejected', 'out of stock',
              '2026-11-21T10:00:01Z'),
             ('00000000-0000-0000-0000-00000000000a', 1, 'placed', 'OrderPlaced', NULL,
              '2026-11-21T10:00:00Z');",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    apply_migration(&db, 7).await;

    let rows: Vec<(String, Value, Value)> = sqlx::query_as(
        "SELECT customer_id, lines, history FROM read_orders_v9.orders ORDER BY customer_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let (_, lines, history) = &rows[0];
    assert_eq!(
        lines,
        &json!([
            {"product_id": "00000000-0000-0000-0000-0000000000f1", "sku": "TEE-1", "name": "Tee",
             "unit_price": {"amount": 500, "currency": "EUR"}, "quantity": 2,
             "line_total": {"amount": 1000, "currency": "EUR"}},
            {"product_id": "00000000-0000-0000-0000-0000000000f2", "sku": "MUG-2", "name": "Mug",
             "unit_price": {"amount": 250, "currency": "EUR"}, "quantity": 1,
             "line_total": {"amount": 250, "currency": "EUR"}},
        ])
    );
    let history: Vec<(i64, &str, &str, Option<&str>)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["version"].as_i64().unwrap(),
                h["status"].as_str().unwrap(),
                h["event"].as_str().unwrap(),
                h["detail"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (1, "placed", "OrderPlaced", None),
            (2, "rejected", "OrderRejected", Some("out of stock")),
        ]
    );
    // An order with no lines or history stored gets empty arrays, and the side tables are gone.
    assert_eq!((&rows[1].1, &rows[1].2), (&json!([]), &json!([])));
    let side_tables: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('read_orders_v9.order_lines')::text")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(side_tables, None);
    // Projector and API read the history entries' timestamps back as chrono values.
    let entries: sqlx::types::Json<Vec<projectors::orders::HistoryEntry>> =
        sqlx::query_scalar("SELECT history FROM read_orders_v9.orders WHERE customer_id = 'alice'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(entries.0.len(), 2);
}

async fn apply_migration(db: &TestDatabase, version: i64) {
    let migration = eventstore_migrations::MIGRATOR
        .iter()
        .find(|m| m.version == version)
        .expect("the migration");
    sqlx::raw_sql(&migration.sql)
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_orders_version_from_before_0010_keeps_its_documents_as_text() {
    let db = TestDatabase::new().await;
    let lines = json!([{"product_id": "00000000-0000-0000-0000-0000000000f1", "sku": "TEE-1",
        "name": "Tee", "unit_price": {"amount": 500, "currency": "EUR"}, "quantity": 2,
        "line_total": {"amount": 1000, "currency": "EUR"}}]);
    let history = json!([{"version": 1, "status": "placed", "event": "OrderPlaced",
        "detail": null, "at": "2026-11-21T10:00:00Z"}]);
    // An orders version as migration 0007 made them: json documents.
    sqlx::raw_sql(
        "CREATE SCHEMA read_orders_v8;
         CREATE TABLE read_orders_v8.orders (
             order_id uuid PRIMARY KEY, customer_id text NOT NULL, cart_id uuid NOT NULL,
             status text NOT NULL, total_amount bigint NOT NULL, currency text NOT NULL,
             pay_by timestamptz, payment_id uuid, placed_at timestamptz NOT NULL,
             updated_at timestamptz NOT NULL, version bigint NOT NULL,
             lines json NOT NULL DEFAULT '[]', history json NOT NULL DEFAULT '[]');",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO read_orders_v8.orders VALUES (gen_random_uuid(), 'alice', gen_random_uuid(), \
         'placed', 1000, 'EUR', NULL, NULL, now(), now(), 1, $1::text::json, $2::text::json)",
    )
    .bind(lines.to_string())
    .bind(history.to_string())
    .execute(&db.pool)
    .await
    .unwrap();

    apply_migration(&db, 10).await;

    let types: Vec<String> = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns \
         WHERE table_schema = 'read_orders_v8' AND column_name IN ('lines', 'history')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(types, ["text", "text"]);
    let stored: (Value, Value) = sqlx::query_as(
        "SELECT lines::json, history::json FROM read_orders_v8.orders WHERE customer_id = 'alice'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, (lines, history));
}
