//! Given/when/then tests of checkout, the rule that turns a cart into an order at the catalog's
//! current prices: every outcome of `checkout::decide`.

mod support;

use domain::Rejection;
use domain::RejectionKind::{self, InvalidState, NotFound, Unprocessable};
use domain::cart::{Cart, CartEvent, CartRejection, CatalogEntry};
use domain::checkout::{self, Checkout, CheckoutRejection as R};
use domain::order::{OrderEvent, OrderRejection};
use domain::product::{NewProduct, Product, ProductEvent};
use domain::values::{Actor, Money};
use support::*;

fn created() -> CartEvent {
    CartEvent::CartCreated {
        cart_id: cart_id(1),
        customer_id: customer_id("alice"),
    }
}

fn added(n: u128, price: Money, quantity: u32) -> CartEvent {
    CartEvent::CartItemAdded {
        cart_id: cart_id(1),
        product_id: product_id(n),
        sku: sku(n),
        name: name(n),
        unit_price: price,
        added: qty(quantity),
        quantity: qty(quantity),
    }
}

/// Alice's cart with two mugs at 2.50 and one plate at 0.99 (prices of when they were added).
fn cart() -> Cart {
    given::<Cart>(&[created(), added(1, eur(250), 2), added(2, eur(99), 1)])
}

fn discontinued(mut entry: CatalogEntry) -> CatalogEntry {
    entry.discontinued = true;
    entry
}

fn when_checked_out(cart: &Cart, catalog: &[CatalogEntry], actor: Actor) -> Result<Checkout, R> {
    checkout::decide(cart, catalog, order_id(1), actor)
}

#[track_caller]
fn then_rejected(result: Result<Checkout, R>, expected: R, kind: RejectionKind, code: &str) {
    match result {
        Ok(checkout) => panic!("expected {expected:?}, got {checkout:?}"),
        Err(rejection) => {
            assert_eq!(rejection, expected);
            assert_eq!(rejection.kind(), kind, "kind of {rejection:?}");
            assert_eq!(rejection.code(), code, "code of {rejection:?}");
            assert!(!rejection.to_string().is_empty());
        }
    }
}

#[test]
fn checkout_closes_the_cart_and_places_the_order_at_todays_prices() {
    // The mug got dearer and the plate cheaper since they were added; the order takes today's.
    let catalog = [entry(1, eur(300), 10), entry(2, eur(50), 10)];
    let checkout = when_checked_out(&cart(), &catalog, alice()).expect("checked out");
    assert_eq!(
        checkout.cart_events,
        vec![CartEvent::CartCheckedOut {
            cart_id: cart_id(1),
            customer_id: customer_id("alice"),
            order_id: order_id(1),
            lines: vec![line(1, eur(250), 2), line(2, eur(99), 1)],
            total: eur(599),
        }]
    );
    assert_eq!(
        checkout.order_events,
        vec![OrderEvent::OrderPlaced {
            order_id: order_id(1),
            cart_id: cart_id(1),
            customer_id: customer_id("alice"),
            lines: vec![line(1, eur(300), 2), line(2, eur(50), 1)],
            total: eur(650),
        }]
    );
}

#[test]
fn the_order_takes_the_catalogs_current_name_and_sku() {
    let mut renamed = entry(1, eur(250), 10);
    renamed.name = domain::values::ProductName::parse("Blue mug, large").unwrap();
    let catalog = [renamed.clone(), entry(2, eur(99), 10)];
    let checkout = when_checked_out(&cart(), &catalog, alice()).expect("checked out");
    let Some(OrderEvent::OrderPlaced { lines, .. }) = checkout.order_events.first() else {
        panic!("no order placed: {checkout:?}");
    };
    assert_eq!(lines[0].name, renamed.name);
}

