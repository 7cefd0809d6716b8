//! `tcpstall-bench bpf-poll`: what the BPF iter/tcp probe adds to a poll,
//! against the sock_diag pass it enriches, over the same established
//! loopback connections (issue 6):
//!
//! 1. the sock_diag pass: tcpstall's [`Poller::poll`] and `positions()` on
//!    every sample, as in `tcpstall-bench poll`;
//! 2. the BPF pass: one iter/tcp pass ([`TcpIterProbe::read`]: attach a
//!    link, open the iterator, read every record, parse it) into a reused
//!    map by cookie, then the join: every sock_diag sample's cookie looked
//!    up and its absolute positions derived;
//! 3. the BPF floor: the same pass reading the bytes only
//!    ([`TcpIterProbe::read_raw`]).
//!
//! All three are measured with `getrusage(RUSAGE_SELF)` deltas (one
//! thread: the iterator runs the program inside our `read`, so its cost is
//! our system time), interleaved in a rotating order. Needs root.

use std::collections::HashMap;
use std::hint::black_box;

use anyhow::{ensure, Context};
use nix::sys::resource::UsageWho;
use tcpstall_agent::netns::{self, Netns};
use tcpstall_agent::probe::TcpIterProbe;
use tcpstall_agent::Poller;
use tcpstall_common::{KernelTcp, Opened};

use crate::holder::{Holders, MAX_PER_HOLDER};
use crate::measure::{timed, Mem, Run, Summary};

/// The target: the BPF pass costs no more than the sock_diag pass.
const TARGET_VS_DIAG: f64 = 1.0;

/// Arguments of `tcpstall-bench bpf-poll`.
#[derive(Debug, clap::Args)]
pub struct BpfPollArgs {
    /// Established connections to hold, one run per value, comma-separated
    /// and ascending (both ends are held, so a pass sees 2N sockets).
    #[arg(long, value_delimiter = ',', required = true)]
    conns: Vec<usize>,
    /// Measured passes of each kind per N, after one warm-up of each.
    #[arg(long, default_value_t = 20)]
    polls: usize,
    /// Connections per holder process.
    #[arg(long, default_value_t = MAX_PER_HOLDER)]
    per_holder: usize,
    /// One connection in this many keeps 64 unread bytes (0: none).
    #[arg(long, default_value_t = 10)]
    unread_every: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Diag,
    Bpf,
    BpfRaw,
}

const KINDS: [Kind; 3] = [Kind::Diag, Kind::Bpf, Kind::BpfRaw];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Diag => "(1) sock_diag pass: poll + positions",
            Kind::Bpf => "(2) BPF pass: iter/tcp + parse + join by cookie",
            Kind::BpfRaw => "(3) BPF floor: iter/tcp bytes only",
        }
    }
}

#[derive(Debug)]
struct Outcome {
    conns: usize,
    sockets: usize,
    records: usize,
    joined: usize,
    bpf_bytes: usize,
    runs: [Vec<Run>; 3],
    /// Before the first passes, after them, after the last.
    mem: [Mem; 3],
}

impl Outcome {
    fn cpu(&self, kind: Kind) -> Summary {
        Summary::of(self.runs[kind as usize].iter().map(|r| r.cpu.total()))
    }
}

/// Runs the benchmark and prints a markdown report on stdout.
pub fn run(args: &BpfPollArgs) -> anyhow::Result<()> {
    ensure!(args.polls > 0, "--polls must be at least 1");
    ensure!(
        args.conns.windows(2).all(|w| w[0] < w[1]) && args.conns.first() > Some(&0),
        "--conns must be positive and ascending"
    );
    TcpIterProbe::built().context("this build has no BPF probe")?;
    let mut probe = TcpIterProbe::load().context("loading the BPF probe (needs root)")?;
    let mut holders = Holders::default();
    let mut outcomes = Vec::new();
    for &n in &args.conns {
        eprintln!("tcpstall-bench: opening connections up to {n} ...");
        holders.grow_to(n, args.per_holder, args.unread_every)?;
        eprintln!(
            "tcpstall-bench: {} connections held; {} passes of each kind ...",
            holders.held(),
            args.polls
        );
        outcomes.push(measure(n, args, &mut probe)?);
    }
    drop(holders);
    report(args, &outcomes);
    Ok(())
}

/// The agent's join: each sample's BPF record by cookie, with the
/// absolute positions made relative. Returns how many joined.
fn join(cookies: &[(u64, Opened)], map: &HashMap<u64, KernelTcp>) -> usize {
    let mut joined = 0;
    for (cookie, opened) in cookies {
        if let Some(k) = map.get(cookie) {
            joined += 1;
            black_box((
                k.snd_relative(*opened, k.snd_nxt),
                k.rcv_relative(k.copied_seq),
                k.sacks_sent().count(),
                k.sacks_received().count(),
                k.cork(),
            ));
        }
    }
    joined
}

