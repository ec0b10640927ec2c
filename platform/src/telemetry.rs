//! Tracing set-up shared by the CLI and the services.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The default filter of a running service.
pub const SERVICE: &str = "info,sqlx=warn";
/// The default filter while a command prints a report of its own (a benchmark, the demo): only
/// warnings and errors, so log lines do not break up the report.
pub const QUIET: &str = "warn";

/// Installs a fmt subscriber on stderr filtered by `RUST_LOG` (else `default_filter`), in JSON
/// when `LOG_FORMAT=json`, with colours only on a terminal. Calling it twice is harmless.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
