//! The History page's chart: episodes per diagnosis over time, as stacked
//! bars, one per time bucket, drawn as SVG here (`/episodes/chart.svg` with
//! the page's filters). Its own request, so that the list never waits for
//! the counting.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use tcpstall_common::record::{EpisodeCount, EpisodeFilter};
use tcpstall_common::time::rfc3339;
use tcpstall_common::Diagnosis;

use tcpstall_plot::xml_escape as escape;

use super::Web;

/// Bars at most; a window is cut into about this many buckets.
const BARS: i64 = 40;
const W: f64 = 1000.0;
const H: f64 = 260.0;
/// The plot area.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 990.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 190.0;

/// Bucket widths a window is cut into, the smallest that gives at most
/// [`BARS`] bars.
const WIDTHS_MS: [i64; 14] = [
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
];

/// Colours, one per diagnosis in [`Diagnosis::ALL`]'s order (Okabe–Ito,
/// then greys); a diagnosis this build does not know is drawn grey.
const COLOURS: [&str; 12] = [
    "#D55E00", "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#7F7F7F", "#A6761D", "#666666", "#1B9E77",
];

fn bucket_for(window_ms: i64) -> i64 {
    WIDTHS_MS
        .into_iter()
        .find(|w| window_ms / w <= BARS)
        .unwrap_or(WIDTHS_MS[WIDTHS_MS.len() - 1])
}

fn colour(diagnosis: &str) -> &'static str {
    Diagnosis::ALL
        .iter()
        .position(|d| d.id() == diagnosis)
        .and_then(|i| COLOURS.get(i).copied())
        .unwrap_or("#999999")
}

/// `/episodes/chart.svg`: the counts of the episodes `f` matches (all of
/// them: its limit aside), over `since_ms..now_ms`; `ended` counts only
/// ended ones (all less the open).
pub async fn svg(web: &Web, f: EpisodeFilter, ended: bool, now_ms: i64) -> Result<String, String> {
    let count = |f: EpisodeFilter, bucket: i64| async move {
        let mut counts = web.store.count_episodes(f.clone(), bucket).await.map_err(|e| e.to_string())?;
        if ended {
            let open = EpisodeFilter { open_only: true, ..f };
            let open = web.store.count_episodes(open, bucket).await.map_err(|e| e.to_string())?;
            for o in open {
                if let Some(c) = counts.iter_mut().find(|c| c.bucket_ms == o.bucket_ms && c.diagnosis == o.diagnosis) {
                    c.count = c.count.saturating_sub(o.count);
                }
            }
        }
        Ok::<_, String>(counts)
    };
    let (from, bucket, counts) = match f.since_ms {
        Some(from) => {
            let bucket = bucket_for(now_ms.saturating_sub(from).max(1));
            (from, bucket, count(f, bucket).await?)
        }
        // Everything: counted by the hour (the counting costs by the row,
        // not the bucket), which finds the oldest; merged into wider bars,
        // or counted again in narrower ones when all of it is recent.
        None => {
            let hourly = count(f.clone(), HOUR_MS).await?;
            let from = hourly.iter().map(|c| c.bucket_ms).min().unwrap_or(now_ms - HOUR_MS);
            let bucket = bucket_for(now_ms.saturating_sub(from).max(1));
            let counts = if bucket % HOUR_MS == 0 {
                merge(hourly, bucket)
            } else {
                let f = EpisodeFilter { since_ms: Some(from), ..f };
                count(f, bucket).await?
            };
            (from, bucket, counts)
        }
    };
    Ok(draw(&counts, from - from.rem_euclid(bucket), now_ms, bucket))
}

const HOUR_MS: i64 = 3_600_000;

/// Counts in buckets of a multiple of theirs, added up.
fn merge(counts: Vec<EpisodeCount>, bucket: i64) -> Vec<EpisodeCount> {
    let mut by: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for c in counts {
        *by.entry((c.bucket_ms - c.bucket_ms.rem_euclid(bucket), c.diagnosis)).or_default() += c.count;
    }
    by.into_iter()
        .map(|((bucket_ms, diagnosis), count)| EpisodeCount {
            bucket_ms,
            diagnosis,
            count,
        })
        .collect()
}

