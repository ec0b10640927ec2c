// The storefront: a hash-routed page over the public API (catalog, product, cart, checkout,
// payment, my orders, an order page that follows the order as it moves).
import { api, ApiError, claims, esc, money, signIn, signInConfig, signOut, token, useToken, when }
  from "/assets/api.js";

const view = document.getElementById("view");
const TERMINAL = ["paid", "shipped", "delivered", "cancelled", "expired", "refunded"];
let poll = null;

// The shopper's open cart and the consistency token of their last command, per user.
const key = (name) => `tillstream.${claims()?.sub}.${name}`;
const remember = (name, value) => localStorage.setItem(key(name), value);
const recall = (name) => localStorage.getItem(key(name));
const forget = (name) => localStorage.removeItem(key(name));

function show(html) { view.innerHTML = html; }
function problem(error) {
  const text = error instanceof ApiError ? error.message : String(error);
  return `<div class="alert" role="alert">${esc(text)}</div>`;
}

function header() {
  const c = claims();
  document.getElementById("who").innerHTML = c
    ? `Signed in as <strong>${esc(c.sub)}</strong> · <a href="#/sign-out">Sign out</a>`
      + (c.roles?.includes("admin") ? ` · <a href="/console">Console</a>` : "")
    : `<a href="#/sign-in">Sign in</a>`;
}

async function signInPage() {
  const config = await signInConfig();
  show(`<h1>Sign in</h1>
    ${config.local_sign_in ? `
    <form id="local" class="card inline">
      <label>Your name <input name="name" required pattern="[A-Za-z0-9._@-]{1,64}" autocomplete="username"></label>
      <label class="row" style="flex-direction:row;align-items:center">
        <input type="checkbox" name="admin"> administrator (for the console)</label>
      <button>Sign in</button>
    </form>
    <p class="muted">Local development: the development issuer signs a token for the name you pick.</p>`
    : `<p>This system signs in with its identity provider (Microsoft Entra ID). Paste an access
       token issued for this API:</p>`}
    <form id="paste" class="card inline">
      <label>Access token <input name="token" required></label><button class="secondary">Use token</button>
    </form><div id="error"></div>`);
  document.getElementById("local")?.addEventListener("submit", async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    try { await signIn(form.get("name"), form.get("admin") === "on"); location.hash = "#/"; }
    catch (error) { document.getElementById("error").innerHTML = problem(error); }
  });
  document.getElementById("paste").addEventListener("submit", (e) => {
    e.preventDefault();
    useToken(new FormData(e.target).get("token"));
    location.hash = "#/";
  });
}

async function catalog(params) {
  const q = params.get("q") || "", category = params.get("category") || "";
  const query = new URLSearchParams({ limit: "50" });
  if (q) query.set("q", q);
  if (category) query.set("category", category);
  const [{ body: products }, { body: categories }] = await Promise.all([
    api("GET", `/v1/products?${query}`), api("GET", "/v1/categories"),
  ]);
  show(`<h1>Catalog</h1>
    <form id="search" class="inline" role="search">
      <label>Search <input name="q" value="${esc(q)}" type="search"></label>
      <label>Category <select name="category"><option value="">All</option>
        ${categories.items.map((c) => `<option ${c.category === category ? "selected" : ""}
          value="${esc(c.category)}">${esc(c.category)} (${c.products})</option>`).join("")}
      </select></label><button>Search</button>
    </form>
    <div id="error"></div>
    <div class="grid" style="margin-top:1rem">
      ${products.items.filter((p) => !p.discontinued).map((p) => `
        <article class="card">
          <h3><a href="#/products/${esc(p.product_id)}">${esc(p.name)}</a></h3>
          <div class="muted">${esc(p.category)} · ${esc(p.sku)}</div>
          <p><span class="price">${money(p.price)}</span>
             <span class="muted">· ${p.available} in stock</span></p>
          <button data-add="${esc(p.product_id)}" ${p.available > 0 ? "" : "disabled"}
            aria-label="Add ${esc(p.name)} to cart">Add to cart</button>
        </article>`).join("") || `<p class="muted">No products match.</p>`}
    </div>`);
  document.getElementById("search").addEventListener("submit", (e) => {
    e.preventDefault();
    const form = new URLSearchParams(new FormData(e.target));
    location.hash = `#/?${form}`;
  });
  view.querySelectorAll("[data-add]").forEach((b) => b.addEventListener("click", async () => {
    try { await addToCart(b.dataset.add, 1); location.hash = "#/cart"; }
    catch (error) { document.getElementById("error").innerHTML = problem(error); }
  }));
}

