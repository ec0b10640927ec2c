//! The storefront and the console in a real browser: Debian's Chromium, headless, driven by
//! Playwright for Python (`tests/browser/shop_and_console.py`) against the whole system.
//!
//! A shopper signs in by name, finds a product, fills a cart, checks out, is declined, pays
//! again and sees "paid" without reloading; a customer is refused the console (403 page); an
//! administrator opens the console, sees the projections and ships the order. Screenshots of
//! the main pages land in `target/tmp/screenshots` (the ones in `docs/screenshots` come from a
//! run of this test).
//!
//! Playwright's Python is found at `$PLAYWRIGHT_PYTHON` and Chromium at `$CHROMIUM` (default
//! `/usr/bin/chromium`); `scripts/test` installs both and sets `TILL_REQUIRE_TOOLS=1`, so CI
//! cannot skip this. A bare `cargo test` without them says so and skips it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::TestSystem;

fn tools() -> Option<(PathBuf, PathBuf)> {
    let python = std::env::var_os("PLAYWRIGHT_PYTHON").map(PathBuf::from);
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    match python {
        Some(python) if python.exists() && chromium.exists() => Some((python, chromium)),
        _ => {
            assert!(
                std::env::var("TILL_REQUIRE_TOOLS").is_err(),
                "Playwright's Python ($PLAYWRIGHT_PYTHON) or Chromium ({}) is missing: run \
                 scripts/tools",
                chromium.display()
            );
            eprintln!("Playwright or Chromium is not installed: the browser test is skipped");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_buys_in_the_storefront_and_an_admin_ships_from_the_console() {
    let Some((python, chromium)) = tools() else {
        return;
    };
    // Spans, as every service process has them, so commands record their trace ids (the
    // console shows them); nothing is exported.
    let _telemetry = platform::telemetry::init("warn", "tillstream-browser-test");
    let issuer = testkit::system::issuer().issuer().to_owned();
    let system = TestSystem::start_full_with(|config| {
        // "Pick a name": the test issuer mints, as the development issuer does for `till up`.
        config.gateway.sign_in_url = Some(format!("{issuer}token"));
    })
    .await;
    let name = format!(
        "Browser kettle {}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let reply = system
        .post(
            "/v1/products",
            &testkit::token("admin", &["admin"]),
            serde_json::json!({
                "sku": format!("WEB-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
                "name": name, "description": "A kettle for the browser test",
                "category": "kitchen", "price": { "amount": 3900, "currency": "EUR" },
                "stock": 20
            }),
        )
        .await;
    assert!(reply.status.is_success(), "{reply:?}");

    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/shop_and_console.py");
    let run = tokio::process::Command::new(python)
        .arg(script)
        .env("BASE_URL", &system.gateway)
        .env("PRODUCT_NAME", &name)
        .env("CHROMIUM", chromium)
        .env("SCREENSHOTS", &screenshots)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finished within 4 minutes")
        .expect("Playwright's Python runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{stderr}");
}
