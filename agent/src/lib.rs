//! tcpstall-agent: reads every TCP connection's state from the kernel's
//! sock_diag interface, in one or many network namespaces, and derives
//! where each side stands in the byte stream.
#![forbid(unsafe_code)]

pub mod diag;
pub mod filter;
pub mod netns;
pub mod poll;
pub mod view;

pub use poll::{PollStats, Poller};
