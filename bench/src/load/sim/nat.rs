//! Which simulated connections cross a NAT, and where
//! (`--translated-every N`): the addresses each end sees, the conntrack
//! entries the translating hosts hold, and what a host says of a watched
//! flow it has no socket for. Pure, like the rest of [`super`]: every host
//! works all of it out from a 4-tuple and the fleet's [`Net`].
//!
//! One in `N` connections of every host (those whose index `k` is a
//! multiple of `N`) is translated, alternately in the two places a fleet
//! shows most:
//! - [`Nat::Service`], on the sender's own host: the client (A, whose
//!   queue holds) dials its peer's service address, which A's host DNATs
//!   to the peer (a Kubernetes ClusterIP behind kube-proxy). A's socket is
//!   `A:c -> service:port` and its samples carry A's conntrack entry,
//!   whose reply direction is the peer's socket `B:port -> A:c`; the
//!   collector asks the peer for that one, and the peer holds it.
//! - [`Nat::PortForward`], on the peer's host: A dials B's address, and
//!   B's host forwards the port into a container namespace its agent reads
//!   (Docker's `-p`). Asked to watch `B:port -> A:c`, B has no such socket:
//!   it reports it absent with its conntrack entry, and holds the socket at
//!   `container:port+1000 -> A:c`, which the collector asks for next.
//!
//! Service addresses (10.96.0.0/12) belong to no host, as ClusterIPs do;
//! each host's container address (100.64.0.0/10) is announced by that
//! host, in a second namespace, when translation is on. The last
//! [`FORWARDERS`] hosts then say they forward packets, so the collector may
//! send them Translate requests; no simulated connection is translated on
//! the way, so each answers "no entry".

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tcpstall_common::{FlowTuple, Lookup, Translation};

use super::{direct_flow, host_of, peer, Net, CHURN_PORT, CLIENT_PORT_BASE, STUCK_PORT};

/// Hosts that say they forward packets when translation is on: the last
/// ones of the fleet.
pub const FORWARDERS: u32 = 2;

/// A container's port is its host's forwarded port plus this.
pub const CONTAINER_PORT_OFFSET: u16 = 1000;

/// The label of the namespace that holds a host's container address.
pub const CONTAINER_NETNS: &str = "ctr";

/// Where a connection's addresses are rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Nat {
    /// Nowhere: both ends see the same 4-tuple.
    Direct,
    /// On the sender's host: it dials its peer's service address.
    Service,
    /// On the peer's host: the port is forwarded into a container.
    PortForward,
}

impl Nat {
    pub const ALL: [Nat; 3] = [Nat::Direct, Nat::Service, Nat::PortForward];

    /// What the report calls it.
    pub fn describe(self) -> &'static str {
        match self {
            Nat::Direct => "direct",
            Nat::Service => "service address, DNAT on the sender's host",
            Nat::PortForward => "port-forward into a container, DNAT on the peer's host",
        }
    }
}

impl Net {
    /// Where connection `k` (of any host) is translated.
    pub fn nat(&self, k: u32) -> Nat {
        let every = self.translated_every;
        if every == 0 || !k.is_multiple_of(every) {
            Nat::Direct
        } else if (k / every).is_multiple_of(2) {
            Nat::Service
        } else {
            Nat::PortForward
        }
    }

    /// Whether host `i` says it forwards packets.
    pub fn forwards(&self, i: u32) -> bool {
        self.translated_every > 0 && i.saturating_add(FORWARDERS) >= self.hosts
    }
}

fn offset(base: Ipv4Addr, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + i + 1)
}

/// The service address of host `j`'s servers (nobody's own).
pub fn service_addr(j: u32) -> Ipv4Addr {
    offset(Ipv4Addr::new(10, 96, 0, 0), j)
}

/// The address of host `j`'s container, announced by host `j`.
pub fn container_addr(j: u32) -> Ipv4Addr {
    offset(Ipv4Addr::new(100, 64, 0, 0), j)
}

