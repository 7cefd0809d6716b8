//! `tcpstall-bench agent-idle`: a real `tcpstall-agent run` on a host with
//! many established, idle connections (held by the `poll` bench's holder
//! processes), streaming to a real collector. Nothing is stuck, so the
//! agent sends heartbeats only.
//!
//! The host is a network namespace the bench creates ([`Lab`]): it holds
//! one socket per connection, their far ends being in a second namespace
//! behind a veth pair, and the agent reads it with `--netns`. (With
//! `--loopback`, both ends are on the bench's own loopback instead, as
//! before: the agent then reads two sockets per connection.)
//!
//! Measured over the window:
//! - the agent's CPU: utime + stime of /proc/PID/stat (the whole process,
//!   its poll threads included), and schedstat run time per thread;
//! - what it sends to the collector, exactly as the kernel counts it: the
//!   agent→collector TCP socket's `tcpi_bytes_acked` (payload bytes the
//!   collector acknowledged: gRPC and HTTP/2 framing included, TCP/IP
//!   headers not) and `tcpi_segs_out`, read with sock_diag through
//!   tcpstall's own [`Poller`], the socket found by the collector's port.
//!
//! With `--stuck-every N`, one connection in N is held stuck instead (its
//! host end's send queue full behind a far end that never reads): the
//! agent's suspects, sent every poll and followed between polls; the
//! agent's own metrics then say how many follows and exact requests it
//! made. `--follow-interval` is passed to the agent (`0s`: no following),
//! to tell following's share of the cost.
//!
//! Afterwards, with the agent stopped and the connections still held, the
//! floor: CPU per poll, in this process, over the same namespace, of
//! tcpstall's two polls (everything about every socket; the base message of
//! every socket and everything about the queued ones), of raw dumps with
//! and without extensions, per family and both families at once, of the
//! IPv6 dump alone (no IPv6 sockets here: what walking the shared
//! established table once more costs), and of exact requests.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::resource::UsageWho;
use tcpstall_agent::diag::socket::{ALL_STATES, CONNECTION_STATES};
use tcpstall_agent::diag::{Detail, DiagSocket, Dump, ExactId, Family, ParseStats, Scope};
use tcpstall_agent::netns::{self, Netns, NetnsSpec};
use tcpstall_agent::Poller;
use tcpstall_common::{SocketSample, TcpState};

use crate::holder::{Holders, Placement, MAX_PER_HOLDER};
use crate::lab::{self, nap, Lab};
use crate::measure::{timed, Summary};
use crate::procfs::{self, Mem, Ticks};
use crate::procs::{self, Agent, Collector};

/// Targets from the issue.
const TARGET_CPU_PCT: f64 = 1.0;
const TARGET_BYTES_PER_S: f64 = 1000.0;

/// Arguments of `tcpstall-bench agent-idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Established idle connections to hold. The agent's host (a network
    /// namespace) has one socket per connection; the far ends are in
    /// another namespace.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Hold both ends of every connection on this namespace's loopback
    /// instead, where the agent also runs: it then reads two sockets per
    /// connection (the layout of the first measurement).
    #[arg(long)]
    loopback: bool,
    /// Exact requests in the floor's exact-request measurement.
    #[arg(long, default_value_t = 100)]
    floor_exact: usize,
    /// The agent's --interval.
    #[arg(long, default_value = "2s", value_parser = tcpstall_common::duration::parse)]
    interval: Duration,
    /// The measured window.
    #[arg(long, default_value = "60s", value_parser = tcpstall_common::duration::parse)]
    duration: Duration,
    /// Time after the agent connected before the window.
    #[arg(long, default_value = "6s", value_parser = tcpstall_common::duration::parse)]
    warmup: Duration,
    /// Connections per holder process.
    #[arg(long, default_value_t = MAX_PER_HOLDER)]
    per_holder: usize,
    /// Polls of each kind for the floor measurement, one round per
    /// interval (0: skip it).
    #[arg(long, default_value_t = 15)]
    floor_polls: usize,
    /// Directory of the binaries [default: this executable's].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Also record `perf record` (DWARF call graphs) of the agent over the window into this
    /// file (perturbs the CPU figures: use a separate run).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// One connection in this many is held stuck: a suspect the agent
    /// sends every poll and follows between polls (0: none, all idle).
    #[arg(long, default_value_t = 0)]
    stuck_every: usize,
    /// The agent's --follow-interval [default: the agent's own].
    #[arg(long, value_name = "DURATION")]
    follow_interval: Option<String>,
}

