//! Lambda entry point of the alarm function: setup only, the work is in `handler.rs`.
//!
//! One binary serves both triggers: a Kafka event source mapping (an event with `records`) and an
//! EventBridge schedule (any other event), which runs the NO_DATA tick.

use std::sync::Arc;

use aws_lambda_events::event::kafka::KafkaEvent;
use damselfly_alarm::{Alarm, Config};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let config = Config::from_env()?;
    let handler = Arc::new(Alarm::from_config(&config).await?);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let handler = handler.clone();
        async move {
            let summary = if event.payload.get("records").is_some() {
                let kafka: KafkaEvent = serde_json::from_value(event.payload)?;
                handler.handle(kafka).await?
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64;
                handler.tick(now).await?
            };
            Ok::<_, lambda_runtime::Error>(summary)
        }
    }))
    .await
}
