//! Fail points for fault tests: armed from `FAILPOINTS` by [`setup`] in a build with feature `failpoints`, absent from any other build.
//!
//! The points: `ledger-decided` (see `ledger`: holds a write between deciding and publishing).
//! `FAILPOINTS` uses the `fail` crate's syntax, e.g. `ledger-decided=20*off->1*return(3000)`.

/// Keeps the fail points armed while it lives; hold it in `main`.
#[must_use = "the fail points are disarmed when this is dropped"]
pub struct FailPoints {
    #[cfg(feature = "failpoints")]
    _scenario: fail::FailScenario<'static>,
}

/// Arms the fail points `FAILPOINTS` names (a build without feature `failpoints` has none).
pub fn setup() -> FailPoints {
    FailPoints {
        #[cfg(feature = "failpoints")]
        _scenario: fail::FailScenario::setup(),
    }
}