/// What the agent's own metrics counted over the window.
#[derive(Debug, Clone, Copy, Default)]
struct AgentFigures {
    polls: f64,
    follows: f64,
    follow_requests: f64,
    follow_skipped: f64,
    sent_samples: f64,
    suspects: f64,
}

impl AgentFigures {
    fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<AgentFigures> {
        let text = tcpstall_prom::read::scrape(addr, Duration::from_secs(10))
            .with_context(|| format!("scraping the agent at {addr}"))?;
        let m = tcpstall_prom::read::series(&text);
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        Ok(AgentFigures {
            polls: get("tcpstall_agent_polls_total"),
            follows: get("tcpstall_agent_follows_total"),
            follow_requests: get("tcpstall_agent_follow_requests_total"),
            follow_skipped: get("tcpstall_agent_follow_skipped_total"),
            sent_samples: get("tcpstall_agent_sent_samples_total"),
            suspects: get("tcpstall_agent_suspects"),
        })
    }

    fn since(&self, s: &AgentFigures) -> AgentFigures {
        AgentFigures {
            polls: self.polls - s.polls,
            follows: self.follows - s.follows,
            follow_requests: self.follow_requests - s.follow_requests,
            follow_skipped: self.follow_skipped - s.follow_skipped,
            sent_samples: self.sent_samples - s.sent_samples,
            suspects: self.suspects,
        }
    }
}

/// The address the agent said it serves metrics on (its log's line).
fn agent_metrics_addr(log: &std::path::Path) -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("tcpstall-agent metrics on http://")?
            .strip_suffix("/metrics")?
            .parse()
            .ok()
    })
}

/// The agent→collector socket's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    cookie: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u64,
    data_segs_out: u64,
}

/// The agent's end of its connection to the collector: the one socket
/// whose remote port is the collector's and local port is not.
fn find_link(poller: &mut Poller, port: u16, cookie: Option<u64>) -> anyhow::Result<Link> {
    let (samples, failures) = poller.poll();
    if let Some(f) = failures.into_iter().next() {
        return Err(f).context("polling for the agent's socket");
    }
    let ours: Vec<&SocketSample> = samples
        .iter()
        .filter(|s| {
            s.state == TcpState::Established
                && s.remote.port() == port
                && s.local.port() != port
                && s.remote.ip().is_loopback()
                && cookie.is_none_or(|c| c == s.cookie)
        })
        .collect();
    let [s] = ours.as_slice() else {
        bail!(
            "{} sockets to the collector's port {port}; want exactly the agent's",
            ours.len()
        );
    };
    let info = s.info.as_ref().context("the socket has no tcp_info")?;
    let need = |v: Option<u64>, what: &str| v.with_context(|| format!("tcp_info lacks {what}"));
    Ok(Link {
        cookie: s.cookie,
        bytes_acked: need(info.bytes_acked(), "bytes_acked")?,
        bytes_received: need(info.bytes_received(), "bytes_received")?,
        segs_out: need(info.segs_out().map(u64::from), "segs_out")?,
        data_segs_out: need(info.data_segs_out().map(u64::from), "data_segs_out")?,
    })
}

#[derive(Debug, Clone, Default)]
struct Reading {
    at: Option<Instant>,
    agent: Ticks,
    agent_threads: std::collections::BTreeMap<u32, (String, procfs::ThreadCpu)>,
    agent_mem: Mem,
    collector: Ticks,
    link: Link,
}

