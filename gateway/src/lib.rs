//! The gateway: Tillstream's one public port.
//!
//! For every `/v1` request, in this order: a per-IP rate limit; the bearer token checked
//! (anonymous callers may only read the catalog); a per-user rate limit; the body limit
//! (64 KiB); then the request is forwarded — reads (GET, HEAD) and the operators' `/v1/admin/…`
//! routes to the query API, everything else to the command API — with a request id (`x-request-id`, generated unless the client
//! sent a valid one). The services verify the token again themselves: nothing downstream
//! trusts the gateway's word for who the caller is.
//!
//! Forwarding uses hyper's pooled client directly: the upstreams are two fixed plain-HTTP
//! addresses, so a general HTTP client's URL parsing, redirects and decompression were only
//! cost on every request.

pub mod docs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use platform::http::{Readiness, operational_routes, track_metrics};
use platform::identity::{AuthError, JwtVerifier};
use platform::problem::Problem;
use platform::settings::{Env, SettingError};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

pub use crate::limits::RateLimits;

mod limits;
pub mod web;

/// Largest request body forwarded.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// How the gateway is set up; [`GatewaySettings::from_env`] documents the variables.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The public port.
    pub listen: SocketAddr,
    /// `/livez`, `/readyz` and `/metrics`: never on the public port.
    pub ops_listen: SocketAddr,
    pub command_api: String,
    pub query_api: String,
    /// Requests per second (sustained) and burst, per signed-in user.
    pub per_user: (u32, u32),
    /// Requests per second (sustained) and burst, per client IP.
    pub per_ip: (u32, u32),
    pub upstream_timeout: Duration,
    /// Origins allowed to call from a browser; empty = no CORS.
    pub cors_origins: Vec<String>,
    /// The development issuer's `/token`, for the storefront's and console's local sign-in
    /// ([`web`]); `None` with a real issuer.
    pub sign_in_url: Option<String>,
}

impl GatewaySettings {
    /// `TILL_GATEWAY_ADDR` (default 127.0.0.1:8080), `TILL_GATEWAY_OPS_ADDR` (127.0.0.1:8086),
    /// `TILL_COMMAND_API_URL`
    /// (http://127.0.0.1:8081), `TILL_QUERY_API_URL` (http://127.0.0.1:8082),
    /// `TILL_RATE_PER_USER` / `TILL_RATE_PER_IP` as `rate/burst` (200/400 and 5000/10000),
    /// `TILL_UPSTREAM_TIMEOUT_MS` (10000), `TILL_CORS_ORIGINS` (comma-separated),
    /// `TILL_SIGN_IN_URL` (unset; the settings default it to the development issuer's).
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let settings = Self {
            listen: env.addr(
                "TILL_GATEWAY_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8080)),
            )?,
            ops_listen: env.addr(
                "TILL_GATEWAY_OPS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 8086)),
            )?,
            command_api: env.text("TILL_COMMAND_API_URL", "http://127.0.0.1:8081"),
            query_api: env.text("TILL_QUERY_API_URL", "http://127.0.0.1:8082"),
            per_user: env.rate("TILL_RATE_PER_USER", (200, 400))?,
            per_ip: env.rate("TILL_RATE_PER_IP", (5000, 10000))?,
            upstream_timeout: env.millis("TILL_UPSTREAM_TIMEOUT_MS", Duration::from_secs(10))?,
            cors_origins: env.list("TILL_CORS_ORIGINS"),
            sign_in_url: env.get("TILL_SIGN_IN_URL").map(str::to_owned),
        };
        for (variable, url) in [
            ("TILL_COMMAND_API_URL", &settings.command_api),
            ("TILL_QUERY_API_URL", &settings.query_api),
        ] {
            upstream_base(variable, url)
                .map_err(|_| SettingError::new(variable, url, UPSTREAM_EXPECTED))?;
        }
        Ok(settings)
    }
}

/// The pooled HTTP/1 client the gateway forwards with.
type Upstream = Client<HttpConnector, Full<Bytes>>;

struct Gateway {
    settings: Arc<GatewaySettings>,
    verifier: Arc<JwtVerifier>,
    http: Upstream,
    limits: RateLimits,
    local: LocalUpstreams,
}

