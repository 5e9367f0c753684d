//! A function as the runner hosts it: its handler in this process, or the same function deployed
//! behind Lambda's Invoke API, with running totals of its typed summaries.
//!
//! Both ways give the runner the same thing: the handler's [`Summary`] type, or a
//! [`FunctionError`] classed as the handler classed it. A remote function's JSON result is read
//! back as that type, so a result that does not match (another version of the function, a renamed
//! field) is an error naming the type, never a count of 0.

use std::sync::Mutex;

use aws_lambda_events::event::kafka::KafkaEvent;
use damselfly_contract::{Handler, Retryable, Summary};
use serde_json::Value;

use crate::function::{Function, FunctionError};
use crate::remote::LambdaInvoke;

/// Where a hosted function's invocations go.
pub enum Deployment<H> {
    /// The handler, called directly.
    InProcess(H),
    /// The function behind the Invoke API (`cargo lambda watch`, or AWS).
    Remote(LambdaInvoke),
}

/// A hosted function with the running totals of what its invocations returned.
pub struct Hosted<H: Handler> {
    deployment: Deployment<H>,
    totals: Mutex<H::Summary>,
}

impl<H: Handler> Hosted<H> {
    /// Hosts a deployment, with totals at zero.
    pub fn new(deployment: Deployment<H>) -> Self {
        Self {
            deployment,
            totals: Mutex::new(H::Summary::default()),
        }
    }

    /// Where the invocations go.
    pub fn deployment(&self) -> &Deployment<H> {
        &self.deployment
    }

    /// Every invocation's summary merged so far (see [`Summary::merge`]).
    pub fn totals(&self) -> H::Summary {
        self.totals.lock().expect("totals lock poisoned").clone()
    }

    /// Folds a summary obtained another way (for example a scheduled invocation) into the totals.
    pub fn record(&self, summary: &H::Summary) {
        self.totals
            .lock()
            .expect("totals lock poisoned")
            .merge(summary);
    }

    /// Invokes the function with a Kafka event and records its summary.
    pub async fn call(&self, event: KafkaEvent) -> Result<H::Summary, FunctionError> {
        let summary = match &self.deployment {
            Deployment::InProcess(h) => h.handle(event).await.map_err(|e| class_of(&e))?,
            Deployment::Remote(f) => summary_of::<H::Summary>(f.invoke(event).await?)?,
        };
        self.record(&summary);
        Ok(summary)
    }
}

/// A handler's error as the runner sees it: its text, and whether a retry may cure it.
pub fn class_of<E: Retryable>(e: &E) -> FunctionError {
    if e.is_retryable() {
        FunctionError::retryable(e.to_string())
    } else {
        FunctionError::fatal(e.to_string())
    }
}

/// A remote function's JSON result read as the summary type `S`.
pub fn summary_of<S: Summary>(result: Value) -> Result<S, FunctionError> {
    // Read from a borrow: the value is kept for the error message without a copy per invocation.
    S::deserialize(&result).map_err(|e| {
        FunctionError::fatal(format!(
            "the function's result is not a {} ({e}): is it the version this runner was built with? It returned {}",
            std::any::type_name::<S>(),
            truncated(&result.to_string(), 300)
        ))
    })
}

fn truncated(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[async_trait::async_trait]
impl<H: Handler> Function for Hosted<H> {
    async fn invoke(&self, event: KafkaEvent) -> Result<Value, FunctionError> {
        let summary = self.call(event).await?;
        Ok(serde_json::to_value(summary).expect("summaries serialize"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Counted {
        samples: u64,
        last: u64,
    }

    impl Summary for Counted {
        fn merge(&mut self, later: &Self) {
            self.samples += later.samples;
            self.last = later.last;
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failed(bool);

    impl Retryable for Failed {
        fn is_retryable(&self) -> bool {
            self.0
        }
    }

    /// Returns the number of records as samples, or fails as told by the first record's offset.
    struct Counter;

    impl Handler for Counter {
        type Summary = Counted;
        type Error = Failed;

        async fn handle(&self, event: KafkaEvent) -> Result<Counted, Failed> {
            let records: Vec<_> = event.records.into_values().flatten().collect();
            match records.first().map(|r| r.offset) {
                Some(-1) => Err(Failed(true)),
                Some(-2) => Err(Failed(false)),
                _ => Ok(Counted {
                    samples: records.len() as u64,
                    last: records.len() as u64,
                }),
            }
        }
    }

    fn event(offsets: &[i64]) -> KafkaEvent {
        let mut e = KafkaEvent::default();
        e.records.insert(
            "t-0".into(),
            offsets
                .iter()
                .map(|&o| {
                    let mut r = aws_lambda_events::event::kafka::KafkaRecord::default();
                    r.offset = o;
                    r
                })
                .collect(),
        );
        e
    }

    #[tokio::test]
    async fn in_process_summaries_add_up_and_errors_keep_their_class() {
        let h = Hosted::new(Deployment::InProcess(Counter));
        h.call(event(&[1, 2, 3])).await.unwrap();
        let json = h.invoke(event(&[4])).await.unwrap();
        assert_eq!(json, serde_json::json!({"samples": 1, "last": 1}));
        assert_eq!(
            h.totals(),
            Counted {
                samples: 4,
                last: 1
            }
        );
        assert!(h.call(event(&[-1])).await.unwrap_err().retryable);
        assert!(!h.call(event(&[-2])).await.unwrap_err().retryable);
        assert_eq!(h.totals().samples, 4, "failures add nothing");
    }

    #[test]
    fn a_remote_result_of_another_shape_is_an_error_naming_the_type() {
        let ok: Counted = summary_of(serde_json::json!({"samples": 2, "last": 2})).unwrap();
        assert_eq!(ok.samples, 2);
        let e = summary_of::<Counted>(serde_json::json!({"samples_written": 2, "last": 2}))
            .unwrap_err();
        assert!(!e.retryable);
        assert!(
            e.message.contains("Counted") && e.message.contains("missing field `samples`"),
            "{}",
            e.message
        );
    }
}
