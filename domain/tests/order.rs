//! Given/when/then tests of the order aggregate: its whole lifecycle, every branch of `decide`.

mod support;

use domain::RejectionKind::{Forbidden, InvalidState, NotFound, Unprocessable};
use domain::order::{
    Order, OrderCommand as C, OrderDetails, OrderEvent as E, OrderRejection as R, OrderStatus,
    OrderStatus as S, order_total,
};
use domain::values::{Actor, Carrier, PaymentId, RefundId, TrackingNumber};
use domain::{Aggregate, DomainEvent};
use support::*;

const ALL_STATUSES: [OrderStatus; 12] = [
    S::Placed,
    S::StockReserved,
    S::AwaitingPayment,
    S::PaymentPending,
    S::PaymentDeclined,
    S::Paid,
    S::Shipped,
    S::Delivered,
    S::Rejected,
    S::Expired,
    S::Cancelled,
    S::Refunded,
];

fn lines() -> Vec<domain::cart::CartLine> {
    vec![line(1, eur(250), 2), line(2, eur(100), 1)]
}

const TOTAL: i64 = 600;
const PAY_BY: i64 = 900;

fn place() -> C {
    C::Place {
        order_id: order_id(1),
        cart_id: cart_id(1),
        customer_id: customer_id("alice"),
        lines: lines(),
    }
}

fn placed() -> E {
    E::OrderPlaced {
        order_id: order_id(1),
        cart_id: cart_id(1),
        customer_id: customer_id("alice"),
        lines: lines(),
        total: eur(TOTAL),
    }
}

fn stock_reserved() -> E {
    E::OrderStockReserved {
        order_id: order_id(1),
    }
}

fn awaiting() -> E {
    E::OrderAwaitingPayment {
        order_id: order_id(1),
        pay_by: at(PAY_BY),
    }
}

fn payment_requested(p: u128) -> E {
    E::OrderPaymentRequested {
        order_id: order_id(1),
        customer_id: customer_id("alice"),
        payment_id: payment_id(p),
        amount: eur(TOTAL),
        token: token("tok_visa"),
    }
}

fn paid(p: u128) -> E {
    E::OrderPaid {
        order_id: order_id(1),
        payment_id: payment_id(p),
        amount: eur(TOTAL),
        provider: "simulated".into(),
        provider_reference: Some(format!("sim_{p}")),
    }
}

fn declined(p: u128) -> E {
    E::OrderPaymentDeclined {
        order_id: order_id(1),
        payment_id: payment_id(p),
        provider: "simulated".into(),
        reason: "card declined".into(),
    }
}

fn capture(p: u128) -> C {
    C::RecordPaymentCaptured {
        payment_id: payment_id(p),
        provider: "simulated".into(),
        provider_reference: format!("sim_{p}"),
    }
}

fn decline(p: u128, reason: &str) -> C {
    C::RecordPaymentDeclined {
        payment_id: payment_id(p),
        provider: "simulated".into(),
        reason: reason.into(),
    }
}

fn cancelled(by: &Actor, refund: Option<PaymentId>) -> E {
    E::OrderCancelled {
        order_id: order_id(1),
        by: by.id.clone(),
        reason: "changed my mind".into(),
        refund,
    }
}

/// A history that leaves the order in `status`; the payment in play is payment 1.
fn history(status: OrderStatus) -> Vec<E> {
    let awaiting_payment = vec![placed(), stock_reserved(), awaiting()];
    let with = |base: Vec<E>, more: &[E]| [base, more.to_vec()].concat();
    match status {
        S::Placed => vec![placed()],
        S::StockReserved => vec![placed(), stock_reserved()],
        S::AwaitingPayment => awaiting_payment,
        S::PaymentPending => with(awaiting_payment, &[payment_requested(1)]),
        S::PaymentDeclined => with(awaiting_payment, &[payment_requested(1), declined(1)]),
        S::Paid => with(awaiting_payment, &[payment_requested(1), paid(1)]),
        S::Shipped => with(history(S::Paid), &[shipped()]),
        S::Delivered => with(
            history(S::Shipped),
            &[E::OrderDelivered {
                order_id: order_id(1),
            }],
        ),
        S::Rejected => vec![
            placed(),
            E::OrderRejected {
                order_id: order_id(1),
                reason: "no stock".into(),
            },
        ],
        S::Expired => with(
            awaiting_payment,
            &[E::OrderExpired {
                order_id: order_id(1),
                pay_by: at(PAY_BY),
            }],
        ),
        S::Cancelled => with(
            history(S::Paid),
            &[cancelled(&alice(), Some(payment_id(1)))],
        ),
        S::Refunded => with(history(S::Cancelled), &[refunded(1, TOTAL)]),
    }
}

