//! One end of a connection as the collector sees it: the facts a diagnosis
//! needs, taken from a [`SocketSample`] on the agent and carried over the
//! wire. Everything a kernel or probe may not give is an `Option`.

use serde::{Deserialize, Serialize};

use crate::flow::{FlowTuple, Translation};
use crate::held::HeldSpan;
use crate::kernel_tcp::{FactSource, KernelTcp, SackBlock};
use crate::positions::Positions;
use crate::sample::{Opened, SocketSample, TcpState, TimerKind};

/// Why an agent sent a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleReason {
    /// Its send queue looks stuck.
    Suspect,
    /// The collector asked for it: the peer of a suspect, or a queried flow.
    Watched,
    /// Its hold ended: the last word on a suspect, with how the hold went
    /// by the agent's measure (agents that follow their suspects say; a
    /// last word without it ends its track at this sample).
    Released(Option<HeldSpan>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndSample {
    pub flow: FlowTuple,
    pub netns: String,
    pub state: TcpState,
    pub cookie: u64,
    pub inode: u32,
    pub opened: Option<Opened>,
    #[serde(flatten)]
    pub pos: Positions,
    /// How long snd_una and write_seq have not moved with data queued, by
    /// the agent's monotonic clock.
    pub unchanged_ms: u64,
    pub timer: Option<TimerKind>,
    pub timer_expires_ms: u32,
    pub retransmits: Option<u8>,
    pub probes: Option<u8>,
    pub backoff: Option<u8>,
    pub ca_state: Option<u8>,
    pub rto_us: Option<u32>,
    pub rtt_us: Option<u32>,
    pub snd_cwnd: Option<u32>,
    pub unacked: Option<u32>,
    pub lost: Option<u32>,
    pub retrans: Option<u32>,
    pub total_retrans: Option<u32>,
    pub last_data_sent_ms: Option<u32>,
    pub last_data_recv_ms: Option<u32>,
    pub last_ack_recv_ms: Option<u32>,
    pub bytes_retrans: Option<u64>,
    /// Receive memory in use and the receive buffer (SKMEMINFO `r`, `rb`):
    /// where the kernel gives no receive window (before 6.2), a receive
    /// buffer that is full tells a closed window.
    #[serde(default)]
    pub rmem_alloc: Option<u32>,
    #[serde(default)]
    pub rcvbuf: Option<u32>,
    /// TCP_CORK, where a probe could read it (issue 6); `None` = unknown.
    pub cork: Option<bool>,
    /// The probe that read `cork` (bpf or getsockopt).
    #[serde(default)]
    pub cork_source: Option<FactSource>,
    /// TCP_NODELAY, where a probe could read it; `None` = unknown.
    #[serde(default)]
    pub nodelay: Option<bool>,
    /// The probe that read `nodelay`.
    #[serde(default)]
    pub nodelay_source: Option<FactSource>,
    /// The process holding the socket; `None` = unknown (then
    /// `owner_missing` says why, when known). Boxed, as is `absolute`:
    /// both are rarely set, and unboxed they took 160 of this struct's
    /// 512 bytes, paid by every sample the collector decodes.
    #[serde(default)]
    pub owner: Option<Box<ProcessOwner>>,
    #[serde(default)]
    pub owner_missing: Option<OwnerMissing>,
    /// The BPF probe's absolute sequence numbers and SACK blocks.
    #[serde(default)]
    pub absolute: Option<Box<AbsoluteSeq>>,
    /// The connection's conntrack entry when a NAT rule rewrote it, as
    /// the sample's host reads it (the socket's namespace, else the
    /// host's). Boxed: rarely set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translation: Option<Box<Translation>>,
}

/// The process that holds a socket, found by its inode in /proc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessOwner {
    pub pid: u32,
    /// Command line, arguments joined by spaces (bounded by the agent).
    pub command: String,
    /// systemd unit (`.service` or `.scope`) of its cgroup.
    pub unit: Option<String>,
    /// cgroup v2 path.
    pub cgroup: Option<String>,
}

/// Why a sample carries no owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerMissing {
    /// No process holds the socket.
    NoOwner,
    /// The agent may not read every process's descriptors.
    NoPermission,
    /// The lookup is off on that agent.
    Off,
}

impl OwnerMissing {
    pub fn name(self) -> &'static str {
        match self {
            OwnerMissing::NoOwner => "no owner",
            OwnerMissing::NoPermission => "no permission",
            OwnerMissing::Off => "off",
        }
    }
}

