//! Damselfly's data contracts: the wire message, the metric catalog, lake tables and lake paths.
//!
//! Everything that crosses a process boundary is defined here once: what agents publish to
//! Kafka ([`wire`]), which metrics exist and which are counters ([`catalog`]), the Arrow schema
//! of every lake table ([`tables`]) and where each object lives in the lake ([`paths`]).

pub mod catalog;
pub mod lambda_event;
pub mod paths;
pub mod tables;
pub mod wire;

pub use catalog::{Family, Kind, MetricDef};
pub use tables::Table;
pub use wire::{MetricMessage, Tags, WireError};