fn shipped() -> E {
    E::OrderShipped {
        order_id: order_id(1),
        carrier: Carrier::parse("DHL").unwrap(),
        tracking_number: TrackingNumber::parse("JD0146 0000 1234").unwrap(),
    }
}

fn ship(actor: Actor) -> C {
    C::Ship {
        actor,
        carrier: Carrier::parse("DHL").unwrap(),
        tracking_number: TrackingNumber::parse("JD0146 0000 1234").unwrap(),
    }
}

fn refund_id(n: u128) -> RefundId {
    RefundId(uuid::Uuid::from_u128(0xf00 + n))
}

fn refunded(refund: u128, amount: i64) -> E {
    E::OrderRefunded {
        order_id: order_id(1),
        payment_id: payment_id(1),
        refund_id: refund_id(refund),
        amount: eur(amount),
        provider: "simulated".into(),
        provider_refund_id: Some(format!("simref_{refund}")),
    }
}

fn record_refund(payment: u128, refund: u128, amount: i64) -> C {
    C::RecordRefund {
        payment_id: payment_id(payment),
        refund_id: refund_id(refund),
        amount: eur(amount),
        provider: "simulated".into(),
        provider_refund_id: Some(format!("simref_{refund}")),
    }
}

fn refund(actor: Actor, refund: u128, amount: Option<i64>) -> C {
    C::Refund {
        actor,
        refund_id: refund_id(refund),
        amount: amount.map(eur),
        reason: "damaged in transit".into(),
    }
}

fn refund_requested(refund: u128, amount: i64) -> E {
    E::OrderRefundRequested {
        order_id: order_id(1),
        payment_id: payment_id(1),
        refund_id: refund_id(refund),
        amount: eur(amount),
        reason: "damaged in transit".into(),
        by: customer_id("root"),
    }
}

fn order_in(status: OrderStatus) -> Order {
    let order = given::<Order>(&history(status));
    assert_eq!(details(&order).status, status, "fixture for {status:?}");
    order
}

fn details(o: &Order) -> &OrderDetails {
    o.0.as_ref().expect("order exists")
}

#[track_caller]
fn illegal(result: Result<Vec<E>, R>, action: &'static str, status: OrderStatus) {
    then_rejected(
        result,
        R::IllegalTransition { action, status },
        InvalidState,
        "illegal-order-transition",
    );
}

fn request_payment(actor: Actor, p: u128) -> C {
    C::RequestPayment {
        actor,
        payment_id: payment_id(p),
        token: token("tok_visa"),
    }
}

fn cancel(actor: Actor) -> C {
    C::Cancel {
        actor,
        reason: "changed my mind".into(),
    }
}

// ---- place -----------------------------------------------------------------------------------

#[test]
fn place_records_lines_and_total() {
    let events = then(when(&given::<Order>(&[]), place()), vec![placed()]);
    let order = apply(Order::default(), &events);
    assert_eq!(
        details(&order),
        &OrderDetails {
            order_id: order_id(1),
            cart_id: cart_id(1),
            customer_id: customer_id("alice"),
            lines: lines(),
            total: eur(TOTAL),
            status: S::Placed,
            pay_by: None,
            payment: None,
            payment_action_required: false,
            refunds_requested: eur(0),
            refunded: eur(0),
            refund_ids: vec![],
        }
    );
}

#[test]
fn place_without_lines_is_rejected() {
    then_rejected(
        when(
            &given::<Order>(&[]),
            C::Place {
                order_id: order_id(1),
                cart_id: cart_id(1),
                customer_id: customer_id("alice"),
                lines: vec![],
            },
        ),
        R::NoLines,
        Unprocessable,
        "order-without-lines",
    );
}