fn read(
    agent: &Agent,
    collector: &Collector,
    poller: &mut Poller,
    cookie: Option<u64>,
) -> anyhow::Result<Reading> {
    // The socket first: the bench's own poll must not fall inside the
    // agent's CPU readings' interval more than once each side.
    let link = find_link(poller, collector.addr.port(), cookie)?;
    Ok(Reading {
        at: Some(Instant::now()),
        agent: procfs::process_ticks(agent.pid())?,
        agent_threads: procfs::threads(agent.pid())?,
        agent_mem: Mem::of(agent.pid())?,
        collector: procfs::process_ticks(collector.pid())?,
        link,
    })
}

/// Runs the benchmark and prints a markdown report on stdout.
pub fn run(args: &IdleArgs) -> anyhow::Result<()> {
    ensure!(args.conns > 0, "--conns must be positive");
    let bins = procs::bin_dir(args.bin_dir.as_deref())?;
    lab::catch_signals()?;
    // Dropped last (declared first): the namespaces outlive the processes
    // in them.
    let lab = if args.loopback {
        None
    } else {
        Some(Lab::new()?)
    };
    let (placement, polled) = match &lab {
        Some(lab) => (
            Placement::Netns {
                host: lab.host_path(),
                peer: lab.peer_path(),
                addr: lab::PEER_ADDR,
            },
            netns::resolve(&[NetnsSpec::Named(lab.host.clone())])?,
        ),
        None => (Placement::Loopback, vec![netns::current()?]),
    };
    let mut holders = Holders::new(placement);
    eprintln!(
        "tcpstall-bench: opening {} idle connections ...",
        args.conns
    );
    holders.grow_to_stuck(args.conns, args.per_holder, 0, args.stuck_every)?;
    ensure!(!lab::interrupted(), "interrupted");
    let collector = Collector::start(&bins, "info", &[])?;
    let interval = humantime::format_duration(args.interval).to_string();
    let agent_log = collector.dir().join("agent.log");
    let mut agent_args = vec!["--interval".to_string(), interval];
    // The agent's own figures (follows, samples sent), when something is
    // held; at rest its endpoint stays off, as in a default deployment.
    if args.stuck_every > 0 {
        agent_args.extend(["--metrics-listen".to_string(), "127.0.0.1:0".to_string()]);
    }
    if let Some(lab) = &lab {
        agent_args.extend(["--netns".to_string(), lab.host.clone()]);
    }
    if let Some(f) = &args.follow_interval {
        agent_args.extend(["--follow-interval".to_string(), f.clone()]);
    }
    let mut agent = Agent::start(&bins, &collector.url(), &agent_args, "info", &agent_log)?;
    // The agent's link to the collector is in this namespace.
    let mut poller = Poller::new(vec![netns::current()?])?;
    let t0 = Instant::now();
    let link = loop {
        match find_link(&mut poller, collector.addr.port(), None) {
            Ok(l) => break l,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                return Err(e).context("the agent did not connect within 30 s")
            }
            Err(_) => nap(Duration::from_millis(100))?,
        }
    };
    eprintln!(
        "tcpstall-bench: agent pid {} connected; warm-up {}, window {} ...",
        agent.pid(),
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration)
    );
    nap(args.warmup)?;
    let metrics = if args.stuck_every > 0 {
        Some(agent_metrics_addr(&agent_log).context("the agent's metrics address")?)
    } else {
        None
    };
    let figures_start = match metrics {
        Some(m) => AgentFigures::scrape(m)?,
        None => AgentFigures::default(),
    };
    let start = read(&agent, &collector, &mut poller, Some(link.cookie))?;
    let mut perf = match &args.perf {
        Some(out) => Some(procs::Perf::record(agent.pid(), out, args.duration)?),
        None => None,
    };
    let t_start = Instant::now();
    while t_start.elapsed() < args.duration {
        nap((args.duration - t_start.elapsed()).min(Duration::from_secs(1)))?;
        ensure!(agent.alive(), "the agent exited during the window");
    }
    let end = read(&agent, &collector, &mut poller, Some(link.cookie))?;
    let figures = match metrics {
        Some(m) => AgentFigures::scrape(m)?.since(&figures_start),
        None => AgentFigures::default(),
    };
    if let Some(p) = perf.as_mut() {
        p.wait();
    }
    drop(poller);
    drop(agent);
    drop(collector);
    // What the agent's namespace held: its connections and listeners.
    let mut census = Poller::new(polled.clone())?;
    let (samples, failures) = census.poll();
    ensure!(
        failures.is_empty(),
        "polling the agent's namespace: {failures:?}"
    );
    let sockets = (samples.len(), census.stats().listeners);
    drop(census);
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();

    let floor = if args.floor_polls > 0 {
        eprintln!(
            "tcpstall-bench: the floor: {} polls of each kind ...",
            args.floor_polls
        );
        Some(floor(args, &polled)?)
    } else {
        None
    };
    drop(holders);
    drop(lab);
    report(
        args,
        &start,
        &end,
        sockets,
        warnings,
        floor.as_ref(),
        &figures,
    );
    Ok(())
}

