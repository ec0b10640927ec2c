"""The storefront and the console in headless Chromium (Debian's, never a downloaded one).

Run by till/tests/browser.rs against a running system: BASE_URL is its gateway, ADMIN_TOKEN
an administrator's token, SCREENSHOTS a folder for the main pages. Exits non-zero with the
failing step on the first failure.
"""

import os
import re
import sys

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["BASE_URL"].rstrip("/")
SHOTS = os.environ.get("SCREENSHOTS")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SKU = os.environ["PRODUCT_NAME"]

expect.set_options(timeout=15_000)


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def sign_in(page, name, admin=False):
    page.goto(f"{BASE}/#/sign-in")
    page.get_by_label("Your name").fill(name)
    if admin:
        page.get_by_label("administrator (for the console)").check()
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {name}")).to_be_visible()


def order_id_from(page):
    return re.search(r"#/orders/([0-9a-f-]+)", page.url).group(1)


def shopper_buys(browser):
    page = browser.new_page()
    sign_in(page, "web-shopper")
    # Find the product by searching the catalog.
    page.get_by_label("Search").fill(SKU)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=SKU).click()
    expect(page.get_by_role("heading", name=SKU)).to_be_visible()
    shot(page, "product")
    page.get_by_label("Quantity").fill("2")
    page.get_by_role("button", name="Add to cart").click()
    expect(page.get_by_role("heading", name="Your cart")).to_be_visible()
    quantity = page.get_by_label(f"Quantity of {SKU}")
    expect(quantity).to_have_value("2")
    quantity.fill("3")
    quantity.dispatch_event("change")
    expect(page.get_by_label(f"Quantity of {SKU}")).to_have_value("3")
    shot(page, "cart")
    page.get_by_role("button", name="Check out").click()
    expect(page.get_by_role("heading", name=re.compile("^Order"))).to_be_visible()

    # A declined card: a clear message, and paying again with a good one works.
    expect(page.get_by_role("button", name=re.compile("^Pay"))).to_be_visible()
    page.get_by_label("Card (test tokens)").select_option("tok_declined")
    page.get_by_role("button", name=re.compile("^Pay")).click()
    expect(page.get_by_role("alert")).to_contain_text("Payment declined")
    expect(page.locator("#order-status")).to_have_text("payment_declined")
    shot(page, "order-declined")
    page.get_by_label("Card (test tokens)").select_option("tok_ok")
    page.get_by_role("button", name=re.compile("^Pay")).click()
    # "paid" arrives without a reload: the page follows the order.
    expect(page.locator("#order-status")).to_have_text("paid")
    shot(page, "order-paid")
    order = order_id_from(page)
    page.get_by_role("link", name="My orders").click()
    expect(page.get_by_role("link", name=re.compile(order[:8]))).to_be_visible()
    shot(page, "my-orders")
    page.close()
    return order


def customer_is_refused_the_console(browser):
    page = browser.new_page()
    sign_in(page, "not-an-admin")
    page.goto(f"{BASE}/console")
    expect(page.get_by_role("heading", name="403 — administrators only")).to_be_visible()
    page.close()


