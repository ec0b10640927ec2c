//! `till token --sub alice [--role admin]`: a token from the local development issuer.

use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// A role to grant; repeat for several (`--role admin`).
    #[arg(long)]
    pub role: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let issuer = platform::dev_issuer::DevIssuer::load_default()?;
    let roles: Vec<&str> = args.role.iter().map(String::as_str).collect();
    println!(
        "{}",
        issuer.token(&args.sub, &roles, Duration::from_secs(args.ttl))?
    );
    Ok(())
}
