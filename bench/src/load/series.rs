//! The table over a `collector-load` window, one row every `--every`,
//! and a soak's trend: the first ten rows against the last ten.

use std::time::Duration;

use super::probe;
use super::snap::Measured;
use super::units::{mib, pct, per_s, secs};
use super::LoadArgs;
use crate::procfs;

/// One row of the table over the window.
#[derive(Debug, Clone)]
pub(super) struct Row {
    /// Since the window's start, at the row's end.
    pub(super) t: Duration,
    pub(super) collector_pct: f64,
    pub(super) store_pct: f64,
    /// This process's CPU: the same work every minute, so a change in it
    /// is the machine's (its speed, its neighbours), not the collector's.
    pub(super) generator_pct: f64,
    pub(super) rss_mib: f64,
    pub(super) db_mib: f64,
    pub(super) stored_per_s: f64,
    pub(super) deleted_per_s: f64,
    pub(super) delay_max: Duration,
    pub(super) ingested_per_s: f64,
    pub(super) dropped_per_s: f64,
    pub(super) outboxed: i64,
    pub(super) suspects: i64,
    pub(super) watched: i64,
    pub(super) episodes: i64,
    /// Stalls whose episode was due in the row: how many, how many stored,
    /// the p99 of their start → stored.
    pub(super) due: usize,
    pub(super) stored: usize,
    pub(super) p99: Option<Duration>,
}

pub(super) fn rows(args: &LoadArgs, m: &Measured) -> Vec<Row> {
    let s = &m.start;
    let stopped = m.window_end;
    let d = |a: u64, b: u64| a.saturating_sub(b) as i64;
    let deadline = args.deadline();
    let mut out = Vec::with_capacity(m.series.len());
    let mut prev = s;
    for x in &m.series {
        let w = x.at.saturating_sub(prev.at);
        let delay_max = m
            .delays
            .iter()
            .filter(|(at, _)| *at >= prev.at && *at < x.at)
            .map(|(at, d)| d.unwrap_or_else(|| stopped.saturating_sub(*at)))
            .max()
            .unwrap_or_default();
        let store: u64 = procfs::threads_since(&prev.collector_threads, &x.collector_threads)
            .iter()
            .filter(|(name, _)| name.as_str() == "tcpstall-store")
            .map(|(_, (_, t, _))| t.total())
            .sum();
        let due: Vec<&probe::Stall> = m
            .probed
            .stalls
            .iter()
            .filter(|st| st.start + deadline >= prev.at && st.start + deadline < x.at)
            .collect();
        let mut lat: Vec<Duration> = due
            .iter()
            .filter_map(|st| st.stored.as_ref().map(|(t, _)| t.saturating_sub(st.start)))
            .collect();
        lat.sort();
        let rows_now = x.samples_stored + x.db.episodes_max;
        let rows_before = prev.samples_stored + prev.db.episodes_max;
        out.push(Row {
            t: x.at.saturating_sub(s.at),
            collector_pct: procfs::percent_of_core(x.collector.since(&prev.collector).total(), w),
            store_pct: procfs::percent_of_core(store, w),
            generator_pct: procfs::percent_of_core(x.generator.since(&prev.generator).total(), w),
            rss_mib: mib(x.collector_mem.rss_kib),
            db_mib: x.db_bytes as f64 / (1 << 20) as f64,
            stored_per_s: per_s(rows_now - rows_before, w),
            deleted_per_s: (x.pruned_rows - prev.pruned_rows).max(0.0) / w.as_secs_f64().max(1e-9),
            delay_max,
            ingested_per_s: per_s(d(x.samples_taken, prev.samples_taken), w),
            dropped_per_s: per_s(d(x.samples_dropped, prev.samples_dropped), w),
            outboxed: x.outboxed,
            suspects: x.suspects,
            watched: x.watched,
            episodes: x.db.episodes,
            due: due.len(),
            stored: lat.len(),
            p99: (!lat.is_empty()).then(|| pct(&lat, 0.99)),
        });
        prev = x;
    }
    out
}

