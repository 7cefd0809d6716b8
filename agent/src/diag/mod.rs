//! Reading TCP sockets from the kernel's sock_diag netlink interface: a
//! pure parser over reply bytes ([`parse`]) and the socket that fetches
//! them ([`socket`]).

pub mod parse;
pub mod socket;

pub use parse::{ChunkEnd, ParseStats};
pub use socket::{DiagError, DiagSocket, Family};
