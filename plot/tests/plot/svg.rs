//! The SVG: its parts by id, the stall's extent, and curve points checked
//! against the scales read back from the tick labels.

use tcpstall_plot::{render_svg, PlotInput};

use crate::episode::{a, b, peer_not_reading, COPIED, ENDED, STARTED, T0, UNA, WRITE};
use crate::svg_doc::{
    by_id, has_class, has_point, lone_points, num, parse, polylines, text, x_axis, y_axis,
};

const W: u32 = 900;
const H: u32 = 560;

const CURVES: [(&str, &str); 6] = [
    ("curve-a-snd-una", "A.snd_una"),
    ("curve-a-snd-nxt", "A.snd_nxt"),
    ("curve-a-write-seq", "A.write_seq"),
    ("curve-a-window-edge", "A's window edge (snd_una + snd_wnd)"),
    ("curve-b-rcv-nxt", "B.rcv_nxt"),
    ("curve-b-copied", "B.copied"),
];

fn render(input: &PlotInput) -> String {
    render_svg(input, W, H).expect("renders")
}

#[test]
fn peer_not_reading_has_every_part() {
    let svg = render(&peer_not_reading());
    let doc = parse(&svg);
    for (id, name) in CURVES {
        let g = by_id(&doc, id);
        assert!(has_class(&g, "curve"), "{id}");
        assert!(!polylines(&doc, id).is_empty(), "{id} drew no line");
        let legend = by_id(&doc, &format!("legend-{id}"));
        assert_eq!(text(legend), name, "legend of {id}");
    }
    assert_eq!(text(by_id(&doc, "x-label")), "time (s)");
    assert_eq!(
        text(by_id(&doc, "y-label")),
        "sequence (bytes, relative to ISN)"
    );
    let title = text(by_id(&doc, "title"));
    assert!(
        title.contains("198.18.0.10:7000 → 198.18.1.20:51844"),
        "{title}"
    );
    assert_eq!(text(by_id(&doc, "diagnosis")), "· peer_not_reading");
    let ends = text(by_id(&doc, "ends"));
    assert!(
        ends.contains("A (sender): host-a") && ends.contains("B (receiver): host-b"),
        "{ends}"
    );
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn stall_shading_spans_started_to_ended() {
    let svg = render(&peer_not_reading());
    let doc = parse(&svg);
    let x = x_axis(&doc);
    let stall = by_id(&doc, "stall");
    let (x0, width) = (num(&stall, "x"), num(&stall, "width"));
    let started = x.px(STARTED as f64 / 1000.0);
    let ended = x.px(ENDED as f64 / 1000.0);
    assert!((x0 - started).abs() <= 1.0, "starts at {x0}, not {started}");
    assert!(
        (x0 + width - ended).abs() <= 1.0,
        "ends at {}, not {ended}",
        x0 + width
    );
    // Full height of the plot.
    let frame = by_id(&doc, "frame");
    assert_eq!(num(&stall, "y"), num(&frame, "y"));
    assert_eq!(num(&stall, "height"), num(&frame, "height"));
    assert_eq!(text(by_id(&doc, "stall-label")), "stalled: 23s");
}

#[test]
fn curves_are_where_the_numbers_say() {
    let svg = render(&peer_not_reading());
    let doc = parse(&svg);
    let (x, y) = (x_axis(&doc), y_axis(&doc));
    let secs = |k: i64| k as f64 * 2.0;
    let una = &polylines(&doc, "curve-a-snd-una")[0];
    let write = &polylines(&doc, "curve-a-write-seq")[0];
    let edge = &polylines(&doc, "curve-a-window-edge")[0];
    for k in [0, 3, 10] {
        assert!(
            has_point(una, x.px(secs(k)), y.px(UNA as f64)),
            "snd_una at {}s: {una:?}",
            secs(k)
        );
        assert!(
            has_point(write, x.px(secs(k)), y.px(WRITE as f64)),
            "write_seq at {}s",
            secs(k)
        );
        // A zero window: its edge is snd_una.
        assert!(
            has_point(edge, x.px(secs(k)), y.px(UNA as f64)),
            "window edge at {}s",
            secs(k)
        );
    }
    let rcv = &polylines(&doc, "curve-b-rcv-nxt")[0];
    let copied = &polylines(&doc, "curve-b-copied")[0];
    for k in [0, 9] {
        let t = 1.0 + secs(k);
        assert!(
            has_point(rcv, x.px(t), y.px(UNA as f64)),
            "rcv_nxt at {t}s: {rcv:?}"
        );
        assert!(
            has_point(copied, x.px(t), y.px(COPIED as f64)),
            "copied at {t}s"
        );
    }
    // Above is up: write_seq over snd_una over copied.
    assert!(y.px(WRITE as f64) < y.px(UNA as f64) && y.px(UNA as f64) < y.px(COPIED as f64));
}

#[test]
fn open_episode_shades_to_the_last_sample() {
    let mut input = peer_not_reading();
    input.ended_at_ms = None;
    let svg = render(&input);
    let doc = parse(&svg);
    let x = x_axis(&doc);
    let stall = by_id(&doc, "stall");
    let end = num(&stall, "x") + num(&stall, "width");
    assert!(
        (end - x.px(20.0)).abs() <= 1.0,
        "ends at {end}, last sample at {}",
        x.px(20.0)
    );
    assert_eq!(
        text(by_id(&doc, "stall-label")),
        "stalled: 24s (still open)"
    );
}

#[test]
fn a_missing_value_is_a_gap_not_a_zero() {
    let mut input = peer_not_reading();
    // A's samples come first: those of 10 s and 18 s lose snd_nxt.
    for k in [5, 9] {
        input.samples[k].sample.pos.snd_nxt = None;
    }
    let doc_text = render(&input);
    let doc = parse(&doc_text);
    let (x, y) = (x_axis(&doc), y_axis(&doc));
    let runs = polylines(&doc, "curve-a-snd-nxt");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let last_x = |r: &[(f64, f64)]| r.last().expect("point").0;
    let first_x = |r: &[(f64, f64)]| r.first().expect("point").0;
    assert!(
        (last_x(&runs[0]) - x.px(8.0)).abs() < 0.5,
        "first run ends at 8 s"
    );
    assert!(
        (first_x(&runs[1]) - x.px(12.0)).abs() < 0.5,
        "second starts at 12 s"
    );
    assert!(
        (last_x(&runs[1]) - x.px(16.0)).abs() < 0.5,
        "and ends at 16 s"
    );
    // 20 s stands alone between the gap at 18 s and the end.
    let lone = lone_points(&doc, "curve-a-snd-nxt");
    assert_eq!(lone.len(), 1);
    assert!(has_point(&lone, x.px(20.0), y.px(UNA as f64)), "{lone:?}");
    // Nothing drawn at the missing samples, and no zeros.
    for p in runs.iter().flatten().chain(&lone) {
        assert!(
            (p.0 - x.px(10.0)).abs() > 1.0 && (p.0 - x.px(18.0)).abs() > 1.0,
            "{p:?}"
        );
        assert!((p.1 - y.px(UNA as f64)).abs() < 0.5, "{p:?}");
    }
    // The other curves are whole.
    assert_eq!(polylines(&doc, "curve-a-snd-una").len(), 1);
}

#[test]
fn one_sample_still_renders() {
    let input = PlotInput {
        samples: vec![a(T0, Some(UNA), Some(UNA), Some(UNA), Some(0))],
        ended_at_ms: None,
        started_at_ms: T0,
        ..peer_not_reading()
    };
    let svg = render(&input);
    let doc = parse(&svg);
    let (x, y) = (x_axis(&doc), y_axis(&doc));
    for id in [
        "curve-a-snd-una",
        "curve-a-snd-nxt",
        "curve-a-write-seq",
        "curve-a-window-edge",
    ] {
        assert!(polylines(&doc, id).is_empty());
        let lone = lone_points(&doc, id);
        assert!(
            has_point(&lone, x.px(0.0), y.px(UNA as f64)),
            "{id}: {lone:?}"
        );
    }
    // B has no data: its curves are empty and the legend says so.
    assert!(lone_points(&doc, "curve-b-rcv-nxt").is_empty());
    assert_eq!(
        text(by_id(&doc, "legend-curve-b-rcv-nxt")),
        "B.rcv_nxt(no data)"
    );
    // The point is inside the plot, not on its edge.
    let frame = by_id(&doc, "frame");
    let (top, height) = (num(&frame, "y"), num(&frame, "height"));
    let py = y.px(UNA as f64);
    assert!(
        py > top + 10.0 && py < top + height - 10.0,
        "{py} in {top}+{height}"
    );
    assert!(!svg.contains("NaN") && !svg.contains("inf"));
}

#[test]
fn equal_values_render_with_room_around_them() {
    let mut samples = Vec::new();
    for k in 0..5 {
        samples.push(a(T0 + k * 1_000, Some(0), Some(0), Some(0), Some(0)));
        samples.push(b(T0 + k * 1_000, Some(0), Some(0)));
    }
    let input = PlotInput {
        samples,
        ..peer_not_reading()
    };
    let doc_text = render(&input);
    let doc = parse(&doc_text);
    let y = y_axis(&doc);
    let frame = by_id(&doc, "frame");
    let bottom = num(&frame, "y") + num(&frame, "height");
    for (id, _) in CURVES {
        let runs = polylines(&doc, id);
        assert_eq!(runs.len(), 1, "{id}");
        assert!(
            runs[0].iter().all(|p| (p.1 - y.px(0.0)).abs() < 0.5),
            "{id}"
        );
        assert!(runs[0].iter().all(|p| p.1 <= bottom), "{id} below the plot");
    }
}

#[test]
fn far_from_the_isn_ticks_count_from_an_offset() {
    let base = 5_000_000_000;
    let mut samples = Vec::new();
    for k in 0..4 {
        samples.push(a(
            T0 + k * 1_000,
            Some(base),
            Some(base),
            Some(base + 20_000),
            Some(0),
        ));
    }
    let input = PlotInput {
        samples,
        ..peer_not_reading()
    };
    let svg = render(&input);
    let doc = parse(&svg);
    let offset_text = text(by_id(&doc, "y-offset"));
    let offset: f64 = offset_text
        .trim_start_matches("tick labels count from ")
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{offset_text}: {e}"));
    let y = crate::svg_doc::axis(&doc, "y-tick", |l| {
        offset + crate::svg_doc::parse_bytes(l.trim_start_matches('+'))
    });
    let una = &polylines(&doc, "curve-a-snd-una")[0];
    let write = &polylines(&doc, "curve-a-write-seq")[0];
    assert!(
        una.iter().all(|p| (p.1 - y.px(base as f64)).abs() < 0.5),
        "{una:?}"
    );
    assert!(write
        .iter()
        .all(|p| (p.1 - y.px((base + 20_000) as f64)).abs() < 0.5));
}

#[test]
fn text_is_escaped() {
    let mut input = peer_not_reading();
    input.title = "<flow> & \"quotes\" 'too'".to_string();
    input.a_label = "pid 1 <sh>\u{1b}[31m".to_string();
    let svg = render(&input);
    let doc = parse(&svg);
    assert!(text(by_id(&doc, "title")).starts_with("<flow> & \"quotes\" 'too'"));
    assert!(text(by_id(&doc, "ends")).contains("pid 1 <sh> [31m"));
}

#[test]
fn hovering_a_sample_time_names_every_value_there() {
    let svg = render(&peer_not_reading());
    let doc = parse(&svg);
    let x = x_axis(&doc);
    let columns: Vec<_> = by_id(&doc, "hover")
        .children()
        .filter(|n| has_class(n, "hover-at"))
        .collect();
    // A polls at 0, 2, .. 20 s and B at 1, 3, .. 19 s: 21 times.
    assert_eq!(columns.len(), 21);
    // Side by side, with no hole: each column starts where the last ended.
    for pair in columns.windows(2) {
        let end = num(&pair[0], "x") + num(&pair[0], "width");
        assert!(
            (end - num(&pair[1], "x")).abs() < 0.02,
            "{end} then {:?}",
            pair[1]
        );
    }
    // The column of A's poll at 6 s lies over 6 s and says A's values
    // then, and B's from its poll at 5 s.
    let at = columns
        .iter()
        .find(|c| c.attribute("data-at-ms") == Some(&(T0 + 6_000).to_string()))
        .expect("a column at 6 s");
    let (x0, w) = (num(at, "x"), num(at, "width"));
    assert!(x0 < x.px(6.0) && x.px(6.0) < x0 + w, "{x0}+{w} misses 6 s");
    let title = text(*at);
    for line in [
        "+6.0s".to_string(),
        format!("A.snd_una {UNA}"),
        format!("A.write_seq {WRITE}"),
        format!("A's window edge {UNA}"),
        format!("B.rcv_nxt {UNA}"),
        format!("B.copied {COPIED}"),
    ] {
        assert!(title.lines().any(|l| l == line), "no `{line}` in {title:?}");
    }
    // Before B's first poll, B has no values.
    let first = text(columns[0]);
    assert!(!first.contains("B."), "{first:?}");
}
