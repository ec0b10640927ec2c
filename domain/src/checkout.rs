//! Checkout: the rule that spans a cart, the catalog and a new order.
//!
//! A shopper's cart becomes an order at the catalog's prices of the moment of checkout, never
//! at the prices the lines were added at: every line is re-priced (and re-named) from its
//! product's [`CatalogEntry`]. A discontinued product stops the checkout, and so do lines whose
//! current prices no longer share one currency. The cart's and the order's events are decided
//! together, so the command side appends both or neither.
//!
//! The command side loads the cart and one catalog entry per line and calls [`decide`]; it adds
//! no rule of its own.

use crate::cart::{Cart, CartCommand, CartEvent, CartLine, CartRejection, CatalogEntry};
use crate::order::{Order, OrderCommand, OrderEvent, OrderRejection};
use crate::values::{Actor, OrderId, ProductId, ProductName};
use crate::{Aggregate, Rejection, RejectionKind};

/// What a checkout decided: the cart's events and the new order's, appended together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub cart_events: Vec<CartEvent>,
    pub order_events: Vec<OrderEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutRejection {
    /// The cart refused (not the actor's, already checked out, empty).
    #[error(transparent)]
    Cart(#[from] CartRejection),
    /// The order refused its re-priced lines (mixed currencies, a zero total).
    #[error(transparent)]
    Order(#[from] OrderRejection),
    #[error("{name} is no longer sold; remove it from the cart")]
    ProductDiscontinued { name: ProductName },
    #[error("the product {0} is not in the catalog")]
    NotInCatalog(ProductId),
}

impl Rejection for CheckoutRejection {
    fn kind(&self) -> RejectionKind {
        match self {
            Self::Cart(r) => r.kind(),
            Self::Order(r) => r.kind(),
            // The same code and status as adding a discontinued product to a cart.
            Self::ProductDiscontinued { .. } => CartRejection::ProductDiscontinued.kind(),
            Self::NotInCatalog(_) => RejectionKind::Unprocessable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Cart(r) => r.code(),
            Self::Order(r) => r.code(),
            Self::ProductDiscontinued { .. } => CartRejection::ProductDiscontinued.code(),
            Self::NotInCatalog(_) => "product-not-in-catalog",
        }
    }
}

/// Checks `cart` out into the order `order_id`, re-pricing every line from `catalog` (one
/// entry per product in the cart; extra entries are ignored).
pub fn decide(
    cart: &Cart,
    catalog: &[CatalogEntry],
    order_id: OrderId,
    actor: Actor,
) -> Result<Checkout, CheckoutRejection> {
    let cart_events = cart.decide(CartCommand::CheckOut { actor, order_id })?;
    let Some(CartEvent::CartCheckedOut {
        cart_id,
        customer_id,
        lines,
        ..
    }) = cart_events.first()
    else {
        // Cart::decide answers a checkout with CartCheckedOut or a rejection; nothing else.
        unreachable!("a checkout decided no CartCheckedOut: {cart_events:?}");
    };
    let lines = lines
        .iter()
        .map(|line| reprice(line, catalog))
        .collect::<Result<Vec<_>, _>>()?;
    let order_events = Order::default().decide(OrderCommand::Place {
        order_id,
        cart_id: *cart_id,
        customer_id: customer_id.clone(),
        lines,
    })?;
    Ok(Checkout {
        cart_events,
        order_events,
    })
}

/// The line at the catalog's current price and name.
fn reprice(line: &CartLine, catalog: &[CatalogEntry]) -> Result<CartLine, CheckoutRejection> {
    let entry = catalog
        .iter()
        .find(|e| e.product_id == line.product_id)
        .ok_or(CheckoutRejection::NotInCatalog(line.product_id))?;
    if entry.discontinued {
        return Err(CheckoutRejection::ProductDiscontinued {
            name: entry.name.clone(),
        });
    }
    Ok(CartLine {
        unit_price: entry.unit_price,
        name: entry.name.clone(),
        sku: entry.sku.clone(),
        ..line.clone()
    })
}