fn measure(conns: usize, args: &BpfPollArgs, probe: &mut TcpIterProbe) -> anyhow::Result<Outcome> {
    let ns: Netns = netns::current()?;
    let mut poller = Poller::new(vec![ns.clone()])?;
    let mut map: HashMap<u64, KernelTcp> = HashMap::new();
    let before = Mem::read()?;
    // Warm-up, one of each; also what the join looks up.
    let (samples, failures) = poller.poll();
    ensure!(failures.is_empty(), "sock_diag poll failed: {failures:?}");
    let cookies: Vec<(u64, Opened)> = samples
        .iter()
        .map(|s| (s.cookie, s.opened.unwrap_or(Opened::Passive)))
        .collect();
    bpf_pass(probe, &ns, &mut map)?;
    probe.read_raw(&ns).context("BPF pass")?;
    let after_first = Mem::read()?;

    let mut runs: [Vec<Run>; 3] = Default::default();
    let (mut sockets, mut records, mut joined, mut bpf_bytes) =
        (usize::MAX, usize::MAX, usize::MAX, usize::MAX);
    for i in 0..args.polls {
        for k in 0..KINDS.len() {
            let kind = KINDS[(i + k) % KINDS.len()];
            let run = match kind {
                Kind::Diag => {
                    let (run, n) = timed(UsageWho::RUSAGE_SELF, || {
                        let (samples, failures) = poller.poll();
                        ensure!(failures.is_empty(), "sock_diag poll failed: {failures:?}");
                        for s in samples {
                            black_box(s.positions());
                        }
                        Ok(samples.len())
                    })?;
                    sockets = sockets.min(n);
                    run
                }
                Kind::Bpf => {
                    let (run, (n, j)) = timed(UsageWho::RUSAGE_SELF, || {
                        let n = bpf_pass(probe, &ns, &mut map)?;
                        Ok((n, join(&cookies, &map)))
                    })?;
                    records = records.min(n);
                    joined = joined.min(j);
                    run
                }
                Kind::BpfRaw => {
                    let (run, n) = timed(UsageWho::RUSAGE_SELF, || {
                        probe.read_raw(&ns).context("BPF pass")
                    })?;
                    bpf_bytes = bpf_bytes.min(n);
                    run
                }
            };
            runs[kind as usize].push(run);
        }
    }
    let after_last = Mem::read()?;
    ensure!(
        sockets >= 2 * conns && records >= 2 * conns && joined >= 2 * conns,
        "a pass missed sockets: sock_diag {sockets}, BPF {records}, joined {joined}, want {}",
        2 * conns
    );
    ensure!(
        probe.stats().malformed == 0,
        "malformed BPF records: {:?}",
        probe.stats()
    );
    Ok(Outcome {
        conns,
        sockets,
        records,
        joined,
        bpf_bytes,
        runs,
        mem: [before, after_first, after_last],
    })
}

fn bpf_pass(
    probe: &mut TcpIterProbe,
    ns: &Netns,
    map: &mut HashMap<u64, KernelTcp>,
) -> anyhow::Result<usize> {
    map.clear();
    probe
        .read(ns, |t| {
            map.insert(t.cookie, t);
        })
        .context("BPF pass")?;
    Ok(map.len())
}

fn mean_ms(runs: &[Run], f: impl Fn(&Run) -> std::time::Duration) -> f64 {
    let total: std::time::Duration = runs.iter().map(f).sum();
    total.as_secs_f64() * 1e3 / runs.len().max(1) as f64
}

fn report(args: &BpfPollArgs, outcomes: &[Outcome]) {
    let command: Vec<String> = std::env::args().collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("Machine: {cores} cores, kernel {}", kernel.trim());
    println!("Command: `{}`", command.join(" "));
    println!(
        "CPU time = user + sys per pass over {} passes of each kind, interleaved, from \
         getrusage(RUSAGE_SELF) deltas (one thread). user/sys are means (tick-sampled); the \
         totals are exact.",
        args.polls
    );
    println!();
    println!("| N conns | sockets | what | CPU median ms | CPU min ms | user ms (mean) | sys ms (mean) | wall median ms | bytes/pass |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        for kind in KINDS {
            let runs = &o.runs[kind as usize];
            let cpu = o.cpu(kind);
            let (sockets, bytes) = match kind {
                Kind::Diag => (o.sockets.to_string(), String::new()),
                Kind::Bpf => (
                    format!("{} ({} joined)", o.records, o.joined),
                    String::new(),
                ),
                Kind::BpfRaw => (String::new(), o.bpf_bytes.to_string()),
            };
            println!(
                "| {} | {sockets} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {bytes} |",
                o.conns,
                kind.label(),
                cpu.median_ms,
                cpu.min_ms,
                mean_ms(runs, |r| r.cpu.user),
                mean_ms(runs, |r| r.cpu.sys),
                Summary::of(runs.iter().map(|r| r.wall)).median_ms,
            );
        }
    }
    println!();
    println!("| N conns | (2)/(1) median (min) | target ≤ {TARGET_VS_DIAG} | VmRSS before MiB | after first MiB | after last MiB |");
    println!("|---:|---:|---|---:|---:|---:|");
    for o in outcomes {
        let (d, b) = (o.cpu(Kind::Diag), o.cpu(Kind::Bpf));
        let ratio = b.median_ms / d.median_ms;
        let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
        println!(
            "| {} | {ratio:.2} ({:.2}) | {} | {} | {} | {} |",
            o.conns,
            b.min_ms / d.min_ms,
            if ratio <= TARGET_VS_DIAG {
                "met"
            } else {
                "MISSED"
            },
            mib(o.mem[0].rss_kib),
            mib(o.mem[1].rss_kib),
            mib(o.mem[2].rss_kib),
        );
    }
}
