//! Cart commands (the cart's owner only): open a cart, add, change and remove items, check out.
//! Prices and names come from the product's stream at the time of the command, never from the
//! request.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::cart::{Cart, CartCommand, CartEvent, CartLine, CatalogEntry};
use domain::order::{Order, OrderCommand};
use domain::product::Product;
use domain::values::{CartId, OrderId, ProductId, Quantity};
use domain::{Aggregate, DomainEvent};
use eventstore::{ExpectedVersion, NewEvent};
use platform::problem::Problem;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::AppState;
use crate::body::CommandBody;
use crate::context::CommandContext;
use crate::error::{invalid, rejection_problem, store_problem};
use crate::pipeline::multi::{self, Plan, Write};
use crate::pipeline::{Reply, run};
use crate::routes::path_id;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// An aggregate from the cache (when not `fresh` and cached) or from its stream.
async fn load_or_cached<A: Aggregate>(
    state: &AppState,
    stream_id: &str,
    fresh: bool,
) -> Result<(A, u64), Problem> {
    if !fresh && let Some(cached) = state.store.cached::<A>(stream_id) {
        return Ok(cached);
    }
    state
        .store
        .load::<A>(stream_id)
        .await
        .map_err(|e| store_problem(&e))
}

fn to_catalog_entry(product_id: ProductId, product: Product) -> Result<CatalogEntry, Problem> {
    let p = product
        .0
        .ok_or_else(|| Problem::invalid_field("product_id", "there is no product with this id"))?;
    Ok(CatalogEntry {
        product_id,
        sku: p.sku,
        name: p.name,
        unit_price: p.price,
        available: p.available,
        discontinued: p.discontinued,
    })
}

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
    multi::run(&state, &ctx, &body.request_hash, |fresh| {
        add_item_plan(&state, &ctx, cart_id, product_id, quantity, fresh)
    })
    .await
}

async fn add_item_plan(
    state: &AppState,
    ctx: &CommandContext,
    cart_id: CartId,
    product_id: ProductId,
    quantity: Quantity,
    fresh: bool,
) -> Result<Plan, Problem> {
    let product_stream = product_id.stream_id();
    let (product, product_version) =
        load_or_cached::<Product>(state, &product_stream, fresh).await?;
    let entry = to_catalog_entry(product_id, product)?;
    let cart_stream = cart_id.stream_id();
    let (cart, version) = load_or_cached::<Cart>(state, &cart_stream, fresh).await?;
    let events = cart
        .decide(CartCommand::AddItem {
            actor: ctx.actor.clone(),
            product: entry,
            quantity,
        })
        .map_err(|r| rejection_problem(&r))?;
    let added = write(&cart_stream, ExpectedVersion::Exact(version), &events, ctx)?;
    let after = version + events.len() as u64;
    let cart = events.iter().fold(cart, |c, e| c.evolve(e));
    Ok(Plan {
        after_commit: Some(Box::new(move |store: &eventstore::EventStore| {
            store.remember(&cart_stream, &cart, after)
        })),
        writes: vec![
            added,
            Write {
                stream_id: product_stream,
                expected: ExpectedVersion::Exact(product_version),
                events: vec![],
                event_types: vec![],
            },
        ],
        reply: Reply::ok(json!({ "cart_id": cart_id })),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuantity {
    pub quantity: i64,
}

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

/// Checks the cart out and places its order in one transaction, with every price re-checked
/// against the catalog as it is now: the order exists the moment the client is told its id.
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
    multi::run(&state, &ctx, &ctx.bodiless_request_hash, |fresh| {
        place_order(&state, &ctx, cart_id, order_id, fresh)
    })
    .await
}

/// Decides a checkout. With `fresh` false it may use cached states: the plan then also expects
/// every product it priced at the version it saw, so the append fails (and the checkout is
/// decided again, fresh) if a price or anything else moved meanwhile.
async fn place_order(
    state: &AppState,
    ctx: &CommandContext,
    cart_id: CartId,
    order_id: OrderId,
    fresh: bool,
) -> Result<Plan, Problem> {
    let cart_stream = cart_id.stream_id();
    let (cart, version) = load_or_cached::<Cart>(state, &cart_stream, fresh).await?;
    let cart_events = cart
        .decide(CartCommand::CheckOut {
            actor: ctx.actor.clone(),
            order_id,
        })
        .map_err(|r| rejection_problem(&r))?;
    let Some(CartEvent::CartCheckedOut {
        lines, customer_id, ..
    }) = cart_events.first()
    else {
        return Err(Problem::internal(&std::io::Error::other(
            "a checkout decided no CartCheckedOut",
        )));
    };
    let mut priced = Vec::with_capacity(lines.len());
    let mut seen = Vec::with_capacity(lines.len());
    for line in lines {
        let stream_id = line.product_id.stream_id();
        let (product, product_version) =
            load_or_cached::<Product>(state, &stream_id, fresh).await?;
        seen.push(Write {
            stream_id,
            expected: ExpectedVersion::Exact(product_version),
            events: vec![],
            event_types: vec![],
        });
        let entry = to_catalog_entry(line.product_id, product)?;
        if entry.discontinued {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "product-discontinued",
                "Not possible in the current state",
            )
            .with_detail(format!(
                "{} is no longer sold; remove it from the cart",
                entry.name
            )));
        }
        priced.push(CartLine {
            unit_price: entry.unit_price,
            name: entry.name,
            sku: entry.sku,
            ..line.clone()
        });
    }
    let order_events = Order::default()
        .decide(OrderCommand::Place {
            order_id,
            cart_id,
            customer_id: customer_id.clone(),
            lines: priced,
        })
        .map_err(|r| rejection_problem(&r))?;
    let mut writes = vec![
        write(
            &cart_stream,
            ExpectedVersion::Exact(version),
            &cart_events,
            ctx,
        )?,
        write(
            &order_id.stream_id(),
            ExpectedVersion::NoStream,
            &order_events,
            ctx,
        )?,
    ];
    writes.extend(seen);
    let after = version + cart_events.len() as u64;
    let cart = cart_events.iter().fold(cart, |c, e| c.evolve(e));
    Ok(Plan {
        writes,
        reply: Reply::accepted(
            json!({ "cart_id": cart_id, "order_id": order_id }),
            Some(format!("/v1/orders/{order_id}")),
        ),
        after_commit: Some(Box::new(move |store: &eventstore::EventStore| {
            store.remember(&cart_stream, &cart, after)
        })),
    })
}

fn write<E: DomainEvent>(
    stream_id: &str,
    expected: ExpectedVersion,
    events: &[E],
    ctx: &CommandContext,
) -> Result<Write, Problem> {
    let new = events
        .iter()
        .map(|e| NewEvent::from_domain(Uuid::now_v7(), e, ctx.metadata.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| store_problem(&e))?;
    Ok(Write {
        stream_id: stream_id.to_owned(),
        expected,
        events: new,
        event_types: events.iter().map(DomainEvent::event_type).collect(),
    })
}