/// The APIs that run in the gateway's own process (`till up`), called as routers — no socket,
/// no HTTP encoding — instead of over their URLs. Everything the gateway does to a request
/// happens as before (limits, token, body limit, headers, the hop's span and its
/// `traceparent`, the deadline), and each API still checks the token itself.
#[derive(Clone, Default)]
pub struct LocalUpstreams {
    pub command_api: Option<Router>,
    pub query_api: Option<Router>,
}

impl std::fmt::Debug for LocalUpstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalUpstreams")
            .field("command_api", &self.command_api.is_some())
            .field("query_api", &self.query_api.is_some())
            .finish()
    }
}

/// What an upstream URL must be.
const UPSTREAM_EXPECTED: &str = "an http:// URL with a host: the gateway forwards plain HTTP to \
                                 the services it fronts (terminate TLS in front of the gateway \
                                 instead)";

/// Why the gateway cannot start with its settings.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={url} is not {UPSTREAM_EXPECTED}")]
pub struct InvalidUpstream {
    pub variable: &'static str,
    pub url: String,
}

/// Checks an upstream base URL: plain `http://`, a host, nothing after the path.
fn upstream_base(variable: &'static str, url: &str) -> Result<(), InvalidUpstream> {
    let invalid = || InvalidUpstream {
        variable,
        url: url.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    match (uri.scheme_str(), uri.host(), uri.query()) {
        (Some("http"), Some(_), None) => Ok(()),
        _ => Err(invalid()),
    }
}

/// What the gateway serves, on its two ports.
#[derive(Debug)]
pub struct Routers {
    /// `/v1/*` forwarded, the API's document and docs UI ([`docs`]), the storefront and the
    /// console ([`web`]).
    pub public: Router,
    /// `/livez`, `/readyz` (the upstreams answer), `/metrics`: for the platform, not the
    /// internet (sales volume is in the metrics).
    pub operations: Router,
}

/// The gateway's routes. Refuses upstream URLs it cannot forward to.
pub fn router(
    settings: GatewaySettings,
    verifier: Arc<JwtVerifier>,
    limits: RateLimits,
) -> Result<Routers, InvalidUpstream> {
    router_with(settings, verifier, limits, LocalUpstreams::default())
}

/// [`router`], handing requests for the APIs in `local` to them in process.
pub fn router_with(
    settings: GatewaySettings,
    verifier: Arc<JwtVerifier>,
    limits: RateLimits,
    local: LocalUpstreams,
) -> Result<Routers, InvalidUpstream> {
    upstream_base("TILL_COMMAND_API_URL", &settings.command_api)?;
    for scope in ["ip", "user"] {
        metrics::counter!("gateway_rate_limited_total", "scope" => scope).increment(0);
    }
    upstream_base("TILL_QUERY_API_URL", &settings.query_api)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(settings.upstream_timeout));
    // Idle upstream connections are kept however many there are (closed after 90 s idle): a
    // cap below the number of concurrent requests closes connections after every burst and
    // opens them again for the next one.
    let http: Upstream = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);
    let web = web::routes(settings.sign_in_url.clone(), http.clone());
    let gateway = Gateway {
        settings: Arc::new(settings),
        verifier,
        http,
        limits,
        local,
    };
    let readiness = upstream_readiness(&gateway);
    let cors = cors_layer(&gateway.settings.cors_origins);
    let request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .route("/v1/{*path}", any(forward))
        // One reference count per request, not a copy of every part of the state.
        .with_state(Arc::new(gateway))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::map_request(drop_unusable_request_id));
    let public = Router::new()
        .merge(api)
        .merge(docs::routes())
        .merge(web)
        .fallback(|| async { Problem::not_found("route-not-found", "no such route") })
        .layer(axum::middleware::from_fn(platform::http::problems_only))
        .layer(from_fn_with_state("gateway", track_metrics));
    Ok(Routers {
        public: match cors {
            Some(cors) => public.layer(cors),
            None => public,
        },
        operations: operational_routes(readiness),
    })
}

