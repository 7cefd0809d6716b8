//! Fleet mode: several collector nodes, each running the three roles, with
//! the seams between the roles crossing NATS JetStream. docs/fleet.md
//! draws it.
//!
//! - Every node's gateway serves the agents that reach it; its [`edge`]
//!   publishes each batch's parts to their partitions on the samples
//!   stream (a flow's partition is decided by its direction-free key:
//!   both ends, and a translated end's far side, land in one), keeps its
//!   hosts' records in the hosts bucket, and forwards the requests that
//!   arrive on its hosts' subjects to their streams.
//! - Every node judges the partitions it holds a lease on ([`leases`]):
//!   one matcher per partition ([`partition`]), the same as single-node
//!   mode's, fed from the partition's subject and the fleet's hosts
//!   ([`hosts`]), asking watches of hosts through NATS.
//! - The store is shared (PostgreSQL): episodes are numbered by their
//!   identity, so a partition replayed by its next owner stores nothing
//!   twice.
//!
//! Nothing here is a cluster protocol of its own: the stream, the buckets'
//! compare-and-set and their age limits are NATS's.

pub mod assign;
pub mod edge;
pub mod hosts;
pub mod leases;
pub mod partition;
pub mod publisher;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, stream};
use tcpstall_common::Clock;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::gateway::registry::Hosts;
use crate::matcher::{FlowView, Question, Stats};
use crate::messages::{partition as partition_of, ToGateway, ToMatcher};
use crate::store::SharedStore;

/// The connection and the stream and buckets fleet mode uses.
#[derive(Debug, Clone)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub hosts: kv::Store,
    pub nodes: kv::Store,
    pub leases: kv::Store,
}

/// Fleet mode's settings (from the collector's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// NATS servers' URLs.
    pub nats: Vec<String>,
    /// This node's name in the fleet (unique).
    pub node: String,
    /// Partitions of the flows' key space (the same on every node).
    pub partitions: u32,
    /// Copies JetStream keeps of the stream and the buckets.
    pub replicas: usize,
    /// How long a lease lasts unrenewed: a dead node's partitions are
    /// taken within it (and a round).
    pub lease: Duration,
    /// How much of each partition the stream keeps for a new owner.
    pub replay: Duration,
    /// CA certificates to trust for the servers (TLS required when set).
    pub tls_ca: Option<std::path::PathBuf>,
    /// A file holding the servers' token.
    pub token_file: Option<std::path::PathBuf>,
}

/// How the partitions' matchers judge (reloadable settings among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judging {
    pub threshold: Duration,
    pub watch_peer_after: Option<Duration>,
    pub max_samples: usize,
    /// Most entries a batch part may hold (the agents' batch bound).
    pub max_entries: usize,
}

/// How long a live view asked of another node may take.
const FLOW_WAIT: Duration = Duration::from_secs(3);

/// Requests of the partitions' matchers queued for NATS.
const REQUESTS: usize = 16 * 1024;
/// Requests of one partition's matcher queued for the router (its matcher
/// counts and asks again what does not fit).
const PARTITION_REQUESTS: usize = 4 * 1024;

