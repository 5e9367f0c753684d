//! The local event source mapping: what Lambda's Kafka trigger does, on any machine, against any broker.
//!
//! It runs consumer-group members ([`worker`]s) in this process, builds batches exactly as Lambda
//! does ([`event::kafka_event`]), invokes a [`Function`] (a handler [`Hosted`] in-process, or over
//! Lambda's Invoke API: [`remote`]), retries, bisects and sends failed batches
//! to an on-failure [`destination`], commits offsets only after a batch is settled, and scales the
//! number of members with the group's lag by KEDA's rule ([`scale`]), exporting [`metrics`];
//! [`redrive`] replays what an on-failure destination kept.

pub mod config;
pub mod destination;
pub mod event;
pub mod function;
pub mod hosted;
pub mod metrics;
pub mod redrive;
pub mod remote;
pub mod runner;
pub mod scale;
mod worker;

pub use config::{
    ConfigError, GroupProtocol, OnFailure, RunnerConfig, ScalingConfig, StartingPosition,
};
pub use destination::{Condition, FailedBatch};
pub use function::{Function, FunctionError};
pub use hosted::{Deployment, Hosted};
pub use metrics::Stats;
pub use redrive::{RedriveOptions, RedriveStats, RedriveSummary, redrive};
pub use remote::{InvokeTarget, LambdaInvoke};
pub use runner::{RunSummary, RunnerError, run};
