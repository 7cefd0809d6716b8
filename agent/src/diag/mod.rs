//! Reading TCP sockets from the kernel's sock_diag netlink interface: a
//! pure parser over reply bytes ([`parse`]) and the socket that fetches
//! them ([`socket`]).

pub mod parse;
pub mod socket;

#[cfg(feature = "internals")]
pub use parse::ChunkEnd;
pub use parse::{Base, ExactId, ParseStats};
pub use socket::{Detail, DiagError, DiagSocket, Dump, Exact, Family, Scope};
