//! Given/when/then tests of the cart aggregate: every branch of `decide`.

mod support;

use domain::RejectionKind::{InvalidState, NotFound, Unprocessable};
use domain::cart::{
    Cart, CartCommand as C, CartDetails, CartEvent as E, CartRejection as R, MAX_LINES,
};
use domain::values::{Actor, Currency, MAX_UNITS, Money, Quantity};
use domain::{Aggregate, DomainEvent};
use support::*;

fn created() -> E {
    E::CartCreated {
        cart_id: cart_id(1),
        customer_id: customer_id("alice"),
    }
}

/// Product `n` added at `price`, taking the line from `quantity - added` to `quantity`.
fn added(n: u128, price: Money, added: u32, quantity: u32) -> E {
    E::CartItemAdded {
        cart_id: cart_id(1),
        product_id: product_id(n),
        sku: sku(n),
        name: name(n),
        unit_price: price,
        added: qty(added),
        quantity: qty(quantity),
    }
}

fn checked_out_event(lines: Vec<domain::cart::CartLine>, total: Money) -> E {
    E::CartCheckedOut {
        cart_id: cart_id(1),
        customer_id: customer_id("alice"),
        order_id: order_id(1),
        lines,
        total,
    }
}

fn add(actor: Actor, n: u128, price: Money, available: u32, quantity: u32) -> C {
    C::AddItem {
        actor,
        product: entry(n, price, available),
        quantity: qty(quantity),
    }
}

fn details(c: &Cart) -> &CartDetails {
    c.0.as_ref().expect("cart exists")
}

// ---- create ----------------------------------------------------------------------------------

#[test]
fn create_opens_an_empty_cart_for_its_owner() {
    let events = then(
        when(
            &given::<Cart>(&[]),
            C::Create {
                cart_id: cart_id(1),
                owner: customer_id("alice"),
            },
        ),
        vec![created()],
    );
    let cart = apply(Cart::default(), &events);
    assert_eq!(
        details(&cart),
        &CartDetails {
            cart_id: cart_id(1),
            owner: customer_id("alice"),
            lines: vec![],
            checked_out: None,
        }
    );
    assert_eq!(details(&cart).total(), None);
    assert_eq!(details(&cart).currency(), None);
}

#[test]
fn create_twice_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            C::Create {
                cart_id: cart_id(1),
                owner: customer_id("alice"),
            },
        ),
        R::AlreadyExists,
        InvalidState,
        "cart-exists",
    );
}

#[test]
fn every_other_command_on_a_missing_cart_is_not_found() {
    let commands = [
        add(alice(), 1, eur(100), 10, 1),
        C::ChangeQuantity {
            actor: alice(),
            product_id: product_id(1),
            quantity: qty(2),
        },
        C::RemoveItem {
            actor: alice(),
            product_id: product_id(1),
        },
        C::CheckOut {
            actor: alice(),
            order_id: order_id(1),
        },
    ];
    for command in commands {
        then_rejected(
            when(&given::<Cart>(&[]), command),
            R::NotFound,
            NotFound,
            "cart-not-found",
        );
    }
}

#[test]
fn events_before_creation_leave_the_cart_missing() {
    assert_eq!(given::<Cart>(&[added(1, eur(100), 1, 1)]), Cart(None));
}

// ---- add item --------------------------------------------------------------------------------

#[test]
fn add_item_adds_a_line_at_the_catalog_price() {
    let events = then(
        when(
            &given::<Cart>(&[created()]),
            add(alice(), 1, eur(250), 10, 3),
        ),
        vec![added(1, eur(250), 3, 3)],
    );
    let cart = apply(given::<Cart>(&[created()]), &events);
    assert_eq!(details(&cart).lines, vec![line(1, eur(250), 3)]);
    assert_eq!(details(&cart).total(), Some(eur(750)));
}

