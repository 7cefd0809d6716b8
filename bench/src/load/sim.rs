//! One simulated host, poll by poll: which of its connections a real
//! agent would send, with samples a real agent could have read. Pure: time
//! (the host's monotonic clock) and randomness are passed in.
//!
//! Host `i` owns 198.18.x.y = 198.18.0.0 + i + 1 and holds `conns`
//! connections. Connection `k` of host `i` goes from (host i, port 10000+k)
//! to a server port on peer host `peer(i, k)`, another simulated host, so
//! every peer is monitored: port 7000 for the flows whose queues churn,
//! 7001 for those that stay stuck. From a watched 4-tuple alone a host
//! knows which of its sockets the collector means and what that end looks
//! like, so no state is shared between simulated hosts.
//!
//! What a host sends, as the agent's selector (agent/src/suspects.rs)
//! would:
//! - churning suspects: a queue first seen at one poll, reported SUSPECT
//!   the next one or two polls with `unchanged_ms` since it was first
//!   seen, then RELEASED (it drained); new ones start every poll so that
//!   `suspect_frac` of the connections are suspects at any poll;
//! - stuck flows: `stuck_frac` of the connections in slots; each slot's
//!   stall starts between two polls, is first seen at the next poll,
//!   reported SUSPECT every poll while it lasts (a zero window: its peer
//!   does not read), then RELEASED after `stuck_for`, and the slot's next
//!   stall starts before the next poll;
//! - WATCHED samples of every flow the collector asked it to watch: its
//!   receiving end, with a full queue and a zero window for stuck flows
//!   (so the diagnosis is peer_not_reading), healthy for churning ones;
//!   the flows it has no socket for as absent, with its conntrack entry
//!   when it has one, and answers to Translate requests ([`nat`]: which
//!   connections cross a NAT, and where).

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tcpstall_common::time::millis;
use tcpstall_common::{
    EndSample, FlowTuple, HeldEnd, HeldSpan, Lookup, Opened, Positions, SampleReason, TcpState,
    TimerKind,
};

pub mod nat;

pub use nat::Nat;

/// Server port of the flows whose queues churn.
pub const CHURN_PORT: u16 = 7000;
/// Server port of the flows that stay stuck.
pub const STUCK_PORT: u16 = 7001;
/// Client port of connection 0; connection k uses this + k.
pub const CLIENT_PORT_BASE: u16 = 10_000;
/// Most connections a simulated host may have (client ports end at 65535).
pub const MAX_CONNS: u32 = 65_535 - CLIENT_PORT_BASE as u32;
/// Most simulated hosts (198.18.0.0/15 minus network and broadcast).
pub const MAX_HOSTS: u32 = (1 << 17) - 2;

/// Bytes queued in a stuck sender, and unread in its peer.
const STUCK_BYTES: u32 = 65_536;
/// Bytes queued in a churning sender.
const CHURN_BYTES: u32 = 1_448;
/// The receive buffer a non-reading peer has filled.
const PEER_FULL: u32 = 131_072;

/// Translate requests a host keeps for its next poll; more are dropped
/// (and counted by its caller).
pub const MAX_TRANSLATE_ASKED: usize = 1024;

/// What every simulated host knows of the fleet without talking to the
/// others: how many hosts there are, and which connections cross a NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub hosts: u32,
    /// One in this many connections is translated (0: none); see [`nat`].
    pub translated_every: u32,
}

#[cfg(test)]
impl Net {
    /// A fleet of `hosts` without translation.
    pub fn direct(hosts: u32) -> Net {
        Net {
            hosts,
            translated_every: 0,
        }
    }
}

/// The address of host `i`.
pub fn host_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i + 1)
}

/// The index of the host owning `ip`, if it is one.
pub fn host_of(ip: Ipv4Addr) -> Option<u32> {
    u32::from(ip)
        .checked_sub(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + 1)
        .filter(|&i| i < MAX_HOSTS)
}

