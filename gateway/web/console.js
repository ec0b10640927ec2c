// The operator console: projections, the event log and its streams (with trace ids), orders
// (ship, deliver, refund) and products (create, price, stock) over the same public API as any
// client, with the admin's token. A token
// without the admin role gets the API's 403, and this page says so.
import { api, ApiError, claims, esc, money, token, when } from "/assets/api.js";

const view = document.getElementById("view");
let poll = null;

function show(html) { view.innerHTML = html; }
function problem(error) {
  return `<div class="alert" role="alert">${esc(error instanceof ApiError ? error.message : String(error))}</div>`;
}
const fail = (error) => { document.getElementById("error").innerHTML = problem(error); };

async function projections() {
  const { body } = await api("GET", "/v1/admin/projections");
  show(`<h1>Projections</h1>
    <table><thead><tr><th>Projection</th><th>Serving</th><th>Rebuilding</th><th>Events applied</th>
      <th>Lag (events)</th><th>Lag (s)</th><th>Checkpoint</th></tr></thead>
    <tbody>${body.items.map((p) => `<tr><td>${esc(p.name)}</td><td>v${p.serving_version}</td>
      <td>${p.rebuilding_version ? `v${p.rebuilding_version}` : "—"}</td><td>${p.events_applied}</td>
      <td>${p.lag_events}</td><td>${Number(p.lag_seconds).toFixed(1)}</td>
      <td class="mono">${p.checkpoint.transaction_id}/${p.checkpoint.position}</td></tr>`).join("")}</tbody></table>
    <p class="muted">Refreshes every 2 s. Rebuild a projection with <code>till projections rebuild &lt;name&gt;</code>.</p>`);
  poll = setTimeout(() => location.hash === "#/" || location.hash === "" ? projections().catch(() => {}) : null, 2000);
}

async function orders() {
  const { body } = await api("GET", "/v1/orders?limit=100");
  show(`<h1>Orders</h1>
    <table><thead><tr><th>Placed</th><th>Order</th><th>Customer</th><th>Total</th><th>Status</th></tr></thead>
    <tbody>${body.items.map((o) => `<tr><td>${when(o.placed_at)}</td>
      <td><a class="mono" href="#/orders/${esc(o.order_id)}">${esc(o.order_id.slice(0, 8))}…</a></td>
      <td>${esc(o.customer_id)}</td><td>${money(o.total)}</td>
      <td><span class="status ${esc(o.status)}">${esc(o.status)}</span></td></tr>`).join("")}</tbody></table>`);
}

async function order(id) {
  const [{ body: o }, { body: events }] = await Promise.all([
    api("GET", `/v1/orders/${id}`), api("GET", `/v1/orders/${id}/events`),
  ]);
  show(`<h1>Order <span class="mono">${esc(o.order_id)}</span>
      <span class="status ${esc(o.status)}" id="order-status">${esc(o.status)}</span></h1>
    <p>Customer <strong>${esc(o.customer_id)}</strong> · ${money(o.total)} · placed ${when(o.placed_at)}</p>
    <div id="error"></div>
    ${o.status === "paid" ? `<form id="ship" class="card inline">
      <label>Carrier <input name="carrier" required value="DHL"></label>
      <label>Tracking number <input name="tracking_number" required></label>
      <button>Ship</button></form>` : ""}
    ${o.status === "shipped" ? `<p><button id="deliver">Mark delivered</button></p>` : ""}
    ${["paid", "shipped", "delivered"].includes(o.status) ? `<form id="refund" class="card inline">
      <label>Reason <input name="reason" required value="customer request"></label>
      <button class="secondary">Refund in full</button></form>` : ""}
    <h2>Events <a class="muted" href="#/streams/order-${esc(o.order_id)}">(with metadata and trace ids)</a></h2>
    <table><thead><tr><th>#</th><th>Event</th><th>Recorded</th><th>Data</th></tr></thead>
    <tbody>${events.items.map((e) => `<tr><td>${e.version}</td><td>${esc(e.type)}</td><td>${when(e.recorded_at)}</td>
      <td><pre>${esc(JSON.stringify(e.data, null, 1))}</pre></td></tr>`).join("")}</tbody></table>`);
  const act = (selector, call) => document.querySelector(selector)?.addEventListener(
    selector.startsWith("#ship") || selector.startsWith("#refund") ? "submit" : "click", async (e) => {
      e.preventDefault();
      try {
        const { headers } = await call(e.target.tagName === "FORM" ? new FormData(e.target) : null);
        await waitFor(id, headers.get("x-consistency-token"));
      } catch (error) { fail(error); }
    });
  act("#ship", (f) => api("POST", `/v1/orders/${id}/ship`,
    { carrier: f.get("carrier"), tracking_number: f.get("tracking_number") }));
  act("#deliver", () => api("POST", `/v1/orders/${id}/deliver`));
  act("#refund", (f) => api("POST", `/v1/orders/${id}/refund`, { reason: f.get("reason") }));
}

/** Shows the order again once the read model has the admin's own write. */
async function waitFor(id, consistency) {
  await api("GET", `/v1/orders/${id}`, undefined, { consistency });
  await order(id);
}

