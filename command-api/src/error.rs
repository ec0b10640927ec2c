//! How the write side's failures become problem+json, keeping the three error classes apart:
//! a rejection is the client's to fix (4xx with the domain's reason), a concurrency conflict is
//! retried and only then reported (409/412), and an infrastructure failure is a 500 whose
//! cause is logged once and never shown.

use axum::http::StatusCode;
use domain::{InvalidValue, Rejection, RejectionKind};
use eventstore::StoreError;
use platform::problem::Problem;

/// A domain rejection as problem+json; the code is the domain's stable code.
pub fn rejection_problem<R: Rejection>(rejection: &R) -> Problem {
    let (status, title) = match rejection.kind() {
        RejectionKind::NotFound => (StatusCode::NOT_FOUND, "Not found"),
        RejectionKind::InvalidState => (StatusCode::CONFLICT, "Not possible in the current state"),
        RejectionKind::Unprocessable => (StatusCode::UNPROCESSABLE_ENTITY, "Not acceptable"),
        RejectionKind::Forbidden => (StatusCode::FORBIDDEN, "Forbidden"),
    };
    Problem::new(status, rejection.code(), title).with_detail(rejection.to_string())
}

/// A value object's parse error: 422 naming the field.
pub fn invalid(e: InvalidValue) -> Problem {
    Problem::invalid_field(e.field, e.reason)
}

/// `If-Match` named another version than the command's stream is at (412).
pub fn version_mismatch(expected: u64, actual: u64) -> Problem {
    Problem::new(
        StatusCode::PRECONDITION_FAILED,
        "version-mismatch",
        "Precondition failed",
    )
    .with_detail(format!(
        "If-Match expected version {expected}, but it is at version {actual}; reload and retry"
    ))
}

/// The answer to a command that lost every race it was retried in (counted).
pub fn contention_problem() -> Problem {
    metrics::counter!("command_conflicts_exhausted_total").increment(1);
    Problem::new(StatusCode::CONFLICT, "concurrency-conflict", "Conflict")
        .with_detail("too many concurrent changes to this resource; retry the request")
}

pub fn store_problem(error: &StoreError) -> Problem {
    Problem::internal(error)
}
