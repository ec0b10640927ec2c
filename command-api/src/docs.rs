//! What the OpenAPI document says about the write side beyond each handler's own
//! `#[utoipa::path]`: the headers every command takes and the shape of every command's answer.
//! The document itself is assembled from the same route list that serves (see
//! [`crate::routes`]), so a route cannot exist undocumented.

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Headers every command understands.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by the handlers' extractors, declared here for the document
pub struct CommandHeaders {
    /// The stream version the command expects (`"3"`, as in the `ETag` of an earlier answer):
    /// 412 when the stream has moved on.
    #[param(rename = "If-Match")]
    pub if_match: Option<String>,
    /// Makes a POST safe to retry: the same key and body answer the stored response, another
    /// body 422, a request still running 409. Scoped to the caller.
    #[param(rename = "Idempotency-Key")]
    pub idempotency_key: Option<String>,
}

/// A command's answer: the id(s) it concerns and the stream's new version (also in `ETag`; the
/// `X-Consistency-Token` header lets a following read wait for it).
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandOutcome {
    pub version: u64,
    pub product_id: Option<Uuid>,
    pub cart_id: Option<Uuid>,
    pub order_id: Option<Uuid>,
    pub payment_id: Option<Uuid>,
    pub refund_id: Option<Uuid>,
    /// Units free to sell after a stock adjustment.
    pub available: Option<i64>,
}