async function eventLog(params) {
  const type = params.get("stream_type") || "", before = params.get("before") || "";
  const query = new URLSearchParams({ limit: "50" });
  if (type) query.set("stream_type", type);
  if (before) query.set("before", before);
  const { body } = await api("GET", `/v1/admin/events?${query}`);
  show(`<h1>Event log</h1>
    <form id="filter" class="inline">
      <label>Stream type <select name="stream_type">
        ${["", "product", "cart", "order"].map((t) => `<option value="${t}" ${t === type ? "selected" : ""}>${t || "all"}</option>`).join("")}
      </select></label><button>Show</button>
    </form>
    <table><caption class="sr-only">Events, newest first</caption>
    <thead><tr><th>Position</th><th>Recorded</th><th>Stream</th><th>#</th><th>Event</th><th>Actor</th><th>Trace id</th></tr></thead>
    <tbody>${body.items.map((e) => `<tr><td>${e.position}</td><td>${when(e.recorded_at)}</td>
      <td><a class="mono" href="#/streams/${esc(e.stream_id)}">${esc(e.stream_id.slice(0, 14))}…</a></td>
      <td>${e.version}</td><td>${esc(e.type)}</td><td>${esc(e.metadata.actor)}</td>
      <td class="mono">${esc(e.metadata.trace_id || "")}</td></tr>`).join("")}</tbody></table>
    ${body.next_before ? `<p><a href="#/events?${new URLSearchParams({ ...(type && { stream_type: type }), before: body.next_before })}">Older events</a></p>` : ""}`);
  document.getElementById("filter").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = new FormData(e.target).get("stream_type");
    location.hash = t ? `#/events?stream_type=${t}` : "#/events";
  });
}

async function stream(id) {
  const { body } = await api("GET", `/v1/admin/streams/${encodeURIComponent(id)}`);
  show(`<h1>Stream <span class="mono">${esc(body.stream_id)}</span></h1>
    <table><thead><tr><th>#</th><th>Event</th><th>Recorded</th><th>Metadata</th><th>Data</th></tr></thead>
    <tbody>${body.items.map((e) => `<tr><td>${e.version}</td><td>${esc(e.type)}</td><td>${when(e.recorded_at)}</td>
      <td class="muted">trace <span class="mono">${esc(e.metadata.trace_id || "—")}</span><br>
        actor ${esc(e.metadata.actor || "—")}<br>
        correlation <span class="mono">${esc(e.metadata.correlation_id || "—")}</span></td>
      <td><pre>${esc(JSON.stringify(e.data, null, 1))}</pre></td></tr>`).join("")}</tbody></table>`);
}

async function products() {
  const { body } = await api("GET", "/v1/products?limit=100");
  show(`<h1>Products</h1>
    <form id="create" class="card inline">
      <label>SKU <input name="sku" required></label>
      <label>Name <input name="name" required></label>
      <label>Category <input name="category" required></label>
      <label>Price (cents) <input name="amount" type="number" min="0" required></label>
      <label>Currency <input name="currency" value="EUR" required size="4"></label>
      <label>Stock <input name="stock" type="number" min="0" value="10" required></label>
      <button>Create</button>
    </form><div id="error"></div>
    <table><thead><tr><th>SKU</th><th>Name</th><th>Price</th><th>Available</th><th>Set price (cents)</th><th>Add / remove stock</th></tr></thead>
    <tbody>${body.items.map((p) => `<tr><td class="mono">${esc(p.sku)}</td><td>${esc(p.name)}</td>
      <td>${money(p.price)}</td><td>${p.available}</td>
      <td><input type="number" min="0" aria-label="New price of ${esc(p.name)} in cents" data-price="${esc(p.product_id)}" data-currency="${esc(p.price.currency)}"></td>
      <td><input type="number" aria-label="Units of ${esc(p.name)} to add (negative: remove)" data-stock="${esc(p.product_id)}"></td></tr>`).join("")}</tbody></table>`);
  document.getElementById("create").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      await api("POST", "/v1/products", {
        sku: f.get("sku"), name: f.get("name"), category: f.get("category"),
        price: { amount: Number(f.get("amount")), currency: f.get("currency") }, stock: Number(f.get("stock")),
      });
      await products();
    } catch (error) { fail(error); }
  });
  const change = (attribute, body) => view.querySelectorAll(`[data-${attribute}]`).forEach((input) =>
    input.addEventListener("change", async () => {
      try {
        const id = input.dataset[attribute];
        const { headers } = await api("POST", `/v1/products/${id}/${attribute}`, body(input));
        await api("GET", `/v1/products/${id}`, undefined, { consistency: headers.get("x-consistency-token") });
        await products();
      } catch (error) { fail(error); }
    }));
  change("price", (i) => ({ price: { amount: Number(i.value), currency: i.dataset.currency } }));
  change("stock", (i) => ({ delta: Number(i.value) }));
}

async function route() {
  clearTimeout(poll);
  const c = claims();
  document.getElementById("who").innerHTML = c
    ? `Signed in as <strong>${esc(c.sub)}</strong>` : "";
  if (!token()) {
    show(`<h1>Sign in</h1><p>The console is for administrators. <a href="/#/sign-in">Sign in</a> first.</p>`);
    return;
  }
  const [path, search] = location.hash.slice(1).split("?");
  const parts = (path || "").split("/").filter(Boolean);
  try {
    if (parts[0] === "events") return await eventLog(new URLSearchParams(search || ""));
    if (parts[0] === "streams" && parts[1]) return await stream(decodeURIComponent(parts[1]));
    if (parts[0] === "orders" && parts[1]) return await order(parts[1]);
    if (parts[0] === "orders") return await orders();
    if (parts[0] === "products") return await products();
    return await projections();
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      document.title = "403 — Tillstream console";
      show(`<h1>403 — administrators only</h1>
        <p>You are signed in as <strong>${esc(c?.sub)}</strong>, who is not an administrator.
        The console's every action needs the <code>admin</code> role.</p><p><a href="/">Back to the shop</a></p>`);
      return;
    }
    show(problem(error));
  }
}

window.addEventListener("hashchange", route);
route();
