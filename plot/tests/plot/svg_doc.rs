//! Reading a rendered SVG back: elements by id and class, polyline points,
//! and the axes' scales recovered from their tick labels, so that tests
//! check positions against the numbers and not against the renderer's own
//! arithmetic.

use roxmltree::{Document, Node};

pub fn parse(svg: &str) -> Document<'_> {
    Document::parse(svg).unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}\n{svg}"))
}

pub fn by_id<'a, 'i>(doc: &'a Document<'i>, id: &str) -> Node<'a, 'i> {
    doc.descendants()
        .find(|n| n.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no element with id {id}"))
}

pub fn has_class(n: &Node, class: &str) -> bool {
    n.attribute("class")
        .is_some_and(|c| c.split_whitespace().any(|c| c == class))
}

/// All the text inside `n`, tspans included.
pub fn text(n: Node) -> String {
    n.descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect()
}

pub fn num(n: &Node, attr: &str) -> f64 {
    n.attribute(attr)
        .unwrap_or_else(|| panic!("no {attr} on {n:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{attr} of {n:?}: {e}"))
}

/// The points of each `<polyline>` in the group `id`, in order.
pub fn polylines(doc: &Document, id: &str) -> Vec<Vec<(f64, f64)>> {
    by_id(doc, id)
        .children()
        .filter(|c| c.has_tag_name("polyline"))
        .map(|p| {
            p.attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap_or_else(|| panic!("point {xy}"));
                    (x.parse().expect("x"), y.parse().expect("y"))
                })
                .collect()
        })
        .collect()
}

/// The `<circle class="point">`s (values known at one sample only) of `id`.
pub fn lone_points(doc: &Document, id: &str) -> Vec<(f64, f64)> {
    by_id(doc, id)
        .children()
        .filter(|c| c.has_tag_name("circle") && has_class(c, "point"))
        .map(|c| (num(&c, "cx"), num(&c, "cy")))
        .collect()
}

/// A linear map from data to pixels, fitted through two ticks.
#[derive(Debug, Clone, Copy)]
pub struct Axis {
    v0: f64,
    p0: f64,
    per: f64,
}

impl Axis {
    pub fn px(&self, v: f64) -> f64 {
        self.p0 + (v - self.v0) * self.per
    }
}

/// A y tick label as bytes: `0`, `812`, `64K`, `1.5M` (binary units).
pub fn parse_bytes(label: &str) -> f64 {
    let (num, unit) = match label.chars().last() {
        Some('K') => (&label[..label.len() - 1], 1024.0),
        Some('M') => (&label[..label.len() - 1], 1024.0 * 1024.0),
        Some('G') => (&label[..label.len() - 1], 1024.0 * 1024.0 * 1024.0),
        _ => (label, 1.0),
    };
    num.parse::<f64>()
        .unwrap_or_else(|e| panic!("tick label {label}: {e}"))
        * unit
}

/// The axis of the ticks of `class` (`x-tick` or `y-tick`): each a line
/// (at `x1` or `y1`) and a label parsed by `value`.
pub fn axis(doc: &Document, class: &str, value: impl Fn(&str) -> f64) -> Axis {
    let pos_attr = if class == "x-tick" { "x1" } else { "y1" };
    let ticks: Vec<(f64, f64)> = doc
        .descendants()
        .filter(|n| has_class(n, class))
        .map(|g| {
            let line = g
                .children()
                .find(|c| c.has_tag_name("line"))
                .expect("tick line");
            let label = g
                .children()
                .find(|c| c.has_tag_name("text"))
                .expect("tick label");
            (value(&text(label)), num(&line, pos_attr))
        })
        .collect();
    assert!(ticks.len() >= 2, "{class}: {} ticks", ticks.len());
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    let per = (last.1 - first.1) / (last.0 - first.0);
    // Every tick lies on the same line.
    for (v, p) in &ticks {
        assert!(
            (first.1 + (v - first.0) * per - p).abs() < 0.05,
            "{class} tick {v} at {p}"
        );
    }
    Axis {
        v0: first.0,
        p0: first.1,
        per,
    }
}

/// Time axis: seconds since the first sample.
pub fn x_axis(doc: &Document) -> Axis {
    axis(doc, "x-tick", |l| {
        l.parse().unwrap_or_else(|e| panic!("x tick {l}: {e}"))
    })
}

pub fn y_axis(doc: &Document) -> Axis {
    axis(doc, "y-tick", parse_bytes)
}

/// Whether `pts` has a point within half a pixel of `(x, y)`.
pub fn has_point(pts: &[(f64, f64)], x: f64, y: f64) -> bool {
    pts.iter()
        .any(|(px, py)| (px - x).abs() < 0.5 && (py - y).abs() < 0.5)
}