#[test]
fn extra_catalog_entries_are_ignored() {
    let catalog = [
        entry(9, usd(1), 1),
        entry(1, eur(250), 10),
        entry(2, eur(99), 10),
    ];
    assert!(when_checked_out(&cart(), &catalog, alice()).is_ok());
}

#[test]
fn stock_is_not_a_checkout_rule() {
    // The order process reserves stock after the order is placed; checkout does not look.
    let catalog = [entry(1, eur(250), 0), entry(2, eur(99), 0)];
    assert!(when_checked_out(&cart(), &catalog, alice()).is_ok());
}

#[test]
fn a_discontinued_product_stops_the_checkout() {
    let catalog = [discontinued(entry(1, eur(250), 10)), entry(2, eur(99), 10)];
    then_rejected(
        when_checked_out(&cart(), &catalog, alice()),
        R::ProductDiscontinued { name: name(1) },
        Unprocessable,
        "product-discontinued",
    );
}

#[test]
fn discontinued_has_one_code_and_one_class_whether_adding_or_checking_out() {
    let at_checkout = R::ProductDiscontinued { name: name(1) };
    let on_add = CartRejection::ProductDiscontinued;
    assert_eq!(at_checkout.code(), on_add.code());
    assert_eq!(at_checkout.kind(), on_add.kind());
}

#[test]
fn prices_that_no_longer_share_a_currency_stop_the_checkout() {
    let catalog = [entry(1, usd(250), 10), entry(2, eur(99), 10)];
    then_rejected(
        when_checked_out(&cart(), &catalog, alice()),
        R::Order(OrderRejection::MixedCurrencies),
        Unprocessable,
        "currency-mismatch",
    );
}

#[test]
fn a_line_whose_product_the_catalog_lacks_stops_the_checkout() {
    let catalog = [entry(1, eur(250), 10)];
    then_rejected(
        when_checked_out(&cart(), &catalog, alice()),
        R::NotInCatalog(product_id(2)),
        Unprocessable,
        "product-not-in-catalog",
    );
}

#[test]
fn a_cart_that_became_free_cannot_be_checked_out() {
    let catalog = [entry(1, eur(0), 10), entry(2, eur(0), 10)];
    then_rejected(
        when_checked_out(&cart(), &catalog, alice()),
        R::Order(OrderRejection::ZeroTotal),
        Unprocessable,
        "zero-total",
    );
}

#[test]
fn the_carts_own_refusals_come_first() {
    let catalog = [entry(1, eur(250), 10), entry(2, eur(99), 10)];
    then_rejected(
        when_checked_out(&Cart::default(), &catalog, alice()),
        R::Cart(CartRejection::NotFound),
        NotFound,
        "cart-not-found",
    );
    then_rejected(
        when_checked_out(&cart(), &catalog, bob()),
        R::Cart(CartRejection::NotFound),
        NotFound,
        "cart-not-found",
    );
    then_rejected(
        when_checked_out(&given::<Cart>(&[created()]), &[], alice()),
        R::Cart(CartRejection::Empty),
        InvalidState,
        "cart-empty",
    );
    let checked_out = checkout::decide(&cart(), &catalog, order_id(1), alice())
        .expect("checked out")
        .cart_events;
    let closed = apply(cart(), &checked_out);
    then_rejected(
        when_checked_out(&closed, &catalog, alice()),
        R::Cart(CartRejection::CheckedOut),
        InvalidState,
        "cart-checked-out",
    );
}

#[test]
fn the_catalog_entry_of_a_product_is_what_its_stream_says() {
    assert_eq!(CatalogEntry::of(&Product::default()), None);
    let product = given::<Product>(&[ProductEvent::ProductCreated(NewProduct {
        product_id: product_id(1),
        sku: sku(1),
        name: name(1),
        description: description(),
        category: category(),
        price: eur(250),
        stock: 7,
        image_urls: Vec::new(),
    })]);
    assert_eq!(CatalogEntry::of(&product), Some(entry(1, eur(250), 7)));
}