#[test]
fn adding_the_same_product_again_sums_quantity_and_takes_the_latest_price() {
    let state = given::<Cart>(&[
        created(),
        added(1, eur(250), 3, 3),
        added(2, eur(100), 1, 1),
    ]);
    let events = then(
        when(&state, add(alice(), 1, eur(300), 10, 4)),
        vec![added(1, eur(300), 4, 7)],
    );
    let cart = apply(state, &events);
    // The merged line keeps its place; every unit now costs the latest price.
    assert_eq!(
        details(&cart).lines,
        vec![line(1, eur(300), 7), line(2, eur(100), 1)]
    );
    assert_eq!(details(&cart).total(), Some(eur(7 * 300 + 100)));
}

#[test]
fn a_line_may_hold_exactly_99_units() {
    then(
        when(
            &given::<Cart>(&[created(), added(1, eur(1), 90, 90)]),
            add(alice(), 1, eur(1), 1_000, 9),
        ),
        vec![added(1, eur(1), 9, 99)],
    );
}

#[test]
fn a_line_above_99_units_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created(), added(1, eur(1), 90, 90)]),
            add(alice(), 1, eur(1), 1_000, 10),
        ),
        R::LineQuantityLimit,
        Unprocessable,
        "line-quantity-limit",
    );
}

fn full_cart() -> Vec<E> {
    let mut events = vec![created()];
    events.extend((1..=MAX_LINES as u128).map(|n| added(n, eur(10), 1, 1)));
    events
}

#[test]
fn a_cart_holds_at_most_50_products() {
    let cart = given::<Cart>(&full_cart());
    assert_eq!(details(&cart).lines.len(), MAX_LINES);
    then_rejected(
        when(&cart, add(alice(), 999, eur(10), 10, 1)),
        R::TooManyLines,
        Unprocessable,
        "too-many-lines",
    );
}

#[test]
fn a_full_cart_still_accepts_more_of_a_product_it_holds() {
    then(
        when(
            &given::<Cart>(&full_cart()),
            add(alice(), 7, eur(10), 10, 2),
        ),
        vec![added(7, eur(10), 2, 3)],
    );
}

#[test]
fn the_line_before_the_limit_is_accepted() {
    let mut events = full_cart();
    events.pop();
    then(
        when(&given::<Cart>(&events), add(alice(), 999, eur(10), 10, 1)),
        vec![added(999, eur(10), 1, 1)],
    );
}

#[test]
fn a_product_in_another_currency_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created(), added(1, eur(100), 1, 1)]),
            add(alice(), 2, usd(100), 10, 1),
        ),
        R::CurrencyMismatch {
            cart: Currency::parse("EUR").unwrap(),
            product: Currency::parse("USD").unwrap(),
        },
        Unprocessable,
        "currency-mismatch",
    );
}

#[test]
fn an_emptied_cart_takes_any_currency_again() {
    let state = given::<Cart>(&[
        created(),
        added(1, eur(100), 1, 1),
        E::CartItemRemoved {
            cart_id: cart_id(1),
            product_id: product_id(1),
        },
    ]);
    then(
        when(&state, add(alice(), 2, usd(100), 10, 1)),
        vec![added(2, usd(100), 1, 1)],
    );
}

#[test]
fn a_discontinued_product_is_rejected() {
    let mut product = entry(1, eur(100), 10);
    product.discontinued = true;
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            C::AddItem {
                actor: alice(),
                product,
                quantity: qty(1),
            },
        ),
        R::ProductDiscontinued,
        Unprocessable,
        "product-discontinued",
    );
}

#[test]
fn more_than_the_stock_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            add(alice(), 1, eur(100), 2, 3),
        ),
        R::NotEnoughStock { available: 2 },
        Unprocessable,
        "insufficient-stock",
    );
}

