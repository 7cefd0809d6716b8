//! `tcpstall plot`: a stored episode as the time–sequence graph, SVG or
//! PNG by the file's extension.

use std::path::Path;

use tcpstall_plot::{PlotInput, PlotSample, Side};
use tcpstall_proto::{convert, v1};

/// Size of the picture, pixels.
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 600;

/// The plot's input from a GetEpisode answer. Samples that do not convert
/// are left out.
pub fn input(e: &v1::Episode, samples: &[v1::EndSample]) -> PlotInput {
    let flow = convert::flow_from_wire(e.a_flow.as_ref()).ok();
    let (a, b) = match flow {
        Some(f) => (
            format!("{} {}", e.a_host, f.local),
            if e.b_host.is_empty() {
                format!("{} (no agent)", f.remote)
            } else {
                format!("{} {}", e.b_host, f.remote)
            },
        ),
        None => (e.a_host.clone(), e.b_host.clone()),
    };
    PlotInput {
        title: format!("episode {}: {a} → {b}", e.id),
        diagnosis: e.diagnosis.clone(),
        started_at_ms: e.started_at_ms,
        ended_at_ms: (!e.open && e.ended_at_ms > 0).then_some(e.ended_at_ms),
        a_label: a,
        b_label: b,
        samples: samples
            .iter()
            .filter_map(|s| {
                let side = Side::parse(&s.side)?;
                let sample = convert::sample_from_wire(s.sample.as_ref()?).ok()?;
                Some(PlotSample {
                    side,
                    at_ms: s.at_ms,
                    sample,
                })
            })
            .collect(),
    }
}

/// Writes the plot to `path`: PNG for `.png`, SVG otherwise.
pub fn write(input: &PlotInput, path: &Path) -> Result<(), String> {
    let png = path
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("png"));
    let bytes = if png {
        tcpstall_plot::render_png(input, WIDTH, HEIGHT).map_err(|e| e.to_string())?
    } else {
        tcpstall_plot::render_svg(input, WIDTH, HEIGHT)
            .map_err(|e| e.to_string())?
            .into_bytes()
    };
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}
