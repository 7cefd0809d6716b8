//! One partition's matcher on the node that holds its lease: the same
//! matcher as single-node mode's, fed from the partition's subject of the
//! samples stream and from the hosts bucket's view.
//!
//! Taking a partition over, it reads the stream from its oldest message
//! (the stream keeps `replay` of them): the state the previous owner had
//! is rebuilt from the same messages in the same order before anything is
//! judged on the wall clock — expiry waits until the consumer has caught
//! up. Episodes opened again on the way get the ids they had (their
//! identity: flow and start), so the store keeps each once; samples are
//! stored once per end and time.
//!
//! Time: a batch is handled at the time its agent took the poll (on its
//! gateway's clock, in the message), not at the time it is read, so that
//! the live owner and a replaying one compute the same starts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use tcpstall_common::Clock;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;

use super::hosts::View;
use super::wire::{self, HostRecord};
use super::{Bus, Judging};
use crate::gateway::registry::Hosts;
use crate::matcher::{Matcher, Question, SILENT_POLLS};
use crate::messages::{partition as partition_of, HostId, ToGateway, ToMatcher};
use crate::store::SharedStore;

/// How long after catching up with its stream a partition waits for the
/// stalls its previous owner left open to report again before it ends
/// their episodes: five polls at the default interval, and two seconds.
const UNCLAIMED_AFTER: Duration = Duration::from_secs(12);

/// Host pairs' held-span counts a partition holds for the minute in
/// progress: a single collector's bound over 16 partitions, so that a node
/// judging 16 (two nodes, 32 partitions: the default) holds what one
/// collector does, and the fleet's partitions together
/// `partitions × 4,096`. Without a share, each partition held a single
/// collector's 65,536, and at the benchmark's full mesh of 1,000 hosts the
/// store took 32 times the rows.
const HELD_PAIRS: usize = crate::matcher::held::MAX_PENDING / 16;

/// Batches of hosts the view has not shown yet (their hello's record and
/// their first batch race across NATS), held until it does.
const WAITING: usize = 256;

/// What every partition of a node counts (read by /metrics).
#[derive(Debug, Default)]
pub struct PartitionStats {
    /// Partition messages (bundles) read.
    pub bundles_read: AtomicU64,
    /// Batch parts handed to the matcher.
    pub handled: AtomicU64,
    /// Messages of a session its host no longer has, or of a host gone
    /// (replayed from before): skipped, as single-node mode skips them.
    pub stale: AtomicU64,
    /// Messages that did not decode (counted and skipped).
    pub malformed: AtomicU64,
    /// Parts read after a newer one of the same host (a publish retried
    /// behind another that was not): skipped, since a connection's samples
    /// must not step back in time.
    pub late: AtomicU64,
    /// Messages of unknown hosts dropped because too many waited.
    pub waiting_dropped: AtomicU64,
    /// Partitions that finished replaying their stream.
    pub caught_up: AtomicU64,
}

/// What a partition's task needs.
#[derive(Debug)]
pub struct Partition {
    pub p: u32,
    /// How many partitions the fleet has.
    pub partitions: u32,
    pub bus: Bus,
    pub store: SharedStore,
    pub(crate) names: Arc<Mutex<Hosts>>,
    pub requests: mpsc::Sender<ToGateway>,
    pub view: watch::Receiver<Arc<View>>,
    pub judging: Judging,
    pub clock: Clock,
    pub fleet: Arc<super::FleetStats>,
}

/// One host's part of a message read off the stream.
type Part = wire::BundlePart;

/// How long one try to read a partition's stream waits for JetStream.
const CONSUME_PATIENCE: Duration = Duration::from_secs(3);
/// How long a pull of a partition's consumer waits for messages.
const CONSUMER_EXPIRES: Duration = Duration::from_secs(4);

