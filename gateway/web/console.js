// The operator console: projections (lag, events/s, rebuild and its progress), the event log
// and its streams (with trace ids), consumers and the relay (backlog, rate) with each consumer's
// dead letters (inspect, redrive, drop), orders (ship, deliver, refund) and products (create,
// edit, price, stock, discontinue) — over the same public API as any client, with the admin's
// token. A token without the admin role gets the API's 403, and this page says so. Rates are
// worked out here from two samples of the counters the API reports.
import { api, ApiError, claims, esc, money, token, when } from "/assets/api.js";

const view = document.getElementById("view");
let poll = null;

function show(html) { view.innerHTML = html; }
function problem(error) {
  return `<div class="alert" role="alert">${esc(error instanceof ApiError ? error.message : String(error))}</div>`;
}
const fail = (error) => { document.getElementById("error").innerHTML = problem(error); };

/** The last sample of each counter the pages turn into rates: name → { value, at }. */
const samples = new Map();
function rate(name, value) {
  const now = performance.now(), last = samples.get(name);
  samples.set(name, { value, at: now });
  if (!last || now - last.at < 200 || value < last.value) return "—";
  return Math.round((value - last.value) / ((now - last.at) / 1000)).toLocaleString();
}

function rebuildCell(r) {
  if (!r) return "—";
  const state = `<span class="status ${esc(r.state)}">${esc(r.state)}</span>`;
  if (r.state === "running" || r.state === "requested") {
    const total = r.events_total ?? 0;
    return `${state} <progress max="${Math.max(total, 1)}" value="${r.events_done}"
      aria-label="Rebuild progress">${r.events_done}/${total}</progress>
      <span class="muted">${r.events_done}/${total} events${r.events_per_second ? ` · ${Math.round(r.events_per_second).toLocaleString()}/s` : ""}</span>`;
  }
  if (r.state === "failed") return `${state} <span class="muted">${esc(r.error)}</span>`;
  return `${state} <span class="muted">v${r.version} · ${r.events_done} events · ${when(r.finished_at)} by ${esc(r.requested_by)}</span>`;
}

function projectionRows(items) {
  return items.map((p) => `<tr data-projection="${esc(p.name)}"><td>${esc(p.name)}</td><td>v${p.serving_version}</td>
    <td>${p.rebuilding_version ? `v${p.rebuilding_version}` : "—"}</td><td>${p.events_applied}</td>
    <td>${rate(`projection:${p.name}`, p.events_applied)}</td>
    <td>${p.lag_events}</td><td>${Number(p.lag_seconds).toFixed(1)}</td>
    <td class="mono">${p.checkpoint.transaction_id}/${p.checkpoint.position}</td>
    <td class="rebuild">${rebuildCell(p.rebuild)}</td></tr>`).join("");
}

async function projections() {
  const { body } = await api("GET", "/v1/admin/projections");
  show(`<h1>Projections</h1>
    <form id="rebuild" class="card inline">
      <label>Projection <select name="name">${body.items.map((p) => `<option>${esc(p.name)}</option>`).join("")}</select></label>
      <button>Rebuild</button>
      <span class="muted">A new version is built from the event store while the current one serves, then takes over.</span>
    </form><div id="error"></div>
    <div aria-live="off"><table><caption class="sr-only">Projections, refreshed every second</caption>
      <thead><tr><th>Projection</th><th>Serving</th><th>Building</th><th>Events applied</th><th>Events/s</th>
      <th>Lag (events)</th><th>Lag (s)</th><th>Checkpoint</th><th>Last rebuild</th></tr></thead>
      <tbody id="projections">${projectionRows(body.items)}</tbody></table></div>`);
  document.getElementById("rebuild").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = new FormData(e.target).get("name");
    try {
      await api("POST", `/v1/admin/projections/${encodeURIComponent(name)}/rebuild`);
      document.getElementById("error").innerHTML = "";
      await refreshProjections();
    } catch (error) { fail(error); }
  });
  poll = setTimeout(refreshProjections, 1000);
}

