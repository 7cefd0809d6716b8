//! One simulated agent on the wire: a `tcpstall.v1.Ingest/Stream` that
//! opens with a Hello, sends a Batch (or a Heartbeat when there is nothing)
//! every interval at the agent's own phase, and answers the collector's
//! Watch, Unwatch and Translate, as `tcpstall-agent run` does
//! (agent/src/run.rs): the batches wait in a bounded outbox while the
//! stream has no room, the oldest dropped and counted when it is full.
//!
//! A message counts as ingested when tonic takes it from the request
//! stream to encode it: HTTP/2 flow control lets tonic take more only as
//! the collector consumes what it sent (at most one stream window, 64 KiB,
//! is in flight unacknowledged).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tcpstall_agent::outbox::Outbox;
use tcpstall_agent::run::{mono_at, to_batches, MAX_BATCH_ENTRIES};
use tcpstall_agent::suspects::Selection;
use tcpstall_common::{AgentBatch, ToCollector};
use tcpstall_proto::convert::{agent_message_to_wire, flow_from_wire, ip_to_wire};
use tcpstall_proto::v1::{self, agent_message, collector_message, ingest_client::IngestClient};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::sim::{self, Host, StallStart};

/// Messages queued towards the stream before the outbox keeps them (the
/// agent's `uplink::STREAM_QUEUE`).
const STREAM_QUEUE: usize = 8;

/// Counters shared by every simulated agent. Gauges go up and down.
#[derive(Debug, Default)]
pub struct Counters {
    pub welcomed: AtomicU64,
    pub failed: AtomicU64,
    pub batches_offered: AtomicU64,
    pub samples_offered: AtomicU64,
    pub batches_dropped: AtomicU64,
    pub samples_dropped: AtomicU64,
    pub batches_taken: AtomicU64,
    pub heartbeats_taken: AtomicU64,
    pub suspect_taken: AtomicU64,
    pub released_taken: AtomicU64,
    pub watched_taken: AtomicU64,
    pub absent_taken: AtomicU64,
    /// Lookups in the batches taken: absent flows' conntrack entries and
    /// answers to Translate requests.
    pub lookups_taken: AtomicU64,
    pub watches: AtomicU64,
    pub unwatches: AtomicU64,
    /// Translate requests received, and those dropped for want of room.
    pub translates: AtomicU64,
    pub translates_dropped: AtomicU64,
    /// Gauges: suspects the collector should hold, flows it asked to be
    /// watched, stuck flows, batches waiting in outboxes.
    pub suspects: AtomicI64,
    pub watched: AtomicI64,
    pub stuck: AtomicI64,
    pub outboxed: AtomicI64,
}

impl Counters {
    fn taken(&self, m: &v1::AgentMessage) {
        let add = |c: &AtomicU64, n: usize| {
            c.fetch_add(n as u64, Ordering::Relaxed);
        };
        match &m.body {
            Some(agent_message::Body::Batch(b)) => {
                add(&self.batches_taken, 1);
                add(&self.absent_taken, b.absent.len());
                add(&self.lookups_taken, b.lookups.len());
                for s in &b.samples {
                    match v1::SampleReason::try_from(s.reason) {
                        Ok(v1::SampleReason::Suspect) => add(&self.suspect_taken, 1),
                        Ok(v1::SampleReason::Released) => add(&self.released_taken, 1),
                        _ => add(&self.watched_taken, 1),
                    }
                }
            }
            Some(agent_message::Body::Heartbeat(_)) => add(&self.heartbeats_taken, 1),
            _ => {}
        }
    }

    /// Samples tonic took, all reasons.
    pub fn samples_taken(&self) -> u64 {
        self.suspect_taken.load(Ordering::Relaxed)
            + self.released_taken.load(Ordering::Relaxed)
            + self.watched_taken.load(Ordering::Relaxed)
    }
}

/// What every simulated agent shares.
#[derive(Debug)]
pub struct Shared {
    pub counters: Counters,
    /// Set when the load starts; until then agents only heartbeat.
    pub load: AtomicBool,
    pub shape: sim::Shape,
    pub seed: u64,
    /// Polls an outbox keeps (the agent's `--buffer`).
    pub buffer: usize,
    /// Most entries in one batch (the agent's `--batch-max`).
    pub batch_max: usize,
}

