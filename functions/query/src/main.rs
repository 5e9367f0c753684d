//! Lambda entry point of the query function (function URL / API Gateway): the metric API's router under `lambda_http`.

use std::sync::Arc;

use damselfly_core::env::WithLake;
use damselfly_query::api::{self, Api};
use damselfly_query::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lambda_http::tracing::init_default_subscriber();
    let config: WithLake<Settings> = damselfly_core::env::from_env()?;
    let api = Arc::new(Api::open(&config.lake, &config.settings).await?);
    lambda_http::run(api::router(api))
        .await
        .map_err(anyhow::Error::from_boxed)
}