/// The kinds of poll the floor compares.
const FLOOR_KINDS: [&str; 8] = [
    "tcpstall `Poller::poll`: every socket with everything (`snapshot`; the agent's poll before)",
    "tcpstall `Poller::poll_wanted`: base message of every socket, the queued ones in full (the agent's poll now)",
    "raw dump, INFO+MEMINFO+SKMEMINFO+CONG, one dump per family (`Poller::poll`'s request)",
    "raw dump, INFO+MEMINFO+SKMEMINFO+CONG, both families in one legacy dump",
    "raw dump, no extensions, one dump per family",
    "raw dump, no extensions, both families in one legacy dump, listeners excluded (`poll_wanted`'s first phase)",
    "raw dump of the IPv6 family alone (no IPv6 sockets here: the table walk)",
    "exact requests, INFO+MEMINFO+SKMEMINFO+CONG, one per socket (`--floor-exact` sockets)",
];

/// CPU per poll of each of [`FLOOR_KINDS`] over the same sockets.
#[derive(Debug)]
struct Floor {
    cpu: [Summary; FLOOR_KINDS.len()],
    /// Bytes received (raw dumps), sockets (polls), answers (exact).
    out: [usize; FLOOR_KINDS.len()],
}

/// One round runs each kind once, in a rotating order; rounds are one
/// interval apart, as the agent's polls are, so that each starts with the
/// caches as cold as the agent finds them (back to back, a dump of 20,000
/// sockets finds much of the previous one's data still cached).
fn floor(args: &IdleArgs, polled: &[Netns]) -> anyhow::Result<Floor> {
    let [ns] = polled else {
        bail!("the floor reads one namespace");
    };
    let spacing = args.interval;
    let mut full = Poller::new(polled.to_vec())?;
    let mut wanted = Poller::new(polled.to_vec())?;
    let mut sock = netns::open_diag(ns)?;
    let dump = |scope, detail, states| Dump {
        scope,
        detail,
        states,
    };
    // The sockets the exact requests ask for.
    let mut ids: Vec<ExactId> = Vec::new();
    let mut stats = ParseStats::default();
    sock.dump_request(
        dump(Scope::Both, Detail::Base, CONNECTION_STATES),
        &mut stats,
        |s, payload| {
            if ids.len() < args.floor_exact && s.state == TcpState::Established {
                ids.extend(ExactId::of(payload));
            }
        },
    )?;
    let mut cpu: [Vec<Duration>; FLOOR_KINDS.len()] = Default::default();
    let mut out = [0usize; FLOOR_KINDS.len()];
    let n = FLOOR_KINDS.len();
    // A warm-up round, then `polls` measured ones.
    for round in 0..=args.floor_polls {
        for k in 0..n {
            let kind = (round + k) % n;
            if k > 0 {
                nap(spacing / n as u32)?;
            }
            let (run, got) = timed(UsageWho::RUSAGE_SELF, || {
                let raw = |sock: &mut DiagSocket, dumps: &[Dump]| -> anyhow::Result<usize> {
                    let mut bytes = 0;
                    for d in dumps {
                        bytes += sock.dump_request_raw(*d)?;
                    }
                    Ok(bytes)
                };
                let per_family =
                    |detail| Family::BOTH.map(|f| dump(Scope::One(f), detail, ALL_STATES));
                match kind {
                    0 | 1 => {
                        let (n, failures) = if kind == 0 {
                            let (samples, failures) = full.poll();
                            (samples.len(), failures)
                        } else {
                            let (_, n, failures) = wanted.poll_wanted(|_, b| b.wqueue > 0);
                            (n, failures)
                        };
                        match failures.into_iter().next() {
                            Some(e) => Err(e.into()),
                            None => Ok(n),
                        }
                    }
                    2 => raw(&mut sock, &per_family(Detail::Full)),
                    3 => raw(&mut sock, &[dump(Scope::Both, Detail::Full, ALL_STATES)]),
                    4 => raw(&mut sock, &per_family(Detail::Base)),
                    5 => raw(
                        &mut sock,
                        &[dump(Scope::Both, Detail::Base, CONNECTION_STATES)],
                    ),
                    6 => raw(&mut sock, &[Dump::full(Family::V6)]),
                    _ => {
                        let mut found = 0;
                        sock.get_exact(&ids, &mut stats, |_, a| {
                            found +=
                                usize::from(matches!(a, tcpstall_agent::diag::Exact::Found(_)));
                        })?;
                        Ok(found)
                    }
                }
            })?;
            if round > 0 {
                cpu[kind].push(run.cpu.total());
                out[kind] = got;
            }
        }
        nap(spacing / n as u32)?;
    }
    Ok(Floor {
        cpu: cpu.map(Summary::of),
        out,
    })
}