/// Longest client request id kept.
const MAX_REQUEST_ID: usize = 128;

/// A client's `X-Request-Id` is kept (and echoed, logged, forwarded) only if it is a short
/// token-like id; anything else (markup, kilobytes of text) is dropped and one is generated.
async fn drop_unusable_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let usable = |id: &HeaderValue| {
        let id = id.as_bytes();
        !id.is_empty()
            && id.len() <= MAX_REQUEST_ID
            && id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    if request
        .headers()
        .get("x-request-id")
        .is_some_and(|id| !usable(id))
    {
        request.headers_mut().remove("x-request-id");
    }
    request
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-consistency-token"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("x-consistency-token"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceresponse"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}

fn upstream_readiness(gateway: &Gateway) -> Readiness {
    let base = gateway.settings.command_api.clone();
    let http = gateway.http.clone();
    Readiness::default().check("command-api", move || {
        let (url, http) = (format!("{base}/livez"), http.clone());
        async move {
            let request = http::Request::get(url.as_str())
                .body(Full::default())
                .map_err(|e| format!("command-api at {url}: {e}"))?;
            match tokio::time::timeout(Duration::from_secs(2), http.request(request)).await {
                Ok(Ok(response)) if response.status().is_success() => Ok(()),
                Ok(Ok(response)) => Err(format!("command-api at {url}: {}", response.status())),
                Ok(Err(e)) => Err(format!("command-api at {url}: {e}")),
                Err(_) => Err(format!("command-api at {url}: no answer within 2 s")),
            }
        }
    })
}

/// Anonymous callers may read the catalog, and payment providers post their webhooks (signed
/// instead: the command API checks the signature); everything else needs a token.
fn anonymous_allowed(method: &Method, path: &str) -> bool {
    let catalog = matches!(*method, Method::GET | Method::HEAD)
        && (path == "/v1/products"
            || path.starts_with("/v1/products/")
            || path == "/v1/categories");
    let webhook = *method == Method::POST && path.starts_with("/v1/webhooks/payments/");
    catalog || webhook
}

async fn forward(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let template = route_template(request.uri().path());
    let mut response = match forward_inner(&gateway, peer, request).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    };
    // Requests and latency by the API's route, not the catch-all's `/v1/{*path}`.
    if let Some(template) = template {
        response
            .extensions_mut()
            .insert(platform::http::RouteTemplate(template));
    }
    response
}

/// The API route template (from the OpenAPI document) that `path` matches, the one with the
/// fewest parameters when several do; `None` for a path the API does not have.
fn route_template(path: &str) -> Option<&'static str> {
    /// Each template with its segments, split once.
    static TEMPLATES: std::sync::OnceLock<Vec<(&'static str, Vec<&'static str>)>> =
        std::sync::OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        docs::document()
            .paths
            .paths
            .into_keys()
            .map(|t| {
                let template: &'static str = Box::leak(t.into_boxed_str());
                (template, template.split('/').collect())
            })
            .collect()
    });
    let segments = path.split('/').count();
    templates
        .iter()
        .filter(|(_, parts)| {
            parts.len() == segments
                && parts.iter().zip(path.split('/')).all(|(part, segment)| {
                    *part == segment || (part.starts_with('{') && !segment.is_empty())
                })
        })
        .min_by_key(|(template, _)| template.matches('{').count())
        .map(|(template, _)| *template)
}

