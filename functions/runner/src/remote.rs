//! Invoking a function over Lambda's Invoke API: a deployed function on AWS, or the real binary under `cargo lambda watch`.

use damselfly_contract::ErrorClass;
use std::time::Duration;

use aws_lambda_events::event::kafka::KafkaEvent;
use aws_sdk_lambda::error::SdkError;
use aws_sdk_lambda::primitives::Blob;
use serde_json::Value;

use crate::config::ConfigError;
use crate::event::lambda_json;
use crate::function::{Function, FunctionError};

/// The path of Lambda's Invoke API under an endpoint, before the function name.
const INVOKE_PATH: &str = "/2015-03-31/functions/";

/// How long one invocation may take by default: Lambda's own maximum function timeout.
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(900);

/// Where `--invoke-url` points: an endpoint (or the region's AWS endpoint) and a function name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeTarget {
    /// The Invoke API endpoint, e.g. `http://127.0.0.1:9000`; `None` is AWS's regional endpoint.
    pub endpoint: Option<String>,
    /// The function's name (or ARN).
    pub function_name: String,
}

impl InvokeTarget {
    /// Parses `--invoke-url`: `aws` (the configured region's Lambda endpoint), an endpoint such as
    /// `http://127.0.0.1:9000` (the function is then `default_name`), or a whole invocation URL
    /// `http://HOST:PORT/2015-03-31/functions/NAME/invocations`.
    pub fn parse(url: &str, default_name: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError {
            option: "invoke-url",
            why: format!(
                "`{url}` {why}: use aws, http://127.0.0.1:9000 (cargo lambda watch) or http://HOST:PORT/2015-03-31/functions/NAME/invocations"
            ),
        };
        if url == "aws" {
            return Ok(Self {
                endpoint: None,
                function_name: default_name.to_owned(),
            });
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("is not a URL"));
        };
        if scheme != "http" && scheme != "https" {
            return Err(bad("is not an http(s) URL"));
        }
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() {
            return Err(bad("has no host"));
        }
        let endpoint = format!("{scheme}://{authority}");
        let path = format!("/{}", path.trim_end_matches('/'));
        if path == "/" {
            return Ok(Self {
                endpoint: Some(endpoint),
                function_name: default_name.to_owned(),
            });
        }
        match path
            .strip_prefix(INVOKE_PATH)
            .and_then(|p| p.strip_suffix("/invocations"))
        {
            Some(name) if !name.is_empty() && !name.contains('/') => Ok(Self {
                endpoint: Some(endpoint),
                function_name: name.to_owned(),
            }),
            _ => Err(bad(
                "has a path that is not /2015-03-31/functions/NAME/invocations",
            )),
        }
    }
}

impl std::fmt::Display for InvokeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.endpoint {
            Some(e) => write!(f, "{e}{INVOKE_PATH}{}/invocations", self.function_name),
            None => write!(f, "aws lambda {}", self.function_name),
        }
    }
}

/// A function invoked over the Lambda Invoke API (`RequestResponse`), one call per batch.
pub struct LambdaInvoke {
    client: aws_sdk_lambda::Client,
    target: InvokeTarget,
}

impl LambdaInvoke {
    /// A client for `target` whose invocations are given up after `timeout` (the function's
    /// timeout; the function may still be running then, which the lake's ledger allows for), with
    /// region and credentials from the environment as the AWS CLI finds them. A local emulator
    /// without AWS credentials gets placeholder ones: it does not check signatures.
    pub async fn connect(target: InvokeTarget, timeout: Duration) -> Self {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(timeout)
            .build();
        // One attempt per call: retrying is the event source mapping's job (--max-retry-attempts,
        // --bisect-on-error), as it is Lambda's, so the client must not multiply invocations.
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .timeout_config(timeouts);
        if let Some(endpoint) = &target.endpoint {
            loader = loader.endpoint_url(endpoint);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
                && std::env::var_os("AWS_PROFILE").is_none()
            {
                loader = loader.credentials_provider(aws_sdk_lambda::config::Credentials::new(
                    "local",
                    "local",
                    None,
                    None,
                    "damselfly",
                ));
            }
        }
        let mut config = loader.load().await;
        if config.region().is_none() {
            config = config
                .into_builder()
                .region(aws_config::Region::new("us-east-1"))
                .build();
        }
        Self {
            client: aws_sdk_lambda::Client::new(&config),
            target,
        }
    }