async function product(id) {
  const { body: p } = await api("GET", `/v1/products/${encodeURIComponent(id)}`);
  show(`<h1>${esc(p.name)}</h1>
    <div class="card">
      <p>${esc(p.description)}</p>
      <p><span class="price">${money(p.price)}</span> · ${p.available} in stock
        · <span class="muted">${esc(p.category)} · ${esc(p.sku)}</span></p>
      <form id="add" class="inline">
        <label>Quantity <input name="quantity" type="number" min="1" max="${Math.max(1, p.available)}" value="1"></label>
        <button ${p.available > 0 && !p.discontinued ? "" : "disabled"}>Add to cart</button>
      </form>
    </div><div id="error"></div>`);
  document.getElementById("add").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await addToCart(p.product_id, Number(new FormData(e.target).get("quantity")));
      location.hash = "#/cart";
    } catch (error) { document.getElementById("error").innerHTML = problem(error); }
  });
}

/** The shopper's open cart id, opening one if they have none. */
async function openCart() {
  const id = recall("cart");
  if (id) {
    try {
      const { body } = await api("GET", `/v1/carts/${id}`, undefined, { consistency: recall("token") });
      if (body.status === "open") return id;
    } catch (error) { if (!(error instanceof ApiError) || error.status !== 404) throw error; }
  }
  const { body, headers } = await api("POST", "/v1/carts");
  remember("cart", body.cart_id);
  remember("token", headers.get("x-consistency-token"));
  return body.cart_id;
}

async function addToCart(productId, quantity) {
  const cart = await openCart();
  const { headers } = await api("POST", `/v1/carts/${cart}/items`, { product_id: productId, quantity });
  remember("token", headers.get("x-consistency-token"));
}

async function cartPage() {
  const id = recall("cart");
  let cart = null;
  if (id) {
    try { cart = (await api("GET", `/v1/carts/${id}`, undefined, { consistency: recall("token") })).body; }
    catch (error) { if (!(error instanceof ApiError) || error.status !== 404) throw error; }
  }
  if (!cart || cart.status !== "open" || cart.items.length === 0) {
    show(`<h1>Your cart</h1><p class="muted">Your cart is empty. <a href="#/">Browse the catalog</a>.</p>`);
    return;
  }
  show(`<h1>Your cart</h1>
    <table><caption class="sr-only">Items in your cart</caption>
      <thead><tr><th>Item</th><th>Unit price</th><th>Quantity</th><th>Total</th><th></th></tr></thead>
      <tbody>${cart.items.map((i) => `<tr>
        <td>${esc(i.name)}</td><td>${money(i.unit_price)}</td>
        <td><input type="number" min="1" value="${i.quantity}" data-quantity="${esc(i.product_id)}"
              aria-label="Quantity of ${esc(i.name)}"></td>
        <td>${money(i.line_total)}</td>
        <td><button class="secondary" data-remove="${esc(i.product_id)}"
              aria-label="Remove ${esc(i.name)}">Remove</button></td></tr>`).join("")}
      </tbody>
      <tfoot><tr><th colspan="3">Total</th><th>${money(cart.total)}</th><th></th></tr></tfoot>
    </table>
    <p><button id="checkout">Check out</button></p><div id="error"></div>`);
  const act = async (call) => {
    try { const { headers } = await call(); remember("token", headers.get("x-consistency-token")); await cartPage(); }
    catch (error) { document.getElementById("error").innerHTML = problem(error); }
  };
  view.querySelectorAll("[data-quantity]").forEach((input) => input.addEventListener("change", () =>
    act(() => api("PUT", `/v1/carts/${id}/items/${input.dataset.quantity}`, { quantity: Number(input.value) }))));
  view.querySelectorAll("[data-remove]").forEach((b) => b.addEventListener("click", () =>
    act(() => api("DELETE", `/v1/carts/${id}/items/${b.dataset.remove}`))));
  document.getElementById("checkout").addEventListener("click", async () => {
    try {
      const { body, headers } = await api("POST", `/v1/carts/${id}/checkout`);
      forget("cart");
      remember("token", headers.get("x-consistency-token"));
      location.hash = `#/orders/${body.order_id}`;
    } catch (error) { document.getElementById("error").innerHTML = problem(error); }
  });
}

