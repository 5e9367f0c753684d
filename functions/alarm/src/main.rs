//! Lambda entry point of the alarm function: setup only, the work is in `handler.rs`.
//!
//! One binary serves both triggers: a Kafka event source mapping (an event with `records`) and an
//! EventBridge schedule (any other event), which runs the NO_DATA tick.

use std::sync::Arc;

use damselfly_alarm::{Alarm, Config};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let handler = Arc::new(Alarm::from_config(&config).await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let handler = handler.clone();
        async move {
            handler
                .handle_any(event.payload)
                .await
                .map_err(damselfly_contract::diagnostic)
        }
    }))
    .await
    .map_err(anyhow::Error::from_boxed)
}
