//! Given/when/then tests of the product aggregate: every branch of `decide`.

mod support;

use std::collections::BTreeMap;

use domain::RejectionKind::{InvalidState, NotFound, Unprocessable};
use domain::product::{
    NewProduct, Product, ProductCommand as C, ProductEvent as E, ProductRejection as R,
};
use domain::values::{ImageUrl, MAX_UNITS, ProductName, Units};
use domain::{Aggregate, DomainEvent};
use support::*;

fn new_product(stock: Units) -> NewProduct {
    NewProduct {
        product_id: product_id(1),
        sku: sku(1),
        name: name(1),
        description: description(),
        category: category(),
        price: eur(1_000),
        stock,
        image_urls: Vec::new(),
    }
}

fn created(stock: Units) -> E {
    E::ProductCreated(new_product(stock))
}

fn reserved(order: u128, quantity: Units, available: Units) -> E {
    E::StockReserved {
        product_id: product_id(1),
        order_id: order_id(order),
        quantity,
        available,
    }
}

fn discontinued() -> E {
    E::ProductDiscontinued {
        product_id: product_id(1),
    }
}

fn details(p: &Product) -> &domain::product::ProductDetails {
    p.0.as_ref().expect("product exists")
}

// ---- create ----------------------------------------------------------------------------------

#[test]
fn create_records_the_new_product() {
    let events = then(
        when(&given::<Product>(&[]), C::Create(new_product(10))),
        vec![created(10)],
    );
    let p = apply(Product::default(), &events);
    let d = details(&p);
    assert_eq!(d.product_id, product_id(1));
    assert_eq!(d.sku, sku(1));
    assert_eq!(d.name, name(1));
    assert_eq!(d.category, category());
    assert_eq!(d.price, eur(1_000));
    assert_eq!(d.available, 10);
    assert!(d.reservations.is_empty());
    assert!(!d.discontinued);
    assert_eq!(events[0].event_type(), "ProductCreated");
}

#[test]
fn create_accepts_zero_and_max_stock() {
    then(
        when(&given::<Product>(&[]), C::Create(new_product(0))),
        vec![created(0)],
    );
    then(
        when(&given::<Product>(&[]), C::Create(new_product(MAX_UNITS))),
        vec![created(MAX_UNITS)],
    );
}

#[test]
fn create_with_stock_above_max_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[]),
            C::Create(new_product(MAX_UNITS + 1)),
        ),
        R::StockOutOfRange {
            result: i64::from(MAX_UNITS) + 1,
        },
        Unprocessable,
        "stock-out-of-range",
    );
}

#[test]
fn create_twice_is_rejected() {
    then_rejected(
        when(&given::<Product>(&[created(5)]), C::Create(new_product(5))),
        R::AlreadyExists,
        InvalidState,
        "product-exists",
    );
}

#[test]
fn every_other_command_on_a_missing_product_is_not_found() {
    let commands = [
        C::ChangePrice { price: eur(1) },
        C::AdjustStock { delta: 1 },
        C::Discontinue,
        C::Reserve {
            order_id: order_id(1),
            quantity: 1,
        },
        C::Release {
            order_id: order_id(1),
        },
    ];
    for command in commands {
        then_rejected(
            when(&given::<Product>(&[]), command),
            R::NotFound,
            NotFound,
            "product-not-found",
        );
    }
}

#[test]
fn events_before_creation_leave_the_product_missing() {
    let p = given::<Product>(&[discontinued(), reserved(1, 1, 0)]);
    assert_eq!(p, Product(None));
}

// ---- change price ----------------------------------------------------------------------------

// ---- change details ----------------------------------------------------------------------------

fn picture(n: u32) -> ImageUrl {
    ImageUrl::parse(&format!("https://img.example/{n}.jpg")).unwrap()
}

#[test]
fn change_details_records_the_whole_new_description() {
    let state = given::<Product>(&[created(5)]);
    let renamed = ProductName::parse("Blue mug").unwrap();
    let events = then(
        when(
            &state,
            C::ChangeDetails {
                name: Some(renamed.clone()),
                description: None,
                category: None,
                image_urls: Some(vec![picture(1), picture(2)]),
            },
        ),
        vec![E::ProductDetailsChanged {
            product_id: product_id(1),
            name: renamed.clone(),
            description: description(),
            category: category(),
            image_urls: vec![picture(1), picture(2)],
        }],
    );
    let p = apply(state, &events);
    assert_eq!(details(&p).name, renamed);
    assert_eq!(details(&p).image_urls, vec![picture(1), picture(2)]);
    assert_eq!(events[0].event_type(), "ProductDetailsChanged");
}

