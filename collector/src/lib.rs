//! tcpstall-collector: joins both ends of each flow, detects episodes where
//! a send queue stays stuck, and diagnoses them from both ends.
//!
//! The pure parts are tested without I/O: [`detect`] (episodes from
//! samples, `now` passed in) and [`diagnose`] (a verdict from both ends);
//! [`held`] counts every held send queue that ended, episode or not.
//! [`aggregator`] is the one task that owns the state; [`ingest`] and
//! [`query`] are the gRPC edge, and [`frames`] reads the agents' streams;
//! [`store`] is SQLite on its own thread; [`server`] wires them together;
//! [`tls`] secures the listener.
#![forbid(unsafe_code)]

pub mod aggregator;
pub mod config;
pub mod detect;
pub mod diagnose;
pub mod frames;
pub mod held;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod server;
pub mod slab_map;
pub mod store;
pub mod tls;

/// The sample builders of the integration tests, for unit tests too.
#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod test_support;
pub mod tuple;