/// Runs partition `part.p` until `stop` fires: its state goes with it
/// (the next owner rebuilds it from the stream); nothing is closed.
pub async fn run(
    mut part: Partition,
    mut questions: mpsc::Receiver<Question>,
    mut stop: oneshot::Receiver<()>,
) {
    let j = part.judging;
    let mut matcher = Matcher::new(
        part.store.clone(),
        part.requests.clone(),
        j.threshold,
        1,
        j.max_samples,
    )
    .watch_peer_after(j.watch_peer_after)
    .ids_of_identity()
    .held_pairs_bound(HELD_PAIRS);
    // The minutes before this one were stored by the partition's previous
    // owner (it stores each minute once it is over, and leaves the one in
    // progress to the next owner); this one was not. A takeover after a
    // crash that crosses a minute's end loses the crashed owner's last
    // minute of held-span counts, never counts one twice.
    let minute_ms = 60_000;
    matcher.count_held_from(part.clock.now_ms().div_euclid(minute_ms) * minute_ms);
    let mut applied: HashMap<String, Arc<HostRecord>> = HashMap::new();
    let view = part.view.borrow_and_update().clone();
    apply_view(&mut matcher, &mut applied, &view, &part);

    // What the previous owner left open: episodes opened again here keep
    // their ids; those no replayed stall takes up are ended once caught up.
    let open = open_episodes(&part).await;
    let adopted = open.len();
    matcher.adopt(open);

    let subject = wire::samples_subject(part.p);
    let (mut messages, backlog) = loop {
        // Each try bounded: a request lost while JetStream elects leaders
        // would otherwise wait out the client's whole timeout (10 s) before
        // the next try, most of a lease.
        let tried = tokio::time::timeout(CONSUME_PATIENCE, consume(&part.bus, &subject)).await;
        match tried.unwrap_or_else(|_| Err(format!("no answer within {CONSUME_PATIENCE:?}").into())) {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(partition = part.p, error = %e, "cannot read the partition's stream; again in a second");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = &mut stop => return,
                }
            }
        }
    };
    // Live views of its flows, asked by any node's query edge.
    let mut flows = match part.bus.client.subscribe(wire::flow_subject(part.p)).await {
        Ok(sub) => Some(sub),
        Err(e) => {
            tracing::warn!(partition = part.p, error = %e, "cannot answer live views of this partition's flows");
            None
        }
    };
    tracing::info!(partition = part.p, messages = backlog, open_episodes = adopted, "partition taken: replaying its stream");
    let mut unclaimed_at: Option<tokio::time::Instant> = None;
    // Time in a partition is its data's: each host's, by the polls of it
    // read here (see `handle`).
    let mut clocks = Clocks::default();
    let mut caught_up = false;
    if backlog == 0 {
        caught_up = true;
        clocks.caught_up = true;
        unclaimed_at = Some(tokio::time::Instant::now() + UNCLAIMED_AFTER);
        part.fleet.partitions.caught_up.fetch_add(1, Ordering::Relaxed);
    } else {
        matcher.replaying(true);
    }
    let mut waiting: VecDeque<Part> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = messages.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(partition = part.p, error = %e, "reading the partition's stream");
                        continue;
                    }
                    None => {
                        tracing::warn!(partition = part.p, "the partition's stream ended; reading it again");
                        match consume(&part.bus, &subject).await {
                            Ok((m, _)) => messages = m,
                            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                        }
                        continue;
                    }
                };
                let pending = msg.info().map_or(0, |i| i.pending);
                part.fleet.partitions.bundles_read.fetch_add(1, Ordering::Relaxed);
                let encoding = msg
                    .message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(wire::H_ENCODING))
                    .map(|v| v.as_str());
                match wire::decode_bundle(msg.message.payload.clone(), encoding) {
                    Ok(parts) => {
                        for p in parts {
                            handle(&mut matcher, &applied, &mut waiting, &mut clocks, p, &part);
                        }
                    }
                    Err(e) => {
                        part.fleet.partitions.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(partition = part.p, error = %e, "a partition message skipped");
                    }
                }
                if !caught_up && pending == 0 {
                    caught_up = true;
                    clocks.caught_up = true;
                    unclaimed_at = Some(tokio::time::Instant::now() + UNCLAIMED_AFTER);
                    matcher.replaying(false);
                    part.fleet.partitions.caught_up.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(partition = part.p, "partition caught up with its stream");
                }
            }
            Ok(()) = part.view.changed() => {
                let view = part.view.borrow_and_update().clone();
                apply_view(&mut matcher, &mut applied, &view, &part);
                for p in std::mem::take(&mut waiting) {
                    handle(&mut matcher, &applied, &mut waiting, &mut clocks, p, &part);
                }
            }
            _ = tick.tick() => {
                // Silence is judged only once the stream's past is read,
                // and by each host's own later polls: a pause of the bus
                // (a NATS server's streams changing leaders) stops every
                // host's clock here rather than ending their stalls.
                if unclaimed_at.is_some_and(|at| tokio::time::Instant::now() >= at) {
                    unclaimed_at = None;
                    let ended = matcher.end_unclaimed();
                    if ended > 0 {
                        tracing::info!(partition = part.p, ended, "episodes left open by the previous owner whose stall was not found again: ended");
                    }
                }
                if caught_up {
                    matcher.expire_by(|h| clocks.hosts.get(&h).copied(), SILENT_POLLS);
                    if let Some(latest) = clocks.latest {
                        matcher.store_held(latest, false);
                    }
                }
            }
            Some(q) = questions.recv() => matcher.answer(q, part.clock.now_ms()),
            Some(asked) = next_flow(&mut flows) => {
                let Some(reply) = asked.reply else { continue };
                let Some(flow) = wire::decode_flow(&asked.payload) else {
                    part.fleet.partitions.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let (tx, mut rx) = oneshot::channel();
                matcher.answer(Question::Flow { flow, reply: tx }, part.clock.now_ms());
                if let Ok(view) = rx.try_recv() {
                    let _ = part.bus.client.publish(reply, wire::encode_view(view)).await;
                }
            }
            _ = &mut stop => break,
        }
    }
    // Handed over or stopped: the minute in progress is left to the next
    // owner, which counts it again from the stream.
}

