//! Lambda entry point of the aggregate function: setup only, the work is in `handler.rs`.

use std::sync::Arc;

use damselfly_aggregate::{Aggregate, Config};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lambda_runtime::tracing::init_default_subscriber();
    // Arms the fail points `FAILPOINTS` names (a test build only: damselfly-core's `failpoints`).
    let _failpoints = damselfly_core::failpoints::setup();
    let config = Config::from_env()?;
    let handler = Arc::new(Aggregate::from_config(&config)?);
    // JSON first: a record timestamp the event types cannot hold must not fail the whole event.
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let handler = handler.clone();
        async move {
            handler
                .handle_json(event.payload)
                .await
                .map_err(damselfly_contract::diagnostic)
        }
    }))
    .await
    .map_err(anyhow::Error::from_boxed)
}
