//! The catalog: anyone may read it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chrono::{DateTime, Utc};
use domain::values::ProductId;
use platform::identity::MaybePrincipal;
use platform::problem::Problem;
use platform::read_models::PRODUCTS;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::docs::{CategoryList, Page, ProductPage, ProductSearch, ProductView, ReadHeaders};
use crate::params::Params;
use crate::routes::path_id;
use crate::{AppState, Audience, consistency, db_problem, list_etag, pagination, with_etag};

#[derive(Debug, sqlx::FromRow)]
struct ProductRow {
    product_id: Uuid,
    sku: String,
    name: String,
    description: String,
    category: String,
    price_amount: i64,
    currency: String,
    available: i64,
    discontinued: bool,
    version: i64,
    updated_at: DateTime<Utc>,
    image_urls: Value,
}

impl ProductRow {
    fn json(&self) -> Value {
        json!({
            "product_id": self.product_id,
            "sku": self.sku,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "image_urls": self.image_urls,
            "price": { "amount": self.price_amount, "currency": self.currency },
            "available": self.available,
            "discontinued": self.discontinued,
            "version": self.version,
            "updated_at": self.updated_at,
        })
    }
}

const COLUMNS: &str = "product_id, sku, name, description, category, price_amount, currency, \
available, discontinued, version, updated_at, image_urls::json AS image_urls";

/// Waits for product tokens, then returns the schema to read.
async fn serving_schema(state: &AppState, headers: &HeaderMap) -> Result<String, Problem> {
    consistency::serving_schema(
        state,
        headers,
        consistency::Readers::Anyone,
        consistency::ViewTable {
            projection: PRODUCTS,
            stream_type: ProductId::STREAM_TYPE,
            table: "products",
            id_column: "product_id",
            customer_column: None,
        },
    )
    .await
}

#[utoipa::path(
    get,
    path = "/v1/products",
    tag = "catalog",
    summary = "Browse and search the catalog",
    params(ProductSearch, Page, ReadHeaders),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "one page of products, by id", body = ProductPage),
        (status = 304, description = "not modified since the ETag sent in If-None-Match"),
        (status = 400, description = "a malformed parameter", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a parameter out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/products?q=&category=&limit=&cursor=`
pub async fn list(
    State(state): State<AppState>,
    _caller: MaybePrincipal,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let limit = pagination::limit(params.get("limit"))?;
    let after = pagination::decode(params.get("cursor"))?;
    let q = params.get("q").map(|q| q.trim()).filter(|q| !q.is_empty());
    if q.is_some_and(|q| q.len() > 200) {
        return Err(Problem::invalid_field(
            "q",
            "must be at most 200 characters",
        ));
    }
    let category = params
        .get("category")
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty());
    let schema = serving_schema(&state, &headers).await?;
    let rows: Vec<ProductRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM \"{schema}\".products \
         WHERE ($1::text IS NULL OR search @@ websearch_to_tsquery('simple', $1)) \
           AND ($2::text IS NULL OR category = $2) \
           AND ($3::uuid IS NULL OR product_id > $3) \
         ORDER BY product_id LIMIT $4"
    ))
    .bind(q)
    .bind(category)
    .bind(after)
    .bind(limit)
    .fetch_all(&state.pool)
    .await
    .map_err(db_problem)?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.product_id).collect();
    let body = json!({
        "items": rows.iter().map(ProductRow::json).collect::<Vec<_>>(),
        "next_cursor": pagination::next_cursor(&ids, limit),
    });
    Ok(with_etag(
        &headers,
        list_etag(&body),
        body,
        Audience::Everyone,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/products/{id}",
    tag = "catalog",
    summary = "A product",
    params(("id" = String, Path, description = "the product's id (a UUID)"), ReadHeaders),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "the product", body = ProductView),
        (status = 304, description = "not modified since the ETag sent in If-None-Match"),
        (status = 404, description = "no such product", body = Problem, content_type = "application/problem+json"),
    )
)]
/// `GET /v1/products/{id}`
pub async fn one(
    State(state): State<AppState>,
    _caller: MaybePrincipal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let id = path_id(&id, "product")?;
    let schema = serving_schema(&state, &headers).await?;
    let row: Option<ProductRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM \"{schema}\".products WHERE product_id = $1"
    ))
    .bind(id)
    .fetch_optional(&state.pool)
    .await
    .map_err(db_problem)?;
    let row = row.ok_or_else(|| Problem::not_found("product-not-found", "product not found"))?;
    Ok(with_etag(
        &headers,
        format!("\"{}\"", row.version),
        row.json(),
        Audience::Everyone,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/categories",
    tag = "catalog",
    summary = "Every category with products on sale, and how many",
    params(ReadHeaders),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "the categories", body = CategoryList),
        (status = 304, description = "not modified since the ETag sent in If-None-Match"),
    )
)]
/// `GET /v1/categories` — every category with products on sale, and how many.
pub async fn categories(
    State(state): State<AppState>,
    _caller: MaybePrincipal,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let schema = serving_schema(&state, &headers).await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT category, count(*) FROM \"{schema}\".products \
         WHERE NOT discontinued GROUP BY category ORDER BY category"
    ))
    .fetch_all(&state.pool)
    .await
    .map_err(db_problem)?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|(category, products)| json!({ "category": category, "products": products }))
        .collect();
    let body = json!({ "items": items });
    Ok(with_etag(
        &headers,
        list_etag(&body),
        body,
        Audience::Everyone,
    ))
}
