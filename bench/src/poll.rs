//! `tcpstall-bench poll`: the CPU cost of one full poll, three ways, over
//! the same established loopback connections:
//!
//! 1. tcpstall's [`Poller::poll`] with parsing, the listener join that
//!    decides who opened each connection, and `positions()` on every
//!    sample (the derivation);
//! 2. a raw dump ([`DiagSocket::dump_raw`], both families) that receives
//!    the bytes and walks only the netlink headers: the floor any
//!    sock_diag reader pays;
//! 3. `ss -tinmH`, run as a child with stdout to /dev/null.
//!
//! (1) and (2) are measured with `getrusage(RUSAGE_SELF)` deltas (the
//! bench is one thread; the kernel builds dump replies inside our
//! `recvmsg`, so its share is our system time). Not RUSAGE_THREAD: for
//! it the kernel reports the running thread's time as of its last tick or
//! context switch, up to a tick stale, while RUSAGE_SELF brings the
//! running thread's time up to date first. (3) is measured with
//! `getrusage(RUSAGE_CHILDREN)` deltas around spawning and waiting for
//! `ss` (the holders never exit during a measurement). The three run
//! interleaved, in a rotating order, so machine noise hits all of them.
//! Afterwards a captured dump is parsed in memory, step by step, to show
//! where the user-space part of (1) goes.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use nix::sys::resource::UsageWho;
use tcpstall_agent::diag::{parse, DiagSocket, Family, ParseStats};
use tcpstall_agent::poll::opened;
use tcpstall_agent::{netns, Poller};
use tcpstall_common::{SocketSample, TcpState};

use crate::holder::{Holders, MAX_PER_HOLDER};
use crate::measure::{timed, Mem, Run, Summary};

/// Targets from the issue: (1) ≤ 1.3 × (2) and (1) ≤ 0.35 × (3).
const TARGET_VS_RAW: f64 = 1.3;
const TARGET_VS_SS: f64 = 0.35;

/// Arguments of `tcpstall-bench poll`.
#[derive(Debug, clap::Args)]
pub struct PollArgs {
    /// Established connections to hold, one run per value, comma-separated
    /// and ascending (both ends are held, so a poll sees 2N sockets). Later
    /// values add connections to those already held.
    #[arg(long, value_delimiter = ',', required = true)]
    conns: Vec<usize>,
    /// Measured polls of each kind per N, after one warm-up of each.
    #[arg(long, default_value_t = 20)]
    polls: usize,
    /// Connections per holder process (each costs two of the 20,000
    /// descriptors a process may hold).
    #[arg(long, default_value_t = MAX_PER_HOLDER)]
    per_holder: usize,
    /// One connection in this many keeps 64 unread bytes in the accepting
    /// socket's receive queue (0: none).
    #[arg(long, default_value_t = 10)]
    unread_every: usize,
    /// The `ss` to compare with.
    #[arg(long, default_value = "ss")]
    ss: PathBuf,
}

/// What to measure, in the order of the first iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcpstall,
    Raw,
    Ss,
}

const KINDS: [Kind; 3] = [Kind::Tcpstall, Kind::Raw, Kind::Ss];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Tcpstall => "(1) tcpstall poll + positions",
            Kind::Raw => "(2) raw dump, bytes only",
            Kind::Ss => "(3) `ss -tinmH`",
        }
    }
}

