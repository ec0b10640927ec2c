//! A shopper's cart: lines priced from the catalog when added, then checked out into an order.
//!
//! The cart never takes a price from the client: [`CatalogEntry`] is what the command side read
//! from the product's stream. A cart is its owner's alone; anyone else is told it does not exist.

use serde::{Deserialize, Serialize};

use crate::product::Product;
use crate::values::{
    Actor, CartId, Currency, CustomerId, MAX_UNITS, Money, OrderId, ProductId, ProductName,
    Quantity, Sku, Units,
};
use crate::{Aggregate, event_types, rejection_codes};

/// Most distinct products one cart may hold.
pub const MAX_LINES: usize = 50;

/// The catalog's facts about a product at the moment a command is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub product_id: ProductId,
    pub sku: Sku,
    pub name: ProductName,
    pub unit_price: Money,
    pub available: Units,
    pub discontinued: bool,
}

impl CatalogEntry {
    /// What the catalog says about `product` as its stream describes it; `None` for a product
    /// that does not exist.
    pub fn of(product: &Product) -> Option<Self> {
        let p = product.0.as_ref()?;
        Some(Self {
            product_id: p.product_id,
            sku: p.sku.clone(),
            name: p.name.clone(),
            unit_price: p.price,
            available: p.available,
            discontinued: p.discontinued,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartCommand {
    Create {
        cart_id: CartId,
        owner: CustomerId,
    },
    AddItem {
        actor: Actor,
        product: CatalogEntry,
        quantity: Quantity,
    },
    ChangeQuantity {
        actor: Actor,
        product_id: ProductId,
        quantity: Quantity,
    },
    RemoveItem {
        actor: Actor,
        product_id: ProductId,
    },
    CheckOut {
        actor: Actor,
        order_id: OrderId,
    },
}

/// One product in a cart, at the catalog price of when it was last added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub product_id: ProductId,
    pub sku: Sku,
    pub name: ProductName,
    pub unit_price: Money,
    pub quantity: Quantity,
}

impl CartLine {
    pub fn line_total(&self) -> Money {
        // Bounded: MAX_AMOUNT × 99 fits in i64 many times over.
        self.unit_price
            .times(self.quantity)
            .unwrap_or(Money::zero(self.unit_price.currency))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CartEvent {
    CartCreated {
        cart_id: CartId,
        customer_id: CustomerId,
    },
    /// `quantity` is the line's quantity after the add; `unit_price` the catalog price then.
    CartItemAdded {
        cart_id: CartId,
        product_id: ProductId,
        sku: Sku,
        name: ProductName,
        unit_price: Money,
        added: Quantity,
        quantity: Quantity,
    },
    CartItemQuantityChanged {
        cart_id: CartId,
        product_id: ProductId,
        quantity: Quantity,
    },
    CartItemRemoved {
        cart_id: CartId,
        product_id: ProductId,
    },
    CartCheckedOut {
        cart_id: CartId,
        customer_id: CustomerId,
        order_id: OrderId,
        lines: Vec<CartLine>,
        total: Money,
    },
}

event_types!(CartEvent {
    CartCreated,
    CartItemAdded,
    CartItemQuantityChanged,
    CartItemRemoved,
    CartCheckedOut,
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartRejection {
    #[error("cart not found")]
    NotFound,
    #[error("a cart with this id already exists")]
    AlreadyExists,
    #[error("the cart has been checked out")]
    CheckedOut,
    #[error("the product is not in the cart")]
    ItemNotInCart,
    #[error("the product is discontinued")]
    ProductDiscontinued,
    #[error("only {available} units available")]
    NotEnoughStock { available: Units },
    #[error("a line holds at most {max} units", max = Quantity::MAX)]
    LineQuantityLimit,
    #[error("a cart holds at most {MAX_LINES} different products")]
    TooManyLines,
    #[error("the cart is priced in {cart}; this product is priced in {product}")]
    CurrencyMismatch { cart: Currency, product: Currency },
    #[error("an empty cart cannot be checked out")]
    Empty,
    #[error("a cart whose total is zero cannot be checked out")]
    ZeroTotal,
}

rejection_codes!(CartRejection {
    NotFound => (NotFound, "cart-not-found"),
    AlreadyExists => (InvalidState, "cart-exists"),
    CheckedOut => (InvalidState, "cart-checked-out"),
    ItemNotInCart => (NotFound, "item-not-in-cart"),
    ProductDiscontinued => (Unprocessable, "product-discontinued"),
    NotEnoughStock => (Unprocessable, "insufficient-stock"),
    LineQuantityLimit => (Unprocessable, "line-quantity-limit"),
    TooManyLines => (Unprocessable, "too-many-lines"),
    CurrencyMismatch => (Unprocessable, "currency-mismatch"),
    Empty => (InvalidState, "cart-empty"),
    ZeroTotal => (Unprocessable, "zero-total"),
});

/// A cart as its events describe it; `None` until created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cart(pub Option<CartDetails>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartDetails {
    pub cart_id: CartId,
    pub owner: CustomerId,
    /// In the order first added.
    pub lines: Vec<CartLine>,
    pub checked_out: Option<OrderId>,
}

impl CartDetails {
    fn line(&self, product_id: ProductId) -> Option<&CartLine> {
        self.lines.iter().find(|l| l.product_id == product_id)
    }

    fn line_mut(&mut self, product_id: ProductId) -> Option<&mut CartLine> {
        self.lines.iter_mut().find(|l| l.product_id == product_id)
    }

    /// The currency every line shares, once there is a line.
    pub fn currency(&self) -> Option<Currency> {
        self.lines.first().map(|l| l.unit_price.currency)
    }

    /// The sum of the line totals; `None` for an empty cart.
    pub fn total(&self) -> Option<Money> {
        let currency = self.currency()?;
        self.lines
            .iter()
            .try_fold(Money::zero(currency), |sum, line| {
                sum.plus(line.line_total())
            })
    }

    /// Checks the actor may touch this cart and that it is still open.
    fn open_for(&self, actor: &Actor) -> Result<(), CartRejection> {
        // Not even an admin acts on a shopper's cart; to anyone else it does not exist.
        if actor.id != self.owner {
            return Err(CartRejection::NotFound);
        }
        if self.checked_out.is_some() {
            return Err(CartRejection::CheckedOut);
        }
        Ok(())
    }

    fn decide(&self, command: CartCommand) -> Result<Vec<CartEvent>, CartRejection> {
        let cart_id = self.cart_id;
        match command {
            CartCommand::Create { .. } => Err(CartRejection::AlreadyExists),
            CartCommand::AddItem {
                actor,
                product,
                quantity,
            } => {
                self.open_for(&actor)?;
                if product.discontinued {
                    return Err(CartRejection::ProductDiscontinued);
                }
                if let Some(currency) = self.currency()
                    && currency != product.unit_price.currency
                {
                    return Err(CartRejection::CurrencyMismatch {
                        cart: currency,
                        product: product.unit_price.currency,
                    });
                }
                let existing = self
                    .line(product.product_id)
                    .map_or(0, |l| l.quantity.get());
                if existing == 0 && self.lines.len() >= MAX_LINES {
                    return Err(CartRejection::TooManyLines);
                }
                let new_quantity = Quantity::parse(existing + quantity.get())
                    .map_err(|_| CartRejection::LineQuantityLimit)?;
                if new_quantity.get() > product.available.min(MAX_UNITS) {
                    return Err(CartRejection::NotEnoughStock {
                        available: product.available,
                    });
                }
                Ok(vec![CartEvent::CartItemAdded {
                    cart_id,
                    product_id: product.product_id,
                    sku: product.sku,
                    name: product.name,
                    unit_price: product.unit_price,
                    added: quantity,
                    quantity: new_quantity,
                }])
            }
            CartCommand::ChangeQuantity {
                actor,
                product_id,
                quantity,
            } => {
                self.open_for(&actor)?;
                let line = self.line(product_id).ok_or(CartRejection::ItemNotInCart)?;
                if line.quantity == quantity {
                    return Ok(vec![]);
                }
                Ok(vec![CartEvent::CartItemQuantityChanged {
                    cart_id,
                    product_id,
                    quantity,
                }])
            }
            CartCommand::RemoveItem { actor, product_id } => {
                self.open_for(&actor)?;
                self.line(product_id).ok_or(CartRejection::ItemNotInCart)?;
                Ok(vec![CartEvent::CartItemRemoved {
                    cart_id,
                    product_id,
                }])
            }
            CartCommand::CheckOut { actor, order_id } => {
                self.open_for(&actor)?;
                let total = self.total().ok_or(CartRejection::Empty)?;
                // Nothing to pay means no payment could ever complete the order.
                if total.amount == 0 {
                    return Err(CartRejection::ZeroTotal);
                }
                Ok(vec![CartEvent::CartCheckedOut {
                    cart_id,
                    customer_id: self.owner.clone(),
                    order_id,
                    lines: self.lines.clone(),
                    total,
                }])
            }
        }
    }
}

impl Aggregate for Cart {
    type Command = CartCommand;
    type Event = CartEvent;
    type Rejection = CartRejection;
    const STREAM_TYPE: &'static str = CartId::STREAM_TYPE;

    fn decide(&self, command: CartCommand) -> Result<Vec<CartEvent>, CartRejection> {
        match (&self.0, command) {
            (None, CartCommand::Create { cart_id, owner }) => Ok(vec![CartEvent::CartCreated {
                cart_id,
                customer_id: owner,
            }]),
            (None, _) => Err(CartRejection::NotFound),
            (Some(cart), command) => cart.decide(command),
        }
    }

    fn evolve(self, event: &CartEvent) -> Self {
        let Some(mut cart) = self.0 else {
            return match event {
                CartEvent::CartCreated {
                    cart_id,
                    customer_id,
                } => Cart(Some(CartDetails {
                    cart_id: *cart_id,
                    owner: customer_id.clone(),
                    lines: Vec::new(),
                    checked_out: None,
                })),
                _ => Cart(None),
            };
        };
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
                let line = CartLine {
                    product_id: *product_id,
                    sku: sku.clone(),
                    name: name.clone(),
                    unit_price: *unit_price,
                    quantity: *quantity,
                };
                match cart.line_mut(*product_id) {
                    Some(existing) => *existing = line,
                    None => cart.lines.push(line),
                }
            }
            CartEvent::CartItemQuantityChanged {
                product_id,
                quantity,
                ..
            } => {
                if let Some(line) = cart.line_mut(*product_id) {
                    line.quantity = *quantity;
                }
            }
            CartEvent::CartItemRemoved { product_id, .. } => {
                cart.lines.retain(|l| l.product_id != *product_id);
            }
            CartEvent::CartCheckedOut { order_id, .. } => cart.checked_out = Some(*order_id),
        }
        Cart(Some(cart))
    }
}
