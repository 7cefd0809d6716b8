//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! `# HELP` and `# TYPE` once per family, then its samples, label values
//! and help text escaped as the format asks. And a histogram counted with
//! atomics, so that the code being measured never waits for a scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One scrape's text, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// Starts a family: its HELP and TYPE lines. Its samples follow with
    /// [`Family::sample`].
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> Family<'_> {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        Family {
            out: &mut self.out,
            name: name.to_string(),
        }
    }

    /// A family of one sample without labels.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help).sample(&[], value);
    }

    /// A histogram family of one series without labels.
    pub fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.histograms(name, help, &[(&[], h)]);
    }

    /// A histogram family of several series, each with its own labels
    /// (`le` is added to them on the buckets).
    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        series: &[(&[(&str, &str)], &HistogramSnapshot)],
    ) {
        let mut f = self.family(name, Kind::Histogram, help);
        for (labels, h) in series {
            let mut cumulative = 0;
            let with_le = |le: &str| {
                let mut l: Vec<(&str, String)> =
                    labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
                l.push(("le", le.to_string()));
                l
            };
            for (bound, count) in h.bounds.iter().zip(&h.counts) {
                cumulative += count;
                let l = with_le(&format_value(*bound));
                let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                f.suffixed("_bucket", &l, cumulative as f64);
            }
            let l = with_le("+Inf");
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            f.suffixed("_bucket", &l, h.count as f64);
            f.suffixed("_sum", labels, h.sum_seconds);
            f.suffixed("_count", labels, h.count as f64);
        }
    }

    /// The text so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A family being written.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: String,
}

impl Family<'_> {
    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.suffixed("", labels, value)
    }

    /// One sample of a series whose name extends the family's
    /// (`_bucket`, `_sum`, `_count`).
    fn suffixed(&mut self, suffix: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let _ = write!(self.out, "{}{suffix}", self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }
}

/// A label value: backslash, double quote and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text: backslash and newline escaped (quotes are fine there).
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// A histogram of durations: fixed bucket bounds in seconds, counts in
/// atomics, the sum in microseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is above every
    /// bound.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// What a scrape reads of a [`Histogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; `bounds.len()` of them.
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// `bounds` in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let all: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            bounds: self.bounds,
            counts: all[..self.bounds.len()].to_vec(),
            count: all.iter().sum(),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_announced_and_labels_escaped() {
        let mut e = Exposition::new();
        e.single("x_total", Kind::Counter, "Things.\nTwo lines \\ here.", 3.0);
        e.family("y", Kind::Gauge, "Labelled.")
            .sample(&[("host", "a\"b\\c\nd")], 1.5)
            .sample(&[("host", "plain"), ("probe", "bpf")], 0.0);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP x_total Things.\\nTwo lines \\\\ here.\n\
             # TYPE x_total counter\n\
             x_total 3\n\
             # HELP y Labelled.\n\
             # TYPE y gauge\n\
             y{host=\"a\\\"b\\\\c\\nd\"} 1.5\n\
             y{host=\"plain\",probe=\"bpf\"} 0\n"
        );
    }

    #[test]
    fn special_values_are_spelled_as_the_format_wants() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(12345678.0), "12345678");
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_sum_and_count() {
        static BOUNDS: [f64; 3] = [0.01, 0.1, 1.0];
        let h = Histogram::new(&BOUNDS);
        for ms in [5, 10, 50, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        let snap = h.snapshot();
        assert_eq!(snap.counts, vec![2, 1, 0]);
        assert_eq!(snap.count, 4);
        assert!((snap.sum_seconds - 2.065).abs() < 1e-9);
        let mut e = Exposition::new();
        e.histogram("poll_seconds", "Polls.", &snap);
        let text = e.finish();
        assert!(text.contains("# TYPE poll_seconds histogram\n"), "{text}");
        for line in [
            "poll_seconds_bucket{le=\"0.01\"} 2\n",
            "poll_seconds_bucket{le=\"0.1\"} 3\n",
            "poll_seconds_bucket{le=\"1\"} 3\n",
            "poll_seconds_bucket{le=\"+Inf\"} 4\n",
            "poll_seconds_sum 2.065\n",
            "poll_seconds_count 4\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
    }

    #[test]
    fn labelled_histograms_share_one_family() {
        static BOUNDS: [f64; 2] = [1.0, 10.0];
        let one = HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![1, 2],
            count: 4,
            sum_seconds: 30.5,
        };
        let none = HistogramSnapshot {
            bounds: &BOUNDS,
            counts: vec![0, 0],
            count: 0,
            sum_seconds: 0.0,
        };
        let mut e = Exposition::new();
        e.histograms(
            "held_seconds",
            "Held.",
            &[
                (&[("ended", "reset")], &one),
                (&[("ended", "mo\"ved")], &none),
            ],
        );
        let text = e.finish();
        assert_eq!(text.matches("# TYPE held_seconds histogram\n").count(), 1);
        for line in [
            "held_seconds_bucket{ended=\"reset\",le=\"1\"} 1\n",
            "held_seconds_bucket{ended=\"reset\",le=\"10\"} 3\n",
            "held_seconds_bucket{ended=\"reset\",le=\"+Inf\"} 4\n",
            "held_seconds_sum{ended=\"reset\"} 30.5\n",
            "held_seconds_count{ended=\"reset\"} 4\n",
            "held_seconds_bucket{ended=\"mo\\\"ved\",le=\"+Inf\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
    }
}
