//! Which partitions this node judges: leases in the leases bucket, taken
//! with compare-and-set and renewed, expiring with the bucket's age limit
//! when their node stops renewing them.
//!
//! Every round (a third of the lease) the node says it is alive in the
//! nodes bucket, computes from the live nodes who should own what
//! ([`assign`]), and then, partition by partition: renews what it holds and
//! should keep; stops and releases what another live node should hold (so
//! that a node that joins gets its share in a round or two); takes what it
//! should hold once it is free — released, or expired with a dead owner.
//! A renewal refused because another node holds the lease (ours expired)
//! stops the partition at once; one that NATS does not answer (a server
//! died, JetStream elects new leaders) leaves it judging until its fence,
//! most of a lease after its last renewal, so a node that cannot reach
//! NATS stops judging before its leases can have expired: two nodes never
//! judge one partition for long (and what they write is idempotent if they
//! do). A lease still in this node's name when it takes a partition (one it
//! stopped judging while NATS was away) it takes back at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use async_nats::jetstream::kv::Operation;
use tokio_stream::StreamExt;

use super::assign::assign;
use super::wire;
use super::Bus;
use crate::matcher::Question;

/// How a partition's task is started: given its number, its questions and
/// its stop signal.
pub type Spawn =
    Box<dyn Fn(u32, mpsc::Receiver<Question>, oneshot::Receiver<()>) -> JoinHandle<()> + Send + Sync>;

/// The partitions this node runs, with where to ask them questions.
pub type Owned = Arc<RwLock<HashMap<u32, mpsc::Sender<Question>>>>;

/// Questions queued for one partition's matcher.
const QUESTIONS: usize = 16;

