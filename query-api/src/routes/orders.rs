//! Orders: a customer sees their own, an admin sees all; anyone else is told an order does not
//! exist. An order's events come straight from the event store, minus secrets.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use domain::values::OrderId;
use platform::identity::Principal;
use platform::problem::Problem;
use platform::read_models::ORDERS;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::docs::{OrderEvents, OrderPage, OrderView, Page, ReadHeaders, StatusFilter};
use crate::params::Params;
use crate::routes::{path_id, shown_data};
use crate::{AppState, Audience, consistency, db_problem, list_etag, pagination, with_etag};

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    order_id: Uuid,
    customer_id: String,
    cart_id: Uuid,
    status: String,
    total_amount: i64,
    currency: String,
    pay_by: Option<DateTime<Utc>>,
    payment_id: Option<Uuid>,
    placed_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl OrderRow {
    fn json(&self) -> Value {
        json!({
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "cart_id": self.cart_id,
            "status": self.status,
            "total": { "amount": self.total_amount, "currency": self.currency },
            "pay_by": self.pay_by,
            "payment_id": self.payment_id,
            "placed_at": self.placed_at,
            "updated_at": self.updated_at,
            "version": self.version,
        })
    }
}

const COLUMNS: &str = "order_id, customer_id, cart_id, status, total_amount, currency, pay_by, \
payment_id, placed_at, updated_at, version";

fn not_found() -> Problem {
    Problem::not_found("order-not-found", "order not found")
}

async fn serving_schema(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<String, Problem> {
    consistency::serving_schema(
        state,
        headers,
        consistency::Readers::OwnerOrAdmin(principal),
        consistency::ViewTable {
            projection: ORDERS,
            stream_type: OrderId::STREAM_TYPE,
            table: "orders",
            id_column: "order_id",
            customer_column: Some("customer_id"),
        },
    )
    .await
}

#[utoipa::path(
    get,
    path = "/v1/orders",
    tag = "orders",
    summary = "The caller's orders (an admin: everyone's), newest first",
    params(StatusFilter, Page, ReadHeaders),
    responses(
        (status = 200, description = "one page of orders", body = OrderPage),
        (status = 304, description = "not modified since the ETag sent in If-None-Match"),
        (status = 400, description = "a malformed parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a parameter out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/orders?limit=&cursor=&status=` — newest first.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let limit = pagination::limit(params.get("limit"))?;
    let before = pagination::decode(params.get("cursor"))?;
    let status = params.get("status").filter(|s| !s.is_empty());
    let owner = (!principal.is_admin()).then_some(principal.user_id.as_str());
    let schema = serving_schema(&state, &principal, &headers).await?;
    let rows: Vec<OrderRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM \"{schema}\".orders \
         WHERE ($1::text IS NULL OR customer_id = $1) \
           AND ($2::text IS NULL OR status = $2) \
           AND ($3::uuid IS NULL OR order_id < $3) \
         ORDER BY order_id DESC LIMIT $4"
    ))
    .bind(owner)
    .bind(status)
    .bind(before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(db_problem)?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.order_id).collect();
    let body = json!({
        "items": rows.iter().map(OrderRow::json).collect::<Vec<_>>(),
        "next_cursor": pagination::next_cursor(&ids, limit),
    });
    Ok(with_etag(
        &headers,
        list_etag(&body),
        body,
        Audience::OneUser,
    ))
}

/// An order with its lines, status history and fulfilment, all stored in the API's shape by the
/// projector.
#[derive(Debug, sqlx::FromRow)]
struct OrderDetailRow {
    #[sqlx(flatten)]
    row: OrderRow,
    lines: Value,
    history: Value,
    fulfilment: Value,
}

/// The fulfilment document's parts, and what an order shows for a part its stored document
/// leaves out: the projector stores only the parts that are not empty, and rows written before
/// fulfilment was projected hold `{}`.
const FULFILMENT: [(&str, Value); 4] = [
    ("shipment", Value::Null),
    ("delivered_at", Value::Null),
    ("payments", Value::Array(Vec::new())),
    ("refunds", Value::Array(Vec::new())),
];

#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "orders",
    summary = "An order with its lines, history, shipment, payments and refunds",
    params(("id" = String, Path, description = "the order's id (a UUID)"), ReadHeaders),
    responses(
        (status = 200, description = "the order", body = OrderView),
        (status = 304, description = "not modified since the ETag sent in If-None-Match"),
        (status = 404, description = "no such order, or not the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/orders/{id}` — with lines, status history, shipment, delivery, payments and refunds.
pub async fn one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path_id(&id, "order")?;
    let schema = serving_schema(&state, &principal, &headers).await?;
    let OrderDetailRow {
        row,
        lines,
        history,
        mut fulfilment,
    } = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, lines::json AS lines, history::json AS history, \
                fulfilment::json AS fulfilment \
         FROM \"{schema}\".orders WHERE order_id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(db_problem)?
    .ok_or_else(not_found)?;
    if !principal.is_admin() && row.customer_id != principal.user_id {
        return Err(not_found());
    }
    let mut body = row.json();
    body["lines"] = lines;
    body["history"] = history;
    for (part, absent) in FULFILMENT {
        body[part] = fulfilment.get_mut(part).map_or(absent, Value::take);
    }
    Ok(with_etag(
        &headers,
        format!("\"{}\"", row.version),
        body,
        Audience::OneUser,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/orders/{id}/events",
    tag = "orders",
    summary = "The order's own events, oldest first",
    params(("id" = String, Path, description = "the order's id (a UUID)")),
    responses(
        (status = 200, description = "the events", body = OrderEvents),
        (status = 404, description = "no such order, or not the caller's", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/orders/{id}/events` — the order's own stream, read through the event store (so
/// every event is upcast to its current shape).
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = path_id(&id, "order")?;
    let events = state
        .store
        .read_stream(&OrderId(id).stream_id(), 0)
        .await
        .map_err(|e| Problem::internal(&e))?;
    let first = events.first().map(|e| e.data.to_value());
    let owner = first.as_ref().and_then(|data| data["customer_id"].as_str());
    let allowed = principal.is_admin() || owner == Some(principal.user_id.as_str());
    if events.is_empty() || !allowed {
        return Err(not_found());
    }
    let items: Vec<Value> = events
        .into_iter()
        .map(|event| {
            json!({
                "version": event.version,
                "event_id": event.event_id,
                "type": event.event_type,
                "data": shown_data(&event),
                "recorded_at": event.recorded_at,
            })
        })
        .collect();
    Ok(axum::response::IntoResponse::into_response(axum::Json(
        json!({ "order_id": id, "items": items }),
    )))
}
