//! Given/when/then tests of the payment aggregate: every branch of `decide`.

mod support;

use domain::RejectionKind::{InvalidState, NotFound, Unprocessable};
use domain::payment::{
    Payment, PaymentCommand as C, PaymentDetails, PaymentEvent as E, PaymentRejection as R,
    PaymentStatus, PaymentStatus as S,
};
use domain::values::{Money, RefundId};
use domain::{Aggregate, DomainEvent};
use support::*;

fn request(amount: Money) -> C {
    C::Request {
        payment_id: payment_id(1),
        order_id: order_id(1),
        amount,
        token: token("tok_visa"),
    }
}

fn requested() -> E {
    E::PaymentRequested {
        payment_id: payment_id(1),
        order_id: order_id(1),
        amount: eur(600),
        token: token("tok_visa"),
    }
}

fn attempt_failed(attempt: u32) -> E {
    E::PaymentAttemptFailed {
        payment_id: payment_id(1),
        attempt,
        error: "timeout".into(),
    }
}

fn captured() -> E {
    E::PaymentCaptured {
        payment_id: payment_id(1),
        order_id: order_id(1),
        amount: eur(600),
        provider_reference: "ch_123".into(),
    }
}

fn declined() -> E {
    E::PaymentDeclined {
        payment_id: payment_id(1),
        order_id: order_id(1),
        reason: "card declined".into(),
    }
}

fn refund_id(n: u128) -> RefundId {
    RefundId(uuid::Uuid::from_u128(0xf00 + n))
}

fn refunded_of(n: u128, amount: i64) -> E {
    E::PaymentRefunded {
        payment_id: payment_id(1),
        order_id: order_id(1),
        refund_id: refund_id(n),
        amount: eur(amount),
        reason: "order cancelled".into(),
        provider_refund_id: Some(format!("re_{n}")),
    }
}

fn refunded() -> E {
    refunded_of(1, 600)
}

fn history(status: PaymentStatus) -> Vec<E> {
    match status {
        S::Requested => vec![requested()],
        S::Captured => vec![requested(), captured()],
        S::Declined => vec![requested(), declined()],
        S::Refunded => vec![requested(), captured(), refunded()],
    }
}

fn payment_in(status: PaymentStatus) -> Payment {
    let payment = given::<Payment>(&history(status));
    assert_eq!(details(&payment).status, status, "fixture for {status:?}");
    payment
}

fn details(p: &Payment) -> &PaymentDetails {
    p.0.as_ref().expect("payment exists")
}

#[track_caller]
fn illegal(result: Result<Vec<E>, R>, action: &'static str, status: PaymentStatus) {
    then_rejected(
        result,
        R::IllegalTransition { action, status },
        InvalidState,
        "illegal-payment-transition",
    );
}

fn fail() -> C {
    C::RecordAttemptFailed {
        error: "timeout".into(),
    }
}

fn capture() -> C {
    C::RecordCaptured {
        provider_reference: "ch_123".into(),
    }
}

fn decline() -> C {
    C::RecordDeclined {
        reason: "card declined".into(),
    }
}

fn refund_of(n: u128, amount: i64) -> C {
    C::Refund {
        refund_id: refund_id(n),
        amount: Money { amount, ..eur(0) },
        reason: "order cancelled".into(),
        provider_refund_id: Some(format!("re_{n}")),
    }
}

fn refund() -> C {
    refund_of(1, 600)
}

// ---- request ---------------------------------------------------------------------------------

#[test]
fn request_records_the_payment() {
    let events = then(
        when(&given::<Payment>(&[]), request(eur(600))),
        vec![requested()],
    );
    assert_eq!(
        details(&apply(Payment::default(), &events)),
        &PaymentDetails {
            payment_id: payment_id(1),
            order_id: order_id(1),
            amount: eur(600),
            token: token("tok_visa"),
            status: S::Requested,
            failed_attempts: 0,
            provider_reference: None,
            action_required: false,
            refunded: eur(0),
            refund_ids: vec![],
        }
    );
}

#[test]
fn request_of_one_minor_unit_is_accepted() {
    assert!(when(&given::<Payment>(&[]), request(eur(1))).is_ok());
}

#[test]
fn request_of_a_non_positive_amount_is_rejected() {
    let negative = Money {
        amount: -1,
        ..eur(0)
    };
    for amount in [eur(0), negative] {
        then_rejected(
            when(&given::<Payment>(&[]), request(amount)),
            R::NonPositiveAmount,
            Unprocessable,
            "non-positive-amount",
        );
    }
}

#[test]
fn request_twice_is_rejected() {
    for status in [S::Requested, S::Captured, S::Declined, S::Refunded] {
        then_rejected(
            when(&payment_in(status), request(eur(600))),
            R::AlreadyExists,
            InvalidState,
            "payment-exists",
        );
    }
}

#[test]
fn every_other_command_on_a_missing_payment_is_not_found() {
    for command in [fail(), capture(), decline(), refund()] {
        then_rejected(
            when(&given::<Payment>(&[]), command),
            R::NotFound,
            NotFound,
            "payment-not-found",
        );
    }
}

#[test]
fn events_before_the_request_leave_the_payment_missing() {
    assert_eq!(given::<Payment>(&[captured()]), Payment(None));
}

// ---- failed attempts -------------------------------------------------------------------------

