//! `damselfly serve`: the CB-Dragonfly-compatible metric API over the lake, on a TCP address (axum).

use std::sync::Arc;

use anyhow::Context as _;
use damselfly_query::api::{self, Api};

use crate::cli::ServeArgs;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let api = Arc::new(
        Api::open(&args.lake, args.query.refresh)
            .await
            .with_context(|| format!("opening the lake {}", args.lake))?,
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        url = %format!("http://{addr}{}", api::OPENAPI),
        lake = %args.lake,
        "serving the metric API (Ctrl-C stops)"
    );
    let limits = api::Limits {
        timeout: args.request_timeout,
        concurrency: args.max_concurrent.into(),
    };
    api::serve(listener, api, limits, super::shutdown_signal()).await?;
    tracing::info!("metric API stopped");
    Ok(())
}
