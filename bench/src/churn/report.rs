//! The markdown report of `agent-churn` on stdout: one row every
//! `--every`, the trend of a long run, and the whole run's totals against
//! its goals.

use std::time::Duration;

use super::hold::Counts;
use super::reading::Reading;
use super::ChurnArgs;
use crate::procfs;

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

pub(super) fn report(
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
