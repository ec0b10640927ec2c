//! `till migrate`: create the database if it is missing and apply every migration (safe to
//! repeat).

use anyhow::Context;
use till::settings::SystemConfig;

pub async fn run(config: &SystemConfig) -> anyhow::Result<()> {
    platform::database::create_and_migrate(&config.database_url)
        .await
        .context("till migrate")?;
    println!(
        "{} is migrated",
        platform::settings::redact(&config.database_url)
    );
    Ok(())
}
