//! Percentiles, rates and units for the load report and its series.

use std::time::Duration;

/// The `p` percentile (0..=1) of `sorted`, by nearest rank.
pub(super) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(super) fn per_s(n: i64, wall: Duration) -> f64 {
    n as f64 / wall.as_secs_f64().max(1e-9)
}

pub(super) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(super) fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}
