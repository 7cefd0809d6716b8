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

pub mod hold;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use crate::lab::{self, nap, Lab};
use crate::procfs::{self, Mem, Ticks};
use crate::procs::{self, Agent, Collector};
use hold::Counts;

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

/// The churning holder processes. Dropping them closes their stdin, kills
/// them and waits for them.
struct ChurnHolders {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    counts: Vec<Arc<Mutex<Counts>>>,
}

impl ChurnHolders {
    /// Starts enough holders for `args.conns`, each with its share of the
    /// rates, and waits until every one holds its first connections.
    fn start(args: &ChurnArgs, lab: &Lab) -> anyhow::Result<ChurnHolders> {
        ensure!(
            (1..=crate::holder::MAX_PER_HOLDER).contains(&args.per_holder),
            "--per-holder must be between 1 and {}",
            crate::holder::MAX_PER_HOLDER
        );
        let exe = std::env::current_exe().context("finding our own executable")?;
        let n = args.conns.div_ceil(args.per_holder).max(1);
        let stall_rate = args.suspect_frac * args.conns as f64 / args.stall_for.as_secs_f64();
        let mut h = ChurnHolders {
            children: Vec::new(),
            stdins: Vec::new(),
            counts: Vec::new(),
        };
        let mut readers = Vec::new();
        for i in 0..n {
            let conns = args.conns / n + usize::from(i < args.conns % n);
            let mut child = Command::new(&exe)
                .arg("churn-hold")
                .arg("--addr")
                .arg(lab::PEER_ADDR.to_string())
                .arg("--listen-netns")
                .arg(lab.peer_path())
                .arg("--connect-netns")
                .arg(lab.host_path())
                .arg("--conns")
                .arg(conns.to_string())
                .arg("--rate")
                .arg((args.rate / n as f64).to_string())
                .arg("--stall-rate")
                .arg((stall_rate / n as f64).to_string())
                .arg("--stall-for")
                .arg(humantime::format_duration(args.stall_for).to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting holder {}", exe.display()))?;
            let stdout = child.stdout.take();
            let stdin = child.stdin.take();
            h.children.push(child);
            h.stdins.extend(stdin);
            readers.push((stdout.context("a holder without stdout")?, conns));
        }
        for (i, (stdout, conns)) in readers.into_iter().enumerate() {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines
                .next()
                .transpose()
                .context("reading from a holder")?
                .unwrap_or_default();
            if first.trim() != format!("ready {conns}") {
                bail!("holder {i} did not get ready (said {:?})", first.trim());
            }
            let counts = Arc::new(Mutex::new(Counts::default()));
            let mine = counts.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if let (Some(c), Ok(mut m)) = (Counts::parse(&line), mine.lock()) {
                        *m = c;
                    }
                }
            });
            h.counts.push(counts);
        }
        Ok(h)
    }

    /// Every holder's counters, added up (each as of its last line).
    fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for c in &self.counts {
            if let Ok(c) = c.lock() {
                total.add(&c);
            }
        }
        total
    }

    /// Stops new stalls; the ones under way go on to drain.
    fn quiesce(&mut self) -> anyhow::Result<()> {
        for s in &mut self.stdins {
            s.write_all(b"quiesce\n").context("telling a holder")?;
            s.flush()?;
        }
        Ok(())
    }

    fn alive(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ChurnHolders {
    fn drop(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agent's own counters.
#[derive(Debug, Clone, Default)]
struct AgentFigures {
    polls: f64,
    /// Held spans released, every end.
    spans: f64,
    spans_by_end: HashMap<String, f64>,
    suspects: f64,
    connections: f64,
    sent_samples: f64,
    dropped_samples: f64,
    malformed: f64,
}

impl AgentFigures {
    fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<AgentFigures> {
        let text = tcpstall_prom::read::scrape(addr, Duration::from_secs(10))
            .with_context(|| format!("scraping the agent at {addr}"))?;
        let m = tcpstall_prom::read::series(&text);
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let spans_by_end: HashMap<String, f64> = m
            .iter()
            .filter_map(|(k, v)| {
                let end = k
                    .strip_prefix("tcpstall_agent_held_ended_total{ended=\"")?
                    .strip_suffix("\"}")?;
                Some((end.to_string(), *v))
            })
            .collect();
        Ok(AgentFigures {
            polls: get("tcpstall_agent_polls_total"),
            spans: spans_by_end.values().sum(),
            spans_by_end,
            suspects: get("tcpstall_agent_suspects"),
            connections: get("tcpstall_agent_connections"),
            sent_samples: get("tcpstall_agent_sent_samples_total"),
            dropped_samples: get("tcpstall_agent_dropped_samples_total"),
            malformed: get("tcpstall_agent_malformed_replies_total"),
        })
    }
}

/// The collector's held-span histogram, every end added up.
#[derive(Debug, Clone, Default)]
struct CollectorSpans {
    count: f64,
    /// Cumulative count by bucket bound (seconds, as printed).
    le: HashMap<String, f64>,
}

impl CollectorSpans {
    fn scrape(c: &Collector) -> anyhow::Result<CollectorSpans> {
        let m = c.scrape_metrics()?;
        let mut out = CollectorSpans::default();
        for (k, v) in &m {
            if k.starts_with("tcpstall_collector_held_seconds_count{") {
                out.count += v;
            } else if let Some(rest) = k.strip_prefix("tcpstall_collector_held_seconds_bucket{") {
                if let Some(le) = rest
                    .split_once("le=\"")
                    .and_then(|(_, l)| l.strip_suffix("\"}"))
                {
                    *out.le.entry(le.to_string()).or_default() += v;
                }
            }
        }
        Ok(out)
    }

    /// Spans held more than `lo` and at most `hi` seconds, when both are
    /// bucket bounds (or `lo` is 0).
    fn between(&self, lo: u64, hi: u64) -> Option<f64> {
        let at = |b: u64| -> Option<f64> {
            if b == 0 {
                Some(0.0)
            } else {
                self.le.get(&b.to_string()).copied()
            }
        };
        Some(at(hi)? - at(lo)?)
    }
}

#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    agent: Ticks,
    mem: Mem,
    fds: usize,
    figures: AgentFigures,
    collector: CollectorSpans,
    holders: Counts,
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

fn read(
    agent: &Agent,
    metrics: std::net::SocketAddr,
    collector: &Collector,
    holders: &ChurnHolders,
) -> anyhow::Result<Reading> {
    Ok(Reading {
        at: Instant::now(),
        agent: procfs::process_ticks(agent.pid())?,
        mem: Mem::of(agent.pid())?,
        fds: open_fds(agent.pid())?,
        figures: AgentFigures::scrape(metrics)?,
        collector: CollectorSpans::scrape(collector)?,
        holders: holders.counts(),
    })
}

/// The address the agent said it serves metrics on, once it has.
fn agent_metrics_addr(log: &std::path::Path) -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("tcpstall-agent metrics on http://")?
            .strip_suffix("/metrics")?
            .parse()
            .ok()
    })
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
pub fn run(args: &ChurnArgs) -> anyhow::Result<()> {
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

/// One row of the table.
#[derive(Debug, Clone)]
struct Row {
    t: Duration,
    cpu_pct: f64,
    ms_per_poll: f64,
    rss_mib: f64,
    fds: usize,
    connections: f64,
    suspects: f64,
    opened_per_s: f64,
    closed_per_s: f64,
    failed: u64,
    stalls: u64,
    agent_spans: f64,
    collector_spans: f64,
}

fn rows(series: &[Reading]) -> Vec<Row> {
    series
        .windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let wall = b.at.saturating_duration_since(a.at);
            let secs = wall.as_secs_f64().max(1e-9);
            let cpu = b.agent.since(&a.agent);
            let polls = (b.figures.polls - a.figures.polls).max(1.0);
            Row {
                t: b.at.saturating_duration_since(series[0].at),
                cpu_pct: procfs::percent_of_core(cpu.total(), wall),
                ms_per_poll: cpu.duration().as_secs_f64() * 1e3 / polls,
                rss_mib: b.mem.rss_kib as f64 / 1024.0,
                fds: b.fds,
                connections: b.figures.connections,
                suspects: b.figures.suspects,
                opened_per_s: (b.holders.opened - a.holders.opened) as f64 / secs,
                closed_per_s: (b.holders.closed - a.holders.closed) as f64 / secs,
                failed: b.holders.failed - a.holders.failed,
                stalls: (b.holders.ended + b.holders.cut) - (a.holders.ended + a.holders.cut),
                agent_spans: b.figures.spans - a.figures.spans,
                collector_spans: b.collector.count - a.collector.count,
            }
        })
        .collect()
}

