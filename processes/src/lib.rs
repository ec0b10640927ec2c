//! Tillstream's processes: the side-effecting handlers of the system, as opposed to the
//! read-side projections of the `projectors` crate.
//!
//! A projection only folds events into a view; it can be replayed from the event store at any
//! time (a rebuild). A process reacts to an event by deciding commands on other aggregates and
//! by calling the outside world (a payment provider), so it is never replayed: it runs once per
//! delivered event, and is made safe to run twice by deriving every new event's id from its
//! cause and by treating "already happened" as done.
//!
//! - [`order_process`]: checkout → stock → payment → refund, a bus consumer.
//! - [`deadlines`]: the payment deadline worker that expires unpaid orders.
//! - [`provider`]: the payment provider port, the simulated provider, and [`provider::AnyProvider`]
//!   (the one the settings chose).
//! - [`stripe`]: Stripe behind the port, and its webhooks' signatures.
//! - [`webhooks`]: verified provider webhooks turned into commands on our payments.
//! - [`reconcile`]: asks the provider about payments left undecided (a lost webhook).
//!
//! The pure rules they apply (derived ids, deadlines, the reservation plan) are in
//! `domain::process`.

pub mod deadlines;
pub mod order_process;
pub mod provider;
pub mod reconcile;
pub mod stripe;
pub mod webhooks;

pub use order_process::{ORDER_PROCESS, OrderProcess};
pub use provider::{AnyProvider, ChargeOutcome, PaymentProvider, ProviderError, SimulatedProvider};
