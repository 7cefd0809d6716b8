//! Reading TCP sockets from the kernel's sock_diag netlink interface: a
//! pure parser over reply bytes ([`parse`]) and the socket that fetches
//! them ([`socket`]).

pub mod parse;
pub mod socket;

#[cfg(feature = "internals")]
pub use parse::ChunkEnd;
pub use parse::{Base, ExactId, ParseStats};
pub use parse::{read_tcp_info_as, TCP_INFO_LEN_ENV};
pub use socket::{Detail, DiagError, DiagSocket, Dump, Exact, Family, Scope};
