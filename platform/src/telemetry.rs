//! Tracing set-up shared by the CLI and the services.

use tracing_subscriber::EnvFilter;

/// Installs a fmt subscriber filtered by `RUST_LOG` (default `info`), in JSON when
/// `LOG_FORMAT=json`. Calling it twice is harmless.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
