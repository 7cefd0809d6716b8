//! The markdown report of `agent-idle` on stdout: the agent's CPU and
//! memory, the bytes it sent, the targets' verdicts and the floor.

use std::time::Duration;

use super::floor::{Floor, FLOOR_KINDS};
use super::reading::{AgentFigures, Reading};
use super::IdleArgs;
use crate::procfs;

/// Targets from the issue.
const TARGET_CPU_PCT: f64 = 1.0;
const TARGET_BYTES_PER_S: f64 = 1000.0;

pub(super) fn report(
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
    let mut follow = match &args.follow_interval {
        Some(f) => format!(" (--follow-interval {f})"),
        None => String::new(),
    };
    if args.no_kernel_filter {
        follow += " with --no-kernel-filter (sock_diag alone)";
    }
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
    if args.stuck_every > 0 {
        row(
            "agent: conntrack lookups in the window (per second); since it started",
            format!(
                "{:.0} ({:.2}/s), {:.0} translated; {:.0}",
                figures.conntrack_lookups,
                figures.conntrack_lookups / secs,
                figures.conntrack_translated,
                figures.conntrack_lookups_ever
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
                0 | 1 | 9 => format!("{} connections", f.out[k]),
                7 => format!("{} answered", f.out[k]),
                8 => format!("{} asked", f.out[k]),
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
