//! The matcher's task: its inputs (the gateway's and the streams' plain
//! messages, and the questions of the query edge and the metrics), once a
//! second the expiry of what went silent, and its counters.

use std::sync::Arc;
use std::time::Duration;

use tcpstall_common::time::millis_i64;
use tcpstall_common::{Clock, EndReason, FlowTuple, NamespaceAddresses, Packed};
use tokio::sync::{mpsc, oneshot};

use super::held::HeldTally;
use super::join::FlowView;
use super::samples::DEFAULT_INTERVAL;
use super::slab_map::SlabMap;
use super::state::{Ctx, Map, Matcher, OpenEpisode, PeerEnd, Stats, Up, SILENT_POLLS};
use super::tuple::Tuple;
use crate::messages::{HostId, ToGateway, ToMatcher};
use crate::store::{HeldFilter, HeldRow, SharedStore};

/// A question to the matcher from this process's query edge or metrics,
/// answered on its reply channel (across processes, a request and its
/// response).
#[derive(Debug)]
pub enum Question {
    /// Both ends of a flow as known now (and asks their hosts to watch it).
    Flow {
        flow: FlowTuple,
        reply: oneshot::Sender<FlowView>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// The held-span counts not yet in the store: the minute in progress.
    HeldPending {
        filter: HeldFilter,
        reply: oneshot::Sender<Vec<HeldRow>>,
    },
    /// Settings of a reloaded config that apply from now on.
    Reload {
        threshold: Duration,
        watch_peer_after: Option<Duration>,
        max_samples: usize,
    },
}

impl Matcher {
    /// A matcher writing to `store`, numbering episodes from
    /// `next_episode`, asking watches of the `gateway`.
    pub fn new(
        store: SharedStore,
        gateway: mpsc::Sender<ToGateway>,
        threshold: Duration,
        next_episode: i64,
        max_samples: usize,
    ) -> Matcher {
        Matcher {
            table: SlabMap::new(),
            threshold,
            ctx: Ctx {
                store,
                max_samples,
                watch_peer_after: None,
                gateway,
                names: Map::default(),
                up: Map::default(),
                owners: Map::default(),
                announced: Default::default(),
                watched: SlabMap::new(),
                a_of: Map::default(),
                translators: Vec::new(),
                translating: Map::default(),
                open_episodes: 0,
                next_episode,
                ids_of_identity: false,
                held_from_ms: i64::MIN,
                replaying: false,
                adopted: Map::default(),
                stats: Stats::default(),
                held: HeldTally::default(),
            },
        }
    }

    /// Asks for a suspect's peer once its queue has been held for `after`
    /// (zero: at its first report); `None`, the default:
    /// `ask_peer_after` for its agent's interval.
    pub fn watch_peer_after(mut self, after: Option<Duration>) -> Matcher {
        self.ctx.watch_peer_after = after;
        self
    }

    /// Numbers episodes by their identity (their flow and start) instead
    /// of counting: the same stall gets the same id on every node that
    /// judges it (fleet mode).
    pub fn ids_of_identity(mut self) -> Matcher {
        self.number_by_identity();
        self
    }

    /// Holds at most `n` host pairs' held-span counts of the minute in
    /// progress (beyond, spans are counted in the histogram only, and as
    /// uncounted). Fleet mode gives each partition a share of a single
    /// collector's bound, so that a node holds about what one collector
    /// does.
    pub fn held_pairs_bound(mut self, n: usize) -> Matcher {
        self.ctx.held.bound(n);
        self
    }

    /// As [`Matcher::ids_of_identity`], on a matcher already made.
    pub fn number_by_identity(&mut self) {
        self.ctx.ids_of_identity = true;
    }

    /// Counts held spans only from `ms` on (collector time): what a
    /// partition's previous owner counted is not counted again.
    pub fn count_held_from(&mut self, ms: i64) {
        self.ctx.held_from_ms = ms;
    }

