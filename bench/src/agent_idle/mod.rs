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
//! made, and how many conntrack lookups. `--follow-interval` is passed to the agent (`0s`: no following),
//! to tell following's share of the cost.
//!
//! Afterwards, with the agent stopped and the connections still held, the
//! floor: CPU per poll, in this process, over the same namespace, of
//! tcpstall's two polls (everything about every socket; the base message of
//! every socket and everything about the queued ones), of raw dumps with
//! and without extensions, per family and both families at once, of the
//! IPv6 dump alone (no IPv6 sockets here: what walking the shared
//! established table once more costs), of exact requests, and of
//! conntrack lookups of the same sockets' flows (one ctnetlink GET each:
//! what a new suspect costs the agent once in its life).
//!
//! Where each part lives: this file has the arguments and the run;
//! `reading` reads the agent, its link to the collector and the collector
//! at one moment; `floor` measures the floor; `report` prints the markdown
//! report.

mod floor;
mod reading;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use tcpstall_agent::netns::{self, NetnsSpec};
use tcpstall_agent::Poller;

use crate::holder::{Holders, Placement, MAX_PER_HOLDER};
use crate::lab::{self, nap, Lab};
use crate::procs::{self, Agent, Collector};
use floor::floor;
use reading::{agent_metrics_addr, find_link, read, AgentFigures};
use report::report;

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
    /// Run the agent with --no-kernel-filter: its first phase with
    /// sock_diag's dump even where BPF is allowed.
    #[arg(long)]
    no_kernel_filter: bool,
}

/// Runs the benchmark and prints a markdown report on stdout.
pub(crate) fn run(args: &IdleArgs) -> anyhow::Result<()> {
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
    if args.no_kernel_filter {
        agent_args.push("--no-kernel-filter".to_string());
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
