//! The curves as step lines, their names on the graph, and the legend.

use std::fmt::Write as _;

use crate::series::{Curve, Point};

use super::layout::{Layout, SWATCH};
use super::{escape, n, text_width};

fn dash_attr(curve: &Curve, s: f64) -> String {
    match curve.dash {
        Some(d) => {
            let parts: Vec<String> = d.iter().map(|v| n(v * s)).collect();
            format!(" stroke-dasharray=\"{}\"", parts.join(" "))
        }
        None => String::new(),
    }
}

/// The points of one run as a step line: each value holds until the next
/// sample, where the line steps to the new value.
fn step_points(run: &[Point], x: impl Fn(i64) -> f64, y: impl Fn(u64) -> f64) -> String {
    let mut pts: Vec<String> = Vec::with_capacity(run.len() * 2);
    let mut prev: Option<u64> = None;
    for p in run {
        let px = x(p.at_ms);
        if let Some(v) = prev {
            if v != p.value {
                pts.push(format!("{},{}", n(px), n(y(v))));
            }
        }
        pts.push(format!("{},{}", n(px), n(y(p.value))));
        prev = Some(p.value);
    }
    pts.join(" ")
}

/// Every curve: one `<polyline>` per run with a dot where it ends, or a
/// lone dot for a value known at one sample only. The widest are drawn
/// first, so that narrower ones lying on top of them stay visible.
pub(super) fn write_curves(o: &mut String, l: &Layout) {
    let s = l.s;
    let x = |ms| l.x_ms(ms);
    let y = |v| l.y_val(v);
    let mut order: Vec<&(&Curve, Vec<Vec<Point>>)> = l.curves.iter().collect();
    order.sort_by(|a, b| b.0.width.total_cmp(&a.0.width));
    for (curve, runs) in order {
        let _ = writeln!(
            o,
            "<g id=\"{}\" class=\"curve\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"{} stroke-linejoin=\"round\">",
            curve.id,
            curve.colour,
            n(curve.width * s),
            dash_attr(curve, s),
        );
        let dot = |class: &str, p: &Point, r: f64| {
            format!(
                "<circle class=\"{class}\" cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{}\" stroke=\"none\"/>",
                n(x(p.at_ms)),
                n(y(p.value)),
                n(r.max(2.5) * s),
                curve.colour,
            )
        };
        for run in runs {
            match run.as_slice() {
                [only] => {
                    let _ = writeln!(o, "{}", dot("point", only, curve.width * 0.8));
                }
                [.., last] => {
                    let _ = writeln!(o, "<polyline points=\"{}\"/>", step_points(run, x, y));
                    // Where the run ends, so that a last step is seen.
                    let _ = writeln!(o, "{}", dot("run-end", last, curve.width * 0.6));
                }
                [] => {}
            }
        }
        let _ = writeln!(o, "</g>");
    }
}

/// Names on the curves themselves, above the start of each. Curves that
/// start at one height share a label (`A.snd_una = B.rcv_nxt`): that
/// equality is what the graph is for, and one line drawn over another
/// cannot show it.
pub(super) fn write_curve_labels(o: &mut String, l: &Layout) {
    let s = l.s;
    // (x, y, names) of each height where curves start.
    let mut groups: Vec<(f64, f64, Vec<&str>)> = Vec::new();
    for (curve, runs) in &l.curves {
        let Some(p) = runs.first().and_then(|r| r.first()) else {
            continue;
        };
        let (x, y) = (l.x_ms(p.at_ms), l.y_val(p.value));
        match groups.iter_mut().find(|g| (g.1 - y).abs() < 1.0) {
            Some(g) => {
                g.0 = g.0.min(x);
                g.2.push(curve.short);
            }
            None => groups.push((x, y, vec![curve.short])),
        }
    }
    // From the bottom up, each label clear of the one below it.
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    let font = 11.0 * s;
    let mut floor = f64::INFINITY;
    let _ = writeln!(
        o,
        "<g id=\"curve-labels\" font-size=\"{}\" fill=\"#222222\" stroke=\"#FFFFFF\" stroke-width=\"{}\" stroke-linejoin=\"round\" paint-order=\"stroke\">",
        n(font),
        n(3.0 * s),
    );
    for (x, y, names) in groups {
        let text = names.join(" = ");
        let above = (y - 7.0 * s).min(floor - 14.0 * s);
        // No room above (a curve along the top): below the line instead.
        let baseline = if above < l.top + 12.0 * s {
            y + 16.0 * s
        } else {
            above
        };
        floor = baseline;
        let x = (x + 6.0 * s).min(l.right - 4.0 * s - text_width(&text, font));
        let _ = writeln!(
            o,
            "<text class=\"curve-label\" x=\"{}\" y=\"{}\">{}</text>",
            n(x),
            n(baseline),
            escape(&text),
        );
    }
    let _ = writeln!(o, "</g>");
}

/// The legend under the x axis: a swatch drawn like the curve and its name,
/// `(no data)` after the name of a curve with nothing to draw.
pub(super) fn write_legend(o: &mut String, l: &Layout) {
    let s = l.s;
    let _ = writeln!(o, "<g id=\"legend\" font-size=\"{}\">", n(12.0 * s));
    for item in &l.legend {
        let cy = l.bottom + 50.0 * s + (item.row as f64 + 0.5) * l.legend_row_h;
        let c = item.curve;
        let no_data = if item.no_data {
            format!(
                "<tspan dx=\"{}\" fill=\"#777777\">(no data)</tspan>",
                n(5.0 * s)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "<g class=\"legend-item\" id=\"legend-{}\"><line x1=\"{}\" y1=\"{cy}\" x2=\"{}\" y2=\"{cy}\" stroke=\"{}\" stroke-width=\"{}\"{}/><text x=\"{}\" y=\"{}\" fill=\"#222222\">{}{no_data}</text></g>",
            c.id,
            n(item.x),
            n(item.x + SWATCH * s),
            c.colour,
            n(c.width.min(4.0) * s),
            dash_attr(c, s),
            n(item.x + (SWATCH + 6.0) * s),
            n(cy + 4.0 * s),
            escape(c.name),
            cy = n(cy),
        );
    }
    let _ = writeln!(o, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_hold_then_jump() {
        let p = |at_ms, value| Point { at_ms, value };
        let run = [p(0, 10), p(1, 10), p(2, 20)];
        let pts = step_points(&run, |t| t as f64, |v| v as f64);
        assert_eq!(pts, "0.00,10.00 1.00,10.00 2.00,10.00 2.00,20.00");
    }
}
