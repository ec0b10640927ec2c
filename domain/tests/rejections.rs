//! Every rejection of every aggregate and of checkout: a code means one class (and so one HTTP
//! status) wherever it is raised, and every rejection explains itself.

mod support;

use std::collections::BTreeMap;

use chrono::DateTime;
use domain::cart::CartRejection;
use domain::checkout::CheckoutRejection;
use domain::order::{OrderRejection, OrderStatus};
use domain::payment::{PaymentRejection, PaymentStatus};
use domain::product::ProductRejection;
use domain::values::{Currency, Money, RefundId};
use domain::{Rejection, RejectionKind};
use support::*;

/// One of each variant; a new variant must be added here to be counted.
fn every_rejection() -> Vec<Box<dyn Rejection>> {
    let eur = Currency::parse("EUR").unwrap();
    let usd = Currency::parse("USD").unwrap();
    vec![
        Box::new(CartRejection::NotFound),
        Box::new(CartRejection::AlreadyExists),
        Box::new(CartRejection::CheckedOut),
        Box::new(CartRejection::ItemNotInCart),
        Box::new(CartRejection::ProductDiscontinued),
        Box::new(CartRejection::NotEnoughStock { available: 1 }),
        Box::new(CartRejection::LineQuantityLimit),
        Box::new(CartRejection::TooManyLines),
        Box::new(CartRejection::CurrencyMismatch {
            cart: eur,
            product: usd,
        }),
        Box::new(CartRejection::Empty),
        Box::new(CartRejection::ZeroTotal),
        Box::new(OrderRejection::NotFound),
        Box::new(OrderRejection::AlreadyExists),
        Box::new(OrderRejection::NoLines),
        Box::new(OrderRejection::MixedCurrencies),
        Box::new(OrderRejection::ZeroTotal),
        Box::new(OrderRejection::IllegalTransition {
            action: "ship",
            status: OrderStatus::Placed,
        }),
        Box::new(OrderRejection::PaymentInProgress),
        Box::new(OrderRejection::UnknownPayment(payment_id(1))),
        Box::new(OrderRejection::DeadlineNotReached(
            DateTime::from_timestamp(0, 0).unwrap(),
        )),
        Box::new(OrderRejection::NotOwner),
        Box::new(OrderRejection::AdminOnly),
        Box::new(OrderRejection::NonPositiveRefund),
        Box::new(OrderRejection::RefundCurrency { order: eur }),
        Box::new(OrderRejection::RefundExceedsPayment {
            refundable: Money::zero(eur),
        }),
        Box::new(OrderRejection::RefundRecorded(RefundId(Default::default()))),
        Box::new(OrderRejection::PaymentActionRecorded),
        Box::new(ProductRejection::NotFound),
        Box::new(ProductRejection::AlreadyExists),
        Box::new(ProductRejection::Discontinued),
        Box::new(ProductRejection::InsufficientStock {
            requested: 2,
            available: 1,
        }),
        Box::new(ProductRejection::StockOutOfRange { result: -1 }),
        Box::new(ProductRejection::ZeroAdjustment),
        Box::new(ProductRejection::CurrencyChange {
            current: "EUR".into(),
        }),
        Box::new(ProductRejection::EmptyReservation),
        Box::new(PaymentRejection::NotFound),
        Box::new(PaymentRejection::AlreadyExists),
        Box::new(PaymentRejection::NonPositiveAmount),
        Box::new(PaymentRejection::RefundExceedsCapture {
            refundable: Money::zero(usd),
        }),
        Box::new(PaymentRejection::RefundRecorded(RefundId(
            Default::default(),
        ))),
        Box::new(PaymentRejection::IllegalTransition {
            action: "capture",
            status: PaymentStatus::Captured,
        }),
        Box::new(CheckoutRejection::ProductDiscontinued { name: name(1) }),
        Box::new(CheckoutRejection::NotInCatalog(product_id(1))),
        Box::new(CheckoutRejection::Cart(CartRejection::Empty)),
        Box::new(CheckoutRejection::Order(OrderRejection::MixedCurrencies)),
    ]
}

#[test]
fn one_code_has_one_class_everywhere() {
    let mut classes: BTreeMap<&str, (RejectionKind, String)> = BTreeMap::new();
    for rejection in every_rejection() {
        let (code, kind) = (rejection.code(), rejection.kind());
        if let Some((seen, by)) = classes.get(code) {
            assert_eq!(
                *seen, kind,
                "{code} is {seen:?} for {by} but {kind:?} for {rejection}"
            );
        }
        classes.insert(code, (kind, rejection.to_string()));
    }
}

#[test]
fn every_rejection_explains_itself_with_a_stable_code() {
    for rejection in every_rejection() {
        let code = rejection.code();
        assert!(!rejection.to_string().is_empty(), "{code}");
        assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
            "codes are lower-case words joined by dashes: {code}"
        );
    }
}
