//! Shared fixtures and the given/when/then helpers for the aggregate tests.
//!
//! Every test file uses a different subset of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use domain::cart::{CartLine, CatalogEntry};
use domain::order::PaymentToken;
use domain::values::{
    Actor, CartId, Category, CustomerId, Description, Money, OrderId, PaymentId, ProductId,
    ProductName, Quantity, Sku, Units,
};
use domain::{Aggregate, Rejection, RejectionKind};
use uuid::Uuid;

/// The state after `events`, starting from the empty state.
pub fn given<A: Aggregate>(events: &[A::Event]) -> A {
    A::replay(events)
}

/// What `command` does to `state`.
pub fn when<A: Aggregate>(state: &A, command: A::Command) -> Result<Vec<A::Event>, A::Rejection> {
    state.decide(command)
}

/// Asserts the command was accepted with exactly `expected`, and returns them.
#[track_caller]
pub fn then<E, R>(result: Result<Vec<E>, R>, expected: Vec<E>) -> Vec<E>
where
    E: PartialEq + Debug,
    R: Debug,
{
    match result {
        Ok(events) => {
            assert_eq!(events, expected);
            events
        }
        Err(rejection) => panic!("expected {expected:?}, got rejection {rejection:?}"),
    }
}

/// Asserts the command was rejected with exactly `expected`, whose HTTP class is `kind` and
/// whose stable code is `code`.
#[track_caller]
pub fn then_rejected<E, R>(result: Result<Vec<E>, R>, expected: R, kind: RejectionKind, code: &str)
where
    E: Debug,
    R: Rejection + PartialEq + Debug,
{
    match result {
        Ok(events) => panic!("expected rejection {expected:?}, got events {events:?}"),
        Err(rejection) => {
            assert_eq!(rejection, expected);
            assert_eq!(rejection.kind(), kind, "kind of {rejection:?}");
            assert_eq!(rejection.code(), code, "code of {rejection:?}");
            assert!(
                !rejection.to_string().is_empty(),
                "a rejection explains itself"
            );
        }
    }
}

/// Folds `events` into `state`.
pub fn apply<A: Aggregate>(state: A, events: &[A::Event]) -> A {
    events.iter().fold(state, |s, e| s.evolve(e))
}

// ---- ids -------------------------------------------------------------------------------------

pub fn product_id(n: u128) -> ProductId {
    ProductId(Uuid::from_u128(0x1000 + n))
}

pub fn cart_id(n: u128) -> CartId {
    CartId(Uuid::from_u128(0x2000 + n))
}

pub fn order_id(n: u128) -> OrderId {
    OrderId(Uuid::from_u128(0x3000 + n))
}

pub fn payment_id(n: u128) -> PaymentId {
    PaymentId(Uuid::from_u128(0x4000 + n))
}

// ---- people ----------------------------------------------------------------------------------

pub fn customer_id(name: &str) -> CustomerId {
    CustomerId::parse(name).expect("valid customer id")
}

pub fn alice() -> Actor {
    Actor::customer(customer_id("alice"))
}

pub fn bob() -> Actor {
    Actor::customer(customer_id("bob"))
}

/// An admin who owns nothing in these tests.
pub fn admin() -> Actor {
    Actor::admin(customer_id("root"))
}

// ---- values ----------------------------------------------------------------------------------

pub fn eur(amount: i64) -> Money {
    Money::price(amount, "EUR").expect("valid EUR price")
}

pub fn usd(amount: i64) -> Money {
    Money::price(amount, "USD").expect("valid USD price")
}

pub fn qty(n: u32) -> Quantity {
    Quantity::parse(n).expect("valid quantity")
}

pub fn sku(n: u128) -> Sku {
    Sku::parse(&format!("SKU-{n}")).expect("valid sku")
}

pub fn name(n: u128) -> ProductName {
    ProductName::parse(&format!("Product {n}")).expect("valid name")
}

pub fn description() -> Description {
    Description::parse("A fine thing").expect("valid description")
}

pub fn category() -> Category {
    Category::parse("mugs").expect("valid category")
}

pub fn token(raw: &str) -> PaymentToken {
    PaymentToken::parse(raw).expect("valid token")
}

/// Seconds after 2024-01-01T00:00:00Z.
pub fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_704_067_200 + seconds, 0).expect("valid timestamp")
}

/// What the catalog says about product `n` right now.
pub fn entry(n: u128, unit_price: Money, available: Units) -> CatalogEntry {
    CatalogEntry {
        product_id: product_id(n),
        sku: sku(n),
        name: name(n),
        unit_price,
        available,
        discontinued: false,
    }
}

/// A cart/order line for product `n`.
pub fn line(n: u128, unit_price: Money, quantity: u32) -> CartLine {
    CartLine {
        product_id: product_id(n),
        sku: sku(n),
        name: name(n),
        unit_price,
        quantity: qty(quantity),
    }
}