#[test]
fn place_with_mixed_currencies_is_rejected() {
    then_rejected(
        when(
            &given::<Order>(&[]),
            C::Place {
                order_id: order_id(1),
                cart_id: cart_id(1),
                customer_id: customer_id("alice"),
                lines: vec![line(1, eur(100), 1), line(2, usd(100), 1)],
            },
        ),
        R::MixedCurrencies,
        Unprocessable,
        "currency-mismatch",
    );
}

#[test]
fn place_twice_is_rejected() {
    for status in ALL_STATUSES {
        then_rejected(
            when(&order_in(status), place()),
            R::AlreadyExists,
            InvalidState,
            "order-exists",
        );
    }
}

#[test]
fn order_total_sums_line_totals() {
    assert_eq!(order_total(&lines()), Some(eur(TOTAL)));
    assert_eq!(order_total(&[]), None);
    assert_eq!(order_total(&[line(1, eur(1), 1), line(2, usd(1), 1)]), None);
}

#[test]
fn every_other_command_on_a_missing_order_is_not_found() {
    let commands = [
        C::ConfirmStockReserved { pay_by: at(PAY_BY) },
        C::Reject {
            reason: "no stock".into(),
        },
        request_payment(alice(), 1),
        capture(1),
        decline(1, "declined"),
        C::Expire { now: at(PAY_BY) },
        cancel(admin()),
        record_refund(1, 1, TOTAL),
        refund(admin(), 1, None),
        ship(admin()),
    ];
    for command in commands {
        then_rejected(
            when(&given::<Order>(&[]), command),
            R::NotFound,
            NotFound,
            "order-not-found",
        );
    }
}

#[test]
fn events_before_placement_leave_the_order_missing() {
    assert_eq!(given::<Order>(&[stock_reserved(), awaiting()]), Order(None));
}

// ---- stock -----------------------------------------------------------------------------------

#[test]
fn confirm_stock_moves_to_awaiting_payment_in_two_events() {
    let events = then(
        when(
            &order_in(S::Placed),
            C::ConfirmStockReserved { pay_by: at(PAY_BY) },
        ),
        vec![stock_reserved(), awaiting()],
    );
    let order = apply(order_in(S::Placed), &events);
    assert_eq!(details(&order).status, S::AwaitingPayment);
    assert_eq!(details(&order).pay_by, Some(at(PAY_BY)));
}

#[test]
fn confirm_stock_only_from_placed() {
    for status in ALL_STATUSES.into_iter().filter(|s| *s != S::Placed) {
        illegal(
            when(
                &order_in(status),
                C::ConfirmStockReserved { pay_by: at(PAY_BY) },
            ),
            "confirm stock for",
            status,
        );
    }
}

#[test]
fn reject_from_placed() {
    let events = then(
        when(
            &order_in(S::Placed),
            C::Reject {
                reason: "no stock".into(),
            },
        ),
        vec![E::OrderRejected {
            order_id: order_id(1),
            reason: "no stock".into(),
        }],
    );
    assert_eq!(
        details(&apply(order_in(S::Placed), &events)).status,
        S::Rejected
    );
}

#[test]
fn reject_only_from_placed() {
    for status in ALL_STATUSES.into_iter().filter(|s| *s != S::Placed) {
        illegal(
            when(
                &order_in(status),
                C::Reject {
                    reason: "no stock".into(),
                },
            ),
            "reject",
            status,
        );
    }
}

// ---- request payment -------------------------------------------------------------------------

#[test]
fn owner_requests_payment_for_the_total() {
    let events = then(
        when(&order_in(S::AwaitingPayment), request_payment(alice(), 1)),
        vec![payment_requested(1)],
    );
    let order = apply(order_in(S::AwaitingPayment), &events);
    assert_eq!(details(&order).status, S::PaymentPending);
    assert_eq!(details(&order).payment, Some(payment_id(1)));
}

