//! How a function reports a failed invocation to its event source: retry the batch, or do not.
//!
//! On the wire the class is Lambda's `errorType` ([`ErrorClass::error_type`]). Lambda's event
//! source mapping retries every function error whatever its type (up to MaximumRetryAttempts); the
//! class tells operators, on-failure records and `damselfly run --fail-fast-non-retryable` which
//! failures a retry cannot cure.

use std::fmt;

/// Whether retrying the same batch may cure a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A store or broker was unavailable: the same batch may succeed later.
    Retryable,
    /// A bug or an event that cannot be processed: the same batch fails again.
    NonRetryable,
}

impl ErrorClass {
    /// The class of a failure that is, or is not, worth retrying.
    pub fn of(retryable: bool) -> Self {
        if retryable {
            Self::Retryable
        } else {
            Self::NonRetryable
        }
    }

    /// Lambda's `errorType` for the class: `Retryable` or `NonRetryable`.
    pub fn error_type(self) -> &'static str {
        match self {
            Self::Retryable => "Retryable",
            Self::NonRetryable => "NonRetryable",
        }
    }

    /// The class a function's `errorType` names: only `NonRetryable` is, anything else (a
    /// runtime's own types such as `Runtime.ExitError`, timeouts) is retryable.
    pub fn from_error_type(error_type: &str) -> Self {
        if error_type == Self::NonRetryable.error_type() {
            Self::NonRetryable
        } else {
            Self::Retryable
        }
    }

    /// Whether the class is [`ErrorClass::Retryable`].
    pub fn is_retryable(self) -> bool {
        self == Self::Retryable
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error_type())
    }
}

/// A function's error that knows whether retrying the batch may cure it.
pub trait Retryable: fmt::Display {
    /// Whether retrying the same batch may succeed.
    fn is_retryable(&self) -> bool;

    /// The error's class.
    fn class(&self) -> ErrorClass {
        ErrorClass::of(self.is_retryable())
    }
}

/// The Lambda diagnostic of a function error: its class as `errorType`, its text as
/// `errorMessage` (for `lambda_runtime::run(service_fn(...))`, via `map_err`).
pub fn diagnostic<E: Retryable>(e: E) -> lambda_runtime::Diagnostic {
    lambda_runtime::Diagnostic {
        error_type: e.class().error_type().to_owned(),
        error_message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Down;
    impl fmt::Display for Down {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("store down")
        }
    }
    impl Retryable for Down {
        fn is_retryable(&self) -> bool {
            true
        }
    }

    #[test]
    fn error_types_round_trip_and_unknown_ones_are_retryable() {
        for class in [ErrorClass::Retryable, ErrorClass::NonRetryable] {
            assert_eq!(ErrorClass::from_error_type(class.error_type()), class);
        }
        assert_eq!(
            ErrorClass::from_error_type("Runtime.ExitError"),
            ErrorClass::Retryable
        );
        let d = diagnostic(Down);
        assert_eq!(
            (d.error_type.as_str(), d.error_message.as_str()),
            ("Retryable", "store down")
        );
    }
}
