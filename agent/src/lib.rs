//! tcpstall-agent: reads every TCP connection's state from the kernel's
//! sock_diag interface, in one or many network namespaces, and derives
//! where each side stands in the byte stream.
#![forbid(unsafe_code)]

// What an embedding (the CLI's demo) runs: the agent's loop, its settings
// and the namespaces it reads; and the binary's command line.
pub mod cli;
pub mod config;
pub mod netns;
pub mod run;

// Modules public only with the feature `internals` (this crate's own
// integration tests, the workspace's end-to-end tests and the benchmarks
// turn it on).
tcpstall_common::internal_mods!(
    addresses, collectors, conntrack, diag, filter, held, hello, metrics, outbox, poll, probe,
    suspects, translate, uplink, view
);

#[cfg(feature = "internals")]
pub use poll::{PollStats, Poller};
