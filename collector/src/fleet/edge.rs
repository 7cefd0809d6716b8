//! A node's gateway side in fleet mode: what its agents' streams and its
//! gateway would hand the local matcher goes onto NATS instead.
//!
//! - A batch is cut into its partitions' parts ([`wire::split`]), each
//!   published to its partition's subject on the samples stream, with the
//!   host, its session and the poll's time in headers. Publishes are
//!   acknowledged by JetStream; a bounded number wait for their
//!   acknowledgement at once, so a node whose NATS is slow holds its
//!   agents' streams back (and they their own bounded buffers) rather than
//!   piling up here.
//! - A host's hello, its new addresses and its going are its record in the
//!   hosts bucket: put, put again every renewal while its stream lasts,
//!   deleted when it goes (unless a newer session elsewhere holds it).
//! - Requests for its hosts' agents arrive on their subjects and go to the
//!   gateway, which hands them to the streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use tcpstall_common::ToAgent;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

use super::wire::{self, HostRecord};
use super::Bus;
use crate::messages::{HostId, ToGateway, ToMatcher};

/// Publishes waiting for JetStream's acknowledgement at once.
const IN_FLIGHT: usize = 1024;
/// Tries of one publish before its part is counted lost.
const PUBLISH_ATTEMPTS: u32 = 4;

/// What the edge counts (read by /metrics).
#[derive(Debug, Default)]
pub struct EdgeStats {
    /// Partition parts published and acknowledged.
    pub parts_published: AtomicU64,
    /// Parts whose publish failed or was not acknowledged (lost: NATS was
    /// unreachable beyond the client's own buffer, or refused them).
    pub parts_failed: AtomicU64,
    /// Host records written (hellos, addresses, renewals).
    pub host_puts: AtomicU64,
    pub host_put_failures: AtomicU64,
    /// Requests for this node's agents received from matchers.
    pub requests_in: AtomicU64,
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
}

/// Runs the edge until `inbox` closes (the gateway and every stream are
/// gone). `requests` is the gateway's input of requests for its agents.
pub async fn run(
    bus: Bus,
    node: String,
    partitions: u32,
    renew_every: Duration,
    session_salt: u64,
    mut inbox: mpsc::Receiver<ToMatcher>,
    requests: mpsc::Sender<ToGateway>,
    fleet: Arc<super::FleetStats>,
) {
    let stats = &fleet.edge;
    let mut held: HashMap<HostId, Held> = HashMap::new();
    let mut acks: JoinSet<bool> = JoinSet::new();
    let mut renew = tokio::time::interval(renew_every);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let global = |session: u64| session_salt ^ session;
    // Batches handed to this edge: a poll larger than the agents' batch
    // bound comes as several batches with the poll's one time.
    let mut batches: u64 = 0;
    loop {
        tokio::select! {
            msg = inbox.recv() => {
                let Some(msg) = msg else { break };
                match msg {
                    ToMatcher::Batch { host, session, taken_ms, batch } => {
                        let Some(h) = held.get(&host) else { continue };
                        if h.record.session != global(session) {
                            continue;
                        }
                        let mono_us = batch.mono.as_micros();
                        batches += 1;
                        for (p, part) in wire::split(batch, partitions) {
                            let mut headers = HeaderMap::new();
                            headers.insert(wire::H_HOST, h.record.name.as_str());
                            headers.insert(wire::H_SESSION, h.record.session.to_string().as_str());
                            headers.insert(wire::H_TAKEN, taken_ms.to_string().as_str());
                            // JetStream drops a second copy of one id: a
                            // part published again after a lost
                            // acknowledgement is stored once.
                            let id = part_id(h.record.session, mono_us, batches, p);
                            headers.insert("Nats-Msg-Id", id.as_str());
                            // Room first: at most IN_FLIGHT wait for acks.
                            while acks.len() >= IN_FLIGHT {
                                if let Some(ok) = acks.join_next().await {
                                    count_ack(stats, ok.unwrap_or(false));
                                }
                            }
                            acks.spawn(publish(
                                bus.js.clone(),
                                wire::samples_subject(p),
                                headers,
                                wire::encode_part(part),
                            ));
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
                        let requests = tokio::spawn(forward_requests(bus.clone(), name, host, requests.clone(), fleet.clone()));
                        held.insert(host, Held { record, revision, requests });
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
                        if let Some(h) = held.remove(&host) {
                            h.requests.abort();
                            forget_record(&bus, &h.record).await;
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
            Some(ok) = acks.join_next(), if !acks.is_empty() => count_ack(stats, ok.unwrap_or(false)),
        }
    }
    while let Some(ok) = acks.join_next().await {
        count_ack(stats, ok.unwrap_or(false));
    }
    // Its hosts' records stay: their agents say hello on another node (a
    // newer session replaces them there), or the records age out.
    for h in held.into_values() {
        h.requests.abort();
    }
}

/// The deduplication id of partition `p`'s part of a batch: the same for
/// every publish of that part (JetStream stores a part published again
/// after a lost acknowledgement once), different for every other part.
/// The poll's time alone does not tell batches apart: a poll larger than
/// the agent's batch bound is sent as several batches with the poll's one
/// time, and JetStream would keep only the first of them in each partition
/// (issue 24's benchmark: 0.34 of the parts reached the matchers).
fn part_id(session: u64, mono_us: u128, batch: u64, p: u32) -> String {
    format!("{session:x}.{mono_us:x}.{batch:x}.{p}")
}

fn count_ack(stats: &EdgeStats, ok: bool) {
    let counter = if ok {
        &stats.parts_published
    } else {
        &stats.parts_failed
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Publishes one part until JetStream acknowledges it, a few times: a
/// server that dies with the part unacknowledged leaves the client to
/// reconnect to another, and the same id makes a second copy harmless.
async fn publish(
    js: async_nats::jetstream::Context,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
) -> bool {
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let sent = js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await;
        let error = match sent {
            Ok(ack) => match ack.await {
                Ok(_) => return true,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        tracing::debug!(%subject, attempt, %error, "a batch part not acknowledged");
        if attempt == PUBLISH_ATTEMPTS {
            tracing::warn!(%subject, %error, "a batch part lost: not acknowledged after {PUBLISH_ATTEMPTS} attempts");
        } else {
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
        }
    }
    false
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
                Ok(Some(e)) => {
                    let theirs = serde_json::from_slice::<HostRecord>(&e.value).ok();
                    if theirs.is_some_and(|t| t.session != record.session) {
                        return Err(Renewal::Replaced);
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
    use super::part_id;

    #[test]
    fn the_batches_of_one_poll_have_parts_of_their_own() {
        // Two batches of one poll (one time), partition 5: two ids.
        assert_ne!(part_id(0xab, 7_000_000, 1, 5), part_id(0xab, 7_000_000, 2, 5));
        // One batch: its parts differ by partition, and a part published
        // again keeps its id.
        assert_ne!(part_id(0xab, 7_000_000, 1, 5), part_id(0xab, 7_000_000, 1, 6));
        assert_eq!(part_id(0xab, 7_000_000, 1, 5), part_id(0xab, 7_000_000, 1, 5));
    }
}
