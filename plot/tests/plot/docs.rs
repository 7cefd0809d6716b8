//! `docs/plot-example.*`, the rendered example a person looked at, is what
//! the code draws today.

use std::path::PathBuf;

use crate::episode::{realistic, EXAMPLE_SIZE};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

#[test]
fn committed_example_is_current() {
    let (w, h) = EXAMPLE_SIZE;
    let want = tcpstall_plot::render_svg(&realistic(), w, h).expect("renders");
    let path = docs().join("plot-example.svg");
    let have = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        have == want,
        "{} is stale: run `cargo run --example render -p tcpstall-plot`, look at the PNG, commit both",
        path.display()
    );
    let png = std::fs::read(docs().join("plot-example.png")).expect("plot-example.png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        &png[16..24],
        [w.to_be_bytes(), h.to_be_bytes()].concat().as_slice()
    );
}