#[test]
fn the_whole_line_counts_against_the_stock() {
    let state = given::<Cart>(&[created(), added(1, eur(100), 2, 2)]);
    then_rejected(
        when(&state, add(alice(), 1, eur(100), 3, 2)),
        R::NotEnoughStock { available: 3 },
        Unprocessable,
        "insufficient-stock",
    );
    then(
        when(&state, add(alice(), 1, eur(100), 4, 2)),
        vec![added(1, eur(100), 2, 4)],
    );
}

#[test]
fn out_of_stock_product_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            add(alice(), 1, eur(100), 0, 1),
        ),
        R::NotEnoughStock { available: 0 },
        Unprocessable,
        "insufficient-stock",
    );
}

#[test]
fn huge_stock_is_plenty() {
    then(
        when(
            &given::<Cart>(&[created()]),
            add(alice(), 1, eur(100), u32::MAX, 99),
        ),
        vec![added(1, eur(100), 99, 99)],
    );
    then(
        when(
            &given::<Cart>(&[created()]),
            add(alice(), 1, eur(100), MAX_UNITS, 5),
        ),
        vec![added(1, eur(100), 5, 5)],
    );
}

#[test]
fn a_stranger_is_told_the_cart_does_not_exist() {
    then_rejected(
        when(&given::<Cart>(&[created()]), add(bob(), 1, eur(100), 10, 1)),
        R::NotFound,
        NotFound,
        "cart-not-found",
    );
}

#[test]
fn an_admin_is_told_the_cart_does_not_exist() {
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            add(admin(), 1, eur(100), 10, 1),
        ),
        R::NotFound,
        NotFound,
        "cart-not-found",
    );
    // Not even an admin whose id is someone else's, with the owner's name in another case.
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            add(Actor::admin(customer_id("ALICE")), 1, eur(100), 10, 1),
        ),
        R::NotFound,
        NotFound,
        "cart-not-found",
    );
}

#[test]
fn the_owner_being_an_admin_changes_nothing() {
    then(
        when(
            &given::<Cart>(&[created()]),
            add(Actor::admin(customer_id("alice")), 1, eur(100), 10, 1),
        ),
        vec![added(1, eur(100), 1, 1)],
    );
}

// ---- change quantity -------------------------------------------------------------------------

#[test]
fn change_quantity_sets_the_line_quantity() {
    let state = given::<Cart>(&[created(), added(1, eur(100), 2, 2), added(2, eur(50), 1, 1)]);
    let events = then(
        when(
            &state,
            C::ChangeQuantity {
                actor: alice(),
                product_id: product_id(1),
                quantity: qty(5),
            },
        ),
        vec![E::CartItemQuantityChanged {
            cart_id: cart_id(1),
            product_id: product_id(1),
            quantity: qty(5),
        }],
    );
    let cart = apply(state, &events);
    assert_eq!(
        details(&cart).lines,
        vec![line(1, eur(100), 5), line(2, eur(50), 1)]
    );
    assert_eq!(details(&cart).total(), Some(eur(550)));
}

#[test]
fn change_to_the_same_quantity_changes_nothing() {
    then(
        when(
            &given::<Cart>(&[created(), added(1, eur(100), 2, 2)]),
            C::ChangeQuantity {
                actor: alice(),
                product_id: product_id(1),
                quantity: qty(2),
            },
        ),
        vec![],
    );
}

#[test]
fn change_quantity_of_a_product_not_in_the_cart_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created(), added(1, eur(100), 2, 2)]),
            C::ChangeQuantity {
                actor: alice(),
                product_id: product_id(2),
                quantity: qty(1),
            },
        ),
        R::ItemNotInCart,
        NotFound,
        "item-not-in-cart",
    );
}

#[test]
fn change_quantity_by_someone_else_is_not_found() {
    then_rejected(
        when(
            &given::<Cart>(&[created(), added(1, eur(100), 2, 2)]),
            C::ChangeQuantity {
                actor: admin(),
                product_id: product_id(1),
                quantity: qty(1),
            },
        ),
        R::NotFound,
        NotFound,
        "cart-not-found",
    );
}

