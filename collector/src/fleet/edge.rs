//! A node's gateway side in fleet mode: what its agents' streams and its
//! gateway would hand the local matcher goes onto NATS instead.
//!
//! - A batch is cut into its partitions' parts ([`wire::split`]); a
//!   partition's parts, of all this node's hosts, are gathered for at most
//!   [`FLUSH_EVERY`] into a bundle (each part with its host, session and
//!   poll time) published to the partition's subject on the samples
//!   stream, in order ([`super::publisher`]); a node whose NATS is slow
//!   holds its agents' streams back (and they their own bounded buffers)
//!   rather than piling up here.
//! - A host's hello, its new addresses and its going are its record in the
//!   hosts bucket: put, put again every renewal while its stream lasts,
//!   deleted when it goes (unless a newer session elsewhere holds it).
//! - Requests for its hosts' agents arrive on their subjects and go to the
//!   gateway, which hands them to the streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use async_nats::HeaderMap;
use tcpstall_common::{AgentBatch, FlowTuple, ToAgent};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::publisher::Outgoing;
use super::wire::{self, HostRecord};
use super::Bus;
use crate::messages::{partition as partition_of, HostId, ToGateway, ToMatcher};

/// Parts queued for the publisher before the edge waits.
const QUEUED: usize = 1024;

/// What the edge counts (read by /metrics).
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Partition parts published and acknowledged.
    pub parts_published: AtomicU64,
    /// Parts whose publish failed or was not acknowledged (lost: NATS was
    /// unreachable beyond the client's own buffer, or refused them).
    pub parts_failed: AtomicU64,
    /// Partition messages (bundles of parts) published and acknowledged,
    /// and those lost.
    pub bundles_published: AtomicU64,
    pub bundles_failed: AtomicU64,
    /// Bytes of the bundles published, before and after compression.
    pub bundle_bytes_plain: AtomicU64,
    pub bundle_bytes_sent: AtomicU64,
    /// Host records written (hellos, addresses, renewals).
    pub host_puts: AtomicU64,
    pub host_put_failures: AtomicU64,
    /// Requests for this node's agents received from matchers.
    pub requests_in: AtomicU64,
}

/// Which partition asked for what of this node's hosts: a watched flow (as
/// its host sees it) until unwatched, a flow to translate until answered.
type Asked = Arc<std::sync::Mutex<HashMap<(HostId, FlowTuple), u32>>>;

/// Most flows remembered as asked (beyond, a report goes by its own key).
const ASKED: usize = 65_536;
/// Most translated sockets remembered per host (beyond, their closing goes
/// by its own key; the judging partition ends them by silence).
const TRANSLATED: usize = 4_096;

/// The routes of one host's reports.
struct HostRoutes<'a> {
    host: HostId,
    asked: &'a HashMap<(HostId, FlowTuple), u32>,
    translated: &'a HashMap<FlowTuple, u32>,
}

impl wire::Routes for HostRoutes<'_> {
    fn asked(&self, flow: FlowTuple) -> Option<u32> {
        self.asked.get(&(self.host, flow)).copied()
    }
    fn translated(&self, flow: FlowTuple) -> Option<u32> {
        self.translated.get(&flow).copied()
    }
}

/// The edge's settings.
#[derive(Debug, Clone)]
pub struct Edge {
    /// This node's name, in its hosts' records.
    pub node: String,
    pub partitions: u32,
    /// How often its hosts' records are written again.
    pub renew_every: Duration,
    /// Mixed into the gateway's session numbers: unique in the fleet.
    pub session_salt: u64,
    /// Set when the node is stopping: its streams end, its hosts do not.
    pub stopping: Arc<AtomicBool>,
}

/// One host this node's gateway holds.
#[derive(Debug)]
struct Held {
    record: HostRecord,
    /// The record's revision as this node last wrote it: a renewal is a
    /// compare-and-set on it, so that a record another node has written
    /// since (the host moved there) is never overwritten from here.
    revision: Option<u64>,
    /// Forwards its subject's requests to the gateway.
    requests: tokio::task::JoinHandle<()>,
    /// Partitions its recent polls had something for, and how many polls
    /// ago: they hear of its next polls too, empty (see [`TRAIL`]).
    touched: HashMap<u32, u32>,
    /// Its sockets whose samples went by a translation's far side, and
    /// that partition, until they close.
    translated: HashMap<FlowTuple, u32>,
}

