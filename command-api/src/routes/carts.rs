//! Cart commands (the cart's owner only): open a cart, add, change and remove items, check out.
//! Prices and names come from the product's stream at the time of the command, never from the
//! request.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use domain::Aggregate;
use domain::cart::{Cart, CartCommand, CatalogEntry};
use domain::checkout;
use domain::product::Product;
use domain::values::{CartId, OrderId, ProductId, Quantity};
use platform::problem::Problem;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::body::CommandBody;
use crate::context::CommandContext;
use crate::docs::{CommandHeaders, CommandOutcome};
use crate::driver::{Plan, Reads, Reply, Write, execute, run};
use crate::error::{invalid, rejection_problem};
use crate::routes::path_id;

#[utoipa::path(
    post,
    path = "/v1/carts",
    tag = "carts",
    summary = "Open a cart for the caller",
    params(CommandHeaders),
    responses(
        (status = 201, description = "opened; Location names the cart", body = CommandOutcome),
    )
)]
pub async fn create(State(state): State<AppState>, ctx: CommandContext) -> Response {
    let cart_id = CartId(Uuid::now_v7());
    run::<Cart>(
        &state,
        &ctx,
        &ctx.bodiless_request_hash,
        cart_id.stream_id(),
        CartCommand::Create {
            cart_id,
            owner: ctx.actor.id.clone(),
        },
        |_| {
            Reply::created(
                json!({ "cart_id": cart_id }),
                format!("/v1/carts/{cart_id}"),
            )
        },
    )
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// The catalog entry of a product the command consults, and the version it was read at. A
/// product that does not exist is the request's mistake.
async fn catalog_entry(
    reads: Reads<'_>,
    product_id: ProductId,
) -> Result<(CatalogEntry, Write), Problem> {
    let stream_id = product_id.stream_id();
    let (product, version) = reads.consult::<Product>(&stream_id).await?;
    let entry = CatalogEntry::of(&product)
        .ok_or_else(|| Problem::invalid_field("product_id", "there is no product with this id"))?;
    Ok((entry, Write::check(stream_id, version)))
}

#[utoipa::path(
    post,
    path = "/v1/carts/{id}/items",
    tag = "carts",
    summary = "Add a product to the cart (priced from the catalog)",
    request_body = AddItem,
    params(("id" = String, Path, description = "the cart's id (a UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "added", body = CommandOutcome),
        (status = 404, description = "no such cart, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the cart is checked out", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "unknown or discontinued product, not enough stock, or a limit reached", body = Problem, content_type = "application/problem+json"),
    )
)]
/// Adds an item at the catalog's current price. The product's version is part of the append's
/// expectations, so a price that changed meanwhile (seen by another instance) sends the command
/// back to decide on fresh states.
pub async fn add_item(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: CommandContext,
    body: CommandBody<AddItem>,
) -> Response {
    let parsed = path_id(&id, "cart").and_then(|cart| {
        let quantity = Quantity::parse(body.value.quantity).map_err(invalid)?;
        Ok((CartId(cart), quantity))
    });
    let (cart_id, quantity) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(),
    };
    let product_id = ProductId(body.value.product_id);
    execute(
        &state,
        &ctx,
        &body.request_hash,
        &cart_id.stream_id(),
        |reads| add_item_plan(&ctx, reads, cart_id, product_id, quantity),
    )
    .await
}

