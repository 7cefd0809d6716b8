//! `tcpstall-bench agent-idle`: a real `tcpstall-agent run` on a host with
//! many established, idle loopback connections (held by the `poll` bench's
//! holder processes), streaming to a real collector. Nothing is stuck, so
//! the agent sends heartbeats only.
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
//! Afterwards, with the agent stopped and the connections still held, the
//! floor: CPU per poll, in this process, of tcpstall's poll, of a raw dump
//! as the agent asks for it (tcp_info, memory, congestion), of a dump
//! asking for no extension at all (`rqueue`/`wqueue` come in the base
//! message: all a poll that only looks for queued sockets needs), and of
//! the IPv6 dump alone (no IPv6 sockets here: what walking the shared
//! established table once more costs).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use nix::sys::resource::UsageWho;
use tcpstall_agent::diag::{parse, ChunkEnd, DiagSocket, Family};
use tcpstall_agent::{netns, Poller};
use tcpstall_common::{SocketSample, TcpState};

use crate::holder::{Holders, MAX_PER_HOLDER};
use crate::measure::{timed, Summary};
use crate::procfs::{self, Mem, Ticks};
use crate::procs::{self, Agent, Collector};

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e}"))
}

/// Targets from the issue.
const TARGET_CPU_PCT: f64 = 1.0;
const TARGET_BYTES_PER_S: f64 = 1000.0;

/// Arguments of `tcpstall-bench agent-idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Established idle loopback connections to hold (both ends are on
    /// this host, so the agent sees twice as many sockets).
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// The agent's --interval.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    /// The measured window.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Time after the agent connected before the window.
    #[arg(long, default_value = "6s", value_parser = parse_duration)]
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
    let mut holders = Holders::default();
    eprintln!(
        "tcpstall-bench: opening {} idle connections ...",
        args.conns
    );
    holders.grow_to(args.conns, args.per_holder, 0)?;
    let collector = Collector::start(&bins, "info", &[])?;
    let interval = humantime::format_duration(args.interval).to_string();
    let agent_log = collector.dir().join("agent.log");
    let mut agent = Agent::start(
        &bins,
        &collector.url(),
        &["--interval".to_string(), interval],
        "info",
        &agent_log,
    )?;
    let mut poller = Poller::new(vec![netns::current()?])?;
    let t0 = Instant::now();
    let link = loop {
        match find_link(&mut poller, collector.addr.port(), None) {
            Ok(l) => break l,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                return Err(e).context("the agent did not connect within 30 s")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    eprintln!(
        "tcpstall-bench: agent pid {} connected; warm-up {}, window {} ...",
        agent.pid(),
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration)
    );
    std::thread::sleep(args.warmup);
    let start = read(&agent, &collector, &mut poller, Some(link.cookie))?;
    let mut perf = match &args.perf {
        Some(out) => Some(procs::Perf::record(agent.pid(), out, args.duration)?),
        None => None,
    };
    let t_start = Instant::now();
    while t_start.elapsed() < args.duration {
        std::thread::sleep((args.duration - t_start.elapsed()).min(Duration::from_secs(5)));
        ensure!(agent.alive(), "the agent exited during the window");
    }
    let end = read(&agent, &collector, &mut poller, Some(link.cookie))?;
    if let Some(p) = perf.as_mut() {
        p.wait();
    }
    let sockets = poller.stats().connections;
    drop(poller);
    drop(agent);
    drop(collector);
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
        Some(floor(args.floor_polls, args.interval)?)
    } else {
        None
    };
    drop(holders);
    report(args, &start, &end, sockets, warnings, floor.as_ref());
    Ok(())
}

/// The kinds of poll the floor compares.
const FLOOR_KINDS: [&str; 4] = [
    "tcpstall `Poller::poll` (what the agent runs)",
    "raw dump, INFO+MEMINFO+SKMEMINFO+CONG, both families (the agent's request)",
    "raw dump, no extensions, both families (base message: queues, 4-tuple, cookie)",
    "raw dump of the IPv6 family alone (no IPv6 sockets here: the table walk)",
];

/// CPU per poll of each of [`FLOOR_KINDS`] over the same sockets.
#[derive(Debug)]
struct Floor {
    cpu: [Summary; 4],
    bytes: [usize; 4],
    bare_sockets: usize,
}