#[test]
fn owner_who_is_an_admin_may_pay() {
    then(
        when(
            &order_in(S::AwaitingPayment),
            request_payment(Actor::admin(customer_id("alice")), 1),
        ),
        vec![payment_requested(1)],
    );
}

#[test]
fn payment_may_be_retried_after_a_decline() {
    let state = order_in(S::PaymentDeclined);
    assert_eq!(details(&state).payment, None);
    let events = then(
        when(&state, request_payment(alice(), 2)),
        vec![payment_requested(2)],
    );
    assert_eq!(details(&apply(state, &events)).payment, Some(payment_id(2)));
}

#[test]
fn a_stranger_requesting_payment_is_told_the_order_does_not_exist() {
    for status in ALL_STATUSES {
        then_rejected(
            when(&order_in(status), request_payment(bob(), 2)),
            R::NotFound,
            NotFound,
            "order-not-found",
        );
    }
}

#[test]
fn an_admin_may_not_pay_for_someone_else() {
    then_rejected(
        when(&order_in(S::AwaitingPayment), request_payment(admin(), 2)),
        R::NotOwner,
        Forbidden,
        "not-order-owner",
    );
}

#[test]
fn payment_while_one_is_pending_is_rejected() {
    then_rejected(
        when(&order_in(S::PaymentPending), request_payment(alice(), 2)),
        R::PaymentInProgress,
        InvalidState,
        "payment-in-progress",
    );
}

#[test]
fn payment_from_any_other_state_is_illegal() {
    for status in [
        S::Placed,
        S::StockReserved,
        S::Paid,
        S::Shipped,
        S::Delivered,
        S::Rejected,
        S::Expired,
        S::Cancelled,
        S::Refunded,
    ] {
        illegal(
            when(&order_in(status), request_payment(alice(), 2)),
            "pay",
            status,
        );
    }
}

// ---- payment outcome -------------------------------------------------------------------------

#[test]
fn captured_payment_pays_the_order() {
    let events = then(
        when(&order_in(S::PaymentPending), capture(1)),
        vec![paid(1)],
    );
    let order = apply(order_in(S::PaymentPending), &events);
    assert_eq!(details(&order).status, S::Paid);
    assert_eq!(details(&order).payment, Some(payment_id(1)));
}

#[test]
fn a_payment_waiting_for_the_customer_is_marked_once_and_still_ends_paid() {
    let waiting = C::RecordPaymentActionRequired {
        payment_id: payment_id(1),
        provider: "stripe".into(),
        provider_reference: "pi_1".into(),
    };
    let events = then(
        when(&order_in(S::PaymentPending), waiting.clone()),
        vec![E::OrderPaymentActionRequired {
            order_id: order_id(1),
            payment_id: payment_id(1),
            provider: "stripe".into(),
            provider_reference: "pi_1".into(),
        }],
    );
    let order = apply(order_in(S::PaymentPending), &events);
    assert_eq!(details(&order).status, S::PaymentPending);
    assert!(details(&order).payment_action_required);
    then_rejected(
        when(&order, waiting.clone()),
        R::PaymentActionRecorded,
        InvalidState,
        "payment-action-recorded",
    );
    let order = apply(order, &[paid(1)]);
    assert_eq!(details(&order).status, S::Paid);
    assert!(!details(&order).payment_action_required);
    illegal(
        when(&order, waiting),
        "record a payment result for",
        S::Paid,
    );
}

#[test]
fn declined_payment_frees_the_order_for_another_try() {
    let events = then(
        when(&order_in(S::PaymentPending), decline(1, "card declined")),
        vec![declined(1)],
    );
    let order = apply(order_in(S::PaymentPending), &events);
    assert_eq!(details(&order).status, S::PaymentDeclined);
    assert_eq!(details(&order).payment, None);
}

#[test]
fn outcome_of_another_payment_is_unknown() {
    then_rejected(
        when(&order_in(S::PaymentPending), capture(2)),
        R::UnknownPayment(payment_id(2)),
        InvalidState,
        "unknown-payment",
    );
    then_rejected(
        when(&order_in(S::PaymentPending), decline(2, "declined")),
        R::UnknownPayment(payment_id(2)),
        InvalidState,
        "unknown-payment",
    );
}

