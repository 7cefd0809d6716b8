//! Renders the realistic example episode to `docs/plot-example.svg` and
//! `docs/plot-example.png` (or to the directory given as the argument):
//! `cargo run --example render -p tcpstall-plot`.

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "../tests/plot/episode.rs"]
#[allow(dead_code)]
mod episode;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs"));
    let input = episode::realistic();
    let (width, height) = episode::EXAMPLE_SIZE;
    let result = tcpstall_plot::render_svg(&input, width, height)
        .map_err(|e| e.to_string())
        .and_then(|svg| {
            std::fs::write(dir.join("plot-example.svg"), svg)
                .map_err(|e| format!("{}: {e}", dir.display()))
        })
        .and_then(|()| tcpstall_plot::render_png(&input, width, height).map_err(|e| e.to_string()))
        .and_then(|png| {
            std::fs::write(dir.join("plot-example.png"), png)
                .map_err(|e| format!("{}: {e}", dir.display()))
        });
    match result {
        Ok(()) => {
            println!(
                "wrote {0}/plot-example.svg and {0}/plot-example.png",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("render: {e}");
            ExitCode::FAILURE
        }
    }
}
