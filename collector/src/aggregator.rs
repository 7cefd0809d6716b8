//! The one task that owns the collector's state. The gRPC handlers only
//! pass it messages ([`Command`]) over a bounded channel; it joins both
//! ends of each suspect flow, runs the detector, asks agents to watch
//! peers, diagnoses, and hands writes to the store without waiting.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tcpstall_common::{EndSample, FlowTuple};
use tokio::sync::{mpsc, oneshot};

use crate::detect::{ConnKey, Detector, EndReason, Event};
use crate::diagnose::{diagnose, Peer, Verdict};
use crate::store::{EpisodeEnd, EpisodeUpdate, HostRecord, NewEpisode, Side, Store, StoredSample};

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
    pub open_episodes: usize,
    pub samples: u64,
    pub episodes_opened: u64,
    pub store_dropped: u64,
    pub agent_dropped_batches: u64,
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
}

#[derive(Debug)]
struct Session {
    id: u64,
    hello: HostHello,
    tx: mpsc::Sender<ToAgent>,
    dropped_batches: u64,
}

/// The latest report of a watched end.
#[derive(Debug, Clone)]
struct PeerEnd {
    sample: EndSample,
    at_ms: i64,
}

/// A connection whose queue looks stuck, with what we know of its peer.
#[derive(Debug)]
struct Suspect {
    latest: EndSample,
    latest_at_ms: i64,
    first: EndSample,
    first_at_ms: i64,
    /// The host owning the peer's address; `None` when nobody announced it.
    peer_host: Option<String>,
    episode: Option<OpenEpisode>,
    /// The agent's clock at the latest sample.
    last_mono: Duration,
}

#[derive(Debug)]
struct OpenEpisode {
    id: i64,
    verdict: Verdict,
    stored_a: usize,
    stored_b: usize,
    last_b_ms: i64,
}