fn report(
    args: &IdleArgs,
    s: &Reading,
    e: &Reading,
    sockets: (usize, usize),
    warnings: usize,
    floor: Option<&Floor>,
    figures: &AgentFigures,
) {
    let wall = match (s.at, e.at) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::from_secs(1),
    };
    let secs = wall.as_secs_f64();
    let cpu = e.agent.since(&s.agent);
    let cpu_pct = procfs::percent_of_core(cpu.total(), wall);
    let polls = secs / args.interval.as_secs_f64();
    let run_ns: u64 = procfs::threads_since(&s.agent_threads, &e.agent_threads)
        .values()
        .map(|(_, _, ns)| ns)
        .sum();
    let (sl, el) = (&s.link, &e.link);
    let acked = el.bytes_acked.saturating_sub(sl.bytes_acked);
    let received = el.bytes_received.saturating_sub(sl.bytes_received);
    let segs = el.segs_out.saturating_sub(sl.segs_out);
    let data_segs = el.data_segs_out.saturating_sub(sl.data_segs_out);
    let bps = acked as f64 / secs;
    // IPv4 20 + TCP 20 + timestamps 12 + Ethernet 14 + FCS 4 bytes per
    // segment on a real link (loopback has no Ethernet).
    let wire = (acked + segs * 70) as f64 / secs;
    let command: Vec<String> = std::env::args().collect();
    println!("Command: `{}`", command.join(" "));
    println!(
        "Machine: {} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let layout = if args.loopback {
        "both ends on the agent's loopback"
    } else {
        "far ends in a second network namespace behind a veth pair"
    };
    let stuck = if args.stuck_every > 0 {
        format!(
            ", one in {} held stuck ({} suspects at the end)",
            args.stuck_every, figures.suspects
        )
    } else {
        String::new()
    };
    let follow = match &args.follow_interval {
        Some(f) => format!(" (--follow-interval {f})"),
        None => String::new(),
    };
    println!(
        "{} connections held ({layout}){stuck}; the agent's namespace held {} connection sockets \
         and {} listeners; agent polling every {}{follow}; window {:.1} s ({:.1} polls).",
        args.conns,
        sockets.0,
        sockets.1,
        humantime::format_duration(args.interval),
        secs,
        polls
    );
    println!();
    println!("| what | value |");
    println!("|---|---:|");
    let row = |k: &str, v: String| println!("| {k} | {v} |");
    row(
        "**agent CPU, % of one core** (utime + stime)",
        format!(
            "**{cpu_pct:.2}** ({:.2} + {:.2})",
            procfs::percent_of_core(cpu.user, wall),
            procfs::percent_of_core(cpu.sys, wall)
        ),
    );
    row(
        "agent CPU, % of one core (schedstat, threads alive throughout)",
        format!("{:.2}", run_ns as f64 / 1e9 / secs * 100.0),
    );
    row(
        "agent CPU per poll",
        format!(
            "{:.1} ms",
            cpu.duration().as_secs_f64() * 1e3 / polls.max(1e-9)
        ),
    );
    row(
        "agent VmRSS / VmHWM",
        format!(
            "{:.1} / {:.1} MiB",
            e.agent_mem.rss_kib as f64 / 1024.0,
            e.agent_mem.hwm_kib as f64 / 1024.0
        ),
    );
    row(
        "**agent → collector, bytes/s** (Δ tcpi_bytes_acked)",
        format!("**{bps:.1}** ({acked} B)"),
    );
    row(
        "… segments out (with data) over the window",
        format!("{segs} ({data_segs})"),
    );
    row(
        "… on a real link, with 70 B of TCP/IP/Ethernet per segment",
        format!("{wire:.1} B/s"),
    );
    row(
        "collector → agent, bytes/s (Δ tcpi_bytes_received)",
        format!("{:.1}", received as f64 / secs),
    );
    row(
        "collector CPU, % of one core",
        format!(
            "{:.2}",
            procfs::percent_of_core(e.collector.since(&s.collector).total(), wall)
        ),
    );
    if args.stuck_every > 0 {
        row(
            "agent: polls, follows, exact requests by follows (per second)",
            format!(
                "{:.0}, {:.0}, {:.0} ({:.1}/s); follows' skipped suspects {:.0}",
                figures.polls,
                figures.follows,
                figures.follow_requests,
                figures.follow_requests / secs,
                figures.follow_skipped
            ),
        );
        row(
            "agent: samples sent (per second)",
            format!(
                "{:.0} ({:.1}/s)",
                figures.sent_samples,
                figures.sent_samples / secs
            ),
        );
    }
    row("agent warnings and errors logged", warnings.to_string());
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    println!("| target | measured | verdict |");
    println!("|---|---|---|");
    println!(
        "| agent < {TARGET_CPU_PCT} % of one core | {cpu_pct:.2} % | {} |",
        verdict(cpu_pct < TARGET_CPU_PCT)
    );
    println!(
        "| < 1 KB/s to the collector | {bps:.1} B/s ({wire:.1} B/s with headers) | {} |",
        verdict(bps < TARGET_BYTES_PER_S)
    );
    if let Some(f) = floor {
        println!();
        println!(
            "The floor, in this process over the same sockets ({} polls of each, spread over one \
             interval each round as the agent's are; CPU = user + sys from getrusage; share of \
             one core at one poll per {}):",
            args.floor_polls,
            humantime::format_duration(args.interval)
        );
        println!();
        println!("| poll | CPU median ms | CPU min ms | share of a core | out |");
        println!("|---|---:|---:|---:|---:|");
        let share = |ms: f64| ms / 1e3 / args.interval.as_secs_f64() * 100.0;
        for (k, name) in FLOOR_KINDS.iter().enumerate() {
            let s = &f.cpu[k];
            let out = match k {
                0 | 1 => format!("{} connections", f.out[k]),
                7 => format!("{} answered", f.out[k]),
                _ => format!("{} B", f.out[k]),
            };
            println!(
                "| {name} | {:.2} | {:.2} | {:.3} % | {out} |",
                s.median_ms,
                s.min_ms,
                share(s.median_ms)
            );
        }
    }
}
