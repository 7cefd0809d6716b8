//! The time–sequence graph of a stall episode, the picture tcptrace and
//! Wireshark users know: sequence position (bytes of A's direction, counted
//! from the ISN) against time, with A's `snd_una`, `snd_nxt`, `write_seq`
//! and window edge, B's `rcv_nxt` and `copied`, and the stall shaded.
//!
//! Pure: [`render_svg`] builds the SVG text from the samples it is given;
//! [`render_png`] rasterises that SVG with resvg, drawing its text with a
//! system font ([`Fonts`]). Nothing here talks to the collector or reads
//! files other than fonts.
//!
//! The SVG's elements carry stable ids for tools and tests: `title`,
//! `ends`, `stall`, `stall-label`, `x-axis`, `x-label`, `y-axis`,
//! `y-label`, `legend`, and one group per curve (`curve-a-snd-una`,
//! `curve-a-snd-nxt`, `curve-a-write-seq`, `curve-a-window-edge`,
//! `curve-b-rcv-nxt`, `curve-b-copied`) holding one `<polyline>` per run of
//! known values — a sample without the value ends the run, so missing data
//! is a gap — a `<circle class="run-end">` where each run ends, and a
//! `<circle class="point">` for a value known at a single sample. Ticks
//! are `<g class="x-tick">` / `<g class="y-tick">`, each a line and a label
//! (bytes in binary units: `K` = 1024; far from the ISN the labels count
//! from the offset in `y-offset`). The curves are also named on the graph
//! (`curve-labels`), curves that start at one height in one label
//! (`A.snd_una = B.rcv_nxt`), since one line over another cannot show it.
//! Last, `hover` holds one transparent `<rect class="hover-at">` per sample
//! time with a `<title>` of every curve's value there: a tooltip where the
//! SVG is a document or inline in a page.
#![forbid(unsafe_code)]

mod raster;
mod scale;
mod series;
mod svg;

use tcpstall_common::record::{Episode, EpisodeSample};
use tcpstall_common::EndSample;
pub use tcpstall_common::Side;

pub use raster::{render_png, render_png_with, Fonts};
/// How the picture's text is made safe for XML, for other SVG made beside it.
pub use svg::escape as xml_escape;

/// One end at one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotSample {
    pub side: Side,
    /// When it was taken, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub sample: EndSample,
}

/// An episode to draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotInput {
    /// The flow, as a person reads it (e.g. `episode 7: 10.0.0.1:40000 → 10.0.0.2:80`).
    pub title: String,
    /// A diagnosis id (`peer_not_reading`, ...).
    pub diagnosis: String,
    pub started_at_ms: i64,
    /// `None` while the episode is open: the stall is shaded to the last sample.
    pub ended_at_ms: Option<i64>,
    /// Who A is (host, address, process), shown under the title.
    pub a_label: String,
    /// Who B is.
    pub b_label: String,
    /// Both ends' samples, in any order.
    pub samples: Vec<PlotSample>,
}

impl PlotInput {
    /// An episode as a query answers it, with its samples: the flow as
    /// title, each end named by its host and address.
    pub fn of_episode(e: &Episode, samples: &[EpisodeSample]) -> PlotInput {
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
}

/// Smallest picture that still has room for its axes and legend.
pub const MIN_WIDTH: u32 = 400;
pub const MIN_HEIGHT: u32 = 300;
/// Largest picture, in either direction.
pub const MAX_SIDE: u32 = 8192;

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("the episode has no samples to plot")]
    NoSamples,
    #[error(
        "no sample carries a sequence position to plot \
         (a kernel without tcp_info's bytes_acked and bytes_received, 4.1+?)"
    )]
    NoPositions,
    #[error(
        "a {width}x{height} picture is out of range: \
         {MIN_WIDTH}x{MIN_HEIGHT} to {MAX_SIDE}x{MAX_SIDE}"
    )]
    Size { width: u32, height: u32 },
    #[error("the episode ends (at {ended_at_ms} ms) before it starts (at {started_at_ms} ms)")]
    EndsBeforeStart {
        started_at_ms: i64,
        ended_at_ms: i64,
    },
    #[error(
        "no font to draw the PNG's text with: install one, e.g. \
         `apt-get install fonts-dejavu-core` (an SVG needs none)"
    )]
    NoFont,
    #[error("rasterising the plot: {0}")]
    Raster(String),
}

/// The graph as SVG text, `width` × `height` pixels.
pub fn render_svg(input: &PlotInput, width: u32, height: u32) -> Result<String, PlotError> {
    if !(MIN_WIDTH..=MAX_SIDE).contains(&width) || !(MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        return Err(PlotError::Size { width, height });
    }
    if input.samples.is_empty() {
        return Err(PlotError::NoSamples);
    }
    if let Some(ended_at_ms) = input.ended_at_ms {
        if ended_at_ms < input.started_at_ms {
            return Err(PlotError::EndsBeforeStart {
                started_at_ms: input.started_at_ms,
                ended_at_ms,
            });
        }
    }
    svg::render(input, width, height)
}
