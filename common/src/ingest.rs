//! What an agent tells the collector, and what the collector asks of it, as
//! domain messages: the greeting ([`HostHello`]), one poll's worth
//! ([`AgentBatch`]) and the requests back ([`ToAgent`]). The wire forms and
//! their checks are `tcpstall_proto::convert`'s.

use std::net::IpAddr;
use std::time::Duration;

use crate::end::{EndSample, SampleReason};
use crate::flow::FlowTuple;
use crate::held::HeldSpan;
use crate::packed::Packed;

/// An agent's greeting, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostHello {
    pub host: String,
    pub agent_version: String,
    pub kernel: String,
    pub boot_id: String,
    /// Every address of every namespace the agent reads.
    pub addresses: Vec<IpAddr>,
    pub interval: Duration,
}

/// A socket the agent had reported is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSocket {
    pub flow: FlowTuple,
    pub cookie: u64,
    /// Its hold, when it went as a held suspect (from agents that say).
    pub held: Option<HeldSpan>,
}

/// One poll's worth from an agent, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentBatch {
    /// The agent's monotonic clock at the poll.
    pub mono: Duration,
    pub connections: u32,
    pub samples: Vec<(SampleReason, EndSample)>,
    /// The same samples encoded, index for index, when the wire gave them
    /// (decoded off the matcher's thread, at the edge); when empty the
    /// matcher encodes what it keeps.
    pub packed: Vec<Option<Packed>>,
    pub closed: Vec<ClosedSocket>,
    pub absent: Vec<FlowTuple>,
    pub dropped_batches: u64,
    pub dropped_samples: u64,
}

/// What the collector asks an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToAgent {
    Watch(FlowTuple),
    Unwatch(FlowTuple),
}