/// The lease counters (read by /metrics).
#[derive(Debug, Default)]
pub struct LeaseStats {
    pub owned: AtomicU64,
    /// Partitions taken (at start, from a dead node, or given by one).
    pub taken: AtomicU64,
    /// Partitions handed to another node.
    pub released: AtomicU64,
    /// Partitions lost: a renewal refused, or NATS out of reach too long.
    pub lost: AtomicU64,
    /// Live nodes at the last round.
    pub nodes: AtomicU64,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeRecord {
    name: String,
}

/// A lease's holder, as read after a write of it failed.
enum Held {
    /// This node, at this revision.
    Mine(u64),
    /// Another node.
    Other,
    /// Nobody: deleted or expired.
    Free,
    /// Not known: NATS did not answer.
    Unknown,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    revision: u64,
    renewed: Instant,
}

/// The lease loop's state.
pub struct Leases {
    pub bus: Bus,
    pub node: String,
    pub partitions: u32,
    pub lease: Duration,
    pub spawn: Spawn,
    pub owned: Owned,
    pub fleet: Arc<super::FleetStats>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("node", &self.node)
            .field("partitions", &self.partitions)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Leases {
    /// Runs rounds until `stop` fires; then stops every partition and
    /// releases its lease, so that the others take them at once.
    pub async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut running: HashMap<u32, Running> = HashMap::new();
        let mut failed = 0u32;
        let mut round = tokio::time::interval(self.lease / 3);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = round.tick() => self.round(&mut running, &mut failed).await,
                _ = &mut stop => break,
            }
        }
        let held: Vec<u32> = running.keys().copied().collect();
        for p in held {
            if let Some(r) = running.remove(&p) {
                let revision = r.revision;
                self.halt(p, r).await;
                let _ = self
                    .bus
                    .leases
                    .delete_expect_revision(wire::lease_key(p), Some(revision))
                    .await;
            }
        }
        let _ = self.bus.nodes.delete(wire::node_key(&self.node)).await;
        self.publish(&running);
    }

    async fn round(&self, running: &mut HashMap<u32, Running>, failed: &mut u32) {
        // Every request of a round is bounded well within the round: while
        // JetStream elects new leaders after a server died, a request may
        // wait out the client's whole timeout, and a round blocked that long
        // would let the leases it holds run past their fence.
        let patience = self.lease / 4;
        let answer = tokio::time::timeout(patience, self.live_nodes())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {patience:?}").into()));
        let live = match answer {
            Ok(live) => {
                *failed = 0;
                live
            }
            Err(e) => {
                *failed += 1;
                tracing::warn!(error = %e, rounds = *failed, "cannot reach the nodes bucket");
                // A connection that answers nothing for rounds on end
                // while its servers are up (seen once after a server of
                // the cluster died, the client reconnected to another):
                // connect afresh.
                if failed.is_multiple_of(3) {
                    tracing::warn!("reconnecting to NATS");
                    if let Err(e) = self.bus.client.force_reconnect().await {
                        tracing::warn!(error = %e, "reconnecting to NATS failed");
                    }
                }
                // Who is alive is unknown, so nothing is handed over or
                // taken; but whose a partition is, its lease says, not the
                // nodes bucket: what this node holds it renews, and judges
                // on. (Stopping them instead, a node whose nodes bucket
                // was out of reach after a NATS server died, while its
                // leases were not, stopped its partitions and could not
                // start them again: their streams would not give a
                // consumer for tens of seconds. An episode then waited
                // that long to end.)
                // All of them within one patience, as every request of a
                // round: with NATS gone entirely, a round still ends in
                // time for its fence.
                let deadline = Instant::now() + patience;
                let held: Vec<u32> = running.keys().copied().collect();
                for p in held {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match running.remove(&p) {
                        // A renewal asks twice at most (the update, then
                        // who holds it): half of what is left each.
                        Some(r) if !left.is_zero() => self.renew(p, r, left / 2, running).await,
                        Some(r) => {
                            running.insert(p, r);
                        }
                        None => {}
                    }
                }
                self.fence(running).await;
                self.publish(running);
                return;
            }
        };
        self.fleet.leases.nodes.store(live.len() as u64, Ordering::Relaxed);
        let owners = assign(self.partitions, &live);
        for p in 0..self.partitions {
            let target = owners
                .get(p as usize)
                .and_then(|&i| live.get(i))
                .map(String::as_str);
            let key = wire::lease_key(p);
            match running.remove(&p) {
                Some(r) if target.is_some_and(|t| t != self.node) => {
                    // Another live node should hold it: hand it over.
                    let revision = r.revision;
                    self.halt(p, r).await;
                    let _ = tokio::time::timeout(
                        patience,
                        self.bus.leases.delete_expect_revision(&key, Some(revision)),
                    )
                    .await;
                    self.fleet.leases.released.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(partition = p, to = target.unwrap_or("?"), "partition released");
                }
                Some(r) => self.renew(p, r, patience, running).await,
                None if target == Some(self.node.as_str()) => {
                    let created = tokio::time::timeout(
                        patience,
                        self.bus.leases.create(&key, self.node.clone().into()),
                    )
                    .await;
                    let revision = match created {
                        Ok(Ok(revision)) => Some(revision),
                        // Its lease may still be this node's: one it
                        // stopped judging while NATS was out of reach, or
                        // a take whose answer was lost. Taken back at
                        // once, not after it expires.
                        _ => match self.holder(&key, patience).await {
                            Held::Mine(revision) => tokio::time::timeout(
                                patience,
                                self.bus
                                    .leases
                                    .update(&key, self.node.clone().into(), revision),
                            )
                            .await
                            .ok()
                            .and_then(Result::ok),
                            // Else its lease is still held: released or
                            // expired by a later round.
                            Held::Other | Held::Free | Held::Unknown => None,
                        },
                    };
                    if let Some(revision) = revision {
                        let (questions, asked) = mpsc::channel(QUESTIONS);
                        let (stop, stopped) = oneshot::channel();
                        let task = (self.spawn)(p, asked, stopped);
                        self.owned
                            .write()
                            .map(|mut o| o.insert(p, questions))
                            .ok();
                        running.insert(
                            p,
                            Running {
                                stop,
                                task,
                                revision,
                                renewed: Instant::now(),
                            },
                        );
                        self.fleet.leases.taken.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(partition = p, "partition lease taken");
                    }
                }
                None => {}
            }
        }
        self.fence(running).await;
        self.publish(running);
    }

    /// Renews the lease of partition `p`, which this node judges: kept
    /// running if renewed or out of reach (until its fence), stopped at
    /// once if another node holds it now.
    async fn renew(
        &self,
        p: u32,
        mut r: Running,
        patience: Duration,
        running: &mut HashMap<u32, Running>,
    ) {
        let key = wire::lease_key(p);
        let renewed = tokio::time::timeout(
            patience,
            self.bus
                .leases
                .update(&key, self.node.clone().into(), r.revision),
        )
        .await;
        match renewed {
            Ok(Ok(revision)) => {
                r.revision = revision;
                r.renewed = Instant::now();
                running.insert(p, r);
            }
            Ok(Err(e)) => match self.holder(&key, patience).await {
                // Written by this node after all (the answer was lost):
                // renewed again next round from the revision it has now.
                Held::Mine(revision) => {
                    r.revision = revision;
                    running.insert(p, r);
                }
                // Not this node's any more: stop at once.
                Held::Other | Held::Free => {
                    tracing::warn!(partition = p, error = %e, "lease renewal refused; partition stopped");
                    self.fleet.leases.lost.fetch_add(1, Ordering::Relaxed);
                    self.halt(p, r).await;
                }
                // Out of reach: judged on until its fence.
                Held::Unknown => {
                    tracing::warn!(partition = p, error = %e, "lease not renewed; trying again next round");
                    running.insert(p, r);
                }
            },
            Err(_) => {
                tracing::warn!(partition = p, "lease renewal unanswered; trying again next round");
                running.insert(p, r);
            }
        }
    }

    /// Stops the partitions whose leases were not renewed for most of a
    /// lease: before they can have expired and been taken by another node.
    async fn fence(&self, running: &mut HashMap<u32, Running>) {
        let fence = self.lease.mul_f32(0.8);
        let expiring: Vec<u32> = running
            .iter()
            .filter(|(_, r)| r.renewed.elapsed() > fence)
            .map(|(p, _)| *p)
            .collect();
        for p in expiring {
            if let Some(r) = running.remove(&p) {
                tracing::warn!(partition = p, "lease not renewed in time; partition stopped");
                self.fleet.leases.lost.fetch_add(1, Ordering::Relaxed);
                self.halt(p, r).await;
            }
        }
    }

    /// Who holds the lease under `key` now, as the bucket says.
    async fn holder(&self, key: &str, patience: Duration) -> Held {
        match tokio::time::timeout(patience, self.bus.leases.entry(key)).await {
            Ok(Ok(Some(e))) if e.operation == Operation::Put => {
                if e.value.as_ref() == self.node.as_bytes() {
                    Held::Mine(e.revision)
                } else {
                    Held::Other
                }
            }
            Ok(Ok(_)) => Held::Free,
            Ok(Err(_)) | Err(_) => Held::Unknown,
        }
    }

    /// Says this node is alive, and reads which nodes are: sorted names of
    /// the records no older than a lease before this node's own.
    async fn live_nodes(&self) -> Result<Vec<String>, async_nats::Error> {
        let me = serde_json::to_vec(&NodeRecord {
            name: self.node.clone(),
        })?;
        self.bus.nodes.put(wire::node_key(&self.node), me.into()).await?;
        let mut keys = self.bus.nodes.keys().await?;
        let mut nodes = Vec::new();
        let mut mine = None;
        while let Some(key) = keys.next().await {
            let Some(entry) = self.bus.nodes.entry(key?).await? else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<NodeRecord>(&entry.value) else {
                continue;
            };
            let at = entry.created.unix_timestamp_nanos();
            if record.name == self.node {
                mine = Some(at);
            }
            nodes.push((record.name, at));
        }
        let floor = mine
            .unwrap_or(i128::MIN)
            .saturating_sub(i128::try_from(self.lease.as_nanos()).unwrap_or(i128::MAX));
        let mut live: Vec<String> = nodes
            .into_iter()
            .filter(|(_, at)| *at >= floor)
            .map(|(n, _)| n)
            .collect();
        live.sort();
        live.dedup();
        Ok(live)
    }

    async fn halt(&self, p: u32, r: Running) {
        self.owned.write().map(|mut o| o.remove(&p)).ok();
        let _ = r.stop.send(());
        let mut task = r.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    fn publish(&self, running: &HashMap<u32, Running>) {
        self.fleet
            .leases
            .owned
            .store(running.len() as u64, Ordering::Relaxed);
    }
}
