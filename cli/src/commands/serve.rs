//! `damselfly serve`: the web console and the CB-Dragonfly-compatible metric API over the lake, on a TCP address (axum).

use std::sync::Arc;

use anyhow::Context as _;
use damselfly_query::api::{self, Api};

use crate::cli::ServeArgs;

/// Serves the console and the API over `args.lake` until Ctrl-C.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let limits = api::Limits {
        timeout: args.request_timeout,
        concurrency: args.max_concurrent.into(),
    };
    serve_lake(&args.lake, args.listen, &args.query, limits).await
}

/// Serves the console and the API over `lake` on `listen` until Ctrl-C, saying where.
pub async fn serve_lake(
    lake: &str,
    listen: std::net::SocketAddr,
    settings: &damselfly_query::config::Settings,
    limits: api::Limits,
) -> anyhow::Result<()> {
    let api = Arc::new(
        Api::open(lake, settings)
            .await
            .with_context(|| format!("opening the lake {lake}"))?,
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        console = %format!("http://{addr}/"),
        api = %format!("http://{addr}{}", api::OPENAPI),
        prometheus = %format!("http://{addr}"),
        lake = %lake,
        "serving the console, the metric API and Prometheus's query API (Ctrl-C stops)"
    );
    // The fleet page's digests of the last hour are kept warm, so no visitor waits for a read.
    let warm = tokio::spawn(damselfly_query::console::digest::keep_warm(
        api.clone(),
        settings.refresh,
    ));
    let served = api::serve(listener, api, limits, super::shutdown_signal()).await;
    warm.abort();
    served?;
    tracing::info!("console and metric API stopped");
    Ok(())
}
