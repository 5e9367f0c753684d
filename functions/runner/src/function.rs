//! What the runner invokes: a function taking Lambda's Kafka event.

use aws_lambda_events::event::kafka::KafkaEvent;

/// A function the runner can invoke with a batch, in-process or remotely.
#[async_trait::async_trait]
pub trait Function: Send + Sync + 'static {
    /// Processes one batch; returns the function's JSON result. An error fails the whole batch.
    async fn invoke(&self, event: KafkaEvent) -> Result<serde_json::Value, FunctionError>;
}

/// A failed invocation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct FunctionError {
    /// What went wrong, as the function reports it.
    pub message: String,
    /// Whether retrying the same batch may succeed. The runner retries either kind, as Lambda's
    /// event source mapping does; only with `fail_fast_non_retryable` does `false` skip retries.
    pub retryable: bool,
}

impl FunctionError {
    /// A failure worth retrying (a store or network hiccup).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that will repeat whatever we do (a bug, a poison batch).
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}
