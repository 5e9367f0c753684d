//! The read-only web console: pages over the lake rendered on the server, served at `/` by the
//! same router as the metric API (so by `damselfly serve` and by the `damselfly-query` Lambda).
//!
//! Pages: `/` (the fleet), `/vms` (the VM list), `/vm/{ns}/{mcis}/{vm}` (one VM), `/alarms`,
//! `/dlq` and `/dlq/record` (dead letters). Each takes `range` (1h, 6h, 24h, 7d), `end` (RFC 3339
//! or epoch ms; default now) and `refresh` (seconds) in its query string, so a URL is a view.
//!
//! No JavaScript: charts are inline SVG, every number is also in a table (`data-value` holds it
//! exactly), and the Content-Security-Policy forbids scripts outright. The stylesheet and icon are
//! compiled into the binary, so the console works offline and `cargo build` is the only build.
//! Nothing here writes: every route is GET.

pub mod alarms;
pub mod chart;
pub mod digest;
pub mod dlq;
pub mod fleet;
pub mod ingest;
pub mod layout;
#[cfg(test)]
mod tests;
pub mod view;
pub mod vm;

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};

use crate::api::{Api, ApiError};
use view::View;

/// The stylesheet, compiled in.
const STYLE: &str = include_str!("assets/style.css");
/// The icon, compiled in.
const FAVICON: &str = include_str!("assets/favicon.svg");

/// The console's Content-Security-Policy: own stylesheet and icon, nothing else, no script at all.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The console's routes, to be merged into the API's router.
pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/", get(fleet_page))
        .route("/vms", get(vms_page))
        .route("/vm/{ns}/{mcis}/{vm}", get(vm_page))
        .route("/alarms", get(alarms_page))
        .route("/dlq", get(dlq_page))
        .route("/dlq/record", get(record_page))
        .route(
            "/console/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route(
            "/console/favicon.svg",
            get(|| asset("image/svg+xml", FAVICON)),
        )
        .layer(axum::middleware::map_response(security_headers))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Adds the headers every console response carries.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
    res
}

type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The view of a request to a page `depth` segments below the root, or a 400 naming the parameter.
fn view_of(api: &Api, query: RawQuery, keep: &[&str], depth: usize) -> Result<View, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    Ok(View::parse(&query, api.now_ms(), keep)?.at_depth(depth))
}

/// An HTML response for a page `depth` segments below the root, or the error as an HTML page
/// with its status.
fn html_response(depth: usize, page: Result<Markup, ApiError>) -> Response {
    match page {
        Ok(markup) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            markup.into_string(),
        )
            .into_response(),
        Err(e) => error_page(e, depth),
    }
}

fn error_page(e: ApiError, depth: usize) -> Response {
    let root = view::root_at(depth);
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "console page failed");
    }
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " · Damselfly" }
                link rel="stylesheet" href={ (root) "console/style.css" };
                link rel="icon" href={ (root) "console/favicon.svg" } type="image/svg+xml";
            }
            body data-page="error" {
                main {
                    h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                    p.error { (e.to_string()) }
                    p { a href=(root) { "Back to the fleet" } }
                }
            }
        }
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into_string(),
    )
        .into_response()
}

async fn fleet_page(State(api): State<Arc<Api>>, query: RawQuery) -> Response {
    let page = async {
        let view = view_of(&api, query, &[], 0)?;
        fleet::page(&*api.sql().await, &view).await
    };
    html_response(0, page.await)
}

async fn vms_page(State(api): State<Arc<Api>>, query: RawQuery) -> Response {
    let page = async {
        let view = view_of(&api, query, &fleet::VM_FILTERS, 0)?;
        fleet::vms_page(&*api.sql().await, &view).await
    };
    html_response(0, page.await)
}

async fn vm_page(
    State(api): State<Arc<Api>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: RawQuery,
) -> Response {
    let page = async {
        let Path((ns, mcis, vm)) = path.map_err(|e| ApiError::bad("path", e.body_text()))?;
        let view = view_of(&api, query, &[], 3)?;
        vm::page(&*api.sql().await, &view, &vm::VmId { ns, mcis, vm }).await
    };
    html_response(3, page.await)
}

async fn alarms_page(State(api): State<Arc<Api>>, query: RawQuery) -> Response {
    let page = async {
        let view = view_of(&api, query, &[], 0)?;
        alarms::page(&*api.sql().await, &view).await
    };
    html_response(0, page.await)
}

async fn dlq_page(State(api): State<Arc<Api>>, query: RawQuery) -> Response {
    let page = async {
        let view = view_of(&api, query, &[], 0)?;
        dlq::page(&*api.sql().await, &view).await
    };
    html_response(0, page.await)
}

async fn record_page(State(api): State<Arc<Api>>, query: RawQuery) -> Response {
    let page = async {
        let view = view_of(&api, query, &dlq::RECORD_KEYS, 1)?;
        dlq::record_page(&*api.sql().await, &view).await
    };
    html_response(1, page.await)
}
