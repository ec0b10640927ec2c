//! The cart view in Redis: one hash per cart (`<prefix>:carts:v<n>:<cart id>`) with the view as
//! JSON, its stream version and its owner. Writes go through a Lua script that only replaces a
//! view with a newer one, so a view never goes backwards whoever writes it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::cart::CartEvent;
use eventstore::{EventStore, RecordedEvent};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::MoneyView;
use crate::error::ProjectionError;
use crate::ordering::{fold_streams, new_events_by_stream, streams_to_load};
use crate::tables::CARTS;
pub use platform::read_models::CartKeys;
use platform::read_models::CartsApplied;

/// Stream type this projection reads.
pub const STREAM_TYPE: &str = domain::values::CartId::STREAM_TYPE;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = CartLine)]
pub struct CartItemView {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub unit_price: MoneyView,
    pub quantity: u32,
    pub line_total: MoneyView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CartView {
    pub cart_id: Uuid,
    pub customer_id: String,
    /// `open` or `checked_out`.
    pub status: String,
    pub order_id: Option<Uuid>,
    pub items: Vec<CartItemView>,
    pub item_count: u32,
    pub total: Option<MoneyView>,
    pub version: u64,
    #[serde(serialize_with = "crate::timestamps::rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl CartView {
    fn recompute_totals(&mut self) {
        self.item_count = self.items.iter().map(|i| i.quantity).sum();
        self.total = self.items.first().map(|first| MoneyView {
            amount: self.items.iter().map(|i| i.line_total.amount).sum(),
            currency: first.unit_price.currency,
        });
    }
}

/// Folds one event into a cart's view.
pub fn apply(
    view: Option<CartView>,
    recorded: &RecordedEvent,
) -> Result<Option<CartView>, ProjectionError> {
    let event: CartEvent = recorded
        .decode()
        .map_err(|e| ProjectionError::Undecodable {
            event_id: recorded.event_id,
            reason: e.to_string(),
        })?;
    let mut view = match (view, event) {
        (
            None,
            CartEvent::CartCreated {
                cart_id,
                customer_id,
            },
        ) => CartView {
            cart_id: cart_id.0,
            customer_id: customer_id.as_str().to_owned(),
            status: "open".into(),
            order_id: None,
            items: Vec::new(),
            item_count: 0,
            total: None,
            version: 0,
            updated_at: recorded.recorded_at,
        },
        (None, _) => return Ok(None),
        (Some(mut view), event) => {
            match event {
                CartEvent::CartCreated { .. } => {}
                CartEvent::CartItemAdded {
                    product_id,
                    sku,
                    name,
                    unit_price,
                    quantity,
                    ..
                } => {
                    let price = MoneyView {
                        amount: unit_price.amount,
                        currency: unit_price.currency,
                    };
                    let item = CartItemView {
                        product_id: product_id.0,
                        sku: sku.as_str().to_owned(),
                        name: name.as_str().to_owned(),
                        unit_price: price,
                        quantity: quantity.get(),
                        line_total: MoneyView {
                            amount: price.amount * i64::from(quantity.get()),
                            currency: price.currency,
                        },
                    };
                    match view.items.iter_mut().find(|i| i.product_id == product_id.0) {
                        Some(existing) => *existing = item,
                        None => view.items.push(item),
                    }
                }
                CartEvent::CartItemQuantityChanged {
                    product_id,
                    quantity,
                    ..
                } => {
                    if let Some(item) = view.items.iter_mut().find(|i| i.product_id == product_id.0)
                    {
                        item.quantity = quantity.get();
                        item.line_total.amount = item.unit_price.amount * i64::from(quantity.get());
                    }
                }
                CartEvent::CartItemRemoved { product_id, .. } => {
                    view.items.retain(|i| i.product_id != product_id.0);
                }
                CartEvent::CartCheckedOut { order_id, .. } => {
                    view.status = "checked_out".into();
                    view.order_id = Some(order_id.0);
                }
            }
            view
        }
    };
    view.recompute_totals();
    view.version = recorded.version;
    view.updated_at = recorded.recorded_at;
    Ok(Some(view))
}

/// Writes a view only if it is newer than the stored one. A view at a higher version already
/// holds everything a lower one does, so two writers (the live projector and a rebuild) can
/// write the same key in any order and the newest view wins.
static SET_IF_NEWER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'view', ARGV[2], 'customer_id', ARGV[3])
return 1
",
    )
});

/// Reads a stored view.
pub async fn read(
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    version: i32,
    cart_id: Uuid,
) -> Result<Option<CartView>, ProjectionError> {
    let json: Option<String> = redis::cmd("HGET")
        .arg(keys.cart(version, cart_id))
        .arg("view")
        .query_async(redis)
        .await?;
    Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
}

/// A cart's view folded from its whole stream, or `None` when the stream does not exist.
pub async fn fold_from_store(
    store: &EventStore,
    cart_id: Uuid,
) -> Result<Option<CartView>, ProjectionError> {
    let stream = domain::values::CartId(cart_id).stream_id();
    let events = store.read_stream(&stream, 0).await?;
    events.iter().try_fold(None, apply)
}

/// Writes one view back to `version` with the same compare-and-set as the projector (a newer
/// stored view wins), and lists it under its owner. Used by read repair.
pub async fn write_back(
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    version: i32,
    view: &CartView,
) -> Result<(), ProjectionError> {
    let json = serde_json::to_string(view).map_err(|e| ProjectionError::Undecodable {
        event_id: Uuid::nil(),
        reason: e.to_string(),
    })?;
    let mut write = redis::pipe();
    write.load_script(&SET_IF_NEWER).ignore();
    write
        .invoke_script(
            SET_IF_NEWER
                .key(keys.cart(version, view.cart_id))
                .arg(view.version)
                .arg(json)
                .arg(&view.customer_id),
        )
        .ignore();
    write
        .cmd("SADD")
        .arg(keys.owner_carts(version, &view.customer_id))
        .arg(view.cart_id.to_string())
        .ignore();
    let _: () = write.query_async(redis).await?;
    Ok(())
}

