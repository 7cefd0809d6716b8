//! `tcpstall-bench collector-inproc`: the collector's own work per sample,
//! without the network. The same simulated hosts as `collector-load`
//! (see [`sim`]), on a simulated clock, as fast as one thread can go: each
//! host's poll is encoded as the agent would send it, then decoded and
//! checked as the ingest task does (`raw::AgentMessage`,
//! `batch_from_wire`), then handed to the [`Matcher`] with a real store on
//! a temporary SQLite file; its watch requests go through the [`Gateway`]
//! back to the hosts, the two roles' messages moved by hand as their tasks
//! move them.
//!
//! Figures: CPU per sample of the ingest step and of the matcher (this
//! thread's CPU time around each step), the store thread's CPU over the
//! same window, and the matcher's own estimate of what it holds per
//! tracked connection. What this leaves out is what `collector-load`
//! measures: HTTP/2, tonic, task scheduling.

use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message;
use tcpstall_collector::gateway::{AgentClock, Input};
use tcpstall_collector::inprocess::InProcess;
use tcpstall_collector::matcher::SILENT_POLLS;
use tcpstall_collector::messages::{HostId, ToMatcher};
use tcpstall_collector::store::{SharedStore, SqliteStore, StoreConfig};
use tcpstall_common::{AgentBatch, Diagnosis, HostHello, NamespaceAddresses, ToAgent};
use tcpstall_proto::convert::{batch_from_wire, batch_to_wire};
use tcpstall_proto::{raw, v1};
use tokio::sync::{mpsc, oneshot};

use super::sim;
use super::Fleet;
use crate::{measure, procfs};

/// This thread's CPU time so far (the scheduler's exact run time, not
/// ticks): other work on the machine does not count against a step.
fn thread_cpu() -> anyhow::Result<Duration> {
    Ok(measure::cpu(nix::sys::resource::UsageWho::RUSAGE_THREAD)?.total())
}

/// Arguments of `tcpstall-bench collector-inproc`.
#[derive(Debug, Clone, clap::Args)]
pub struct InprocArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// Polls before the measured ones (stuck flows reach their steady
    /// state after stuck-for + threshold).
    #[arg(long, default_value_t = 25)]
    warmup_polls: u32,
    /// Measured polls (of every host).
    #[arg(long, default_value_t = 30)]
    polls: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const INTERVAL: Duration = Duration::from_secs(2);
const THRESHOLD: Duration = Duration::from_secs(10);

/// One host's poll as the agent sends it, in one batch.
fn encode(polled: sim::Polled, now: Duration, conns: u32) -> Vec<u8> {
    let batch = AgentBatch {
        mono: now,
        connections: conns,
        samples: polled.samples,
        absent: polled.absent,
        lookups: polled.lookups,
        ..AgentBatch::default()
    };
    v1::AgentMessage {
        body: Some(v1::agent_message::Body::Batch(batch_to_wire(batch))),
    }
    .encode_to_vec()
}

#[derive(Debug, Default)]
struct Totals {
    samples: u64,
    ingest: Duration,
    matcher: Duration,
}

