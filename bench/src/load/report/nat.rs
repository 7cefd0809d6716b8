//! The report's part on joins through NAT (`--translated-every`): what
//! the simulated agents and the collector did for them over the window,
//! and the probe hosts' stalls by where their connections are translated —
//! stored, in time, and joined with their peers.

use std::time::Duration;

use super::super::probe::Stall;
use super::super::sim::{nat::FORWARDERS, Nat};
use super::super::snap::Snap;
use super::super::units::{pct, per_s, secs};

/// What the run's load line says of translation.
pub(super) fn load(every: u32) -> String {
    format!(
        "One in {every} connections crosses a NAT (half DNATed on the sender's host, half \
         forwarded into a container on the peer's); the last {FORWARDERS} hosts say they forward."
    )
}

/// Rows of the run's table, over the window from `s` to `e`.
pub(super) fn rows(s: &Snap, e: &Snap, wall: Duration) -> Vec<(&'static str, String)> {
    let d = |a: u64, b: u64| a.saturating_sub(b) as i64;
    let df = |a: f64, b: f64| (a - b).max(0.0) as i64;
    vec![
        (
            "lookups sent /s (absent flows' conntrack entries; Translate answers)",
            format!("{:.1}", per_s(d(e.lookups_taken, s.lookups_taken), wall)),
        ),
        (
            "collector: peers looked for again through a translation /s; Translate requests /s (its /metrics)",
            format!(
                "{:.1}; {:.1}",
                per_s(df(e.joined_via_translation, s.joined_via_translation), wall),
                per_s(df(e.translate_requests, s.translate_requests), wall)
            ),
        ),
        (
            "Translate requests the simulated agents got (dropped), whole run",
            format!("{} ({})", e.translates, e.translates_dropped),
        ),
    ]
}

/// The probe hosts' stalls due within the window, by where their
/// connections are translated.
pub(super) fn stalls(due: &[&Stall], deadline: Duration) {
    println!(
        "The same stalls by where their connection is translated (B joined: the episode names the \
         simulated peer's host as B and is peer_not_reading, which takes B's sample):"
    );
    println!();
    println!("| connection | stalls | stored | p99 s | within target | B joined when first listed | B joined when last listed |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for nat in Nat::ALL {
        let of: Vec<&&Stall> = due.iter().filter(|st| st.nat == nat).collect();
        let mut lat: Vec<Duration> = of
            .iter()
            .filter_map(|st| st.stored.as_ref().map(|(t, _)| t.saturating_sub(st.start)))
            .collect();
        lat.sort();
        let within = lat.iter().filter(|l| **l <= deadline).count();
        let first = of.iter().filter(|st| st.joined_first).count();
        let last = of.iter().filter(|st| st.joined_last).count();
        println!(
            "| {} | {} | {} | {} | {within} of {} | {first} of {} | {last} of {} |",
            nat.describe(),
            of.len(),
            lat.len(),
            secs(pct(&lat, 0.99)),
            of.len(),
            of.len(),
            of.len(),
        );
    }
    println!();
}
