// The public API from the browser: every call carries the signed-in user's token, exactly as
// any client's would. Shared by the storefront (shop.js) and the console (console.js).

const TOKEN = "tillstream.token";

export function token() { return sessionStorage.getItem(TOKEN); }
export function signOut() { sessionStorage.removeItem(TOKEN); }

/** The claims of the current token (for the name and roles shown; the API checks them). */
export function claims() {
  const t = token();
  if (!t) return null;
  try {
    const part = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part));
  } catch { return null; }
}

/** Whether local sign-in (the development issuer) is on. */
export async function signInConfig() {
  const response = await fetch("/auth/config");
  return response.ok ? response.json() : { local_sign_in: false };
}

/** Signs in locally as `name`, an admin if `admin`. */
export async function signIn(name, admin) {
  const response = await fetch("/auth/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ sub: name, roles: admin ? ["admin"] : [] }),
  });
  const body = await response.json();
  if (!response.ok) throw new ApiError(response.status, body);
  sessionStorage.setItem(TOKEN, body.access_token);
}

/** Uses a token obtained elsewhere (Entra ID, `till token`). */
export function useToken(value) { sessionStorage.setItem(TOKEN, value.trim()); }

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/**
 * Calls the API: resolves to { body, headers }, or throws an ApiError carrying the
 * problem+json. `consistency` is a token from an earlier command, so the read sees it.
 */
export async function api(method, path, body, { consistency, ifMatch } = {}) {
  const headers = { accept: "application/json" };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  if (consistency) headers["x-consistency-token"] = consistency;
  if (ifMatch) headers["if-match"] = ifMatch;
  if (method !== "GET") headers["idempotency-key"] = crypto.randomUUID();
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, parsed);
  return { body: parsed, headers: response.headers };
}

export function money(m) {
  if (!m) return "";
  return new Intl.NumberFormat(undefined, { style: "currency", currency: m.currency })
    .format(m.amount / 100);
}

/** Escapes text for HTML. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

export function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