/// A soak's trend: the first ten rows against the last ten; and, when the
/// size bound was reached early enough, the first ten rows wholly at it
/// (from the row after the one where deletion began) against the last ten,
/// so that the climb from writing only to writing and deleting is told
/// apart from a climb at the bound.
pub(super) fn trend(args: &LoadArgs, rows: &[Row]) {
    println!("The trend: the first ten rows against the last ten.");
    println!();
    trend_table(args, rows, &rows[..10], &rows[rows.len() - 10..]);
    let at_bound = rows
        .iter()
        .position(|r| r.deleted_per_s > 0.0)
        .map(|i| i + 1);
    if let Some(i) = at_bound.filter(|i| rows.len().saturating_sub(*i) >= 20) {
        println!(
            "At the bound: rows {}–{} (the first ten wholly after deletion began, in the row ending at {} s) against the last ten.",
            i + 1,
            i + 10,
            rows[i - 1].t.as_secs()
        );
        println!();
        trend_table(args, &rows[i..], &rows[i..i + 10], &rows[rows.len() - 10..]);
    }
}

fn trend_table(args: &LoadArgs, rows: &[Row], first: &[Row], last: &[Row]) {
    let mean = |r: &[Row], f: fn(&Row) -> f64| r.iter().map(f).sum::<f64>() / r.len() as f64;
    let change = |a: f64, b: f64| if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    let cpu = (
        mean(first, |r| r.collector_pct),
        mean(last, |r| r.collector_pct),
    );
    let store = (mean(first, |r| r.store_pct), mean(last, |r| r.store_pct));
    let generator = (
        mean(first, |r| r.generator_pct),
        mean(last, |r| r.generator_pct),
    );
    let rss = (mean(first, |r| r.rss_mib), mean(last, |r| r.rss_mib));
    let db_max = rows.iter().map(|r| r.db_mib).fold(0.0, f64::max);
    let p99_max = rows.iter().filter_map(|r| r.p99).max().unwrap_or_default();
    let missed: usize = rows.iter().map(|r| r.due - r.stored).sum();
    let deadline = args.deadline();
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    println!("| what | first ten | last ten | change | goal | verdict |");
    println!("|---|---:|---:|---:|---|---|");
    println!(
        "| collector CPU, % of one core | {:.1} | {:.1} | {:+.1} % | within 10 % | {} |",
        cpu.0,
        cpu.1,
        change(cpu.0, cpu.1),
        verdict(change(cpu.0, cpu.1).abs() <= 10.0)
    );
    println!(
        "| store thread, % of one core | {:.1} | {:.1} | {:+.1} % | | |",
        store.0,
        store.1,
        change(store.0, store.1)
    );
    println!(
        "| generator (the same work throughout: the machine's drift), % of one core | {:.1} | {:.1} | {:+.1} % | | |",
        generator.0,
        generator.1,
        change(generator.0, generator.1)
    );
    println!(
        "| collector VmRSS, MiB | {:.1} | {:.1} | {:+.1} % | within 10 % | {} |",
        rss.0,
        rss.1,
        change(rss.0, rss.1),
        verdict(change(rss.0, rss.1).abs() <= 10.0)
    );
    match args.max_db_bytes {
        Some(max) => {
            let bound = max as f64 / (1 << 20) as f64;
            println!(
                "| database file + WAL, MiB, largest seen | | {db_max:.0} | | within --max-db-bytes ({bound:.0}) | {} |",
                verdict(db_max <= bound)
            );
        }
        None => println!("| database file + WAL, MiB, largest seen | | {db_max:.0} | | | |"),
    }
    println!(
        "| stall → episode p99, worst row | | {} | | within {} | {} |",
        secs(p99_max),
        secs(deadline),
        verdict(p99_max <= deadline && missed == 0)
    );
    println!();
}
