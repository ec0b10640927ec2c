//! `Idempotency-Key` bookkeeping, in the transaction that appends the command's events.
//!
//! A transaction-scoped advisory lock on (principal, key) tells a concurrent duplicate that the
//! first request is still running (409) without waiting for it, and disappears with the
//! transaction, so a crash never leaves a key stuck. The stored response is written with the
//! events: either both exist or neither.

use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<serde_json::Value>,
}

/// request_hash, status, headers, body
type StoredRow = (
    Vec<u8>,
    i16,
    sqlx::types::Json<Vec<(String, String)>>,
    Option<serde_json::Value>,
);

/// What a key says about the request that carries it.
#[derive(Debug)]
pub enum Claim {
    /// First use: go ahead, then [`save`] the response in the same transaction.
    Acquired,
    /// The same request was answered before: send this again.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Mismatch,
    /// A request with this key is being handled right now.
    InProgress,
}

pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    principal: &str,
    key: &str,
    request_hash: &[u8],
) -> Result<Claim, sqlx::Error> {
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 7201))")
            .bind(format!("{principal}\n{key}"))
            .fetch_one(&mut **tx)
            .await?;
    if !locked {
        return Ok(Claim::InProgress);
    }
    let stored: Option<StoredRow> = sqlx::query_as(
        "SELECT request_hash, status, headers, body FROM commands.idempotency_keys \
             WHERE principal = $1 AND key = $2",
    )
    .bind(principal)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match stored {
        None => Claim::Acquired,
        Some((hash, _, _, _)) if hash != request_hash => Claim::Mismatch,
        Some((_, status, headers, body)) => Claim::Replay(StoredResponse {
            status: u16::try_from(status).unwrap_or(500),
            headers: headers.0,
            body,
        }),
    })
}

pub async fn save(
    tx: &mut Transaction<'_, Postgres>,
    principal: &str,
    key: &str,
    request_hash: &[u8],
    response: &StoredResponse,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO commands.idempotency_keys (principal, key, request_hash, status, headers, body) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(principal)
    .bind(key)
    .bind(request_hash)
    .bind(i16::try_from(response.status).unwrap_or(500))
    .bind(sqlx::types::Json(&response.headers))
    .bind(&response.body)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
