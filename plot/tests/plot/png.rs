//! The PNG: a valid file of the size asked for, text drawn with a real
//! font, the stall's shading visible; and no font is an error that says
//! what to install.

use resvg::tiny_skia::Pixmap;
use tcpstall_plot::{render_png, render_png_with, render_svg, Fonts, PlotError};

use crate::episode::peer_not_reading;
use crate::svg_doc::{by_id, num, parse};

const W: u32 = 900;
const H: u32 = 560;

fn system_fonts_or_explain() {
    assert!(
        Fonts::system().family().is_some(),
        "no system font: install fonts-dejavu-core (CI's script must)"
    );
}

fn ihdr(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&png[8..12], &13u32.to_be_bytes(), "IHDR length");
    assert_eq!(&png[12..16], b"IHDR", "IHDR first");
    let be = |r: std::ops::Range<usize>| u32::from_be_bytes(png[r].try_into().expect("4 bytes"));
    (be(16..20), be(20..24))
}

/// (r, g, b) of the pixel at (x, y).
fn rgb(p: &Pixmap, x: u32, y: u32) -> (u8, u8, u8) {
    let c = p.pixel(x, y).expect("inside").demultiply();
    (c.red(), c.green(), c.blue())
}

#[test]
fn png_is_valid_and_shows_the_stall_and_the_text() {
    system_fonts_or_explain();
    let input = peer_not_reading();
    let png = render_png(&input, W, H).expect("renders");
    assert_eq!(ihdr(&png), (W, H));
    let pixmap = Pixmap::decode_png(&png).expect("decodes");
    assert_eq!((pixmap.width(), pixmap.height()), (W, H));
    assert_eq!(rgb(&pixmap, 2, 2), (255, 255, 255), "background");

    // Where the SVG put the shading, the PNG is shaded: mostly the shade's
    // colour, with the curves drawn over it.
    let svg = render_svg(&input, W, H).expect("svg");
    let doc = parse(&svg);
    let stall = by_id(&doc, "stall");
    let (x0, y0) = (
        num(&stall, "x").ceil() as u32,
        num(&stall, "y").ceil() as u32,
    );
    let (x1, y1) = (
        (num(&stall, "x") + num(&stall, "width")).floor() as u32,
        (num(&stall, "y") + num(&stall, "height")).floor() as u32,
    );
    let (mut total, mut shade, mut dark) = (0u32, 0u32, 0u32);
    for y in y0..y1 {
        for x in x0..x1 {
            let (r, g, b) = rgb(&pixmap, x, y);
            total += 1;
            if (r, g, b) == (0xFB, 0xE0, 0xDB) {
                shade += 1;
            }
            if u32::from(r) + u32::from(g) + u32::from(b) < 300 {
                dark += 1;
            }
        }
    }
    assert!(shade * 2 > total, "{shade} of {total} pixels shaded");
    assert!(
        dark > 500,
        "only {dark} dark pixels: no curves over the shading?"
    );

    // The x axis's label is drawn: inked (anti-aliased) pixels around its
    // anchor, where nothing else is drawn.
    let label = by_id(&doc, "x-label");
    let (cx, cy) = (num(&label, "x") as u32, num(&label, "y") as u32);
    let inked = (cx - 30..cx + 30)
        .flat_map(|x| (cy - 12..cy + 2).map(move |y| (x, y)))
        .filter(|&(x, y)| {
            let (r, g, b) = rgb(&pixmap, x, y);
            u32::from(r) + u32::from(g) + u32::from(b) < 600
        })
        .count();
    assert!(inked > 80, "\"time (s)\" not drawn: {inked} inked pixels");
}

#[test]
fn no_font_is_an_error_that_says_what_to_install() {
    let err = render_png_with(&peer_not_reading(), W, H, &Fonts::none()).expect_err("no font");
    assert!(matches!(err, PlotError::NoFont));
    assert!(err.to_string().contains("fonts-dejavu-core"), "{err}");
}

#[test]
fn fonts_from_a_directory() {
    let dejavu = std::path::Path::new("/usr/share/fonts/truetype/dejavu");
    if !dejavu.is_dir() {
        eprintln!(
            "skipped: {} absent (install fonts-dejavu-core)",
            dejavu.display()
        );
        return;
    }
    let fonts = Fonts::from_dir(dejavu);
    assert_eq!(fonts.family(), Some("DejaVu Sans"));
    let png = render_png_with(&peer_not_reading(), 400, 300, &fonts).expect("renders");
    assert_eq!(ihdr(&png), (400, 300));
}