    /// Open episodes another node stored (a partition taken over): a stall
    /// opened again here on the same socket takes the stored episode's id
    /// and start, whatever this node computes them to be (its stream may
    /// no longer hold the stall's first samples, or the host may have
    /// moved to another node since, with another clock offset).
    pub fn adopt(&mut self, open: impl IntoIterator<Item = crate::store::EpisodeRow>) {
        for e in open.into_iter().filter(|e| e.open) {
            let last_ms = e
                .started_at_ms
                .saturating_add(i64::try_from(e.duration_ms).unwrap_or(i64::MAX));
            self.ctx.adopted.insert(
                (Arc::from(e.a_host.as_str()), e.a_flow, e.a_cookie),
                super::state::Adopted {
                    id: e.id,
                    started_at_ms: e.started_at_ms,
                    last_ms,
                },
            );
        }
    }

    /// Ends the adopted episodes no replayed stall took up: their stall
    /// ended while no node judged it (or before the stream's oldest
    /// sample), and they end as a collector restart's do, when they were
    /// last known open. Returns how many.
    pub fn end_unclaimed(&mut self) -> usize {
        let left: Vec<super::state::Adopted> =
            self.ctx.adopted.drain().map(|(_, a)| a).collect();
        for a in &left {
            self.ctx.store.close_episode(
                a.id,
                crate::store::EpisodeEnd {
                    ended_at_ms: a.last_ms,
                    end_reason: EndReason::CollectorRestart.id().to_string(),
                    duration_ms: u64::try_from(a.last_ms - a.started_at_ms).unwrap_or(0),
                },
            );
        }
        left.len()
    }

    /// Whether the matcher is replaying what another already judged: its
    /// episodes are counted as opened only once it is not.
    pub fn replaying(&mut self, replaying: bool) {
        self.ctx.replaying = replaying;
    }

    /// Handles one message at collector wall time `now_ms`.
    pub fn handle(&mut self, msg: ToMatcher, now_ms: i64) {
        match msg {
            ToMatcher::HostUp {
                host,
                session,
                name,
                addresses,
                interval,
                answers_lookups,
                forwards,
                holder: _,
            } => {
                let up = Up {
                    session,
                    interval,
                    answers_lookups,
                    forwards,
                };
                self.host_up(host, up, name, &addresses, now_ms)
            }
            ToMatcher::HostDown { host } => self.host_down(host, now_ms),
            ToMatcher::Addresses {
                host,
                session,
                addresses,
            } => self.host_addresses(host, session, &addresses),
            ToMatcher::Batch {
                host,
                session,
                taken_ms,
                batch,
            } => {
                // Only of the host's stream now: an older one's are stale.
                if self.ctx.up.get(&host).is_some_and(|u| u.session == session) {
                    self.batch(host, taken_ms, batch, now_ms);
                }
            }
            ToMatcher::Unsent { host, flow } => self.ctx.unsent(host, flow),
        }
    }

    /// Answers one question at collector wall time `now_ms`.
    pub fn answer(&mut self, q: Question, now_ms: i64) {
        match q {
            Question::Flow { flow, reply } => {
                let _ = reply.send(self.flow(flow, now_ms));
            }
            Question::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Question::HeldPending { filter, reply } => {
                let _ = reply.send(self.held_pending(&filter));
            }
            Question::Reload {
                threshold,
                watch_peer_after,
                max_samples,
            } => {
                self.threshold = threshold;
                self.ctx.watch_peer_after = watch_peer_after;
                self.ctx.max_samples = max_samples;
            }
        }
    }