async fn forward_inner(
    gateway: &Gateway,
    peer: SocketAddr,
    request: Request,
) -> Result<Response, Problem> {
    gateway.limits.guard_ip(peer.ip())?;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let user = match platform::identity::bearer_token_from(&parts.headers) {
        Ok(token) => {
            let principal = gateway
                .verifier
                .verify(token)
                .await
                .map_err(|e| e.to_problem())?;
            Some(principal.user_id)
        }
        Err(AuthError::Missing) if anonymous_allowed(&parts.method, &path) => None,
        Err(e) => return Err(e.to_problem()),
    };
    gateway.limits.admit(peer.ip(), user.as_deref()).await?;
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| Problem::payload_too_large(MAX_BODY_BYTES))?;

    let (upstream, local, name) = if goes_to_query_api(&parts.method, &path) {
        let local = gateway.local.query_api.clone();
        (&gateway.settings.query_api, local, "query-api")
    } else {
        let local = gateway.local.command_api.clone();
        (&gateway.settings.command_api, local, "command-api")
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(path.as_str(), |pq| pq.as_str());
    // The base was checked at start-up and the path came parsed from the request.
    let uri: Uri = match local {
        Some(_) => path_and_query.parse(),
        None => format!("{upstream}{path_and_query}").parse(),
    }
    .map_err(|e| Problem::internal(&e))?;
    let mut headers = forwardable(&parts.headers);
    let forwarded_for = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(chain) => format!("{chain}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    // The upstream continues the trace from this hop, not from what the client sent.
    let hop = tracing::info_span!(
        "forward",
        otel.name = %format_args!("{} {name}", parts.method),
        otel.kind = "client",
        peer.service = name,
        http.request.method = %parts.method,
        http.response.status_code = tracing::field::Empty,
    );
    headers.remove("traceparent");
    headers.remove("tracestate");
    if let Some(value) = platform::telemetry::traceparent_of(&hop)
        .and_then(|traceparent| HeaderValue::from_str(&traceparent).ok())
    {
        headers.insert(HeaderName::from_static("traceparent"), value);
    }
    // One deadline for the whole exchange: answers are small JSON documents (lists are capped
    // at 100 items), so reading them whole is cheaper than streaming them through.
    let exchange = async {
        if let Some(api) = local {
            let mut request = http::Request::new(Body::from(body));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            let Ok(response) = tower::ServiceExt::oneshot(api, request).await;
            let (head, body) = response.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
                tracing::warn!(upstream = name, error = %e, "upstream answer broken off");
                unavailable(name)
            })?;
            return Ok::<_, Problem>((head, body));
        }
        let mut request = http::Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let response = gateway.http.request(request).await.map_err(|e| {
            tracing::warn!(upstream = name, error = %e, "upstream unreachable");
            unavailable(name)
        })?;
        let (head, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| {
            tracing::warn!(upstream = name, error = %e, "upstream answer broken off");
            unavailable(name)
        })?;
        Ok::<_, Problem>((head, body.to_bytes()))
    };
    let (head, body) = tokio::time::timeout(gateway.settings.upstream_timeout, exchange)
        .instrument(hop.clone())
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream-timeout",
                "Gateway timeout",
            )
            .with_detail(format!("the {name} did not answer in time"))
        })??;
    hop.record("http.response.status_code", head.status.as_u16());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = head.status;
    *response.headers_mut() = forwardable(&head.headers);
    Ok(response)
}

fn unavailable(name: &str) -> Problem {
    Problem::service_unavailable(
        "upstream-unavailable",
        format!("the {name} is not reachable right now; try again shortly"),
    )
}

/// Reads go to the query API, commands to the command API; the operators' routes
/// (`/v1/admin/…`: rebuilds, dead letters) all live in the query API, whatever their method —
/// they act on read models and the bus, never append events.
fn goes_to_query_api(method: &Method, path: &str) -> bool {
    matches!(*method, Method::GET | Method::HEAD) || path.starts_with("/v1/admin/")
}

/// Headers minus the hop-by-hop ones (RFC 9110 §7.6.1) and `host`.
fn forwardable(headers: &HeaderMap) -> HeaderMap {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    headers
        .iter()
        .filter(|(name, _)| {
            !HOP_BY_HOP.contains(&name.as_str()) && name.as_str() != "content-length"
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn a_path_is_labelled_with_the_api_route_it_matches() {
        assert_eq!(
            route_template("/v1/carts/0193a0b1-2c3d-7e4f-8a9b-0c1d2e3f4a5b/items"),
            Some("/v1/carts/{id}/items")
        );
        assert_eq!(route_template("/v1/products"), Some("/v1/products"));
        // Unknown paths and empty segments fold into the catch-all (`None`).
        assert_eq!(route_template("/v1/made-up-7"), None);
        assert_eq!(route_template("/v1/carts//items"), None);
    }
}