/// Connection `k` of host `i` from its sender's side, as that socket
/// has it: towards the peer's service address when A's host translates.
pub(super) fn a_flow(i: u32, k: u32, stuck: bool, net: Net) -> FlowTuple {
    let direct = direct_flow(i, k, stuck, net.hosts);
    match net.nat(k) {
        Nat::Service => {
            let svc = service_addr(peer(i, k, net.hosts));
            FlowTuple::new(direct.local, SocketAddr::from((svc, direct.remote.port())))
        }
        Nat::Direct | Nat::PortForward => direct,
    }
}

/// The conntrack entry A's samples carry: a service address dialled,
/// DNATed to the peer by A's own host.
pub(super) fn a_translation(i: u32, k: u32, stuck: bool, net: Net) -> Option<Translation> {
    (net.nat(k) == Nat::Service).then(|| Translation {
        original: a_flow(i, k, stuck, net),
        reply: direct_flow(i, k, stuck, net.hosts).reversed(),
        src_nat: false,
        dst_nat: true,
    })
}

/// Connection `k` of host `i` from its receiver's side, as that socket has
/// it: in B's container when B's host forwards the port.
pub fn b_flow(i: u32, k: u32, stuck: bool, net: Net) -> FlowTuple {
    let seen = direct_flow(i, k, stuck, net.hosts).reversed();
    match net.nat(k) {
        Nat::PortForward => {
            let ctr = container_addr(peer(i, k, net.hosts));
            let port = seen.local.port() + CONTAINER_PORT_OFFSET;
            FlowTuple::new(SocketAddr::from((ctr, port)), seen.remote)
        }
        Nat::Direct | Nat::Service => seen,
    }
}

/// The conntrack entry B's host holds for a forwarded port: A's packets
/// to B's address, answered from the container.
fn b_translation(i: u32, k: u32, stuck: bool, net: Net) -> Option<Translation> {
    (net.nat(k) == Nat::PortForward).then(|| Translation {
        original: direct_flow(i, k, stuck, net.hosts),
        reply: b_flow(i, k, stuck, net),
        src_nat: false,
        dst_nat: true,
    })
}

/// The connection a flow watched on its receiving side names: (host,
/// connection, stuck) of its sender, from the sender's endpoint and the
/// receiving port. The flow may be any of the 4-tuples the collector asks
/// a receiver for; the caller checks which.
pub(super) fn connection_of(flow: FlowTuple, net: Net) -> Option<(u32, u32, bool)> {
    let IpAddr::V4(remote) = flow.remote.ip() else {
        return None;
    };
    let i = host_of(remote).filter(|&i| i < net.hosts)?;
    let k = u32::from(flow.remote.port().checked_sub(CLIENT_PORT_BASE)?);
    let port = flow.local.port();
    let port = if port >= CHURN_PORT + CONTAINER_PORT_OFFSET {
        port - CONTAINER_PORT_OFFSET
    } else {
        port
    };
    let stuck = match port {
        STUCK_PORT => true,
        CHURN_PORT => false,
        _ => return None,
    };
    Some((i, k, stuck))
}

/// What the receiving host says of a watched `flow` it has no socket for,
/// beyond its absence: the entry of a port it forwards, when `flow` is
/// the connection as it reached the host's own address.
pub fn b_lookup(flow: FlowTuple, net: Net) -> Option<Lookup> {
    let (i, k, stuck) = connection_of(flow, net)?;
    let t = b_translation(i, k, stuck, net)?;
    (t.original.reversed() == flow).then_some(Lookup {
        flow,
        translation: Some(t),
        connected_to: None,
        asked: false,
    })
}

/// A forwarding host's answer to a Translate request: no simulated
/// connection is translated on the way, so no entry.
pub fn translate_answer(flow: FlowTuple) -> Lookup {
    Lookup {
        flow,
        translation: None,
        connected_to: None,
        asked: true,
    }
}