/// Adds at the price the product has now; the product must still be at the version that price
/// was read at when the cart's events are appended.
async fn add_item_plan(
    ctx: &CommandContext,
    reads: Reads<'_>,
    cart_id: CartId,
    product_id: ProductId,
    quantity: Quantity,
) -> Result<Plan, Problem> {
    let cart_stream = cart_id.stream_id();
    let (cart, version) = reads.target::<Cart>(&cart_stream).await?;
    let (entry, product_seen) = catalog_entry(reads, product_id).await?;
    let events = cart
        .decide(CartCommand::AddItem {
            actor: ctx.actor.clone(),
            product: entry,
            quantity,
        })
        .map_err(|r| rejection_problem(&r))?;
    let added = Write::new(cart_stream.clone(), version, &events, &ctx.metadata)?;
    let after = added.version_after();
    let cart = events.iter().fold(cart, |c, e| c.evolve(e));
    Ok(Plan::new(added, Reply::ok(json!({ "cart_id": cart_id })))
        .and(product_seen)
        .remember(cart_stream, cart, after))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuantity {
    pub quantity: i64,
}

#[utoipa::path(
    put,
    path = "/v1/carts/{id}/items/{product_id}",
    tag = "carts",
    summary = "Set the quantity of a product in the cart",
    request_body = ChangeQuantity,
    params(("id" = String, Path, description = "the cart's id (a UUID)"), ("product_id" = String, Path, description = "the product's id (a UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "changed", body = CommandOutcome),
        (status = 404, description = "no such cart, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the cart is checked out", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid quantity or not enough stock", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change_quantity(
    State(state): State<AppState>,
    Path((id, product)): Path<(String, String)>,
    ctx: CommandContext,
    body: CommandBody<ChangeQuantity>,
) -> Response {
    let parsed = (|| {
        let cart_id = CartId(path_id(&id, "cart")?);
        let product_id = ProductId(path_id(&product, "item")?);
        let quantity = Quantity::parse(body.value.quantity).map_err(invalid)?;
        Ok::<_, Problem>((cart_id, product_id, quantity))
    })();
    let (cart_id, product_id, quantity) = match parsed {
        Ok(parsed) => parsed,
        Err(problem) => return problem.into_response(),
    };
    run::<Cart>(
        &state,
        &ctx,
        &body.request_hash,
        cart_id.stream_id(),
        CartCommand::ChangeQuantity {
            actor: ctx.actor.clone(),
            product_id,
            quantity,
        },
        |_| Reply::ok(json!({ "cart_id": cart_id })),
    )
    .await
}

#[utoipa::path(
    delete,
    path = "/v1/carts/{id}/items/{product_id}",
    tag = "carts",
    summary = "Remove a product from the cart",
    params(("id" = String, Path, description = "the cart's id (a UUID)"), ("product_id" = String, Path, description = "the product's id (a UUID)"), CommandHeaders),
    responses(
        (status = 200, description = "removed", body = CommandOutcome),
        (status = 404, description = "no such cart, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "the cart is checked out", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove_item(
    State(state): State<AppState>,
    Path((id, product)): Path<(String, String)>,
    ctx: CommandContext,
) -> Response {
    let (cart_id, product_id) = match (path_id(&id, "cart"), path_id(&product, "item")) {
        (Ok(cart), Ok(product)) => (CartId(cart), ProductId(product)),
        (Err(p), _) | (_, Err(p)) => return p.into_response(),
    };
    run::<Cart>(
        &state,
        &ctx,
        &ctx.bodiless_request_hash,
        cart_id.stream_id(),
        CartCommand::RemoveItem {
            actor: ctx.actor.clone(),
            product_id,
        },
        |_| Reply::ok(json!({ "cart_id": cart_id })),
    )
    .await
}

#[utoipa::path(
    post,
    path = "/v1/carts/{id}/checkout",
    tag = "carts",
    summary = "Check the cart out: places an order at catalog prices",
    params(("id" = String, Path, description = "the cart's id (a UUID)"), CommandHeaders),
    responses(
        (status = 202, description = "the order is placed; Location names it", body = CommandOutcome),
        (status = 404, description = "no such cart, or not the caller's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "already checked out", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "empty, discontinued products, or mixed currencies", body = Problem, content_type = "application/problem+json"),
    )
)]
/// Checks the cart out and places its order in one transaction, at the catalog's prices of
/// now (the rule is [`domain::checkout`]): the order exists the moment the client is told its id.
pub async fn checkout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ctx: CommandContext,
) -> Response {
    let cart_id = match path_id(&id, "cart") {
        Ok(id) => CartId(id),
        Err(p) => return p.into_response(),
    };
    let order_id = OrderId(Uuid::now_v7());
    execute(
        &state,
        &ctx,
        &ctx.bodiless_request_hash,
        &cart_id.stream_id(),
        |reads| checkout_plan(&ctx, reads, cart_id, order_id),
    )
    .await
}

/// Loads the cart and each line's catalog entry and lets the domain decide. Every product
/// priced is expected at the version it was read at, so a price that moved meanwhile sends
/// the checkout back to be decided again.
async fn checkout_plan(
    ctx: &CommandContext,
    reads: Reads<'_>,
    cart_id: CartId,
    order_id: OrderId,
) -> Result<Plan, Problem> {
    let cart_stream = cart_id.stream_id();
    let (cart, version) = reads.target::<Cart>(&cart_stream).await?;
    let product_ids: Vec<ProductId> = cart
        .0
        .iter()
        .flat_map(|c| &c.lines)
        .map(|l| l.product_id)
        .collect();
    let mut catalog = Vec::new();
    let mut products_seen = Vec::new();
    for product_id in product_ids {
        let (entry, seen) = catalog_entry(reads, product_id).await?;
        catalog.push(entry);
        products_seen.push(seen);
    }
    let decided = checkout::decide(&cart, &catalog, order_id, ctx.actor.clone())
        .map_err(|r| rejection_problem(&r))?;
    let closed = Write::new(
        cart_stream.clone(),
        version,
        &decided.cart_events,
        &ctx.metadata,
    )?;
    let placed = Write::new(
        order_id.stream_id(),
        0,
        &decided.order_events,
        &ctx.metadata,
    )?;
    let after = closed.version_after();
    let cart = decided.cart_events.iter().fold(cart, |c, e| c.evolve(e));
    let reply = Reply::accepted(
        json!({ "cart_id": cart_id, "order_id": order_id }),
        Some(format!("/v1/orders/{order_id}")),
    );
    let plan = Plan::new(closed, reply).and(placed);
    Ok(products_seen
        .into_iter()
        .fold(plan, Plan::and)
        .remember(cart_stream, cart, after))
}
