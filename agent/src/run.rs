//! `tcpstall-agent run`: poll every interval, decide what is worth sending,
//! and stream it to the collector.
//!
//! One task owns all the agent's state (the poller, the [`Selector`], the
//! [`Outbox`] and the current stream) and `select!`s over the poll timer,
//! the link's events, room on the stream, and shutdown. The poll itself
//! runs on the blocking pool (the netlink socket is blocking): the state
//! moves there for the poll and comes back with its result. The link task
//! ([`crate::uplink`]) owns the connection and reports to this one.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tcpstall_common::{AbsoluteSeq, AgentBatch, SampleReason, ToCollector};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::diag::ExactId;
use crate::hello::Identity;
use crate::metrics::{AgentMetrics, PollFigures};
use crate::netns::Netns;
use crate::outbox::Outbox;
use crate::poll::Poller;
use crate::probe::filter::Wants;
use crate::probe::{ProbeStatus, Probes};
use crate::suspects::{Selection, Selector};
use crate::translate::Translator;
use crate::uplink::{self, LinkConfig, LinkEvent, Lost};

/// Most entries (samples, closed, absent, lookups) in one batch, whatever
/// `--batch-max` says: the guard below the collector's default
/// `max_batch_samples` (50,000), beyond which it refuses a batch.
pub const MAX_BATCH_ENTRIES: usize = 8192;
/// Entries in one batch by default (`--batch-max`).
pub const DEFAULT_BATCH_MAX: usize = 128;
/// Link events queued for the run loop.
const EVENT_QUEUE: usize = 256;

/// Everything `run` needs, resolved.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The collectors' URLs (at least one); the link streams to one of
    /// them at a time ([`crate::collectors`]).
    pub collectors: Vec<String>,
    /// TLS settings for https:// collectors.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub host: String,
    /// This machine's stable identity, sent beside `host`.
    pub machine_id: Option<tcpstall_common::MachineId>,
    pub interval: Duration,
    pub namespaces: Vec<Netns>,
    /// The host's own namespace: where containers' connections are
    /// translated, and whose forwarding the Hello reports.
    pub host_netns: Netns,
    /// Polls kept while cut off.
    pub buffer: usize,
    /// Most entries in one batch; a poll's selection is split into as
    /// many batches as it takes.
    pub batch_max: usize,
    pub backoff_max: Duration,
    /// Serve Prometheus metrics here (`GET /metrics`); off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    /// How often held suspects are asked for alone between polls; never
    /// when `None`.
    pub follow: Option<Duration>,
    /// Most held suspects asked for at each follow.
    pub follow_max: usize,
    /// What of owners' command lines is sent.
    pub scrubber: crate::probe::scrub::Scrubber,
    /// Whether the poll's first phase may run in the kernel (BPF) where
    /// the host allows it.
    pub kernel_filter: bool,
}

/// `poller` with the poll's first phase in the kernel where the BPF filter
/// loads (and `enabled`); otherwise as it is, saying why.
fn with_kernel_filter(poller: Poller, enabled: bool) -> Poller {
    if !enabled {
        tracing::info!("kernel filter off (--no-kernel-filter): every poll dumps with sock_diag");
        return poller;
    }
    match crate::probe::filter::KernelFilter::load() {
        Ok(f) => {
            tracing::info!("kernel filter loaded: each poll's first phase runs in the kernel");
            poller.with_filter(f)
        }
        Err(e) => {
            tracing::info!(reason = %e, "kernel filter not loaded: every poll dumps with sock_diag");
            poller
        }
    }
}

/// The agent's monotonic clock: CLOCK_MONOTONIC, the clock `mono_us` and
/// `unchanged_ms` are measured on.
pub fn monotonic() -> Duration {
    static START: OnceLock<(Instant, Duration)> = OnceLock::new();
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => Duration::from(ts),
        // Never seen; keep counting from the process's own clock.
        Err(_) => {
            let (at, base) = START.get_or_init(|| (Instant::now(), Duration::ZERO));
            *base + at.elapsed()
        }
    }
}