#[test]
fn outcome_when_no_payment_is_pending_is_illegal() {
    for status in ALL_STATUSES.into_iter().filter(|s| *s != S::PaymentPending) {
        // Even for the payment that captured: a repeated capture is not recorded twice.
        illegal(
            when(&order_in(status), capture(1)),
            "record a payment result for",
            status,
        );
        illegal(
            when(&order_in(status), decline(1, "declined")),
            "record a payment result for",
            status,
        );
    }
}

// ---- expire ----------------------------------------------------------------------------------

#[test]
fn expire_before_the_deadline_is_rejected() {
    for status in [S::AwaitingPayment, S::PaymentDeclined] {
        then_rejected(
            when(
                &order_in(status),
                C::Expire {
                    now: at(PAY_BY - 1),
                },
            ),
            R::DeadlineNotReached(at(PAY_BY)),
            InvalidState,
            "deadline-not-reached",
        );
    }
}

#[test]
fn expire_at_or_after_the_deadline() {
    for status in [S::AwaitingPayment, S::PaymentDeclined] {
        for now in [at(PAY_BY), at(PAY_BY + 1), at(PAY_BY + 86_400)] {
            let events = then(
                when(&order_in(status), C::Expire { now }),
                // The event names the deadline, not the clock reading.
                vec![E::OrderExpired {
                    order_id: order_id(1),
                    pay_by: at(PAY_BY),
                }],
            );
            assert_eq!(
                details(&apply(order_in(status), &events)).status,
                S::Expired
            );
        }
    }
}

#[test]
fn expire_from_any_other_state_is_illegal() {
    for status in [
        S::Placed,
        S::StockReserved,
        S::PaymentPending,
        S::Paid,
        S::Shipped,
        S::Delivered,
        S::Rejected,
        S::Expired,
        S::Cancelled,
        S::Refunded,
    ] {
        illegal(
            when(
                &order_in(status),
                C::Expire {
                    now: at(PAY_BY + 86_400),
                },
            ),
            "expire",
            status,
        );
    }
}

// ---- cancel ----------------------------------------------------------------------------------

#[test]
fn owner_or_admin_cancels_an_unpaid_order_without_refund() {
    for status in [
        S::Placed,
        S::StockReserved,
        S::AwaitingPayment,
        S::PaymentDeclined,
    ] {
        for actor in [alice(), admin()] {
            let events = then(
                when(&order_in(status), cancel(actor.clone())),
                vec![cancelled(&actor, None)],
            );
            assert_eq!(
                details(&apply(order_in(status), &events)).status,
                S::Cancelled
            );
        }
    }
}

#[test]
fn cancelling_a_paid_order_names_the_payment_to_refund() {
    for actor in [alice(), admin()] {
        then(
            when(&order_in(S::Paid), cancel(actor.clone())),
            vec![cancelled(&actor, Some(payment_id(1)))],
        );
    }
}

#[test]
fn a_stranger_cancelling_is_told_the_order_does_not_exist() {
    for status in ALL_STATUSES {
        then_rejected(
            when(&order_in(status), cancel(bob())),
            R::NotFound,
            NotFound,
            "order-not-found",
        );
    }
}

#[test]
fn cancel_while_a_payment_is_pending_is_rejected() {
    for actor in [alice(), admin()] {
        then_rejected(
            when(&order_in(S::PaymentPending), cancel(actor)),
            R::PaymentInProgress,
            InvalidState,
            "payment-in-progress",
        );
    }
}

#[test]
fn cancel_after_the_end_is_illegal() {
    for status in [
        S::Shipped,
        S::Delivered,
        S::Expired,
        S::Rejected,
        S::Cancelled,
        S::Refunded,
    ] {
        illegal(when(&order_in(status), cancel(alice())), "cancel", status);
    }
}

// ---- refund ----------------------------------------------------------------------------------

#[test]
fn refund_of_a_cancelled_paid_order() {
    let events = then(
        when(&order_in(S::Cancelled), record_refund(1, 1, TOTAL)),
        vec![refunded(1, TOTAL)],
    );
    assert_eq!(
        details(&apply(order_in(S::Cancelled), &events)).status,
        S::Refunded
    );
}

