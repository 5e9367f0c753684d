//! Lambda entry point of the query function (function URL / API Gateway): the metric API's router under `lambda_http`.

use std::sync::Arc;

use damselfly_query::api::{self, Api};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lambda_http::tracing::init_default_subscriber();
    let lake = damselfly_core::env::lake(std::env::var("LAKE").ok())?;
    let refresh = damselfly_core::env::duration(
        "LAKE_REFRESH",
        std::env::var("LAKE_REFRESH").ok(),
        api::DEFAULT_REFRESH,
        "use a duration such as 30s or 5m",
    )?;
    let api = Arc::new(Api::open(&lake, refresh).await?);
    lambda_http::run(api::router(api))
        .await
        .map_err(anyhow::Error::from_boxed)
}
