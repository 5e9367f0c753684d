//! How a function reports a failed invocation to its event source: retry the batch, or do not.

/// Lambda `errorType` of a failure that retrying the same batch may cure (a store or broker down).
pub const RETRYABLE: &str = "Retryable";

/// Lambda `errorType` of a failure that retrying the same batch cannot cure (a bug, a bad event).
pub const NON_RETRYABLE: &str = "NonRetryable";

/// The `errorType` for a failure that is, or is not, worth retrying.
pub fn error_type(retryable: bool) -> &'static str {
    if retryable { RETRYABLE } else { NON_RETRYABLE }
}

/// Implements `From<$error> for lambda_runtime::Diagnostic` for a handler error with an
/// `is_retryable()` method: `errorType` is [`RETRYABLE`] or [`NON_RETRYABLE`], so the runner,
/// on-failure destinations and logs can tell them apart.
#[macro_export]
macro_rules! lambda_diagnostic {
    ($error:ty) => {
        impl From<$error> for lambda_runtime::Diagnostic {
            fn from(e: $error) -> Self {
                lambda_runtime::Diagnostic {
                    error_type: $crate::retry::error_type(e.is_retryable()).to_owned(),
                    error_message: e.to_string(),
                }
            }
        }
    };
}