/// The agent's clock at `t`. `std::time::Instant` reads CLOCK_MONOTONIC
/// too; one anchor taken at the first call converts between them, so that
/// instants a given time apart are exactly that far apart on this clock.
pub fn mono_at(t: Instant) -> Duration {
    static ANCHOR: OnceLock<(Instant, Duration)> = OnceLock::new();
    let (at, mono) = *ANCHOR.get_or_init(|| (Instant::now(), monotonic()));
    match t.checked_duration_since(at) {
        Some(after) => mono + after,
        None => mono.saturating_sub(at - t),
    }
}

/// What the poll thread holds.
#[derive(Debug)]
struct PollState {
    poller: Poller,
    probes: Probes,
    namespaces: Vec<Netns>,
    selector: Selector,
    translator: Translator,
    inode_by_label: HashMap<String, u64>,
    follow_max: usize,
    /// What the kernel filter must let through, refilled each poll.
    kernel_wants: Wants,
}

/// One poll's result.
#[derive(Debug)]
struct Polled {
    selection: Selection,
    mono: Duration,
    failures: Vec<String>,
    /// How long the poll took, and what it counted, for the metrics.
    took: Duration,
    figures: PollFigures,
}

/// One follow's result.
#[derive(Debug)]
struct Followed {
    selection: Selection,
    mono: Duration,
    failures: Vec<String>,
    /// Sockets asked for, and held suspects left for the next poll.
    requests: usize,
    skipped: usize,
}

impl PollState {
    /// Polls for the tick that was due at `tick`.
    fn poll(&mut self, tick: Instant) -> Polled {
        // The poll's time is when its tick was due (the dump follows at
        // once): ticks are exactly an interval apart, so a queue stuck for
        // six 500 ms polls reads exactly 3 s, never a little short of it
        // because the runtime got to one poll a little late (which would
        // delay its episode by a whole interval).
        let mono = mono_at(tick);
        let started = Instant::now();
        // Only the sockets the selector may send, read in full; the dump
        // also counts who holds the endpoints of watched flows not found.
        let selector = &self.selector;
        let endpoints = self.translator.endpoints(selector.unmatched_watches());
        // Where the first phase runs in the kernel, what it must let
        // through besides a send queue.
        if self.poller.filtered() {
            selector.kernel_wants(&mut self.kernel_wants);
            self.kernel_wants.endpoints.clear();
            self.kernel_wants.endpoints.extend(endpoints.locals());
        }
        let (samples, ids, connections, failures) =
            self.poller
                .poll_filtered_ids(&self.kernel_wants, |netns, b| {
                    endpoints.see(b);
                    selector.wants(netns, b)
                });
        let failed: Vec<u64> = failures
            .iter()
            .filter_map(|f| self.inode_by_label.get(&f.label).copied())
            .collect();
        let mut selection = self
            .selector
            .select_wanted(samples, ids, connections, &failed, mono);
        self.translator.poll(&mut selection, failures.is_empty());
        // The deeper probes, for what is sent only (issue 6): a poll with
        // nothing to send costs no BPF pass.
        if !selection.samples.is_empty() {
            for (label, e) in self.probes.pass(&self.namespaces) {
                tracing::warn!(netns = %label, error = %e, "BPF probe pass failed");
            }
        }
        for (reason, s) in selection.samples.iter_mut() {
            let suspect = *reason == SampleReason::Suspect && s.pos.sendq > 0;
            let flags = self.probes.flags(s.cookie, s.inode, suspect);
            s.cork = flags.map(|f| f.cork);
            s.nodelay = flags.map(|f| f.nodelay);
            s.cork_source = flags.map(|f| f.source);
            s.nodelay_source = s.cork_source;
            s.absolute = self
                .probes
                .bpf(s.cookie)
                .map(|k| Box::new(AbsoluteSeq::from_kernel(k, s.opened)));
            (s.owner, s.owner_missing) = match self.probes.owner(s.inode) {
                Ok(o) => (Some(Box::new(o)), None),
                Err(why) => (None, Some(why)),
            };
        }
        let figures = PollFigures {
            connections: selection.connections,
            suspects: selection
                .samples
                .iter()
                .filter(|(r, _)| *r == SampleReason::Suspect)
                .count(),
            watched: self.selector.watched(),
            failed_namespaces: failures.len(),
            parse: self.poller.stats().parse,
            filtered: self.poller.stats().filtered,
            filter_failures: self.poller.stats().filter_failures,
        };
        Polled {
            selection,
            mono,
            failures: failures.iter().map(|f| format!("{f:#}")).collect(),
            took: started.elapsed(),
            figures,
        }
    }

