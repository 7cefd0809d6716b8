//! tcpstall-collector: joins both ends of each flow, detects episodes where
//! a send queue stays stuck, and diagnoses them from both ends.
//!
//! Three roles, each a folder, talking through plain messages on bounded
//! channels ([`messages`]); docs/architecture.md draws them:
//! - [`gateway`]: the agents' streams, checked at the edge; the host
//!   registry and sessions; watch requests handed to the agent that holds
//!   a host.
//! - [`matcher`]: per-connection state, the detector (a pure state machine
//!   on explicit time), the join of both ends, diagnosis, the episode
//!   lifecycle.
//! - [`store`]: a trait (episodes, samples, counts, queries, retention);
//!   SQLite on its own thread implements it on one node, PostgreSQL (one
//!   writer task per node) in fleet mode.
//!
//! Around them: [`query`] (the operators' gRPC edge), [`metrics`],
//! [`config`], [`tls`], and [`server`], which wires it all together.
#![forbid(unsafe_code)]

pub mod config;
pub mod server;

// Modules public only with the feature `internals` (this crate's own
// integration tests and the benchmarks turn it on); to everyone else the
// collector is its binary, [`server`] and [`config`].
tcpstall_common::internal_mods!(fleet, gateway, matcher, messages, metrics, query, store, tls, web);

#[cfg(feature = "internals")]
pub mod inprocess;

/// The sample builders of the integration tests, for unit tests too.
#[cfg(test)]
#[path = "../tests/support/mod.rs"]
mod test_support;
