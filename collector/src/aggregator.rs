//! The one task that owns the collector's state. The gRPC handlers only
//! pass it messages ([`Command`]) over a bounded channel; it joins both
//! ends of each suspect flow, runs the detector, asks agents to watch
//! peers, diagnoses, and hands writes to the store without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tcpstall_common::{EndSample, FlowTuple};
use tokio::sync::{mpsc, oneshot};

use crate::detect::{ConnKey, Detector, EndReason, Event, LastWord, Observed};
use crate::diagnose::{diagnose, Diagnosis, Peer, Verdict};
use crate::packed::Packed;
use crate::slab_map::SlabMap;
use crate::store::{EpisodeEnd, EpisodeUpdate, HostRecord, NewEpisode, Side, Store, StoredSample};
use crate::tuple::Tuple;

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

/// Why a sample was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Suspect,
    Watched,
    Released,
}

/// A socket the agent had reported is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedSocket {
    pub flow: FlowTuple,
    pub cookie: u64,
}

/// One poll's worth from an agent, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentBatch {
    /// The agent's monotonic clock at the poll.
    pub mono: Duration,
    pub connections: u32,
    pub samples: Vec<(Reason, EndSample)>,
    /// The same samples encoded, index for index, when the wire gave them
    /// (the ingest task encodes them, off the aggregator's thread); when
    /// empty the aggregator encodes what it keeps.
    pub packed: Vec<Option<Packed>>,
    pub closed: Vec<ClosedSocket>,
    pub absent: Vec<FlowTuple>,
    pub dropped_batches: u64,
    pub dropped_samples: u64,
}

/// What the collector asks an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgent {
    Watch(FlowTuple),
    Unwatch(FlowTuple),
}

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
    /// Connections the episode detector follows (one per suspect, when
    /// nothing leaks).
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
}

/// What we know of a watched end.
#[derive(Debug)]
enum PeerEnd {
    /// Asked for, nothing heard yet.
    Pending,
    /// Its latest report.
    Seen { at_ms: i64, sample: Packed },
    /// Its agent says it has no such socket (or it closed).
    NoSocket,
}

/// A flow some host was asked to watch.
#[derive(Debug)]
struct Watch {
    /// How many suspects (and queries) need it.
    refs: u32,
    end: PeerEnd,
    /// The suspect with an open episode this is the peer of: a peer's
    /// report finds its episode at once.
    episode_of: Option<ConnKey>,
    /// When the request was queued for the agent; `None` if it was dropped.
    asked_at_ms: Option<i64>,
}

/// A connection whose queue looks stuck, with what we know of its peer.
#[derive(Debug)]
struct Suspect {
    flow: Tuple,
    /// The host owning the peer's address; `None` when nobody announced it.
    peer: Option<HostId>,
    /// Whether that host has been asked to watch the peer (see
    /// [`ask_peer_after`]).
    asked: bool,
    latest: Packed,
    latest_at_ms: i64,
    /// The agent's clock at the latest sample.
    last_mono: Duration,
    /// The stall's first sample, once a later one replaced it as `latest`.
    first: Option<Packed>,
    first_at_ms: i64,
    episode: Option<Box<OpenEpisode>>,
}

#[derive(Debug)]
struct OpenEpisode {
    id: i64,
    verdict: Verdict,
    stored_a: usize,
    stored_b: usize,
    last_b_ms: i64,
}

/// A batch's clocks, for each of its samples.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    /// The agent's clock at the poll.
    mono: Duration,
    /// The collector's wall clock at the batch.
    now_ms: i64,
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

/// The collector's state; all methods run on the aggregator task.
#[derive(Debug)]
pub struct State {
    store: Store,
    detector: Detector,
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
    suspects: SlabMap<ConnKey, Suspect>,
    /// (host, flow as that host sees it) -> what it reports of it.
    watched: SlabMap<(HostId, Tuple), Watch>,
    open_episodes: usize,
    next_episode: i64,
    stats: Stats,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
    slot.take().unwrap_or_else(|| Packed::new(s))
}