pub fn run(args: &InprocArgs) -> anyhow::Result<()> {
    let seen = measure(args)?;
    anyhow::ensure!(
        seen.samples > 0 && seen.tracked > 0,
        "nothing was ingested or tracked: {seen:?}"
    );
    if seen.episodes_opened == 0 {
        println!("No episode opened: too few polls for the stuck flows to pass the threshold.");
    }
    if args.fleet.translated_every > 0 {
        let by = |counts: &[u64]| {
            Diagnosis::ALL
                .iter()
                .zip(counts)
                .filter(|(_, &n)| n > 0)
                .map(|(d, n)| format!("{} {n}", d.id()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "Through NAT (one in {} connections): {} peers looked for again at a translated 4-tuple, {} Translate requests asked; episodes by the diagnosis they opened with: {}; open now: {}.",
            args.fleet.translated_every,
            seen.joined_via_translation,
            seen.translate_asked,
            by(&seen.opened_by_diagnosis),
            by(&seen.open_by_diagnosis.map(|n| n as u64)),
        );
    }
    Ok(())
}

/// What one run saw, for the tests below.
#[derive(Debug)]
struct Seen {
    samples: u64,
    tracked: usize,
    episodes_opened: u64,
    /// Peers looked for again at a translated 4-tuple, and Translate
    /// requests asked.
    joined_via_translation: u64,
    translate_asked: u64,
    /// Episodes by the diagnosis they opened with, and open ones by their
    /// diagnosis at the end (indexed as [`Diagnosis::ALL`]).
    opened_by_diagnosis: [u64; Diagnosis::ALL.len()],
    open_by_diagnosis: [usize; Diagnosis::ALL.len()],
}

fn measure(args: &InprocArgs) -> anyhow::Result<Seen> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let _guard = rt.enter();
    // A queue deep enough that the store never drops a write while this
    // thread runs ahead of it (the figure would flatter it).
    let mut cfg = StoreConfig::new(dir.path().join("inproc.db"));
    cfg.queue = 1 << 22;
    let (store, store_thread, next_episode) =
        SqliteStore::open(cfg).context("opening the store")?;
    let store: SharedStore = std::sync::Arc::new(store);
    let mut roles = InProcess::new(
        store.clone(),
        THRESHOLD,
        next_episode,
        100_000,
        100,
        1 << 20,
    );
    let mut streams: Vec<(HostId, AgentClock)> = Vec::new();
    args.fleet.check()?;
    let shape = args.fleet.shape(INTERVAL);
    let mut hosts = Vec::new();
    let mut inboxes = Vec::new();
    let wall0: i64 = 1_800_000_000_000;
    for i in 0..args.fleet.agents {
        let (tx, rx) = mpsc::channel::<ToAgent>(1 << 16);
        let (reply, answer) = oneshot::channel();
        roles.gateway.handle(
            Input::Hello {
                session: u64::from(i),
                hello: Box::new(HostHello {
                    host: sim::host_name(i),
                    machine_id: tcpstall_common::MachineId::new(&format!("{i:032x}")).ok(),
                    agent_version: "bench".into(),
                    kernel: "bench".into(),
                    boot_id: "bench".into(),
                    namespaces: {
                        let mut ns =
                            NamespaceAddresses::one("host", vec![sim::host_addr(i).into()]);
                        if shape.net.translated_every > 0 {
                            ns.extend(NamespaceAddresses::one(
                                sim::nat::CONTAINER_NETNS,
                                vec![sim::nat::container_addr(i).into()],
                            ));
                        }
                        ns
                    },
                    interval: INTERVAL,
                    answers_lookups: true,
                    forwards: shape.net.forwards(i),
                    probes: Default::default(),
                }),
                peer: None,
                tx,
                reply,
            },
            wall0,
        );
        roles.pump(wall0);
        let id = answer
            .blocking_recv()
            .context("hello unanswered")?
            .map_err(|e| anyhow::anyhow!("hello refused: {e}"))?;
        streams.push((id, AgentClock::default()));
        let mut host = sim::Host::new(i, shape, args.seed);
        host.start_load(Duration::ZERO);
        hosts.push(host);
        inboxes.push(rx);
    }
    let me = std::process::id();
    let mut totals = Totals::default();
    let mut store_before = None;
    let mut measured_from = Instant::now();
    let max_samples = usize::MAX;
    for poll in 0..args.warmup_polls + args.polls {
        if poll == args.warmup_polls {
            totals = Totals::default();
            store_before = Some(procfs::threads(me)?);
            measured_from = Instant::now();
        }
        // Hosts poll at different moments of the interval, as a fleet does.
        for (i, host) in hosts.iter_mut().enumerate() {
            let offset = INTERVAL.mul_f64(i as f64 / f64::from(args.fleet.agents.max(1)));
            let now = INTERVAL * (poll + 1) + offset;
            let now_ms = wall0 + i64::try_from(now.as_millis()).unwrap_or(0);
            let polled = host.poll(now);
            let wire = encode(polled, now, args.fleet.conns_per_agent);

            let t0 = thread_cpu()?;
            let msg =
                raw::AgentMessage::decode(prost::bytes::Bytes::from(wire)).context("decode")?;
            let Some(raw::agent_message::Body::Batch(b)) = msg.body else {
                anyhow::bail!("not a batch");
            };
            let batch =
                batch_from_wire(b, max_samples).map_err(|e| anyhow::anyhow!("refused: {e}"))?;
            let t1 = thread_cpu()?;
            totals.samples += batch.samples.len() as u64 + batch.absent.len() as u64;
            let (host_id, clock) = &mut streams[i];
            let msg = ToMatcher::Batch {
                host: *host_id,
                session: i as u64,
                taken_ms: clock.taken_ms(batch.mono, now_ms),
                batch,
            };
            roles.matcher.handle(msg, now_ms);
            if i % 64 == 0 {
                roles.matcher.expire(now_ms, SILENT_POLLS);
            }
            roles.pump(now_ms);
            let t2 = thread_cpu()?;
            totals.ingest += t1 - t0;
            totals.matcher += t2 - t1;
        }
        for (host, rx) in hosts.iter_mut().zip(inboxes.iter_mut()) {
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    ToAgent::Watch(f) => host.watch(f),
                    ToAgent::Unwatch(f) => host.unwatch(&f),
                    ToAgent::Translate(f) => {
                        host.translate(f);
                    }
                }
            }
        }
    }
    let wall = measured_from.elapsed();
    // The store thread's run time (schedstat), over the measured polls.
    let store_ns: u64 = match store_before {
        Some(before) => procfs::threads_since(&before, &procfs::threads(me)?)
            .into_iter()
            .filter(|(name, _)| name.starts_with("tcpstall-store"))
            .map(|(_, (_, _, ns))| ns)
            .sum(),
        None => 0,
    };
    let stats = roles.matcher.stats();
    let tracked = stats.suspects + stats.watched;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / totals.samples.max(1) as f64;
    let store_s = store_ns as f64 / 1e9;
    println!(
        "{} hosts, {} measured polls of each: {} samples ({:.0} per host and poll) in {:.1} s",
        args.fleet.agents,
        args.polls,
        totals.samples,
        totals.samples as f64 / f64::from(args.fleet.agents.max(1) * args.polls.max(1)),
        wall.as_secs_f64()
    );
    println!();
    println!("| step | µs per sample |");
    println!("|---|---:|");
    println!(
        "| ingest: decode + check (`batch_from_wire`) | {:.2} |",
        per(totals.ingest)
    );
    println!(
        "| matcher (`Matcher::handle`, expiry) and gateway | {:.2} |",
        per(totals.matcher)
    );
    println!(
        "| store thread (CPU) | {:.2} |",
        store_s * 1e6 / totals.samples.max(1) as f64
    );
    println!();
    println!(
        "At the issue's rate ({:.0} samples/s for {} hosts at 2 s polls) that is {:.1} % of one core.",
        totals.samples as f64 / (f64::from(args.polls) * INTERVAL.as_secs_f64()),
        args.fleet.agents,
        (per(totals.ingest) + per(totals.matcher) + store_s * 1e6 / totals.samples.max(1) as f64)
            * totals.samples as f64
            / (f64::from(args.polls) * INTERVAL.as_secs_f64())
            / 1e4
    );
    println!(
        "Tracked: {} suspects + {} watched; the matcher's tables and samples {} B per tracked connection; {} episodes opened, {} open.",
        stats.suspects,
        stats.watched,
        stats.tracked_bytes / tracked.max(1),
        stats.episodes_opened,
        stats.open_episodes
    );
    anyhow::ensure!(
        stats.store_dropped == 0,
        "the store dropped {} writes: its figure would be too low",
        stats.store_dropped
    );
    drop(roles);
    rt.block_on(store.shutdown());
    let _ = store_thread.join();
    Ok(Seen {
        samples: totals.samples,
        tracked,
        episodes_opened: stats.episodes_opened,
        joined_via_translation: stats.joined_via_translation,
        translate_asked: stats.translate_asked,
        opened_by_diagnosis: stats.opened_by_diagnosis,
        open_by_diagnosis: stats.open_by_diagnosis,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_ingests_tracks_and_opens_episodes() {
        let args = InprocArgs {
            fleet: Fleet {
                agents: 4,
                conns_per_agent: 2_000,
                suspect_frac: 0.01,
                stuck_frac: 0.002,
                stuck_for: Duration::from_secs(20),
                translated_every: 0,
            },
            warmup_polls: 3,
            polls: 12,
            seed: 7,
        };
        let seen = measure(&args).expect("run");
        // 20 churning suspects and 4 stuck flows per host and poll, and
        // their watched peers: well over 20 samples per host and poll.
        assert!(seen.samples > 4 * 12 * 20, "{seen:?}");
        assert!(seen.tracked > 0, "{seen:?}");
        // Stuck for 20 s against a 10 s threshold: episodes open.
        assert!(seen.episodes_opened > 0, "{seen:?}");
        assert_eq!(seen.joined_via_translation, 0, "{seen:?}");
    }

    /// Of `by` (indexed as [`Diagnosis::ALL`]), those diagnosed `d`.
    fn count(by: &[u64], d: Diagnosis) -> u64 {
        Diagnosis::ALL
            .iter()
            .position(|&x| x == d)
            .map_or(0, |i| by[i])
    }

    /// Half the connections through a NAT, on either end's host: the
    /// collector joins every stuck flow with its peer — no half-open, no
    /// unmonitored peer — and the port-forwards through the peer host's
    /// lookup.
    #[test]
    fn translated_stalls_are_joined_with_their_peers() {
        let args = InprocArgs {
            fleet: Fleet {
                agents: 6,
                conns_per_agent: 2_000,
                suspect_frac: 0.01,
                stuck_frac: 0.005,
                stuck_for: Duration::from_secs(20),
                translated_every: 2,
            },
            warmup_polls: 3,
            polls: 14,
            seed: 7,
        };
        let seen = measure(&args).expect("run");
        assert!(seen.joined_via_translation > 0, "{seen:?}");
        let open = seen.open_by_diagnosis.map(|n| n as u64);
        for by in [&seen.opened_by_diagnosis, &open] {
            assert_eq!(count(by, Diagnosis::HalfOpen), 0, "{seen:?}");
            assert_eq!(count(by, Diagnosis::PeerUnmonitored), 0, "{seen:?}");
        }
        // A port-forward's peer answers a poll later than a direct one's:
        // an episode opened in the last polls may still wait for it.
        let (all, joined) = (
            open.iter().sum::<u64>(),
            count(&open, Diagnosis::PeerNotReading),
        );
        assert!(all > 0 && joined * 10 >= all * 9, "{seen:?}");
    }
}
