//! What tcpstall prints for people: plain text tables, and bytes and
//! times in human units.

use std::borrow::Cow;
use std::fmt::Write as _;

pub use tcpstall_common::facts::{human_bytes, short, HumanBytes};

/// Microseconds in human units: 52us, 1.2ms, 230ms, 3.4s.
pub fn human_micros(us: u32) -> String {
    if us < 1000 {
        format!("{us}us")
    } else if us < 10_000 {
        format!("{:.1}ms", f64::from(us) / 1000.0)
    } else if us < 1_000_000 {
        format!("{}ms", us / 1000)
    } else {
        format!("{:.1}s", f64::from(us) / 1e6)
    }
}

/// The width tables are fitted to unless asked for whole (`--wide`): long
/// cells (command lines, unit paths, hosts) are cut with `…`; JSON and
/// `--wide` keep them whole.
pub const WIDTH: usize = 100;

/// How wide a table may be: [`WIDTH`], or unlimited with `--wide`.
pub fn width(wide: bool) -> Option<usize> {
    (!wide).then_some(WIDTH)
}

/// A cuttable column is never cut narrower than this (or its header).
const FLOOR: usize = 10;

/// A plain text table: columns sized to their widest cell, numbers right
/// aligned, two spaces between columns. Rendered within a width, the
/// columns marked cuttable give up what the table has too much, the widest
/// first, and their long cells end in `…`. The cells are kept back to back
/// in one string: a table of 20,000 rows is a few allocations, not
/// 400,000.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    cut: Vec<bool>,
    /// Every cell's text, back to back.
    text: String,
    /// Each cell's end in `text` and its width in characters, row by row.
    cells: Vec<(usize, usize)>,
    /// Lines under rows ([`Table::note`]), back to back.
    note_text: String,
    /// Each note's row and its end in `note_text`, in order.
    notes: Vec<(usize, usize)>,
}

/// How far a note is indented under its row.
const NOTE_INDENT: &str = "    ";

