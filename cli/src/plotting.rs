//! `tcpstall plot`: a stored episode as the time–sequence graph, SVG or
//! PNG by the file's extension.

use std::path::Path;

use tcpstall_common::record::{Episode, EpisodeSample};
use tcpstall_plot::{PlotInput, PlotSample};

/// Size of the picture, pixels.
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 600;

/// The plot's input from a GetEpisode answer.
pub fn input(e: &Episode, samples: &[EpisodeSample]) -> PlotInput {
    let f = e.a_flow;
    let a = format!("{} {}", e.a_host, f.local);
    let b = match &e.b_host {
        Some(host) => format!("{host} {}", f.remote),
        None => format!("{} (no agent)", f.remote),
    };
    PlotInput {
        title: format!("episode {}: {a} → {b}", e.id),
        diagnosis: e.diagnosis.clone(),
        started_at_ms: e.started_at_ms,
        ended_at_ms: e.ended_at_ms.filter(|&ms| !e.open && ms > 0),
        a_label: a,
        b_label: b,
        samples: samples
            .iter()
            .map(|s| PlotSample {
                side: s.side,
                at_ms: s.at_ms,
                sample: s.sample.clone(),
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
