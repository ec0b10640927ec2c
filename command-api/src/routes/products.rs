//! Catalog commands (admin only): create a product, change its price, adjust its stock,
//! discontinue it.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use domain::product::{NewProduct, Product, ProductCommand};
use domain::values::{Category, Description, ImageUrl, MAX_UNITS, ProductId, ProductName, Sku};
use platform::identity::Admin;
use platform::problem::Problem;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use crate::AppState;
use crate::body::{CommandBody, MoneyBody};
use crate::context::CommandContext;
use crate::docs::{CommandHeaders, CommandOutcome};
use crate::driver::{Reply, run};
use crate::error::invalid;
use crate::routes::path_id;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    pub sku: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub category: String,
    pub price: MoneyBody,
    pub stock: i64,
    #[serde(default)]
    pub image_urls: Vec<String>,
}

impl CreateProduct {
    fn parse(&self) -> Result<NewProduct, Problem> {
        let sku = Sku::parse(&self.sku).map_err(invalid)?;
        let stock = u32::try_from(self.stock)
            .ok()
            .filter(|s| *s <= MAX_UNITS)
            .ok_or_else(|| {
                Problem::invalid_field("stock", format!("must be between 0 and {MAX_UNITS}"))
            })?;
        Ok(NewProduct {
            product_id: ProductId::for_sku(&sku),
            sku,
            name: ProductName::parse(&self.name).map_err(invalid)?,
            description: Description::parse(&self.description).map_err(invalid)?,
            category: Category::parse(&self.category).map_err(invalid)?,
            price: self.price.parse("price")?,
            stock,
            image_urls: ImageUrl::parse_all(&self.image_urls).map_err(invalid)?,
        })
    }
}

#[utoipa::path(
    post,
    path = "/v1/products",
    tag = "catalog",
    summary = "Create a product (admin)",
    request_body = CreateProduct,
    params(CommandHeaders),
    responses(
        (status = 201, description = "created; Location names the product", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "a product with this SKU exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a field is invalid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ctx: CommandContext,
    body: CommandBody<CreateProduct>,
) -> Response {
    let new = match body.value.parse() {
        Ok(new) => new,
        Err(problem) => return problem.into_response(),
    };
    let product_id = new.product_id;
    run::<Product>(
        &state,
        &ctx,
        &body.request_hash,
        product_id.stream_id(),
        ProductCommand::Create(new),
        |_| {
            Reply::created(
                json!({ "product_id": product_id }),
                format!("/v1/products/{product_id}"),
            )
        },
    )
    .await
}

/// `PATCH /v1/products/{id}`: each field present replaces what the catalog says; absent ones
/// stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeDetails {
    pub name: Option<String>,
    pub description: Option<String>,
    pub category: Option<String>,
    pub image_urls: Option<Vec<String>>,
}

impl ChangeDetails {
    fn parse(&self) -> Result<ProductCommand, Problem> {
        if self.name.is_none()
            && self.description.is_none()
            && self.category.is_none()
            && self.image_urls.is_none()
        {
            return Err(Problem::invalid_field(
                "body",
                "send at least one of name, description, category, image_urls",
            ));
        }
        Ok(ProductCommand::ChangeDetails {
            name: self
                .name
                .as_deref()
                .map(ProductName::parse)
                .transpose()
                .map_err(invalid)?,
            description: (self
                .description
                .as_deref()
                .map(Description::parse)
                .transpose())
            .map_err(invalid)?,
            category: (self.category.as_deref().map(Category::parse).transpose())
                .map_err(invalid)?,
            image_urls: (self
                .image_urls
                .as_deref()
                .map(ImageUrl::parse_all)
                .transpose())
            .map_err(invalid)?,
        })
    }
}

#[utoipa::path(
    patch,
    path = "/v1/products/{id}",
    tag = "catalog",
    summary = "Change a product's name, description, category or pictures (admin)",
    request_body = ChangeDetails,
    params(("id" = String, Path, description = "the product's id (a UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "changed", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such product", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match names another version", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "a field is invalid", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change_details(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: CommandBody<ChangeDetails>,
) -> Response {
    let (product_id, command) = match (path_id(&id, "product"), body.value.parse()) {
        (Ok(id), Ok(command)) => (ProductId(id), command),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    run::<Product>(
        &state,
        &ctx,
        &body.request_hash,
        product_id.stream_id(),
        command,
        |_| Reply::ok(json!({ "product_id": product_id })),
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    pub price: MoneyBody,
}

#[utoipa::path(
    post,
    path = "/v1/products/{id}/price",
    tag = "catalog",
    summary = "Change a product's price (admin)",
    request_body = ChangePrice,
    params(("id" = String, Path, description = "the product's id (a UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "changed", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such product", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "the price is invalid or in another currency", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change_price(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: CommandBody<ChangePrice>,
) -> Response {
    let (product_id, price) = match (path_id(&id, "product"), body.value.price.parse("price")) {
        (Ok(id), Ok(price)) => (ProductId(id), price),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    run::<Product>(
        &state,
        &ctx,
        &body.request_hash,
        product_id.stream_id(),
        ProductCommand::ChangePrice { price },
        |_| Reply::ok(json!({ "product_id": product_id })),
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    /// Units to add (positive) or remove (negative).
    pub delta: i64,
}

#[utoipa::path(
    post,
    path = "/v1/products/{id}/stock",
    tag = "catalog",
    summary = "Add or remove units of stock (admin)",
    request_body = AdjustStock,
    params(("id" = String, Path, description = "the product's id (a UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "adjusted; `available` says what is free to sell", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such product", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "the adjustment is zero or out of range", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn adjust_stock(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: CommandBody<AdjustStock>,
) -> Response {
    let product_id = match path_id(&id, "product") {
        Ok(id) => ProductId(id),
        Err(p) => return p.into_response(),
    };
    run::<Product>(
        &state,
        &ctx,
        &body.request_hash,
        product_id.stream_id(),
        ProductCommand::AdjustStock {
            delta: body.value.delta,
        },
        |product| {
            let available = product.0.as_ref().map_or(0, |p| p.available);
            Reply::ok(json!({ "product_id": product_id, "available": available }))
        },
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/products/{id}/discontinue",
    tag = "catalog",
    summary = "Stop selling a product (admin)",
    params(("id" = String, Path, description = "the product's id (a UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "discontinued", body = CommandOutcome),
        (status = 403, description = "not an admin", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "no such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "already discontinued", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn discontinue(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ctx: CommandContext,
) -> Response {
    let product_id = match path_id(&id, "product") {
        Ok(id) => ProductId(id),
        Err(p) => return p.into_response(),
    };
    run::<Product>(
        &state,
        &ctx,
        &ctx.bodiless_request_hash,
        product_id.stream_id(),
        ProductCommand::Discontinue,
        |_| Reply::ok(json!({ "product_id": product_id })),
    )
    .await
}