fn unpack(p: &Packed) -> Option<EndSample> {
    let s = p.unpack();
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
        store: Store,
        threshold: Duration,
        next_episode: i64,
        max_agents: usize,
        max_samples: usize,
    ) -> State {
        State {
            store,
            detector: Detector::new(threshold),
            max_agents,
            max_samples,
            watch_peer_after: None,
            hosts: Hosts::default(),
            sessions: Map::default(),
            session_hosts: Map::default(),
            owners: Map::default(),
            suspects: SlabMap::new(),
            watched: SlabMap::new(),
            open_episodes: 0,
            next_episode,
            stats: Stats::default(),
        }
    }

    /// Asks for a suspect's peer once its queue has been held for `after`
    /// (zero: at its first report); `None`, the default: at
    /// [`ask_peer_after`] for its agent's interval.
    pub fn watch_peer_after(self, after: Option<Duration>) -> State {
        State {
            watch_peer_after: after,
            ..self
        }
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
                if let Some(host) = self.session_hosts.get(&session).copied() {
                    self.batch(host, batch, now_ms);
                }
            }
            Command::Heartbeat {
                session,
                dropped_batches,
            } => {
                if let Some(s) = self
                    .session_hosts
                    .get(&session)
                    .and_then(|h| self.sessions.get_mut(h))
                {
                    s.dropped_batches = dropped_batches;
                }
            }
            Command::Gone { session } => {
                if let Some(host) = self.session_hosts.get(&session).copied() {
                    self.gone(host, now_ms);
                }
            }
            Command::Flow { flow, reply } => {
                let _ = reply.send(self.flow(flow, now_ms));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Reload {
                threshold,
                watch_peer_after,
                max_agents,
                max_samples,
            } => {
                self.detector.set_threshold(threshold);
                self.watch_peer_after = watch_peer_after;
                self.max_agents = max_agents;
                self.max_samples = max_samples;
            }
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            tracked_bytes: self.tracked_bytes(),
            agents: self.sessions.len(),
            suspects: self.suspects.len(),
            tracks: self.detector.tracked(),
            watched: self.watched.len(),
            open_episodes: self.open_episodes,
            agent_dropped_batches: self.sessions.values().map(|s| s.dropped_batches).sum(),
            store_dropped: self.store.stats().snapshot().dropped,
            ..self.stats
        }
    }

    /// See [`Stats::tracked_bytes`]. A walk over everything tracked: for a
    /// scrape, not for every batch.
    fn tracked_bytes(&self) -> usize {
        let suspects: usize = self
            .suspects
            .values()
            .map(|s| {
                s.latest.len()
                    + s.first.as_ref().map_or(0, Packed::len)
                    + s.episode.as_ref().map_or(0, |_| size_of::<OpenEpisode>())
            })
            .sum();
        let watched: usize = self
            .watched
            .values()
            .map(|w| match &w.end {
                PeerEnd::Seen { sample, .. } => sample.len(),
                _ => 0,
            })
            .sum();
        self.suspects.bytes()
            + self.watched.bytes()
            + self.detector.table_bytes()
            + suspects
            + watched
    }

    fn hello(
        &mut self,
        session: u64,
        hello: HostHello,
        tx: mpsc::Sender<ToAgent>,
        now_ms: i64,
    ) -> Result<(), String> {
        let host = self.hosts.id(&hello.host);
        if let Some(old) = self.sessions.get(&host) {
            tracing::warn!(host = %hello.host, old = old.id, new = session, "host reconnected; its previous stream is replaced");
            self.gone(host, now_ms);
        } else if self.sessions.len() >= self.max_agents {
            return Err(format!(
                "collector is full: {} agents connected",
                self.max_agents
            ));
        }
        for ip in &hello.addresses {
            if !ip.is_loopback() && !ip.is_unspecified() {
                self.owners.insert(*ip, host);
            }
        }
        self.store.host_seen(HostRecord {
            host: hello.host.clone(),
            kernel: hello.kernel.clone(),
            agent_version: hello.agent_version.clone(),
            boot_id: hello.boot_id.clone(),
            at_ms: now_ms,
        });
        tracing::info!(host = %hello.host, kernel = %hello.kernel, addresses = hello.addresses.len(), "agent connected");
        self.session_hosts.insert(session, host);
        self.sessions.insert(
            host,
            Session {
                id: session,
                hello,
                tx,
                dropped_batches: 0,
            },
        );
        // Flows it was asked to watch before it went away.
        for ((h, flow), w) in self.watched.iter_mut() {
            if *h == host {
                ask(&self.sessions, &mut self.stats, host, *flow, w, now_ms);
            }
        }
        Ok(())
    }

    fn gone(&mut self, host: HostId, now_ms: i64) {
        let Some(session) = self.sessions.remove(&host) else {
            return;
        };
        let name = self.hosts.name(host);
        tracing::info!(host = %name, session = session.id, "agent gone");
        self.session_hosts.remove(&session.id);
        self.owners.retain(|_, h| *h != host);
        self.store.host_gone(&name, now_ms);
        for event in self.detector.host_gone(host) {
            self.event(event, now_ms, None);
        }
        // Its suspects go (without episodes now), and with them the watches
        // they had asked of other hosts.
        let conns: Vec<ConnKey> = self
            .suspects
            .keys()
            .filter(|c| c.host == host)
            .copied()
            .collect();
        for conn in conns {
            self.forget(&conn);
        }
        self.suspects.retain(|c, _| c.host != host);
        // What it was watching is no longer seen; the suspects that need it
        // keep their claim and hear "pending" until it comes back and is
        // asked again (`hello`).
        for ((h, _), w) in self.watched.iter_mut() {
            if *h == host {
                w.end = PeerEnd::Pending;
            }
        }
    }

    /// The host whose agent owns `ip`, as seen from `from` (loopback is the
    /// host itself).
    fn owner(&self, from: HostId, ip: IpAddr) -> Option<HostId> {
        if ip.is_loopback() {
            Some(from)
        } else {
            self.owners.get(&ip).copied()
        }
    }

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
        let patience = self.sessions.get(&host).map_or(i64::MAX, |s| {
            i64::try_from(ms(s.hello.interval * 2)).unwrap_or(i64::MAX)
        });
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

    /// Handles one batch from `host` at collector wall time `now_ms`.
    pub fn batch(&mut self, host: HostId, batch: AgentBatch, now_ms: i64) {
        let mut interval = Duration::from_secs(2);
        if let Some(s) = self.sessions.get_mut(&host) {
            s.dropped_batches = batch.dropped_batches;
            interval = s.hello.interval;
        }
        let ask_after = self
            .watch_peer_after
            .unwrap_or_else(|| ask_peer_after(self.detector.threshold(), interval));
        self.stats.samples += batch.samples.len() as u64;
        for flow in batch.absent {
            self.peer_report(host, Tuple::new(flow), || PeerEnd::NoSocket);
        }
        let exact = batch.packed.len() == batch.samples.len();
        let mut packed = batch.packed.into_iter();
        // By reference: a sample is a few hundred bytes, not worth moving.
        for &(reason, ref sample) in &batch.samples {
            let mut slot = if exact { packed.next().flatten() } else { None };
            let tuple = Tuple::new(sample.flow);
            self.peer_report(host, tuple, || PeerEnd::Seen {
                at_ms: now_ms,
                sample: if reason == Reason::Watched {
                    take(&mut slot, sample)
                } else {
                    slot.clone().unwrap_or_else(|| Packed::new(sample))
                },
            });
            if reason != Reason::Watched {
                let at = Clocks {
                    mono: batch.mono,
                    now_ms,
                    ask_after,
                };
                self.observe(host, tuple, reason, sample, slot, at);
            }
        }
        for closed in batch.closed {
            self.peer_report(host, Tuple::new(closed.flow), || PeerEnd::NoSocket);
            if let Some(event) = self
                .detector
                .closed(host, closed.flow, closed.cookie, batch.mono)
            {
                self.event(event, now_ms, None);
            }
            self.forget(&ConnKey {
                host,
                cookie: closed.cookie,
            });
        }
    }

    /// A watched end reported (or was reported gone): keep it, and bring
    /// the episode it is the peer of up to date. `end` is made only if the
    /// flow is watched (most samples are not of a watched end).
    fn peer_report(&mut self, host: HostId, flow: Tuple, end: impl FnOnce() -> PeerEnd) {
        let Some(w) = self.watched.get_mut(&(host, flow)) else {
            return;
        };
        w.end = end();
        if let Some(conn) = w.episode_of {
            self.rediagnose(&conn, None);
            self.record(&conn, None);
        }
    }

    fn observe(
        &mut self,
        host: HostId,
        tuple: Tuple,
        reason: Reason,
        sample: &EndSample,
        mut packed: Option<Packed>,
        at: Clocks,
    ) {
        let Clocks {
            mono,
            now_ms,
            ask_after,
        } = at;
        let conn = ConnKey {
            host,
            cookie: sample.cookie,
        };
        let last_word = reason == Reason::Released || sample.pos.sendq == 0;
        // On the agent's last word the detector forgets the connection in
        // the same step. If the sample restarted its track, the closing of
        // that (`late`) comes after the suspect has taken the sample, as
        // an episode's last.
        let (events, held, late) = if last_word {
            let LastWord { events, closed } = self.detector.last_word_at(host, tuple, sample, mono);
            (events, Duration::ZERO, closed)
        } else {
            let Observed { events, held } = self.detector.observe_at(host, tuple, sample, mono);
            (events, held, None)
        };
        // An episode opening (held for the threshold) is past it too.
        let ask = held >= ask_after || !events.is_empty();
        // Most last words are of suspects that never became episodes (a
        // third of all samples in a busy fleet): forget them in one step.
        if last_word && events.is_empty() {
            if let Some(s) = self.suspects.remove_if(&conn, |s| s.episode.is_none()) {
                if let Some(event) = late {
                    self.event(event, now_ms, Some(sample));
                }
                self.let_peer_go(s);
                return;
            }
        }
        // Whether it has an open episode, as long as no event changed that.
        let mut open = false;
        if let Some(s) = self.suspects.get_mut(&conn) {
            open = s.episode.is_some();
            // A last word is kept only for an episode's closing sample.
            if !last_word || s.episode.is_some() {
                let prev = std::mem::replace(&mut s.latest, take(&mut packed, sample));
                if s.first.is_none() {
                    s.first = Some(prev);
                }
            }
            s.latest_at_ms = now_ms;
            s.last_mono = mono;
            if let (Some(peer), false) = (s.peer, last_word) {
                let flow = s.flow.reversed();
                if s.asked {
                    self.ask_again(peer, flow, now_ms);
                } else if ask {
                    s.asked = true;
                    self.watch(peer, flow, now_ms);
                }
            }
        } else if reason == Reason::Suspect && !last_word {
            let peer = self.owner(host, sample.flow.remote.ip());
            let asked = ask && peer.is_some();
            if let (Some(peer), true) = (peer, asked) {
                self.watch(peer, tuple.reversed(), now_ms);
            }
            self.suspects.insert(
                conn,
                Suspect {
                    flow: tuple,
                    peer,
                    asked,
                    latest: take(&mut packed, sample),
                    latest_at_ms: now_ms,
                    last_mono: mono,
                    first: None,
                    first_at_ms: now_ms,
                    episode: None,
                },
            );
        }
        if !events.is_empty() {
            for event in events {
                self.event(event, now_ms, Some(sample));
            }
            open = self
                .suspects
                .get(&conn)
                .is_some_and(|s| s.episode.is_some());
        }
        if last_word {
            // The agent's last word on it: nothing more will come.
            if let Some(event) = late {
                self.event(event, now_ms, Some(sample));
            }
            self.forget(&conn);
        } else if open {
            self.rediagnose(&conn, Some(sample));
            self.record(&conn, Some(sample));
        }
    }

    /// Ends what agents stopped reporting without a word (a lost message):
    /// suspects silent for `polls` of their agent's polls.
    pub fn expire(&mut self, now_ms: i64, polls: u32) {
        let silence: Map<HostId, i64> = self
            .sessions
            .iter()
            .map(|(h, s)| {
                let ms = ms(s.hello.interval * polls);
                (*h, i64::try_from(ms).unwrap_or(i64::MAX))
            })
            .collect();
        let default = i64::try_from(ms(Duration::from_secs(2) * polls)).unwrap_or(i64::MAX);
        let stale: Vec<(ConnKey, Tuple, Duration)> = self
            .suspects
            .iter()
            .filter(|(c, s)| {
                now_ms - s.latest_at_ms > silence.get(&c.host).copied().unwrap_or(default)
            })
            .map(|(c, s)| (*c, s.flow, s.last_mono))
            .collect();
        for (conn, flow, mono) in stale {
            tracing::debug!(host = %self.hosts.name(conn.host), cookie = conn.cookie, "suspect went silent");
            if let Some(event) = self.detector.closed_at(conn.host, flow, conn.cookie, mono) {
                self.event(event, now_ms, None);
            }
            self.forget(&conn);
        }
    }

    fn forget(&mut self, conn: &ConnKey) {
        if let Some(s) = self.suspects.remove_if(conn, |s| s.episode.is_none()) {
            self.let_peer_go(s);
        }
    }

    /// A forgotten suspect's peer end is no longer needed by it.
    fn let_peer_go(&mut self, s: Suspect) {
        if let (Some(peer), true) = (s.peer, s.asked) {
            self.unwatch(peer, s.flow.reversed());
        }
    }

    fn peer_of(&self, s: &Suspect) -> PeerNow {
        let Some(peer) = s.peer else {
            return PeerNow::Unmonitored;
        };
        match self.watched.get(&(peer, s.flow.reversed())).map(|w| &w.end) {
            Some(PeerEnd::Seen { sample, .. }) => match unpack(sample) {
                Some(b) => PeerNow::Seen(b),
                None => PeerNow::Pending(self.hosts.name(peer)),
            },
            Some(PeerEnd::NoSocket) => PeerNow::NoSocket(self.hosts.name(peer)),
            Some(PeerEnd::Pending) | None => PeerNow::Pending(self.hosts.name(peer)),
        }
    }

    /// Re-diagnoses an open episode from A's latest sample (`a` when the
    /// caller has it at hand) and its peer as known now; stores a change.
    fn rediagnose(&mut self, conn: &ConnKey, a: Option<&EndSample>) {
        let Some(s) = self.suspects.get(conn) else {
            return;
        };
        if s.episode.is_none() {
            return;
        }
        let unpacked;
        let a = match a {
            Some(a) => a,
            None => match unpack(&s.latest) {
                Some(x) => {
                    unpacked = x;
                    &unpacked
                }
                None => return,
            },
        };
        let peer = self.peer_of(s);
        let verdict = diagnose(a, peer.as_peer());
        // Most polls of a held queue find what the last one did, a little
        // later: nothing to store (its duration is read from its start).
        if s.episode
            .as_ref()
            .is_some_and(|ep| ep.verdict.same_finding(&verdict))
        {
            return;
        }
        let note = peer_note(peer.as_peer());
        let b_host = s.peer.map(|p| self.hosts.name(p).to_string());
        let (stuck_for, stuck_bytes) = (a.unchanged_ms, a.pos.sendq);
        let Some(ep) = self.suspects.get_mut(conn).and_then(|s| s.episode.as_mut()) else {
            return;
        };
        if ep.verdict.diagnosis != verdict.diagnosis {
            tracing::info!(episode = ep.id, from = %ep.verdict.diagnosis, to = %verdict.diagnosis, "diagnosis changed");
            let open = &mut self.stats.open_by_diagnosis[ep.verdict.diagnosis.index()];
            *open = open.saturating_sub(1);
            self.stats.open_by_diagnosis[verdict.diagnosis.index()] += 1;
        }
        self.store.update_episode(EpisodeUpdate {
            id: ep.id,
            diagnosis: verdict.diagnosis.id().to_string(),
            summary: verdict.summary.clone(),
            evidence: evidence(&verdict.evidence),
            b_host,
            peer_note: note,
            duration_ms: stuck_for,
            stuck_bytes,
        });
        ep.verdict = verdict;
    }

    /// Stores this poll's samples of an open episode: A's when the caller
    /// has it (`a`, a new report of A), and B's when it reported since the
    /// last one stored; each side up to the per-episode cap.
    fn record(&mut self, conn: &ConnKey, a: Option<&EndSample>) {
        let Some(s) = self.suspects.get(conn) else {
            return;
        };
        let Some(ep) = &s.episode else { return };
        let (mut stored_a, mut stored_b, mut last_b) = (ep.stored_a, ep.stored_b, ep.last_b_ms);
        let mut batch = Vec::new();
        // `a` has just been observed: `s.latest` is its encoding.
        if a.is_some() && stored_a < self.max_samples {
            batch.push(StoredSample {
                side: Side::A,
                host: self.hosts.name(conn.host).to_string(),
                at_ms: s.latest_at_ms,
                sample: s.latest.clone(),
            });
            stored_a += 1;
        }
        if let Some(peer) = s.peer {
            if let Some(PeerEnd::Seen { at_ms, sample }) =
                self.watched.get(&(peer, s.flow.reversed())).map(|w| &w.end)
            {
                if *at_ms > last_b && stored_b < self.max_samples {
                    batch.push(StoredSample {
                        side: Side::B,
                        host: self.hosts.name(peer).to_string(),
                        at_ms: *at_ms,
                        sample: sample.clone(),
                    });
                    stored_b += 1;
                    last_b = *at_ms;
                }
            }
        }
        let id = ep.id;
        if !batch.is_empty() {
            self.store.add_samples(id, batch);
        }
        if let Some(ep) = self.suspects.get_mut(conn).and_then(|s| s.episode.as_mut()) {
            (ep.stored_a, ep.stored_b, ep.last_b_ms) = (stored_a, stored_b, last_b);
        }
    }

    /// `a`: the sample of the event's connection just observed, if any.
    fn event(&mut self, event: Event, now_ms: i64, a: Option<&EndSample>) {
        match event {
            Event::Opened {
                conn,
                flow,
                stuck_for,
            } => {
                let a = a
                    .filter(|a| a.cookie == conn.cookie)
                    .cloned()
                    .or_else(|| self.suspects.get(&conn).and_then(|s| unpack(&s.latest)));
                match a {
                    Some(a) => self.open_episode(conn, flow, stuck_for, now_ms, &a),
                    None => {
                        tracing::warn!(host = %self.hosts.name(conn.host), %flow, "episode for a connection never seen as a suspect")
                    }
                }
            }
            Event::Closed {
                conn,
                reason,
                stuck_for,
                ..
            } => self.close_episode(conn, reason, stuck_for, now_ms),
        }
    }

    fn open_episode(
        &mut self,
        conn: ConnKey,
        flow: FlowTuple,
        stuck_for: Duration,
        now_ms: i64,
        a: &EndSample,
    ) {
        let host = self.hosts.name(conn.host);
        let Some(s) = self.suspects.get(&conn) else {
            tracing::warn!(host = %host, %flow, "episode for a connection never seen as a suspect");
            return;
        };
        let peer = self.peer_of(s);
        let verdict = diagnose(a, peer.as_peer());
        let note = peer_note(peer.as_peer());
        let id = self.next_episode;
        self.next_episode += 1;
        self.stats.episodes_opened += 1;
        tracing::info!(episode = id, host = %host, %flow, diagnosis = %verdict.diagnosis, stuck_ms = ms(stuck_for), "episode opened");
        let started_at_ms = now_ms - i64::try_from(ms(stuck_for)).unwrap_or(0);
        self.store.open_episode(NewEpisode {
            id,
            diagnosis: verdict.diagnosis.id().to_string(),
            summary: verdict.summary.clone(),
            evidence: evidence(&verdict.evidence),
            started_at_ms,
            duration_ms: ms(stuck_for),
            stuck_bytes: a.pos.sendq,
            a_host: host.to_string(),
            a_netns: a.netns.clone(),
            a_flow: flow,
            a_cookie: conn.cookie,
            b_host: s.peer.map(|p| self.hosts.name(p).to_string()),
            peer_note: note,
        });
        // The first sample of the stall, then this poll's (record).
        if let Some(first) = s.first.clone() {
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
            if let Some(w) = self.watched.get_mut(&(peer, s.flow.reversed())) {
                w.episode_of = Some(conn);
            }
        }
        self.open_episodes += 1;
        self.stats.open_by_diagnosis[verdict.diagnosis.index()] += 1;
        self.stats.opened_by_diagnosis[verdict.diagnosis.index()] += 1;
        if let Some(s) = self.suspects.get_mut(&conn) {
            s.first = None;
            s.episode = Some(Box::new(OpenEpisode {
                id,
                verdict,
                stored_a: 1,
                stored_b: 0,
                last_b_ms: i64::MIN,
            }));
        }
    }

    fn close_episode(
        &mut self,
        conn: ConnKey,
        reason: EndReason,
        stuck_for: Duration,
        now_ms: i64,
    ) {
        let Some(s) = self.suspects.get_mut(&conn) else {
            return;
        };
        let Some(ep) = s.episode.take() else { return };
        self.open_episodes = self.open_episodes.saturating_sub(1);
        let open = &mut self.stats.open_by_diagnosis[ep.verdict.diagnosis.index()];
        *open = open.saturating_sub(1);
        let (peer, flow, at_ms) = (s.peer, s.flow, s.latest_at_ms);
        let last = s.latest.clone();
        if let Some(w) = peer.and_then(|p| self.watched.get_mut(&(p, flow.reversed()))) {
            w.episode_of = None;
        }
        let host = self.hosts.name(conn.host);
        tracing::info!(episode = ep.id, host = %host, reason = reason.id(), "episode closed");
        // The last word on A.
        self.store.add_samples(
            ep.id,
            vec![StoredSample {
                side: Side::A,
                host: host.to_string(),
                at_ms,
                sample: last,
            }],
        );
        self.store.close_episode(
            ep.id,
            EpisodeEnd {
                ended_at_ms: now_ms,
                end_reason: reason.id().to_string(),
                duration_ms: ms(stuck_for),
            },
        );
        if reason != EndReason::Moved {
            self.forget(&conn);
        }
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
                .or_else(|| self.owners.get(&tuple.local.ip()).copied());
            if let Some(host) = host {
                let key = Tuple::new(tuple);
                if !self.watched.contains_key(&(host, key)) {
                    self.watch(host, key, now_ms);
                }
            }
            let known = known.map(|(h, s)| (self.hosts.name(h).to_string(), s));
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
        if let Some(&host) = self.owners.get(&tuple.local.ip()) {
            let watched = self.watched.get(&(host, key)).and_then(seen);
            let suspect = || {
                let cookie = self.detector.cookie_of(host, tuple)?;
                let s = self.suspects.get(&ConnKey { host, cookie })?;
                Some(&s.latest)
            };
            return watched.or_else(suspect).map(|p| (host, p));
        }
        self.watched
            .iter()
            .find_map(|((h, t), w)| (*t == key).then(|| seen(w).map(|p| (*h, p))).flatten())
            .or_else(|| {
                self.suspects
                    .iter()
                    .find(|(_, s)| s.flow == key)
                    .map(|(c, s)| (c.host, &s.latest))
            })
    }
}

fn evidence(
    ev: &std::collections::BTreeMap<&'static str, i64>,
) -> std::collections::BTreeMap<String, i64> {
    ev.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn peer_note(peer: Peer<'_>) -> Option<String> {
    match peer {
        Peer::Seen(_) => None,
        Peer::NoSocket { host } => Some(format!("{host} has no such socket")),
        Peer::Pending { host } => Some(format!("waiting for {host} to report")),
        Peer::Unmonitored => Some("no agent covers the peer's address".to_string()),
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
) {
    // Wall time for records, advanced by tokio's clock so that a paused
    // clock in tests moves it too.
    let (wall0, t0) = (wall_ms(), tokio::time::Instant::now());
    let now_ms = move || wall0 + i64::try_from(t0.elapsed().as_millis()).unwrap_or(i64::MAX);
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
