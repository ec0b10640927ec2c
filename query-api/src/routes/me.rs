//! `GET /v1/me`: who the token says the caller is — the user id every view is keyed by, and
//! the roles — so a client need not decode the token itself.

use crate::docs::Me;
use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use platform::identity::Principal;
use serde_json::json;

#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "identity",
    summary = "Who the caller is",
    responses(
        (status = 200, description = "the caller's id and roles", body = Me),
    )
)]
pub async fn me(principal: Principal) -> Response {
    (
        [(header::CACHE_CONTROL, "private, no-store")],
        Json(json!({ "user_id": principal.user_id, "roles": principal.roles })),
    )
        .into_response()
}
