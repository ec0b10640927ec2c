//! Everything a command carries besides its body: who sends it, `If-Match`, `Idempotency-Key`
//! and the tracing context that goes into the events' metadata.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use domain::values::{Actor, CustomerId};
use eventstore::Metadata;
use platform::identity::{JwtVerifier, Principal};
use platform::problem::Problem;
use uuid::Uuid;

use crate::body::request_hash;

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Debug, Clone)]
pub struct CommandContext {
    pub principal: Principal,
    pub actor: Actor,
    /// `If-Match`: the version the client last saw.
    pub expected_version: Option<u64>,
    pub idempotency_key: Option<String>,
    pub metadata: Metadata,
    /// Hash of a bodiless request (method and path), for idempotency.
    pub bodiless_request_hash: Vec<u8>,
}

impl<S> FromRequestParts<S> for CommandContext
where
    S: Send + Sync,
    Arc<JwtVerifier>: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let customer = CustomerId::parse(&principal.user_id).map_err(|_| {
            Problem::unauthorized(Some("invalid_token"), "the token's user id is not usable")
        })?;
        let actor = Actor {
            id: customer,
            is_admin: principal.is_admin(),
        };
        let expected_version = if_match(&parts.headers)?;
        let idempotency_key = idempotency_key(&parts.headers)?;
        let request_id = header_str(&parts.headers, "x-request-id");
        let correlation_id = request_id
            .and_then(|id| Uuid::parse_str(id).ok())
            .unwrap_or_else(Uuid::now_v7);
        let metadata = Metadata {
            correlation_id: Some(correlation_id),
            causation_id: Some(correlation_id),
            actor: Some(principal.user_id.clone()),
            idempotency_key: idempotency_key.clone(),
            // The events continue the trace of the request that caused them (its span here,
            // or what the caller sent when nothing traces this process).
            traceparent: platform::telemetry::current_traceparent()
                .or_else(|| header_str(&parts.headers, "traceparent").map(str::to_owned)),
        };
        Ok(Self {
            bodiless_request_hash: request_hash(&parts.method, parts.uri.path(), b""),
            principal,
            actor,
            expected_version,
            idempotency_key,
            metadata,
        })
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `If-Match: "7"` (or `7`, or `W/"7"`) → expected version 7.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = raw.to_str().unwrap_or_default().trim();
    let unquoted = text.trim_start_matches("W/").trim_matches('"');
    unquoted.parse::<u64>().map(Some).map_err(|_| {
        Problem::bad_request(
            "invalid-if-match",
            "If-Match must be the ETag of a previous response, e.g. \"3\"",
        )
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw.to_str().unwrap_or_default().trim();
    let valid = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(Problem::bad_request(
            "invalid-idempotency-key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        ));
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn if_match_accepts_etag_forms_and_refuses_garbage() {
        let mut h = HeaderMap::new();
        assert_eq!(if_match(&h).unwrap(), None);
        for (raw, v) in [("\"7\"", 7), ("7", 7), ("W/\"7\"", 7)] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(raw));
            assert_eq!(if_match(&h).unwrap(), Some(v));
        }
        h.insert(header::IF_MATCH, HeaderValue::from_static("\"abc\""));
        assert_eq!(if_match(&h).unwrap_err().status, 400);
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", HeaderValue::from_static("order-42"));
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("order-42"));
        h.insert("idempotency-key", HeaderValue::from_static("has space"));
        assert!(idempotency_key(&h).is_err());
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY + 1);
        h.insert("idempotency-key", HeaderValue::from_str(&long).unwrap());
        assert!(idempotency_key(&h).is_err());
    }
}
