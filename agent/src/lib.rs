//! The Damselfly agent: the Kafka publisher every producer uses, and the fleet simulator.

pub mod cli;
pub mod collect;
pub mod config;
pub mod imds;
pub mod publish;
pub mod run;
pub mod simulate;
pub mod spool;
pub mod wire;

pub use collect::{Collection, Collector, SkipLists};
pub use config::{AgentConfig, ConfigError};
pub use publish::{PublishError, Publisher, PublisherConfig};
pub use run::{AgentError, RunOptions, RunStats, SendQueue, Transport, collect_once, run_agent};
pub use simulate::{Fleet, SimulateConfig, SimulateStats, SimulateSummary, run_simulation};
pub use spool::{Spool, SpoolError, SpoolOptions};
pub use wire::WireFormat;
