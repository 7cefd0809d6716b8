//! The one task that owns the collector's state. The gRPC handlers only
//! pass it messages ([`Command`]) over a bounded channel; it joins both
//! ends of each suspect flow, runs the detector, asks agents to watch
//! peers, diagnoses, and hands writes to the store without waiting.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tcpstall_common::time::{millis, millis_i64};
use tcpstall_common::{
    AgentBatch, Clock, Diagnosis, EndReason, EndSample, FlowTuple, HeldSpan, HostHello, Packed,
    SampleReason, Side, ToAgent,
};
use tcpstall_proto::convert::{pack, unpack as decode};
use tokio::sync::{mpsc, oneshot};

use crate::detect::{Event, Restart, Step, Track};
use crate::diagnose::{diagnose, Evidence, Fact, Peer, Verdict};
use crate::held::{self, HeldStats, HeldTally};
use crate::slab_map::SlabMap;
use crate::store::{
    EpisodeEnd, EpisodeUpdate, HeldFilter, HeldRow, HostRecord, NewEpisode, Store, StoredSample,
};
use crate::tuple::Tuple;

/// Both ends of a flow as known now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowView {
    pub a: Option<(String, EndSample)>,
    pub b: Option<(String, EndSample)>,
}

/// Counters for logs and, later, metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub agents: usize,
    pub suspects: usize,
    /// Connections the episode detector follows: one track per suspect,
    /// kept in the same entry (the same count as `suspects`).
    pub tracks: usize,
    pub open_episodes: usize,
    pub samples: u64,
    pub episodes_opened: u64,
    pub store_dropped: u64,
    pub agent_dropped_batches: u64,
    /// Watch and unwatch requests dropped because the agent's outbound
    /// queue was full (a dropped watch is asked again).
    pub requests_dropped: u64,
    /// Peer ends watched now.
    pub watched: usize,
    /// Open episodes, by diagnosis (indexed as [`Diagnosis::ALL`]).
    pub open_by_diagnosis: [usize; Diagnosis::ALL.len()],
    /// Episodes opened since start, by the diagnosis they opened with.
    pub opened_by_diagnosis: [u64; Diagnosis::ALL.len()],
    /// Bytes of what the aggregator tracks: its tables (by capacity) and
    /// the samples and episodes they hold. An estimate, to tell its share
    /// of the process's memory from buffers and the allocator's.
    pub tracked_bytes: usize,
    /// Held spans the agents saw end, by how.
    pub held: HeldStats,
    /// The episode threshold now.
    pub threshold: Duration,
}

