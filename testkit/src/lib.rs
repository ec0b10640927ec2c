//! Tillstream's test kit, a dev-dependency of every crate with integration tests. Each piece
//! isolates a test from every other, so the suite runs in parallel and twice in a row against
//! the real Postgres, RabbitMQ and Redis:
//!
//! - [`database`]: [`TestDatabase`], a migrated database of the test's own, dropped after it;
//!   waiting for the global-log horizon, and why a wait on it stalls.
//! - [`bus`]: [`TestBus`], a topology (exchange, queues) of the test's own, deleted after it.
//! - [`redis`]: a key prefix of the test's own, its keys deleted after it.
//! - [`eventually`]: bounded waits with messages that say what was awaited.
//! - [`processes`]: the system as `till serve` processes, one per service, for tests that
//!   kill them or read what each exports.
//! - [`proxy`]: [`TcpProxy`], to take a dependency away from one test's system (an outage).
//! - [`fake_stripe`]: [`FakeStripe`] (from `till`), Stripe's HTTP API as far as Tillstream
//!   uses it, with signed webhooks (the outside service we cannot reach, over real HTTP).
//! - [`otlp_receiver`]: [`OtlpReceiver`] (from `till`), an OTLP/HTTP endpoint keeping the spans
//!   services export.
//! - [`system`]: the whole system in process ([`TestSystem`]) on free ports with its own
//!   database, bus and key prefix ([`system::settings_for_tests`]), driven through the gateway
//!   with real RS256 tokens ([`token`]).
//! - `cleanup`: async clean-up from `Drop`, which all of the above use.

mod cleanup;

pub mod bus;
pub mod database;
pub mod eventually;
pub mod processes;
pub mod proxy;
pub mod redis;
pub mod system;

pub use bus::TestBus;
pub use database::{TestDatabase, stall_report, wait_for_log_horizon};
pub use eventually::{PATIENCE, eventually, eventually_explained, within, within_explained};
pub use processes::free_port;
pub use proxy::TcpProxy;
pub use system::{Reply, TestSystem, issuer, token};
pub use till::fake_stripe::{self, FakeStripe};
pub use till::otlp_receiver::{self, OtlpReceiver, ReceivedSpan};
