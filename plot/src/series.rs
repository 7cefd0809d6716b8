//! The six curves of the time–sequence graph: which end and which position
//! each one draws, how it looks, and the runs of known values it is made
//! of. A sample whose value is unknown (`None`) ends a run: the graph shows
//! a gap there, never a zero.

use tcpstall_common::Positions;

use crate::{PlotSample, Side};

/// One curve: what it shows and how it is drawn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Curve {
    /// The SVG element id of its group, stable for tests and tools.
    pub id: &'static str,
    /// Its name in the legend.
    pub name: &'static str,
    /// Its name on the curve itself.
    pub short: &'static str,
    pub side: Side,
    pub colour: &'static str,
    /// `stroke-dasharray`, in pixels at scale 1; `None` for a solid line.
    pub dash: Option<&'static [f64]>,
    /// Stroke width at scale 1.
    pub width: f64,
    pub value: fn(&Positions) -> Option<u64>,
}

fn snd_una(p: &Positions) -> Option<u64> {
    p.snd_una
}
fn snd_nxt(p: &Positions) -> Option<u64> {
    p.snd_nxt
}
fn write_seq(p: &Positions) -> Option<u64> {
    p.write_seq
}
fn window_edge(p: &Positions) -> Option<u64> {
    p.snd_una
        .zip(p.snd_wnd)
        .and_then(|(una, wnd)| una.checked_add(u64::from(wnd)))
}
fn rcv_nxt(p: &Positions) -> Option<u64> {
    p.rcv_nxt
}
fn copied(p: &Positions) -> Option<u64> {
    p.copied
}

/// The curves in legend order. Colours are the Okabe–Ito palette, told
/// apart by people with the common colour-vision deficiencies; dashes and
/// widths differ too, so that curves lying on top of one another (A.snd_una,
/// B.rcv_nxt and a zero window's edge, in the commonest stall) stay visible.
pub(crate) const CURVES: [Curve; 6] = [
    Curve {
        id: "curve-a-snd-una",
        name: "A.snd_una",
        short: "A.snd_una",
        side: Side::A,
        colour: "#0072B2",
        dash: None,
        width: 5.0,
        value: snd_una,
    },
    Curve {
        id: "curve-a-snd-nxt",
        name: "A.snd_nxt",
        short: "A.snd_nxt",
        side: Side::A,
        colour: "#E69F00",
        dash: Some(&[9.0, 4.0]),
        width: 2.5,
        value: snd_nxt,
    },
    Curve {
        id: "curve-a-write-seq",
        name: "A.write_seq",
        short: "A.write_seq",
        side: Side::A,
        colour: "#D55E00",
        dash: None,
        width: 2.0,
        value: write_seq,
    },
    Curve {
        id: "curve-a-window-edge",
        name: "A's window edge (snd_una + snd_wnd)",
        short: "A's window edge",
        side: Side::A,
        colour: "#009E73",
        dash: Some(&[2.0, 3.0]),
        width: 2.0,
        value: window_edge,
    },
    Curve {
        id: "curve-b-rcv-nxt",
        name: "B.rcv_nxt",
        short: "B.rcv_nxt",
        side: Side::B,
        colour: "#CC79A7",
        dash: Some(&[12.0, 4.0, 2.0, 4.0]),
        width: 2.5,
        value: rcv_nxt,
    },
    Curve {
        id: "curve-b-copied",
        name: "B.copied",
        short: "B.copied",
        side: Side::B,
        colour: "#000000",
        dash: Some(&[5.0, 4.0]),
        width: 1.5,
        value: copied,
    },
];

/// One known value at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Point {
    pub at_ms: i64,
    pub value: u64,
}

/// The runs of consecutive known values of `curve`, in time order. The
/// samples need not be sorted; samples of the other end are skipped.
pub(crate) fn runs(curve: &Curve, samples: &[PlotSample]) -> Vec<Vec<Point>> {
    let mut mine: Vec<(i64, Option<u64>)> = samples
        .iter()
        .filter(|s| s.side == curve.side)
        .map(|s| (s.at_ms, (curve.value)(&s.sample.pos)))
        .collect();
    // Stable: two samples at one instant keep their given order.
    mine.sort_by_key(|(at, _)| *at);
    let mut out = Vec::new();
    let mut run: Vec<Point> = Vec::new();
    for (at_ms, value) in mine {
        match value {
            Some(value) => run.push(Point { at_ms, value }),
            None if !run.is_empty() => out.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        out.push(run);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_distinct() {
        for (i, a) in CURVES.iter().enumerate() {
            for b in &CURVES[i + 1..] {
                assert_ne!(a.id, b.id);
                assert_ne!(a.name, b.name);
                assert!(a.colour != b.colour || a.dash != b.dash);
            }
        }
    }

    #[test]
    fn window_edge_needs_both_and_never_overflows() {
        let mut p = Positions {
            snd_una: Some(100),
            ..Positions::default()
        };
        assert_eq!(window_edge(&p), None);
        p.snd_wnd = Some(0);
        assert_eq!(window_edge(&p), Some(100));
        p.snd_una = Some(u64::MAX);
        p.snd_wnd = Some(1);
        assert_eq!(window_edge(&p), None);
    }
}
