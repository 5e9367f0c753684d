//! Where notifications go: an SNS topic (e-mail, SQS, HTTP subscribers) or a local outbox file.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_sns::types::MessageAttributeValue;
use damselfly_core::alarm::Notification;

/// Attempts per SNS publish, with the SDK's exponential backoff between them.
pub const SNS_ATTEMPTS: u32 = 4;

/// Why a notification was not delivered (it stays pending and is retried on the next invocation).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// SNS refused or could not be reached, after retries.
    #[error("publishing to SNS topic {topic}: {message}")]
    Sns {
        /// The topic ARN.
        topic: String,
        /// The SDK's error, with its cause chain.
        message: String,
    },
    /// The outbox file could not be appended to.
    #[error("appending to the outbox {path}: {source}")]
    Outbox {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A notification sink.
#[derive(Debug, Clone)]
pub enum Notifier {
    /// SNS Publish to one topic.
    Sns {
        /// The SDK client.
        client: aws_sdk_sns::Client,
        /// The topic ARN.
        topic_arn: String,
    },
    /// JSON lines appended to a file (the demo, and any setup without SNS).
    Outbox(PathBuf),
}

/// One line of the outbox file: what SNS would have been sent.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct OutboxLine {
    /// The e-mail subject.
    pub subject: String,
    /// The e-mail body.
    pub body: String,
    /// The SNS message attributes.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The notification itself.
    pub notification: Notification,
}

impl Notifier {
    /// An SNS notifier configured from the environment (region, credentials, `AWS_ENDPOINT_URL`).
    pub async fn sns(topic_arn: String) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let retry = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(SNS_ATTEMPTS)
            .with_initial_backoff(Duration::from_millis(200));
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .build();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .retry_config(retry)
            .timeout_config(timeouts)
            .load()
            .await;
        Self::Sns {
            client: aws_sdk_sns::Client::new(&config),
            topic_arn,
        }
    }

    /// Where notifications go, for logs and summaries.
    pub fn destination(&self) -> String {
        match self {
            Self::Sns { topic_arn, .. } => topic_arn.clone(),
            Self::Outbox(path) => path.display().to_string(),
        }
    }

    /// Sends one notification (retrying SNS with backoff).
    pub async fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        match self {
            Self::Sns { client, topic_arn } => {
                let mut req = client
                    .publish()
                    .topic_arn(topic_arn)
                    .subject(n.subject())
                    .message(n.body());
                for (k, v) in n.attributes() {
                    let value = MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(v)
                        .build()
                        .expect("data type is set");
                    req = req.message_attributes(k, value);
                }
                req.send().await.map_err(|e| NotifyError::Sns {
                    topic: topic_arn.clone(),
                    message: error_chain(&e),
                })?;
                Ok(())
            }
            Self::Outbox(path) => {
                let line = OutboxLine {
                    subject: n.subject(),
                    body: n.body(),
                    attributes: n
                        .attributes()
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                    notification: n.clone(),
                };
                let mut json = serde_json::to_vec(&line).expect("outbox lines serialize");
                json.push(b'\n');
                let err = |source| NotifyError::Outbox {
                    path: path.clone(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(err)?;
                }
                // One write of a whole line: concurrent appenders never interleave within a line.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(&json))
                    .map_err(err)
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
