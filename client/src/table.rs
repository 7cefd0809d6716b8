//! What tcpstall prints for people: plain text tables, and bytes and
//! times in human units.

use std::fmt::Write as _;

pub use tcpstall_common::facts::human_bytes;

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

/// A plain text table: columns sized to their widest cell, numbers right
/// aligned, two spaces between columns.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right.get(i).copied().unwrap_or(false) {
                    let _ = write!(line, "{cell:>w$}");
                } else {
                    let _ = write!(line, "{cell:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
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
}