#[test]
fn change_details_to_what_they_are_changes_nothing() {
    let state = given::<Product>(&[created(5)]);
    then(
        when(
            &state,
            C::ChangeDetails {
                name: Some(name(1)),
                description: Some(description()),
                category: None,
                image_urls: Some(vec![]),
            },
        ),
        vec![],
    );
}

#[test]
fn change_details_of_a_discontinued_or_missing_product_is_rejected() {
    let change = || C::ChangeDetails {
        name: Some(name(2)),
        description: None,
        category: None,
        image_urls: None,
    };
    then_rejected(
        when(&given::<Product>(&[created(5), discontinued()]), change()),
        R::Discontinued,
        Unprocessable,
        "product-discontinued",
    );
    then_rejected(
        when(&given::<Product>(&[]), change()),
        R::NotFound,
        NotFound,
        "product-not-found",
    );
}

#[test]
fn image_urls_are_absolute_web_urls_without_spaces() {
    assert!(ImageUrl::parse("https://img.example/a.jpg").is_ok());
    assert!(ImageUrl::parse("http://img.example").is_ok());
    for bad in [
        "ftp://img.example/a.jpg",
        "https://",
        "https:///a.jpg",
        "/a.jpg",
        "https://img.example/a b.jpg",
        "https://img.example/\u{0}",
        "javascript:alert(1)",
    ] {
        assert!(ImageUrl::parse(bad).is_err(), "{bad}");
    }
    assert!(ImageUrl::parse(&format!("https://x.example/{}", "a".repeat(2048))).is_err());
    let eleven: Vec<String> = (0..11).map(|n| format!("https://x.example/{n}")).collect();
    assert!(ImageUrl::parse_all(&eleven).is_err());
    assert_eq!(ImageUrl::parse_all(&eleven[..10]).unwrap().len(), 10);
}

#[test]
fn change_price_records_old_and_new_price() {
    let events = then(
        when(
            &given::<Product>(&[created(5)]),
            C::ChangePrice { price: eur(1_250) },
        ),
        vec![E::ProductPriceChanged {
            product_id: product_id(1),
            old_price: eur(1_000),
            new_price: eur(1_250),
        }],
    );
    let p = apply(given::<Product>(&[created(5)]), &events);
    assert_eq!(details(&p).price, eur(1_250));
}

#[test]
fn change_to_free_is_a_price_change() {
    then(
        when(
            &given::<Product>(&[created(5)]),
            C::ChangePrice { price: eur(0) },
        ),
        vec![E::ProductPriceChanged {
            product_id: product_id(1),
            old_price: eur(1_000),
            new_price: eur(0),
        }],
    );
}

#[test]
fn change_to_the_same_price_changes_nothing() {
    then(
        when(
            &given::<Product>(&[created(5)]),
            C::ChangePrice { price: eur(1_000) },
        ),
        vec![],
    );
}

#[test]
fn change_of_currency_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5)]),
            C::ChangePrice { price: usd(1_000) },
        ),
        R::CurrencyChange {
            current: "EUR".into(),
        },
        Unprocessable,
        "currency-change",
    );
}

#[test]
fn change_price_of_discontinued_product_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5), discontinued()]),
            C::ChangePrice { price: eur(2_000) },
        ),
        R::Discontinued,
        Unprocessable,
        "product-discontinued",
    );
}

// ---- adjust stock ----------------------------------------------------------------------------

#[test]
fn adjust_stock_up_and_down() {
    let p = given::<Product>(&[created(5)]);
    let up = then(
        when(&p, C::AdjustStock { delta: 7 }),
        vec![E::ProductStockAdjusted {
            product_id: product_id(1),
            delta: 7,
            available: 12,
        }],
    );
    let p = apply(p, &up);
    assert_eq!(details(&p).available, 12);
    let down = then(
        when(&p, C::AdjustStock { delta: -12 }),
        vec![E::ProductStockAdjusted {
            product_id: product_id(1),
            delta: -12,
            available: 0,
        }],
    );
    assert_eq!(details(&apply(p, &down)).available, 0);
}

#[test]
fn adjust_stock_by_zero_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5)]),
            C::AdjustStock { delta: 0 },
        ),
        R::ZeroAdjustment,
        Unprocessable,
        "zero-stock-adjustment",
    );
}

#[test]
fn adjust_stock_below_zero_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5)]),
            C::AdjustStock { delta: -6 },
        ),
        R::StockOutOfRange { result: -1 },
        Unprocessable,
        "stock-out-of-range",
    );
}

#[test]
fn adjust_stock_by_the_most_negative_delta_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5)]),
            C::AdjustStock { delta: i64::MIN },
        ),
        R::StockOutOfRange {
            result: i64::MIN + 5,
        },
        Unprocessable,
        "stock-out-of-range",
    );
}