/// Runs the edge until `inbox` closes (the gateway and every stream are
/// gone). `requests` is the gateway's input of requests for its agents.
pub async fn run(
    bus: Bus,
    edge: Edge,
    mut inbox: mpsc::Receiver<ToMatcher>,
    requests: mpsc::Sender<ToGateway>,
    fleet: Arc<super::FleetStats>,
) {
    let Edge {
        node,
        partitions,
        renew_every,
        session_salt,
        stopping,
    } = edge;
    let stats = &fleet.edge;
    let asked: Asked = Arc::default();
    let mut held: HashMap<HostId, Held> = HashMap::new();
    // Publishes, in order, by a task of their own.
    let (publish_tx, publish_rx) = mpsc::channel(QUEUED);
    let publisher = tokio::spawn(super::publisher::run(bus.js.clone(), publish_rx, fleet.clone()));
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let global = |session: u64| session_salt ^ session;
    let mut bundles = Bundles::new(session_salt);
    // When the oldest part waiting in a bundle is due out.
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = wait_until(flush_at) => {
                flush_at = None;
                for full in bundles.drain() {
                    if publish_tx.send(full).await.is_err() {
                        break;
                    }
                }
            }
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    ToMatcher::Batch { host, session, taken_ms, batch } => {
                        let Some(h) = held.get_mut(&host) else { continue };
                        if h.record.session != global(session) {
                            continue;
                        }
                        let empty = wire::empty_part(&batch);
                        let answered: Vec<FlowTuple> = batch
                            .lookups
                            .iter()
                            .filter(|l| l.asked)
                            .map(|l| l.flow)
                            .collect();
                        // Sockets whose samples go by a translation's far
                        // side: their closing follows.
                        for (_, s) in &batch.samples {
                            let far = wire::sample_key(s);
                            if far != s.flow.key() && h.translated.len() < TRANSLATED {
                                h.translated.insert(s.flow, partition_of(far, partitions));
                            }
                        }
                        let mut parts = {
                            let asked = asked.lock().unwrap_or_else(|p| p.into_inner());
                            let routes = HostRoutes { host, asked: &asked, translated: &h.translated };
                            wire::split(batch, partitions, &routes)
                        };
                        for closed in parts.values().flat_map(|p| p.closed.iter()) {
                            h.translated.remove(&closed.flow);
                        }
                        if !answered.is_empty() {
                            let mut asked = asked.lock().unwrap_or_else(|p| p.into_inner());
                            for flow in answered {
                                asked.remove(&(host, flow));
                            }
                        }
                        trail(&mut h.touched, &mut parts, &empty);
                        for (p, part) in parts {
                            let part = wire::BundlePart {
                                host: h.record.name.clone(),
                                session: h.record.session,
                                taken_ms,
                                batch: Some(wire::part_to_wire(part)),
                            };
                            if let Some(full) = bundles.push(p, &part) {
                                // Waits for room: the publisher holds back
                                // while JetStream does not acknowledge.
                                if publish_tx.send(full).await.is_err() {
                                    break;
                                }
                            }
                        }
                        if flush_at.is_none() && bundles.any_open() {
                            flush_at = Some(tokio::time::Instant::now() + FLUSH_EVERY);
                        }
                    }
                    ToMatcher::HostUp { host, session, name, addresses, interval, answers_lookups, forwards, holder } => {
                        if let Some(old) = held.remove(&host) {
                            old.requests.abort();
                        }
                        let record = HostRecord {
                            name: name.clone(),
                            node: node.clone(),
                            session: global(session),
                            machine: holder.machine.as_ref().map(|m| m.as_str().to_string()),
                            peer: holder.peer,
                            since_ms: holder.since_ms,
                            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                            answers_lookups,
                            forwards,
                            namespaces: HostRecord::namespaces_of(&addresses),
                        };
                        let revision = put_record(&bus, &record, None, stats).await.ok();
                        let requests = tokio::spawn(forward_requests(bus.clone(), name, host, requests.clone(), asked.clone(), fleet.clone()));
                        held.insert(host, Held { record, revision, requests, touched: HashMap::new(), translated: HashMap::new() });
                    }
                    ToMatcher::Addresses { host, session, addresses } => {
                        let Some(h) = held.get_mut(&host) else { continue };
                        if h.record.session != global(session) {
                            continue;
                        }
                        h.record.namespaces = HostRecord::namespaces_of(&addresses);
                        if let Ok(r) = put_record(&bus, &h.record, h.revision, stats).await {
                            h.revision = Some(r);
                        }
                    }
                    ToMatcher::HostDown { host } => {
                        asked
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|(h, _), _| *h != host);
                        if let Some(h) = held.remove(&host) {
                            h.requests.abort();
                            // A node stopping keeps its hosts' records:
                            // their agents say hello on another node (whose
                            // record replaces this one) and their stalls go
                            // on; one that does not come back ages out.
                            if !stopping.load(Ordering::Relaxed) {
                                forget_record(&bus, &h.record).await;
                            }
                        }
                    }
                    // Requests cross NATS: one not delivered is asked again
                    // when its host says hello anew.
                    ToMatcher::Unsent { .. } => {}
                }
            }
            _ = renew.tick() => {
                let mut moved = Vec::new();
                for (host, h) in held.iter_mut() {
                    match put_record(&bus, &h.record, h.revision, stats).await {
                        Ok(r) => h.revision = Some(r),
                        Err(Renewal::Replaced) => moved.push(*host),
                        Err(Renewal::Gone) => h.revision = None,
                        Err(Renewal::Failed) => {}
                    }
                }
                // Held by a newer session elsewhere: this node's stream of
                // it is a stale one; its record and requests are the
                // other node's now.
                for host in moved {
                    if let Some(h) = held.remove(&host) {
                        h.requests.abort();
                        tracing::warn!(host = %h.record.name, "host record written by another node since: no longer renewed from here");
                    }
                }
            }
        }
    }
    // What was published is acknowledged (or given up) before the edge ends.
    for full in bundles.drain() {
        if publish_tx.send(full).await.is_err() {
            break;
        }
    }
    drop(publish_tx);
    let _ = publisher.await;
    // Its hosts' records stay: their agents say hello on another node (a
    // newer session replaces them there), or the records age out.
    for h in held.into_values() {
        h.requests.abort();
    }
}

