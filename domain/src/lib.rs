//! Tillstream's business rules, free of IO.
//!
//! Every aggregate follows one contract ([`Aggregate`]): `decide(&state, command)` returns the
//! events that record what happened, or a rejection that says why not; `evolve(state, &event)`
//! folds one event into the state. Nothing here reads a clock, makes an id or looks anything
//! up: the clock, new ids and facts such as the current catalog price arrive inside the command,
//! so every rule is a plain function and is tested as one.
//!
//! Where things live:
//! - [`values`]: value objects (ids, [`values::Quantity`], [`values::Money`], SKU, names).
//! - [`product`], [`cart`], [`order`], [`payment`]: one module per aggregate with its commands,
//!   events, rejections, state and rules.
//! - [`checkout`]: the rule that spans a cart, the catalog and a new order (re-pricing every line,
//!   refusing discontinued products and mixed currencies).
//! - [`process`]: pure rules of the processes that span aggregates (deterministic ids, deadlines).
//!
//! Stream ids are `<type>-<uuid>`; each id type's `STREAM_TYPE` (e.g. [`values::CartId`]) is the
//! one definition of its prefix.

pub mod cart;
pub mod checkout;
pub mod order;
pub mod payment;
pub mod process;
pub mod product;
pub mod values;

pub use values::InvalidValue;

/// The decide/evolve contract shared by every aggregate.
pub trait Aggregate: Default + Clone + std::fmt::Debug + Send + Sync + 'static {
    type Command;
    type Event: DomainEvent;
    type Rejection: Rejection;

    /// The stream type, the `<type>` in `<type>-<uuid>`.
    const STREAM_TYPE: &'static str;

    /// Decides what a command does to the current state. Pure.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Folds one event into the state. Total: every stored event applies.
    fn evolve(self, event: &Self::Event) -> Self;

    /// The state after a sequence of events, starting from the empty state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}

/// What every stored event can say about itself.
pub trait DomainEvent:
    serde::Serialize + serde::de::DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The event's stable type name, e.g. `OrderPlaced`. Also the serde tag.
    fn event_type(&self) -> &'static str;
}

/// How the edges should treat a rejection. The three error classes of the house style are kept
/// apart: a rejection is always the client's to fix, never a conflict to retry or an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The thing does not exist, or the actor may not know that it does (answer 404).
    NotFound,
    /// The command is valid, but not in the aggregate's current state (answer 409).
    InvalidState,
    /// The command's content breaks a rule (answer 422).
    Unprocessable,
    /// The actor may not do this to a thing it can see (answer 403).
    Forbidden,
}

/// Implemented by every aggregate's rejection enum.
pub trait Rejection: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> RejectionKind;
    /// A stable, machine-readable code, used as the last segment of the problem `type`.
    fn code(&self) -> &'static str;
}

/// Implements [`DomainEvent::event_type`] from the variant names, which are also the serde tags.
macro_rules! event_types {
    ($enum:ident { $($variant:ident),+ $(,)? }) => {
        impl $crate::DomainEvent for $enum {
            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)+
                }
            }
        }
    };
}
pub(crate) use event_types;

/// Implements [`Rejection`] from a table of `variant => (kind, code)`.
macro_rules! rejection_codes {
    ($enum:ident { $($variant:ident => ($kind:ident, $code:literal)),+ $(,)? }) => {
        impl $crate::Rejection for $enum {
            fn kind(&self) -> $crate::RejectionKind {
                match self {
                    $(Self::$variant { .. } => $crate::RejectionKind::$kind,)+
                }
            }
            fn code(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => $code,)+
                }
            }
        }
    };
}
pub(crate) use rejection_codes;
