//! The PNG: the SVG of [`render_svg`](crate::render_svg) rasterised by
//! resvg, its text drawn with a system font. A PNG without its text would
//! be worse than no PNG, so no font is an error ([`PlotError::NoFont`]).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use resvg::usvg::fontdb::{Database, Family, Query};
use resvg::{tiny_skia, usvg};

use crate::{render_svg, PlotError, PlotInput};

/// The family the SVG asks for first, and the one preferred when present.
const PREFERRED: &str = "DejaVu Sans";

/// The fonts a PNG's text is drawn with. Loading the system's fonts takes
/// a few tens of milliseconds: load them once and render many pictures.
#[derive(Clone)]
pub struct Fonts {
    db: Arc<Database>,
    /// The family generic names (`sans-serif`) resolve to; `None` when
    /// there is no font at all.
    family: Option<String>,
}

impl std::fmt::Debug for Fonts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fonts")
            .field("faces", &self.db.len())
            .field("family", &self.family)
            .finish()
    }
}

impl Fonts {
    /// The system's fonts (on Linux: those fontconfig lists, or the usual
    /// font directories), DejaVu Sans preferred.
    pub fn system() -> Fonts {
        let mut db = Database::new();
        db.load_system_fonts();
        Fonts::from_db(db)
    }

    /// The fonts in one directory and those below it.
    pub fn from_dir(dir: &Path) -> Fonts {
        let mut db = Database::new();
        db.load_fonts_dir(dir);
        Fonts::from_db(db)
    }

    /// No fonts: what a machine without any font package has.
    pub fn none() -> Fonts {
        Fonts::from_db(Database::new())
    }

    fn from_db(mut db: Database) -> Fonts {
        let preferred = db
            .query(&Query {
                families: &[Family::Name(PREFERRED)],
                ..Query::default()
            })
            .map(|_| PREFERRED.to_string());
        let family = preferred.or_else(|| {
            db.faces()
                .find_map(|f| f.families.first().map(|(name, _)| name.clone()))
        });
        if let Some(f) = &family {
            // Whatever the SVG asks for ends at a generic family: make
            // every generic one a font that exists.
            db.set_sans_serif_family(f.clone());
            db.set_serif_family(f.clone());
            db.set_monospace_family(f.clone());
        }
        Fonts {
            db: Arc::new(db),
            family,
        }
    }

    /// The family text is drawn with, if there is any font.
    pub fn family(&self) -> Option<&str> {
        self.family.as_deref()
    }
}

/// The system's fonts, loaded on first use.
fn system_fonts() -> &'static Fonts {
    static FONTS: OnceLock<Fonts> = OnceLock::new();
    FONTS.get_or_init(Fonts::system)
}

/// The graph as a PNG, `width` × `height` pixels, its text drawn with the
/// system's fonts.
pub fn render_png(input: &PlotInput, width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    render_png_with(input, width, height, system_fonts())
}

/// [`render_png`] with the fonts given.
pub fn render_png_with(
    input: &PlotInput,
    width: u32,
    height: u32,
    fonts: &Fonts,
) -> Result<Vec<u8>, PlotError> {
    let svg = render_svg(input, width, height)?;
    let Some(family) = fonts.family.clone() else {
        return Err(PlotError::NoFont);
    };
    let options = usvg::Options {
        font_family: family,
        fontdb: Arc::clone(&fonts.db),
        ..usvg::Options::default()
    };
    let tree = usvg::Tree::from_str(&svg, &options)
        .map_err(|e| PlotError::Raster(format!("the plot's own SVG: {e}")))?;
    let mut pixmap = tiny_skia::Pixmap::new(width, height)
        .ok_or_else(|| PlotError::Raster(format!("no {width}x{height} pixmap")))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::identity(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| PlotError::Raster(format!("encoding the PNG: {e}")))
}