/** Redraws the projections' rows only, so the form keeps its focus and choice. */
async function refreshProjections() {
  clearTimeout(poll);
  const rows = document.getElementById("projections");
  if (!rows) return;
  try {
    const { body } = await api("GET", "/v1/admin/projections");
    rows.innerHTML = projectionRows(body.items);
  } catch (error) { fail(error); }
  poll = setTimeout(refreshProjections, 1000);
}

async function consumers() {
  const { body } = await api("GET", "/v1/admin/consumers");
  const relay = body.relay;
  show(`<h1>Consumers</h1>
    <div aria-live="off">
    <h2>Relay</h2>
    <table><thead><tr><th>Checkpoint</th><th>Head</th><th>Unpublished events</th><th>Published/s (by position)</th></tr></thead>
    <tbody><tr><td class="mono">${relay.checkpoint.transaction_id}/${relay.checkpoint.position}</td>
      <td>${relay.head_position}</td><td>${relay.lag_events}</td>
      <td>${rate("relay", relay.checkpoint.position)}</td></tr></tbody></table>
    <h2>Queues</h2>
    <table><caption class="sr-only">Consumers and their queues</caption>
    <thead><tr><th>Consumer</th><th>Partitions</th><th>Workers</th><th>Ready</th><th>Retrying</th><th>Dead letters</th></tr></thead>
    <tbody>${body.consumers.map((c) => `<tr data-consumer="${esc(c.name)}"><td>${esc(c.name)}</td><td>${c.partitions}</td>
      <td>${Math.max(0, ...c.queues.map((q) => q.consumers))}</td><td>${c.ready}</td><td>${c.retrying}</td>
      <td><a href="#/dead-letters/${encodeURIComponent(c.name)}">${c.dead_letters}</a></td></tr>`).join("")}</tbody></table>
    <p class="muted">Workers: processes subscribed to the consumer's queues (with partitions one is
      active per partition and the others stand by). Refreshes every 2 s.</p></div>`);
  poll = setTimeout(() => location.hash === "#/consumers" ? consumers().catch(() => {}) : null, 2000);
}

