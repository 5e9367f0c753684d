//! Lambda entry point of the compaction function: setup only, the work is in `handler.rs`.

use std::sync::Arc;

use damselfly_compact::{Compactor, Config};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let handler = Arc::new(Compactor::from_config(config)?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let handler = handler.clone();
        async move {
            handler
                .handle(event.payload)
                .await
                .map_err(damselfly_contract::diagnostic)
        }
    }))
    .await
    .map_err(anyhow::Error::from_boxed)
}
