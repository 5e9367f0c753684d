//! The Damselfly agent: the Kafka publisher every producer uses, and the fleet simulator.

pub mod publish;
pub mod simulate;

pub use publish::{PublishError, Publisher, PublisherConfig};
pub use simulate::{Fleet, SimulateConfig, SimulateStats, SimulateSummary, run_simulation};
