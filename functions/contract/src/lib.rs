//! The contract between a Damselfly function and its event source (Lambda's Kafka event source
//! mapping, or `damselfly run`): how an event is cut into partitions, how a failure says whether
//! retrying the batch may help, and what an invocation returns.
//!
//! Both sides of the seam use this crate, so neither restates the other's conventions: the
//! functions (aggregate, alarm, compact) read their events, classify their errors and type their
//! results with it; the runner names event partitions, reads a remote function's `errorType` and
//! result with it. It depends on the Lambda event types and runtime (and serde) only, never on
//! Kafka clients or stores; `damselfly-core` does not depend on it (the core knows nothing of
//! Lambda).

pub mod error;
pub mod event;
pub mod handler;

pub use error::{ErrorClass, Retryable, diagnostic};
pub use event::{Partition, partitions};
pub use handler::{Handler, Summary};