impl Table {
    pub fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            cut: vec![false; columns.len()],
            text: String::new(),
            cells: Vec::new(),
            note_text: String::new(),
            notes: Vec::new(),
        }
    }

    /// Marks `columns` (by index) as ones whose long cells may be cut.
    pub fn cuttable(mut self, columns: &[usize]) -> Table {
        for &c in columns {
            if let Some(x) = self.cut.get_mut(c) {
                *x = true;
            }
        }
        self
    }

    /// A row of cells; missing ones are empty, extra ones dropped.
    pub fn push(&mut self, row: Vec<String>) {
        let n = self.header.len();
        for i in 0..n {
            self.cell(row.get(i).map_or("", String::as_str));
        }
    }

    /// The next cell, row after row ([`Table::push`] without the
    /// `String`s): a row is as many cells as the table has columns.
    pub fn cell(&mut self, v: impl std::fmt::Display) {
        let start = self.text.len();
        let _ = write!(self.text, "{v}");
        let s = &self.text[start..];
        let width = if s.is_ascii() {
            s.len()
        } else {
            s.chars().count()
        };
        self.cells.push((self.text.len(), width));
    }

    /// A line of words under the row last written, indented, as `ss -i`
    /// writes a socket's details: within a width, its words go on as many
    /// lines as they need (broken at spaces, never cut). A row may have
    /// several.
    pub fn note(&mut self, words: impl std::fmt::Display) {
        let row = (self.cells.len() / self.header.len().max(1)).saturating_sub(1);
        let _ = write!(self.note_text, "{words}");
        self.notes.push((row, self.note_text.len()));
    }

    /// Writes a note's words after the indent, within `width`.
    fn write_note(
        out: &mut impl std::io::Write,
        words: &str,
        width: Option<usize>,
    ) -> std::io::Result<()> {
        let room = width.map_or(usize::MAX, |w| w.saturating_sub(NOTE_INDENT.len()));
        let mut line = 0usize;
        out.write_all(NOTE_INDENT.as_bytes())?;
        for word in words.split(' ').filter(|w| !w.is_empty()) {
            let n = word.chars().count();
            if line > 0 && line + 1 + n > room {
                out.write_all(b"\n")?;
                out.write_all(NOTE_INDENT.as_bytes())?;
                line = 0;
            }
            if line > 0 {
                out.write_all(b" ")?;
                line += 1;
            }
            out.write_all(word.as_bytes())?;
            line += n;
        }
        out.write_all(b"\n")
    }

    fn rows(&self) -> impl Iterator<Item = &[(usize, usize)]> {
        self.cells.chunks(self.header.len().max(1))
    }

    /// Cell `i` of the whole list: its text.
    fn text_of(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.cells[i - 1].0 };
        &self.text[start..self.cells[i].0]
    }

    /// Each column's width with nothing cut.
    fn natural(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in self.rows() {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.1);
            }
        }
        widths
    }

    /// The width of the table with nothing cut.
    pub fn natural_width(&self) -> usize {
        let w = self.natural();
        w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1)
    }

    /// The whole table, nothing cut.
    pub fn render(&self) -> String {
        self.render_within(None)
    }

    /// The table within `width` columns where cutting can get it there
    /// (`None`: whole).
    pub fn render_within(&self, width: Option<usize>) -> String {
        let mut out = Vec::new();
        // Writing to a Vec does not fail.
        let _ = self.write_within(&mut out, width);
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`Table::render_within`], written to `out` a line at a time.
    pub fn write_within(
        &self,
        out: &mut impl std::io::Write,
        width: Option<usize>,
    ) -> std::io::Result<()> {
        let widths = self.widths_within(width);
        let mut line = String::new();
        let put = |line: &mut String, i: usize, cell: &str, n: usize| {
            let w = widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                line.push_str("  ");
            }
            let (cell, n) = if n > w {
                (Cow::Owned(short(cell, w)), w)
            } else {
                (Cow::Borrowed(cell), n)
            };
            let pad = w - n;
            if self.right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        };
        for (i, h) in self.header.iter().enumerate() {
            put(&mut line, i, h, h.chars().count());
        }
        writeln!(out, "{}", line.trim_end())?;
        let ncols = self.header.len().max(1);
        let mut notes = self.notes.iter().peekable();
        let mut note_start = 0;
        for (r, row) in self.rows().enumerate() {
            line.clear();
            for (i, cell) in row.iter().enumerate() {
                put(&mut line, i, self.text_of(r * ncols + i), cell.1);
            }
            writeln!(out, "{}", line.trim_end())?;
            while let Some(&(_, end)) = notes.next_if(|(row, _)| *row == r) {
                Self::write_note(out, &self.note_text[note_start..end], width)?;
                note_start = end;
            }
        }
        Ok(())
    }

    /// The columns' widths within `width`: the cuttable ones narrowed,
    /// the widest first, down to their floor.
    fn widths_within(&self, width: Option<usize>) -> Vec<usize> {
        let mut widths = self.natural();
        if let Some(max) = width {
            let gaps = 2 * widths.len().saturating_sub(1);
            let floor = |i: usize| self.header[i].chars().count().max(FLOOR);
            while widths.iter().sum::<usize>() + gaps > max {
                let widest = (0..widths.len())
                    .filter(|&i| self.cut[i] && widths[i] > floor(i))
                    .max_by_key(|&i| widths[i]);
                match widest {
                    Some(i) => widths[i] -= 1,
                    None => break,
                }
            }
        }
        widths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // Bytes are tested where human_bytes lives (common::facts).
    fn human_units() {
        assert_eq!(human_micros(52), "52us");
        assert_eq!(human_micros(1200), "1.2ms");
        assert_eq!(human_micros(230_000), "230ms");
        assert_eq!(human_micros(3_400_000), "3.4s");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&[("NAME", false), ("N", true)]);
        t.push(vec!["a".into(), "1".into()]);
        t.push(vec!["long".into(), "1000".into()]);
        assert_eq!(t.render(), "NAME     N\na        1\nlong  1000\n");
    }

    #[test]
    fn within_a_width_the_widest_cuttable_column_gives_way_first() {
        let mut t =
            Table::new(&[("ID", true), ("COMMAND", false), ("HOST", false)]).cuttable(&[1, 2]);
        t.push(vec!["7".into(), "x".repeat(300), "db-7.example.com".into()]);
        let out = t.render_within(Some(40));
        for line in out.lines() {
            assert!(line.chars().count() <= 40, "{line:?}");
        }
        let row = out.lines().nth(1).expect("a row");
        assert!(row.contains('…'), "cut: {row}");
        assert!(
            row.ends_with("db-7.example.com"),
            "the short column kept whole: {row}"
        );
        // Whole, the same table keeps every character.
        assert!(t.render_within(None).contains(&"x".repeat(300)));
        assert_eq!(t.render(), t.render_within(None));
    }

    #[test]
    fn notes_go_under_their_rows_wrapped_within_the_width_never_cut() {
        let mut t = Table::new(&[("A", false), ("B", true)]);
        t.cell("x");
        t.cell(1);
        t.note("una:1 nxt:2");
        t.cell("y");
        t.cell(22);
        t.cell("z");
        t.cell(3);
        t.note(format_args!("{} {}", "w".repeat(8), "v".repeat(8)));
        t.note("second");
        assert_eq!(
            t.render(),
            "A   B\nx   1\n    una:1 nxt:2\ny  22\nz   3\n    wwwwwwww vvvvvvvv\n    second\n"
        );
        // Within 14 columns the long note breaks at its space.
        let narrow = t.render_within(Some(14));
        assert!(
            narrow.contains("    wwwwwwww\n    vvvvvvvv\n    second\n"),
            "{narrow}"
        );
        for line in narrow.lines() {
            assert!(line.chars().count() <= 14, "{line:?}");
        }
    }

    #[test]
    fn columns_not_cuttable_are_never_cut_and_nothing_goes_below_its_floor() {
        let mut t = Table::new(&[("ID", true), ("NAME", false)]).cuttable(&[1]);
        t.push(vec![
            "1234567890123456".into(),
            "a-rather-long-name-here".into(),
        ]);
        let out = t.render_within(Some(10));
        let row = out.lines().nth(1).expect("a row");
        assert!(row.starts_with("1234567890123456  "), "the id whole: {row}");
        assert_eq!(
            row.chars().count(),
            16 + 2 + FLOOR,
            "name at its floor: {row}"
        );
    }
}
