//! `tcpstall plot`: a stored episode as the time–sequence graph, SVG or
//! PNG by the file's extension.

use std::path::Path;

use tcpstall_common::record::{Episode, EpisodeSample};
use tcpstall_plot::PlotInput;

/// Size of the picture, pixels.
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 600;

/// The plot's input from a GetEpisode answer.
pub fn input(e: &Episode, samples: &[EpisodeSample]) -> PlotInput {
    PlotInput::of_episode(e, samples)
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