def admin_ships(browser, order):
    page = browser.new_page()
    sign_in(page, "web-admin", admin=True)
    page.goto(f"{BASE}/console")
    expect(page.get_by_role("heading", name="Projections")).to_be_visible()
    expect(page.get_by_role("cell", name="orders", exact=True)).to_be_visible()
    shot(page, "console-projections")
    page.get_by_role("link", name="Orders").click()
    page.get_by_role("link", name=re.compile(order[:8])).click()
    expect(page.locator("#order-status")).to_have_text("paid")
    page.get_by_label("Tracking number").fill("TRACK-123")
    page.get_by_role("button", name="Ship").click()
    expect(page.locator("#order-status")).to_have_text("shipped")
    expect(page.get_by_role("cell", name="OrderShipped")).to_be_visible()
    shot(page, "console-order")
    # The event log, one stream type, and the order's stream with each event's trace id.
    page.get_by_role("link", name="Event log").click()
    page.get_by_label("Stream type").select_option("order")
    page.get_by_role("button", name="Show").click()
    expect(page.get_by_role("cell", name="OrderShipped").first).to_be_visible()
    expect(page.locator("td.mono").first).to_have_text(re.compile(r"^[0-9a-f]{32}$"))
    shot(page, "console-events")
    page.goto(f"{BASE}/console#/streams/order-{order}")
    expect(page.get_by_role("heading", name=f"Stream order-{order}")).to_be_visible()
    expect(page.get_by_role("cell", name="OrderPaid", exact=True)).to_be_visible()
    expect(page.get_by_text(re.compile(r"trace [0-9a-f]{32}")).first).to_be_visible()
    shot(page, "console-stream")
    page.get_by_role("link", name="Products").click()
    expect(page.get_by_role("cell", name=SKU, exact=True)).to_be_visible()
    shot(page, "console-products")
    # Edit a product's details (sent with If-Match: the version the page showed).
    page.locator("tr", has_text=SKU).get_by_role("link").click()
    page.get_by_label("Description").fill("Edited from the console")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    expect(page.get_by_label("Description")).to_have_value("Edited from the console")
    # The event log follows new events: the edit is the newest product event.
    page.goto(f"{BASE}/console#/events?stream_type=product&follow=1")
    expect(page.get_by_label("Follow new events")).to_be_checked()
    expect(page.get_by_role("cell", name="ProductDetailsChanged").first).to_be_visible()
    page.close()


def admin_rebuilds_while_shoppers_shop(browser):
    """A rebuild started from the console finishes while a shopper keeps using the shop."""
    admin = browser.new_page()
    sign_in(admin, "web-admin", admin=True)
    admin.goto(f"{BASE}/console")
    row = admin.locator("tr[data-projection=products]")
    expect(row.locator("td").nth(1)).to_have_text("v1")
    admin.get_by_label("Projection").select_option("products")
    admin.get_by_role("button", name="Rebuild").click()
    expect(row.locator("td.rebuild")).to_contain_text(re.compile("requested|running|rebuilt"))

    shopper = browser.new_page()
    sign_in(shopper, "web-shopper-2")
    shopper.get_by_label("Search").fill(SKU)
    shopper.get_by_role("button", name="Search").click()
    shopper.get_by_role("link", name=SKU).click()
    shopper.get_by_label("Quantity").fill("1")
    shopper.get_by_role("button", name="Add to cart").click()
    expect(shopper.get_by_label(f"Quantity of {SKU}")).to_have_value("1")

    expect(row.locator("td.rebuild")).to_contain_text("rebuilt")
    expect(row.locator("td").nth(1)).to_have_text("v2")
    shot(admin, "console-rebuilt")
    # The catalog the new version serves still has the product.
    shopper.goto(f"{BASE}/#/")
    shopper.get_by_label("Search").fill(SKU)
    shopper.get_by_role("button", name="Search").click()
    expect(shopper.get_by_role("link", name=SKU)).to_be_visible()
    shopper.close()

    # The relay and the consumers, and one consumer's (empty) dead letters.
    admin.get_by_role("link", name="Consumers").click()
    expect(admin.get_by_role("heading", name="Consumers", exact=True)).to_be_visible()
    expect(admin.get_by_role("cell", name="process.orders")).to_be_visible()
    shot(admin, "console-consumers")
    admin.locator("tr[data-consumer='process.orders'] a").click()
    expect(admin.get_by_role("heading", name="Dead letters of process.orders")).to_be_visible()
    expect(admin.get_by_text("0 message(s)")).to_be_visible()
    admin.close()


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox"])
        try:
            order = shopper_buys(browser)
            customer_is_refused_the_console(browser)
            admin_ships(browser, order)
            admin_rebuilds_while_shoppers_shop(browser)
        finally:
            browser.close()
    print("browser: shopper bought and paid, a customer was refused the console, an admin "
          "shipped and read the order's events with their trace ids, and rebuilt the catalog "
          "from the console while another shopper shopped")


if __name__ == "__main__":
    sys.exit(main())