/// Messages to the aggregator.
#[derive(Debug)]
pub enum Command {
    Hello {
        session: u64,
        hello: HostHello,
        tx: mpsc::Sender<ToAgent>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Batch {
        session: u64,
        batch: AgentBatch,
    },
    Heartbeat {
        session: u64,
        dropped_batches: u64,
    },
    Gone {
        session: u64,
    },
    Flow {
        flow: FlowTuple,
        reply: oneshot::Sender<FlowView>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// The held-span counts not yet in the store (see
    /// [`State::held_pending`]).
    HeldPending {
        filter: HeldFilter,
        reply: oneshot::Sender<Vec<HeldRow>>,
    },
    /// Settings of a reloaded config that apply from now on.
    Reload {
        threshold: Duration,
        watch_peer_after: Option<Duration>,
        max_agents: usize,
        max_samples: usize,
    },
}

/// A host's number in this collector's memory: given at its first hello
/// and kept for the collector's life, so that every per-connection key is
/// 16 bytes to hash and copy rather than a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(u32);

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Host names and their numbers. Grows by one entry per distinct host name
/// ever greeted (bounded in practice by the fleet, and by the hosts a CA
/// vouches for once streams are authenticated).
#[derive(Debug, Default)]
struct Hosts {
    names: Vec<Arc<str>>,
    ids: Map<Arc<str>, HostId>,
}

impl Hosts {
    fn id(&mut self, name: &str) -> HostId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = HostId(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: HostId) -> Arc<str> {
        self.names
            .get(id.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }
}

#[derive(Debug)]
struct Session {
    id: u64,
    hello: HostHello,
    tx: mpsc::Sender<ToAgent>,
    dropped_batches: u64,
    /// The least (arrival − agent clock) of its batches, milliseconds: the
    /// offset that puts the agent's clock on the collector's, plus the
    /// quickest delivery seen (see [`Session::taken_ms`]).
    offset_ms: Option<i64>,
}

impl Session {
    /// When the agent took a poll stamped `mono` that arrived at `now_ms`,
    /// on the collector's clock: the agent's clock plus the least offset
    /// any of its batches showed, so never later than the arrival. Only
    /// this agent's clock differences are used; no two hosts' wall clocks
    /// meet.
    fn taken_ms(&mut self, mono: Duration, now_ms: i64) -> i64 {
        let mono_ms = i64::try_from(mono.as_millis()).unwrap_or(i64::MAX);
        let offset = now_ms.saturating_sub(mono_ms);
        let least = self.offset_ms.map_or(offset, |o| o.min(offset));
        self.offset_ms = Some(least);
        mono_ms.saturating_add(least)
    }
}

/// What we know of a watched end.
#[derive(Debug)]
enum PeerEnd {
    /// Asked for, nothing heard yet.
    Pending,
    /// Its latest report.
    Seen { at_ms: i64, sample: Packed },
    /// Its agent says it has no such socket (or it closed), first said at
    /// collector time `gone_ms`; the last report from before, if any.
    NoSocket {
        gone_ms: i64,
        last: Option<(i64, Packed)>,
    },
}

impl PeerEnd {
    /// The end reported gone at `now_ms`: the first time is kept, and the
    /// last report from before.
    fn gone(self, now_ms: i64) -> PeerEnd {
        match self {
            PeerEnd::Seen { at_ms, sample } => PeerEnd::NoSocket {
                gone_ms: now_ms,
                last: Some((at_ms, sample)),
            },
            gone @ PeerEnd::NoSocket { .. } => gone,
            PeerEnd::Pending => PeerEnd::NoSocket {
                gone_ms: now_ms,
                last: None,
            },
        }
    }
}

/// A flow some host was asked to watch.
#[derive(Debug)]
struct Watch {
    /// How many suspects (and queries) need it.
    refs: u32,
    end: PeerEnd,
    /// The host of the suspect with an open episode this is the peer of
    /// (its 4-tuple is this one reversed): a peer's report finds its
    /// episode at once.
    episode_of: Option<HostId>,
    /// When the request was queued for the agent; `None` if it was dropped.
    asked_at_ms: Option<i64>,
}

/// A connection whose queue looks stuck, with what we know of its peer.
/// Kept beside the connection's track in one entry of the table (keyed by
/// its host and 4-tuple, the cookie in the track): one lookup per sample
/// finds both.
#[derive(Debug, Default)]
struct Suspect {
    /// The host owning the peer's address; `None` when nobody announced it.
    peer: Option<HostId>,
    /// Whether that host has been asked to watch the peer (see
    /// [`ask_peer_after`]).
    asked: bool,
    latest: Packed,
    latest_at_ms: i64,
    /// The stall's first sample, once a later one replaced it as `latest`.
    first: Option<Packed>,
    first_at_ms: i64,
    episode: Option<Box<OpenEpisode>>,
}

#[derive(Debug)]
struct OpenEpisode {
    id: i64,
    /// The latest verdict.
    verdict: Verdict,
    /// Whether its counters (probes, backoff, retransmissions) moved since
    /// the episode's row was written: written when it ends.
    unstored: bool,
    stored_a: usize,
    stored_b: usize,
    /// When the A and B samples stored last were taken.
    last_a_ms: i64,
    last_b_ms: i64,
}

/// A batch's clocks, for each of its samples.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    /// The agent's clock at the poll.
    mono: Duration,
    /// The collector's wall clock at the batch.
    now_ms: i64,
    /// The poll on the collector's clock ([`Session::taken_ms`]).
    taken_ms: i64,
    /// See [`ask_peer_after`].
    ask_after: Duration,
}

/// The peer of a suspect as known now, owned (samples are kept packed).
#[allow(clippy::large_enum_variant)] // short-lived, on the stack
enum PeerNow {
    Seen(EndSample),
    NoSocket(Arc<str>),
    Pending(Arc<str>),
    Unmonitored,
}

impl PeerNow {
    fn as_peer(&self) -> Peer<'_> {
        match self {
            PeerNow::Seen(s) => Peer::Seen(s),
            PeerNow::NoSocket(h) => Peer::NoSocket { host: h },
            PeerNow::Pending(h) => Peer::Pending { host: h },
            PeerNow::Unmonitored => Peer::Unmonitored,
        }
    }
}

/// A connection end the collector follows: the detector's track of it and
/// what is kept of the suspect, one entry of one table (keyed by its host
/// and 4-tuple; the socket's cookie is in the track).
#[derive(Debug)]
struct Entry {
    track: Track,
    suspect: Suspect,
}

/// The collector's state; all methods run on the aggregator task.
#[derive(Debug)]
pub struct State {
    /// Every suspect connection end.
    table: SlabMap<(HostId, Tuple), Entry>,
    threshold: Duration,
    ctx: Ctx,
}

/// Everything but the table: what handling a suspect needs beside its
/// entry, which its methods take as an argument.
#[derive(Debug)]
struct Ctx {
    store: Arc<dyn Store>,
    max_agents: usize,
    max_samples: usize,
    /// See [`State::watch_peer_after`]; `None`: [`ask_peer_after`].
    watch_peer_after: Option<Duration>,
    hosts: Hosts,
    sessions: Map<HostId, Session>,
    /// Session id -> host, for the commands that name a session.
    session_hosts: Map<u64, HostId>,
    /// Non-loopback address -> host that announced it.
    owners: Map<IpAddr, HostId>,
    /// (host, flow as that host sees it) -> what it reports of it.
    watched: SlabMap<(HostId, Tuple), Watch>,
    open_episodes: usize,
    next_episode: i64,
    stats: Stats,
    /// Every held span reported ended, counted (a minute's counts go to
    /// the store when it is over).
    held: HeldTally<HostId>,
}

/// How long a suspect's queue must have been held before its peer's agent
/// is asked to watch the other end, for a suspect whose agent polls every
/// `interval`: late enough that the many queues held for a poll or two
/// cost no request, no peer report and no unwatch, and early enough for
/// the peer's report to be there when the episode opens. The ask comes
/// with a report 2.5 to 1.5 polls before the threshold (2 at the defaults,
/// where reports fall on whole polls); the peer's first report needs the
/// request's gathering (a quarter of a poll) and the next of its polls,
/// which leaves a quarter of a poll or more to spare. A request the
/// collector had to drop is asked again at the next report; if the peer's
/// answer then comes after the threshold, the episode opens `undetermined`
/// ("waiting for ...") and is diagnosed again when it comes. At the
/// defaults (10 s, 2 s) that is 5 s: the suspect's third report (held
/// 6 s). It was 3.5 polls (the second report) until the 1,000-agent
/// benchmark showed what the second reports' requests cost (BENCHMARKS.md).
pub fn ask_peer_after(threshold: Duration, interval: Duration) -> Duration {
    threshold.saturating_sub(interval * 5 / 2)
}

/// The sample's encoding: the one at hand, or a new one.
fn take(slot: &mut Option<Packed>, s: &EndSample) -> Packed {
    slot.take().unwrap_or_else(|| pack(s))
}

/// A's sample: the one at hand, else the suspect's latest, unpacked.
fn a_sample<'a>(at_hand: Option<&'a EndSample>, s: &Suspect) -> Option<Cow<'a, EndSample>> {
    match at_hand {
        Some(a) => Some(Cow::Borrowed(a)),
        None => unpack(&s.latest).map(Cow::Owned),
    }
}

fn unpack(p: &Packed) -> Option<EndSample> {
    let s = decode(p);
    if s.is_none() {
        tracing::error!(
            bytes = p.len(),
            "a kept sample no longer decodes (a bug); skipped"
        );
    }
    s
}

impl State {
    pub fn new(
        store: Arc<dyn Store>,
        threshold: Duration,
        next_episode: i64,
        max_agents: usize,
        max_samples: usize,
    ) -> State {
        State {
            table: SlabMap::new(),
            threshold,
            ctx: Ctx {
                store,
                max_agents,
                max_samples,
                watch_peer_after: None,
                hosts: Hosts::default(),
                sessions: Map::default(),
                session_hosts: Map::default(),
                owners: Map::default(),
                watched: SlabMap::new(),
                open_episodes: 0,
                next_episode,
                stats: Stats::default(),
                held: HeldTally::default(),
            },
        }
    }