/// Everything measured for one N.
#[derive(Debug)]
struct Outcome {
    conns: usize,
    /// Connections tcpstall's poll returned (listeners excluded).
    sockets: usize,
    /// Of those, ESTABLISHED.
    established: usize,
    /// Sockets `ss -tinmH` printed.
    ss_sockets: usize,
    /// Bytes of one raw dump, both families.
    dump_bytes: usize,
    runs: [Vec<Run>; 3],
    /// Before the first poll, after it, after the last.
    mem: [Mem; 3],
    breakdown: Vec<(&'static str, Summary)>,
}

impl Outcome {
    fn cpu(&self, kind: Kind) -> Summary {
        Summary::of(self.runs[kind as usize].iter().map(|r| r.cpu.total()))
    }
}

/// Runs the benchmark and prints a markdown report on stdout.
pub fn run(args: &PollArgs) -> anyhow::Result<()> {
    ensure!(args.polls > 0, "--polls must be at least 1");
    ensure!(
        args.conns.windows(2).all(|w| w[0] < w[1]) && args.conns.first() > Some(&0),
        "--conns must be positive and ascending"
    );
    let mut holders = Holders::default(); // both ends on loopback
    let mut outcomes = Vec::new();
    for &n in &args.conns {
        eprintln!("tcpstall-bench: opening connections up to {n} ...");
        holders.grow_to(n, args.per_holder, args.unread_every)?;
        eprintln!(
            "tcpstall-bench: {} connections held; {} polls of each kind ...",
            holders.held(),
            args.polls
        );
        outcomes.push(measure(n, args)?);
    }
    drop(holders);
    report(args, &outcomes)
}

fn measure(conns: usize, args: &PollArgs) -> anyhow::Result<Outcome> {
    let mut poller = Poller::new(vec![netns::current()?])?;
    let mut raw = DiagSocket::open().context("sock_diag socket")?;
    let before = Mem::read()?;
    // Warm-up, one of each; the first tcpstall poll sizes its buffers.
    tcpstall_poll(&mut poller)?;
    let after_first = Mem::read()?;
    raw_dump(&mut raw)?;
    run_ss(&args.ss, Stdio::null())?;

    let mut runs: [Vec<Run>; 3] = Default::default();
    let mut sockets = usize::MAX;
    let mut dump_bytes = usize::MAX;
    for i in 0..args.polls {
        for k in 0..KINDS.len() {
            let kind = KINDS[(i + k) % KINDS.len()];
            let run = match kind {
                Kind::Tcpstall => {
                    let (run, n) = timed(UsageWho::RUSAGE_SELF, || tcpstall_poll(&mut poller))?;
                    sockets = sockets.min(n);
                    run
                }
                Kind::Raw => {
                    let (run, n) = timed(UsageWho::RUSAGE_SELF, || raw_dump(&mut raw))?;
                    dump_bytes = dump_bytes.min(n);
                    run
                }
                Kind::Ss => {
                    timed(UsageWho::RUSAGE_CHILDREN, || {
                        run_ss(&args.ss, Stdio::null())
                    })?
                    .0
                }
            };
            runs[kind as usize].push(run);
        }
    }
    let after_last = Mem::read()?;

    // Not measured: checks that every poll covered the sockets.
    ensure!(
        sockets >= 2 * conns,
        "a poll saw only {sockets} connections; {conns} established loopback connections make {}",
        2 * conns
    );
    let established = poller
        .poll()
        .0
        .iter()
        .filter(|s| s.state == TcpState::Established)
        .count();
    let ss_sockets = ss_socket_count(&args.ss)?;
    ensure!(
        ss_sockets >= 2 * conns,
        "ss printed only {ss_sockets} sockets for {conns} connections"
    );
    drop(poller);
    let breakdown = breakdown(&mut raw, args.polls)?;
    Ok(Outcome {
        conns,
        sockets,
        established,
        ss_sockets,
        dump_bytes,
        runs,
        mem: [before, after_first, after_last],
        breakdown,
    })
}

/// (1): one poll of the current namespace and the derived positions of
/// every connection. Returns the number of connections.
fn tcpstall_poll(poller: &mut Poller) -> anyhow::Result<usize> {
    let (samples, failures) = poller.poll();
    if let Some(failure) = failures.into_iter().next() {
        return Err(failure).context("tcpstall poll");
    }
    for s in samples {
        black_box(s.positions());
    }
    Ok(samples.len())
}

/// (2): both families, bytes only. Returns the bytes received.
fn raw_dump(sock: &mut DiagSocket) -> anyhow::Result<usize> {
    let mut bytes = 0;
    for family in Family::BOTH {
        bytes += sock.dump_raw(family).context("raw dump")?;
    }
    Ok(bytes)
}

/// (3): `ss -tinmH`, waited for. Returns its stdout if piped.
fn run_ss(ss: &PathBuf, stdout: Stdio) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(ss)
        .arg("-tinmH")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} -tinmH", ss.display()))?;
    if !out.status.success() {
        bail!("{} -tinmH: {}", ss.display(), out.status);
    }
    Ok(out.stdout)
}