#[test]
fn each_failed_attempt_is_numbered() {
    let mut payment = payment_in(S::Requested);
    for attempt in 1..=3 {
        let events = then(when(&payment, fail()), vec![attempt_failed(attempt)]);
        payment = apply(payment, &events);
        assert_eq!(details(&payment).failed_attempts, attempt);
        assert_eq!(details(&payment).status, S::Requested);
    }
    // A failed attempt does not stop a later success.
    then(when(&payment, capture()), vec![captured()]);
}

#[test]
fn failed_attempt_after_an_outcome_is_illegal() {
    for status in [S::Captured, S::Declined, S::Refunded] {
        illegal(
            when(&payment_in(status), fail()),
            "record a failed attempt of",
            status,
        );
    }
}

// ---- outcomes --------------------------------------------------------------------------------

#[test]
fn capture_of_a_requested_payment() {
    let events = then(when(&payment_in(S::Requested), capture()), vec![captured()]);
    assert_eq!(
        details(&apply(payment_in(S::Requested), &events)).status,
        S::Captured
    );
}

#[test]
fn capture_after_an_outcome_is_illegal() {
    for status in [S::Captured, S::Declined, S::Refunded] {
        illegal(when(&payment_in(status), capture()), "capture", status);
    }
}

#[test]
fn decline_of_a_requested_payment() {
    let state = given::<Payment>(&[requested(), attempt_failed(1)]);
    let events = then(when(&state, decline()), vec![declined()]);
    let payment = apply(state, &events);
    assert_eq!(details(&payment).status, S::Declined);
    assert_eq!(details(&payment).failed_attempts, 1);
}

#[test]
fn decline_after_an_outcome_is_illegal() {
    for status in [S::Captured, S::Declined, S::Refunded] {
        illegal(when(&payment_in(status), decline()), "decline", status);
    }
}

// ---- pending at the provider -----------------------------------------------------------------

fn pending(action_required: bool) -> C {
    C::RecordPending {
        provider_reference: "pi_123".into(),
        action_required,
    }
}

#[test]
fn a_payment_the_provider_has_not_decided_waits_then_is_captured() {
    let events = then(
        when(&payment_in(S::Requested), pending(true)),
        vec![E::PaymentPending {
            payment_id: payment_id(1),
            order_id: order_id(1),
            provider_reference: "pi_123".into(),
            action_required: true,
        }],
    );
    let payment = apply(payment_in(S::Requested), &events);
    assert_eq!(details(&payment).status, S::Requested);
    assert!(details(&payment).action_required);
    // The same news twice is recorded once; the customer acting changes it.
    then_rejected(
        when(&payment, pending(true)),
        R::PendingRecorded,
        InvalidState,
        "payment-pending-recorded",
    );
    assert!(when(&payment, pending(false)).is_ok());
    let payment = apply(payment, &[captured()]);
    assert_eq!(
        details(&payment).provider_reference.as_deref(),
        Some("ch_123")
    );
    assert!(!details(&payment).action_required);
}

#[test]
fn only_a_requested_payment_can_be_pending() {
    for status in [S::Captured, S::Declined, S::Refunded] {
        illegal(
            when(&payment_in(status), pending(false)),
            "record a pending outcome of",
            status,
        );
    }
}

// ---- refund ----------------------------------------------------------------------------------

#[test]
fn refund_of_a_captured_payment() {
    let events = then(when(&payment_in(S::Captured), refund()), vec![refunded()]);
    assert_eq!(
        details(&apply(payment_in(S::Captured), &events)).status,
        S::Refunded
    );
}

#[test]
fn refund_of_anything_not_captured_is_illegal() {
    for status in [S::Requested, S::Declined, S::Refunded] {
        illegal(when(&payment_in(status), refund_of(2, 1)), "refund", status);
    }
}

#[test]
fn a_payment_is_refunded_in_parts_up_to_what_was_captured() {
    let payment = apply(payment_in(S::Captured), &[refunded_of(1, 200)]);
    assert_eq!(details(&payment).status, S::Captured, "400 are left");
    assert_eq!(details(&payment).refunded, eur(200));
    then_rejected(
        when(&payment, refund_of(2, 401)),
        R::RefundExceedsCapture {
            refundable: eur(400),
        },
        Unprocessable,
        "refund-exceeds-payment",
    );
    then(when(&payment, refund_of(2, 400)), vec![refunded_of(2, 400)]);
    let payment = apply(payment, &[refunded_of(2, 400)]);
    assert_eq!(details(&payment).status, S::Refunded);
}

#[test]
fn a_refund_id_is_given_back_once() {
    let payment = apply(payment_in(S::Captured), &[refunded_of(1, 200)]);
    then_rejected(
        when(&payment, refund_of(1, 200)),
        R::RefundRecorded(refund_id(1)),
        InvalidState,
        "refund-recorded",
    );
}

#[test]
fn a_refund_is_positive() {
    for amount in [0, -1] {
        then_rejected(
            when(&payment_in(S::Captured), refund_of(1, amount)),
            R::NonPositiveAmount,
            Unprocessable,
            "non-positive-amount",
        );
    }
}

#[test]
fn event_types_are_the_variant_names() {
    let cases = [
        (requested(), "PaymentRequested"),
        (attempt_failed(1), "PaymentAttemptFailed"),
        (captured(), "PaymentCaptured"),
        (declined(), "PaymentDeclined"),
        (refunded(), "PaymentRefunded"),
    ];
    for (event, name) in cases {
        assert_eq!(event.event_type(), name);
        let json = serde_json::to_value(&event).expect("serialize");
        assert_eq!(json["type"], name, "serde tag of {event:?}");
    }
    assert_eq!(<Payment as Aggregate>::STREAM_TYPE, "payment");
}
