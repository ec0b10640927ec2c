//! What the OpenAPI document says about the read side beyond each handler's own
//! `#[utoipa::path]`: the query parameters and headers reads take, and the shape of the views
//! the handlers assemble from columns (a product, an order, the lists). Views the projectors
//! store whole (carts, order lines, history, payments, refunds) are described by their own
//! types in `projectors`. The contract fuzzing in CI checks every answer against the document,
//! which is made from the same route list that serves, so a route cannot exist undocumented.

#![allow(dead_code)] // the types exist for the document; nothing constructs them

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub use projectors::MoneyView as Money;
pub use projectors::carts::CartView;
use projectors::orders::{HistoryEntry, OrderLineView, PaymentView, RefundView, ShipmentView};

/// Headers every read understands.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ReadHeaders {
    /// The `X-Consistency-Token` of an earlier command: the read waits (briefly) until the view
    /// shows that write. A token for a stream the caller may not read, or that does not exist,
    /// is ignored.
    #[param(rename = "X-Consistency-Token")]
    pub consistency_token: Option<String>,
    /// An `ETag` from an earlier answer: 304 when the view has not changed.
    #[param(rename = "If-None-Match")]
    pub if_none_match: Option<String>,
}

/// Keyset pagination.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// 1 to 100 items (default 20).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Catalog search.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductSearch {
    /// Full-text search in name, description and SKU (web search syntax), at most 200 characters.
    pub q: Option<String>,
    /// A category slug.
    pub category: Option<String>,
}

/// A status to filter by.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusFilter {
    /// Only items in this status (`open` or `checked_out` for carts; an order status for orders).
    pub status: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductView {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub image_urls: Vec<String>,
    pub price: Money,
    /// Units free to sell.
    pub available: i64,
    pub discontinued: bool,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductView>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryCount {
    pub category: String,
    /// Products on sale in it.
    pub products: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryList {
    pub items: Vec<CategoryCount>,
}

/// Who the token says the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub user_id: String,
    pub roles: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CartList {
    pub items: Vec<CartView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderSummary {
    pub order_id: Uuid,
    pub customer_id: String,
    pub cart_id: Uuid,
    /// `placed`, `stock_reserved`, `awaiting_payment`, `payment_pending`, `payment_declined`,
    /// `paid`, `shipped`, `delivered`, `rejected`, `expired`, `cancelled` or `refunded`.
    pub status: String,
    pub total: Money,
    /// When an unpaid order expires.
    pub pay_by: Option<DateTime<Utc>>,
    /// The payment with the provider, or the one that captured.
    pub payment_id: Option<Uuid>,
    pub placed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderSummary>,
    pub next_cursor: Option<String>,
}

/// An order with its lines, history, shipment, delivery, payments and refunds.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderView {
    #[serde(flatten)]
    pub summary: OrderSummary,
    pub lines: Vec<OrderLineView>,
    pub history: Vec<HistoryEntry>,
    pub shipment: Option<ShipmentView>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub payments: Vec<PaymentView>,
    pub refunds: Vec<RefundView>,
}

/// One stored event of an order's stream, upcast to its current shape, without secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredEvent {
    pub version: u64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEvents {
    pub order_id: Uuid,
    pub items: Vec<StoredEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Checkpoint {
    pub transaction_id: i64,
    pub position: i64,
}

/// A projection: which version serves, how far it is, how far behind.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    pub serving_version: i32,
    /// The version a rebuild is filling, if one runs.
    pub rebuilding_version: Option<i32>,
    pub checkpoint: Checkpoint,
    pub events_applied: i64,
    pub head_position: i64,
    pub lag_events: i64,
    pub lag_seconds: f64,
    /// The newest rebuild asked for over HTTP, running or finished; `null` if none was.
    pub rebuild: Option<RebuildView>,
}

/// A rebuild asked for with `POST /v1/admin/projections/{name}/rebuild`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildView {
    pub id: Uuid,
    /// `requested` (waiting for a projectors replica), `running`, `rebuilt` or `failed`.
    pub state: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The projection's events when it started; `events_done` of them are in the new version.
    pub events_total: Option<i64>,
    pub events_done: i64,
    /// Since it started (until it finished).
    pub events_per_second: Option<f64>,
    /// The version it builds; serving once `rebuilt`.
    pub version: Option<i32>,
    /// Why it failed.
    pub error: Option<String>,
}

/// The relay and every consumer, as the event store and the broker count them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerOverview {
    pub relay: RelayStatus,
    pub consumers: Vec<ConsumerStatus>,
}

