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