#[test]
fn adjust_stock_up_to_exactly_max_is_accepted() {
    then(
        when(
            &given::<Product>(&[created(5)]),
            C::AdjustStock {
                delta: i64::from(MAX_UNITS) - 5,
            },
        ),
        vec![E::ProductStockAdjusted {
            product_id: product_id(1),
            delta: i64::from(MAX_UNITS) - 5,
            available: MAX_UNITS,
        }],
    );
}

#[test]
fn adjust_stock_above_max_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5)]),
            C::AdjustStock {
                delta: i64::from(MAX_UNITS) - 4,
            },
        ),
        R::StockOutOfRange {
            result: i64::from(MAX_UNITS) + 1,
        },
        Unprocessable,
        "stock-out-of-range",
    );
}

#[test]
fn adjust_stock_by_the_largest_delta_is_rejected_not_a_panic() {
    let p = given::<Product>(&[created(5)]);
    let result = std::panic::catch_unwind(|| p.decide(C::AdjustStock { delta: i64::MAX }));
    let result = result.expect("decide must not panic on a huge delta");
    assert!(
        matches!(result, Err(R::StockOutOfRange { result }) if result > i64::from(MAX_UNITS)),
        "got {result:?}"
    );
}

#[test]
fn stock_can_still_be_counted_after_discontinue() {
    then(
        when(
            &given::<Product>(&[created(5), discontinued()]),
            C::AdjustStock { delta: -2 },
        ),
        vec![E::ProductStockAdjusted {
            product_id: product_id(1),
            delta: -2,
            available: 3,
        }],
    );
}

// ---- discontinue -----------------------------------------------------------------------------

#[test]
fn discontinue_marks_the_product() {
    let events = then(
        when(&given::<Product>(&[created(5)]), C::Discontinue),
        vec![discontinued()],
    );
    assert!(details(&apply(given::<Product>(&[created(5)]), &events)).discontinued);
}

#[test]
fn discontinue_twice_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5), discontinued()]),
            C::Discontinue,
        ),
        R::Discontinued,
        Unprocessable,
        "product-discontinued",
    );
}

// ---- reserve ---------------------------------------------------------------------------------

#[test]
fn reserve_holds_units_for_the_order() {
    let events = then(
        when(
            &given::<Product>(&[created(5)]),
            C::Reserve {
                order_id: order_id(1),
                quantity: 3,
            },
        ),
        vec![reserved(1, 3, 2)],
    );
    let p = apply(given::<Product>(&[created(5)]), &events);
    assert_eq!(details(&p).available, 2);
    assert_eq!(details(&p).reservations, BTreeMap::from([(order_id(1), 3)]));
}

#[test]
fn reserve_the_last_units() {
    then(
        when(
            &given::<Product>(&[created(5), reserved(1, 3, 2)]),
            C::Reserve {
                order_id: order_id(2),
                quantity: 2,
            },
        ),
        vec![reserved(2, 2, 0)],
    );
}

#[test]
fn reserve_again_for_the_same_order_changes_nothing() {
    let p = given::<Product>(&[created(5), reserved(1, 3, 2)]);
    then(
        when(
            &p,
            C::Reserve {
                order_id: order_id(1),
                quantity: 3,
            },
        ),
        vec![],
    );
    // Even with a different quantity, and even once nothing is left or the product is gone.
    then(
        when(
            &p,
            C::Reserve {
                order_id: order_id(1),
                quantity: 99,
            },
        ),
        vec![],
    );
    then(
        when(
            &given::<Product>(&[created(5), reserved(1, 3, 2), discontinued()]),
            C::Reserve {
                order_id: order_id(1),
                quantity: 3,
            },
        ),
        vec![],
    );
}

#[test]
fn reserve_more_than_available_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5), reserved(1, 3, 2)]),
            C::Reserve {
                order_id: order_id(2),
                quantity: 3,
            },
        ),
        R::InsufficientStock {
            requested: 3,
            available: 2,
        },
        Unprocessable,
        "insufficient-stock",
    );
}

#[test]
fn reserve_on_discontinued_product_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5), discontinued()]),
            C::Reserve {
                order_id: order_id(1),
                quantity: 1,
            },
        ),
        R::Discontinued,
        Unprocessable,
        "product-discontinued",
    );
}

#[test]
fn reserve_zero_units_is_rejected() {
    then_rejected(
        when(
            &given::<Product>(&[created(5)]),
            C::Reserve {
                order_id: order_id(1),
                quantity: 0,
            },
        ),
        R::EmptyReservation,
        Unprocessable,
        "empty-reservation",
    );
}

// ---- release ---------------------------------------------------------------------------------