/// Sockets `ss -tinmH` prints: `-i` puts the details on a second line that
/// starts with a tab.
fn ss_socket_count(ss: &PathBuf) -> anyhow::Result<usize> {
    let out = run_ss(ss, Stdio::piped())?;
    Ok(out
        .split(|&b| b == b'\n')
        .filter(|l| l.first().is_some_and(|b| !b.is_ascii_whitespace()))
        .count())
}

/// Where the user-space part of (1) goes: one dump is captured, then
/// parsed in memory `polls` times per step, each step adding one part of
/// what `Poller::poll` does (agent/src/poll.rs). No kernel work here.
fn breakdown(raw: &mut DiagSocket, polls: usize) -> anyhow::Result<Vec<(&'static str, Summary)>> {
    // One contiguous buffer, so freeing it hands the memory back at once.
    let mut bytes = Vec::new();
    let mut chunks = Vec::new();
    for family in Family::BOTH {
        raw.dump_chunks(family, |chunk, seq| {
            chunks.push((bytes.len()..bytes.len() + chunk.len(), seq));
            bytes.extend_from_slice(chunk);
            parse::chunk_end(chunk, seq)
        })
        .context("capturing a dump")?;
    }
    let chunks: Vec<(&[u8], u32)> = chunks
        .into_iter()
        .map(|(range, seq)| (&bytes[range], seq))
        .collect();

    let mut samples: Vec<SocketSample> = Vec::new();
    let mut listeners: HashSet<(u64, u16, IpAddr)> = HashSet::new();
    let mut stats = ParseStats::default();
    let mut steps = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut()| -> anyhow::Result<()> {
        f();
        let mut cpu = Vec::with_capacity(polls);
        for _ in 0..polls {
            let (run, ()) = timed(UsageWho::RUSAGE_SELF, || {
                f();
                Ok(())
            })?;
            cpu.push(run.cpu.total());
        }
        steps.push((name, Summary::of(cpu)));
        Ok(())
    };
    step(
        "walk netlink headers (what (2) adds to the kernel's work)",
        &mut || {
            for (chunk, seq) in &chunks {
                black_box(parse::chunk_end(chunk, *seq));
            }
        },
    )?;
    step(
        "+ parse every socket into a SocketSample, dropped",
        &mut || {
            for (chunk, seq) in &chunks {
                parse::parse_chunk(chunk, *seq, &mut stats, |s| {
                    black_box(s);
                });
            }
        },
    )?;
    let mut collect = |samples: &mut Vec<SocketSample>,
                       listeners: &mut HashSet<(u64, u16, IpAddr)>| {
        samples.clear();
        listeners.clear();
        for (chunk, seq) in &chunks {
            parse::parse_chunk(chunk, *seq, &mut stats, |s| {
                if s.state == TcpState::Listen {
                    listeners.insert((0, s.local.port(), s.local.ip()));
                } else {
                    samples.push(s);
                }
            });
        }
    };
    step(
        "+ keep samples in a reused Vec, listeners in a HashSet",
        &mut || {
            collect(&mut samples, &mut listeners);
        },
    )?;
    step(
        "+ opened() for every sample (3 HashSet lookups)",
        &mut || {
            collect(&mut samples, &mut listeners);
            for s in samples.iter_mut() {
                s.opened = Some(opened(s, &listeners));
            }
        },
    )?;
    step(
        "+ positions() for every sample = all of (1)'s user space",
        &mut || {
            collect(&mut samples, &mut listeners);
            for s in samples.iter_mut() {
                s.opened = Some(opened(s, &listeners));
            }
            for s in &samples {
                black_box(s.positions());
            }
        },
    )?;
    Ok(steps)
}

