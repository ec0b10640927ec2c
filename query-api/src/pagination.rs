//! Keyset pagination: `limit` (1 to 100, default 20) and an opaque `cursor` naming the last
//! item of the previous page, so pages stay stable while items are added.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::problem::Problem;
use uuid::Uuid;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

pub fn limit(raw: Option<&str>) -> Result<i64, Problem> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| Problem::invalid_field("limit", format!("must be 1 to {MAX_LIMIT}"))),
    }
}

pub fn encode(last: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(last.as_bytes())
}

pub fn decode(raw: Option<&str>) -> Result<Option<Uuid>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        .map(Some)
        .ok_or_else(|| Problem::invalid_field("cursor", "is not a cursor this API returned"))
}

/// The next cursor: present only when the page was full.
pub fn next_cursor(ids: &[Uuid], limit: i64) -> Option<String> {
    if ids.len() as i64 == limit {
        ids.last().copied().map(encode)
    } else {
        None
    }
}
