//! The markdown report of `collector-load` on stdout: the run's figures,
//! CPU by thread, the table over the window, the stall → episode latency,
//! what the database and log held, and the targets' verdicts; and the
//! small helpers that format its figures. With translation on, [`nat`]
//! adds its part.

mod nat;
mod parts;

use std::collections::BTreeMap;
use std::time::Duration;

use super::after::After;
use super::probe;
use super::series::{rows, trend};
use super::snap::Measured;
use super::system::System;
use super::units::{mib, pct, per_s, secs};
use super::LoadArgs;
use crate::procfs;

pub(super) fn report(args: &LoadArgs, system: &System, m: &Measured, after: &After, alive: bool) {
    let (s, e) = (&m.start, &m.end);
    let wall = e.at.saturating_sub(s.at);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let coll = e.collector.since(&s.collector);
    let gen = e.generator.since(&s.generator);
    let coll_pct = procfs::percent_of_core(coll.total(), wall);
    let gen_pct = procfs::percent_of_core(gen.total(), wall);
    let shape = args.shape();
    let tracked = e.suspects + e.watched;
    let d = |a: u64, b: u64| a.saturating_sub(b) as i64;

    let command: Vec<String> = std::env::args().collect();
    println!("Command: `{}`", command.join(" "));
    println!(
        "Machine: {} cores, kernel {}",
        cores,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "Load: {} agents x {} connections, {:.0} suspects and {} stuck flows per agent at any \
         poll, {} polls, stalls of {}, collector --threshold {}; {} HTTP/2 connections \
         ({} agents each), connected in {:.1} s; warm-up {}, window {:.1} s; batches of at \
         most {} entries.",
        args.fleet.agents,
        args.fleet.conns_per_agent,
        shape.suspects,
        shape.stuck,
        humantime::format_duration(args.interval),
        humantime::format_duration(args.fleet.stuck_for),
        humantime::format_duration(args.threshold),
        m.connections,
        args.agents_per_conn,
        m.connect_time.as_secs_f64(),
        humantime::format_duration(args.warmup()),
        wall.as_secs_f64(),
        args.batch_max.min(tcpstall_agent::run::MAX_BATCH_ENTRIES),
    );
    let translated = args.fleet.translated_every;
    if translated > 0 {
        println!("{}", nat::load(translated));
    }
    println!();
    println!("| what | value |");
    println!("|---|---:|");
    let row = |k: &str, v: String| println!("| {k} | {v} |");
    row(
        "samples ingested /s (taken by the collector's streams)",
        format!("{:.0}", per_s(d(e.samples_taken, s.samples_taken), wall)),
    );
    row(
        "… suspect / released / watched /s",
        format!(
            "{:.0} / {:.0} / {:.0}",
            per_s(d(e.suspect_taken, s.suspect_taken), wall),
            per_s(d(e.released_taken, s.released_taken), wall),
            per_s(d(e.watched_taken, s.watched_taken), wall)
        ),
    );
    row(
        "samples offered /s (by the simulated polls)",
        format!(
            "{:.0}",
            per_s(d(e.samples_offered, s.samples_offered), wall)
        ),
    );
    row(
        "samples (batches) dropped /s: outbox full, the collector fell behind",
        format!(
            "{:.0} ({:.1})",
            per_s(d(e.samples_dropped, s.samples_dropped), wall),
            per_s(d(e.batches_dropped, s.batches_dropped), wall)
        ),
    );
    row(
        "batches / heartbeats ingested /s",
        format!(
            "{:.0} / {:.0}",
            per_s(d(e.batches_taken, s.batches_taken), wall),
            per_s(d(e.heartbeats_taken, s.heartbeats_taken), wall)
        ),
    );
    row(
        "TCP payload into / out of the collector (kernel counters)",
        format!(
            "{:.2} / {:.2} MB/s",
            per_s(d(e.wire_in, s.wire_in), wall) / 1e6,
            per_s(d(e.wire_out, s.wire_out), wall) / 1e6
        ),
    );
    row(
        "watch / unwatch requests received /s",
        format!(
            "{:.0} / {:.0}",
            per_s(d(e.watches, s.watches), wall),
            per_s(d(e.unwatches, s.unwatches), wall)
        ),
    );
    if translated > 0 {
        for (k, v) in nat::rows(s, e, wall) {
            row(k, v);
        }
    }
    // Unanswered calls count as what they had waited when the run ended.
    let stopped = m.delays.iter().map(|(at, _)| *at).max().unwrap_or_default();
    let in_window: Vec<&(Duration, Option<Duration>)> = m
        .delays
        .iter()
        .filter(|(at, _)| *at >= s.at && *at <= e.at)
        .collect();
    let unanswered = in_window.iter().filter(|(_, d)| d.is_none()).count();
    let mut delays: Vec<Duration> = in_window
        .iter()
        .map(|(at, d)| d.unwrap_or_else(|| stopped.saturating_sub(*at)))
        .collect();
    delays.sort();
    row(
        "matcher delay: GetFlow round trip every 0.5 s, p50 / p99 / max",
        format!(
            "{} / {} / {} s{}",
            secs(pct(&delays, 0.5)),
            secs(pct(&delays, 0.99)),
            secs(delays.last().copied().unwrap_or_default()),
            if unanswered > 0 {
                format!(
                    " ({unanswered} of {} never answered: counted as at least their wait)",
                    delays.len()
                )
            } else {
                String::new()
            }
        ),
    );
    row(
        "batches waiting in outboxes (start → end)",
        format!("{} → {}", s.outboxed, e.outboxed),
    );
    row(
        "**collector CPU, % of one core** (user + sys)",
        format!(
            "**{coll_pct:.1}** ({:.1} + {:.1})",
            procfs::percent_of_core(coll.user, wall),
            procfs::percent_of_core(coll.sys, wall)
        ),
    );
    row(
        "**collector CPU, % of the machine** (2 cores)",
        format!("**{:.1}**", coll_pct / cores),
    );
    row(
        "collector CPU per sample ingested",
        format!(
            "{:.1} µs",
            coll.duration().as_secs_f64() * 1e6 / d(e.samples_taken, s.samples_taken).max(1) as f64
        ),
    );
    row(
        "collector CPU when idle (heartbeats only), % of one core",
        format!("{:.1}", m.idle_cpu),
    );
    row(
        "generator CPU, % of one core (this process)",
        format!("{gen_pct:.1}"),
    );
    row(
        "collector VmRSS idle (agents connected) → window end",
        format!(
            "{:.1} → {:.1} MiB",
            mib(m.idle.rss_kib),
            mib(e.collector_mem.rss_kib)
        ),
    );
    row(
        "collector VmHWM at window end",
        format!("{:.1} MiB", mib(e.collector_mem.hwm_kib)),
    );
    row(
        "tracked connections at window end (suspects + watched peers)",
        format!(
            "{tracked} ({} + {}; {} stuck)",
            e.suspects, e.watched, e.stuck
        ),
    );
    let per = |kib: u64| kib as f64 * 1024.0 / tracked.max(1) as f64;
    row(
        "**collector memory per tracked connection**: VmRSS / tracked",
        format!("**{:.0} B**", per(e.collector_mem.rss_kib)),
    );
    row(
        "… (VmRSS − idle VmRSS) / tracked",
        format!(
            "{:.0} B",
            per(e.collector_mem.rss_kib.saturating_sub(m.idle.rss_kib))
        ),
    );
    if let Some((tracked_b, allocated, resident)) = m.memory {
        row(
            "… of which the matcher's tables and kept samples (its estimate) / tracked",
            format!("{:.0} B", tracked_b / tracked.max(1) as f64),
        );
        row(
            "… heap allocated (jemalloc) / tracked; resident heap",
            format!(
                "{:.0} B; {:.1} MiB of {:.1} MiB allocated",
                allocated / tracked.max(1) as f64,
                resident / 1048576.0,
                allocated / 1048576.0
            ),
        );
    }
    row(
        "… idle VmRSS per connected agent",
        format!(
            "{:.1} KiB",
            m.idle.rss_kib as f64 / f64::from(args.fleet.agents)
        ),
    );
    row(
        "size of one `EndSample` (the matcher keeps 2 per suspect, 1 per watched peer)",
        format!("{} B", std::mem::size_of::<tcpstall_common::EndSample>()),
    );
    let dsamples = e.samples_stored - s.samples_stored;
    // Ever stored and ever closed: what retention deleted counts too.
    let depisodes = e.db.episodes_max - s.db.episodes_max;
    let dclosed = (e.db.closed + e.pruned_episodes) - (s.db.closed + s.pruned_episodes);
    row(
        &format!(
            "{} rows inserted /s: samples + episodes",
            system.store_name()
        ),
        format!(
            "{:.0} ({:.0} + {:.0})",
            per_s(dsamples + depisodes, wall),
            per_s(dsamples, wall),
            per_s(depisodes, wall)
        ),
    );
    row(
        &format!("{} episodes closed (updated) /s", system.store_name()),
        format!("{:.0}", per_s(dclosed, wall)),
    );
    row(
        "database size after the run",
        format!("{:.1} MiB", after.db_bytes as f64 / 1048576.0),
    );
    row("simulated agents failed", m.failed_agents.to_string());
    row(
        "collector alive at the end",
        if alive { "yes".into() } else { "**no**".into() },
    );
    println!();

    parts::parts(system, s, e, wall, cores);
    println!("Collector CPU by thread over the window (threads alive throughout, every node's):");
    println!();
    println!("| thread | n | % of one core (ticks) | % of one core (schedstat) |");
    println!("|---|---:|---:|---:|");
    for (name, (n, t, ns)) in procfs::threads_since(&s.collector_threads, &e.collector_threads) {
        println!(
            "| {name} | {n} | {:.1} | {:.1} |",
            procfs::percent_of_core(t.total(), wall),
            ns as f64 / 1e9 / wall.as_secs_f64() * 100.0
        );
    }
    println!();
    println!("Generator CPU by thread:");
    println!();
    println!("| thread | n | % of one core (ticks) |");
    println!("|---|---:|---:|");
    for (name, (n, t, _)) in procfs::threads_since(&s.generator_threads, &e.generator_threads) {
        println!(
            "| {name} | {n} | {:.1} |",
            procfs::percent_of_core(t.total(), wall)
        );
    }
    println!();

    let rows = rows(args, m);
    println!(
        "Every ~{} of the window (stalls: those whose episode was due in the row's time):",
        humantime::format_duration(args.every.min(wall))
    );
    println!();
    println!("| t s | collector % core | store thread % core | generator % core | VmRSS MiB | database MiB | rows stored/s | rows deleted/s | matcher delay max s | ingested samples/s | dropped/s | outboxed | suspects | watched | episodes in the database | stalls due: stored, p99 s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} of {}, {} |",
            r.t.as_secs_f64(),
            r.collector_pct,
            r.store_pct,
            r.generator_pct,
            r.rss_mib,
            r.db_mib,
            r.stored_per_s,
            r.deleted_per_s,
            secs(r.delay_max),
            r.ingested_per_s,
            r.dropped_per_s,
            r.outboxed,
            r.suspects,
            r.watched,
            r.episodes,
            r.stored,
            r.due,
            r.p99.map_or_else(|| "-".to_string(), secs),
        );
    }
    println!();
    if args.every >= Duration::from_secs(60) && rows.len() >= 20 {
        trend(args, &rows);
    }

    // Latency: stalls whose episode was due (start + deadline) within the
    // window.
    let deadline = args.deadline();
    let due_from = m.window_start.saturating_sub(deadline);
    let due_to = m.window_end.saturating_sub(deadline);
    let due: Vec<&probe::Stall> = m
        .probed
        .stalls
        .iter()
        .filter(|st| st.start >= due_from && st.start < due_to)
        .collect();
    let mut lat: Vec<Duration> = due
        .iter()
        .filter_map(|st| st.stored.as_ref().map(|(t, _)| t.saturating_sub(st.start)))
        .collect();
    lat.sort();
    let missing = due.len() - lat.len();
    let within = lat.iter().filter(|l| **l <= deadline).count();
    // Polls from the one that first saw the queue held to the episode
    // being listed: threshold / interval of them at best.
    let mut polls_after: BTreeMap<u64, usize> = BTreeMap::new();
    for st in &due {
        if let Some((t, _)) = &st.stored {
            let n = t.saturating_sub(st.first_seen).as_secs_f64() / args.interval.as_secs_f64();
            *polls_after.entry(n.floor() as u64).or_default() += 1;
        }
    }
    let mut diag: BTreeMap<&str, usize> = BTreeMap::new();
    for st in &due {
        if let Some((_, dg)) = &st.stored {
            *diag.entry(dg.as_str()).or_default() += 1;
        }
    }
    println!(
        "Stall start → episode listed by ListEpisodes, for the {} probe hosts' stalls due within \
         the window ({} stalls; probe every {}, {} calls, {} failed, {} rows):",
        args.probe_hosts.min(args.fleet.agents),
        due.len(),
        humantime::format_duration(args.probe_every),
        m.probed.calls,
        m.probed.failed_calls,
        m.probed.rows,
    );
    println!();
    println!("| stalls | stored | never stored | p50 s | p99 s | max s | target (threshold + 2 polls) s | within target |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} of {} |",
        due.len(),
        lat.len(),
        missing,
        secs(pct(&lat, 0.5)),
        secs(pct(&lat, 0.99)),
        secs(lat.last().copied().unwrap_or_default()),
        secs(deadline),
        within,
        due.len(),
    );
    println!();
    println!(
        "Listed after this many whole polls from the poll that first saw the queue held \
         (threshold / interval = {:.1}): {}",
        args.threshold.as_secs_f64() / args.interval.as_secs_f64(),
        polls_after
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "Diagnoses of those: {}",
        diag.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    if translated > 0 {
        nat::stalls(&due, deadline);
    }
    println!(
        "Whole run, from the database: episodes by diagnosis {}; by end {}; samples by side {}.",
        fmt_pairs(&after.diagnoses),
        fmt_pairs(&after.end_reasons),
        fmt_pairs(&after.samples_by_side)
    );
    println!(
        "Collector log: {} lines, {} \"episode opened\"; warnings and errors: {}",
        after.log_lines,
        after.opened_logged,
        if after.warnings.is_empty() {
            "none".to_string()
        } else {
            after
                .warnings
                .iter()
                .take(8)
                .map(|(k, v)| format!("{v} × `{k}`"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    println!("| target | measured | verdict |");
    println!("|---|---|---|");
    let lag_p99 = pct(&delays, 0.99);
    println!(
        "| {} agents held: nothing dropped, the matcher keeps up (delay p99 < 1 poll) | {:.0} samples/s dropped, {} batches outboxed at the end, delay p99 {} s | {} |",
        args.fleet.agents,
        per_s(d(e.samples_dropped, s.samples_dropped), wall),
        e.outboxed,
        secs(lag_p99),
        verdict(
            e.samples_dropped == s.samples_dropped
                && e.outboxed <= i64::from(args.fleet.agents)
                && m.failed_agents == 0
                && !delays.is_empty()
                && lag_p99 < args.interval
        ),
    );
    println!(
        "| collector < 25 % CPU of the 2 cores | {:.1} % | {} |",
        coll_pct / cores,
        verdict(coll_pct / cores < 25.0)
    );
    println!(
        "| < 1 KB collector memory per tracked connection | {:.0} B (VmRSS / tracked) | {} |",
        per(e.collector_mem.rss_kib),
        verdict(per(e.collector_mem.rss_kib) < 1000.0)
    );
    println!(
        "| episode stored within threshold + 2 polls ({} s) | p99 {} s, max {} s, {} never | {} |",
        secs(deadline),
        secs(pct(&lat, 0.99)),
        secs(lat.last().copied().unwrap_or_default()),
        missing,
        verdict(!due.is_empty() && missing == 0 && within == due.len())
    );
}

fn fmt_pairs(v: &[(String, i64)]) -> String {
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(pct(&v, 0.5), Duration::from_secs(50));
        assert_eq!(pct(&v, 0.99), Duration::from_secs(99));
        assert_eq!(pct(&v[..1], 0.99), Duration::from_secs(1));
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
    }
}