fn mean_ms(runs: &[Run], f: impl Fn(&Run) -> Duration) -> f64 {
    let total: Duration = runs.iter().map(f).sum();
    total.as_secs_f64() * 1e3 / runs.len().max(1) as f64
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn verdict(ratio: f64, target: f64) -> &'static str {
    if ratio <= target {
        "met"
    } else {
        "MISSED"
    }
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ss = Command::new("ss")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, kernel {}, {ss}", kernel.trim())
}

fn report(args: &PollArgs, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let command: Vec<String> = std::env::args().collect();
    println!("Machine: {}", machine());
    println!("Command: `{}`", command.join(" "));
    println!(
        "CPU time = user + sys per full poll over {} polls of each kind, interleaved; \
         (1) and (2) from getrusage(RUSAGE_SELF) deltas (one thread), (3) from \
         getrusage(RUSAGE_CHILDREN). The kernel splits user/sys by timer-tick samples, so those \
         two columns are means over all polls; the totals are exact.",
        args.polls
    );
    println!();
    println!("| N conns | sockets | what | CPU median ms | CPU min ms | user ms (mean) | sys ms (mean) | wall median ms | bytes/dump |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        for kind in KINDS {
            let runs = &o.runs[kind as usize];
            let cpu = o.cpu(kind);
            let (sockets, bytes) = match kind {
                Kind::Tcpstall => (o.sockets.to_string(), String::new()),
                Kind::Raw => (String::new(), o.dump_bytes.to_string()),
                Kind::Ss => (o.ss_sockets.to_string(), String::new()),
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
    println!("| N conns | (1)/(2) median (min) | target ≤ {TARGET_VS_RAW} | (1)/(3) median (min) | target ≤ {TARGET_VS_SS} |");
    println!("|---:|---:|---|---:|---|");
    for o in outcomes {
        let (t, r, s) = (o.cpu(Kind::Tcpstall), o.cpu(Kind::Raw), o.cpu(Kind::Ss));
        let vs_raw = t.median_ms / r.median_ms;
        let vs_ss = t.median_ms / s.median_ms;
        println!(
            "| {} | {vs_raw:.2} ({:.2}) | {} | {vs_ss:.2} ({:.2}) | {} |",
            o.conns,
            t.min_ms / r.min_ms,
            verdict(vs_raw, TARGET_VS_RAW),
            t.min_ms / s.min_ms,
            verdict(vs_ss, TARGET_VS_SS),
        );
    }
    println!();
    println!("| N conns | established | VmRSS before first poll MiB | after first MiB | after last MiB | VmHWM after last MiB |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let [before, first, last] = o.mem;
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            o.conns,
            o.established,
            mib(before.rss_kib),
            mib(first.rss_kib),
            mib(last.rss_kib),
            mib(last.hwm_kib),
        );
    }
    println!();
    println!(
        "User-space breakdown of (1), parsing one captured dump in memory (CPU median ms; \
         SocketSample is {} bytes):",
        std::mem::size_of::<SocketSample>()
    );
    println!();
    println!("| N conns | step | CPU median ms | ns per socket |");
    println!("|---:|---|---:|---:|");
    for o in outcomes {
        for (name, s) in &o.breakdown {
            println!(
                "| {} | {name} | {:.1} | {:.0} |",
                o.conns,
                s.median_ms,
                s.median_ms * 1e6 / o.sockets.max(1) as f64
            );
        }
    }
    Ok(())
}