// ---- remove ----------------------------------------------------------------------------------

#[test]
fn remove_drops_the_line() {
    let state = given::<Cart>(&[created(), added(1, eur(100), 2, 2), added(2, eur(50), 1, 1)]);
    let events = then(
        when(
            &state,
            C::RemoveItem {
                actor: alice(),
                product_id: product_id(1),
            },
        ),
        vec![E::CartItemRemoved {
            cart_id: cart_id(1),
            product_id: product_id(1),
        }],
    );
    let cart = apply(state, &events);
    assert_eq!(details(&cart).lines, vec![line(2, eur(50), 1)]);
    assert_eq!(details(&cart).total(), Some(eur(50)));
}

#[test]
fn remove_of_a_product_not_in_the_cart_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            C::RemoveItem {
                actor: alice(),
                product_id: product_id(1),
            },
        ),
        R::ItemNotInCart,
        NotFound,
        "item-not-in-cart",
    );
}

#[test]
fn remove_by_someone_else_is_not_found() {
    then_rejected(
        when(
            &given::<Cart>(&[created(), added(1, eur(100), 2, 2)]),
            C::RemoveItem {
                actor: bob(),
                product_id: product_id(1),
            },
        ),
        R::NotFound,
        NotFound,
        "cart-not-found",
    );
}

// ---- check out -------------------------------------------------------------------------------

#[test]
fn checkout_records_the_lines_and_their_total() {
    let state = given::<Cart>(&[
        created(),
        added(1, eur(250), 3, 3),
        added(2, eur(99), 2, 2),
        added(3, eur(0), 1, 1),
    ]);
    let lines = vec![
        line(1, eur(250), 3),
        line(2, eur(99), 2),
        line(3, eur(0), 1),
    ];
    let events = then(
        when(
            &state,
            C::CheckOut {
                actor: alice(),
                order_id: order_id(1),
            },
        ),
        vec![checked_out_event(lines, eur(3 * 250 + 2 * 99))],
    );
    let cart = apply(state, &events);
    assert_eq!(details(&cart).checked_out, Some(order_id(1)));
}

#[test]
fn checkout_total_of_the_largest_cart_does_not_overflow() {
    let mut events = vec![created()];
    events.extend((1..=MAX_LINES as u128).map(|n| added(n, eur(Money::MAX_AMOUNT), 99, 99)));
    let state = given::<Cart>(&events);
    let expected = Money::MAX_AMOUNT * 99 * MAX_LINES as i64;
    assert_eq!(details(&state).total().map(|m| m.amount), Some(expected));
    let result = when(
        &state,
        C::CheckOut {
            actor: alice(),
            order_id: order_id(1),
        },
    )
    .expect("checkout");
    assert!(
        matches!(&result[..], [E::CartCheckedOut { total, .. }] if total.amount == expected),
        "got {result:?}"
    );
}

#[test]
fn checkout_of_an_empty_cart_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[created()]),
            C::CheckOut {
                actor: alice(),
                order_id: order_id(1),
            },
        ),
        R::Empty,
        InvalidState,
        "cart-empty",
    );
}

#[test]
fn checkout_of_a_cart_emptied_by_removal_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&[
                created(),
                added(1, eur(100), 1, 1),
                E::CartItemRemoved {
                    cart_id: cart_id(1),
                    product_id: product_id(1),
                },
            ]),
            C::CheckOut {
                actor: alice(),
                order_id: order_id(1),
            },
        ),
        R::Empty,
        InvalidState,
        "cart-empty",
    );
}

#[test]
fn checkout_by_someone_else_is_not_found() {
    then_rejected(
        when(
            &given::<Cart>(&[created(), added(1, eur(100), 1, 1)]),
            C::CheckOut {
                actor: admin(),
                order_id: order_id(1),
            },
        ),
        R::NotFound,
        NotFound,
        "cart-not-found",
    );
}