/// Connects to NATS and makes sure the stream and the buckets exist, with
/// the fleet's shared settings agreed.
pub async fn connect(s: &Settings) -> anyhow::Result<Bus> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("tcpstall-collector {}", s.node))
        .connection_timeout(Duration::from_secs(5));
    if let Some(ca) = &s.tls_ca {
        // Read here, so that a missing file names its setting (the client
        // would only say it failed to connect).
        std::fs::metadata(ca)
            .with_context(|| format!("nats_tls_ca (--nats-tls-ca) {}", ca.display()))?;
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some(file) = &s.token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("nats_token_file (--nats-token-file) {}", file.display()))?;
        let token = token.trim().to_string();
        if token.is_empty() {
            anyhow::bail!("nats_token_file (--nats-token-file) {} is empty", file.display());
        }
        options = options.token(token);
    }
    // Nodes started together with their NATS servers may find none
    // listening yet, or ask before JetStream has a metadata leader, or
    // while a replicated stream is still being placed: such an answer is
    // a wait, not a refusal. A fleet whose settings differ from this
    // node's is a refusal.
    let deadline = tokio::time::Instant::now() + SETUP_PATIENCE;
    let mut backoff = tcpstall_common::backoff::Backoff::new(
        Duration::from_millis(250),
        Duration::from_secs(5),
    );
    let client = loop {
        match async_nats::connect_with_options(s.nats.clone(), options.clone()).await {
            Ok(client) => break client,
            Err(e) => {
                // Nobody listening (yet) is worth waiting for; a refused
                // token or certificate is not.
                let again = matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::TimedOut
                );
                let e = anyhow::Error::new(e)
                    .context(format!("connecting to NATS at {}", s.nats.join(", ")));
                if !again {
                    return Err(e);
                }
                wait_again(&mut backoff, deadline, e, "NATS not reachable").await?;
            }
        }
    };
    let js = jetstream::new(client.clone());
    loop {
        match prepare(&client, &js, s).await {
            Ok(bus) => return Ok(bus),
            Err(Setup::Refused(e)) => return Err(e),
            Err(Setup::NotYet(e)) => {
                wait_again(&mut backoff, deadline, e, "JetStream not ready").await?;
            }
        }
    }
}

/// Waits the next backoff before another try after `e` (said as `what`),
/// or gives `e` back when that would pass `deadline`.
async fn wait_again(
    backoff: &mut tcpstall_common::backoff::Backoff,
    deadline: tokio::time::Instant,
    e: anyhow::Error,
    what: &str,
) -> anyhow::Result<()> {
    let wait = backoff.next_delay();
    if tokio::time::Instant::now() + wait > deadline {
        return Err(e.context(format!("{what} after {} s", SETUP_PATIENCE.as_secs())));
    }
    tracing::warn!(error = %format!("{e:#}"), "{what}; trying again in {wait:?}");
    tokio::time::sleep(wait).await;
    Ok(())
}

/// How long a starting node waits for JetStream to take its stream and
/// buckets before it gives up.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

enum Setup {
    /// Worth asking again (no leader yet, a timeout, a stream being placed).
    NotYet(anyhow::Error),
    /// Asking again will not help.
    Refused(anyhow::Error),
}

impl From<anyhow::Error> for Setup {
    fn from(e: anyhow::Error) -> Setup {
        Setup::NotYet(e)
    }
}

impl From<serde_json::Error> for Setup {
    fn from(e: serde_json::Error) -> Setup {
        Setup::Refused(e.into())
    }
}

