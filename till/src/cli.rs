//! The command line, declared with clap: the top-level commands here, each one's own arguments
//! in its module under `commands/` (or `bench/`). Every flag has a default that works on a
//! fresh machine; settings come from the environment (`till config` shows them).

use clap::{Parser, Subcommand};

use crate::bench;
use crate::commands::{dead_letters, events, projections, token};

#[derive(Debug, Parser)]
#[command(
    name = "till",
    version,
    about = "Tillstream: event-sourced commerce backend"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole system in this process against the local Postgres, Redis and RabbitMQ.
    Up {
        /// Run the scripted demo once everything is up (and keep running).
        #[arg(long)]
        demo: bool,
    },
    /// Run the scripted demo against a running gateway.
    Demo {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        gateway: String,
    },
    /// Run one service alone (as docker-compose or Kubernetes would), or several in one process.
    Serve {
        /// One service, or several to run in one process (the gateway then calls those APIs
        /// without a socket).
        #[arg(value_enum, required = true, num_args = 1..)]
        services: Vec<till::services::Service>,
    },
    /// Create the database if it is missing and apply every migration (safe to repeat).
    Migrate,
    /// Print the effective settings (from the environment), passwords redacted.
    Config,
    /// Health check for a container: succeeds when the service it runs answers `/livez`.
    Probe,
    /// Print a token from the local development issuer.
    Token(token::TokenArgs),
    /// List, inspect and rebuild read-model projections.
    #[command(subcommand)]
    Projections(projections::Command),
    /// A consumer's dead letters: list, redrive to its queue, or drop.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(dead_letters::Command),
    /// Inspect the event store.
    #[command(subcommand)]
    Events(events::Command),
    /// Run a local fake of Stripe's API, to try the Stripe path without an account; prints the
    /// settings to give `till up`.
    FakeStripe {
        #[arg(long, default_value = "127.0.0.1:12111")]
        addr: String,
        /// Where it sends its signed webhooks.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080/v1/webhooks/payments/stripe"
        )]
        webhook_url: String,
    },
    /// Benchmarks that print their figures next to a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::Command),
}

impl Command {
    /// Whether the command prints a report or a session of its own (a benchmark, the demo, a
    /// listing): services then log only warnings by default, so their lines do not break up
    /// its output.
    /// The name this process has in traces (`OTEL_SERVICE_NAME` overrides it).
    pub fn service_name(&self) -> String {
        match self {
            Self::Serve { services } => match services.as_slice() {
                [service] => format!("tillstream-{}", service.slug()),
                _ => "tillstream".to_owned(),
            },
            Self::Up { .. } => "tillstream".to_owned(),
            _ => "till".to_owned(),
        }
    }

    pub fn reports(&self) -> bool {
        !matches!(
            self,
            Self::Up { demo: false } | Self::Serve { .. } | Self::Migrate
        )
    }
}