fn report(
    args: &ChurnArgs,
    first: &Reading,
    series: &[Reading],
    last: &Reading,
    made: &Counts,
    warnings: &[&str],
) {
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
        "{} connections open on the agent's host (far ends in a second namespace behind a veth \
         pair), {}/s closed and as many opened (either end first, gracefully), {} % held stalls \
         of {} each; agent polling every {}; warm-up {}, rows every {}.",
        args.conns,
        args.rate,
        args.suspect_frac * 100.0,
        humantime::format_duration(args.stall_for),
        humantime::format_duration(args.interval),
        humantime::format_duration(args.warmup),
        humantime::format_duration(args.every),
    );
    println!();
    let rows = rows(series);
    println!("| t | agent CPU % core | CPU ms per poll | VmRSS MiB | open fds | connections in its poll | suspects | opened/s | closed/s | connects failed | stalls made | spans the agent sent | spans the collector counted |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0} | {:.0} |",
            humantime::format_duration(Duration::from_secs(r.t.as_secs())),
            r.cpu_pct,
            r.ms_per_poll,
            r.rss_mib,
            r.fds,
            r.connections,
            r.suspects,
            r.opened_per_s,
            r.closed_per_s,
            r.failed,
            r.stalls,
            r.agent_spans,
            r.collector_spans,
        );
    }
    println!();
    if rows.len() >= 20 {
        trend(&rows);
    }
    // Totals from the first reading (holders just started) to the last.
    let agent_spans = last.figures.spans - first.figures.spans;
    let collector_spans = last.collector.count - first.collector.count;
    let stalls = made.ended + made.cut;
    let s = args.stall_for.as_secs();
    let near = match (
        last.collector.between(s.saturating_sub(1), s + 1),
        first.collector.between(s.saturating_sub(1), s + 1),
    ) {
        (Some(a), Some(b)) => format!("{:.0}", a - b),
        _ => "-".to_string(),
    };
    let ends: Vec<String> = {
        let mut e: Vec<(&String, &f64)> = last.figures.spans_by_end.iter().collect();
        e.sort_by(|x, y| x.0.cmp(y.0));
        e.iter()
            .map(|(k, v)| {
                let before = first.figures.spans_by_end.get(*k).copied().unwrap_or(0.0);
                format!("{k} {:.0}", **v - before)
            })
            .collect()
    };
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    println!("The whole run, from the holders' start until the last stall drained:");
    println!();
    println!("| what | value |");
    println!("|---|---:|");
    println!(
        "| connections opened, closed; connects failed | {}, {}; {} |",
        made.opened, made.closed, made.failed
    );
    println!(
        "| stalls made (drained; cut short by their connection's close) | {stalls} ({}; {}) |",
        made.ended, made.cut
    );
    println!(
        "| held spans the agent sent (by end) | {agent_spans:.0} ({}) |",
        ends.join(", ")
    );
    println!("| held spans the collector counted | {collector_spans:.0} |");
    println!(
        "| … held {}–{} s (the stalls' {s} s ± 1) | {near} |",
        s.saturating_sub(1),
        s + 1
    );
    println!(
        "| samples the agent sent; dropped; malformed kernel replies | {:.0}; {:.0}; {:.0} |",
        last.figures.sent_samples - first.figures.sent_samples,
        last.figures.dropped_samples - first.figures.dropped_samples,
        last.figures.malformed - first.figures.malformed
    );
    println!("| agent warnings and errors logged | {} |", warnings.len());
    println!();
    println!("| goal | measured | verdict |");
    println!("|---|---|---|");
    println!(
        "| every stall made is a span the agent sent | {agent_spans:.0} sent of {stalls} made | {} |",
        verdict(agent_spans == stalls as f64)
    );
    println!(
        "| every span sent is counted by the collector | {collector_spans:.0} of {agent_spans:.0} | {} |",
        verdict(collector_spans == agent_spans)
    );
    for w in warnings.iter().take(10) {
        println!();
        println!("    {w}");
    }
}

