//! `tcpstall-bench agent-churn`: a real `tcpstall-agent run` on a host
//! whose connections come and go, streaming to a real collector.
//!
//! The host is a network namespace ([`Lab`]), its connections' far ends in
//! a second one behind a veth pair. Churning holder processes
//! ([`hold`]) keep `--conns` connections open from the host, and every
//! second close the oldest `--rate` of them and open as many new ones
//! (graceful closes, either end first, so the host also holds TIME-WAIT,
//! CLOSE-WAIT and LAST-ACK sockets); `--suspect-frac` of the connections
//! are held stalls at any time: new connections whose host end's send
//! queue is held for `--stall-for` behind a far end that reads nothing,
//! then drains.
//!
//! Every `--every`, a row: the agent's CPU (utime + stime of
//! /proc/PID/stat) as a share of a core and per poll, its VmRSS, its open
//! file descriptors, the connections its last poll saw, and the stalls the
//! holders made against the held spans the agent released (its metrics)
//! and the collector counted (its `tcpstall_collector_held_seconds`
//! histogram). At the end the holders stop making stalls, the last ones
//! drain, and the totals are compared: every stall the bench made should
//! be one span the agent sent, held about `--stall-for`.
//!
//! Where each part lives: this file has the arguments and the run;
//! `holders` starts and steers the churning holder processes; `reading`
//! reads the agent, the collector and the holders at one moment; `report`
//! prints the table, the trend and the totals.

pub mod hold;
mod holders;
mod reading;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::lab::{self, nap, Lab};
use crate::procs::{self, Agent, Collector};
use holders::ChurnHolders;
use reading::{agent_metrics_addr, read};
use report::report;

/// Arguments of `tcpstall-bench agent-churn`.
#[derive(Debug, clap::Args)]
pub struct ChurnArgs {
    /// Connections open at any time on the agent's host.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Connections closed, and as many opened, per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Share of the connections that are held stalls at any time.
    #[arg(long, default_value_t = 0.01)]
    suspect_frac: f64,
    /// How long each stall holds its send queue.
    #[arg(long, default_value = "5s", value_parser = tcpstall_common::duration::parse)]
    stall_for: Duration,
    /// The agent's --interval.
    #[arg(long, default_value = "2s", value_parser = tcpstall_common::duration::parse)]
    interval: Duration,
    /// The agent's --follow-interval [default: the agent's own].
    #[arg(long, value_name = "DURATION")]
    follow_interval: Option<String>,
    /// Churn before the window: long enough for the TIME-WAIT sockets to
    /// level (the kernel keeps each 60 s).
    #[arg(long, default_value = "70s", value_parser = tcpstall_common::duration::parse)]
    warmup: Duration,
    /// The measured window.
    #[arg(long, default_value = "10m", value_parser = tcpstall_common::duration::parse)]
    duration: Duration,
    /// One row of the table this often; with 20 rows or more the report
    /// compares the first ten with the last ten.
    #[arg(long, default_value = "60s", value_parser = tcpstall_common::duration::parse)]
    every: Duration,
    /// Connections per holder process.
    #[arg(long, default_value_t = 2500)]
    per_holder: usize,
    /// Directory of the binaries [default: this executable's].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// Waits for `ok` with a deadline, checking every 100 ms.
fn wait_for(
    what: &str,
    within: Duration,
    mut ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !ok()? {
        if Instant::now() > deadline {
            bail!("{what} did not happen within {within:?}");
        }
        nap(Duration::from_millis(100))?;
    }
    Ok(())
}

/// Runs the benchmark and prints a markdown report on stdout.
pub(crate) fn run(args: &ChurnArgs) -> anyhow::Result<()> {
    ensure!(args.conns > 0, "--conns must be positive");
    ensure!(
        args.rate >= 0.0 && (0.0..=0.5).contains(&args.suspect_frac),
        "--rate must be positive and --suspect-frac between 0 and 0.5"
    );
    ensure!(!args.every.is_zero(), "--every must be positive");
    let bins = procs::bin_dir(args.bin_dir.as_deref())?;
    lab::catch_signals()?;
    // Dropped last (declared first): the namespaces outlive the processes
    // in them.
    let lab = Lab::new()?;
    let collector = Collector::start(
        &bins,
        "info",
        &["--metrics-listen".to_string(), "127.0.0.1:0".to_string()],
    )?;
    let agent_log = collector.dir().join("agent.log");
    let mut agent_args = vec![
        "--interval".to_string(),
        humantime::format_duration(args.interval).to_string(),
        "--netns".to_string(),
        lab.host.clone(),
        "--metrics-listen".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    if let Some(f) = &args.follow_interval {
        agent_args.extend(["--follow-interval".to_string(), f.clone()]);
    }
    let mut agent = Agent::start(&bins, &collector.url(), &agent_args, "info", &agent_log)?;
    let mut metrics = None;
    wait_for(
        "the agent's metrics endpoint",
        Duration::from_secs(30),
        || {
            metrics = agent_metrics_addr(&agent_log);
            Ok(metrics.is_some())
        },
    )?;
    let metrics = metrics.context("the agent's metrics address")?;
    eprintln!(
        "tcpstall-bench: agent pid {}; opening {} connections ...",
        agent.pid(),
        args.conns
    );
    let mut holders = ChurnHolders::start(args, &lab)?;
    eprintln!(
        "tcpstall-bench: churning {}/s; warm-up {}, window {} ...",
        args.rate,
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.duration)
    );
    let first = read(&agent, metrics, &collector, &holders)?;
    nap(args.warmup)?;
    let start = read(&agent, metrics, &collector, &holders)?;
    let mut series = vec![start.clone()];
    let end_at = start.at + args.duration;
    while Instant::now() < end_at {
        let next = (series.len() as u32 * args.every).min(args.duration);
        let until = start.at + next;
        while Instant::now() < until {
            nap(until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)))?;
            ensure!(agent.alive(), "the agent exited during the window");
            ensure!(holders.alive(), "a holder exited during the window");
        }
        series.push(read(&agent, metrics, &collector, &holders)?);
    }
    // The totals: no new stalls, the last ones drain, and the agent's and
    // the collector's counts settle (a follow or a poll after the drain).
    holders.quiesce()?;
    wait_for(
        "the last stalls draining",
        args.stall_for + Duration::from_secs(10),
        || Ok(holders.counts().stalling() == 0),
    )?;
    let made = holders.counts();
    let settle = args.interval * 3 + Duration::from_secs(2);
    let mut last = read(&agent, metrics, &collector, &holders)?;
    let _ = wait_for("the agent's spans reaching the stalls made", settle, || {
        last = read(&agent, metrics, &collector, &holders)?;
        Ok(last.figures.spans >= (made.ended + made.cut) as f64
            && last.collector.count >= last.figures.spans)
    });
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    drop(holders);
    drop(agent);
    drop(collector);
    drop(lab);
    report(args, &first, &series, &last, &made, &warnings);
    Ok(())
}
