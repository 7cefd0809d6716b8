//! tcpstall-agent: reads every TCP connection's state from the kernel's
//! sock_diag interface, in one or many network namespaces, and derives
//! where each side stands in the byte stream.
#![forbid(unsafe_code)]

pub mod config;
pub mod diag;
pub mod filter;
pub mod held;
pub mod hello;
pub mod metrics;
pub mod netns;
pub mod outbox;
pub mod poll;
pub mod probe;
pub mod run;
pub mod suspects;
pub mod uplink;
pub mod view;

pub use poll::{PollStats, Poller};