    /// Asks for a suspect's peer once its queue has been held for `after`
    /// (zero: at its first report); `None`, the default: at
    /// [`ask_peer_after`] for its agent's interval.
    pub fn watch_peer_after(mut self, after: Option<Duration>) -> State {
        self.ctx.watch_peer_after = after;
        self
    }

    /// Handles one command at collector wall time `now_ms`.
    pub fn handle(&mut self, cmd: Command, now_ms: i64) {
        match cmd {
            Command::Hello {
                session,
                hello,
                tx,
                reply,
            } => {
                let res = self.hello(session, hello, tx, now_ms);
                let _ = reply.send(res);
            }
            Command::Batch { session, batch } => {
                if let Some(host) = self.ctx.session_hosts.get(&session).copied() {
                    self.batch(host, batch, now_ms);
                }
            }
            Command::Heartbeat {
                session,
                dropped_batches,
            } => {
                if let Some(s) = self
                    .ctx
                    .session_hosts
                    .get(&session)
                    .and_then(|h| self.ctx.sessions.get_mut(h))
                {
                    s.dropped_batches = dropped_batches;
                }
            }
            Command::Gone { session } => {
                if let Some(host) = self.ctx.session_hosts.get(&session).copied() {
                    self.gone(host, now_ms);
                }
            }
            Command::Flow { flow, reply } => {
                let _ = reply.send(self.flow(flow, now_ms));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::HeldPending { filter, reply } => {
                let _ = reply.send(self.held_pending(&filter));
            }
            Command::Reload {
                threshold,
                watch_peer_after,
                max_agents,
                max_samples,
            } => {
                self.threshold = threshold;
                self.ctx.watch_peer_after = watch_peer_after;
                self.ctx.max_agents = max_agents;
                self.ctx.max_samples = max_samples;
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let ctx = &self.ctx;
        Stats {
            tracked_bytes: self.tracked_bytes(),
            agents: ctx.sessions.len(),
            suspects: self.table.len(),
            tracks: self.table.len(),
            watched: ctx.watched.len(),
            open_episodes: ctx.open_episodes,
            agent_dropped_batches: ctx.sessions.values().map(|s| s.dropped_batches).sum(),
            store_dropped: ctx.store.stats().dropped,
            held: ctx.held.stats(),
            threshold: self.threshold,
            ..ctx.stats
        }
    }

    /// See [`Stats::tracked_bytes`]. A walk over everything tracked: for a
    /// scrape, not for every batch.
    fn tracked_bytes(&self) -> usize {
        let suspects: usize = self
            .table
            .values()
            .map(|e| &e.suspect)
            .map(|s| {
                s.latest.len()
                    + s.first.as_ref().map_or(0, Packed::len)
                    + s.episode.as_ref().map_or(0, |_| size_of::<OpenEpisode>())
            })
            .sum();
        let watched: usize = self
            .ctx
            .watched
            .values()
            .map(|w| match &w.end {
                PeerEnd::Seen { sample, .. } => sample.len(),
                _ => 0,
            })
            .sum();
        self.ctx.watched.bytes() + self.table.bytes() + suspects + watched
    }

    fn hello(
        &mut self,
        session: u64,
        hello: HostHello,
        tx: mpsc::Sender<ToAgent>,
        now_ms: i64,
    ) -> Result<(), String> {
        let host = self.ctx.hosts.id(&hello.host);
        if let Some(old) = self.ctx.sessions.get(&host) {
            tracing::warn!(host = %hello.host, old = old.id, new = session, "host reconnected; its previous stream is replaced");
            self.gone(host, now_ms);
        } else if self.ctx.sessions.len() >= self.ctx.max_agents {
            return Err(format!(
                "collector is full: {} agents connected",
                self.ctx.max_agents
            ));
        }
        for ip in &hello.addresses {
            if !ip.is_loopback() && !ip.is_unspecified() {
                self.ctx.owners.insert(*ip, host);
            }
        }
        self.ctx.store.host_seen(HostRecord {
            host: hello.host.clone(),
            kernel: hello.kernel.clone(),
            agent_version: hello.agent_version.clone(),
            boot_id: hello.boot_id.clone(),
            at_ms: now_ms,
        });
        tracing::info!(host = %hello.host, kernel = %hello.kernel, addresses = hello.addresses.len(), "agent connected");
        self.ctx.session_hosts.insert(session, host);
        self.ctx.sessions.insert(
            host,
            Session {
                id: session,
                hello,
                tx,
                dropped_batches: 0,
                offset_ms: None,
            },
        );
        // Flows it was asked to watch before it went away.
        let ctx = &mut self.ctx;
        for ((h, flow), w) in ctx.watched.iter_mut() {
            if *h == host {
                ask(&ctx.sessions, &mut ctx.stats, host, *flow, w, now_ms);
            }
        }
        Ok(())
    }

    fn gone(&mut self, host: HostId, now_ms: i64) {
        let ctx = &mut self.ctx;
        let Some(session) = ctx.sessions.remove(&host) else {
            return;
        };
        let name = ctx.hosts.name(host);
        tracing::info!(host = %name, session = session.id, "agent gone");
        ctx.session_hosts.remove(&session.id);
        ctx.owners.retain(|_, h| *h != host);
        ctx.store.host_gone(&name, now_ms);
        // Its suspects end with their episodes, and with them the watches
        // they had asked of other hosts.
        let keys: Vec<(HostId, Tuple)> = self
            .table
            .keys()
            .filter(|(h, _)| *h == host)
            .copied()
            .collect();
        for key in keys {
            let Some(mut e) = self.table.remove(&key) else {
                continue;
            };
            let flow = key.1;
            if let Some(closed) = e.track.end(EndReason::HostGone, e.track.last()) {
                ctx.apply(closed, host, flow, &mut e.suspect, now_ms, None);
            }
            ctx.let_peer_go(&e.suspect, flow);
        }
        // What it was watching is no longer seen; the suspects that need it
        // keep their claim and hear "pending" until it comes back and is
        // asked again (`hello`).
        for ((h, _), w) in ctx.watched.iter_mut() {
            if *h == host {
                w.end = PeerEnd::Pending;
            }
        }
    }

    /// A watched end reported (or was reported gone): keep it, and bring
    /// the episode it is the peer of up to date. `end` makes the new state
    /// from the old, and only if the flow is watched (most samples are not
    /// of a watched end).
    fn peer_report(&mut self, host: HostId, flow: Tuple, end: impl FnOnce(PeerEnd) -> PeerEnd) {
        let Some(w) = self.ctx.watched.get_mut(&(host, flow)) else {
            return;
        };
        w.end = end(std::mem::replace(&mut w.end, PeerEnd::Pending));
        let Some(owner) = w.episode_of else { return };
        let a_flow = flow.reversed();
        if let Some(e) = self.table.get_mut(&(owner, a_flow)) {
            self.ctx.rediagnose(a_flow, &mut e.suspect, None);
            self.ctx.record(owner, a_flow, &mut e.suspect, false);
        }
    }

    /// A sample the agent sent as a suspect: one step of its track, which
    /// the table keeps beside the suspect.
    fn observe(
        &mut self,
        host: HostId,
        tuple: Tuple,
        reason: SampleReason,
        sample: &EndSample,
        mut packed: Option<Packed>,
        at: Clocks,
    ) {
        let Clocks {
            mono,
            now_ms,
            taken_ms,
            ask_after,
        } = at;
        if matches!(reason, SampleReason::Released(_)) || sample.pos.sendq == 0 {
            self.last_word(host, tuple, sample, packed, mono, now_ms, taken_ms);
            return;
        }
        let ctx = &mut self.ctx;
        let (e, inserted) = self.table.get_or_insert_with((host, tuple), || Entry {
            track: Track::new(sample, mono),
            suspect: Suspect::default(),
        });
        let Step {
            restart,
            opened,
            held,
        } = e.track.step(sample, mono, self.threshold);
        // Another socket had the 4-tuple: its suspect ends here, and this
        // one starts afresh.
        let mut replaced = match restart {
            Some(Restart {
                reason: EndReason::Replaced,
                ..
            }) => Some(std::mem::take(&mut e.suspect)),
            _ => None,
        };
        let closed = restart.and_then(|r| r.closed);
        let changed = closed.is_some() || opened.is_some();
        // An episode opening (held for the threshold) is past it too.
        let ask = held >= ask_after || changed;
        let s = &mut e.suspect;
        // Whether it has an open episode, as long as no event changed that;
        // and the peer to ask to watch it (true) or to ask again (false).
        let (mut open, mut request) = (false, None);
        if inserted || replaced.is_some() {
            let peer = owner(&ctx.owners, host, sample.flow.remote.ip());
            let asked = ask && peer.is_some();
            *s = Suspect {
                peer,
                asked,
                latest: take(&mut packed, sample),
                latest_at_ms: taken_ms,
                first: None,
                first_at_ms: taken_ms,
                episode: None,
            };
            request = peer.filter(|_| asked).map(|p| (p, true));
        } else {
            open = s.episode.is_some();
            let prev = std::mem::replace(&mut s.latest, take(&mut packed, sample));
            if restart.is_some() {
                // The queue moved: a new stall starts at this sample.
                s.first = None;
                s.first_at_ms = taken_ms;
            } else if s.first.is_none() {
                s.first = Some(prev);
            }
            s.latest_at_ms = taken_ms;
            if let Some(peer) = s.peer {
                if s.asked {
                    request = Some((peer, false));
                } else if ask {
                    s.asked = true;
                    request = Some((peer, true));
                }
            }
        }
        match request {
            Some((peer, true)) => ctx.watch(peer, tuple.reversed(), now_ms),
            Some((peer, false)) => ctx.ask_again(peer, tuple.reversed(), now_ms),
            None => {}
        }
        // The old stall's end first (of the socket it was), then this one's
        // opening.
        if let Some(closed) = closed {
            let of = replaced.as_mut().unwrap_or(s);
            ctx.apply(closed, host, tuple, of, now_ms, Some(sample));
        }
        if let Some(opened) = opened {
            ctx.apply(opened, host, tuple, s, now_ms, Some(sample));
        }
        if let Some(old) = replaced {
            ctx.let_peer_go(&old, tuple);
        }
        if (open || changed) && s.episode.is_some() {
            ctx.rediagnose(tuple, s, Some(sample));
            ctx.record(host, tuple, s, true);
        }
    }

    /// The agent's last word on a connection (its release, or a drained
    /// queue): its track ends in the same step, and an open episode ends
    /// with this sample as its last. Most last words are of suspects that
    /// never became episodes (a third of all samples in a busy fleet): one
    /// lookup.
    #[allow(clippy::too_many_arguments)]
    fn last_word(
        &mut self,
        host: HostId,
        tuple: Tuple,
        sample: &EndSample,
        mut packed: Option<Packed>,
        mono: Duration,
        now_ms: i64,
        taken_ms: i64,
    ) {
        // Nothing tracked: no suspect of it was heard, so nothing to end.
        let Some(mut e) = self.table.remove(&(host, tuple)) else {
            return;
        };
        let ctx = &mut self.ctx;
        let own = e.track.cookie() == sample.cookie;
        // A last word is kept only as an episode's closing sample.
        if own && e.suspect.episode.is_some() {
            e.suspect.latest = take(&mut packed, sample);
            e.suspect.latest_at_ms = taken_ms;
        }
        let s = &mut e.suspect;
        if sample.pos.sendq == 0 {
            // Drained: its stall ends (or, of another socket, was replaced).
            let reason = if own {
                EndReason::Drained
            } else {
                EndReason::Replaced
            };
            if let Some(closed) = e.track.end(reason, mono) {
                ctx.apply(closed, host, tuple, s, now_ms, Some(sample));
            }
        } else if own {
            // Its last step (a move closes the stall before it), then its end.
            let step = e.track.step(sample, mono, self.threshold);
            let closing = e.track.end(EndReason::Closed, mono);
            for event in [step.restart.and_then(|r| r.closed), step.opened, closing]
                .into_iter()
                .flatten()
            {
                ctx.apply(event, host, tuple, s, now_ms, Some(sample));
            }
        } else if let Some(closed) = e.track.end(EndReason::Replaced, mono) {
            // Another socket's last word: the tracked one was replaced; the
            // new one was never a suspect here, so nothing of it is kept.
            ctx.apply(closed, host, tuple, s, now_ms, Some(sample));
        }
        ctx.let_peer_go(s, tuple);
    }

    /// The end of a hold its agent measured (`span`), with the sample that
    /// found it over when there is one (a released socket; none for a
    /// socket gone): the suspect's track ends, and with it its episode, or
    /// an episode opens and ends at once for a hold that reached the
    /// threshold between polls. Either way the verdict is the one made
    /// from the samples taken while the queue was held: the sample after
    /// the end is stored as the episode's last, never diagnosed. Every
    /// span is counted, episode or not.
    fn held_end(
        &mut self,
        host: HostId,
        tuple: Tuple,
        cookie: u64,
        after: Option<(&EndSample, Option<Packed>)>,
        span: &HeldSpan,
        at: Clocks,
    ) {
        let ctx = &mut self.ctx;
        let entry = self
            .table
            .remove_if(&(host, tuple), |e| e.track.cookie() == cookie);
        let [opened, closed] = entry
            .as_ref()
            .map_or([None, None], |e| e.track.held_end(span, self.threshold));
        let episode = closed.is_some();
        // When the hold ended, on the collector's clock.
        let since_end = at.mono.saturating_sub(span.end_at());
        let end_ms = at.taken_ms.saturating_sub(millis_i64(since_end));
        let peer = match &entry {
            Some(e) => e.suspect.peer,
            None => owner(&ctx.owners, host, tuple.flow().remote.ip()),
        };
        tracing::debug!(
            host = %ctx.hosts.name(host),
            flow = %tuple.flow(),
            cookie,
            end = %span.end,
            held_ms = millis(span.held()),
            episode,
            tracked = entry.is_some(),
            "hold ended"
        );
        ctx.held
            .add(end_ms, host, peer, span.end, span.held(), episode);
        let Some(mut e) = entry else { return };
        let s = &mut e.suspect;
        if let Some(opened) = opened {
            // `a` None: the suspect's latest sample, the last held one.
            ctx.apply(opened, host, tuple, s, end_ms, None);
            ctx.record(host, tuple, s, true);
        }
        if let (Some((sample, mut packed)), true) = (after, s.episode.is_some()) {
            s.latest = take(&mut packed, sample);
            s.latest_at_ms = at.taken_ms;
        }
        if let Some(closed) = closed {
            ctx.apply(closed, host, tuple, s, end_ms, None);
        }
        ctx.let_peer_go(s, tuple);
    }

    /// The socket `cookie` on `flow` went, as its agent said or by its
    /// silence: its episode ends, and its peer is let go.
    fn close(&mut self, host: HostId, flow: Tuple, cookie: u64, mono: Duration, now_ms: i64) {
        let Some(mut e) = self
            .table
            .remove_if(&(host, flow), |e| e.track.cookie() == cookie)
        else {
            return;
        };
        if let Some(closed) = e.track.end(EndReason::Closed, mono) {
            self.ctx
                .apply(closed, host, flow, &mut e.suspect, now_ms, None);
        }
        self.ctx.let_peer_go(&e.suspect, flow);
    }

    /// Ends what agents stopped reporting without a word (a lost message):
    /// suspects silent for `polls` of their agent's polls.
    pub fn expire(&mut self, now_ms: i64, polls: u32) {
        let silence: Map<HostId, i64> = self
            .ctx
            .sessions
            .iter()
            .map(|(h, s)| (*h, millis_i64(s.hello.interval * polls)))
            .collect();
        let default = millis_i64(Duration::from_secs(2) * polls);
        let stale: Vec<(HostId, Tuple, u64, Duration)> = self
            .table
            .iter()
            .filter(|((h, _), e)| {
                now_ms - e.suspect.latest_at_ms > silence.get(h).copied().unwrap_or(default)
            })
            .map(|((h, flow), e)| (*h, *flow, e.track.cookie(), e.track.last()))
            .collect();
        for (host, flow, cookie, mono) in stale {
            tracing::debug!(host = %self.ctx.hosts.name(host), cookie, "suspect went silent");
            self.close(host, flow, cookie, mono, now_ms);
        }
        self.store_held(now_ms, false);
    }

    /// Handles one batch from `host` at collector wall time `now_ms`.
    pub fn batch(&mut self, host: HostId, batch: AgentBatch, now_ms: i64) {
        let mut interval = Duration::from_secs(2);
        let mut taken_ms = now_ms;
        if let Some(s) = self.ctx.sessions.get_mut(&host) {
            s.dropped_batches = batch.dropped_batches;
            interval = s.hello.interval;
            taken_ms = s.taken_ms(batch.mono, now_ms);
        }
        let ask_after = self
            .ctx
            .watch_peer_after
            .unwrap_or_else(|| ask_peer_after(self.threshold, interval));
        let at = Clocks {
            mono: batch.mono,
            now_ms,
            taken_ms,
            ask_after,
        };
        self.ctx.stats.samples += batch.samples.len() as u64;
        for flow in batch.absent {
            self.peer_report(host, Tuple::new(flow), |old| old.gone(taken_ms));
        }
        let exact = batch.packed.len() == batch.samples.len();
        let mut packed = batch.packed.into_iter();
        // By reference: a sample is a few hundred bytes, not worth moving.
        for &(reason, ref sample) in &batch.samples {
            let mut slot = if exact { packed.next().flatten() } else { None };
            let tuple = Tuple::new(sample.flow);
            self.peer_report(host, tuple, |_| PeerEnd::Seen {
                at_ms: taken_ms,
                sample: if reason == SampleReason::Watched {
                    take(&mut slot, sample)
                } else {
                    slot.clone().unwrap_or_else(|| pack(sample))
                },
            });
            match reason {
                SampleReason::Watched => {}
                SampleReason::Released(Some(span)) => {
                    let ended = Some((sample, slot));
                    self.held_end(host, tuple, sample.cookie, ended, &span, at);
                }
                _ => self.observe(host, tuple, reason, sample, slot, at),
            }
        }
        for closed in batch.closed {
            let flow = Tuple::new(closed.flow);
            self.peer_report(host, flow, |old| old.gone(taken_ms));
            match closed.held {
                Some(span) => self.held_end(host, flow, closed.cookie, None, &span, at),
                None => self.close(host, flow, closed.cookie, batch.mono, now_ms),
            }
        }
    }

    /// Hands the held-span counts of every minute that is over (all of
    /// them when `all`, at shutdown) to the store, which adds them to what
    /// it holds for the same minute, pair, end and bucket.
    pub fn store_held(&mut self, now_ms: i64, all: bool) {
        let done = self.ctx.held.take_done(now_ms, all);
        if done.is_empty() {
            return;
        }
        let rows = done.iter().map(|(k, c)| self.ctx.held_row(k, c)).collect();
        self.ctx.store.add_held(rows);
    }

    /// The held-span counts not yet in the store that a query over
    /// `filter` would find there: the minute in progress.
    pub fn held_pending(&self, filter: &HeldFilter) -> Vec<HeldRow> {
        self.ctx
            .held
            .pending()
            .filter(|(k, _)| filter.since_ms.is_none_or(|since| k.minute_ms >= since))
            .map(|(k, c)| self.ctx.held_row(k, c))
            .filter(|r| {
                filter
                    .host
                    .as_ref()
                    .is_none_or(|h| r.a_host == *h || r.b_host == *h)
            })
            .collect()
    }

    /// Both ends of `flow` as known now; asks the owners to watch it.
    pub fn flow(&mut self, flow: FlowTuple, now_ms: i64) -> FlowView {
        let mut view = FlowView::default();
        for (slot, tuple) in [(0, flow), (1, flow.reversed())] {
            let known = self
                .find_end(tuple)
                .and_then(|(h, p)| Some((h, unpack(p)?)));
            let host = known
                .as_ref()
                .map(|(h, _)| *h)
                .or_else(|| self.ctx.owners.get(&tuple.local.ip()).copied());
            if let Some(host) = host {
                let key = Tuple::new(tuple);
                if !self.ctx.watched.contains_key(&(host, key)) {
                    self.ctx.watch(host, key, now_ms);
                }
            }
            let known = known.map(|(h, s)| (self.ctx.hosts.name(h).to_string(), s));
            if slot == 0 {
                view.a = known;
            } else {
                view.b = known;
            }
        }
        view
    }

    /// The latest sample of the end whose own side is `tuple.local`: looked
    /// up at the host that announced that address (as watches are asked of
    /// it), else (loopback, an address nobody announced) found by a scan of
    /// everything tracked. Queries come at any rate; the scan is for the
    /// cases the index cannot serve.
    fn find_end(&self, tuple: FlowTuple) -> Option<(HostId, &Packed)> {
        fn seen(w: &Watch) -> Option<&Packed> {
            match &w.end {
                PeerEnd::Seen { sample, .. } => Some(sample),
                _ => None,
            }
        }
        let key = Tuple::new(tuple);
        if let Some(&host) = self.ctx.owners.get(&tuple.local.ip()) {
            let watched = self.ctx.watched.get(&(host, key)).and_then(seen);
            let suspect = || self.table.get(&(host, key)).map(|e| &e.suspect.latest);
            return watched.or_else(suspect).map(|p| (host, p));
        }
        self.ctx
            .watched
            .iter()
            .find_map(|((h, t), w)| (*t == key).then(|| seen(w).map(|p| (*h, p))).flatten())
            .or_else(|| {
                self.table
                    .iter()
                    .find(|((_, t), _)| *t == key)
                    .map(|((h, _), e)| (*h, &e.suspect.latest))
            })
    }
}

impl Ctx {
    /// Queues a request to `host`'s agent; false if it could not be.
    fn send(&mut self, host: HostId, msg: ToAgent) -> bool {
        queue(&self.sessions, &mut self.stats, host, msg)
    }

    /// Asks again for a watched end that has not answered in two of its
    /// agent's polls (the request may have been dropped, or its agent
    /// reconnected).
    fn ask_again(&mut self, host: HostId, flow: Tuple, now_ms: i64) {
        // Every suspect sample comes here: most peers have answered, so
        // look at the watch before working out the agent's patience.
        let w = match self.watched.get_mut(&(host, flow)) {
            Some(w) if matches!(w.end, PeerEnd::Pending) => w,
            _ => return,
        };
        let patience = self
            .sessions
            .get(&host)
            .map_or(i64::MAX, |s| millis_i64(s.hello.interval * 2));
        if w.asked_at_ms.is_none_or(|t| now_ms - t > patience) {
            ask(&self.sessions, &mut self.stats, host, flow, w, now_ms);
        }
    }

    fn watch(&mut self, host: HostId, flow: Tuple, now_ms: i64) {
        let w = self.watched.get_or_insert(
            (host, flow),
            Watch {
                refs: 0,
                end: PeerEnd::Pending,
                episode_of: None,
                asked_at_ms: None,
            },
        );
        w.refs += 1;
        if w.refs == 1 {
            ask(&self.sessions, &mut self.stats, host, flow, w, now_ms);
        }
    }

    fn unwatch(&mut self, host: HostId, flow: Tuple) {
        let unneeded = self.watched.remove_if(&(host, flow), |w| {
            w.refs = w.refs.saturating_sub(1);
            w.refs == 0
        });
        if unneeded.is_some() {
            self.send(host, ToAgent::Unwatch(flow.flow()));
        }
    }

    fn held_row(&self, k: &held::Key<HostId>, c: &held::Count) -> HeldRow {
        HeldRow {
            minute_ms: k.minute_ms,
            a_host: self.hosts.name(k.a).to_string(),
            b_host: k
                .b
                .map(|b| self.hosts.name(b).to_string())
                .unwrap_or_default(),
            end: k.end,
            le_ms: held::le_ms(usize::from(k.bucket)),
            count: c.count,
            episodes: c.episodes,
            total_ms: c.total_ms,
            max_ms: c.max_ms,
        }
    }

    /// A suspect that ended (on `flow`) no longer needs its peer's end.
    fn let_peer_go(&mut self, s: &Suspect, flow: Tuple) {
        if let (Some(peer), true) = (s.peer, s.asked) {
            self.unwatch(peer, flow.reversed());
        }
    }

    fn peer_of(&self, s: &Suspect, flow: Tuple) -> PeerNow {
        let Some(peer) = s.peer else {
            return PeerNow::Unmonitored;
        };
        let seen = |sample: &Packed| match unpack(sample) {
            Some(b) => PeerNow::Seen(b),
            None => PeerNow::Pending(self.hosts.name(peer)),
        };
        match self.watched.get(&(peer, flow.reversed())).map(|w| &w.end) {
            Some(PeerEnd::Seen { sample, .. }) => seen(sample),
            // B's socket gone proves B lost the connection only once A is
            // seen still stuck after it: when both ends close (A's own
            // agent may tell of A a moment after B's tells of B), B's
            // going says nothing about the hold. Until then, B as it was.
            Some(PeerEnd::NoSocket { gone_ms, last }) => {
                if s.latest_at_ms > *gone_ms {
                    PeerNow::NoSocket(self.hosts.name(peer))
                } else if let Some((_, sample)) = last {
                    seen(sample)
                } else {
                    PeerNow::Pending(self.hosts.name(peer))
                }
            }
            Some(PeerEnd::Pending) | None => PeerNow::Pending(self.hosts.name(peer)),
        }
    }

    /// Re-diagnoses the open episode of suspect `s` (on `flow`) from A's
    /// latest sample (`a` when the caller has it at hand) and its peer as
    /// known now; stores a change.
    fn rediagnose(&mut self, flow: Tuple, s: &mut Suspect, a: Option<&EndSample>) {
        if s.episode.is_none() {
            return;
        }
        let Some(a) = a_sample(a, s) else { return };
        let a = a.as_ref();
        let peer = self.peer_of(s, flow);
        let verdict = diagnose(a, peer.as_peer());
        let Some(ep) = s.episode.as_mut() else {
            return;
        };
        // Most polls of a held queue find what the last one did, a little
        // later, its counters perhaps higher: nothing to store until it
        // ends (its duration is read from its start).
        if ep.verdict.same_finding(&verdict) {
            ep.unstored |= !ep.verdict.same_numbers(&verdict);
            ep.verdict = verdict;
            return;
        }
        if ep.verdict.diagnosis != verdict.diagnosis {
            tracing::info!(episode = ep.id, from = %ep.verdict.diagnosis, to = %verdict.diagnosis, "diagnosis changed");
            let open = &mut self.stats.open_by_diagnosis[ep.verdict.diagnosis.index()];
            *open = open.saturating_sub(1);
            self.stats.open_by_diagnosis[verdict.diagnosis.index()] += 1;
        }
        let update =
            self.episode_update(ep.id, &verdict, s.peer, &peer, a.unchanged_ms, a.pos.sendq);
        self.store.update_episode(update);
        ep.verdict = verdict;
        ep.unstored = false;
    }

    /// The row of episode `id` as `verdict` finds it, B on `peer_host`.
    fn episode_update(
        &self,
        id: i64,
        verdict: &Verdict,
        peer_host: Option<HostId>,
        peer: &PeerNow,
        duration_ms: u64,
        stuck_bytes: u32,
    ) -> EpisodeUpdate {
        EpisodeUpdate {
            id,
            diagnosis: verdict.diagnosis.id().to_string(),
            summary: verdict.summary.clone(),
            evidence: evidence(&verdict.evidence),
            b_host: peer_host.map(|p| self.hosts.name(p).to_string()),
            peer_note: peer_note(peer.as_peer()),
            duration_ms,
            stuck_bytes,
        }
    }

    /// Stores this poll's samples of an open episode: A's latest when the
    /// caller has just observed it (`a_new`), and B's latest report (the
    /// last before its socket went, when it went) when it is newer than
    /// the last one stored; each side up to the per-episode cap.
    fn record(&mut self, host: HostId, flow: Tuple, s: &mut Suspect, a_new: bool) {
        let Some(ep) = s.episode.as_mut() else { return };
        let mut batch = Vec::new();
        if a_new && s.latest_at_ms > ep.last_a_ms && ep.stored_a < self.max_samples {
            batch.push(StoredSample {
                side: Side::A,
                host: self.hosts.name(host).to_string(),
                at_ms: s.latest_at_ms,
                sample: s.latest.clone(),
            });
            ep.stored_a += 1;
            ep.last_a_ms = s.latest_at_ms;
        }
        if let Some(peer) = s.peer {
            let b = match self.watched.get(&(peer, flow.reversed())).map(|w| &w.end) {
                Some(PeerEnd::Seen { at_ms, sample })
                | Some(PeerEnd::NoSocket {
                    last: Some((at_ms, sample)),
                    ..
                }) => Some((at_ms, sample)),
                _ => None,
            };
            if let Some((at_ms, sample)) = b {
                if *at_ms > ep.last_b_ms && ep.stored_b < self.max_samples {
                    batch.push(StoredSample {
                        side: Side::B,
                        host: self.hosts.name(peer).to_string(),
                        at_ms: *at_ms,
                        sample: sample.clone(),
                    });
                    ep.stored_b += 1;
                    ep.last_b_ms = *at_ms;
                }
            }
        }
        if !batch.is_empty() {
            self.store.add_samples(ep.id, batch);
        }
    }

    /// An event of `s`'s track, applied to it. `a`: the sample just
    /// observed of the event's connection, if any.
    fn apply(
        &mut self,
        event: Event,
        host: HostId,
        flow: Tuple,
        s: &mut Suspect,
        now_ms: i64,
        a: Option<&EndSample>,
    ) {
        match event {
            Event::Opened { cookie, stuck_for } => {
                let Some(a) = a_sample(a.filter(|a| a.cookie == cookie), s) else {
                    return;
                };
                self.open_episode(host, cookie, flow, s, stuck_for, now_ms, &a);
            }
            Event::Closed {
                reason, stuck_for, ..
            } => self.close_episode(host, flow, s, reason, stuck_for, now_ms),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open_episode(
        &mut self,
        host_id: HostId,
        cookie: u64,
        tuple: Tuple,
        s: &mut Suspect,
        stuck_for: Duration,
        now_ms: i64,
        a: &EndSample,
    ) {
        let host = self.hosts.name(host_id);
        let flow = tuple.flow();
        let peer = self.peer_of(s, tuple);
        let verdict = diagnose(a, peer.as_peer());
        let note = peer_note(peer.as_peer());
        let id = self.next_episode;
        self.next_episode += 1;
        self.stats.episodes_opened += 1;
        tracing::info!(episode = id, host = %host, %flow, diagnosis = %verdict.diagnosis, stuck_ms = millis(stuck_for), "episode opened");
        let started_at_ms = now_ms.saturating_sub(millis_i64(stuck_for));
        self.store.open_episode(NewEpisode {
            id,
            diagnosis: verdict.diagnosis.id().to_string(),
            summary: verdict.summary.clone(),
            evidence: evidence(&verdict.evidence),
            started_at_ms,
            duration_ms: millis(stuck_for),
            stuck_bytes: a.pos.sendq,
            a_host: host.to_string(),
            a_netns: a.netns.clone(),
            a_flow: flow,
            a_cookie: cookie,
            b_host: s.peer.map(|p| self.hosts.name(p).to_string()),
            peer_note: note,
        });
        // The first sample of the stall, then this poll's (record).
        let mut last_a_ms = i64::MIN;
        if let Some(first) = s.first.take() {
            last_a_ms = s.first_at_ms;
            self.store.add_samples(
                id,
                vec![StoredSample {
                    side: Side::A,
                    host: host.to_string(),
                    at_ms: s.first_at_ms,
                    sample: first,
                }],
            );
        }
        if let Some(peer) = s.peer {
            if let Some(w) = self.watched.get_mut(&(peer, tuple.reversed())) {
                w.episode_of = Some(host_id);
            }
        }
        self.open_episodes += 1;
        self.stats.open_by_diagnosis[verdict.diagnosis.index()] += 1;
        self.stats.opened_by_diagnosis[verdict.diagnosis.index()] += 1;
        s.episode = Some(Box::new(OpenEpisode {
            id,
            verdict,
            unstored: false,
            stored_a: 1,
            stored_b: 0,
            last_a_ms,
            last_b_ms: i64::MIN,
        }));
    }

    /// Ends `s`'s open episode, its latest sample the last stored.
    fn close_episode(
        &mut self,
        host_id: HostId,
        flow: Tuple,
        s: &mut Suspect,
        reason: EndReason,
        stuck_for: Duration,
        now_ms: i64,
    ) {
        let Some(ep) = s.episode.take() else { return };
        if ep.unstored {
            // Its counters as they ended.
            let peer = self.peer_of(s, flow);
            let v = &ep.verdict;
            let stuck_bytes = v
                .evidence
                .fact(Fact::ASendq)
                .map_or(0, |b| u32::try_from(b).unwrap_or(u32::MAX));
            let update =
                self.episode_update(ep.id, v, s.peer, &peer, millis(stuck_for), stuck_bytes);
            self.store.update_episode(update);
        }
        self.open_episodes = self.open_episodes.saturating_sub(1);
        let open = &mut self.stats.open_by_diagnosis[ep.verdict.diagnosis.index()];
        *open = open.saturating_sub(1);
        if let Some(w) = s
            .peer
            .and_then(|p| self.watched.get_mut(&(p, flow.reversed())))
        {
            w.episode_of = None;
        }
        let host = self.hosts.name(host_id);
        tracing::info!(episode = ep.id, host = %host, reason = reason.id(), "episode closed");
        // The last word on A, unless it is stored already (a socket gone
        // leaves its last held sample as its last word).
        if s.latest_at_ms > ep.last_a_ms {
            self.store.add_samples(
                ep.id,
                vec![StoredSample {
                    side: Side::A,
                    host: host.to_string(),
                    at_ms: s.latest_at_ms,
                    sample: s.latest.clone(),
                }],
            );
        }
        self.store.close_episode(
            ep.id,
            EpisodeEnd {
                ended_at_ms: now_ms,
                end_reason: reason.id().to_string(),
                duration_ms: millis(stuck_for),
            },
        );
    }
}

fn evidence(ev: &Evidence) -> std::collections::BTreeMap<String, i64> {
    ev.iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn peer_note(peer: Peer<'_>) -> Option<String> {
    match peer {
        Peer::Seen(_) => None,
        Peer::NoSocket { host } => Some(format!("{host} has no such socket")),
        Peer::Pending { host } => Some(format!("waiting for {host} to report")),
        Peer::Unmonitored => Some("no agent covers the peer's address".to_string()),
    }
}

/// The host whose agent owns `ip`, as seen from `from` (loopback is the
/// host itself): a function of the table it reads, so that a caller can
/// keep a suspect borrowed meanwhile.
fn owner(owners: &Map<IpAddr, HostId>, from: HostId, ip: IpAddr) -> Option<HostId> {
    if ip.is_loopback() {
        Some(from)
    } else {
        owners.get(&ip).copied()
    }
}

/// Polls of silence after which a suspect is taken as gone.
pub const SILENT_POLLS: u32 = 5;

/// Queues a request to `host`'s agent; false if it could not be (no session,
/// or its queue is full: counted, and logged at powers of two). A function
/// of the two fields it needs, not of `State`, so that a caller can keep an
/// entry of the watch table borrowed meanwhile instead of looking it up again.
fn queue(sessions: &Map<HostId, Session>, stats: &mut Stats, host: HostId, msg: ToAgent) -> bool {
    let Some(s) = sessions.get(&host) else {
        return false;
    };
    if s.tx.try_send(msg).is_ok() {
        return true;
    }
    stats.requests_dropped += 1;
    let n = stats.requests_dropped;
    if n.is_power_of_two() {
        tracing::warn!(
            host = %s.hello.host,
            dropped = n,
            "agent's outbound queue is full; request dropped (a watch is asked again at the suspect's next report)"
        );
    }
    false
}

/// Asks `host`'s agent to watch `flow` and records when on its watch `w`
/// (`None` if the request was dropped: it is then due at once).
fn ask(
    sessions: &Map<HostId, Session>,
    stats: &mut Stats,
    host: HostId,
    flow: Tuple,
    w: &mut Watch,
    now_ms: i64,
) {
    let sent = queue(sessions, stats, host, ToAgent::Watch(flow.flow()));
    w.asked_at_ms = sent.then_some(now_ms);
}

/// Runs the aggregator until `stop` fires or every sender is gone:
/// commands as they come, and once a second the expiry of what went silent.
pub async fn run(
    mut state: State,
    mut rx: mpsc::Receiver<Command>,
    mut stop: oneshot::Receiver<()>,
    clock: Clock,
) {
    let now_ms = move || clock.now_ms();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => state.handle(cmd, now_ms()),
                None => break,
            },
            _ = tick.tick() => state.expire(now_ms(), SILENT_POLLS),
            _ = &mut stop => break,
        }
    }
    // The minute in progress too: nothing counted is lost at shutdown.
    state.store_held(now_ms(), true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_asked_two_and_a_half_polls_before_the_threshold() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Defaults: held 5 s, met at the third report (6 s), not the second.
        assert_eq!(ask_peer_after(s(10), s(2)), s(5));
        assert_eq!(ask_peer_after(s(60), s(2)), s(55));
        assert_eq!(ask_peer_after(s(3), ms(500)), ms(1750));
        // A threshold within 2.5 polls: at the first report.
        assert_eq!(ask_peer_after(s(5), s(2)), Duration::ZERO);
        assert_eq!(ask_peer_after(s(4), s(2)), Duration::ZERO);
    }
}
