//! Named positions in the global log, for readers that must resume where they stopped (the
//! relay, a rebuild). Saving takes any executor so a reader can save its checkpoint in the same
//! transaction as the work the checkpoint stands for.

use sqlx::{Executor, Postgres};

use crate::model::LogPosition;

/// The saved position of reader `name`, or `None` if it never saved one.
pub async fn load_checkpoint<'e>(
    executor: impl Executor<'e, Database = Postgres>,
    name: &str,
) -> Result<Option<LogPosition>, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT transaction_id, position FROM eventstore.checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|(transaction_id, position)| LogPosition {
        transaction_id: transaction_id as u64,
        position,
    }))
}

/// Saves reader `name`'s position. It only ever moves forward: saving an older position (a
/// slow duplicate worker) leaves the newer one in place.
pub async fn save_checkpoint<'e>(
    executor: impl Executor<'e, Database = Postgres>,
    name: &str,
    at: LogPosition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO eventstore.checkpoints (name, transaction_id, position) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE \
           SET transaction_id = EXCLUDED.transaction_id, position = EXCLUDED.position, \
               updated_at = now() \
         WHERE (eventstore.checkpoints.transaction_id, eventstore.checkpoints.position) \
             < (EXCLUDED.transaction_id, EXCLUDED.position)",
    )
    .bind(name)
    .bind(at.transaction_id as i64)
    .bind(at.position)
    .execute(executor)
    .await?;
    Ok(())
}
