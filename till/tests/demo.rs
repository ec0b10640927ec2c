//! The scripted demo runs end to end against a fresh system.

use testkit::{TestSystem, issuer};

#[tokio::test]
async fn the_demo_runs_end_to_end() {
    let system = TestSystem::start_full().await;
    till::demo::run(&system.gateway, issuer().clone())
        .await
        .expect("the demo completes");
    // Running it again on the same system works too (products are found by SKU).
    till::demo::run(&system.gateway, issuer().clone())
        .await
        .expect("the demo completes again");
}