    pub fn stats(&self) -> Stats {
        let ctx = &self.ctx;
        Stats {
            tracked_bytes: self.tracked_bytes(),
            suspects: self.table.len(),
            tracks: self.table.len(),
            watched: ctx.watched.len(),
            open_episodes: ctx.open_episodes,
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

    /// A host's agent said hello: its addresses are its own from now on,
    /// and what it was asked to watch before it went away is asked again.
    fn host_up(
        &mut self,
        host: HostId,
        up: Up,
        name: String,
        addresses: &[NamespaceAddresses],
        now_ms: i64,
    ) {
        let ctx = &mut self.ctx;
        ctx.names.insert(host, name.into());
        ctx.translators.retain(|&h| h != host);
        if up.forwards && up.answers_lookups {
            ctx.translators.push(host);
        }
        ctx.up.insert(host, up);
        ctx.announce(host, addresses);
        let again: Vec<Tuple> = ctx
            .watched
            .keys()
            .filter(|(h, _)| *h == host)
            .map(|(_, flow)| *flow)
            .collect();
        for flow in again {
            if let Some(w) = ctx.watched.get_mut(&(host, flow)) {
                w.asked_at_ms = None;
            }
            ctx.ask_again(host, flow, now_ms);
        }
    }

    /// A host's agent announced its addresses anew on its stream
    /// `session`: they replace what it owned (its Hello's, or its last
    /// announcement's), unless that stream is no longer the host's (as its
    /// batches are then stale). Suspects whose peer's address changed
    /// owners find them again at their next sample.
    fn host_addresses(&mut self, host: HostId, session: u64, addresses: &[NamespaceAddresses]) {
        let ctx = &mut self.ctx;
        if ctx.up.get(&host).is_none_or(|u| u.session != session) {
            ctx.stats.addresses_stale += 1;
            return;
        }
        ctx.stats.addresses_applied += 1;
        let changed = ctx.announce(host, addresses);
        tracing::debug!(host = %ctx.name(host), addresses = addresses.len(), changed, "addresses announced");
    }

    /// A host's stream ended: its suspects end with their episodes, and
    /// with them the watches they had asked of other hosts.
    fn host_down(&mut self, host: HostId, now_ms: i64) {
        let ctx = &mut self.ctx;
        if ctx.up.remove(&host).is_none() {
            return;
        }
        ctx.translators.retain(|&h| h != host);
        ctx.disown_all(host);
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

    /// Ends what agents stopped reporting without a word (a lost message):
    /// suspects silent for `polls` of their agent's polls.
    pub fn expire(&mut self, now_ms: i64, polls: u32) {
        self.expire_by(|_| Some(now_ms), polls);
        self.store_held(now_ms, false);
    }

    /// As [`Matcher::expire`], each host's suspects judged at that host's
    /// own time `now_of(host)` (`None`: not judged now). Fleet mode judges
    /// a host's silence by the host's later polls, so that a pause of the
    /// bus between the nodes is nobody's silence.
    pub fn expire_by(&mut self, now_of: impl Fn(HostId) -> Option<i64>, polls: u32) {
        let silence: Map<HostId, i64> = self
            .ctx
            .up
            .iter()
            .map(|(h, u)| (*h, millis_i64(u.interval * polls)))
            .collect();
        let default = millis_i64(DEFAULT_INTERVAL * polls);
        let stale: Vec<(HostId, Tuple, u64, Duration, i64)> = self
            .table
            .iter()
            .filter_map(|((h, flow), e)| {
                let now_ms = now_of(*h)?;
                let silent = now_ms - e.suspect.latest_at_ms
                    > silence.get(h).copied().unwrap_or(default);
                silent.then(|| (*h, *flow, e.track.cookie(), e.track.last(), now_ms))
            })
            .collect();
        for (host, flow, cookie, mono, now_ms) in stale {
            tracing::debug!(host = %self.ctx.name(host), cookie, "suspect went silent");
            self.close(host, flow, cookie, mono, now_ms);
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
    fn held_pending(&self, filter: &HeldFilter) -> Vec<HeldRow> {
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
}

/// Runs the matcher until `stop` fires or every sender is gone: messages
/// and questions as they come, and once a second the expiry of what went
/// silent.
pub async fn run(
    mut matcher: Matcher,
    mut inbox: mpsc::Receiver<ToMatcher>,
    mut questions: mpsc::Receiver<Question>,
    mut stop: oneshot::Receiver<()>,
    clock: Clock,
) {
    let now_ms = move || clock.now_ms();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = inbox.recv() => match msg {
                Some(msg) => matcher.handle(msg, now_ms()),
                None => break,
            },
            Some(q) = questions.recv() => matcher.answer(q, now_ms()),
            _ = tick.tick() => matcher.expire(now_ms(), SILENT_POLLS),
            _ = &mut stop => break,
        }
    }
    // The minute in progress too: nothing counted is lost at shutdown.
    matcher.store_held(now_ms(), true);
}
