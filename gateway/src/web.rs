//! The storefront (`/`) and the operator console (`/console`), served by the gateway.
//!
//! Both are static pages compiled into the binary (`gateway/web/`: HTML, one stylesheet, small
//! ES modules, no framework and no front-end build step) that call the public API from the
//! browser with the user's bearer token, like any other client: nothing here bypasses the
//! gateway's checks or the services' authorization, and a customer who opens the console gets
//! the API's 403 (the page shows it).
//!
//! Sign-in: with the development issuer, `POST /auth/token` `{"sub", "roles"}` asks the issuer's
//! `/token` (`TILL_SIGN_IN_URL`, set by the settings when the development issuer is the
//! identity) for a token — "pick a name". With a real issuer that route answers 404 and the
//! page takes a token obtained from it (the integration point for Entra ID's authorization-code
//! flow with PKCE). `GET /auth/config` says which.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use platform::problem::Problem;
use serde_json::json;

const INDEX: &str = include_str!("../web/index.html");
const CONSOLE: &str = include_str!("../web/console.html");

/// The assets the pages load, by name: (content type, body).
fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "app.css" => ("text/css; charset=utf-8", include_str!("../web/app.css")),
        "api.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../web/api.js"),
        ),
        "shop.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../web/shop.js"),
        ),
        "console.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../web/console.js"),
        ),
        _ => return None,
    })
}

#[derive(Clone)]
struct SignIn {
    url: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// The pages, their assets and the sign-in routes; `sign_in_url` is the development issuer's
/// `/token`, or `None` with a real issuer.
pub fn routes(sign_in_url: Option<String>, http: Client<HttpConnector, Full<Bytes>>) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX) }))
        .route("/console", get(|| async { page(CONSOLE) }))
        .route("/assets/{name}", get(serve_asset))
        .route("/auth/config", get(config))
        .route("/auth/token", post(token))
        .with_state(SignIn {
            url: sign_in_url,
            http,
        })
}

/// What a page may load and do: its own scripts, styles and API only (a token in session
/// storage is worth stealing, so nothing injected may run or send it elsewhere), never framed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn page(html: &'static str) -> Response {
    let mut response = Html(html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn serve_asset(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            body,
        )
            .into_response(),
        None => Problem::not_found("asset-not-found", "no such asset").into_response(),
    }
}

async fn config(State(sign_in): State<SignIn>) -> Response {
    axum::Json(json!({ "local_sign_in": sign_in.url.is_some() })).into_response()
}

/// Hands the body to the development issuer's `/token` and its answer back.
async fn token(State(sign_in): State<SignIn>, body: Bytes) -> Response {
    let Some(url) = sign_in.url else {
        return Problem::not_found(
            "local-sign-in-off",
            "Sign in with the identity provider; local sign-in is for the development issuer",
        )
        .into_response();
    };
    let unavailable = |detail: String| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "sign-in-unavailable",
            "Sign-in unavailable",
        )
        .with_detail(detail)
        .into_response()
    };
    let request = match axum::http::Request::post(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
    {
        Ok(request) => request,
        Err(error) => return unavailable(error.to_string()),
    };
    let answer = match sign_in.http.request(request).await {
        Ok(answer) => answer,
        Err(error) => return unavailable(format!("the development issuer at {url}: {error}")),
    };
    let (parts, body) = answer.into_parts();
    match body.collect().await {
        Ok(bytes) => Response::from_parts(parts, axum::body::Body::from(bytes.to_bytes())),
        Err(error) => unavailable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use hyper_util::rt::TokioExecutor;
    use tower::ServiceExt;

    fn client() -> Client<HttpConnector, Full<Bytes>> {
        Client::builder(TokioExecutor::new()).build(HttpConnector::new())
    }

    async fn call(router: &Router, request: Request<Body>) -> (StatusCode, String, String) {
        let response = router.clone().oneshot(request).await.unwrap();
        let html = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
        if html {
            let policy = response.headers().get(header::CONTENT_SECURITY_POLICY);
            assert_eq!(
                policy.and_then(|p| p.to_str().ok()),
                Some(CONTENT_SECURITY_POLICY),
                "every page carries the policy"
            );
        }
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn pages_and_assets_are_served_and_unknown_assets_are_a_problem() {
        let router = routes(None, client());
        for (path, kind) in [
            ("/", "text/html"),
            ("/console", "text/html"),
            ("/assets/app.css", "text/css"),
            ("/assets/shop.js", "text/javascript"),
            ("/assets/console.js", "text/javascript"),
            ("/assets/api.js", "text/javascript"),
        ] {
            let (status, content_type, body) = call(&router, get(path)).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
            assert!(!body.is_empty(), "{path}");
        }
        let (status, content_type, _) = call(&router, get("/assets/secrets.txt")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(content_type, "application/problem+json");
    }

    #[tokio::test]
    async fn local_sign_in_is_off_beside_a_real_issuer() {
        let router = routes(None, client());
        let (_, _, config) = call(&router, get("/auth/config")).await;
        assert_eq!(config, r#"{"local_sign_in":false}"#);
        let request = Request::post("/auth/token")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"sub":"mallory","roles":["admin"]}"#))
            .unwrap();
        let (status, content_type, body) = call(&router, request).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(content_type, "application/problem+json");
    }

    #[tokio::test]
    async fn an_unreachable_development_issuer_is_a_503() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", closed.local_addr().unwrap());
        drop(closed);
        let router = routes(Some(url), client());
        let request = Request::post("/auth/token")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"sub":"alice"}"#))
            .unwrap();
        let (status, content_type, _) = call(&router, request).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(content_type, "application/problem+json");
    }
}