    /// Where invocations go, for logs and summaries.
    pub fn target(&self) -> &InvokeTarget {
        &self.target
    }

    /// Invokes the function with a JSON payload and returns its JSON result. A function error is
    /// fatal when the function reports `errorType` `NonRetryable`, and retryable otherwise (as
    /// every transport error is).
    pub async fn invoke_json(&self, payload: &Value) -> Result<Value, FunctionError> {
        let body = serde_json::to_vec(payload).expect("JSON values serialize");
        let out = self
            .client
            .invoke()
            .function_name(&self.target.function_name)
            .payload(Blob::new(body))
            .send()
            .await
            .map_err(|e| {
                // The Runtime API emulator answers a function error with HTTP 500 and Lambda's
                // `{"errorType","errorMessage"}` body, where AWS answers 200 and X-Amz-Function-Error.
                if let SdkError::ServiceError(se) = &e
                    && let Some(body) = se.raw().body().bytes()
                    && let Ok(v) = serde_json::from_slice::<Value>(body)
                    && v.get("errorType").is_some()
                {
                    return function_error("Unhandled", &v);
                }
                FunctionError::retryable(format!(
                    "invoking {}: {}",
                    self.target,
                    aws_sdk_lambda::error::DisplayErrorContext(&e)
                ))
            })?;
        let result: Value = match out.payload() {
            Some(b) if !b.as_ref().is_empty() => serde_json::from_slice(b.as_ref())
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b.as_ref()).into())),
            _ => Value::Null,
        };
        match out.function_error() {
            None => Ok(result),
            Some(kind) => Err(function_error(kind, &result)),
        }
    }
}

/// Maps Lambda's `{"errorType","errorMessage"}` to a [`FunctionError`].
fn function_error(kind: &str, result: &Value) -> FunctionError {
    let error_type = result["errorType"].as_str().unwrap_or(kind);
    let message = result["errorMessage"]
        .as_str()
        .map_or_else(|| result.to_string(), str::to_owned);
    let message = format!("{error_type}: {message}");
    if ErrorClass::from_error_type(error_type).is_retryable() {
        FunctionError::retryable(message)
    } else {
        FunctionError::fatal(message)
    }
}

#[async_trait::async_trait]
impl Function for LambdaInvoke {
    async fn invoke(&self, event: KafkaEvent) -> Result<Value, FunctionError> {
        self.invoke_json(&lambda_json(&event)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoke_urls_name_an_endpoint_and_a_function() {
        let t = InvokeTarget::parse("http://127.0.0.1:9000", "damselfly-aggregate").unwrap();
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(t.function_name, "damselfly-aggregate");
        let t = InvokeTarget::parse(
            "http://127.0.0.1:9000/2015-03-31/functions/my-agg/invocations",
            "damselfly-aggregate",
        )
        .unwrap();
        assert_eq!(
            (t.endpoint.as_deref(), t.function_name.as_str()),
            (Some("http://127.0.0.1:9000"), "my-agg")
        );
        assert_eq!(
            t.to_string(),
            "http://127.0.0.1:9000/2015-03-31/functions/my-agg/invocations"
        );
        let t = InvokeTarget::parse("aws", "damselfly-alarm").unwrap();
        assert_eq!(
            (t.endpoint, t.function_name.as_str()),
            (None, "damselfly-alarm")
        );
    }

    #[test]
    fn bad_invoke_urls_are_refused_with_the_fix() {
        for bad in [
            "127.0.0.1:9000",
            "ftp://h/x",
            "http://",
            "http://h/functions/x",
            "http://h/2015-03-31/functions//invocations",
        ] {
            let e = InvokeTarget::parse(bad, "f").unwrap_err().to_string();
            assert!(
                e.contains("--invoke-url") && e.contains("cargo lambda watch"),
                "{e}"
            );
        }
    }

    #[test]
    fn function_errors_keep_the_handlers_retry_verdict() {
        let e = function_error(
            "Unhandled",
            &serde_json::json!({"errorType": "NonRetryable", "errorMessage": "bad batch"}),
        );
        assert!(!e.retryable);
        assert_eq!(e.message, "NonRetryable: bad batch");
        let e = function_error(
            "Unhandled",
            &serde_json::json!({"errorType": "Retryable", "errorMessage": "s3 down"}),
        );
        assert!(e.retryable);
        let e = function_error("Unhandled", &Value::String("timeout".into()));
        assert!(e.retryable && e.message.starts_with("Unhandled"));
    }
}
