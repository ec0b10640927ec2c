//! The query string of a read: decoded into parameters, and refused (400 problem+json) when it
//! cannot be decoded or a parameter holds a control character. No parameter has a use for one,
//! and Postgres cannot even take a NUL in a text value: unchecked, `?q=%00` was a 500.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use platform::problem::Problem;

/// The query parameters, each name and value free of control characters.
#[derive(Debug, Default)]
pub struct Params(pub HashMap<String, String>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Query(params) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|e| Problem::bad_request("invalid-query", e.body_text()))?;
        if let Some(name) = params
            .iter()
            .find(|(name, value)| name.chars().chain(value.chars()).any(char::is_control))
            .map(|(name, _)| name)
        {
            return Err(Problem::bad_request(
                "invalid-query",
                format!("the query parameter {name:?} holds a control character"),
            ));
        }
        Ok(Self(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn params(uri: &str) -> Result<Params, Problem> {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri(uri)
            .body(())
            .expect("request")
            .into_parts();
        Params::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn parameters_decode_and_control_characters_are_refused() {
        let ok = params("/v1/products?q=blue%20mug&limit=5").await.unwrap();
        assert_eq!(ok.get("q"), Some("blue mug"));
        assert_eq!(ok.get("limit"), Some("5"));
        assert_eq!(params("/v1/products").await.unwrap().get("q"), None);
        for uri in [
            "/v1/products?q=%00",
            "/v1/products?a%07=1",
            "/v1/orders?status=%0A",
        ] {
            let refused = params(uri).await.expect_err(uri);
            assert_eq!(
                (refused.status, refused.code()),
                (400, "invalid-query"),
                "{uri}"
            );
        }
    }
}
