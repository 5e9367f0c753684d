//! A function as its event source hosts it: a Kafka event in, a typed summary out.
//!
//! The runner invokes a [`Handler`] in process, or the same function deployed behind Lambda's
//! Invoke API, whose JSON result it reads back as the handler's [`Summary`] type: a field renamed
//! on one side fails that read loudly instead of counting 0.

use std::future::Future;

use aws_lambda_events::event::kafka::KafkaEvent;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Retryable;

/// What one invocation did, as the function returns it (its JSON result).
pub trait Summary: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static {
    /// Folds the summary of a later invocation into running totals.
    fn merge(&mut self, later: &Self);
}

/// A function that processes Kafka events.
pub trait Handler: Send + Sync + 'static {
    /// What an invocation returns.
    type Summary: Summary;
    /// Why an invocation failed.
    type Error: Retryable + Send;

    /// Processes one event: every record handled, or an error for the whole batch.
    fn handle(
        &self,
        event: KafkaEvent,
    ) -> impl Future<Output = Result<Self::Summary, Self::Error>> + Send;
}
