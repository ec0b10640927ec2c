//! RFC 9457 problem details: every error a Tillstream service answers is
//! `application/problem+json` with a stable `type` URI, a short `title`, the HTTP `status` and a
//! `detail` safe to show the caller. Infrastructure failures are answered with an opaque body;
//! their cause is logged once, where they are turned into a response.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Where problem types are documented; the last path segment is the stable code.
pub const TYPE_BASE: &str = "https://tillstream.dev/problems/";

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// A problem+json response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `https://tillstream.dev/problems/<code>`; the code is stable.
    #[serde(rename = "type")]
    #[schema(
        format = "uri",
        example = "https://tillstream.dev/problems/cart-not-found"
    )]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Each field that failed validation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldError>,
    #[serde(skip)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem with the stable `code` (e.g. `cart-not-found`).
    pub fn new(status: StatusCode, code: &str, title: &str) -> Self {
        Self {
            type_uri: format!("{TYPE_BASE}{code}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_field(mut self, field: impl Into<String>, reason: impl Into<String>) -> Self {
        self.errors.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn code(&self) -> &str {
        self.type_uri
            .strip_prefix(TYPE_BASE)
            .unwrap_or(&self.type_uri)
    }

    pub fn bad_request(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request").with_detail(detail)
    }

    /// 422 naming the field that broke its rule.
    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let (field, reason) = (field.into(), reason.into());
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "The request is not valid",
        )
        .with_detail(format!("{field}: {reason}"))
        .with_field(field, reason)
    }

    pub fn not_found(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, "Not found").with_detail(detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").with_detail(detail)
    }

    /// 401 with the `WWW-Authenticate` challenge RFC 6750 asks for.
    pub fn unauthorized(error: Option<&str>, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let challenge = match error {
            Some(error) => format!(
                "Bearer realm=\"tillstream\", error=\"{error}\", error_description=\"{}\"",
                detail.replace('"', "'")
            ),
            None => "Bearer realm=\"tillstream\"".to_owned(),
        };
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
            .with_detail(detail)
            .with_header(header::WWW_AUTHENTICATE, &challenge)
    }

    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .with_detail(format!("retry after {retry_after_secs} s"))
        .with_header(header::RETRY_AFTER, &retry_after_secs.to_string())
    }

    pub fn payload_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
        )
        .with_detail(format!("the body must be at most {limit_bytes} bytes"))
    }

    pub fn service_unavailable(code: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, "Service unavailable").with_detail(detail)
    }

    /// A failure on our side, logged once here with its whole chain. When the chain says a
    /// dependency is unreachable or restarting ([`is_outage`]) it is a 503 the client may retry
    /// after `Retry-After`; anything else is a 500 with an opaque body.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> Self {
        if is_outage(cause) {
            return Self::unavailable(cause);
        }
        tracing::error!(error = %error_chain(cause), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
        .with_detail("something went wrong on our side; it has been logged")
    }

    /// 503 with `Retry-After`: a dependency (Postgres, Redis) is unavailable or restarting.
    /// Nothing was changed that a retry would repeat: commands append in one transaction, and a
    /// retry with the same `Idempotency-Key` completes once.
    pub fn unavailable(cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %error_chain(cause), "dependency unavailable");
        metrics::counter!("http_dependency_unavailable_total").increment(1);
        Self::service_unavailable(
            "dependency-unavailable",
            "a service this request needs is unavailable or restarting; retry shortly",
        )
        .with_header(header::RETRY_AFTER, OUTAGE_RETRY_AFTER_SECS)
    }
}

/// What an outage answer tells clients to wait before retrying, in seconds.
pub const OUTAGE_RETRY_AFTER_SECS: &str = "2";

/// An error and its sources, as one line (`outer: inner: innermost`), for logs and for
/// operators reading a failure.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        chain.push_str(": ");
        chain.push_str(&next.to_string());
        source = next.source();
    }
    chain
}

/// Whether an error (or one of its sources) says a dependency could not be reached or is going
/// away (connection refused or reset, pool exhausted waiting for one, a server shutting down or
/// starting up), rather than that something is wrong with the request or the data.
pub fn is_outage(cause: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(cause), |e| e.source()).any(|e| {
        if let Some(e) = e.downcast_ref::<sqlx::Error>() {
            return is_database_outage(e);
        }
        // Every I/O a service does on a request's behalf is talking to a dependency.
        e.is::<std::io::Error>()
    })
}

fn is_database_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        // A connection that broke mid-message.
        | sqlx::Error::Protocol(_) => true,
        // SQLSTATE 08: connection exception; 57P01-57P03: admin or crash shutdown, cannot
        // connect now (starting up); 53300: too many connections.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P") || code == "53300"),
        _ => false,
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        (status, headers, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping another, as the event store's and the services' errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("appending failed")]
    struct Wrapped(#[source] sqlx::Error);

    #[test]
    fn outages_are_503_with_retry_after_and_everything_else_500() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        for outage in [
            Problem::internal(&sqlx::Error::PoolTimedOut),
            Problem::internal(&Wrapped(sqlx::Error::Io(refused))),
            Problem::internal(&Wrapped(sqlx::Error::PoolClosed)),
        ] {
            assert_eq!(outage.status, 503);
            assert_eq!(outage.code(), "dependency-unavailable");
            assert!(
                outage
                    .headers
                    .iter()
                    .any(|(name, value)| name == header::RETRY_AFTER && value == "2")
            );
        }
        for bug in [
            Problem::internal(&sqlx::Error::RowNotFound),
            Problem::internal(&Wrapped(sqlx::Error::ColumnNotFound("x".into()))),
        ] {
            assert_eq!((bug.status, bug.code()), (500, "internal"));
        }
    }
}