/// How far the relay has published the global log.
#[derive(Debug, Serialize, ToSchema)]
pub struct RelayStatus {
    /// The last position it published and checkpointed.
    pub checkpoint: Checkpoint,
    /// The newest event's position.
    pub head_position: i64,
    /// Events recorded but not yet published.
    pub lag_events: i64,
}

/// One consumer (a projector or a process) and its queues.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerStatus {
    pub name: String,
    /// Work queues: 1, or `TILL_PARTITIONS`.
    pub partitions: u16,
    /// Messages ready in all its work queues.
    pub ready: u64,
    pub retrying: u32,
    pub dead_letters: u32,
    pub queues: Vec<QueueView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub queue: String,
    pub ready: u32,
    /// Workers subscribed (one active per partition, the others standing by).
    pub consumers: u32,
}

/// A consumer's dead letters, oldest first, left in place.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    pub consumer: String,
    /// All its dead letters, of which `items` shows up to `limit`.
    pub count: u32,
    pub items: Vec<DeadLetterView>,
}

/// A message a consumer gave up on.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// The event's id.
    pub message_id: Option<String>,
    pub routing_key: Option<String>,
    /// `retries-exhausted`, `permanent` or `undecodable`.
    pub reason: Option<String>,
    pub last_error: Option<String>,
    pub attempts: Option<u32>,
    pub dead_at: Option<String>,
    /// How often it was redriven already.
    pub redriven: u32,
    /// The event it carries (payment tokens left out); `null` if the body is not an event.
    pub event: Option<DeadEvent>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadEvent {
    pub event_id: Uuid,
    pub stream_id: String,
    pub version: u64,
    pub position: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
    pub trace_id: Option<String>,
}

/// How many dead letters an action moved or deleted.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterAction {
    pub consumer: String,
    /// Sent back to the consumer's queue (redrive).
    pub redriven: Option<u64>,
    /// Deleted (drop).
    pub dropped: Option<u64>,
}

/// How many dead letters to show.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterFilter {
    /// 1 to 100 (default 20).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionList {
    pub items: Vec<ProjectionStatus>,
}

/// Which part of the event log.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventLogFilter {
    /// Only streams of this type: `product`, `cart` or `order`.
    pub stream_type: Option<String>,
    /// Only events before this global position (the previous page's `next_before`).
    pub before: Option<i64>,
    /// 1 to 100 events (default 20).
    pub limit: Option<i64>,
}

/// Where an event came from.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventMetadataView {
    /// The W3C trace id of the request that appended it: find it in the traces.
    pub trace_id: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// Who sent the command, or the process that appended it.
    pub actor: Option<String>,
}

/// One event of the global log.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogEntry {
    pub position: i64,
    pub stream_id: String,
    pub version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub metadata: EventMetadataView,
}

/// A page of the global log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventLogPage {
    pub items: Vec<LogEntry>,
    /// Pass as `before` for the next (older) page; null on the last one.
    pub next_before: Option<i64>,
}

/// One event of a stream, with its data and metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    pub position: i64,
    pub version: u64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub data: serde_json::Value,
    pub metadata: EventMetadataView,
}

/// A stream's events, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvents {
    pub stream_id: String,
    pub items: Vec<StreamEvent>,
}