/// The name host `i` says hello with.
pub fn host_name(i: u32) -> String {
    format!("sim-{i:05}")
}

/// SplitMix64: a small, good-enough generator for the simulation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [0, d).
    pub fn within(&mut self, d: Duration) -> Duration {
        d.mul_f64((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// The peer host of connection `k` of host `i`: any other host, spread
/// evenly (host i itself when it is alone).
pub fn peer(i: u32, k: u32, hosts: u32) -> u32 {
    if hosts <= 1 {
        return 0;
    }
    let h = Rng::new((u64::from(i) << 32) | u64::from(k)).next_u64() % u64::from(hosts - 1);
    let h = h as u32;
    if h >= i {
        h + 1
    } else {
        h
    }
}

/// Connection `k` of host `i` from its (client, sending) side, between
/// the two hosts' own addresses: as both ends see it when nothing on the
/// way translates it.
fn direct_flow(i: u32, k: u32, stuck: bool, hosts: u32) -> FlowTuple {
    let server = if stuck { STUCK_PORT } else { CHURN_PORT };
    let client_port = u16::try_from(u32::from(CLIENT_PORT_BASE) + k).unwrap_or(u16::MAX);
    FlowTuple::new(
        SocketAddr::from((host_addr(i), client_port)),
        SocketAddr::from((host_addr(peer(i, k, hosts)), server)),
    )
}

/// Connection `k` of host `i` from its (client, sending) side, as that
/// socket has it (towards a service address when its host translates).
pub fn a_flow(i: u32, k: u32, stuck: bool, net: Net) -> FlowTuple {
    nat::a_flow(i, k, stuck, net)
}

/// Where the A→B byte stream stands: both ends count from here. Above
/// a full receive buffer, so that a non-reading peer's `copied` (rcv_nxt
/// less what it holds) stays positive for every host and connection.
fn stream_base(i: u32, k: u32) -> u64 {
    1 + u64::from(PEER_FULL) + (u64::from(i) << 24) + (u64::from(k) << 8)
}

fn cookie(i: u32, k: u32, stuck: bool, b_side: bool) -> u64 {
    (u64::from(b_side) << 63) | (u64::from(i) << 32) | (u64::from(k) << 1) | u64::from(stuck)
}

fn base_sample(flow: FlowTuple, cookie: u64, opened: Opened, pos: Positions) -> EndSample {
    EndSample {
        flow,
        netns: "host".to_string(),
        state: TcpState::Established,
        cookie,
        inode: (cookie as u32) | 1,
        opened: Some(opened),
        pos,
        unchanged_ms: 0,
        timer: None,
        timer_expires_ms: 0,
        retransmits: Some(0),
        probes: Some(0),
        backoff: Some(0),
        ca_state: Some(0),
        rto_us: Some(204_000),
        rtt_us: Some(180),
        snd_cwnd: Some(10),
        unacked: Some(0),
        lost: Some(0),
        retrans: Some(0),
        total_retrans: Some(0),
        last_data_sent_ms: Some(40),
        last_data_recv_ms: Some(40),
        last_ack_recv_ms: Some(40),
        bytes_retrans: Some(0),
        // Every agent on a kernel with SKMEMINFO (all of them) sends both.
        rmem_alloc: Some(0),
        rcvbuf: Some(131_072),
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

/// The sending end of connection `k` of host `i` while its queue is held:
/// stuck (zero window, probing) or churning (a segment in flight).
pub fn a_queued(i: u32, k: u32, stuck: bool, net: Net, unchanged_ms: u64) -> EndSample {
    let una = stream_base(i, k);
    let (sendq, inflight, wnd) = if stuck {
        (STUCK_BYTES, 0, 0)
    } else {
        (CHURN_BYTES, CHURN_BYTES, 65_535 << 7)
    };
    let pos = Positions {
        sendq,
        recvq: 0,
        notsent: Some(sendq - inflight),
        inflight: Some(inflight),
        snd_una: Some(una),
        snd_nxt: Some(una + u64::from(inflight)),
        write_seq: Some(una + u64::from(sendq)),
        rcv_nxt: Some(7_000),
        copied: Some(7_000),
        snd_wnd: Some(wnd),
        rcv_wnd: Some(65_535 << 7),
        snd_wscale: Some(7),
        rcv_wscale: Some(7),
    };
    let mut s = base_sample(
        a_flow(i, k, stuck, net),
        cookie(i, k, stuck, false),
        Opened::Active,
        pos,
    );
    s.unchanged_ms = unchanged_ms;
    // Its host's conntrack entry, as the agent sends it with the sample.
    s.translation = nat::a_translation(i, k, stuck, net).map(Box::new);
    if stuck {
        s.timer = Some(TimerKind::ZeroWindowProbe);
        s.timer_expires_ms = 1_600;
        // One probe per backed-off RTO: grows with the stall, the marks
        // (snd_una, write_seq, sendq) do not.
        let probes = u8::try_from(unchanged_ms / 3_000).unwrap_or(u8::MAX);
        s.probes = Some(probes);
        s.backoff = Some(probes.min(15));
    } else {
        s.timer = Some(TimerKind::Retransmit);
        s.timer_expires_ms = 200;
        s.unacked = Some(1);
    }
    s
}

/// The sending end after its queue drained: the last word on it.
pub fn a_released(i: u32, k: u32, stuck: bool, net: Net) -> EndSample {
    let mut s = a_queued(i, k, stuck, net, 0);
    let end = s.pos.write_seq;
    s.pos.sendq = 0;
    s.pos.notsent = Some(0);
    s.pos.inflight = Some(0);
    s.pos.snd_una = end;
    s.pos.snd_nxt = end;
    s.pos.snd_wnd = Some(65_535 << 7);
    s.timer = None;
    s.timer_expires_ms = 0;
    s.probes = Some(0);
    s.backoff = Some(0);
    s.unacked = Some(0);
    s
}

/// The receiving end of a watched flow, as the host owning `flow.local`
/// reads it; `None` when the tuple is not the socket of one of the
/// simulated connections (the host would report it absent: see
/// [`nat::b_lookup`] for what it adds).
pub fn b_watched(flow: FlowTuple, net: Net) -> Option<EndSample> {
    let (i, k, stuck) = nat::connection_of(flow, net)?;
    if nat::b_flow(i, k, stuck, net) != flow {
        return None;
    }
    // B has received all A sent: its rcv_nxt is A's snd_una.
    let rcv_nxt = stream_base(i, k);
    let (recvq, rcv_wnd) = if stuck {
        (PEER_FULL, 0)
    } else {
        (0, 65_535 << 7)
    };
    let pos = Positions {
        sendq: 0,
        recvq,
        notsent: Some(0),
        inflight: Some(0),
        snd_una: Some(7_000),
        snd_nxt: Some(7_000),
        write_seq: Some(7_000),
        rcv_nxt: Some(rcv_nxt),
        copied: Some(rcv_nxt - u64::from(recvq)),
        snd_wnd: Some(65_535 << 7),
        rcv_wnd: Some(rcv_wnd),
        snd_wscale: Some(7),
        rcv_wscale: Some(7),
    };
    let mut s = base_sample(flow, cookie(i, k, stuck, true), Opened::Passive, pos);
    if net.nat(k) == Nat::PortForward {
        nat::CONTAINER_NETNS.clone_into(&mut s.netns);
    }
    Some(s)
}

/// The span of a hold first seen at `first_seen` and found over at the
/// poll `now`: followed, so last found held a follow (an eighth of a poll)
/// before.
fn released(first_seen: Duration, now: Duration, interval: Duration) -> SampleReason {
    let last_held = now.saturating_sub(interval / 8).max(first_seen);
    SampleReason::Released(Some(HeldSpan {
        since: first_seen,
        last_held,
        ended: now,
        end: HeldEnd::Drained,
    }))
}

/// A churning queue.
#[derive(Debug, Clone)]
struct Churn {
    k: u32,
    first_seen: Duration,
    /// Polls it is still reported as a suspect.
    suspect_polls: u8,
    reported: bool,
}

#[derive(Debug, Clone)]
enum Slot {
    /// The next stall starts at this time.
    Waiting { start: Duration },
    Stuck {
        k: u32,
        first_seen: Duration,
        until: Duration,
        reported: bool,
    },
}

/// A stall the host began: when its queue stopped moving, and the poll
/// that first saw it, by this host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StallStart {
    pub flow: FlowTuple,
    pub start: Duration,
    pub first_seen: Duration,
    /// Where the connection is translated, and the host of its peer.
    pub nat: Nat,
    pub peer: u32,
}

/// What the host has to send after one poll.
#[derive(Debug, Clone, Default)]
pub struct Polled {
    pub samples: Vec<(SampleReason, EndSample)>,
    /// Watched flows it has no socket for.
    pub absent: Vec<FlowTuple>,
    /// What it knows of flows it has no socket for: the conntrack entries
    /// of absent watched flows it translates, and answers to Translate
    /// requests.
    pub lookups: Vec<Lookup>,
    pub stalls: Vec<StallStart>,
}

impl Polled {
    /// Nothing to send: a heartbeat will do.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.absent.is_empty() && self.lookups.is_empty()
    }
}

/// Shape of the load.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub net: Net,
    pub conns: u32,
    /// Suspects (churning) per poll, on average.
    pub suspects: f64,
    /// Stuck slots.
    pub stuck: u32,
    pub interval: Duration,
    pub stuck_for: Duration,
}

/// One simulated host.
#[derive(Debug)]
pub struct Host {
    pub index: u32,
    shape: Shape,
    rng: Rng,
    churn: Vec<Churn>,
    in_churn: HashSet<u32>,
    /// Fractional churning queues owed to the next poll.
    owed: f64,
    slots: Vec<Slot>,
    next_stuck_k: u32,
    watched: BTreeSet<FlowTuple>,
    /// Translate requests to answer at the next poll.
    translate: Vec<FlowTuple>,
    /// Whether the load is on; off, the host only heartbeats.
    pub loaded: bool,
}

impl Host {
    pub fn new(index: u32, shape: Shape, seed: u64) -> Host {
        let mut rng = Rng::new(seed ^ (u64::from(index) << 20));
        let next_stuck_k = rng.below(u64::from(shape.conns)) as u32;
        Host {
            index,
            shape,
            rng,
            churn: Vec::new(),
            in_churn: HashSet::new(),
            owed: 0.0,
            slots: Vec::new(),
            next_stuck_k,
            watched: BTreeSet::new(),
            translate: Vec::new(),
            loaded: false,
        }
    }

    /// Turns the load on at `now`: the first stall of each slot starts at a
    /// random time within `stuck_for`, so episodes open at an even rate.
    pub fn start_load(&mut self, now: Duration) {
        self.loaded = true;
        self.slots = (0..self.shape.stuck)
            .map(|_| Slot::Waiting {
                start: now + self.rng.within(self.shape.stuck_for),
            })
            .collect();
    }

    pub fn watch(&mut self, flow: FlowTuple) {
        self.watched.insert(flow);
    }

    pub fn unwatch(&mut self, flow: &FlowTuple) {
        self.watched.remove(flow);
    }

    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// A Translate request, answered at the next poll; `false` when it is
    /// dropped (more than [`MAX_TRANSLATE_ASKED`] wait).
    pub fn translate(&mut self, flow: FlowTuple) -> bool {
        if self.translate.len() >= MAX_TRANSLATE_ASKED {
            return false;
        }
        self.translate.push(flow);
        true
    }

    /// Connections the collector holds as suspects of this host now: sent
    /// as suspects and not yet released.
    pub fn suspects(&self) -> usize {
        self.churn.iter().filter(|c| c.reported).count()
            + self
                .slots
                .iter()
                .filter(|s| matches!(s, Slot::Stuck { reported: true, .. }))
                .count()
    }

    /// Stuck flows now.
    pub fn stuck(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Stuck { .. }))
            .count()
    }

    /// One poll at `now` (this host's monotonic clock).
    pub fn poll(&mut self, now: Duration) -> Polled {
        let mut out = Polled::default();
        let (i, net) = (self.index, self.shape.net);
        // Churning queues: reported, then released.
        let mut kept = Vec::with_capacity(self.churn.len());
        for mut c in std::mem::take(&mut self.churn) {
            if c.suspect_polls > 0 {
                c.suspect_polls -= 1;
                c.reported = true;
                let ms = millis(now.saturating_sub(c.first_seen));
                out.samples
                    .push((SampleReason::Suspect, a_queued(i, c.k, false, net, ms)));
                kept.push(c);
            } else {
                let why = released(c.first_seen, now, self.shape.interval);
                out.samples.push((why, a_released(i, c.k, false, net)));
                self.in_churn.remove(&c.k);
            }
        }
        self.churn = kept;
        if self.loaded {
            // New queues, first seen now: each is a suspect for 1 or 2
            // polls (1.5 on average), so `suspects` are reported per poll.
            self.owed += self.shape.suspects / 1.5;
            while self.owed >= 1.0 && self.in_churn.len() < self.shape.conns as usize {
                self.owed -= 1.0;
                let k = loop {
                    let k = self.rng.below(u64::from(self.shape.conns)) as u32;
                    if self.in_churn.insert(k) {
                        break k;
                    }
                };
                self.churn.push(Churn {
                    k,
                    first_seen: now,
                    suspect_polls: 1 + self.rng.below(2) as u8,
                    reported: false,
                });
            }
        }
        // Stuck flows.
        for slot in 0..self.slots.len() {
            match self.slots[slot].clone() {
                Slot::Waiting { start } if start <= now => {
                    // A new connection each time: a flow's 4-tuple is
                    // never reused during a run.
                    let k = self.next_stuck_k;
                    self.next_stuck_k = (k + 1) % self.shape.conns;
                    out.stalls.push(StallStart {
                        flow: a_flow(i, k, true, net),
                        start,
                        first_seen: now,
                        nat: net.nat(k),
                        peer: peer(i, k, net.hosts),
                    });
                    self.slots[slot] = Slot::Stuck {
                        k,
                        first_seen: now,
                        until: start + self.shape.stuck_for,
                        reported: false,
                    };
                }
                Slot::Waiting { .. } => {}
                Slot::Stuck {
                    k,
                    until,
                    first_seen,
                    ..
                } if now >= until => {
                    let why = released(first_seen, now, self.shape.interval);
                    out.samples.push((why, a_released(i, k, true, net)));
                    self.slots[slot] = Slot::Waiting {
                        start: now + self.rng.within(self.shape.interval),
                    };
                }
                Slot::Stuck {
                    k,
                    first_seen,
                    until,
                    ..
                } => {
                    let ms = millis(now.saturating_sub(first_seen));
                    out.samples
                        .push((SampleReason::Suspect, a_queued(i, k, true, net, ms)));
                    self.slots[slot] = Slot::Stuck {
                        k,
                        first_seen,
                        until,
                        reported: true,
                    };
                }
            }
        }
        // Watched flows: the receiving ends, or their absence with what
        // the host's conntrack says of them.
        for flow in &self.watched {
            match b_watched(*flow, net) {
                Some(s) => out.samples.push((SampleReason::Watched, s)),
                None => {
                    out.absent.push(*flow);
                    out.lookups.extend(nat::b_lookup(*flow, net));
                }
            }
        }
        out.lookups
            .extend(self.translate.drain(..).map(nat::translate_answer));
        out
    }
}

#[cfg(test)]
mod tests;