/// The open episodes of partition `part.p` in the store, all pages; none
/// (said) when the store cannot answer.
async fn open_episodes(part: &Partition) -> Vec<crate::store::EpisodeRow> {
    let mut open = Vec::new();
    let mut after = None;
    loop {
        let filter = tcpstall_common::record::EpisodeFilter {
            open_only: true,
            limit: tcpstall_common::record::MAX_LIST_LIMIT,
            after,
            ..Default::default()
        };
        let page = match part.store.list_episodes(filter).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(partition = part.p, error = %e, "cannot read the open episodes; a stall opened again may be stored anew");
                return open;
            }
        };
        let full = page.len() == tcpstall_common::record::MAX_LIST_LIMIT as usize;
        after = page.last().map(|e| (e.started_at_ms, e.id));
        open.extend(page.into_iter().filter(|e| {
            let key = e
                .via
                .as_ref()
                .and_then(|v| v.translation.far_side(e.a_flow))
                .unwrap_or(e.a_flow)
                .key();
            partition_of(key, part.partitions) == part.p
                || partition_of(e.a_flow.key(), part.partitions) == part.p
        }));
        if !full {
            return open;
        }
    }
}

/// The next live-view request, or never without a subscription.
async fn next_flow(
    sub: &mut Option<async_nats::Subscriber>,
) -> Option<async_nats::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The partition's messages from the oldest the stream keeps, and how
/// many there were when it was opened (none: nothing to replay).
async fn consume(bus: &Bus, subject: &str) -> Result<(pull::Ordered, u64), async_nats::Error> {
    let stream = bus.js.get_stream(wire::STREAM).await?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: DeliverPolicy::All,
            // Pulls that expire after 4 s, so the server's idle heartbeat
            // comes every 2 s (half the expiry; 15 s by default): a
            // consumer lost with a NATS server is missed after two of them
            // and made again from the last message read, in about 4 s
            // rather than 30 (seen: an episode whose partition read nothing
            // for over 20 s after the server leading its stream died).
            max_expires: CONSUMER_EXPIRES,
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending;
    Ok((consumer.messages().await?, pending))
}