/// One poll as batches of at most `max` entries, as the agent splits its
/// selection (what the host knows of flows it has no socket for first).
fn split(polled: sim::Polled, mono: Duration, connections: u32, max: usize) -> Vec<AgentBatch> {
    let sim::Polled {
        samples,
        absent,
        lookups,
        ..
    } = polled;
    let selection = Selection {
        samples,
        closed: Vec::new(),
        absent,
        lookups,
        connections: connections as usize,
    };
    to_batches(selection, mono, max)
}

fn hello(host: &Host, shape: &sim::Shape) -> v1::AgentMessage {
    let addr = sim::host_addr(host.index);
    let mut namespaces = vec![v1::Namespace {
        label: "host".into(),
        inode: 4_026_531_840,
        addresses: vec![
            ip_to_wire(std::net::IpAddr::V4(addr)),
            ip_to_wire(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        ],
    }];
    if shape.net.translated_every > 0 {
        // The container its ports are forwarded into.
        namespaces.push(v1::Namespace {
            label: sim::nat::CONTAINER_NETNS.into(),
            inode: 4_026_532_864,
            addresses: vec![ip_to_wire(std::net::IpAddr::V4(sim::nat::container_addr(
                host.index,
            )))],
        });
    }
    v1::AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            protocol: tcpstall_proto::PROTOCOL_VERSION,
            host: sim::host_name(host.index),
            agent_version: "bench".into(),
            kernel: "6.18.0-sim".into(),
            boot_id: format!("00000000-0000-4000-8000-{:012x}", host.index),
            namespaces,
            probes: Some(v1::Probes {
                sock_diag: true,
                bpf_iter: false,
                getsockopt: false,
            }),
            interval_ms: u32::try_from(shape.interval.as_millis()).unwrap_or(u32::MAX),
            answers_lookups: true,
            forwards: shape.net.forwards(host.index),
            machine_id: format!("{:032x}", host.index),
        })),
    }
}

/// Runs simulated agent `index` over `channel` until `stop` turns true.
/// Stalls it starts go to `stalls` when given (the latency probe's hosts).
pub async fn run(
    index: u32,
    channel: Channel,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    stalls: Option<mpsc::Sender<(u32, StallStart)>>,
) -> anyhow::Result<()> {
    let res = stream(index, channel, &shared, &mut stop, stalls).await;
    if res.is_err() {
        shared.counters.failed.fetch_add(1, Ordering::Relaxed);
    }
    res
}

