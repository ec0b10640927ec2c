//! The rebuild's binary COPY against the real Postgres: rows many chunks long arrive whole and
//! exact, and a COPY that fails part-way (a row that cannot be encoded, a duplicate key) inserts
//! nothing and leaves its connection ready for the next statement.

use projectors::copy::CopyRows;
use sqlx::{Connection, PgConnection};
use testkit::TestDatabase;

/// Rows of about 200 bytes: ten thousand are 2 MB, many of COPY's chunks.
const ROWS: i64 = 10_000;

fn document(id: i64) -> serde_json::Value {
    serde_json::json!({ "id": id, "text": format!("row {id} ").repeat(20), "quote": "\"é\"" })
}

async fn table(db: &TestDatabase) -> PgConnection {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE copied (id int8 PRIMARY KEY, name text, doc text)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn copy(conn: &mut PgConnection, ids: &[i64], fail_at: Option<i64>) -> sqlx::Result<u64> {
    CopyRows::copy(conn, "copied (id, name, doc)", 3, ids, |&id, rows| {
        if Some(id) == fail_at {
            return Err(serde::ser::Error::custom("this row cannot be encoded"));
        }
        rows.int8(id)
            .text(&format!("name {id}"))
            .json(&document(id))?;
        Ok(())
    })
    .await
}

async fn stored(conn: &mut PgConnection) -> Vec<(i64, String, serde_json::Value)> {
    sqlx::query_as::<_, (i64, String, String)>("SELECT id, name, doc FROM copied ORDER BY id")
        .fetch_all(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, name, doc)| (id, name, serde_json::from_str(&doc).unwrap()))
        .collect()
}

#[tokio::test]
async fn rows_many_chunks_long_arrive_whole_and_exact() {
    let db = TestDatabase::new().await;
    let mut conn = table(&db).await;
    let ids: Vec<i64> = (1..=ROWS).collect();
    assert_eq!(copy(&mut conn, &ids, None).await.unwrap(), ROWS as u64);
    let rows = stored(&mut conn).await;
    assert_eq!(rows.len(), ROWS as usize);
    for (id, name, doc) in rows {
        assert_eq!((name, doc), (format!("name {id}"), document(id)));
    }
}

#[tokio::test]
async fn a_copy_that_fails_part_way_inserts_nothing_and_leaves_the_connection_usable() {
    let db = TestDatabase::new().await;
    let mut conn = table(&db).await;
    let ids: Vec<i64> = (1..=ROWS).collect();

    // A row far past the first chunks cannot be encoded: the COPY is aborted.
    let failed = copy(&mut conn, &ids, Some(ROWS - 10)).await;
    assert!(matches!(failed, Err(sqlx::Error::Encode(_))), "{failed:?}");
    assert!(stored(&mut conn).await.is_empty());

    // A key stored already, met after many chunks: a unique violation, nothing inserted.
    sqlx::query("INSERT INTO copied VALUES ($1, 'there first', '{}')")
        .bind(ROWS - 10)
        .execute(&mut conn)
        .await
        .unwrap();
    match copy(&mut conn, &ids, None).await {
        Err(sqlx::Error::Database(e)) => assert!(e.is_unique_violation(), "{e}"),
        other => panic!("{other:?}"),
    }
    let rows = stored(&mut conn).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "there first");

    // And the same connection copies the rest.
    let rest: Vec<i64> = ids.iter().copied().filter(|&id| id != ROWS - 10).collect();
    assert_eq!(copy(&mut conn, &rest, None).await.unwrap(), ROWS as u64 - 1);
    assert_eq!(stored(&mut conn).await.len(), ROWS as usize);
}