fn checked_out_cart() -> Vec<E> {
    vec![
        created(),
        added(1, eur(100), 1, 1),
        checked_out_event(vec![line(1, eur(100), 1)], eur(100)),
    ]
}

#[test]
fn checkout_twice_is_rejected() {
    then_rejected(
        when(
            &given::<Cart>(&checked_out_cart()),
            C::CheckOut {
                actor: alice(),
                order_id: order_id(2),
            },
        ),
        R::CheckedOut,
        InvalidState,
        "cart-checked-out",
    );
}

#[test]
fn after_checkout_every_mutation_is_rejected() {
    let state = given::<Cart>(&checked_out_cart());
    let commands = [
        add(alice(), 1, eur(100), 10, 1),
        add(alice(), 2, eur(100), 10, 1),
        C::ChangeQuantity {
            actor: alice(),
            product_id: product_id(1),
            quantity: qty(2),
        },
        // Even the same quantity, or a product that is not there.
        C::ChangeQuantity {
            actor: alice(),
            product_id: product_id(1),
            quantity: qty(1),
        },
        C::ChangeQuantity {
            actor: alice(),
            product_id: product_id(9),
            quantity: qty(1),
        },
        C::RemoveItem {
            actor: alice(),
            product_id: product_id(1),
        },
        C::RemoveItem {
            actor: alice(),
            product_id: product_id(9),
        },
    ];
    for command in commands {
        then_rejected(
            when(&state, command),
            R::CheckedOut,
            InvalidState,
            "cart-checked-out",
        );
    }
    then_rejected(
        when(
            &state,
            C::Create {
                cart_id: cart_id(1),
                owner: customer_id("alice"),
            },
        ),
        R::AlreadyExists,
        InvalidState,
        "cart-exists",
    );
}

#[test]
fn after_checkout_a_stranger_still_sees_nothing() {
    then_rejected(
        when(
            &given::<Cart>(&checked_out_cart()),
            add(bob(), 1, eur(100), 10, 1),
        ),
        R::NotFound,
        NotFound,
        "cart-not-found",
    );
}

#[test]
fn event_types_are_the_variant_names() {
    let cases = [
        (created(), "CartCreated"),
        (added(1, eur(1), 1, 1), "CartItemAdded"),
        (
            E::CartItemQuantityChanged {
                cart_id: cart_id(1),
                product_id: product_id(1),
                quantity: qty(1),
            },
            "CartItemQuantityChanged",
        ),
        (
            E::CartItemRemoved {
                cart_id: cart_id(1),
                product_id: product_id(1),
            },
            "CartItemRemoved",
        ),
        (
            checked_out_event(vec![line(1, eur(1), 1)], eur(1)),
            "CartCheckedOut",
        ),
    ];
    for (event, name) in cases {
        assert_eq!(event.event_type(), name);
        let json = serde_json::to_value(&event).expect("serialize");
        assert_eq!(json["type"], name, "serde tag of {event:?}");
    }
    assert_eq!(<Cart as Aggregate>::STREAM_TYPE, "cart");
}

#[test]
fn a_stored_quantity_outside_1_to_99_does_not_deserialise() {
    let mut json = serde_json::to_value(added(1, eur(1), 1, 1)).expect("serialize");
    json["data"]["quantity"] = serde_json::json!(Quantity::MAX + 1);
    assert!(serde_json::from_value::<E>(json).is_err());
}

#[test]
fn a_cart_of_free_items_only_cannot_be_checked_out() {
    let state = given::<Cart>(&[created(), added(1, eur(0), 2, 2)]);
    then_rejected(
        when(
            &state,
            C::CheckOut {
                actor: alice(),
                order_id: order_id(1),
            },
        ),
        R::ZeroTotal,
        Unprocessable,
        "zero-total",
    );
}
