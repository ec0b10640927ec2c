//! The library side of the `till` binary: [`services`] starts Tillstream's services from the
//! settings tree ([`settings::SystemConfig`]), for `till up`, `till serve` and the end-to-end
//! tests alike;
//! [`demo`] is the scripted session of `till demo` and `till up --demo`;
//! [`fake_stripe`] stands in for Stripe in tests and in `till fake-stripe`; [`otlp_receiver`]
//! collects exported traces for the trace test and the tracing-overhead benchmark.

pub mod demo;
pub mod fake_stripe;
pub mod otlp_receiver;
pub mod services;
pub mod settings;
