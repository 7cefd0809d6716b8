//! What an agent tells the collector, and what the collector tells it, as
//! domain messages. An agent sends [`ToCollector`]: its greeting
//! ([`AgentHello`]), one poll's worth ([`AgentBatch`]) or, when it has
//! nothing to send, a [`Heartbeat`]. The collector answers with
//! [`FromCollector`]: a [`Welcome`], then requests ([`ToAgent`]). The
//! collector reads a greeting as [`HostHello`], the host and all its
//! addresses. The wire forms and their checks are `tcpstall_proto::convert`'s.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::end::{EndSample, SampleReason};
use crate::flow::{FlowTuple, Translation};
use crate::held::HeldSpan;
use crate::machine::MachineId;
use crate::packed::Packed;

/// An agent's greeting as the collector keeps it, validated: the host and
/// every address it answers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHello {
    pub host: String,
    /// The machine's stable identity; `None` from agents that predate it
    /// (or found none): their host name is not guarded against another
    /// machine's.
    pub machine_id: Option<MachineId>,
    pub agent_version: String,
    pub kernel: String,
    pub boot_id: String,
    /// Every namespace the agent reads, with its addresses: the host
    /// holds each address in that namespace.
    pub namespaces: Vec<NamespaceAddresses>,
    pub interval: Duration,
    /// The agent answers [`ToAgent::Translate`] and sends [`Lookup`]s.
    pub answers_lookups: bool,
    /// The host forwards packets, so may translate other hosts' flows.
    pub forwards: bool,
    /// Which probes work on the host (none, from a Hello that does not say).
    pub probes: ProbeSet,
}

impl HostHello {
    /// How many addresses it announces, over all its namespaces.
    pub fn address_count(&self) -> usize {
        self.namespaces.iter().map(|ns| ns.addresses.len()).sum()
    }
}

/// An agent's greeting as it says it: who it is, each namespace it reads
/// with that namespace's addresses, and which probes work on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHello {
    pub host: String,
    /// This machine's stable identity (/etc/machine-id, or configured);
    /// `None` when there is none.
    pub machine_id: Option<MachineId>,
    pub agent_version: String,
    /// The kernel release (`uname -r`); empty when it could not be read.
    pub kernel: String,
    /// This boot's id; empty when it could not be read.
    pub boot_id: String,
    pub namespaces: Vec<NamespaceAddresses>,
    pub probes: ProbeSet,
    /// How often the agent polls.
    pub interval: Duration,
    /// The agent answers [`ToAgent::Translate`] and sends [`Lookup`]s.
    pub answers_lookups: bool,
    /// The host forwards packets (IP forwarding on in its own namespace).
    pub forwards: bool,
}

/// One network namespace an agent reads, with the addresses it owns (the
/// collector finds a flow's peer through them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceAddresses {
    pub label: String,
    pub inode: u64,
    pub addresses: Vec<IpAddr>,
}

impl NamespaceAddresses {
    /// `addresses` held in one namespace labelled `label` (inode unknown:
    /// 0), as tests and simulations announce them.
    pub fn one(label: &str, addresses: Vec<IpAddr>) -> Vec<NamespaceAddresses> {
        vec![NamespaceAddresses {
            label: label.to_string(),
            inode: 0,
            addresses,
        }]
    }
}

/// Which probes work on an agent's host, as found when it started. A
/// greeting that does not say reads as none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeSet {
    pub sock_diag: bool,
    pub bpf_iter: bool,
    pub getsockopt: bool,
}

/// A socket the agent had reported is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSocket {
    /// The label of the namespace it was in.
    pub netns: String,
    pub flow: FlowTuple,
    pub cookie: u64,
    /// Its hold, when it went as a held suspect (from agents that say).
    pub held: Option<HeldSpan>,
}

/// One poll's worth from an agent, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentBatch {
    /// The agent's monotonic clock at the poll (sent in whole
    /// microseconds).
    pub mono: Duration,
    pub connections: u32,
    pub samples: Vec<(SampleReason, EndSample)>,
    /// The same samples encoded, index for index, when the wire gave them
    /// (decoded off the matcher's thread, at the edge); when empty the
    /// matcher encodes what it keeps. Never sent: the wire carries
    /// `samples`.
    pub packed: Vec<Option<Packed>>,
    pub closed: Vec<ClosedSocket>,
    pub absent: Vec<FlowTuple>,
    /// What the host knows of flows it has no socket for: watched flows
    /// it reports absent (when it knows more), answers to
    /// [`ToAgent::Translate`].
    pub lookups: Vec<Lookup>,
    /// What the agent has dropped since it started, batches and the
    /// samples in them.
    pub dropped_batches: u64,
    pub dropped_samples: u64,
}

/// What a host knows of a flow it has no socket for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// The flow as asked.
    pub flow: FlowTuple,
    /// The conntrack entry that holds the flow in either direction.
    pub translation: Option<Translation>,
    /// The remote of the one socket here on the flow's local endpoint,
    /// when that socket talks to someone else: the flow was translated on
    /// its way by a host this one does not know.
    pub connected_to: Option<SocketAddr>,
    /// An answer to [`ToAgent::Translate`] (else about a watched flow).
    pub asked: bool,
}

/// "Alive, nothing to send": an agent's poll that found nothing worth
/// sending, with the loss counters as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// The agent's monotonic clock at the poll (sent in whole
    /// microseconds).
    pub mono: Duration,
    pub connections: u32,
    pub dropped_batches: u64,
    pub dropped_samples: u64,
}

/// What an agent sends the collector: a greeting first on every stream,
/// then batches and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCollector {
    Hello(AgentHello),
    Batch(AgentBatch),
    Heartbeat(Heartbeat),
    /// The namespaces' addresses changed: all of them as they are now.
    /// Sent only to a collector whose [`Welcome`] reads them.
    Addresses(Vec<NamespaceAddresses>),
}

/// What the collector asks an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToAgent {
    Watch(FlowTuple),
    Unwatch(FlowTuple),
    /// Look this flow up in connection tracking once and answer with a
    /// [`Lookup`] (asked), found or not. Only to agents that answer them.
    Translate(FlowTuple),
}

/// The collector's first word on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub protocol: u32,
    pub collector_version: String,
    /// The collector reads [`ToCollector::Addresses`].
    pub reads_addresses: bool,
}

/// What an agent reads from the collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromCollector {
    Welcome(Welcome),
    Request(ToAgent),
}