/// The chart of `counts` (by bucket of `bucket` ms) from `from_ms` to `to_ms`.
pub fn draw(counts: &[EpisodeCount], from_ms: i64, to_ms: i64, bucket: i64) -> String {
    let mut bars: BTreeMap<i64, Vec<(&str, u64)>> = BTreeMap::new();
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for c in counts.iter().filter(|c| c.count > 0) {
        bars.entry(c.bucket_ms).or_default().push((&c.diagnosis, c.count));
        *totals.entry(&c.diagnosis).or_default() += c.count;
    }
    let tallest = bars.values().map(|b| b.iter().map(|(_, n)| n).sum::<u64>()).max().unwrap_or(0);
    let span = (to_ms - from_ms).max(bucket) as f64;
    let x = |ms: i64| LEFT + (ms - from_ms) as f64 / span * (RIGHT - LEFT);
    let bar_w = (bucket as f64 / span * (RIGHT - LEFT) - 2.0).max(1.0);
    let y = |n: u64| BOTTOM - n as f64 / tallest.max(1) as f64 * (BOTTOM - TOP);
    let mut o = String::with_capacity(8 * 1024);
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" font-family=\"system-ui, sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(o, "<rect width=\"{W}\" height=\"{H}\" fill=\"#FFFFFF\"/>");
    let _ = writeln!(
        o,
        "<line x1=\"{LEFT}\" y1=\"{BOTTOM}\" x2=\"{RIGHT}\" y2=\"{BOTTOM}\" stroke=\"#5f6368\"/>"
    );
    let _ = writeln!(
        o,
        "<text id=\"y-max\" x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#5f6368\">{tallest}</text>",
        LEFT - 6.0,
        TOP + 4.0
    );
    let _ = writeln!(
        o,
        "<text x=\"{}\" y=\"{BOTTOM}\" text-anchor=\"end\" fill=\"#5f6368\">0</text>",
        LEFT - 6.0
    );
    for (at, anchor) in [(from_ms, "start"), (to_ms, "end")] {
        let _ = writeln!(
            o,
            "<text class=\"x-label\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\" fill=\"#5f6368\">{}</text>",
            x(at),
            BOTTOM + 16.0,
            rfc3339(at)
        );
    }
    if tallest == 0 {
        let _ = writeln!(
            o,
            "<text id=\"none\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#5f6368\">No episodes in this window.</text>",
            (LEFT + RIGHT) / 2.0,
            (TOP + BOTTOM) / 2.0
        );
    }
    // Each bar stacked in Diagnosis::ALL's order, from the bottom.
    for (&at, parts) in &bars {
        let mut parts = parts.clone();
        parts.sort_by_key(|(d, _)| Diagnosis::ALL.iter().position(|x| x.id() == *d).unwrap_or(usize::MAX));
        let mut below = 0u64;
        for (d, n) in parts {
            let (top, bottom) = (y(below + n), y(below));
            let _ = writeln!(
                o,
                "<rect class=\"bar\" data-diagnosis=\"{}\" data-count=\"{n}\" data-at-ms=\"{at}\" x=\"{:.1}\" y=\"{top:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}: {n} {}</title></rect>",
                escape(d),
                x(at) + 1.0,
                (bottom - top).max(0.5),
                colour(d),
                rfc3339(at),
                escape(d),
            );
            below += n;
        }
    }
    // The legend: each diagnosis seen, with its total.
    let (mut lx, mut ly) = (LEFT, BOTTOM + 40.0);
    for (d, n) in &totals {
        let label = format!("{d} ({n})");
        let w = 18.0 + label.chars().count() as f64 * 7.0 + 16.0;
        if lx + w > RIGHT {
            lx = LEFT;
            ly += 18.0;
        }
        let _ = writeln!(
            o,
            "<g class=\"legend\" data-diagnosis=\"{}\" data-total=\"{n}\"><rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{ly:.1}\">{}</text></g>",
            escape(d),
            ly - 10.0,
            colour(d),
            lx + 18.0,
            escape(&label),
        );
        lx += w;
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(bucket_ms: i64, diagnosis: &str, count: u64) -> EpisodeCount {
        EpisodeCount {
            bucket_ms,
            diagnosis: diagnosis.into(),
            count,
        }
    }

    #[test]
    fn a_window_is_cut_into_at_most_forty_bars() {
        assert_eq!(bucket_for(3_600_000), 120_000);
        assert_eq!(bucket_for(86_400_000), 3_600_000);
        assert_eq!(bucket_for(7 * 86_400_000), 21_600_000);
        assert_eq!(bucket_for(30 * 86_400_000), 86_400_000);
        assert_eq!(bucket_for(i64::MAX), 604_800_000);
    }

    #[test]
    fn narrow_buckets_merge_into_wide_ones() {
        let h = HOUR_MS;
        let merged = merge(
            vec![
                count(0, "a", 1),
                count(h, "a", 2),
                count(h, "b", 5),
                count(25 * h, "a", 3),
            ],
            24 * h,
        );
        assert_eq!(merged, [count(0, "a", 3), count(0, "b", 5), count(24 * h, "a", 3)]);
    }

    #[test]
    fn bars_stack_and_the_legend_counts() {
        let h = 3_600_000;
        let svg = draw(
            &[
                count(0, "peer_not_reading", 3),
                count(0, "data_lost_a_to_b", 1),
                count(h, "peer_not_reading", 2),
                count(h, "<script>", 1),
            ],
            0,
            24 * h,
            h,
        );
        assert_eq!(svg.matches("class=\"bar\"").count(), 4);
        assert!(svg.contains("id=\"y-max\" x=\"50\" y=\"20\" text-anchor=\"end\" fill=\"#5f6368\">4<"), "{svg}");
        assert!(svg.contains("data-diagnosis=\"peer_not_reading\" data-total=\"5\""), "{svg}");
        assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt; (1)"), "{svg}");
        let empty = draw(&[], 0, h, 120_000);
        assert!(empty.contains("No episodes in this window."));
    }
}
