//! The CB-Dragonfly-compatible metric API over the lake: one axum router served by `damselfly serve`
//! and, through `lambda_http`, by the `damselfly-query` Lambda (function URL or API Gateway).
//!
//! Routes ([`ROUTES`]): `GET /dragonfly/healthcheck` (204), `GET /dragonfly/openapi.json`, and
//! `GET /dragonfly/ns/{ns}/mcis/{mcis}/vm/{vm}/metric/{metric}/info?periodType=m|h|d&statisticsCriteria=min|max|avg|last&duration=5m[&device=D]`.
//! Errors are `{"message": ...}`: 400 for a bad parameter (the message starts with its name), 404
//! for an unknown VM or route, 405 for another method, 500 when the lake cannot answer.

pub mod families;
pub mod metric;
pub mod openapi;
pub mod params;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::Settings;
use crate::{LakeSql, QueryError};
pub use metric::{MetricInfo, VmSeen, metric_info, vm_list};
pub use params::{MetricRequest, Period, Statistic};

/// Path of the health check.
pub const HEALTHCHECK: &str = "/dragonfly/healthcheck";
/// Path of the OpenAPI document.
pub const OPENAPI: &str = "/dragonfly/openapi.json";
/// Path of the metric query, in axum's syntax (OpenAPI's is the same).
pub const METRIC_INFO: &str = "/dragonfly/ns/{ns}/mcis/{mcis}/vm/{vm}/metric/{metric}/info";
/// Every route, each answering GET (and HEAD).
pub const ROUTES: [&str; 3] = [HEALTHCHECK, OPENAPI, METRIC_INFO];

/// How often the lake's table registrations are renewed by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// Why a request failed; each variant has its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A parameter is missing or invalid (400); the message starts with the parameter's name.
    #[error("{name}: {why}")]
    BadParameter {
        /// The parameter (`periodType`, `duration`, `vm`, ...).
        name: &'static str,
        /// What is wrong with it and what is accepted.
        why: String,
    },
    /// The VM or the route does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The lake could not answer (500).
    #[error("query failed: {0}")]
    Query(#[from] QueryError),
    /// Something that should not happen (500).
    #[error("internal error: {0}")]
    Internal(String),
    /// The server is at its limit, or the request took too long (503): retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// A 400 naming the parameter.
    pub fn bad(name: &'static str, why: impl Into<String>) -> Self {
        ApiError::BadParameter {
            name,
            why: why.into(),
        }
    }

    /// A 500 for an unexpected condition.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadParameter { .. } => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Query(_) | ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
        (
            status,
            axum::Json(serde_json::json!({"message": self.to_string()})),
        )
            .into_response()
    }
}

struct Snapshot {
    sql: Arc<LakeSql>,
    opened: Instant,
}

/// The API's state: a SQL session over the lake, renewed now and then so that tables that were
/// empty at start and compacted files are picked up by a long-running server.
pub struct Api {
    lake: Option<String>,
    refresh: Duration,
    current: tokio::sync::RwLock<Snapshot>,
    reopening: tokio::sync::Mutex<()>,
    now: Box<dyn Fn() -> i64 + Send + Sync>,
}

fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Api {
    /// Opens the lake at `url` (failing fast on a bad URL), renews the session every
    /// `settings.refresh` and keeps the console's digests within `settings.console_cache_mib`.
    pub async fn open(url: &str, settings: &Settings) -> Result<Self, QueryError> {
        let sql = LakeSql::open(url).await?;
        sql.digests().set_budget(settings.console_cache_mib << 20);
        let mut api = Self::with_sql(sql);
        api.lake = Some(url.to_owned());
        api.refresh = settings.refresh;
        Ok(api)
    }

    /// Serves an already opened session, never renewed (tests and embedding).
    pub fn with_sql(sql: LakeSql) -> Self {
        Self {
            lake: None,
            refresh: DEFAULT_REFRESH,
            current: tokio::sync::RwLock::new(Snapshot {
                sql: Arc::new(sql),
                opened: Instant::now(),
            }),
            reopening: tokio::sync::Mutex::new(()),
            now: Box::new(wall_clock_ms),
        }
    }

    /// Replaces the clock (milliseconds since the epoch) that `duration` counts back from.
    pub fn with_clock(mut self, now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.now = Box::new(now);
        self
    }

    /// The current SQL session, renewed first if it is older than the refresh interval.
    pub async fn sql(&self) -> Arc<LakeSql> {
        let (sql, stale) = {
            let s = self.current.read().await;
            (s.sql.clone(), s.opened.elapsed() >= self.refresh)
        };
        let Some(url) = self.lake.as_deref().filter(|_| stale) else {
            return sql;
        };
        // One request renews; the others keep answering from the session they have.
        let Ok(_guard) = self.reopening.try_lock() else {
            return sql;
        };
        let started = Instant::now();
        match LakeSql::open_in(url, sql.runtime()).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *self.current.write().await = Snapshot {
                    sql: fresh.clone(),
                    opened: Instant::now(),
                };
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "lake session renewed"
                );
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the lake session failed; keeping the old one");
                self.current.write().await.opened = Instant::now();
                sql
            }
        }
    }

    /// The clock's time, in milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        (self.now)()
    }

    /// Answers one metric request now.
    pub async fn metric(&self, req: &MetricRequest) -> Result<MetricInfo, ApiError> {
        let sql = self.sql().await;
        metric_info(&sql, req, (self.now)()).await
    }
}

/// The router with every route; the same one serves HTTP and Lambda.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route(HEALTHCHECK, get(|| async { StatusCode::NO_CONTENT }))
        .route(OPENAPI, get(openapi_document))
        .route(METRIC_INFO, get(metric_route))
        .merge(crate::console::routes())
        .merge(crate::prom::http::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(api)
}

async fn openapi_document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi::DOCUMENT,
    )
        .into_response()
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} answers GET only, not {method}", uri.path()))
}

type MetricPath = (String, String, String, String);

async fn metric_route(
    State(api): State<Arc<Api>>,
    path: Result<Path<MetricPath>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<axum::Json<MetricInfo>, ApiError> {
    let Path((ns, mcis, vm, metric)) = path.map_err(|e| ApiError::bad("path", e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let started = Instant::now();
    let req = MetricRequest::parse(&ns, &mcis, &vm, &metric, &query)?;
    let info = api.metric(&req).await?;
    tracing::debug!(
        ns = %req.ns,
        mcis = %req.mcis,
        vm = %req.vm,
        metric = req.family.name(),
        period = req.period.name(),
        statistic = req.statistic.name(),
        values = info.values.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "metric answered"
    );
    Ok(axum::Json(info))
}

/// Bounds on an HTTP server's work (a Lambda has its own: its timeout and its concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest a request may run before it is answered 503.
    pub timeout: Duration,
    /// Most requests served at once; one more is answered 503 at once instead of queueing.
    pub concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            concurrency: 32,
        }
    }
}

/// `router` within `limits`: a request past the time-out, or one arriving while `concurrency`
/// requests run, is a 503 with a message (load shedding: nothing queues without bound).
pub fn limited(router: Router, limits: Limits) -> Router {
    router.layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                move |e: tower::BoxError| async move {
                    if e.is::<tower::timeout::error::Elapsed>() {
                        ApiError::Unavailable(format!(
                            "the request took longer than {}s: ask for a shorter duration or a coarser periodType",
                            limits.timeout.as_secs()
                        ))
                    } else if e.is::<tower::load_shed::error::Overloaded>() {
                        ApiError::Unavailable(format!(
                            "{} requests are already being answered: retry shortly",
                            limits.concurrency
                        ))
                    } else {
                        ApiError::internal(e)
                    }
                },
            ))
            .load_shed()
            .concurrency_limit(limits.concurrency)
            .timeout(limits.timeout),
    )
}

/// Serves the API on `listener`, within `limits`, until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, limited(router(api), limits))
        .with_graceful_shutdown(shutdown)
        .await
}