async fn stream(
    index: u32,
    channel: Channel,
    shared: &Arc<Shared>,
    stop: &mut watch::Receiver<bool>,
    stalls: Option<mpsc::Sender<(u32, StallStart)>>,
) -> anyhow::Result<()> {
    let c = &shared.counters;
    let shape = shared.shape;
    let mut host = Host::new(index, shape, shared.seed);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(STREAM_QUEUE);
    tx.try_send(hello(&host, &shape))
        .context("queueing the hello")?;
    let counted = Arc::clone(shared);
    let outgoing = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |m| {
        counted.counters.taken(&m);
        m
    });
    let mut client = IngestClient::new(channel);
    let mut inbound = client
        .stream(outgoing)
        .await
        .with_context(|| format!("{}: opening the stream", sim::host_name(index)))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(v1::CollectorMessage {
            body: Some(collector_message::Body::Welcome(_)),
        })) => {
            c.welcomed.fetch_add(1, Ordering::Relaxed);
        }
        other => bail!("{}: no welcome: {other:?}", sim::host_name(index)),
    }

    // Each agent polls at its own phase of the interval.
    let phase = sim::Rng::new(shared.seed ^ u64::from(index)).within(shape.interval);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, shape.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The agent's own outbox: bounded in polls and entries alike.
    let mut outbox = Outbox::new(
        shared.buffer,
        shared.buffer.saturating_mul(MAX_BATCH_ENTRIES),
    );
    let (mut suspects, mut watched, mut stuck) = (0i64, 0i64, 0i64);

    let res: anyhow::Result<()> = loop {
        let sender = (!outbox.is_empty()).then(|| tx.clone());
        let room = async move {
            match sender {
                Some(tx) => tx.reserve_owned().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => break Ok(()),
            tick = ticker.tick() => {
                // Stamped as the real agent stamps its polls: when the tick
                // was due, so that intervals are exact.
                let now = mono_at(tick.into_std());
                if !host.loaded && shared.load.load(Ordering::Relaxed) {
                    host.start_load(now);
                }
                let polled = host.poll(now);
                if let Some(tx) = &stalls {
                    for s in &polled.stalls {
                        // The probe keeps up; if not, the stall is simply
                        // not measured.
                        let _ = tx.try_send((index, *s));
                    }
                }
                let gauge = |g: &AtomicI64, old: &mut i64, new: usize| {
                    let new = new as i64;
                    g.fetch_add(new - *old, Ordering::Relaxed);
                    *old = new;
                };
                gauge(&c.suspects, &mut suspects, host.suspects());
                gauge(&c.watched, &mut watched, host.watched());
                gauge(&c.stuck, &mut stuck, host.stuck());
                if polled.is_empty() {
                    if outbox.is_empty() {
                        let hb = outbox.heartbeat(now, shape.conns);
                        let _ = tx.try_send(agent_message_to_wire(ToCollector::Heartbeat(hb)));
                    }
                    continue;
                }
                let n = polled.samples.len() + polled.absent.len() + polled.lookups.len();
                let batches = split(polled, now, shape.conns, shared.batch_max);
                c.batches_offered.fetch_add(batches.len() as u64, Ordering::Relaxed);
                c.samples_offered.fetch_add(n as u64, Ordering::Relaxed);
                c.outboxed.fetch_add(batches.len() as i64, Ordering::Relaxed);
                if let Some(evicted) = outbox.push_poll(batches) {
                    c.batches_dropped.fetch_add(evicted.batches as u64, Ordering::Relaxed);
                    c.samples_dropped.fetch_add(evicted.entries as u64, Ordering::Relaxed);
                    c.outboxed.fetch_sub(evicted.batches as i64, Ordering::Relaxed);
                }
            }
            permit = room => match permit {
                Some(permit) => {
                    if let Some(batch) = outbox.pop() {
                        c.outboxed.fetch_sub(1, Ordering::Relaxed);
                        permit.send(agent_message_to_wire(ToCollector::Batch(batch)));
                    }
                }
                None => break Err(anyhow::anyhow!("the request stream closed")),
            },
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.body {
                    Some(collector_message::Body::Watch(w)) => {
                        c.watches.fetch_add(1, Ordering::Relaxed);
                        if let Ok(f) = flow_from_wire(w.flow.as_ref()) {
                            host.watch(f);
                        }
                    }
                    Some(collector_message::Body::Unwatch(u)) => {
                        c.unwatches.fetch_add(1, Ordering::Relaxed);
                        if let Ok(f) = flow_from_wire(u.flow.as_ref()) {
                            host.unwatch(&f);
                        }
                    }
                    Some(collector_message::Body::Translate(t)) => {
                        c.translates.fetch_add(1, Ordering::Relaxed);
                        if let Ok(f) = flow_from_wire(t.flow.as_ref()) {
                            if !host.translate(f) {
                                c.translates_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    _ => {}
                },
                Ok(None) => break Err(anyhow::anyhow!("the collector ended the stream")),
                Err(status) => break Err(anyhow::anyhow!("the collector broke the stream: {status}")),
            },
        }
    };
    // Leave the gauges as they were before this agent.
    c.suspects.fetch_sub(suspects, Ordering::Relaxed);
    c.watched.fetch_sub(watched, Ordering::Relaxed);
    c.stuck.fetch_sub(stuck, Ordering::Relaxed);
    c.outboxed.fetch_sub(outbox.len() as i64, Ordering::Relaxed);
    res.with_context(|| sim::host_name(index))
}

#[cfg(test)]
mod tests {
    use tcpstall_common::SampleReason;
    use tcpstall_proto::convert::batch_to_wire;

    use super::*;

    /// As they go on the wire.
    fn wire(polled: &sim::Polled, mono_us: u64, connections: u32, max: usize) -> Vec<v1::Batch> {
        let mono = Duration::from_micros(mono_us);
        split(polled.clone(), mono, connections, max)
            .into_iter()
            .map(batch_to_wire)
            .collect()
    }

    #[test]
    fn a_poll_is_split_as_the_agent_splits_it() {
        let net = sim::Net::direct(10);
        let polled = sim::Polled {
            samples: (0..300)
                .map(|k| (SampleReason::Suspect, sim::a_queued(1, k, false, net, 2000)))
                .collect(),
            absent: (0..5)
                .map(|k| sim::a_flow(1, 1000 + k, false, net))
                .collect(),
            lookups: Vec::new(),
            stalls: Vec::new(),
        };
        let batches = wire(&polled, 7, 20_000, 128);
        assert_eq!(batches.len(), 305usize.div_ceil(128));
        for b in &batches {
            assert!(b.samples.len() + b.absent.len() <= 128);
            assert_eq!((b.mono_us, b.connections), (7, 20_000));
        }
        assert_eq!(batches[0].absent.len(), 5, "absent first");
        let cookies: Vec<u64> = batches
            .iter()
            .flat_map(|b| &b.samples)
            .map(|s| s.cookie)
            .collect();
        let want: Vec<u64> = polled.samples.iter().map(|(_, s)| s.cookie).collect();
        assert_eq!(cookies, want, "all, in order");
        assert_eq!(wire(&polled, 7, 1, 100_000).len(), 1, "one batch per poll");
    }

    /// A port-forward's conntrack entry goes no later than its absent
    /// flow, answers to Translate requests ahead of the samples, and no
    /// batch grows past the bound for them.
    #[test]
    fn lookups_travel_with_their_absent_flows_within_the_bound() {
        let net = sim::Net {
            hosts: 10,
            translated_every: 2,
        };
        // Connections 2, 6 and 10 are forwarded on their peers' hosts: the
        // peer has no socket on the tuple it is first asked for.
        let forwarded: Vec<tcpstall_common::FlowTuple> = [2, 6, 10]
            .iter()
            .map(|&k| sim::a_flow(1, k, true, net).reversed())
            .collect();
        let lookups: Vec<_> = forwarded
            .iter()
            .map(|&f| sim::nat::b_lookup(f, net).expect("a forwarded port"))
            .chain([sim::nat::translate_answer(forwarded[0].reversed())])
            .collect();
        let mut absent: Vec<tcpstall_common::FlowTuple> = (0..5)
            .map(|k| sim::a_flow(1, 1001 + 2 * k, false, net))
            .collect();
        absent.extend(&forwarded);
        let polled = |samples: u32| sim::Polled {
            samples: (0..samples)
                .map(|k| (SampleReason::Suspect, sim::a_queued(1, k, false, net, 2000)))
                .collect(),
            absent: absent.clone(),
            lookups: lookups.clone(),
            stalls: Vec::new(),
        };
        for (samples, max) in [(300, 128), (3, 128), (0, 1), (120, 128), (4, 5)] {
            let batches = wire(&polled(samples), 7, 20_000, max);
            let (mut sent_absent, mut sent_lookups, mut sent_samples) = (0, 0, 0);
            // A lookup never arrives after its flow's absence (the
            // collector would take the absence for the last word).
            let batch_of = |f: &tcpstall_proto::v1::FlowTuple, lookups: bool| {
                batches.iter().position(|b| {
                    if lookups {
                        b.lookups
                            .iter()
                            .any(|l| !l.asked && l.flow.as_ref() == Some(f))
                    } else {
                        b.absent.contains(f)
                    }
                })
            };
            for b in &batches {
                let n = b.samples.len() + b.absent.len() + b.lookups.len();
                assert!(n <= max, "{n} entries, at most {max}");
                for l in b.lookups.iter().filter(|l| !l.asked) {
                    let f = l.flow.as_ref().expect("flow");
                    assert!(batch_of(f, true) <= batch_of(f, false), "{f:?}");
                }
                sent_absent += b.absent.len();
                sent_lookups += b.lookups.len();
                sent_samples += b.samples.len();
            }
            assert_eq!(
                (sent_absent, sent_lookups, sent_samples),
                (8, 4, samples as usize),
                "each once ({samples} samples, at most {max} a batch)"
            );
            if samples + 8 + 4 <= max as u32 {
                assert_eq!(batches.len(), 1, "together when there is room");
            }
        }
    }
}