/// The first ten rows against the last ten.
fn trend(rows: &[Row]) {
    let (a, b) = (&rows[..10], &rows[rows.len() - 10..]);
    let mean = |r: &[Row], f: fn(&Row) -> f64| r.iter().map(f).sum::<f64>() / r.len() as f64;
    let change = |x: f64, y: f64| if x > 0.0 { (y - x) / x * 100.0 } else { 0.0 };
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    println!("The trend: the first ten rows against the last ten.");
    println!();
    println!("| what | first ten | last ten | change | goal | verdict |");
    println!("|---|---:|---:|---:|---|---|");
    let line = |what: &str, f: fn(&Row) -> f64, digits: usize| {
        let (x, y) = (mean(a, f), mean(b, f));
        println!(
            "| {what} | {x:.digits$} | {y:.digits$} | {:+.1} % | within 10 % | {} |",
            change(x, y),
            verdict(change(x, y).abs() <= 10.0)
        );
    };
    line("agent CPU, % of one core", |r| r.cpu_pct, 2);
    line("agent CPU per poll, ms", |r| r.ms_per_poll, 1);
    line("agent VmRSS, MiB", |r| r.rss_mib, 1);
    line("agent open file descriptors", |r| r.fds as f64, 0);
    line("connections in its poll", |r| r.connections, 0);
    println!();
}