async function deadLetters(consumer) {
  const { body } = await api("GET", `/v1/admin/dead-letters/${encodeURIComponent(consumer)}?limit=100`);
  show(`<h1>Dead letters of <span class="mono">${esc(consumer)}</span></h1>
    <p>${body.count} message(s) this consumer gave up on${body.count > body.items.length ? `; the oldest ${body.items.length} shown` : ""}.</p>
    <div id="error"></div>
    ${body.count ? `<p class="row"><button id="redrive">Redrive all</button>
      <button id="drop" class="secondary">Drop all</button></p>` : ""}
    <table><thead><tr><th>Event</th><th>Stream</th><th>Why</th><th>Attempts</th><th>Dead since</th><th>Redriven</th><th>Data</th></tr></thead>
    <tbody>${body.items.map((d) => `<tr><td>${esc(d.event?.type || d.routing_key || "?")}<br>
        <span class="mono muted">${esc(d.message_id || "")}</span></td>
      <td>${d.event ? `<a class="mono" href="#/streams/${esc(d.event.stream_id)}">${esc(d.event.stream_id.slice(0, 14))}…</a> #${d.event.version}
        ${d.event.trace_id ? `<br><span class="muted">trace <span class="mono">${esc(d.event.trace_id)}</span></span>` : ""}` : "—"}</td>
      <td><strong>${esc(d.reason || "")}</strong><br><span class="muted">${esc(d.last_error || "")}</span></td>
      <td>${d.attempts ?? "—"}</td><td>${when(d.dead_at)}</td><td>${d.redriven}</td>
      <td><pre>${esc(JSON.stringify(d.event?.data ?? null, null, 1))}</pre></td></tr>`).join("")}</tbody></table>
    <p><a href="#/consumers">All consumers</a></p>`);
  const act = (id, method, path, said) => document.getElementById(id)?.addEventListener("click", async () => {
    if (id === "drop" && !confirm(`Drop all ${body.count} dead letters of ${consumer}? They cannot be recovered.`)) return;
    try {
      const { body: done } = await api(method, path);
      await deadLetters(consumer);
      document.getElementById("error").innerHTML = `<div class="alert ok" role="status">${esc(said(done))}</div>`;
    } catch (error) { fail(error); }
  });
  const base = `/v1/admin/dead-letters/${encodeURIComponent(consumer)}`;
  act("redrive", "POST", `${base}/redrive`, (d) => `${d.redriven} sent back to ${consumer}.`);
  act("drop", "DELETE", base, (d) => `${d.dropped} dropped.`);
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
  const follow = params.get("follow") === "1" && !before;
  const query = new URLSearchParams({ limit: "50" });
  if (type) query.set("stream_type", type);
  if (before) query.set("before", before);
  const { body } = await api("GET", `/v1/admin/events?${query}`);
  show(`<h1>Event log</h1>
    <form id="filter" class="inline">
      <label>Stream type <select name="stream_type">
        ${["", "product", "cart", "order"].map((t) => `<option value="${t}" ${t === type ? "selected" : ""}>${t || "all"}</option>`).join("")}
      </select></label>
      <label class="check"><input type="checkbox" name="follow" value="1" ${follow ? "checked" : ""}> Follow new events</label>
      <button>Show</button>
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
    const f = new FormData(e.target);
    const query = new URLSearchParams();
    if (f.get("stream_type")) query.set("stream_type", f.get("stream_type"));
    if (f.get("follow")) query.set("follow", "1");
    location.hash = `#/events${query.size ? `?${query}` : ""}`;
  });
  // Following: the newest page again every 2 s while this view is shown (a tail).
  if (follow) {
    const shown = location.hash;
    poll = setTimeout(() => location.hash === shown ? eventLog(params).catch(() => {}) : null, 2000);
  }
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
    <tbody>${body.items.map((p) => `<tr><td class="mono">${esc(p.sku)}</td><td><a href="#/products/${esc(p.product_id)}">${esc(p.name)}</a></td>
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

async function product(id) {
  const { body: p, headers } = await api("GET", `/v1/products/${id}`);
  show(`<h1>Product <span class="mono">${esc(p.sku)}</span>
      ${p.discontinued ? `<span class="status cancelled">discontinued</span>` : ""}</h1>
    <p>${money(p.price)} · ${p.available} available · version ${p.version}</p>
    <div id="error"></div>
    <form id="details" class="card">
      <p class="row"><label>Name <input name="name" required value="${esc(p.name)}"></label>
      <label>Category <input name="category" required value="${esc(p.category)}"></label></p>
      <p><label>Description <textarea name="description" rows="3" cols="60">${esc(p.description)}</textarea></label></p>
      <p><label>Picture URLs (one per line) <textarea name="image_urls" rows="2" cols="60">${esc(p.image_urls.join("\n"))}</textarea></label></p>
      <p class="row"><button>Save</button>
      ${p.discontinued ? "" : `<button type="button" id="discontinue" class="secondary">Discontinue</button>`}
      <a href="#/products">All products</a></p>
    </form>`);
  const etag = headers.get("etag");
  const saved = async (call) => {
    try {
      const { headers: h } = await call();
      await api("GET", `/v1/products/${id}`, undefined, { consistency: h.get("x-consistency-token") });
      await product(id);
      document.getElementById("error").innerHTML = `<div class="alert ok" role="status">Saved.</div>`;
    } catch (error) { fail(error); }
  };
  document.getElementById("details").addEventListener("submit", (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const urls = String(f.get("image_urls")).split("\n").map((u) => u.trim()).filter(Boolean);
    // If-Match: an edit made on what this page showed, never over someone else's newer one.
    saved(() => api("PATCH", `/v1/products/${id}`, {
      name: f.get("name"), category: f.get("category"), description: f.get("description"), image_urls: urls,
    }, { ifMatch: etag }));
  });
  document.getElementById("discontinue")?.addEventListener("click", () => {
    if (confirm(`Discontinue ${p.name}? It leaves the catalog and can no longer be ordered.`)) {
      saved(() => api("POST", `/v1/products/${id}/discontinue`));
    }
  });
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
    if (parts[0] === "products" && parts[1]) return await product(parts[1]);
    if (parts[0] === "products") return await products();
    if (parts[0] === "consumers") return await consumers();
    if (parts[0] === "dead-letters" && parts[1]) return await deadLetters(decodeURIComponent(parts[1]));
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
