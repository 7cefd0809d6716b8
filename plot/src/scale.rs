//! Linear scales from data to pixels, "nice" tick positions, and the tick
//! labels people read: seconds on the time axis, bytes in binary units
//! (K = 1024, M = 1024², G = 1024³) on the sequence axis.

/// A linear map from a data interval onto a pixel interval. The pixel
/// interval may run backwards (the y axis grows upwards on screen).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub px_lo: f64,
    pub px_hi: f64,
}

impl Scale {
    /// `lo < hi` is the caller's to ensure (see [`pad_range`]).
    pub fn new(lo: f64, hi: f64, px_lo: f64, px_hi: f64) -> Scale {
        Scale {
            lo,
            hi,
            px_lo,
            px_hi,
        }
    }

    pub fn px(&self, v: f64) -> f64 {
        let span = self.hi - self.lo;
        if span <= 0.0 {
            return (self.px_lo + self.px_hi) / 2.0;
        }
        self.px_lo + (v - self.lo) / span * (self.px_hi - self.px_lo)
    }
}

/// Widens `[lo, hi]` so that a plot of it has room: by `frac` of the span
/// on each side, and to at least `min_span` in all, centred (so that equal
/// values still make a range); never below `floor`.
pub(crate) fn pad_range(lo: f64, hi: f64, frac: f64, min_span: f64, floor: f64) -> (f64, f64) {
    let span = hi - lo;
    let pad = (span * frac).max((min_span - span) / 2.0);
    let lo = (lo - pad).max(floor);
    let hi = (hi + pad).max(lo + min_span);
    (lo, hi)
}

/// The step from `candidates × 10^k` that cuts `span` into about `target`
/// pieces (nearest on a log scale).
fn nice_step(span: f64, target: usize, candidates: &[f64]) -> f64 {
    let target = target.max(1) as f64;
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let mut best = 10.0 * mag;
    for c in candidates {
        if ((c * mag) / raw).ln().abs() < (best / raw).ln().abs() {
            best = c * mag;
        }
    }
    best
}

/// At most this many ticks on an axis, whatever the input.
const MAX_TICKS: usize = 50;

/// Multiples of `step` inside `[lo, hi]`.
fn ticks_at(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if step <= 0.0 || !step.is_finite() {
        return Vec::new();
    }
    let first = (lo / step).ceil();
    let mut out = Vec::new();
    let mut k = first;
    while out.len() < MAX_TICKS {
        let v = k * step;
        if v > hi + step * 1e-9 {
            break;
        }
        out.push(v);
        k += 1.0;
    }
    out
}

/// Decimal places that show every multiple of `step` exactly enough.
fn decimals(step: f64) -> usize {
    let mut d = 0;
    while d < 6 && (step * 10f64.powi(d as i32)).fract().abs() > 1e-6 {
        d += 1;
    }
    d
}

/// One tick: where it is in data units and what it says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tick {
    pub value: f64,
    pub label: String,
}

/// Ticks of the time axis, in seconds.
pub(crate) fn time_ticks(lo: f64, hi: f64, target: usize) -> Vec<Tick> {
    let span = hi - lo;
    let step = if span >= 10.0 {
        // Whole seconds that suit minutes and hours.
        const STEPS: [f64; 14] = [
            1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
            7200.0,
        ];
        let raw = span / target.max(1) as f64;
        STEPS
            .iter()
            .copied()
            .find(|s| *s >= raw)
            .unwrap_or_else(|| nice_step(span, target, &[1.0, 2.0, 5.0]))
    } else {
        nice_step(span, target, &[1.0, 2.0, 5.0])
    };
    let d = decimals(step);
    ticks_at(lo, hi, step)
        .into_iter()
        .map(|v| Tick {
            value: v,
            label: trim_neg_zero(format!("{v:.d$}")),
        })
        .collect()
}

fn trim_neg_zero(s: String) -> String {
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

const UNITS: [(f64, &str); 4] = [
    (1024.0 * 1024.0 * 1024.0, "G"),
    (1024.0 * 1024.0, "M"),
    (1024.0, "K"),
    (1.0, ""),
];

/// Ticks of the sequence axis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ByteTicks {
    pub ticks: Vec<Tick>,
    /// When set, the labels count from this many bytes (a long-lived
    /// connection stalls far from its ISN, and `4768371.6M` reads badly).
    pub offset: Option<u64>,
}

