//! Writing the graph as SVG text, back to front: background, title, the
//! stall's shading, grid and axes, curves, their names, legend. Text is
//! escaped; every number written is finite. The geometry is in
//! [`layout`], the parts in [`axes`] and [`curves`].

use std::fmt::Write as _;
use std::time::Duration;

use crate::{PlotError, PlotInput};

mod axes;
mod curves;
mod hover;
mod layout;

use layout::{ends_a, ends_b, Layout, ENDS_GAP};

/// DejaVu Sans first: it is what the PNG is drawn with on Debian.
const FONT_FAMILY: &str = "DejaVu Sans, Verdana, Arial, sans-serif";
/// A generous average advance of one DejaVu Sans character, in ems, for
/// laying out text before any font is at hand.
const EM: f64 = 0.62;
const SHADE: &str = "#FBE0DB";
const SHADE_TEXT: &str = "#A8321F";

/// About how wide `text` is at `size`, in pixels.
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * EM
}

/// `text` made safe for XML character data and attribute values; control
/// characters (not allowed in XML) become spaces.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to about `max_width` pixels at `size`, ending in `…` when cut.
fn fit(text: &str, size: f64, max_width: f64) -> String {
    let max_chars = (max_width / (size * EM)).floor().max(1.0) as usize;
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A pixel coordinate as written: two decimals.
fn n(v: f64) -> String {
    format!("{v:.2}")
}

/// How long the stall lasted, in the project's one duration spelling.
fn stall_duration(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0);
    let rounded = if ms >= 10_000 {
        (ms + 500) / 1000 * 1000
    } else {
        (ms + 50) / 100 * 100
    };
    tcpstall_common::duration::format(Duration::from_millis(rounded))
}

pub(crate) fn render(input: &PlotInput, width: u32, height: u32) -> Result<String, PlotError> {
    let l = Layout::new(input, width, height)?;
    let mut o = String::with_capacity(16 * 1024);
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"{FONT_FAMILY}\">"
    );
    let _ = writeln!(
        o,
        "<rect id=\"background\" x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"#FFFFFF\"/>"
    );
    write_title(&mut o, input, &l);
    write_stall(&mut o, input, &l);
    axes::write_grid(&mut o, &l);
    axes::write_x_axis(&mut o, &l);
    axes::write_y_axis(&mut o, &l);
    curves::write_curves(&mut o, &l);
    curves::write_curve_labels(&mut o, &l);
    curves::write_legend(&mut o, &l);
    hover::write_hover(&mut o, &l);
    o.push_str("</svg>\n");
    Ok(o)
}

/// The title (the flow and the diagnosis id), and under it who A and B are.
fn write_title(o: &mut String, input: &PlotInput, l: &Layout) {
    let s = l.s;
    let avail = l.width - 32.0 * s;
    let font = 15.0 * s;
    let diag = format!("· {}", input.diagnosis);
    let diag_dx = 8.0 * s;
    let title = fit(
        &input.title,
        font,
        avail - diag_dx - text_width(&diag, font),
    );
    let _ = writeln!(
        o,
        "<text id=\"title\" x=\"{}\" y=\"{}\" font-size=\"{}\" font-weight=\"bold\" fill=\"#111111\">{}<tspan id=\"diagnosis\" dx=\"{}\" fill=\"{SHADE_TEXT}\">{}</tspan></text>",
        n(16.0 * s),
        n(24.0 * s),
        n(font),
        escape(&title),
        n(diag_dx),
        escape(&diag),
    );
    let b_at = if l.ends_one_line {
        format!("dx=\"{}\"", n(ENDS_GAP * s))
    } else {
        format!("x=\"{}\" dy=\"{}\"", n(16.0 * s), n(16.0 * s))
    };
    let font = 12.0 * s;
    let _ = writeln!(
        o,
        "<text id=\"ends\" x=\"{}\" y=\"{}\" font-size=\"{}\" fill=\"#444444\">{}<tspan {b_at}>{}</tspan></text>",
        n(16.0 * s),
        n(44.0 * s),
        n(font),
        escape(&fit(&ends_a(input), font, avail)),
        escape(&fit(&ends_b(input), font, avail)),
    );
}

/// The stall's shading over the plot's full height, under everything else
/// in it, and above the plot its label: `stalled: 42s`.
fn write_stall(o: &mut String, input: &PlotInput, l: &Layout) {
    let s = l.s;
    let x0 = l.x_ms(input.started_at_ms);
    let x1 = l.x_ms(l.stall_end_ms);
    let _ = writeln!(
        o,
        "<rect id=\"stall\" class=\"stall\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{SHADE}\"/>",
        n(x0),
        n(l.top),
        n((x1 - x0).max(0.0)),
        n(l.bottom - l.top),
    );
    let mut text = format!(
        "stalled: {}",
        stall_duration(l.stall_end_ms.saturating_sub(input.started_at_ms))
    );
    if input.ended_at_ms.is_none() {
        text.push_str(" (still open)");
    }
    let font = 12.0 * s;
    let half = text_width(&text, font) / 2.0;
    let x = ((x0 + x1) / 2.0)
        .min(l.width - 8.0 * s - half)
        .max(l.left + half);
    let _ = writeln!(
        o,
        "<text id=\"stall-label\" x=\"{}\" y=\"{}\" font-size=\"{}\" font-weight=\"bold\" text-anchor=\"middle\" fill=\"{SHADE_TEXT}\">{}</text>",
        n(x),
        n(l.top - 7.0 * s),
        n(font),
        escape(&text),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_controls() {
        assert_eq!(
            escape("a<b & 'c' \"d\">\u{7}"),
            "a&lt;b &amp; &apos;c&apos; &quot;d&quot;&gt; "
        );
    }

    #[test]
    fn fits_long_text() {
        assert_eq!(fit("short", 10.0, 1000.0), "short");
        let cut = fit(&"x".repeat(100), 10.0, 62.0);
        assert_eq!(cut.chars().count(), 10);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn durations_round_for_reading() {
        assert_eq!(stall_duration(42_300), "42s");
        assert_eq!(stall_duration(72_600), "1m 13s");
        assert_eq!(stall_duration(3_460), "3s 500ms");
        assert_eq!(stall_duration(-5), "0s");
    }
}
