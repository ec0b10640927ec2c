//! `till demo --gateway URL`: the scripted session (`till::demo`) against a running system,
//! through its public API only.

pub async fn run(gateway: &str) -> anyhow::Result<()> {
    till::demo::run(gateway, platform::dev_issuer::DevIssuer::load_default()?).await
}