/// Labels longer than this switch the axis to an offset.
const MAX_LABEL_CHARS: usize = 6;

pub(crate) fn byte_ticks(lo: f64, hi: f64, target: usize) -> ByteTicks {
    let span = hi - lo;
    // The unit that makes the step a plain number of units.
    let (unit, suffix) = UNITS
        .iter()
        .copied()
        .find(|(u, _)| span >= 2.0 * u)
        .unwrap_or((1.0, ""));
    let step_units = nice_step(span / unit, target, &[1.0, 2.0, 2.5, 5.0]);
    let step_units = if unit == 1.0 {
        step_units.max(1.0).ceil()
    } else {
        step_units
    };
    let step = step_units * unit;
    let d = decimals(step_units);
    let values = ticks_at(lo, hi, step);
    let label = |v: f64| {
        let s = format!("{:.d$}{suffix}", v / unit);
        trim_neg_zero(s)
    };
    let plain: Vec<Tick> = values
        .iter()
        .map(|&v| Tick {
            value: v,
            label: if v == 0.0 { "0".to_string() } else { label(v) },
        })
        .collect();
    let too_long = plain.iter().any(|t| t.label.len() > MAX_LABEL_CHARS);
    match values.first() {
        Some(&base) if too_long && base > 0.0 => ByteTicks {
            ticks: values
                .iter()
                .map(|&v| Tick {
                    value: v,
                    label: if v == base {
                        "+0".to_string()
                    } else {
                        format!("+{}", label(v - base))
                    },
                })
                .collect(),
            offset: Some(base as u64),
        },
        _ => ByteTicks {
            ticks: plain,
            offset: None,
        },
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(t: &[Tick]) -> Vec<&str> {
        t.iter().map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn scale_maps_ends_and_runs_backwards() {
        let s = Scale::new(10.0, 20.0, 300.0, 100.0);
        assert_eq!(s.px(10.0), 300.0);
        assert_eq!(s.px(20.0), 100.0);
        assert_eq!(s.px(15.0), 200.0);
    }

    #[test]
    fn equal_values_get_room() {
        assert_eq!(pad_range(5.0, 5.0, 0.05, 4.0, 0.0), (3.0, 7.0));
        assert_eq!(pad_range(1.0, 1.0, 0.05, 4.0, 0.0), (0.0, 4.0));
        assert_eq!(pad_range(0.0, 100.0, 0.05, 4.0, 0.0), (0.0, 105.0));
        assert_eq!(pad_range(10.0, 11.0, 0.05, 4.0, 0.0), (8.5, 12.5));
    }

    #[test]
    fn time_ticks_are_round_seconds() {
        assert_eq!(
            labels(&time_ticks(0.0, 60.0, 6)),
            ["0", "10", "20", "30", "40", "50", "60"]
        );
        assert_eq!(
            labels(&time_ticks(-0.5, 2.0, 5)),
            ["-0.5", "0.0", "0.5", "1.0", "1.5", "2.0"]
        );
        assert_eq!(labels(&time_ticks(0.0, 600.0, 5))[1], "120");
    }

    #[test]
    fn byte_ticks_in_binary_units() {
        let t = byte_ticks(0.0, 256.0 * 1024.0, 5);
        assert_eq!(t.offset, None);
        assert_eq!(
            labels(&t.ticks),
            ["0", "50K", "100K", "150K", "200K", "250K"]
        );
        let t = byte_ticks(0.0, 3.0 * 1024.0 * 1024.0, 6);
        assert_eq!(
            labels(&t.ticks),
            ["0", "0.5M", "1.0M", "1.5M", "2.0M", "2.5M", "3.0M"]
        );
        let t = byte_ticks(3.0, 9.0, 3);
        assert_eq!(labels(&t.ticks), ["4", "6", "8"]);
    }

    #[test]
    fn far_from_the_isn_the_axis_gets_an_offset() {
        let base = 5_000_000_000.0;
        let t = byte_ticks(base, base + 20_000.0, 4);
        let first = t.ticks.first().expect("ticks").value;
        assert_eq!(t.offset, Some(first as u64));
        assert_eq!(t.ticks[0].label, "+0");
        assert_eq!(t.ticks[1].label, "+5K");
    }

    #[test]
    fn thousands_separated() {
        assert_eq!(thousands(1_288_437_760), "1,288,437,760");
        assert_eq!(thousands(12), "12");
    }
}