#[test]
fn recording_a_refund_of_another_payment_is_refused() {
    then_rejected(
        when(&order_in(S::Cancelled), record_refund(2, 1, TOTAL)),
        R::UnknownPayment(payment_id(2)),
        InvalidState,
        "unknown-payment",
    );
}

#[test]
fn a_refund_is_recorded_once() {
    then_rejected(
        when(&order_in(S::Refunded), record_refund(1, 1, TOTAL)),
        R::RefundRecorded(refund_id(1)),
        InvalidState,
        "refund-recorded",
    );
}

#[test]
fn no_refund_is_recorded_for_an_order_that_took_no_money() {
    let unpaid = given::<Order>(&[
        placed(),
        stock_reserved(),
        awaiting(),
        cancelled(&alice(), None),
    ]);
    then_rejected(
        when(&unpaid, record_refund(1, 1, TOTAL)),
        R::UnknownPayment(payment_id(1)),
        InvalidState,
        "unknown-payment",
    );
    // Nor after a declined payment: the declined payment took nothing.
    let mut events = history(S::PaymentDeclined);
    events.push(cancelled(&alice(), None));
    then_rejected(
        when(&given::<Order>(&events), record_refund(1, 1, TOTAL)),
        R::UnknownPayment(payment_id(1)),
        InvalidState,
        "unknown-payment",
    );
}

#[test]
fn an_admin_refunds_part_of_a_paid_shipped_or_delivered_order() {
    for status in [S::Paid, S::Shipped, S::Delivered] {
        let events = then(
            when(&order_in(status), refund(admin(), 1, Some(200))),
            vec![refund_requested(1, 200)],
        );
        let order = apply(order_in(status), &events);
        assert_eq!(
            details(&order).status,
            status,
            "requesting changes nothing yet"
        );
        assert_eq!(details(&order).refundable(), eur(TOTAL - 200));
        let order = apply(order, &[refunded(1, 200)]);
        assert_eq!(
            details(&order).status,
            status,
            "a partial refund keeps the status"
        );
        assert_eq!(details(&order).refunded, eur(200));
    }
}

#[test]
fn a_refund_without_an_amount_is_everything_left() {
    let order = apply(order_in(S::Shipped), &[refund_requested(1, 200)]);
    then(
        when(&order, refund(admin(), 2, None)),
        vec![refund_requested(2, TOTAL - 200)],
    );
    let order = apply(order, &[refund_requested(2, TOTAL - 200), refunded(1, 200)]);
    assert_eq!(details(&order).status, S::Shipped);
    let order = apply(order, &[refunded(2, TOTAL - 200)]);
    assert_eq!(
        details(&order).status,
        S::Refunded,
        "everything paid came back"
    );
}

#[test]
fn refunds_never_exceed_what_was_paid() {
    then_rejected(
        when(&order_in(S::Paid), refund(admin(), 1, Some(TOTAL + 1))),
        R::RefundExceedsPayment {
            refundable: eur(TOTAL),
        },
        Unprocessable,
        "refund-exceeds-payment",
    );
    // Requested refunds count before the provider gives them back: two racing requests cannot
    // together exceed the payment.
    let order = apply(order_in(S::Paid), &[refund_requested(1, 500)]);
    then_rejected(
        when(&order, refund(admin(), 2, Some(101))),
        R::RefundExceedsPayment {
            refundable: eur(100),
        },
        Unprocessable,
        "refund-exceeds-payment",
    );
    let order = apply(order, &[refund_requested(2, 100)]);
    then_rejected(
        when(&order, refund(admin(), 3, None)),
        R::RefundExceedsPayment { refundable: eur(0) },
        Unprocessable,
        "refund-exceeds-payment",
    );
}