#[test]
fn release_gives_the_units_back() {
    let p = given::<Product>(&[created(5), reserved(1, 3, 2), reserved(2, 1, 1)]);
    let events = then(
        when(
            &p,
            C::Release {
                order_id: order_id(1),
            },
        ),
        vec![E::StockReleased {
            product_id: product_id(1),
            order_id: order_id(1),
            quantity: 3,
            available: 4,
        }],
    );
    let p = apply(p, &events);
    assert_eq!(details(&p).available, 4);
    assert_eq!(details(&p).reservations, BTreeMap::from([(order_id(2), 1)]));
    // Released: the same order may now reserve afresh.
    then(
        when(
            &p,
            C::Reserve {
                order_id: order_id(1),
                quantity: 4,
            },
        ),
        vec![reserved(1, 4, 0)],
    );
}

#[test]
fn release_without_reservation_changes_nothing() {
    then(
        when(
            &given::<Product>(&[created(5), reserved(1, 3, 2)]),
            C::Release {
                order_id: order_id(2),
            },
        ),
        vec![],
    );
}

#[test]
fn release_on_discontinued_product_still_gives_units_back() {
    then(
        when(
            &given::<Product>(&[created(5), reserved(1, 3, 2), discontinued()]),
            C::Release {
                order_id: order_id(1),
            },
        ),
        vec![E::StockReleased {
            product_id: product_id(1),
            order_id: order_id(1),
            quantity: 3,
            available: 5,
        }],
    );
}

#[test]
fn release_never_lifts_available_above_max_units() {
    // Every unit is held, then a delivery fills the shelf again: on hand is now 2 × MAX_UNITS.
    let p = given::<Product>(&[created(MAX_UNITS), reserved(1, MAX_UNITS, 0)]);
    let restock = when(
        &p,
        C::AdjustStock {
            delta: i64::from(MAX_UNITS),
        },
    );
    let p = match restock {
        Ok(events) => apply(p, &events),
        // Rejecting the restock would keep the invariant too.
        Err(_) => p,
    };
    let release = when(
        &p,
        C::Release {
            order_id: order_id(1),
        },
    )
    .expect("release is always accepted");
    let p = apply(p, &release);
    assert!(
        details(&p).available <= MAX_UNITS,
        "available {} exceeds MAX_UNITS",
        details(&p).available
    );
}

#[test]
fn release_never_loses_units() {
    // Four orders each try to hold MAX_UNITS and the shelf is refilled after each one; the
    // refills that would put more than MAX_UNITS on hand are refused, and so are the
    // reservations that then find an empty shelf.
    let mut p = given::<Product>(&[created(MAX_UNITS)]);
    let mut adjusted: i64 = 0;
    for order in 1..=4 {
        if let Ok(events) = when(
            &p,
            C::Reserve {
                order_id: order_id(order),
                quantity: MAX_UNITS,
            },
        ) {
            p = apply(p, &events);
        }
        if let Ok(events) = when(
            &p,
            C::AdjustStock {
                delta: i64::from(MAX_UNITS),
            },
        ) {
            adjusted += i64::from(MAX_UNITS);
            p = apply(p, &events);
        }
    }
    for order in 1..=4 {
        let events = when(
            &p,
            C::Release {
                order_id: order_id(order),
            },
        )
        .expect("release");
        p = apply(p, &events);
    }
    assert!(details(&p).reservations.is_empty());
    assert_eq!(
        i64::from(details(&p).available),
        i64::from(MAX_UNITS) + adjusted,
        "units on hand after releasing everything"
    );
}

#[test]
fn event_types_are_the_variant_names() {
    let p = product_id(1);
    let o = order_id(1);
    let cases = [
        (created(1), "ProductCreated"),
        (
            E::ProductPriceChanged {
                product_id: p,
                old_price: eur(1),
                new_price: eur(2),
            },
            "ProductPriceChanged",
        ),
        (
            E::ProductStockAdjusted {
                product_id: p,
                delta: 1,
                available: 2,
            },
            "ProductStockAdjusted",
        ),
        (discontinued(), "ProductDiscontinued"),
        (reserved(1, 1, 0), "StockReserved"),
        (
            E::StockReleased {
                product_id: p,
                order_id: o,
                quantity: 1,
                available: 1,
            },
            "StockReleased",
        ),
    ];
    for (event, name) in cases {
        assert_eq!(event.event_type(), name);
        let json = serde_json::to_value(&event).expect("serialize");
        assert_eq!(json["type"], name, "serde tag of {event:?}");
    }
}

#[test]
fn stream_type_is_product() {
    assert_eq!(<Product as Aggregate>::STREAM_TYPE, "product");
    assert_eq!(
        product_id(1).stream_id(),
        format!("product-{}", product_id(1).0)
    );
}