/// The most bytes a bundle gathers before it goes out (NATS refuses a
/// message over its `max_payload`, 1 MiB unless configured).
const BUNDLE_BYTES: usize = 256 * 1024;
/// The longest a part waits in its bundle: a poll's delay to its matcher
/// grows by at most this (against 2 s polls and a 10 s threshold). A NATS
/// server's work goes mostly with the messages: at 20 ms the fleet bench's
/// server took 2.8 µs a sample, at 100 ms 1.5 µs, at 250 ms 1.3 µs.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Sleeps until `at`; never without one.
async fn wait_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The bundles being gathered, one per partition with parts waiting.
struct Bundles {
    /// Mixed into every bundle's id: this node's start.
    salt: u64,
    open: BTreeMap<u32, Open>,
    /// Bundles sent so far per partition.
    sent: HashMap<u32, u64>,
}

struct Open {
    buf: bytes::BytesMut,
    parts: u64,
}

impl Bundles {
    fn new(salt: u64) -> Bundles {
        Bundles {
            salt,
            open: BTreeMap::new(),
            sent: HashMap::new(),
        }
    }

    fn any_open(&self) -> bool {
        !self.open.is_empty()
    }

    /// Adds a part to partition `p`'s bundle; the bundle, when that filled
    /// it.
    fn push(&mut self, p: u32, part: &wire::BundlePart) -> Option<Outgoing> {
        let open = self.open.entry(p).or_insert_with(|| Open {
            buf: bytes::BytesMut::with_capacity(16 * 1024),
            parts: 0,
        });
        wire::bundle_push(&mut open.buf, part);
        open.parts += 1;
        if open.buf.len() < BUNDLE_BYTES {
            return None;
        }
        let open = self.open.remove(&p)?;
        Some(self.seal(p, open))
    }

    /// Every bundle with parts, sealed.
    fn drain(&mut self) -> Vec<Outgoing> {
        let open = std::mem::take(&mut self.open);
        open.into_iter().map(|(p, o)| self.seal(p, o)).collect()
    }

    #[cfg(test)]
    fn drain_one(&mut self, p: u32) -> Outgoing {
        self.push(p, &wire::BundlePart::default());
        let open = self.open.remove(&p).expect("just pushed");
        self.seal(p, open)
    }

    fn seal(&mut self, p: u32, open: Open) -> Outgoing {
        let n = self.sent.entry(p).or_insert(0);
        *n += 1;
        let mut headers = HeaderMap::new();
        // JetStream drops a second copy of one id: a bundle published
        // again after a lost acknowledgement is stored once.
        headers.insert("Nats-Msg-Id", bundle_id(self.salt, p, *n).as_str());
        headers.insert(wire::H_ENCODING, wire::LZ4);
        Outgoing {
            subject: wire::samples_subject(p),
            headers,
            plain_bytes: open.buf.len() as u64,
            payload: wire::compress_bundle(&open.buf),
            parts: open.parts,
        }
    }
}