async function ordersPage() {
  const { body } = await api("GET", "/v1/orders?limit=50", undefined, { consistency: recall("token") });
  show(`<h1>My orders</h1>
    ${body.items.length === 0 ? `<p class="muted">No orders yet.</p>` : `
    <table><thead><tr><th>Placed</th><th>Order</th><th>Total</th><th>Status</th></tr></thead>
      <tbody>${body.items.map((o) => `<tr><td>${when(o.placed_at)}</td>
        <td><a href="#/orders/${esc(o.order_id)}" class="mono">${esc(o.order_id.slice(0, 8))}…</a></td>
        <td>${money(o.total)}</td><td><span class="status ${esc(o.status)}">${esc(o.status)}</span></td></tr>`).join("")}
      </tbody></table>`}`);
}

async function orderPage(id, flash) {
  const { body: o } = await api("GET", `/v1/orders/${id}`, undefined, { consistency: recall("token") });
  const payable = ["awaiting_payment", "payment_declined"].includes(o.status);
  const declined = o.status === "payment_declined"
    ? o.history.filter((h) => h.status === "payment_declined").pop() : null;
  show(`<h1>Order <span class="mono">${esc(o.order_id.slice(0, 8))}…</span>
      <span class="status ${esc(o.status)}" id="order-status">${esc(o.status)}</span></h1>
    ${declined ? `<div class="alert" role="alert">Payment declined${declined.detail ? `: ${esc(declined.detail)}` : ""}. Try another card.</div>` : ""}
    ${flash ? `<div class="alert ok" role="status">${esc(flash)}</div>` : ""}
    ${payable ? `
    <form id="pay" class="card inline">
      <label>Card (test tokens) <select name="payment_token">
        <option value="tok_ok">Visa ending 4242 — succeeds</option>
        <option value="tok_declined">Card that is declined</option>
      </select></label>
      <button>Pay ${money(o.total)}</button>
      <span class="muted">Pay by ${when(o.pay_by)}</span>
    </form>` : ""}
    <div id="error"></div>
    <h2>Items</h2>
    <table><thead><tr><th>Item</th><th>Quantity</th><th>Total</th></tr></thead>
      <tbody>${o.lines.map((l) => `<tr><td>${esc(l.name)}</td><td>${l.quantity}</td><td>${money(l.line_total)}</td></tr>`).join("")}</tbody>
      <tfoot><tr><th colspan="2">Total</th><th>${money(o.total)}</th></tr></tfoot></table>
    ${o.shipment ? `<p>Shipped with ${esc(o.shipment.carrier)}, tracking <span class="mono">${esc(o.shipment.tracking_number)}</span></p>` : ""}
    <h2>History</h2>
    <ol class="history">${o.history.map((h) => `<li>${when(h.at)} — <strong>${esc(h.status)}</strong>${h.detail ? ` (${esc(h.detail)})` : ""}</li>`).join("")}</ol>`);
  document.getElementById("pay")?.addEventListener("submit", async (e) => {
    e.preventDefault();
    const button = e.target.querySelector("button");
    button.disabled = true;
    try {
      const { headers } = await api("POST", `/v1/orders/${id}/pay`,
        { payment_token: new FormData(e.target).get("payment_token") });
      remember("token", headers.get("x-consistency-token"));
      await orderPage(id, "Payment sent — waiting for the provider.");
    } catch (error) { button.disabled = false; document.getElementById("error").innerHTML = problem(error); }
  });
  // Follow the order until it settles; the consistency token keeps the shopper's last action.
  clearTimeout(poll);
  if (!TERMINAL.includes(o.status) && location.hash === `#/orders/${id}`) {
    poll = setTimeout(() => refresh(id, o.version), 1000);
  }
}

async function refresh(id, version) {
  if (location.hash !== `#/orders/${id}`) return;
  try {
    const { body } = await api("GET", `/v1/orders/${id}`, undefined, { consistency: recall("token") });
    // Redraw only when it moved, so a half-filled form is left alone.
    if (body.version !== version) return orderPage(id);
  } catch { /* a transient failure: try again */ }
  poll = setTimeout(() => refresh(id, version), 1000);
}

async function route() {
  clearTimeout(poll);
  header();
  const [path, search] = location.hash.slice(1).split("?");
  const params = new URLSearchParams(search || "");
  const parts = (path || "/").split("/").filter(Boolean);
  try {
    if (parts[0] === "sign-out") { signOut(); location.hash = "#/sign-in"; return; }
    if (parts[0] === "sign-in" || !token()) return await signInPage();
    if (parts[0] === "products" && parts[1]) return await product(parts[1]);
    if (parts[0] === "cart") return await cartPage();
    if (parts[0] === "orders" && parts[1]) return await orderPage(parts[1]);
    if (parts[0] === "orders") return await ordersPage();
    return await catalog(params);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) { signOut(); location.hash = "#/sign-in"; return; }
    show(problem(error));
  }
}

window.addEventListener("hashchange", route);
route();
