//! The OpenAPI 3.1 document of the whole public API, and the docs UI.
//!
//! Each service describes its own routes from the route list it serves
//! ([`command_api::openapi`], [`query_api::openapi`]); this module joins them and adds what the
//! gateway itself does to every request: the bearer token it checks, and the problem+json it
//! (or any service) answers for errors. Served at `GET /v1/openapi.json` (and
//! `/openapi.json`), browsable at `/v1/docs/` (and `/docs`; Swagger UI, its assets compiled in).

use axum::Router;
use platform::problem::{PROBLEM_JSON, Problem};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
    ResponseBuilder,
};
use utoipa::{PartialSchema, ToSchema};
use utoipa_swagger_ui::SwaggerUi;

/// Where the document is served.
pub const DOCUMENT_PATH: &str = "/v1/openapi.json";

/// The whole API's document.
pub fn document() -> OpenApi {
    let mut document = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Tillstream")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "An event-sourced commerce backend. Commands answer with the stream's new \
                     version (`ETag`) and an `X-Consistency-Token` a following read can send to \
                     see its own write. Every error is `application/problem+json` with a stable \
                     `type`.",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .schema(Problem::name(), Problem::schema())
                .security_scheme(
                    "bearer",
                    SecurityScheme::Http(
                        Http::builder()
                            .scheme(HttpAuthScheme::Bearer)
                            .bearer_format("JWT")
                            .build(),
                    ),
                )
                .build(),
        ))
        .security(Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]))
        .build();
    document.merge(command_api::openapi());
    document.merge(query_api::openapi());
    for path in document.paths.paths.values_mut() {
        for operation in operations(path) {
            problem_response(
                operation,
                "401",
                "no valid token where one is needed, or a token that is not valid \
                 (`WWW-Authenticate` says why): checked here, at the gateway",
            );
            problem_response(
                operation,
                "default",
                "any other error (413 body too large, 429 rate limited with Retry-After, 503 \
                 unavailable, ...), as problem+json",
            );
        }
    }
    document
}

fn operations(path: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut path.get,
        &mut path.put,
        &mut path.post,
        &mut path.delete,
        &mut path.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Adds `status` (a code or `default`) to an operation's answers as a problem, unless it
/// documents that status itself. What the gateway does to every request (check the token,
/// limit rates and bodies) is described here once rather than on every handler.
fn problem_response(operation: &mut Operation, status: &str, description: &str) {
    let problem = ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name(Problem::name()))))
                .build(),
        )
        .build();
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert(RefOr::T(problem));
}

/// Where the docs UI is served (`/docs` redirects there).
pub const DOCS_PATH: &str = "/v1/docs";

/// `GET /v1/openapi.json` (and `/openapi.json`), and the docs UI at `/v1/docs/` (and `/docs`).
pub fn routes() -> Router {
    let document = document();
    let json = serde_json::to_string(&document).unwrap_or_default();
    let to_docs = || async { axum::response::Redirect::permanent(&format!("{DOCS_PATH}/")) };
    Router::new()
        .merge(SwaggerUi::new(DOCS_PATH).url(DOCUMENT_PATH, document))
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                )
            }),
        )
        .route("/docs", axum::routing::get(to_docs))
        .route("/docs/", axum::routing::get(to_docs))
}
