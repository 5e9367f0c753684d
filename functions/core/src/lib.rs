//! Damselfly's pure pipeline logic: records in, lake objects out; no Kafka, no AWS SDK, no Lambda.
//!
//! The aggregate function is `decode` -> [`batch::PartitionBatch`] -> [`encode`] -> [`lake::Lake`].
//! Everything here is plain data and `dyn ObjectStore`, so it is tested with in-memory stores.

mod accepted;
pub mod alarm;
pub mod batch;
pub mod compact;
pub mod conformance;
pub mod decode;
pub mod dict_column;
pub mod encode;
pub mod env;
pub mod failpoints;
pub mod faults;
pub mod formats;
pub mod lake;
pub mod ledger;
pub mod rates;
pub mod rollup;

pub use batch::{BatchStats, PartitionBatch};
pub use decode::{InputRecord, Rejection, Validation};
pub use lake::{Lake, LakeError, LakeLocation};