/// Makes sure the stream and the buckets exist and the fleet's shared
/// settings agree with this node's.
async fn prepare(
    client: &async_nats::Client,
    js: &jetstream::Context,
    s: &Settings,
) -> Result<Bus, Setup> {
    js.get_or_create_stream(stream::Config {
        name: wire::STREAM.to_string(),
        subjects: vec![wire::SAMPLES_SUBJECTS.to_string()],
        max_age: s.replay,
        num_replicas: s.replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .with_context(|| {
        format!(
            "the samples stream {} (replicas {})",
            wire::STREAM,
            s.replicas
        )
    })?;
    // A bucket is a stream of its own: made here as the KV API would make
    // it, since the client's own bucket creation asks the account's
    // limits first in a form NATS 2.9 answers differently.
    let open = |name: &'static str, max_age: Duration| {
        let js = js.clone();
        let replicas = s.replicas;
        async move {
            js.get_or_create_stream(stream::Config {
                name: format!("KV_{name}"),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age,
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("the bucket {name} (replicas {replicas})"))?;
            js.get_key_value(name)
                .await
                .with_context(|| format!("the bucket {name}"))
        }
    };
    // A host record lives three leases unrenewed before the bucket drops
    // it (the hosts' view judges it gone after one).
    let hosts = open(wire::HOSTS, 3 * s.lease).await?;
    let nodes = open(wire::NODES, s.lease).await?;
    let leases = open(wire::LEASES, s.lease).await?;
    let fleet = open(wire::FLEET, Duration::ZERO).await?;
    let shared = wire::Shared {
        partitions: s.partitions,
    };
    let mine = serde_json::to_vec(&shared)?;
    if fleet.create("shared", mine.into()).await.is_err() {
        let entry = fleet
            .entry("shared")
            .await
            .context("reading the fleet's settings")?
            .context("the fleet's settings vanished")?;
        let theirs: wire::Shared = serde_json::from_slice(&entry.value)
            .context("the fleet's settings")
            .map_err(Setup::Refused)?;
        if theirs != shared {
            return Err(Setup::Refused(anyhow::anyhow!(
                "partitions: this node has {}, the fleet on these NATS servers {}; every node \
                 must have the same (the setting `partitions`)",
                shared.partitions,
                theirs.partitions
            )));
        }
    }
    Ok(Bus {
        client: client.clone(),
        js: js.clone(),
        hosts,
        nodes,
        leases,
    })
}

/// What fleet mode counts (read by /metrics).
#[derive(Debug, Default)]
pub struct FleetStats {
    pub edge: edge::EdgeStats,
    pub leases: leases::LeaseStats,
    pub partitions: partition::PartitionStats,
    /// Hosts alive in the fleet (the hosts bucket's view).
    pub hosts: std::sync::atomic::AtomicU64,
}

/// A running node's fleet side.
#[derive(Debug)]
pub struct Node {
    /// Questions for the matchers of this node's partitions.
    pub questions: mpsc::Sender<Question>,
    /// The fleet's hosts alive now.
    pub view: watch::Receiver<Arc<hosts::View>>,
    pub name: String,
    /// Set as the node begins to stop (before its agents' streams end).
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    pub stats: Arc<FleetStats>,
    stop_leases: oneshot::Sender<()>,
    tasks: Vec<JoinHandle<()>>,
    leases: JoinHandle<()>,
}

impl Node {
    /// Starts the node's fleet side: the edge reading what the gateway and
    /// the streams send (`from_gateway`) and handing requests to the
    /// gateway (`to_gateway`), the hosts' view, the leases and the
    /// partitions they give.
    pub fn start(
        bus: Bus,
        settings: &Settings,
        judging: Judging,
        store: SharedStore,
        clock: Clock,
        from_gateway: mpsc::Receiver<ToMatcher>,
        to_gateway: mpsc::Sender<ToGateway>,
    ) -> Node {
        let stats = Arc::new(FleetStats::default());
        let salt = session_salt(&settings.node);
        let mut tasks = Vec::new();
        let edge_stats = stats.clone();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let edge = edge::Edge {
            node: settings.node.clone(),
            partitions: settings.partitions,
            renew_every: settings.lease / 3,
            session_salt: salt,
            stopping: stopping.clone(),
        };
        tasks.push(tokio::spawn(edge::run(
            bus.clone(),
            edge,
            from_gateway,
            to_gateway,
            edge_stats,
        )));
        let (view_tx, view_rx) = watch::channel(Arc::new(hosts::View::default()));
        let view_for_node = view_rx.clone();
        tasks.push(tokio::spawn(hosts::run(
            bus.clone(),
            settings.lease,
            view_tx,
            stats.clone(),
        )));
        let names = Arc::new(Mutex::new(Hosts::default()));
        let (requests_tx, requests_rx) = mpsc::channel(REQUESTS);
        tasks.push(tokio::spawn(route_requests(
            bus.clone(),
            names.clone(),
            requests_rx,
        )));
        let judging = Arc::new(Mutex::new(judging));
        let owned: leases::Owned = Arc::new(RwLock::new(HashMap::new()));
        let spawn: leases::Spawn = {
            let bus = bus.clone();
            let stats = stats.clone();
            let judging = judging.clone();
            let partitions = settings.partitions;
            Box::new(move |p, questions, stop| {
                // The partition's requests, tagged with it on their way.
                let (requests, mut asked) = mpsc::channel(PARTITION_REQUESTS);
                let router = requests_tx.clone();
                tokio::spawn(async move {
                    while let Some(r) = asked.recv().await {
                        if router.send((p, r)).await.is_err() {
                            return;
                        }
                    }
                });
                let part = partition::Partition {
                    p,
                    partitions,
                    bus: bus.clone(),
                    store: store.clone(),
                    names: names.clone(),
                    requests,
                    view: view_rx.clone(),
                    judging: judging.lock().map_or_else(|e| *e.into_inner(), |j| *j),
                    clock: clock.clone(),
                    fleet: stats.clone(),
                };
                tokio::spawn(partition::run(part, questions, stop))
            })
        };
        let (stop_leases, leases_stopped) = oneshot::channel();
        let lease_loop = leases::Leases {
            bus: bus.clone(),
            node: settings.node.clone(),
            partitions: settings.partitions,
            lease: settings.lease,
            spawn,
            owned: owned.clone(),
            fleet: stats.clone(),
        };
        let leases = tokio::spawn(lease_loop.run(leases_stopped));
        let (questions, asked) = mpsc::channel(64);
        tasks.push(tokio::spawn(answer(
            bus.clone(),
            asked,
            owned,
            judging,
            settings.partitions,
        )));
        Node {
            questions,
            view: view_for_node,
            name: settings.node.clone(),
            stopping,
            stats,
            stop_leases,
            tasks,
            leases,
        }
    }

    /// Who holds a host name on another node: for the gateway's
    /// one-machine-per-name decision.
    pub fn elsewhere(&self) -> crate::gateway::Elsewhere {
        let view = self.view.clone();
        let me = self.name.clone();
        crate::gateway::Elsewhere(Box::new(move |name: &str| {
            let view = view.borrow();
            view.hosts
                .get(name)
                .filter(|r| r.node != me)
                .map(|r| r.holder())
        }))
    }

    /// Stops judging (partitions released for the others to take at once),
    /// then the rest.
    pub async fn stop(self) {
        let _ = self.stop_leases.send(());
        let _ = self.leases.await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// This node's sessions are the gateway's numbers mixed with a number of
/// this node's start: unique across the fleet and across restarts.
fn session_salt(node: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node
        .bytes()
        .chain(nanos.to_be_bytes())
        .chain(std::process::id().to_be_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The low bits are the gateway's count: keep them free.
    h << 24
}

/// Publishes the partitions' requests on their hosts' subjects, each
/// saying which partition asked (what the host reports of it goes there).
async fn route_requests(
    bus: Bus,
    names: Arc<Mutex<Hosts>>,
    mut requests: mpsc::Receiver<(u32, ToGateway)>,
) {
    while let Some((p, r)) = requests.recv().await {
        let (host, msg) = match r {
            ToGateway::Watch { host, flow } => (host, tcpstall_common::ToAgent::Watch(flow)),
            ToGateway::Unwatch { host, flow } => (host, tcpstall_common::ToAgent::Unwatch(flow)),
            ToGateway::Translate { host, flow } => {
                (host, tcpstall_common::ToAgent::Translate(flow))
            }
        };
        let Some(name) = names.lock().ok().and_then(|n| n.get(host)) else {
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(wire::H_PARTITION, p.to_string().as_str());
        if let Err(e) = bus
            .client
            .publish_with_headers(wire::host_subject(&name), headers, wire::encode_request(msg))
            .await
        {
            tracing::debug!(host = %name, error = %e, "a request not published (asked again later)");
        }
    }
}

/// Answers this node's questions from its partitions' matchers: counts
/// summed, a flow's view from the partition that holds it, reloads to all.
async fn answer(
    bus: Bus,
    mut asked: mpsc::Receiver<Question>,
    owned: leases::Owned,
    judging: Arc<Mutex<Judging>>,
    partitions: u32,
) {
    let senders = |owned: &leases::Owned| -> Vec<mpsc::Sender<Question>> {
        owned
            .read()
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    };
    while let Some(q) = asked.recv().await {
        match q {
            Question::Stats { reply } => {
                let mut total: Option<Stats> = None;
                for s in senders(&owned) {
                    let (tx, rx) = oneshot::channel();
                    if s.send(Question::Stats { reply: tx }).await.is_err() {
                        continue;
                    }
                    if let Ok(st) = rx.await {
                        total = Some(match total {
                            Some(t) => add(t, &st),
                            None => st,
                        });
                    }
                }
                let _ = reply.send(total.unwrap_or_default());
            }
            Question::Flow { flow, reply } => {
                let p = partition_of(flow.key(), partitions);
                let here = owned.read().ok().and_then(|o| o.get(&p).cloned());
                match here {
                    Some(s) => {
                        let _ = s.send(Question::Flow { flow, reply }).await;
                    }
                    // Judged elsewhere: asked of the node that holds it
                    // (which asks both ends' hosts to watch, through their
                    // nodes).
                    None => {
                        let view = tokio::time::timeout(
                            FLOW_WAIT,
                            bus.client.request(wire::flow_subject(p), wire::encode_flow(flow)),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .and_then(|m| wire::decode_view(&m.payload))
                        .unwrap_or(FlowView { a: None, b: None });
                        let _ = reply.send(view);
                    }
                }
            }
            Question::HeldPending { filter, reply } => {
                let mut rows = Vec::new();
                for s in senders(&owned) {
                    let (tx, rx) = oneshot::channel();
                    let q = Question::HeldPending {
                        filter: filter.clone(),
                        reply: tx,
                    };
                    if s.send(q).await.is_ok() {
                        rows.extend(rx.await.unwrap_or_default());
                    }
                }
                let _ = reply.send(rows);
            }
            Question::Reload {
                threshold,
                watch_peer_after,
                max_samples,
            } => {
                if let Ok(mut j) = judging.lock() {
                    j.threshold = threshold;
                    j.watch_peer_after = watch_peer_after;
                    j.max_samples = max_samples;
                }
                for s in senders(&owned) {
                    let _ = s
                        .send(Question::Reload {
                            threshold,
                            watch_peer_after,
                            max_samples,
                        })
                        .await;
                }
            }
        }
    }
}

/// Two partitions' counts as one node's.
fn add(mut t: Stats, s: &Stats) -> Stats {
    t.suspects += s.suspects;
    t.tracks += s.tracks;
    t.open_episodes += s.open_episodes;
    t.samples += s.samples;
    t.episodes_opened += s.episodes_opened;
    // One store: its count, not a sum.
    t.store_dropped = t.store_dropped.max(s.store_dropped);
    t.requests_dropped += s.requests_dropped;
    t.joined_via_translation += s.joined_via_translation;
    t.translate_asked += s.translate_asked;
    t.translate_skipped += s.translate_skipped;
    t.watched += s.watched;
    for (a, b) in t.open_by_diagnosis.iter_mut().zip(s.open_by_diagnosis) {
        *a += b;
    }
    for (a, b) in t.opened_by_diagnosis.iter_mut().zip(s.opened_by_diagnosis) {
        *a += b;
    }
    t.tracked_bytes += s.tracked_bytes;
    for (a, b) in t.held.by_end.iter_mut().zip(s.held.by_end) {
        for (x, y) in a.counts.iter_mut().zip(b.counts) {
            *x += y;
        }
        a.sum_ms += b.sum_ms;
    }
    t.held.dropped += s.held.dropped;
    t.addresses_applied += s.addresses_applied;
    t.addresses_stale += s.addresses_stale;
    t
}

impl FleetStats {
    /// The fleet's part of /metrics.
    pub fn render(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        use tcpstall_prom::{Exposition, Kind};
        let mut out = Exposition::new();
        let mut one = |name: &str, kind: Kind, help: &str, value: u64| {
            out.single(name, kind, help, value as f64);
        };
        let (e, l, p) = (&self.edge, &self.leases, &self.partitions);
        one("tcpstall_collector_fleet_nodes", Kind::Gauge, "Collector nodes alive in the fleet, as this node saw at its last lease round.", l.nodes.load(Relaxed));
        one("tcpstall_collector_fleet_hosts", Kind::Gauge, "Hosts alive in the fleet (the hosts bucket), on whichever node.", self.hosts.load(Relaxed));
        one("tcpstall_collector_partitions_owned", Kind::Gauge, "Partitions this node judges now (holds the lease of).", l.owned.load(Relaxed));
        one("tcpstall_collector_partitions_taken_total", Kind::Counter, "Partition leases taken: at start, from a dead node, or handed over.", l.taken.load(Relaxed));
        one("tcpstall_collector_partitions_released_total", Kind::Counter, "Partitions handed to another node (a node joined).", l.released.load(Relaxed));
        one("tcpstall_collector_partitions_lost_total", Kind::Counter, "Partitions stopped because their lease could not be renewed.", l.lost.load(Relaxed));
        one("tcpstall_collector_partitions_caught_up_total", Kind::Counter, "Partitions that finished replaying their stream after being taken.", p.caught_up.load(Relaxed));
        one("tcpstall_collector_batch_parts_published_total", Kind::Counter, "Parts of agents' batches published to their partitions and acknowledged by JetStream.", e.parts_published.load(Relaxed));
        one("tcpstall_collector_batch_parts_failed_total", Kind::Counter, "Parts of agents' batches whose publish failed or was not acknowledged: lost.", e.parts_failed.load(Relaxed));
        one("tcpstall_collector_batch_bundles_published_total", Kind::Counter, "Partition messages published and acknowledged: each a bundle of one node's parts for one partition over a few milliseconds.", e.bundles_published.load(Relaxed));
        one("tcpstall_collector_batch_bundles_failed_total", Kind::Counter, "Partition messages whose publish failed or was not acknowledged (their parts are in batch_parts_failed_total).", e.bundles_failed.load(Relaxed));
        one("tcpstall_collector_batch_bundles_read_total", Kind::Counter, "Partition messages (bundles of parts) read by this node's partitions.", p.bundles_read.load(Relaxed));
        one("tcpstall_collector_batch_parts_handled_total", Kind::Counter, "Batch parts handed to this node's matchers.", p.handled.load(Relaxed));
        one("tcpstall_collector_batch_parts_stale_total", Kind::Counter, "Batch parts of a session its host had replaced: skipped.", p.stale.load(Relaxed));
        one("tcpstall_collector_batch_parts_late_total", Kind::Counter, "Batch parts read after a newer one of the same host (a publish retried behind another): skipped.", p.late.load(Relaxed));
        one("tcpstall_collector_batch_parts_malformed_total", Kind::Counter, "Partition messages, or parts in them, that did not decode: counted and skipped.", p.malformed.load(Relaxed));
        one("tcpstall_collector_batch_parts_unknown_host_dropped_total", Kind::Counter, "Batch parts of hosts not (yet) registered, dropped beyond the bound held waiting.", p.waiting_dropped.load(Relaxed));
        one("tcpstall_collector_host_registrations_total", Kind::Counter, "Host records written to the hosts bucket (hellos, new addresses, renewals).", e.host_puts.load(Relaxed));
        one("tcpstall_collector_host_registrations_failed_total", Kind::Counter, "Host records that could not be written (retried at the next renewal).", e.host_put_failures.load(Relaxed));
        one("tcpstall_collector_fleet_requests_forwarded_total", Kind::Counter, "Watch and translate requests for this node's agents received from the matchers of any node.", e.requests_in.load(Relaxed));
        out.family(
            "tcpstall_collector_batch_bundle_bytes_total",
            Kind::Counter,
            "Bytes of the partition messages published and acknowledged: plain (before compression) and as sent to NATS.",
        )
        .sample(&[("form", "plain")], e.bundle_bytes_plain.load(Relaxed) as f64)
        .sample(&[("form", "sent")], e.bundle_bytes_sent.load(Relaxed) as f64);
        out.finish()
    }
}