fn host_id(part: &Partition, name: &str) -> HostId {
    part.names
        .lock()
        .map(|mut n| n.id(name))
        .unwrap_or(HostId(u32::MAX))
}

/// The latest poll read of each host, and of any: a partition's time.
#[derive(Debug, Default)]
struct Clocks {
    hosts: HashMap<HostId, i64>,
    latest: Option<i64>,
    /// The stream's past is read: what is read now is new.
    caught_up: bool,
}

/// Hands a message to the matcher if its host is up in this session; holds
/// it while its host is not yet in the view.
fn handle(
    matcher: &mut Matcher,
    applied: &HashMap<String, Arc<HostRecord>>,
    waiting: &mut VecDeque<Part>,
    clocks: &mut Clocks,
    p: Part,
    part: &Partition,
) {
    let Some(record) = applied.get(&p.host) else {
        // Replayed, a host the fleet no longer has is a host gone since.
        if !clocks.caught_up {
            part.fleet.partitions.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if waiting.len() >= WAITING {
            waiting.pop_front();
            part.fleet.partitions.waiting_dropped.fetch_add(1, Ordering::Relaxed);
        }
        waiting.push_back(p);
        return;
    };
    if record.session != p.session {
        part.fleet.partitions.stale.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let host = host_id(part, &p.host);
    if clocks.hosts.get(&host).is_some_and(|&last| p.taken_ms < last) {
        part.fleet.partitions.late.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let batch = match wire::check_part(p.batch, part.judging.max_entries) {
        Ok(b) => b,
        Err(e) => {
            part.fleet.partitions.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(partition = part.p, host = %p.host, error = %e, "a batch part skipped");
            return;
        }
    };
    part.fleet.partitions.handled.fetch_add(1, Ordering::Relaxed);
    let at = clocks.hosts.entry(host).or_insert(p.taken_ms);
    *at = (*at).max(p.taken_ms);
    clocks.latest = Some(clocks.latest.map_or(p.taken_ms, |l| l.max(p.taken_ms)));
    matcher.handle(
        ToMatcher::Batch {
            host,
            session: p.session,
            taken_ms: p.taken_ms,
            batch,
        },
        p.taken_ms,
    );
}

/// Brings the matcher's hosts in line with the view: hosts new or in a new
/// session are up (a host that moved to another node keeps its suspects:
/// the same sockets go on in the new session), changed addresses are
/// announced, hosts gone are down.
fn apply_view(
    matcher: &mut Matcher,
    applied: &mut HashMap<String, Arc<HostRecord>>,
    view: &View,
    part: &Partition,
) {
    let now_ms = part.clock.now_ms();
    for (name, record) in &view.hosts {
        match applied.get(name) {
            Some(old) if Arc::ptr_eq(old, record) || old == record => continue,
            _ => {}
        }
        let host = host_id(part, name);
        match applied.get(name) {
            Some(old) if old.session == record.session => {
                matcher.handle(
                    ToMatcher::Addresses {
                        host,
                        session: record.session,
                        addresses: record.addresses(),
                    },
                    now_ms,
                );
            }
            _ => matcher.handle(
                ToMatcher::HostUp {
                    host,
                    session: record.session,
                    name: name.clone(),
                    addresses: record.addresses(),
                    interval: record.interval(),
                    answers_lookups: record.answers_lookups,
                    forwards: record.forwards,
                    holder: record.holder(),
                },
                now_ms,
            ),
        }
        applied.insert(name.clone(), Arc::clone(record));
    }
    let gone: Vec<String> = applied
        .keys()
        .filter(|n| !view.hosts.contains_key(*n))
        .cloned()
        .collect();
    for name in gone {
        applied.remove(&name);
        let host = host_id(part, &name);
        matcher.handle(ToMatcher::HostDown { host }, now_ms);
    }
}