/// Absolute sequence numbers as `tcp_sock` holds them (BPF iter/tcp):
/// what a packet capture shows, unlike the relative [`Positions`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbsoluteSeq {
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub write_seq: u32,
    pub rcv_nxt: u32,
    /// Initial sequence numbers, where they follow from the snapshot.
    pub snd_isn: Option<u32>,
    pub rcv_isn: Option<u32>,
    /// SACK blocks this end is sending, at most [`crate::kernel_tcp::SACK_BLOCKS`].
    pub sacks_sent: Vec<SackBlock>,
    /// SACK blocks the peer last reported that still matter.
    pub sacks_received: Vec<SackBlock>,
}

impl AbsoluteSeq {
    /// The absolute facts of one BPF record; the sending ISN needs to
    /// know which side connected.
    pub fn from_kernel(k: &KernelTcp, opened: Option<Opened>) -> AbsoluteSeq {
        AbsoluteSeq {
            snd_una: k.snd_una,
            snd_nxt: k.snd_nxt,
            write_seq: k.write_seq,
            rcv_nxt: k.rcv_nxt,
            snd_isn: opened
                .and_then(|o| k.snd_isn1(o))
                .map(|s| s.wrapping_sub(1)),
            rcv_isn: Some(k.rcv_isn1().wrapping_sub(1)),
            sacks_sent: k.sacks_sent().collect(),
            sacks_received: k.sacks_received().collect(),
        }
    }
}

impl EndSample {
    /// The facts of one polled socket.
    pub fn from_socket(s: &SocketSample, netns: &str, unchanged_ms: u64) -> EndSample {
        let i = s.info.as_ref();
        EndSample {
            flow: FlowTuple::new(s.local, s.remote),
            netns: netns.to_string(),
            state: s.state,
            cookie: s.cookie,
            inode: s.inode,
            opened: s.opened,
            pos: s.positions(),
            unchanged_ms,
            timer: s.timer,
            timer_expires_ms: s.timer_expires_ms,
            retransmits: i.and_then(|i| i.retransmits()),
            probes: i.and_then(|i| i.probes()),
            backoff: i.and_then(|i| i.backoff()),
            ca_state: i.and_then(|i| i.ca_state()),
            rto_us: i.and_then(|i| i.rto()),
            rtt_us: i.and_then(|i| i.rtt()),
            snd_cwnd: i.and_then(|i| i.snd_cwnd()),
            unacked: i.and_then(|i| i.unacked()),
            lost: i.and_then(|i| i.lost()),
            retrans: i.and_then(|i| i.retrans()),
            total_retrans: i.and_then(|i| i.total_retrans()),
            last_data_sent_ms: i.and_then(|i| i.last_data_sent()),
            last_data_recv_ms: i.and_then(|i| i.last_data_recv()),
            last_ack_recv_ms: i.and_then(|i| i.last_ack_recv()),
            bytes_retrans: i.and_then(|i| i.bytes_retrans()),
            rmem_alloc: s.skmem.and_then(|m| m.rmem_alloc),
            rcvbuf: s.skmem.and_then(|m| m.rcvbuf),
            cork: None,
            cork_source: None,
            nodelay: None,
            nodelay_source: None,
            owner: None,
            owner_missing: None,
            absolute: None,
            translation: None,
        }
    }

    /// Whether this end's receive buffer is full enough that its window is
    /// closed, by SKMEMINFO: receive memory at least 7/8 of the buffer. A
    /// window closes when the free space is under about two segments
    /// (the kernel offers half the free space, nothing under a segment);
    /// a reader stalled on 6.18 shows 130,224 of 131,072 bytes. `None`
    /// when the kernel gave no memory figures.
    pub fn receive_buffer_full(&self) -> Option<bool> {
        let (rmem, rcvbuf) = (self.rmem_alloc?, self.rcvbuf?);
        (rcvbuf > 0).then(|| rmem >= rcvbuf - rcvbuf / 8)
    }

    /// Whether this end is resending: a retransmission in progress or the
    /// RTO backing off.
    pub fn retransmitting(&self) -> bool {
        self.retransmits.unwrap_or(0) > 0
            || self.backoff.unwrap_or(0) > 0
            || self.retrans.unwrap_or(0) > 0
            || (self.timer == Some(TimerKind::Retransmit) && self.pos.inflight.unwrap_or(0) > 0)
    }
}