    /// Follows the held suspects for the tick that was due at `tick`: asks
    /// the kernel for each alone (the longest held first, at most
    /// `follow_max`), and releases or closes those whose hold ended. A
    /// follow with no suspect to ask for costs nothing.
    fn follow(&mut self, tick: Instant) -> Followed {
        let mono = mono_at(tick);
        let held = self.selector.suspects();
        let mut followed = self.selector.followed(self.follow_max);
        let requests = followed.len();
        // One exact request per socket, grouped by namespace.
        followed.sort_by_key(|f| f.netns);
        let mut looks = Vec::with_capacity(requests);
        let mut failures = Vec::new();
        for group in followed.chunk_by(|a, b| a.netns == b.netns) {
            let Some(netns) = group.first().map(|f| f.netns) else {
                continue;
            };
            let ids: Vec<ExactId> = group.iter().map(|f| f.id).collect();
            let res = self.poller.look(netns, &ids, |i, answer| {
                if let Some(f) = group.get(i) {
                    looks.push((f.key, answer));
                }
            });
            if let Err(e) = res {
                failures.push(format!("{}: {e:#}", self.poller.label(netns)));
            }
        }
        let mut selection = self.selector.follow(&looks, mono);
        self.translator.follow(&mut selection);
        Followed {
            selection,
            mono,
            failures,
            requests,
            skipped: held.saturating_sub(requests),
        }
    }
}

/// A poll's selection as batches of at most `max` entries each (and never
/// more than [`MAX_BATCH_ENTRIES`]), all with the poll's `mono` and
/// `connections`; none when there is nothing to send. Nothing is left out.
///
/// The entries go in the order the collector applies a batch's (absent,
/// then samples, then closed), each kind in the selection's order, with
/// the lookups first: what the host knows of an absent flow arrives no
/// later than the absent entry itself. The batches of a poll, applied one
/// after the other, have the effect its single batch had. The selection's
/// entries move into the batches (a selection that fits in one batch is
/// that batch, nothing copied); the loss counters are stamped when a batch
/// leaves the outbox.
pub fn to_batches(sel: Selection, mono: Duration, max: usize) -> Vec<AgentBatch> {
    let max = max.clamp(1, MAX_BATCH_ENTRIES);
    let connections = u32::try_from(sel.connections).unwrap_or(u32::MAX);
    let batch = |lookups, absent, samples, closed| AgentBatch {
        mono,
        connections,
        samples,
        packed: Vec::new(),
        closed,
        absent,
        lookups,
        dropped_batches: 0,
        dropped_samples: 0,
    };
    let total = sel.lookups.len() + sel.absent.len() + sel.samples.len() + sel.closed.len();
    if total == 0 {
        return Vec::new();
    }
    if total <= max {
        return vec![batch(sel.lookups, sel.absent, sel.samples, sel.closed)];
    }
    let mut out = Vec::with_capacity(total.div_ceil(max));
    let (mut lookups, mut absent, mut samples, mut closed) = (
        sel.lookups.into_iter(),
        sel.absent.into_iter(),
        sel.samples.into_iter(),
        sel.closed.into_iter(),
    );
    while lookups.len() + absent.len() + samples.len() + closed.len() > 0 {
        let mut room = max;
        let mut take = |n: usize| {
            let k = n.min(room);
            room -= k;
            k
        };
        let (kl, ka) = (take(lookups.len()), take(absent.len()));
        let (ks, kc) = (take(samples.len()), take(closed.len()));
        out.push(batch(
            lookups.by_ref().take(kl).collect(),
            absent.by_ref().take(ka).collect(),
            samples.by_ref().take(ks).collect(),
            closed.by_ref().take(kc).collect(),
        ));
    }
    out
}