/// Applies cart events to one version's keys: reads the affected views in one pipeline, folds
/// what is new per stream (filling gaps from the store), and writes them back with
/// compare-and-set in one pipeline.
pub async fn apply_to(
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    version: i32,
    store: &EventStore,
    events: &[RecordedEvent],
) -> Result<CartsWritten, ProjectionError> {
    let ids = streams_to_load(events, STREAM_TYPE);
    let mut stored: HashMap<Uuid, CartView> = HashMap::new();
    if !ids.is_empty() {
        let mut read = redis::pipe();
        for id in &ids {
            read.cmd("HGET").arg(keys.cart(version, *id)).arg("view");
        }
        let views: Vec<Option<String>> = read.query_async(redis).await?;
        stored.extend(
            ids.iter()
                .zip(views)
                .filter_map(|(id, json)| Some((*id, serde_json::from_str(&json?).ok()?))),
        );
    }
    let plan = new_events_by_stream(store, events, STREAM_TYPE, |id| {
        stored.get(&id).map_or(0, |v| v.version)
    })
    .await?;
    let folded = fold_streams(plan, stored, apply)?;
    if folded.views.is_empty() {
        return Ok(CartsWritten::default());
    }
    // The pipeline loads the script first, then calls it by its hash: Redis need not hash the
    // script's text for every cart, and a Redis restart that emptied its script cache is covered.
    let mut write = redis::pipe();
    write.load_script(&SET_IF_NEWER).ignore();
    for view in &folded.views {
        let json = serde_json::to_string(view).map_err(|e| ProjectionError::Undecodable {
            event_id: folded.last_event(view.cart_id),
            reason: e.to_string(),
        })?;
        write.invoke_script(
            SET_IF_NEWER
                .key(keys.cart(version, view.cart_id))
                .arg(view.version)
                .arg(json)
                .arg(&view.customer_id),
        );
        // The owner's list of carts; a set, so adding again (any version, any order) is fine.
        write
            .cmd("SADD")
            .arg(keys.owner_carts(version, &view.customer_id))
            .arg(view.cart_id.to_string())
            .ignore();
    }
    let written: Vec<i64> = write.query_async(redis).await?;
    Ok(CartsWritten {
        events: folded.applied(
            folded
                .views
                .iter()
                .zip(&written)
                .filter_map(|(view, written)| (*written == 1).then_some(view.cart_id)),
        ),
        // A view not written was older than the stored one: either way the cart is now at
        // least at this version.
        carts: folded
            .views
            .iter()
            .map(|view| (view.cart_id, view.version))
            .collect(),
    })
}

/// What [`apply_to`] did.
#[derive(Debug, Default)]
pub struct CartsWritten {
    /// Events that took effect.
    pub events: u64,
    /// Each cart the batch touched, and the version its view is now at (at least).
    pub carts: Vec<(Uuid, u64)>,
}

/// Moves a progress hash's checkpoint to (ARGV[1], ARGV[2]) if that is further, and adds
/// ARGV[3] to its events.
const ADVANCE_PROGRESS: &str = r"
local tx = tonumber(redis.call('HGET', KEYS[1], 'transaction_id') or '0')
local pos = tonumber(redis.call('HGET', KEYS[1], 'position') or '0')
local new_tx, new_pos = tonumber(ARGV[1]), tonumber(ARGV[2])
if new_tx > tx or (new_tx == tx and new_pos > pos) then
  redis.call('HSET', KEYS[1], 'transaction_id', ARGV[1], 'position', ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'events', ARGV[3])
return 1
";

/// Applies a live batch to the serving version (and a building one, if a rebuild runs).
pub async fn apply_live(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    keys: &CartKeys,
    store: &EventStore,
    events: &[RecordedEvent],
) -> Result<u64, ProjectionError> {
    let events: Vec<RecordedEvent> = events
        .iter()
        .filter(|e| e.stream_type() == STREAM_TYPE)
        .cloned()
        .collect();
    let Some(last) = events.iter().map(RecordedEvent::log_position).max() else {
        return Ok(0);
    };
    let (serving, building): (i32, Option<i32>) = sqlx::query_as(
        "SELECT serving_version, building_version FROM read.projections WHERE name = $1",
    )
    .bind(CARTS)
    .fetch_one(pool)
    .await?;
    let mut applied = 0;
    for version in std::iter::once(serving).chain(building) {
        let written = apply_to(redis, keys, version, store, &events).await?;
        let mut progress = redis::pipe();
        // Forward only: partitions (and competing workers) finish batches out of log order,
        // and an older batch must not move the checkpoint back.
        progress
            .cmd("EVAL")
            .arg(ADVANCE_PROGRESS)
            .arg(1)
            .arg(keys.progress(version))
            .arg(last.transaction_id)
            .arg(last.position)
            .arg(written.events)
            .ignore();
        if version == serving {
            applied = written.events;
            // Reads waiting for their own write (read-your-writes) wake on this.
            if !written.carts.is_empty() {
                let announcement = CartsApplied {
                    version,
                    carts: written.carts,
                };
                progress
                    .cmd("PUBLISH")
                    .arg(keys.applied_channel())
                    .arg(announcement.to_message())
                    .ignore();
            }
        }
        let _: () = progress.query_async(redis).await?;
    }
    Ok(applied)
}
