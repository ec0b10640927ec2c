//! The JSON body of a command: parsed strictly, with errors that name the field, and hashed so
//! an `Idempotency-Key` can tell "the same request again" from "another request".

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, header};
use domain::values::Money;
use platform::problem::Problem;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

/// Largest command body accepted (the gateway enforces the same limit first).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A parsed command body and the hash of the request it came in.
#[derive(Debug)]
pub struct CommandBody<T> {
    pub value: T,
    pub request_hash: Vec<u8>,
}

/// The hash identifying a request for idempotency: method, path and body bytes.
pub fn request_hash(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(method.as_str().as_bytes());
    hasher.update([0]);
    hasher.update(path.as_bytes());
    hasher.update([0]);
    hasher.update(body);
    hasher.finalize().to_vec()
}

impl<S, T> FromRequest<S> for CommandBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let is_json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json")
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            });
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                Problem::payload_too_large(MAX_BODY_BYTES)
            } else {
                Problem::bad_request("unreadable-body", e.body_text())
            }
        })?;
        if !is_json {
            return Err(Problem::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .with_detail("send the body as application/json"));
        }
        let value = parse_json(&bytes)?;
        Ok(Self {
            value,
            request_hash: request_hash(&method, &path, &bytes),
        })
    }
}

/// An optional JSON body: absent (empty) is `None`; present must be valid JSON of `T`.
#[derive(Debug)]
pub struct OptionalBody<T> {
    pub value: Option<T>,
    pub request_hash: Vec<u8>,
}

impl<S, T> FromRequest<S> for OptionalBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|_| Problem::payload_too_large(MAX_BODY_BYTES))?;
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            Some(parse_json(&bytes)?)
        };
        Ok(Self {
            value,
            request_hash: request_hash(&method, &path, &bytes),
        })
    }
}

/// Parses JSON: a syntax error is 400; a shape error (wrong type, missing or unknown field) is
/// 422 naming the field by its path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    Err(Problem::bad_request(
                        "malformed-json",
                        format!("the body is not valid JSON: {inner}"),
                    ))
                }
                _ => {
                    let field = if field == "." {
                        "body".to_owned()
                    } else {
                        field
                    };
                    Err(Problem::invalid_field(
                        field,
                        strip_position(&inner.to_string()),
                    ))
                }
            }
        }
    }
}

/// serde_json appends " at line 1 column 42"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        product_id: uuid::Uuid,
        quantity: i64,
    }

    #[test]
    fn syntax_errors_are_400_and_shape_errors_name_the_field() {
        let syntax = parse_json::<Item>(b"{\"quantity\": ").unwrap_err();
        assert_eq!((syntax.status, syntax.code()), (400, "malformed-json"));

        let wrong_type = parse_json::<Item>(
            br#"{"product_id":"00000000-0000-0000-0000-000000000000","quantity":"two"}"#,
        )
        .unwrap_err();
        assert_eq!(wrong_type.status, 422);
        assert_eq!(wrong_type.errors[0].field, "quantity");

        let unknown = parse_json::<Item>(
            br#"{"product_id":"00000000-0000-0000-0000-000000000000","quantity":1,"price":1}"#,
        )
        .unwrap_err();
        assert_eq!(unknown.status, 422);
        assert!(
            unknown.errors[0].reason.contains("unknown field `price`"),
            "{unknown:?}"
        );

        let missing = parse_json::<Item>(br#"{"quantity":1}"#).unwrap_err();
        assert_eq!(missing.status, 422);
        assert!(
            missing.errors[0].reason.contains("product_id"),
            "{missing:?}"
        );
    }
}

/// An amount of money in a body: `{amount, currency}`, minor units and an ISO 4217 code.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// Named apart from the views' `Money`: a request's money refuses unknown fields.
#[schema(as = MoneyInput)]
pub struct MoneyBody {
    /// Minor units (cents for EUR).
    pub amount: i64,
    /// ISO 4217, e.g. `EUR`.
    pub currency: String,
}

impl MoneyBody {
    /// The money, or a 422 naming `<field>.amount` or `<field>.currency`.
    pub fn parse(&self, field: &str) -> Result<Money, Problem> {
        Money::price(self.amount, &self.currency).map_err(|e| {
            let part = if e.field == "currency" {
                "currency"
            } else {
                "amount"
            };
            Problem::invalid_field(format!("{field}.{part}"), e.reason)
        })
    }
}