/// The current stream, if any.
#[derive(Debug)]
struct Session {
    id: u64,
    tx: mpsc::Sender<ToCollector>,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(settings: RunSettings, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let labels: Vec<(u64, String)> = settings
        .namespaces
        .iter()
        .map(|ns| (ns.inode, ns.label.clone()))
        .collect();
    let namespaces = settings.namespaces.clone();
    let scrubber = settings.scrubber.clone();
    let host = settings.host_netns.clone();
    let kernel_filter = settings.kernel_filter;
    let (poller, probes, translator) = tokio::task::spawn_blocking(move || {
        let translator = Ok::<_, crate::netns::NetnsError>(Translator::open(&host, &namespaces));
        Poller::new(namespaces)
            .map(|p| with_kernel_filter(p, kernel_filter))
            .and_then(|p| Ok((p, Probes::start_scrubbed(true, scrubber), translator?)))
    })
    .await
    .context("opening sock_diag sockets")??;
    let metrics = Arc::new(AgentMetrics::default());
    metrics.probe("sock_diag", true);
    metrics.probe("owner", probes.owners_on());
    metrics.probe("conntrack", translator.available());
    metrics.translations(&translator.stats());
    for (name, status) in probes.announce() {
        metrics.probe(name, *status == ProbeStatus::Available);
        match status {
            ProbeStatus::Available => tracing::info!(probe = name, "probe available"),
            other => tracing::warn!(probe = name, status = %other, "probe not available"),
        }
    }
    let found = probes.found();
    let mut state = PollState {
        poller,
        probes,
        namespaces: settings.namespaces.clone(),
        selector: Selector::new(labels.iter().cloned()),
        translator,
        inode_by_label: labels.iter().map(|(i, l)| (l.clone(), *i)).collect(),
        follow_max: settings.follow_max,
        kernel_wants: Wants::default(),
    };

    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let (stop_tx, stop_rx) = watch::channel(false);
    let lost = Arc::new(Lost::default());
    // The namespaces' addresses, kept current for the link (it stops
    // following them when the link ends).
    let addresses =
        crate::addresses::follow(settings.namespaces.clone(), settings.interval).await?;
    let link_cfg = LinkConfig {
        collectors: settings.collectors.clone(),
        tls: settings.tls.clone(),
        identity: Identity {
            host: settings.host.clone(),
            machine_id: settings.machine_id.clone(),
            interval: settings.interval,
            probes: found,
            host_netns: settings.host_netns.clone(),
        },
        addresses,
        backoff_max: settings.backoff_max,
        metrics: metrics.clone(),
    };
    let metrics_server = match settings.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, metrics.clone(), stop_rx.clone()).await?),
        None => None,
    };
    let link = tokio::spawn(uplink::run(link_cfg, events_tx, lost.clone(), stop_rx));
    tracing::info!(
        host = %settings.host,
        collectors = ?settings.collectors,
        interval_ms = settings.interval.as_millis() as u64,
        namespaces = settings.namespaces.len(),
        buffer = settings.buffer,
        batch_max = settings.batch_max,
        follow_ms = settings.follow.map_or(0, |f| f.as_millis() as u64),
        "agent running"
    );

    let mut outbox = Outbox::new(
        settings.buffer,
        settings.buffer.saturating_mul(MAX_BATCH_ENTRIES),
    );
    let mut session: Option<Session> = None;
    // Streams opened so far (all but the first are reconnections), and
    // the latest one's session id.
    let mut streams = 0u64;
    let mut latest = 0u64;
    // Drops since the stream was last up, for the log.
    let mut outage_drops = 0u64;
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut follow_failing = false;
    // Whether a suspect is held, as of the last poll or follow (the only
    // steps that change it).
    let mut held = false;
    // Following: a timer that only runs while a suspect is held.
    let mut follower = settings.follow.map(|every| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(MissedTickBehavior::Skip);
        t
    });
    tokio::pin!(shutdown);

    loop {
        metrics.outbox(outbox.len(), outbox.dropped());
        let sender = session
            .as_ref()
            .filter(|_| !outbox.is_empty())
            .map(|s| s.tx.clone());
        let room = async move {
            match sender {
                Some(tx) => tx.reserve_owned().await.ok(),
                None => std::future::pending().await,
            }
        };
        let follow_tick = async {
            match follower.as_mut() {
                Some(t) if held => t.tick().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            tick = follow_tick => {
                let tick = tick.into_std();
                let (back, followed) = on_poll_thread(state, move |s| s.follow(tick)).await?;
                state = back;
                held = state.selector.suspects() > 0;
                metrics.followed(followed.requests, followed.skipped);
                metrics.translations(&state.translator.stats());
                metrics.held_ended(followed.selection.ended().map(|h| &h.end));
                // Said once when following fails, and once when it works
                // again: it runs four times a second or more.
                match (followed.failures.first(), follow_failing) {
                    (Some(failure), false) => {
                        tracing::warn!(error = %failure, "following held suspects failed; their ends are known at polls until it works again");
                        follow_failing = true;
                    }
                    (None, true) => {
                        tracing::info!("following held suspects works again");
                        follow_failing = false;
                    }
                    _ => {}
                }
                if followed.selection.is_empty() {
                    continue;
                }
                let batches = to_batches(followed.selection, followed.mono, settings.batch_max);
                if outbox.push_poll(batches).is_some() {
                    outage_drops += 1;
                }
            }
            tick = ticker.tick() => {
                let tick = tick.into_std();
                let (back, polled) = on_poll_thread(state, move |s| s.poll(tick)).await?;
                state = back;
                held = state.selector.suspects() > 0;
                metrics.poll_duration.observe(polled.took);
                metrics.polled(&polled.figures);
                metrics.translations(&state.translator.stats());
                metrics.held_ended(polled.selection.ended().map(|h| &h.end));
                for failure in &polled.failures {
                    tracing::warn!(error = %failure, "namespace not polled");
                }
                let (b, s) = lost.take();
                outbox.count_lost(b, usize::try_from(s).unwrap_or(usize::MAX));
                if polled.selection.is_empty() {
                    // Heartbeats say "alive, nothing to send": only worth
                    // sending when nothing else is waiting.
                    if let Some(s) = session.as_ref().filter(|_| outbox.is_empty()) {
                        let connections = u32::try_from(polled.selection.connections).unwrap_or(u32::MAX);
                        let hb = outbox.heartbeat(polled.mono, connections);
                        if let Err(mpsc::error::TrySendError::Closed(_)) = s.tx.try_send(ToCollector::Heartbeat(hb)) {
                            session = None;
                        }
                    }
                    continue;
                }
                let batches = to_batches(polled.selection, polled.mono, settings.batch_max);
                if let Some(evicted) = outbox.push_poll(batches) {
                    outage_drops += 1;
                    let dropped = outbox.dropped();
                    if outage_drops == 1 {
                        tracing::warn!(
                            buffer = settings.buffer,
                            batches = evicted.batches,
                            samples = evicted.samples,
                            dropped_batches = dropped.batches,
                            dropped_samples = dropped.samples,
                            "buffer full: dropping the oldest batch"
                        );
                    } else {
                        tracing::debug!(
                            batches = evicted.batches,
                            samples = evicted.samples,
                            dropped_batches = dropped.batches,
                            dropped_samples = dropped.samples,
                            "buffer full: dropping the oldest batch"
                        );
                    }
                }
            }
            permit = room => match permit {
                Some(permit) => {
                    let (b, s) = lost.take();
                    outbox.count_lost(b, usize::try_from(s).unwrap_or(usize::MAX));
                    if let Some(batch) = outbox.pop() {
                        permit.send(ToCollector::Batch(batch));
                    }
                }
                // The stream let go; its Down event follows.
                None => session = None,
            },
            event = events.recv() => match event {
                Some(LinkEvent::Up { session: id, tx }) => {
                    let dropped = outbox.dropped();
                    tracing::info!(
                        session = id,
                        buffered = outbox.len(),
                        dropped_while_cut_off = outage_drops,
                        dropped_batches = dropped.batches,
                        dropped_samples = dropped.samples,
                        "connected: sending the buffered batches"
                    );
                    outage_drops = 0;
                    session = Some(Session { id, tx });
                    streams += 1;
                    latest = id;
                    metrics.link(true, streams > 1);
                }
                Some(LinkEvent::Down { session: id }) => {
                    if session.as_ref().is_some_and(|s| s.id == id) {
                        session = None;
                    }
                    if id == latest {
                        metrics.link(false, false);
                    }
                    // Watches and Translate requests belong to the stream
                    // that asked for them.
                    let watched = state.selector.watched();
                    state.selector.clear_watches();
                    let unanswered = state.translator.forget_stream();
                    tracing::warn!(
                        session = id,
                        buffered = outbox.len(),
                        buffer = settings.buffer,
                        watches_dropped = watched,
                        translate_requests_dropped = unanswered,
                        "cut off from the collector: buffering batches"
                    );
                }
                Some(LinkEvent::Watch(flow)) => {
                    if !state.selector.watch(flow) {
                        tracing::warn!(%flow, max = crate::suspects::MAX_WATCHED, "too many watched flows; watch refused");
                    }
                }
                Some(LinkEvent::Unwatch(flow)) => state.selector.unwatch(&flow),
                Some(LinkEvent::Translate(flow)) => {
                    if !state.translator.ask(flow) {
                        // Said at the 1st, 2nd, 4th, 8th... drop.
                        let dropped = state.translator.stats().asked_dropped;
                        if dropped.is_power_of_two() {
                            tracing::warn!(%flow, dropped, max = crate::translate::MAX_ASKED, "too many Translate requests waiting; request dropped");
                        }
                    }
                }
                None => anyhow::bail!("the link to the collector stopped"),
            },
        }
    }

    tracing::info!(buffered = outbox.len(), "shutting down");
    let _ = stop_tx.send(true);
    // Our side of the stream ends when its last sender goes.
    drop(session);
    match tokio::time::timeout(uplink::CLOSE_GRACE + Duration::from_secs(1), link).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "the link task failed"),
        Err(_) => tracing::warn!("the link did not close in time"),
    }
    drop(events);
    if let Some(server) = metrics_server {
        // It stops with the same signal as the link.
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
    }
    Ok(())
}

/// Runs `f` on the poll state on the blocking pool (the netlink socket is
/// blocking): the state moves there for the call and comes back with its
/// result.
async fn on_poll_thread<T: Send + 'static>(
    mut state: PollState,
    f: impl FnOnce(&mut PollState) -> T + Send + 'static,
) -> anyhow::Result<(PollState, T)> {
    tokio::task::spawn_blocking(move || {
        let out = f(&mut state);
        (state, out)
    })
    .await
    .context("the poll thread failed")
}

/// Binds `addr` and serves the agent's metrics there until `stop`.
async fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: listening on {addr}"))?;
    let local = listener.local_addr().context("metrics: local address")?;
    // Tests read this line to learn the port of --metrics-listen :0.
    eprintln!("tcpstall-agent metrics on http://{local}/metrics");
    let render = move || {
        let metrics = metrics.clone();
        async move { Ok(metrics.render()) }
    };
    let stopped = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    Ok(tokio::spawn(tcpstall_prom::serve(
        listener, render, stopped,
    )))
}

#[cfg(test)]
pub(crate) mod tests;
