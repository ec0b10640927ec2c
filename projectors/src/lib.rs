//! Read-model projectors: they turn events into the views the query API serves.
//!
//! Each projection folds events into rows in memory and writes them in bulk, the same code for a
//! live batch from the bus and for a rebuild from the event store:
//! - [`products`]: the catalog with price, stock and full-text search (Postgres);
//! - [`orders`]: orders with lines and status history (Postgres);
//! - [`carts`]: cart views (Redis).
//!
//! Every view row carries its stream's version. A batch applies an event only if it is the next
//! version of its stream: older ones are duplicates and skipped, and a gap (a newer version than
//! the next) is filled from the event store first ([`ordering`]). Postgres rows and the
//! projection's progress commit in one transaction; Redis views are written with a
//! compare-and-set on the stored version.
//!
//! [`tables`] knows where each projection's current version lives (`read.projections`);
//! [`rebuild`] builds a new version from the event store and switches to it without downtime
//! (inserting its Postgres rows with a binary COPY, [`copy`]);
//! [`requests`] runs the rebuilds an admin asked for over HTTP and reports their progress;
//! [`heal`] notices when Redis lost the carts view and rebuilds it without an operator.
//!
//! Projections only write views. The side-effecting handlers (the order process, payment
//! deadlines) are in the `processes` crate: they are never replayed.

pub mod carts;
pub mod copy;
pub mod error;
pub mod heal;
pub mod live;
pub mod ordering;
pub mod orders;
pub mod products;
pub mod rebuild;
pub mod requests;
pub mod status;
pub mod tables;
pub mod timestamps;

pub use error::ProjectionError;

/// An amount of money as the views show it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[schema(as = Money)]
pub struct MoneyView {
    /// Minor units (cents for EUR).
    pub amount: i64,
    /// ISO 4217, e.g. `EUR`.
    #[schema(value_type = String)]
    pub currency: domain::values::Currency,
}

impl From<domain::values::Money> for MoneyView {
    fn from(money: domain::values::Money) -> Self {
        Self {
            amount: money.amount,
            currency: money.currency,
        }
    }
}