/// One round runs each kind once, in a rotating order; rounds are `spacing`
/// apart, as the agent's polls are, so that each starts with the caches
/// as cold as the agent finds them (back to back, a dump of 20,000 sockets
/// finds much of the previous one's data still cached).
fn floor(polls: usize, spacing: Duration) -> anyhow::Result<Floor> {
    let mut poller = Poller::new(vec![netns::current()?])?;
    let mut full = DiagSocket::open().context("sock_diag socket")?;
    let mut bare = netlink_sys::Socket::new(NETLINK_SOCK_DIAG).context("sock_diag socket")?;
    bare.bind_auto()?;
    bare.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seq = 0u32;
    let mut cpu: [Vec<Duration>; 4] = Default::default();
    let mut bytes = [0usize; 4];
    let mut bare_sockets = 0;
    // A warm-up round, then `polls` measured ones.
    for round in 0..=polls {
        for k in 0..FLOOR_KINDS.len() {
            let kind = (round + k) % FLOOR_KINDS.len();
            if k > 0 {
                std::thread::sleep(spacing / FLOOR_KINDS.len() as u32);
            }
            let (run, n) = timed(UsageWho::RUSAGE_SELF, || match kind {
                0 => {
                    let (samples, failures) = poller.poll();
                    let n = samples.len();
                    match failures.into_iter().next() {
                        Some(e) => Err(e.into()),
                        None => Ok(n),
                    }
                }
                1 => {
                    let mut n = 0;
                    for family in Family::BOTH {
                        n += full.dump_raw(family)?;
                    }
                    Ok(n)
                }
                2 => {
                    let mut n = 0;
                    for family in Family::BOTH {
                        seq = seq.wrapping_add(1);
                        let (bn, sn) = bare_dump(&mut bare, &mut buf, family, seq)?;
                        n += bn;
                        if family == Family::V4 {
                            bare_sockets = sn;
                        } else {
                            bare_sockets += sn;
                        }
                    }
                    Ok(n)
                }
                _ => Ok(full.dump_raw(Family::V6)?),
            })?;
            if round > 0 {
                cpu[kind].push(run.cpu.total());
                bytes[kind] = n;
            }
        }
        std::thread::sleep(spacing / FLOOR_KINDS.len() as u32);
    }
    Ok(Floor {
        cpu: cpu.map(Summary::of),
        bytes,
        bare_sockets,
    })
}

/// A dump of every TCP socket of `family` asking for no extension: the
/// base `inet_diag_msg` alone (4-tuple, state, queues, cookie, inode).
/// Returns the bytes received and the sockets in them.
fn bare_dump(
    sock: &mut netlink_sys::Socket,
    buf: &mut [u8],
    family: Family,
    seq: u32,
) -> anyhow::Result<(usize, usize)> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let (af, id) = match family {
        Family::V4 => (AF_INET, SocketId::new_v4()),
        Family::V6 => (AF_INET6, SocketId::new_v6()),
    };
    let mut msg = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: af,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_retain(0x1ffe),
            socket_id: id,
        })
        .into(),
    );
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    sock.send(&out, 0)?;
    let (mut bytes, mut sockets) = (0, 0);
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        ensure!(n > 0, "sock_diag socket closed mid-dump");
        let chunk = &buf[..n.min(buf.len())];
        bytes += chunk.len();
        sockets += parse::messages(chunk)
            .map_while(Result::ok)
            .filter(|m| m.seq == seq && m.kind == 20)
            .count();
        match parse::chunk_end(chunk, seq) {
            ChunkEnd::More => {}
            ChunkEnd::Done => return Ok((bytes, sockets)),
            ChunkEnd::Error(errno) => bail!("the kernel refused the dump: errno {}", -errno),
        }
    }
}

fn report(
    args: &IdleArgs,
    s: &Reading,
    e: &Reading,
    sockets: usize,
    warnings: usize,
    floor: Option<&Floor>,
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
    println!(
        "{} idle connections held ({} sockets in the last poll, both ends on this host); agent \
         polling every {}; window {:.1} s ({:.1} polls).",
        args.conns,
        sockets,
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
        println!("| poll | CPU median ms | CPU min ms | share of a core | bytes/dump |");
        println!("|---|---:|---:|---:|---:|");
        let share = |ms: f64| ms / 1e3 / args.interval.as_secs_f64() * 100.0;
        for (k, name) in FLOOR_KINDS.iter().enumerate() {
            let s = &f.cpu[k];
            let bytes = match k {
                0 => format!("({} connections)", f.bytes[0]),
                2 => format!("{} ({} sockets)", f.bytes[2], f.bare_sockets),
                _ => f.bytes[k].to_string(),
            };
            println!(
                "| {name} | {:.1} | {:.1} | {:.2} % | {bytes} |",
                s.median_ms,
                s.min_ms,
                share(s.median_ms)
            );
        }
    }
}