#[test]
fn a_refund_is_positive_and_in_the_order_currency() {
    for amount in [0, -5] {
        let negative = C::Refund {
            actor: admin(),
            refund_id: refund_id(1),
            amount: Some(domain::values::Money { amount, ..eur(0) }),
            reason: "x".into(),
        };
        then_rejected(
            when(&order_in(S::Paid), negative),
            R::NonPositiveRefund,
            Unprocessable,
            "non-positive-amount",
        );
    }
    then_rejected(
        when(
            &order_in(S::Paid),
            C::Refund {
                actor: admin(),
                refund_id: refund_id(1),
                amount: Some(usd(100)),
                reason: "x".into(),
            },
        ),
        R::RefundCurrency {
            order: eur(0).currency,
        },
        Unprocessable,
        "currency-mismatch",
    );
}

#[test]
fn only_an_admin_refunds() {
    for actor in [alice(), bob()] {
        then_rejected(
            when(&order_in(S::Paid), refund(actor, 1, None)),
            R::AdminOnly,
            Forbidden,
            "admin-only",
        );
    }
}

#[test]
fn refund_only_after_payment_and_before_the_end() {
    for status in ALL_STATUSES
        .into_iter()
        .filter(|s| ![S::Paid, S::Shipped, S::Delivered].contains(s))
    {
        illegal(
            when(&order_in(status), refund(admin(), 1, None)),
            "refund",
            status,
        );
    }
}

#[test]
fn cancelling_after_a_partial_refund_leaves_the_rest_to_refund() {
    let order = apply(
        order_in(S::Paid),
        &[refund_requested(1, 200), refunded(1, 200)],
    );
    let events = when(&order, cancel(admin())).expect("cancel a paid order");
    let order = apply(order, &events);
    assert_eq!(details(&order).status, S::Cancelled);
    assert_eq!(details(&order).refundable(), eur(TOTAL - 200));
    let order = apply(order, &[refunded(2, TOTAL - 200)]);
    assert_eq!(details(&order).status, S::Refunded);
}

// ---- ship ------------------------------------------------------------------------------------

#[test]
fn admin_ships_a_paid_order() {
    let events = then(when(&order_in(S::Paid), ship(admin())), vec![shipped()]);
    assert_eq!(
        details(&apply(order_in(S::Paid), &events)).status,
        S::Shipped
    );
}

#[test]
fn only_an_admin_ships() {
    for actor in [alice(), bob()] {
        then_rejected(
            when(&order_in(S::Paid), ship(actor)),
            R::AdminOnly,
            Forbidden,
            "admin-only",
        );
    }
}

#[test]
fn ship_only_from_paid() {
    for status in ALL_STATUSES.into_iter().filter(|s| *s != S::Paid) {
        illegal(when(&order_in(status), ship(admin())), "ship", status);
    }
}

// ---- deliver ---------------------------------------------------------------------------------

#[test]
fn admin_marks_a_shipped_order_delivered() {
    let events = then(
        when(&order_in(S::Shipped), C::Deliver { actor: admin() }),
        vec![E::OrderDelivered {
            order_id: order_id(1),
        }],
    );
    assert_eq!(
        details(&apply(order_in(S::Shipped), &events)).status,
        S::Delivered
    );
    assert!(!S::Delivered.holds_stock());
}

#[test]
fn only_an_admin_marks_delivery() {
    for actor in [alice(), bob()] {
        then_rejected(
            when(&order_in(S::Shipped), C::Deliver { actor }),
            R::AdminOnly,
            Forbidden,
            "admin-only",
        );
    }
}

#[test]
fn deliver_only_from_shipped() {
    for status in ALL_STATUSES.into_iter().filter(|s| *s != S::Shipped) {
        illegal(
            when(&order_in(status), C::Deliver { actor: admin() }),
            "deliver",
            status,
        );
    }
}

// ---- the whole story -------------------------------------------------------------------------

