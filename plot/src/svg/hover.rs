//! The values under the pointer: one invisible column per sample time,
//! each with a `<title>` naming every curve's value there (a browser shows
//! it as a tooltip; the web page also reads it into a line under the
//! picture). Last in the picture, so that it lies over everything.

use std::fmt::Write as _;

use super::layout::Layout;
use super::{escape, n};
use crate::series::Point;

/// `<g id="hover">`: for each distinct sample time, a `<rect
/// class="hover-at">` over the plot's height, from halfway to the previous
/// sample time to halfway to the next, with `data-at-ms` and a `<title>`:
/// `+12.0s` and then one `name value` line per curve with a value then
/// (its latest at or before that time; bytes from the ISN, as the y axis).
pub(super) fn write_hover(o: &mut String, l: &Layout) {
    let mut times: Vec<i64> = l
        .curves
        .iter()
        .flat_map(|(_, runs)| runs.iter().flatten().map(|p| p.at_ms))
        .collect();
    times.sort_unstable();
    times.dedup();
    let _ = writeln!(o, "<g id=\"hover\" fill=\"transparent\" stroke=\"none\">");
    for (i, &at) in times.iter().enumerate() {
        let x = l.x_ms(at);
        let lo = i
            .checked_sub(1)
            .map_or(l.left, |j| (l.x_ms(times[j]) + x) / 2.0)
            .max(l.left);
        let hi = times
            .get(i + 1)
            .map_or(l.right, |&t| (l.x_ms(t) + x) / 2.0)
            .min(l.right);
        // One line each (escaped one by one: the escape makes a newline
        // a space).
        let mut title = format!("+{:.1}s", (at as f64 - l.first_ms as f64) / 1000.0);
        for (curve, runs) in &l.curves {
            if let Some(v) = value_at(runs, at) {
                let _ = write!(title, "\n{} {v}", escape(curve.short));
            }
        }
        let _ = writeln!(
            o,
            "<rect class=\"hover-at\" data-at-ms=\"{at}\" data-x=\"{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"><title>{}</title></rect>",
            n(x),
            n(lo),
            n(l.top),
            n((hi - lo).max(0.0)),
            n(l.bottom - l.top),
            title,
        );
    }
    let _ = writeln!(o, "</g>");
}

/// A curve's latest value at or before `at`; none before its first, nor
/// within a gap (after a run ends, until the next begins).
fn value_at(runs: &[Vec<Point>], at: i64) -> Option<u64> {
    let run = runs
        .iter()
        .rev()
        .find(|r| r.first().is_some_and(|p| p.at_ms <= at))?;
    let last = run.iter().rev().find(|p| p.at_ms <= at)?;
    // After the run's last point lies a gap, unless that point is `at`.
    if run.last().is_some_and(|p| p.at_ms < at) && runs.last() != Some(run) {
        return None;
    }
    Some(last.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(at_ms: i64, value: u64) -> Point {
        Point { at_ms, value }
    }

    #[test]
    fn a_value_holds_until_the_next_and_a_gap_is_none() {
        let runs = vec![vec![p(0, 10), p(2000, 20)], vec![p(6000, 30)]];
        assert_eq!(value_at(&runs, -1), None);
        assert_eq!(value_at(&runs, 0), Some(10));
        assert_eq!(value_at(&runs, 1000), Some(10));
        assert_eq!(value_at(&runs, 2000), Some(20));
        assert_eq!(value_at(&runs, 4000), None, "within the gap");
        assert_eq!(value_at(&runs, 6000), Some(30));
        assert_eq!(value_at(&runs, 9000), Some(30), "the last run holds");
    }
}
