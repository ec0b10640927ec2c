//! What every HTTP service has: `/livez`, `/readyz`, `/metrics`, request metrics by route and
//! status, and serving with graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::problem::Problem;

/// The process-wide Prometheus recorder; installed on first use. All services of one process
/// share it and tell their series apart by the `service` label.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("static buckets are valid");
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (a test harness): render from a detached one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Named dependency checks behind `/readyz`.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.checks.iter().map(|(n, _)| *n).collect();
        f.debug_struct("Readiness").field("checks", &names).finish()
    }
}

impl Readiness {
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as Pin<Box<_>>)));
        self
    }

    /// Pings Postgres.
    pub fn postgres(self, pool: sqlx::PgPool) -> Self {
        self.check("postgres", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
    }

    async fn run(&self) -> Vec<(&'static str, Result<(), String>)> {
        let mut results = Vec::with_capacity(self.checks.len());
        for (name, check) in &self.checks {
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(2), check())
                .await
                .unwrap_or_else(|_| Err("timed out after 2 s".into()));
            results.push((*name, outcome));
        }
        results
    }
}

/// `/livez`, `/readyz` and `/metrics`. Installs the metrics recorder, so series recorded from
/// here on are kept.
pub fn operational_routes(readiness: Readiness) -> Router {
    let handle = metrics_handle();
    metrics::counter!("http_dependency_unavailable_total").increment(0);
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready).with_state(readiness))
        .route("/metrics", get(move || async move { handle.render() }))
}

async fn ready(State(readiness): State<Readiness>) -> Response {
    let results = readiness.run().await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    if failed.is_empty() {
        let body: serde_json::Map<_, _> = results
            .iter()
            .map(|(name, _)| (name.to_string(), json!("ok")))
            .collect();
        (StatusCode::OK, axum::Json(body)).into_response()
    } else {
        Problem::service_unavailable("not-ready", failed.join("; ")).into_response()
    }
}

/// The route template a handler that routes on its own (the gateway's catch-all) found for a
/// request, put in the response's extensions: [`track_metrics`] labels the request with it
/// instead of the catch-all's pattern. Only templates from a fixed list, so labels stay few.
#[derive(Debug, Clone, Copy)]
pub struct RouteTemplate(pub &'static str);

/// Middleware: serves each request inside a server span that continues the caller's W3C trace
/// (`traceparent`), and counts requests and records latency by service, method, route and
/// status.
pub async fn track_metrics(
    State(service): State<&'static str>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Label values must stay few: a client can send any method, so those HTTP does not
    // define are counted as one.
    let method = match *request.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    // Probes and scrapes come every few seconds and say nothing about a request's path:
    // counted, not traced.
    let probe = matches!(route.as_str(), "/livez" | "/readyz" | "/metrics");
    let span = if probe {
        tracing::Span::none()
    } else {
        tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        service,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        )
    };
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    crate::telemetry::continue_trace(&span, traceparent);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let route = match response.extensions().get::<RouteTemplate>() {
        Some(RouteTemplate(template)) => {
            crate::telemetry::rename(&span, format!("{method} {template}"));
            span.record("http.route", *template);
            (*template).to_owned()
        }
        None => route,
    };
    // W3C Trace Context's `traceresponse`: which trace to look up for this answer (the
    // outermost service's span wins, as each sets it on the way out).
    if let Some(value) = crate::telemetry::traceparent_of(&span)
        .and_then(|traceparent| axum::http::HeaderValue::from_str(&traceparent).ok())
    {
        response.headers_mut().insert("traceresponse", value);
    }
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let status = status.to_string();
    let labels = [
        ("service", service.to_owned()),
        ("method", method),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Middleware: every error answer is problem+json. Handlers answer with [`Problem`]s already;
/// this turns what the framework answers on its own before a handler runs (a path segment that
/// is not UTF-8, an unparsable query, a missing header) into one too, keeping its status, its
/// text as the detail, and the headers a client needs (`Allow`, `Retry-After`,
/// `WWW-Authenticate`).
pub async fn problems_only(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = reason.to_ascii_lowercase().replace([' ', '\''], "-");
    let mut problem = Problem::new(status, &code, reason);
    if !detail.is_empty() {
        problem = problem.with_detail(detail);
    }
    for name in [
        axum::http::header::ALLOW,
        axum::http::header::RETRY_AFTER,
        axum::http::header::WWW_AUTHENTICATE,
    ] {
        if let Some(value) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
            problem = problem.with_header(name, value);
        }
    }
    problem.into_response()
}

/// Serves `router` until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{Method, header};
    use tower::ServiceExt;

    use super::*;

    async fn answer(router: &Router, method: Method, uri: &str) -> Response {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        router.clone().oneshot(request).await.expect("answer")
    }

    #[tokio::test]
    async fn a_request_continues_the_callers_trace_and_names_it_in_the_answer() {
        let _telemetry = crate::telemetry::init("off", "test");
        let router = Router::new()
            .route(
                "/work",
                get(|| async { crate::telemetry::current_traceparent().unwrap_or_default() }),
            )
            .layer(axum::middleware::from_fn_with_state("test", track_metrics));
        let request = axum::http::Request::builder()
            .uri("/work")
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .body(Body::empty())
            .expect("request");
        let response = router.oneshot(request).await.expect("answer");
        let traceresponse = response.headers()["traceresponse"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let inside = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            inside.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "the handler runs in the caller's trace: {inside:?}"
        );
        assert_eq!(inside, traceresponse);
    }

    #[tokio::test]
    async fn what_the_framework_refuses_is_answered_as_problem_json() {
        let router = Router::new()
            .route(
                "/items/{id}",
                get(|Path(id): Path<u32>| async move { id.to_string() }),
            )
            .route(
                "/fails",
                get(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "3")],
                        "down",
                    )
                }),
            )
            .layer(axum::middleware::from_fn(problems_only));
        for (method, uri, status) in [
            (Method::GET, "/items/%FF", StatusCode::BAD_REQUEST),
            (Method::GET, "/items/seven", StatusCode::BAD_REQUEST),
            (Method::POST, "/items/7", StatusCode::METHOD_NOT_ALLOWED),
            (Method::GET, "/fails", StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let response = answer(&router, method.clone(), uri).await;
            assert_eq!(response.status(), status, "{method} {uri}");
            assert_eq!(
                response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(|v| v.as_bytes()),
                Some(&b"application/problem+json"[..]),
                "{method} {uri}"
            );
            let allow = response.headers().contains_key(header::ALLOW);
            assert_eq!(
                allow,
                status == StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}"
            );
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(problem["status"], status.as_u16());
        }
        let down = answer(&router, Method::GET, "/fails").await;
        assert_eq!(
            down.headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        // Successes and answers that are problems already pass untouched.
        let ok = answer(&router, Method::GET, "/items/7").await;
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