#[test]
fn happy_path_from_placement_to_refund() {
    let mut order = Order::default();
    let mut step = |command: C| {
        let events = order.decide(command).expect("accepted");
        order = apply(order.clone(), &events);
        details(&order).status
    };
    assert_eq!(step(place()), S::Placed);
    assert_eq!(
        step(C::ConfirmStockReserved { pay_by: at(PAY_BY) }),
        S::AwaitingPayment
    );
    assert_eq!(step(request_payment(alice(), 1)), S::PaymentPending);
    assert_eq!(step(decline(1, "declined")), S::PaymentDeclined);
    assert_eq!(step(request_payment(alice(), 2)), S::PaymentPending);
    assert_eq!(step(capture(2)), S::Paid);
    assert_eq!(step(cancel(admin())), S::Cancelled);
    assert_eq!(
        step(C::RecordRefund {
            payment_id: payment_id(2),
            refund_id: refund_id(1),
            amount: eur(TOTAL),
            provider: "simulated".into(),
            provider_refund_id: None,
        }),
        S::Refunded
    );
}

#[test]
fn status_names_and_stock_holding() {
    let names: Vec<&str> = ALL_STATUSES.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        [
            "placed",
            "stock_reserved",
            "awaiting_payment",
            "payment_pending",
            "payment_declined",
            "paid",
            "shipped",
            "delivered",
            "rejected",
            "expired",
            "cancelled",
            "refunded"
        ]
    );
    for status in ALL_STATUSES {
        // The serde name is the same as `as_str`, which projections may rely on.
        assert_eq!(
            serde_json::to_value(status).expect("serialize"),
            serde_json::json!(status.as_str())
        );
    }
    let holding: Vec<OrderStatus> = ALL_STATUSES
        .into_iter()
        .filter(|s| s.holds_stock())
        .collect();
    assert_eq!(
        holding,
        [
            S::Placed,
            S::StockReserved,
            S::AwaitingPayment,
            S::PaymentPending,
            S::PaymentDeclined,
            S::Paid
        ]
    );
}

#[test]
fn event_types_are_the_variant_names() {
    let mut events: Vec<E> = history(S::Refunded);
    events.extend([
        E::OrderRejected {
            order_id: order_id(1),
            reason: "x".into(),
        },
        declined(1),
        E::OrderExpired {
            order_id: order_id(1),
            pay_by: at(0),
        },
        shipped(),
        refund_requested(1, 1),
    ]);
    let mut names: Vec<&str> = events.iter().map(DomainEvent::event_type).collect();
    for event in &events {
        let json = serde_json::to_value(event).expect("serialize");
        assert_eq!(json["type"], event.event_type(), "serde tag of {event:?}");
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names,
        [
            "OrderAwaitingPayment",
            "OrderCancelled",
            "OrderExpired",
            "OrderPaid",
            "OrderPaymentDeclined",
            "OrderPaymentRequested",
            "OrderPlaced",
            "OrderRefundRequested",
            "OrderRefunded",
            "OrderRejected",
            "OrderShipped",
            "OrderStockReserved",
        ]
    );
    assert_eq!(<Order as Aggregate>::STREAM_TYPE, "order");
}

#[test]
fn payment_token_is_visible_ascii_up_to_256() {
    assert!(domain::order::PaymentToken::parse("tok_visa").is_ok());
    assert!(domain::order::PaymentToken::parse(&"a".repeat(256)).is_ok());
    for bad in ["", "tok visa", "tök", "tok\n"] {
        assert!(
            domain::order::PaymentToken::parse(bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
    assert!(domain::order::PaymentToken::parse(&"a".repeat(257)).is_err());
}

#[test]
fn an_order_with_nothing_to_pay_is_refused_when_placed() {
    // Free products exist (a price may be 0), but an order that totals zero could never be
    // paid: the payment aggregate only takes positive amounts. It is refused up front.
    let rejection = given::<Order>(&[])
        .decide(C::Place {
            order_id: order_id(1),
            cart_id: cart_id(1),
            customer_id: customer_id("alice"),
            lines: vec![line(1, eur(0), 1)],
        })
        .unwrap_err();
    assert_eq!(rejection, domain::order::OrderRejection::ZeroTotal);
    assert_eq!(domain::Rejection::code(&rejection), "zero-total");
    // One free line beside a paid one is fine.
    assert!(
        given::<Order>(&[])
            .decide(C::Place {
                order_id: order_id(1),
                cart_id: cart_id(1),
                customer_id: customer_id("alice"),
                lines: vec![line(1, eur(0), 1), line(2, eur(100), 1)],
            })
            .is_ok()
    );
}
