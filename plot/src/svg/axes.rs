//! The grid, the plot's frame, and both axes with their ticks and labels.

use std::fmt::Write as _;

use crate::scale::thousands;

use super::layout::Layout;
use super::{escape, n};

const AXIS: &str = "#333333";
const GRID: &str = "#E4E4E4";

pub(super) fn write_grid(o: &mut String, l: &Layout) {
    let _ = writeln!(o, "<g id=\"grid\" stroke=\"{GRID}\" stroke-width=\"1\">");
    for t in &l.x_ticks {
        let x = n(l.xs.px(t.value));
        let _ = writeln!(
            o,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/>",
            n(l.top),
            n(l.bottom)
        );
    }
    for t in &l.y_ticks.ticks {
        let y = n(l.ys.px(t.value));
        let _ = writeln!(
            o,
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\"/>",
            n(l.left),
            n(l.right)
        );
    }
    let _ = writeln!(o, "</g>");
    let _ = writeln!(
        o,
        "<rect id=\"frame\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#BBBBBB\" stroke-width=\"1\"/>",
        n(l.left),
        n(l.top),
        n(l.right - l.left),
        n(l.bottom - l.top),
    );
}

pub(super) fn write_x_axis(o: &mut String, l: &Layout) {
    let s = l.s;
    let _ = writeln!(
        o,
        "<g id=\"x-axis\" stroke=\"{AXIS}\" fill=\"{AXIS}\" font-size=\"{}\"><line x1=\"{}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke-width=\"1\"/>",
        n(11.0 * s),
        n(l.left),
        n(l.right),
        bottom = n(l.bottom),
    );
    for t in &l.x_ticks {
        let x = n(l.xs.px(t.value));
        let _ = writeln!(
            o,
            "<g class=\"x-tick\"><line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" stroke=\"none\">{}</text></g>",
            n(l.bottom),
            n(l.bottom + 5.0 * s),
            n(l.bottom + 17.0 * s),
            escape(&t.label),
        );
    }
    let _ = writeln!(
        o,
        "<text id=\"x-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" stroke=\"none\" font-size=\"{}\">time (s)</text></g>",
        n((l.left + l.right) / 2.0),
        n(l.bottom + 35.0 * s),
        n(12.0 * s),
    );
}

pub(super) fn write_y_axis(o: &mut String, l: &Layout) {
    let s = l.s;
    let _ = writeln!(
        o,
        "<g id=\"y-axis\" stroke=\"{AXIS}\" fill=\"{AXIS}\" font-size=\"{}\"><line x1=\"{left}\" y1=\"{}\" x2=\"{left}\" y2=\"{}\" stroke-width=\"1\"/>",
        n(11.0 * s),
        n(l.top),
        n(l.bottom),
        left = n(l.left),
    );
    for t in &l.y_ticks.ticks {
        let y = l.ys.px(t.value);
        let _ = writeln!(
            o,
            "<g class=\"y-tick\"><line x1=\"{}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\" stroke=\"none\">{}</text></g>",
            n(l.left - 5.0 * s),
            n(l.left),
            n(l.left - 8.0 * s),
            n(y + 4.0 * s),
            escape(&t.label),
            y0 = n(y),
        );
    }
    let mid = n((l.top + l.bottom) / 2.0);
    let x = n(l.y_label_x);
    let _ = writeln!(
        o,
        "<text id=\"y-label\" x=\"{x}\" y=\"{mid}\" transform=\"rotate(-90 {x} {mid})\" text-anchor=\"middle\" stroke=\"none\" font-size=\"{}\">sequence (bytes, relative to ISN)</text>",
        n(12.0 * s),
    );
    if let Some(base) = l.y_ticks.offset {
        let x = n(l.y_offset_x);
        let _ = writeln!(
            o,
            "<text id=\"y-offset\" x=\"{x}\" y=\"{mid}\" transform=\"rotate(-90 {x} {mid})\" text-anchor=\"middle\" stroke=\"none\" fill=\"#555555\">tick labels count from {}</text>",
            thousands(base),
        );
    }
    let _ = writeln!(o, "</g>");
}