/// The deduplication id of partition `p`'s `n`th bundle from the node
/// start `salt` names: the same for every publish of that bundle (a bundle
/// is sealed once; its retries are the same bytes), another for every
/// other. (Ids built from a poll's time alone collide: a poll larger than
/// the agent's batch bound comes as several batches with its one time, and
/// JetStream kept only the first — found by the fleet benchmark.)
fn bundle_id(salt: u64, p: u32, n: u64) -> String {
    format!("{salt:x}.{p}.{n:x}")
}

/// How many polls a partition hears of a host after the last one that had
/// something for it: enough for the partition to see a suspect the host
/// stopped reporting go silent (the matcher's silence is 5 polls), judged
/// by the host's own later polls there.
const TRAIL: u32 = crate::matcher::SILENT_POLLS + 1;

/// Adds an empty part of this poll for each partition the host's recent
/// polls had something for and this one has not, for [`TRAIL`] polls.
fn trail(touched: &mut HashMap<u32, u32>, parts: &mut BTreeMap<u32, AgentBatch>, empty: &AgentBatch) {
    for ago in touched.values_mut() {
        *ago += 1;
    }
    for p in parts.keys() {
        touched.insert(*p, 0);
    }
    touched.retain(|_, ago| *ago <= TRAIL);
    for (p, ago) in touched.iter() {
        if *ago > 0 {
            parts.entry(*p).or_insert_with(|| empty.clone());
        }
    }
}

/// Why a record was not written.
enum Renewal {
    /// Another session's record replaced this node's.
    Replaced,
    /// The record is gone (aged out while NATS was away): put afresh at
    /// the next renewal.
    Gone,
    /// NATS did not take it (retried at the next renewal).
    Failed,
}

/// Writes a host's record: a compare-and-set on `revision` (this node's
/// last write of it) when there is one. Returns the new revision.
async fn put_record(
    bus: &Bus,
    record: &HostRecord,
    revision: Option<u64>,
    stats: &EdgeStats,
) -> Result<u64, Renewal> {
    let value = match serde_json::to_vec(record) {
        Ok(v) => bytes::Bytes::from(v),
        Err(e) => {
            tracing::error!(error = %e, "encoding a host record");
            return Err(Renewal::Failed);
        }
    };
    let key = wire::host_key(&record.name);
    let written = match revision {
        Some(r) => bus
            .hosts
            .update(&key, value, r)
            .await
            .map_err(|e| e.to_string()),
        None => bus.hosts.put(&key, value).await.map_err(|e| e.to_string()),
    };
    match written {
        Ok(r) => {
            stats.host_puts.fetch_add(1, Ordering::Relaxed);
            Ok(r)
        }
        Err(error) => {
            // Refused: whose is the record now?
            match bus.hosts.entry(key).await {
                Ok(Some(e)) if e.operation == Operation::Put => {
                    match serde_json::from_slice::<HostRecord>(&e.value).ok() {
                        Some(t) if t.session != record.session => return Err(Renewal::Replaced),
                        // Written after all (its answer was lost, as when
                        // the bucket's leader died under it): the revision
                        // to write the next renewal on.
                        Some(t) if t == *record && Some(e.revision) != revision => {
                            stats.host_puts.fetch_add(1, Ordering::Relaxed);
                            return Ok(e.revision);
                        }
                        _ => {}
                    }
                }
                Ok(None) if revision.is_some() => return Err(Renewal::Gone),
                _ => {}
            }
            stats.host_put_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(host = %record.name, %error, "registering a host failed (again at the next renewal)");
            Err(Renewal::Failed)
        }
    }
}

/// Deletes a host's record if it is still this session's: the host may
/// already have said hello on another node.
async fn forget_record(bus: &Bus, record: &HostRecord) {
    let key = wire::host_key(&record.name);
    let Ok(Some(entry)) = bus.hosts.entry(key.clone()).await else {
        return;
    };
    let ours = serde_json::from_slice::<HostRecord>(&entry.value)
        .is_ok_and(|r| r.session == record.session);
    if ours {
        if let Err(e) = bus
            .hosts
            .delete_expect_revision(key, Some(entry.revision))
            .await
        {
            tracing::debug!(host = %record.name, error = %e, "host record changed before its delete");
        }
    }
}

