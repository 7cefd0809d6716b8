//! Flow identity across hosts: a 4-tuple seen from one end, and the
//! canonical key both ends of a connection share.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A connection's 4-tuple as one end sees it: `local` is that end's own
/// address. The other end sees it [`reversed`](FlowTuple::reversed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl FlowTuple {
    pub fn new(local: SocketAddr, remote: SocketAddr) -> FlowTuple {
        FlowTuple { local, remote }
    }

    /// The same connection as the other end sees it.
    pub fn reversed(self) -> FlowTuple {
        FlowTuple {
            local: self.remote,
            remote: self.local,
        }
    }

    /// The key both ends map to.
    pub fn key(self) -> FlowKey {
        if self.local <= self.remote {
            FlowKey(self.local, self.remote)
        } else {
            FlowKey(self.remote, self.local)
        }
    }
}

impl fmt::Display for FlowTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.local, self.remote)
    }
}

/// The canonical 4-tuple: the lower endpoint first, so that both ends of a
/// connection produce the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey(pub SocketAddr, pub SocketAddr);

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <-> {}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_share_one_key() {
        let a = FlowTuple::new(
            "10.0.0.1:40000".parse().expect("addr"),
            "10.0.0.2:80".parse().expect("addr"),
        );
        assert_eq!(a.key(), a.reversed().key());
        assert_eq!(a.reversed().reversed(), a);
        assert_ne!(a, a.reversed());
    }
}
