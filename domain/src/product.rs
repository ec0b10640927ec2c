//! The catalog product: price, stock and per-order stock reservations.
//!
//! Stock lives on the product's own stream, so reserving the last unit is decided by optimistic
//! concurrency on one stream: two orders that race for it both load version N, one append wins,
//! the other reloads, sees zero units and is rejected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::values::{
    Category, Description, ImageUrl, MAX_UNITS, Money, OrderId, ProductId, ProductName, Sku, Units,
};
use crate::{Aggregate, event_types, rejection_codes};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    Create(NewProduct),
    /// Changes what the catalog says about the product; each `None` keeps what it was.
    ChangeDetails {
        name: Option<ProductName>,
        description: Option<Description>,
        category: Option<Category>,
        image_urls: Option<Vec<ImageUrl>>,
    },
    ChangePrice {
        price: Money,
    },
    /// Adds (positive) or removes (negative) units on hand, e.g. after a delivery or a count.
    AdjustStock {
        delta: i64,
    },
    Discontinue,
    /// Holds units for an order. Reserving again for the same order changes nothing.
    Reserve {
        order_id: OrderId,
        quantity: Units,
    },
    /// Gives an order's held units back. Releasing what is not held changes nothing.
    Release {
        order_id: OrderId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProduct {
    pub product_id: ProductId,
    pub sku: Sku,
    pub name: ProductName,
    pub description: Description,
    pub category: Category,
    pub price: Money,
    pub stock: Units,
    /// Schema version 2; version 1 events had none (the upcaster adds an empty list).
    pub image_urls: Vec<ImageUrl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ProductEvent {
    ProductCreated(NewProduct),
    /// The catalog's description of the product after an edit (every field, changed or not).
    ProductDetailsChanged {
        product_id: ProductId,
        name: ProductName,
        description: Description,
        category: Category,
        image_urls: Vec<ImageUrl>,
    },
    ProductPriceChanged {
        product_id: ProductId,
        old_price: Money,
        new_price: Money,
    },
    ProductStockAdjusted {
        product_id: ProductId,
        delta: i64,
        available: Units,
    },
    ProductDiscontinued {
        product_id: ProductId,
    },
    StockReserved {
        product_id: ProductId,
        order_id: OrderId,
        quantity: Units,
        available: Units,
    },
    StockReleased {
        product_id: ProductId,
        order_id: OrderId,
        quantity: Units,
        available: Units,
    },
}

event_types!(ProductEvent {
    ProductCreated,
    ProductDetailsChanged,
    ProductPriceChanged,
    ProductStockAdjusted,
    ProductDiscontinued,
    StockReserved,
    StockReleased,
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductRejection {
    #[error("product not found")]
    NotFound,
    #[error("a product with this id already exists")]
    AlreadyExists,
    #[error("the product is discontinued")]
    Discontinued,
    #[error("only {available} units available, {requested} requested")]
    InsufficientStock { requested: Units, available: Units },
    #[error(
        "free stock would become {result}; it must stay at 0 or more, and stock on hand at most {MAX_UNITS}"
    )]
    StockOutOfRange { result: i64 },
    #[error("a stock adjustment must not be zero")]
    ZeroAdjustment,
    #[error("the price currency is {current}; it cannot change")]
    CurrencyChange { current: String },
    #[error("a reservation needs at least one unit")]
    EmptyReservation,
}

rejection_codes!(ProductRejection {
    NotFound => (NotFound, "product-not-found"),
    AlreadyExists => (InvalidState, "product-exists"),
    // The same class as when a shopper meets them (CartRejection): one code, one status.
    Discontinued => (Unprocessable, "product-discontinued"),
    InsufficientStock => (Unprocessable, "insufficient-stock"),
    StockOutOfRange => (Unprocessable, "stock-out-of-range"),
    ZeroAdjustment => (Unprocessable, "zero-stock-adjustment"),
    CurrencyChange => (Unprocessable, "currency-change"),
    EmptyReservation => (Unprocessable, "empty-reservation"),
});

/// A product as its events describe it; `None` until created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Product(pub Option<ProductDetails>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductDetails {
    pub product_id: ProductId,
    pub sku: Sku,
    pub name: ProductName,
    pub description: Description,
    pub category: Category,
    pub image_urls: Vec<ImageUrl>,
    pub price: Money,
    /// Units on hand that no order holds.
    pub available: Units,
    /// Units each open order holds.
    pub reservations: BTreeMap<OrderId, Units>,
    pub discontinued: bool,
}

impl ProductDetails {
    /// Units on hand: free plus held. Bounded by [`MAX_UNITS`], which keeps every sum in range.
    pub fn on_hand(&self) -> u64 {
        u64::from(self.available)
            + self
                .reservations
                .values()
                .map(|&u| u64::from(u))
                .sum::<u64>()
    }

    /// The free units after adjusting the shelf by `delta`, if on hand stays in `0..=MAX_UNITS`
    /// and no held unit is taken away.
    fn stock_after(&self, delta: i64) -> Result<Units, ProductRejection> {
        let held = self.on_hand() - u64::from(self.available);
        let result = i64::from(self.available).saturating_add(delta);
        let on_hand_after = result.saturating_add(held as i64);
        if result >= 0 && on_hand_after <= i64::from(MAX_UNITS) {
            Ok(result as Units)
        } else {
            Err(ProductRejection::StockOutOfRange { result })
        }
    }

    fn decide(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductRejection> {
        use ProductEvent as E;
        let p = self;
        let product_id = p.product_id;
        match command {
            ProductCommand::Create(_) => Err(ProductRejection::AlreadyExists),
            ProductCommand::ChangeDetails {
                name,
                description,
                category,
                image_urls,
            } => {
                if p.discontinued {
                    return Err(ProductRejection::Discontinued);
                }
                let name = name.unwrap_or_else(|| p.name.clone());
                let description = description.unwrap_or_else(|| p.description.clone());
                let category = category.unwrap_or_else(|| p.category.clone());
                let image_urls = image_urls.unwrap_or_else(|| p.image_urls.clone());
                if (&name, &description, &category, &image_urls)
                    == (&p.name, &p.description, &p.category, &p.image_urls)
                {
                    return Ok(vec![]);
                }
                Ok(vec![E::ProductDetailsChanged {
                    product_id,
                    name,
                    description,
                    category,
                    image_urls,
                }])
            }
            ProductCommand::ChangePrice { price } => {
                if p.discontinued {
                    return Err(ProductRejection::Discontinued);
                }
                if price.currency != p.price.currency {
                    return Err(ProductRejection::CurrencyChange {
                        current: p.price.currency.to_string(),
                    });
                }
                if price == p.price {
                    return Ok(vec![]);
                }
                Ok(vec![E::ProductPriceChanged {
                    product_id,
                    old_price: p.price,
                    new_price: price,
                }])
            }
            ProductCommand::AdjustStock { delta } => {
                if delta == 0 {
                    return Err(ProductRejection::ZeroAdjustment);
                }
                let available = p.stock_after(delta)?;
                Ok(vec![E::ProductStockAdjusted {
                    product_id,
                    delta,
                    available,
                }])
            }
            ProductCommand::Discontinue => {
                if p.discontinued {
                    return Err(ProductRejection::Discontinued);
                }
                Ok(vec![E::ProductDiscontinued { product_id }])
            }
            ProductCommand::Reserve { order_id, quantity } => {
                if p.reservations.contains_key(&order_id) {
                    return Ok(vec![]);
                }
                if quantity == 0 {
                    return Err(ProductRejection::EmptyReservation);
                }
                if p.discontinued {
                    return Err(ProductRejection::Discontinued);
                }
                if quantity > p.available {
                    return Err(ProductRejection::InsufficientStock {
                        requested: quantity,
                        available: p.available,
                    });
                }
                Ok(vec![E::StockReserved {
                    product_id,
                    order_id,
                    quantity,
                    available: p.available - quantity,
                }])
            }
            ProductCommand::Release { order_id } => {
                let Some(&quantity) = p.reservations.get(&order_id) else {
                    return Ok(vec![]);
                };
                Ok(vec![E::StockReleased {
                    product_id,
                    order_id,
                    quantity,
                    // Cannot overflow: available + held never exceeds MAX_UNITS.
                    available: p.available.saturating_add(quantity),
                }])
            }
        }
    }
}

impl Aggregate for Product {
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Rejection = ProductRejection;
    const STREAM_TYPE: &'static str = ProductId::STREAM_TYPE;

    fn decide(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, ProductRejection> {
        match (&self.0, command) {
            (None, ProductCommand::Create(new)) => {
                if new.stock > MAX_UNITS {
                    return Err(ProductRejection::StockOutOfRange {
                        result: i64::from(new.stock),
                    });
                }
                Ok(vec![ProductEvent::ProductCreated(new)])
            }
            (None, _) => Err(ProductRejection::NotFound),
            (Some(product), command) => product.decide(command),
        }
    }
    fn evolve(self, event: &ProductEvent) -> Self {
        use ProductEvent as E;
        let Some(mut p) = self.0 else {
            return match event {
                E::ProductCreated(new) => Product(Some(ProductDetails {
                    product_id: new.product_id,
                    sku: new.sku.clone(),
                    name: new.name.clone(),
                    description: new.description.clone(),
                    category: new.category.clone(),
                    image_urls: new.image_urls.clone(),
                    price: new.price,
                    available: new.stock,
                    reservations: BTreeMap::new(),
                    discontinued: false,
                })),
                // A stream always starts with its creation event; anything else leaves it empty.
                _ => Product(None),
            };
        };
        match event {
            E::ProductCreated(_) => {}
            E::ProductDetailsChanged {
                name,
                description,
                category,
                image_urls,
                ..
            } => {
                p.name = name.clone();
                p.description = description.clone();
                p.category = category.clone();
                p.image_urls = image_urls.clone();
            }
            E::ProductPriceChanged { new_price, .. } => p.price = *new_price,
            E::ProductStockAdjusted { available, .. } => p.available = *available,
            E::ProductDiscontinued { .. } => p.discontinued = true,
            E::StockReserved {
                order_id,
                quantity,
                available,
                ..
            } => {
                p.reservations.insert(*order_id, *quantity);
                p.available = *available;
            }
            E::StockReleased {
                order_id,
                available,
                ..
            } => {
                p.reservations.remove(order_id);
                p.available = *available;
            }
        }
        Product(Some(p))
    }
}
