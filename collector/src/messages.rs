//! The messages between the collector's two in-memory roles: the gateway
//! (the agents' streams, the host registry, sessions) and the matcher
//! (both ends of each flow, the detector, diagnosis, episodes). Each is
//! plain data, owned, with nothing shared: a seam that could cross a
//! process boundary as it is.
//!
//! Agent streams send [`ToMatcher::Batch`] and [`ToMatcher::Addresses`]
//! straight to the matcher (the busy path: one hop; and so an agent's
//! messages reach it in the order it sent them); the gateway sends the
//! rest of [`ToMatcher`]. The
//! matcher asks watches of hosts with [`ToGateway`], never touching a
//! session. Which matcher a flow belongs to is decidable from the flow
//! alone: [`partition`] of its direction-free key.

use std::net::IpAddr;
use std::time::Duration;

use tcpstall_common::{AgentBatch, FlowKey, FlowTuple, NamespaceAddresses};

use crate::gateway::registry::Holder;

/// A host's number in this collector: given by the gateway at its first
/// hello and kept for the collector's life, so that every per-connection
/// key is a few bytes to hash and copy rather than a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub u32);

/// To the matcher.
#[derive(Debug)]
pub enum ToMatcher {
    /// A host's agent said hello (again: its previous stream is gone, and
    /// a [`ToMatcher::HostDown`] came first).
    HostUp {
        host: HostId,
        /// The stream it speaks on: batches of any other are stale.
        session: u64,
        name: String,
        /// Every namespace its agent reads, with its addresses.
        addresses: Vec<NamespaceAddresses>,
        interval: Duration,
        /// Its agent answers [`ToGateway::Translate`].
        answers_lookups: bool,
        /// Its host forwards packets: it may translate other hosts' flows.
        forwards: bool,
        /// Its machine, its agent's address and since when it holds the
        /// name (fleet mode tells the other nodes).
        holder: Holder,
    },
    /// A host's stream ended: what it reported ends with it.
    HostDown { host: HostId },
    /// A host's agent announced its addresses anew, from its stream: every
    /// address of every namespace it reads, replacing what its Hello (or
    /// its previous announcement) said.
    Addresses {
        host: HostId,
        /// The stream it came on: an older one's is stale.
        session: u64,
        addresses: Vec<NamespaceAddresses>,
    },
    /// One poll of a host, from its stream.
    Batch {
        host: HostId,
        session: u64,
        /// When the agent took the poll, on the collector's clock (the
        /// stream's estimate: its agent's clock plus the least offset its
        /// batches showed, so never later than their arrival).
        taken_ms: i64,
        batch: AgentBatch,
    },
    /// A watch request the gateway could not hand to the host's agent (no
    /// stream, or its queue full): due again at once.
    Unsent { host: HostId, flow: FlowTuple },
}

/// To the gateway: what the matcher asks of a host's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToGateway {
    /// Report `flow` (as `host` sees it) every poll.
    Watch { host: HostId, flow: FlowTuple },
    /// Stop reporting it.
    Unwatch { host: HostId, flow: FlowTuple },
    /// Look `flow` up in connection tracking once and answer.
    Translate { host: HostId, flow: FlowTuple },
}

#[cfg_attr(not(feature = "internals"), allow(dead_code))] // fleet mode's partitions (to come); its tests today
/// The partition of `n` that a flow belongs to: both ends of a connection
/// (the key is direction-free) land in the same one, in every process (a
/// fixed hash, not a per-process random one).
pub fn partition(key: FlowKey, n: u32) -> u32 {
    // FNV-1a over the endpoints' bytes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for end in [key.0, key.1] {
        match end.ip() {
            IpAddr::V4(v4) => eat(&v4.octets()),
            IpAddr::V6(v6) => eat(&v6.octets()),
        }
        eat(&end.port().to_be_bytes());
    }
    u32::try_from(h % u64::from(n.max(1))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_of_a_flow_fall_in_one_partition_and_flows_spread() {
        let f =
            |a: &str, b: &str| FlowTuple::new(a.parse().expect("addr"), b.parse().expect("addr"));
        let mut seen = [0u32; 8];
        for port in 40_000..40_800u16 {
            let a = f(&format!("10.0.0.1:{port}"), "10.0.0.2:5432");
            let p = partition(a.key(), 8);
            assert_eq!(p, partition(a.reversed().key(), 8), "{a}");
            seen[p as usize] += 1;
        }
        // 800 flows over 8 partitions: none empty, none with half.
        assert!(seen.iter().all(|&n| n > 0 && n < 400), "{seen:?}");
        let v6 = f("[2001:db8::1]:443", "[2001:db8::2]:50000");
        assert_eq!(partition(v6.key(), 3), partition(v6.reversed().key(), 3));
        // Fixed: the same answer in every process and build (FNV-1a of
        // 10.0.0.1, port 1, 10.0.0.2, port 2, worked by hand).
        assert_eq!(
            partition(f("10.0.0.2:2", "10.0.0.1:1").key(), 1_000_000),
            60_509
        );
        assert_eq!(partition(v6.key(), 0), 0, "no partitions: one");
    }
}