/// The collector's state; all methods run on the aggregator task.
#[derive(Debug)]
pub struct State {
    store: Store,
    detector: Detector,
    max_agents: usize,
    max_samples: usize,
    sessions: HashMap<String, Session>,
    /// Session id -> host, for the commands that name a session.
    session_hosts: HashMap<u64, String>,
    /// Non-loopback address -> host that announced it.
    owners: HashMap<IpAddr, String>,
    suspects: HashMap<ConnKey, Suspect>,
    peers: HashMap<(String, FlowTuple), PeerEnd>,
    absent: HashSet<(String, FlowTuple)>,
    /// (peer host, flow as the peer sees it) -> the suspect with an open
    /// episode it is the peer of: a peer's report finds its episode at once.
    open_by_peer: HashMap<(String, FlowTuple), ConnKey>,
    /// (host, flow as that host sees it) -> how many suspects need it.
    watches: HashMap<(String, FlowTuple), usize>,
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
            sessions: HashMap::new(),
            session_hosts: HashMap::new(),
            owners: HashMap::new(),
            suspects: HashMap::new(),
            peers: HashMap::new(),
            absent: HashSet::new(),
            watches: HashMap::new(),
            open_by_peer: HashMap::new(),
            next_episode,
            stats: Stats::default(),
        }
    }

    fn host_of(&self, session: u64) -> Option<String> {
        self.session_hosts.get(&session).cloned()
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
                if let Some(host) = self.host_of(session) {
                    self.batch(&host, batch, now_ms);
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
                if let Some(host) = self.host_of(session) {
                    self.gone(&host, now_ms);
                }
            }
            Command::Flow { flow, reply } => {
                let _ = reply.send(self.flow(flow));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
        }
    }

    pub fn stats(&self) -> Stats {
        Stats {
            agents: self.sessions.len(),
            suspects: self.suspects.len(),
            open_episodes: self
                .suspects
                .values()
                .filter(|s| s.episode.is_some())
                .count(),
            agent_dropped_batches: self.sessions.values().map(|s| s.dropped_batches).sum(),
            store_dropped: self.store.stats().snapshot().dropped,
            ..self.stats
        }
    }

    fn hello(
        &mut self,
        session: u64,
        hello: HostHello,
        tx: mpsc::Sender<ToAgent>,
        now_ms: i64,
    ) -> Result<(), String> {
        if let Some(old) = self.sessions.get(&hello.host) {
            tracing::warn!(host = %hello.host, old = old.id, new = session, "host reconnected; its previous stream is replaced");
            let host = hello.host.clone();
            self.gone(&host, now_ms);
        } else if self.sessions.len() >= self.max_agents {
            return Err(format!(
                "collector is full: {} agents connected",
                self.max_agents
            ));
        }
        for ip in &hello.addresses {
            if !ip.is_loopback() && !ip.is_unspecified() {
                self.owners.insert(*ip, hello.host.clone());
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
        self.session_hosts.insert(session, hello.host.clone());
        self.sessions.insert(
            hello.host.clone(),
            Session {
                id: session,
                hello,
                tx,
                dropped_batches: 0,
            },
        );
        Ok(())
    }

    fn gone(&mut self, host: &str, now_ms: i64) {
        let Some(session) = self.sessions.remove(host) else {
            return;
        };
        tracing::info!(host, session = session.id, "agent gone");
        self.session_hosts.remove(&session.id);
        self.owners.retain(|_, h| h != host);
        self.store.host_gone(host, now_ms);
        for event in self.detector.host_gone(host) {
            self.event(host, event, now_ms);
        }
        self.suspects.retain(|c, _| c.host != host);
        self.open_by_peer
            .retain(|(h, _), c| h != host && c.host != host);
        self.peers.retain(|(h, _), _| h != host);
        self.absent.retain(|(h, _)| h != host);
        self.watches.retain(|(h, _), _| h != host);
    }

    /// The host whose agent owns `ip`, as seen from `from` (loopback is the
    /// host itself).
    fn owner(&self, from: &str, ip: IpAddr) -> Option<String> {
        if ip.is_loopback() {
            Some(from.to_string())
        } else {
            self.owners.get(&ip).cloned()
        }
    }

    fn send(&mut self, host: &str, msg: ToAgent) {
        if let Some(s) = self.sessions.get(host) {
            if s.tx.try_send(msg).is_err() {
                tracing::warn!(
                    host,
                    "agent's outbound queue is full; watch request dropped"
                );
            }
        }
    }

    fn watch(&mut self, host: &str, flow: FlowTuple) {
        let n = self.watches.entry((host.to_string(), flow)).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.send(host, ToAgent::Watch(flow));
        }
    }

    fn unwatch(&mut self, host: &str, flow: FlowTuple) {
        let key = (host.to_string(), flow);
        if let Some(n) = self.watches.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.watches.remove(&key);
                self.peers.remove(&key);
                self.absent.remove(&key);
                self.send(host, ToAgent::Unwatch(flow));
            }
        }
    }

    /// Handles one batch from `host` at collector wall time `now_ms`.
    pub fn batch(&mut self, host: &str, batch: AgentBatch, now_ms: i64) {
        if let Some(s) = self.sessions.get_mut(host) {
            s.dropped_batches = batch.dropped_batches;
        }
        self.stats.samples += batch.samples.len() as u64;
        for flow in batch.absent {
            self.peers.remove(&(host.to_string(), flow));
            self.absent.insert((host.to_string(), flow));
            self.refresh_peer_of(host, flow, now_ms);
        }
        for (reason, sample) in batch.samples {
            if self.watches.contains_key(&(host.to_string(), sample.flow)) {
                let key = (host.to_string(), sample.flow);
                self.absent.remove(&key);
                self.peers.insert(
                    key,
                    PeerEnd {
                        sample: sample.clone(),
                        at_ms: now_ms,
                    },
                );
                self.refresh_peer_of(host, sample.flow, now_ms);
            }
            if reason != Reason::Watched {
                self.observe(host, reason, sample, batch.mono, now_ms);
            }
        }
        for closed in batch.closed {
            let key = (host.to_string(), closed.flow);
            if self.watches.contains_key(&key) {
                self.peers.remove(&key);
                self.absent.insert(key);
                self.refresh_peer_of(host, closed.flow, now_ms);
            }
            if let Some(event) = self.detector.closed(host, closed.cookie, batch.mono) {
                self.event(host, event, now_ms);
            }
            self.forget(&ConnKey {
                host: host.to_string(),
                cookie: closed.cookie,
            });
        }
    }

    fn observe(
        &mut self,
        host: &str,
        reason: Reason,
        sample: EndSample,
        mono: Duration,
        now_ms: i64,
    ) {
        let conn = ConnKey {
            host: host.to_string(),
            cookie: sample.cookie,
        };
        let events = self.detector.observe(host, &sample, mono);
        if reason == Reason::Suspect && !self.suspects.contains_key(&conn) {
            let peer_host = self.owner(host, sample.flow.remote.ip());
            if let Some(peer) = &peer_host {
                self.watch(&peer.clone(), sample.flow.reversed());
            }
            self.suspects.insert(
                conn.clone(),
                Suspect {
                    latest: sample.clone(),
                    latest_at_ms: now_ms,
                    first: sample.clone(),
                    first_at_ms: now_ms,
                    peer_host,
                    episode: None,
                    last_mono: mono,
                },
            );
        } else if let Some(s) = self.suspects.get_mut(&conn) {
            s.latest = sample.clone();
            s.latest_at_ms = now_ms;
            s.last_mono = mono;
        }
        for event in events {
            self.event(host, event, now_ms);
        }
        if reason == Reason::Released || sample.pos.sendq == 0 {
            // The agent's last word on it: nothing more will come.
            if let Some(event) = self.detector.closed(host, sample.cookie, mono) {
                self.event(host, event, now_ms);
            }
            self.forget(&conn);
        } else {
            self.record_open(&conn);
        }
    }

    /// Ends what agents stopped reporting without a word (a lost message):
    /// suspects silent for `silence` of their agent's polls.
    pub fn expire(&mut self, now_ms: i64, polls: u32) {
        let stale: Vec<(ConnKey, Duration)> = self
            .suspects
            .iter()
            .filter(|(c, s)| {
                let interval = self
                    .sessions
                    .get(&c.host)
                    .map_or(Duration::from_secs(2), |x| x.hello.interval);
                let silence = i64::try_from(ms(interval * polls)).unwrap_or(i64::MAX);
                now_ms - s.latest_at_ms > silence
            })
            .map(|(c, s)| (c.clone(), s.last_mono))
            .collect();
        for (conn, mono) in stale {
            tracing::debug!(host = %conn.host, cookie = conn.cookie, "suspect went silent");
            if let Some(event) = self.detector.closed(&conn.host, conn.cookie, mono) {
                self.event(&conn.host.clone(), event, now_ms);
            }
            self.forget(&conn);
        }
    }

    fn forget(&mut self, conn: &ConnKey) {
        if let Some(s) = self.suspects.get(conn) {
            if s.episode.is_some() {
                return;
            }
        }
        if let Some(s) = self.suspects.remove(conn) {
            if let Some(peer) = s.peer_host {
                self.unwatch(&peer, s.latest.flow.reversed());
            }
        }
    }

    fn peer_of<'a>(&'a self, s: &'a Suspect) -> Peer<'a> {
        let Some(peer_host) = &s.peer_host else {
            return Peer::Unmonitored;
        };
        let key = (peer_host.clone(), s.latest.flow.reversed());
        if let Some(end) = self.peers.get(&key) {
            Peer::Seen(&end.sample)
        } else if self.absent.contains(&key) {
            Peer::NoSocket { host: peer_host }
        } else {
            Peer::Pending { host: peer_host }
        }
    }

    /// A peer end of some suspects changed: re-diagnose their episodes and
    /// store its sample.
    fn refresh_peer_of(&mut self, peer_host: &str, flow: FlowTuple, _now_ms: i64) {
        let Some(conn) = self
            .open_by_peer
            .get(&(peer_host.to_string(), flow))
            .cloned()
        else {
            return;
        };
        self.rediagnose(&conn);
        self.record(&conn, false);
    }

    fn rediagnose(&mut self, conn: &ConnKey) {
        let Some(s) = self.suspects.get(conn) else {
            return;
        };
        let verdict = diagnose(&s.latest, self.peer_of(s));
        let b_host = s.peer_host.clone();
        let peer_note = peer_note(self.peer_of(s));
        let stuck_for = s.latest.unchanged_ms;
        let stuck_bytes = s.latest.pos.sendq;
        let Some(s) = self.suspects.get_mut(conn) else {
            return;
        };
        let Some(ep) = s.episode.as_mut() else { return };
        if ep.verdict != verdict {
            if ep.verdict.diagnosis != verdict.diagnosis {
                tracing::info!(episode = ep.id, from = %ep.verdict.diagnosis, to = %verdict.diagnosis, "diagnosis changed");
            }
            ep.verdict = verdict.clone();
            self.store.update_episode(EpisodeUpdate {
                id: ep.id,
                diagnosis: verdict.diagnosis.id().to_string(),
                summary: verdict.summary,
                evidence: evidence(&verdict.evidence),
                b_host,
                peer_note,
                duration_ms: stuck_for,
                stuck_bytes,
            });
        }
    }

    /// Stores the samples of an open episode for this poll (A always, B
    /// when it reported since), up to the per-episode cap.
    fn record_open(&mut self, conn: &ConnKey) {
        self.rediagnose(conn);
        self.record(conn, true);
    }

    /// Stores this poll's samples of an open episode: A's when `with_a`,
    /// and B's when it reported since the last one stored; each side up to
    /// the per-episode cap.
    fn record(&mut self, conn: &ConnKey, with_a: bool) {
        let Some(s) = self.suspects.get(conn) else {
            return;
        };
        let Some(ep) = s.episode.as_ref() else { return };
        let peer = s.peer_host.as_ref().and_then(|h| {
            self.peers
                .get(&(h.clone(), s.latest.flow.reversed()))
                .map(|p| (h.clone(), p.clone()))
        });
        let mut batch = Vec::new();
        let (mut stored_a, mut stored_b, mut last_b) = (ep.stored_a, ep.stored_b, ep.last_b_ms);
        if with_a && stored_a < self.max_samples {
            batch.push(StoredSample {
                side: Side::A,
                host: conn.host.clone(),
                at_ms: s.latest_at_ms,
                sample: s.latest.clone(),
            });
            stored_a += 1;
        }
        if let Some((h, p)) = peer {
            if p.at_ms > last_b && stored_b < self.max_samples {
                batch.push(StoredSample {
                    side: Side::B,
                    host: h,
                    at_ms: p.at_ms,
                    sample: p.sample,
                });
                stored_b += 1;
                last_b = p.at_ms;
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

    fn event(&mut self, host: &str, event: Event, now_ms: i64) {
        match event {
            Event::Opened {
                conn,
                flow,
                stuck_for,
            } => self.open_episode(host, conn, flow, stuck_for, now_ms),
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
        host: &str,
        conn: ConnKey,
        flow: FlowTuple,
        stuck_for: Duration,
        now_ms: i64,
    ) {
        let Some(s) = self.suspects.get(&conn) else {
            tracing::warn!(host, %flow, "episode for a connection never seen as a suspect");
            return;
        };
        let peer = self.peer_of(s);
        let verdict = diagnose(&s.latest, peer.clone());
        let note = peer_note(peer);
        let id = self.next_episode;
        self.next_episode += 1;
        self.stats.episodes_opened += 1;
        tracing::info!(episode = id, host, %flow, diagnosis = %verdict.diagnosis, stuck_ms = ms(stuck_for), "episode opened");
        let started_at_ms = now_ms - i64::try_from(ms(stuck_for)).unwrap_or(0);
        self.store.open_episode(NewEpisode {
            id,
            diagnosis: verdict.diagnosis.id().to_string(),
            summary: verdict.summary.clone(),
            evidence: evidence(&verdict.evidence),
            started_at_ms,
            duration_ms: ms(stuck_for),
            stuck_bytes: s.latest.pos.sendq,
            a_host: host.to_string(),
            a_netns: s.latest.netns.clone(),
            a_flow: flow,
            a_cookie: conn.cookie,
            b_host: s.peer_host.clone(),
            peer_note: note,
        });
        // The first sample of the stall, then this poll's (record_open).
        if s.first_at_ms < s.latest_at_ms {
            self.store.add_samples(
                id,
                vec![StoredSample {
                    side: Side::A,
                    host: host.to_string(),
                    at_ms: s.first_at_ms,
                    sample: s.first.clone(),
                }],
            );
        }
        if let Some(peer) = &s.peer_host {
            self.open_by_peer
                .insert((peer.clone(), flow.reversed()), conn.clone());
        }
        if let Some(s) = self.suspects.get_mut(&conn) {
            s.episode = Some(OpenEpisode {
                id,
                verdict,
                stored_a: 1,
                stored_b: 0,
                last_b_ms: i64::MIN,
            });
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
        if let Some(peer) = &s.peer_host {
            self.open_by_peer
                .remove(&(peer.clone(), s.latest.flow.reversed()));
        }
        tracing::info!(episode = ep.id, host = %conn.host, reason = reason.id(), "episode closed");
        // The last word on A.
        self.store.add_samples(
            ep.id,
            vec![StoredSample {
                side: Side::A,
                host: conn.host.clone(),
                at_ms: s.latest_at_ms,
                sample: s.latest.clone(),
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
    pub fn flow(&mut self, flow: FlowTuple) -> FlowView {
        let mut view = FlowView::default();
        for (slot, tuple) in [(0, flow), (1, flow.reversed())] {
            let known = self
                .peers
                .iter()
                .find(|((_, t), _)| *t == tuple)
                .map(|((h, _), p)| (h.clone(), p.sample.clone()))
                .or_else(|| {
                    self.suspects
                        .iter()
                        .find(|(_, s)| s.latest.flow == tuple)
                        .map(|(c, s)| (c.host.clone(), s.latest.clone()))
                });
            let host = known
                .as_ref()
                .map(|(h, _)| h.clone())
                .or_else(|| self.owners.get(&tuple.local.ip()).cloned());
            if let Some(host) = host {
                if !self.watches.contains_key(&(host.clone(), tuple)) {
                    self.watch(&host, tuple);
                }
            }
            if slot == 0 {
                view.a = known;
            } else {
                view.b = known;
            }
        }
        view
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
