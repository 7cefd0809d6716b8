//! Where everything goes: the data's ranges, the scales, the ticks, and
//! the pixel boxes of title, plot area, axes and legend, computed once
//! from the input and the picture's size.

use crate::scale::{byte_ticks, pad_range, time_ticks, ByteTicks, Scale, Tick};
use crate::series::{runs, Curve, Point, CURVES};
use crate::{PlotError, PlotInput};

use super::text_width;

/// One legend entry, placed.
#[derive(Debug)]
pub(super) struct LegendItem {
    pub curve: &'static Curve,
    pub no_data: bool,
    /// Left edge of its swatch.
    pub x: f64,
    pub row: usize,
}

/// The picture's geometry.
#[derive(Debug)]
pub(super) struct Layout {
    pub width: f64,
    /// Size factor of text, margins and strokes: 1 at 900 × 560.
    pub s: f64,
    /// The plot area.
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
    pub xs: Scale,
    pub ys: Scale,
    pub x_ticks: Vec<Tick>,
    pub y_ticks: ByteTicks,
    /// Where the rotated y axis label and its offset line stand.
    pub y_label_x: f64,
    pub y_offset_x: f64,
    /// Time 0: the first sample.
    pub first_ms: i64,
    /// Where the shading ends: the episode's end, or the last sample.
    pub stall_end_ms: i64,
    /// Each curve with its runs of known values, in legend order.
    pub curves: Vec<(&'static Curve, Vec<Vec<Point>>)>,
    pub legend: Vec<LegendItem>,
    pub legend_row_h: f64,
    /// Whether A's and B's labels share one line under the title.
    pub ends_one_line: bool,
}

/// Horizontal gap between legend entries, at scale 1.
const LEGEND_GAP: f64 = 22.0;
/// Width of a legend swatch, at scale 1.
pub(super) const SWATCH: f64 = 30.0;

impl Layout {
    pub fn new(input: &PlotInput, width: u32, height: u32) -> Result<Layout, PlotError> {
        let (w, h) = (f64::from(width), f64::from(height));
        let s = (w / 900.0).min(h / 560.0).clamp(0.75, 3.0);
        let too_small = || PlotError::Size { width, height };

        let curves: Vec<(&'static Curve, Vec<Vec<Point>>)> = CURVES
            .iter()
            .map(|c| (c, runs(c, &input.samples)))
            .collect();
        let values = curves
            .iter()
            .flat_map(|(_, r)| r.iter().flatten())
            .map(|p| p.value);
        let (Some(v_min), Some(v_max)) = (values.clone().min(), values.max()) else {
            return Err(PlotError::NoPositions);
        };
        let times = input.samples.iter().map(|s| s.at_ms);
        let (Some(first_ms), Some(last_ms)) = (times.clone().min(), times.max()) else {
            return Err(PlotError::NoSamples);
        };

        // Time runs from the first sample; the stall may have begun before.
        let stall_end_ms = input
            .ended_at_ms
            .unwrap_or_else(|| last_ms.max(input.started_at_ms));
        let secs = |ms: i64| (ms as f64 - first_ms as f64) / 1000.0;
        let (x_lo, x_hi) = pad_range(
            secs(first_ms.min(input.started_at_ms)),
            secs(last_ms.max(stall_end_ms)),
            0.03,
            2.0,
            f64::NEG_INFINITY,
        );
        // At least 4 KiB tall, so that equal values still make a range.
        let (y_lo, y_hi) = pad_range(v_min as f64, v_max as f64, 0.05, 4096.0, 0.0);

        // Top to bottom: title, who A and B are (one line or two), the
        // stall's label, the plot, the x axis, the legend.
        let sub_font = 12.0 * s;
        let ends_one_line = text_width(&ends_a(input), sub_font)
            + ENDS_GAP * s
            + text_width(&ends_b(input), sub_font)
            <= w - 32.0 * s;
        let top = if ends_one_line { 66.0 } else { 82.0 } * s;
        let has_data: Vec<bool> = curves.iter().map(|(_, r)| !r.is_empty()).collect();
        let legend = legend_layout(&has_data, s, w - 32.0 * s, w / 2.0);
        let legend_rows = legend.iter().map(|l| l.row + 1).max().unwrap_or(1);
        let legend_row_h = 18.0 * s;
        let bottom = h - (56.0 * s + legend_rows as f64 * legend_row_h);
        if bottom - top < 60.0 {
            return Err(too_small());
        }

        // Left to right: the y axis's label (and offset), tick labels, plot.
        let y_ticks = byte_ticks(y_lo, y_hi, ((bottom - top) / (45.0 * s)).max(2.0) as usize);
        let label_w = y_ticks
            .ticks
            .iter()
            .map(|t| text_width(&t.label, 11.0 * s))
            .fold(0.0, f64::max);
        let y_label_x = 22.0 * s;
        let y_offset_x = y_label_x + 15.0 * s;
        let last_line = if y_ticks.offset.is_some() {
            y_offset_x
        } else {
            y_label_x
        };
        let left = last_line + 18.0 * s + label_w;
        let right = w - 28.0 * s;
        if right - left < 80.0 {
            return Err(too_small());
        }
        let x_ticks = time_ticks(x_lo, x_hi, ((right - left) / (90.0 * s)).max(2.0) as usize);

        Ok(Layout {
            width: w,
            s,
            left,
            right,
            top,
            bottom,
            xs: Scale::new(x_lo, x_hi, left, right),
            ys: Scale::new(y_lo, y_hi, bottom, top),
            x_ticks,
            y_ticks,
            y_label_x,
            y_offset_x,
            first_ms,
            stall_end_ms,
            curves,
            legend,
            legend_row_h,
            ends_one_line,
        })
    }

    /// The x pixel of a wall-clock time.
    pub fn x_ms(&self, ms: i64) -> f64 {
        self.xs.px((ms as f64 - self.first_ms as f64) / 1000.0)
    }

    /// The y pixel of a sequence position.
    pub fn y_val(&self, v: u64) -> f64 {
        self.ys.px(v as f64)
    }
}

/// Space between A's and B's labels on one line, at scale 1.
pub(super) const ENDS_GAP: f64 = 24.0;

pub(super) fn ends_a(input: &PlotInput) -> String {
    format!("A (sender): {}", input.a_label)
}

pub(super) fn ends_b(input: &PlotInput) -> String {
    format!("B (receiver): {}", input.b_label)
}

/// A legend entry's text.
fn legend_text(curve: &Curve, no_data: bool) -> String {
    if no_data {
        format!("{} (no data)", curve.name)
    } else {
        curve.name.to_string()
    }
}

/// Places the legend entries in rows: A's curves, then B's, wrapping where
/// a row would be wider than `avail`. Rows are centred on `centre`.
fn legend_layout(has_data: &[bool], s: f64, avail: f64, centre: f64) -> Vec<LegendItem> {
    let mut items: Vec<LegendItem> = Vec::new();
    let mut rows: Vec<(usize, f64)> = Vec::new();
    let mut row_w = 0.0;
    for (i, curve) in CURVES.iter().enumerate() {
        let no_data = !has_data.get(i).copied().unwrap_or(false);
        let w =
            (SWATCH + 6.0 + LEGEND_GAP) * s + text_width(&legend_text(curve, no_data), 12.0 * s);
        let side_changed = items.last().is_some_and(|l| l.curve.side != curve.side);
        if !items.is_empty() && (side_changed || row_w + w > avail) {
            rows.push((items.len(), row_w));
            row_w = 0.0;
        }
        items.push(LegendItem {
            curve,
            no_data,
            x: row_w,
            row: rows.len(),
        });
        row_w += w;
    }
    rows.push((items.len(), row_w));
    let mut start = 0;
    for (end, w) in rows {
        // The last entry's trailing gap is not part of the row.
        let x0 = centre - (w - LEGEND_GAP * s) / 2.0;
        for item in &mut items[start..end] {
            item.x += x0;
        }
        start = end;
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Side;

    #[test]
    fn legend_puts_b_on_its_own_row_and_wraps_when_narrow() {
        let wide = legend_layout(&[true; 6], 1.0, 2000.0, 1000.0);
        let rows: Vec<usize> = wide.iter().map(|i| i.row).collect();
        assert_eq!(rows, [0, 0, 0, 0, 1, 1]);
        assert!(wide
            .iter()
            .all(|i| (i.curve.side == Side::A) == (i.row == 0)));
        let narrow = legend_layout(&[true; 6], 1.0, 300.0, 150.0);
        assert!(narrow.iter().map(|i| i.row).max() > Some(2));
        for pair in wide.windows(2).filter(|p| p[0].row == p[1].row) {
            assert!(pair[0].x < pair[1].x);
        }
    }
}