/// Hands the requests published for host `name` to the gateway, as
/// requests for its local number `host`.
async fn forward_requests(
    bus: Bus,
    name: String,
    host: HostId,
    gateway: mpsc::Sender<ToGateway>,
    asked: Asked,
    fleet: Arc<super::FleetStats>,
) {
    let mut sub = match bus.client.subscribe(wire::host_subject(&name)).await {
        Ok(sub) => sub,
        Err(e) => {
            tracing::warn!(host = %name, error = %e, "cannot take requests for this host");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        let Some(r) = wire::decode_request(&msg.payload) else {
            tracing::debug!(host = %name, "a malformed request skipped");
            continue;
        };
        fleet.edge.requests_in.fetch_add(1, Ordering::Relaxed);
        // Remember who asked: what the host reports of it goes there.
        let by: Option<u32> = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(wire::H_PARTITION))
            .and_then(|v| v.as_str().parse().ok());
        if let Some(p) = by {
            let mut asked = asked.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                ToAgent::Watch(flow) | ToAgent::Translate(flow) => {
                    if asked.len() < ASKED || asked.contains_key(&(host, flow)) {
                        asked.insert((host, flow), p);
                    }
                }
                ToAgent::Unwatch(flow) => {
                    asked.remove(&(host, flow));
                }
            }
        }
        let r = match r {
            ToAgent::Watch(flow) => ToGateway::Watch { host, flow },
            ToAgent::Unwatch(flow) => ToGateway::Unwatch { host, flow },
            ToAgent::Translate(flow) => ToGateway::Translate { host, flow },
        };
        if gateway.send(r).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(o: &Outgoing) -> String {
        o.headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn every_bundle_has_an_id_of_its_own_and_its_parts_in_order() {
        let part = |host: &str, taken_ms| wire::BundlePart {
            host: host.into(),
            session: 1,
            taken_ms,
            batch: Some(tcpstall_proto::raw::Batch::default()),
        };
        let mut bundles = Bundles::new(7 << 24);
        // Two batches of one poll (the same time) and another host's.
        assert!(bundles.push(3, &part("a", 1_000)).is_none());
        assert!(bundles.push(3, &part("a", 1_000)).is_none());
        assert!(bundles.push(4, &part("b", 1_000)).is_none());
        let first = bundles.drain();
        assert!(!bundles.any_open());
        assert!(bundles.push(3, &part("a", 1_000)).is_none());
        let second = bundles.drain();
        let subjects: Vec<_> = first.iter().map(|o| (o.subject.as_str(), o.parts)).collect();
        assert_eq!(subjects, [("tcpstall.samples.3", 2), ("tcpstall.samples.4", 1)]);
        let read = wire::decode_bundle(first[0].payload.clone(), Some(wire::LZ4)).expect("a bundle");
        assert_eq!(read.len(), 2, "both batches of the poll");
        let ids = [id(&first[0]), id(&first[1]), id(&second[0]), id(&Bundles::new(8 << 24).drain_one(3))];
        for (i, a) in ids.iter().enumerate() {
            assert!(!a.is_empty());
            for b in &ids[i + 1..] {
                assert_ne!(a, b, "partitions, later bundles and other node starts differ");
            }
        }
        // A retry publishes the sealed message again: the same id.
        let again = first[0].clone();
        assert_eq!(id(&again), ids[0]);
    }

    #[test]
    fn a_bundle_goes_out_once_it_is_full() {
        let mut bundles = Bundles::new(1 << 24);
        let big = wire::BundlePart {
            host: "h".repeat(64 * 1024),
            ..wire::BundlePart::default()
        };
        let mut sent = None;
        for i in 0..8 {
            if let Some(full) = bundles.push(0, &big) {
                sent = Some((i, full));
                break;
            }
        }
        let (i, full) = sent.expect("sealed once over the bound");
        assert_eq!(full.parts, i + 1);
        let plain = full.plain_bytes as usize;
        assert!((BUNDLE_BYTES..BUNDLE_BYTES + 70 * 1024).contains(&plain), "{plain}");
        assert!(full.payload.len() < plain / 10, "sent compressed: {}", full.payload.len());
        assert!(!bundles.any_open(), "a full bundle is not kept open");
    }

    #[test]
    fn a_partition_hears_of_a_host_for_a_few_polls_after_its_last_part() {
        let empty = AgentBatch {
            mono: Duration::from_secs(1),
            ..AgentBatch::default()
        };
        let mut touched = HashMap::new();
        let mut parts = BTreeMap::from([(3, empty.clone())]);
        trail(&mut touched, &mut parts, &empty);
        assert_eq!(parts.keys().collect::<Vec<_>>(), [&3]);
        // Then nothing for partition 3: an empty part for TRAIL polls.
        for poll in 1..=TRAIL {
            let mut parts = BTreeMap::from([(5, empty.clone())]);
            trail(&mut touched, &mut parts, &empty);
            assert!(parts.contains_key(&3), "poll {poll}");
        }
        let mut parts = BTreeMap::new();
        trail(&mut touched, &mut parts, &empty);
        assert!(!parts.contains_key(&3), "no longer");
        assert!(parts.contains_key(&5), "5's trail goes on");
    }
}
