//! What a program needs to talk to a tcpstall collector the way an operator
//! does: where it is and how to trust it ([`connect::Target`], [`tls`]),
//! the query token, the connected client, and the plain-text tables and
//! human units tcpstall prints ([`table`]).
//!
//! Nothing here stores, polls or probes: the operator's CLI builds on this
//! crate without SQLite, an allocator of its own, or BPF.
#![forbid(unsafe_code)]

pub mod connect;
pub mod table;
pub mod tls;

pub use connect::{Client, ConnectError, Target, WithToken};
