//! `tcpstall stalls`, and the part of `tcpstall report` it feeds: every
//! held send queue that ended, short or long, counted by host pair, from
//! the collector's held-span counts. An RPC that timed out after 5 s never
//! made an episode (the threshold is 10 s), but its stall is here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use tcpstall_client::table::Table;
use tcpstall_common::record::HeldSpans;
use tcpstall_common::HeldEnd;

/// Held spans that ended between one host pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairStalls {
    /// The host whose send queue was held.
    pub a_host: String,
    /// Its peer's host; null when no agent covers the peer.
    pub b_host: Option<String>,
    /// Holds that ended.
    pub held: u64,
    /// Of them, held for the threshold (each is an episode).
    pub episodes: u64,
    /// Of them, held at least 3 s: long enough to time out an RPC.
    pub at_least_3s: u64,
    /// How long the longest was held, and the mean, seconds.
    pub longest_s: f64,
    pub mean_s: f64,
    /// How they ended: `moved`, `drained`, `closed`, `reset`, each present.
    pub ended: BTreeMap<&'static str, u64>,
    /// How many were held up to each bound: `le_s` (null: beyond the last)
    /// and `count`, for every bound with any.
    pub buckets: Vec<Bucket>,
}

/// One duration bucket of a pair's spans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub le_s: Option<f64>,
    pub count: u64,
}

/// `tcpstall stalls --json`: the window, the threshold, and the pairs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stalls {
    /// The window asked for, seconds (null: all that is stored).
    pub since_s: Option<u64>,
    /// The collector's episode threshold, seconds.
    pub threshold_s: f64,
    /// Busiest pairs first.
    pub pairs: Vec<PairStalls>,
}

impl PairStalls {
    /// Held short of the threshold: the stalls that never became episodes.
    pub fn below_threshold(&self) -> u64 {
        self.held - self.episodes
    }
}

/// The collector's counts, gathered by pair (busiest first).
pub fn gather(r: &HeldSpans, since_s: Option<u64>) -> Stalls {
    let mut pairs: Vec<PairStalls> = Vec::new();
    let mut by_le: Vec<BTreeMap<u64, u64>> = Vec::new();
    let mut total_ms: Vec<u64> = Vec::new();
    for c in &r.counts {
        let b_host = c.b_host.clone();
        let i = match pairs
            .iter()
            .position(|p| p.a_host == c.a_host && p.b_host == b_host)
        {
            Some(i) => i,
            None => {
                pairs.push(PairStalls {
                    a_host: c.a_host.clone(),
                    b_host,
                    held: 0,
                    episodes: 0,
                    at_least_3s: 0,
                    longest_s: 0.0,
                    mean_s: 0.0,
                    ended: HeldEnd::ALL.iter().map(|e| (e.id(), 0)).collect(),
                    buckets: Vec::new(),
                });
                by_le.push(BTreeMap::new());
                total_ms.push(0);
                pairs.len() - 1
            }
        };
        let p = &mut pairs[i];
        p.held += c.count;
        p.episodes += c.episodes;
        // A bucket whose lower bound is 3 s or more (its bound above 3 s,
        // or the last one).
        if c.le_ms == 0 || c.le_ms > 3_000 {
            p.at_least_3s += c.count;
        }
        p.longest_s = p.longest_s.max(c.max_ms as f64 / 1e3);
        if let Some(n) = c.end.and_then(|e| p.ended.get_mut(e.id())) {
            *n += c.count;
        }
        *by_le[i].entry(c.le_ms).or_default() += c.count;
        total_ms[i] = total_ms[i].saturating_add(c.total_ms);
    }
    for ((p, le), total) in pairs.iter_mut().zip(by_le).zip(total_ms) {
        p.mean_s = if p.held > 0 {
            total as f64 / 1e3 / p.held as f64
        } else {
            0.0
        };
        // Bounded buckets in order, then the unbounded one (0).
        let (last, bounded): (Vec<_>, Vec<_>) = le.into_iter().partition(|(le, _)| *le == 0);
        p.buckets = bounded
            .into_iter()
            .chain(last)
            .map(|(le, count)| Bucket {
                le_s: (le > 0).then_some(le as f64 / 1e3),
                count,
            })
            .collect();
    }
    pairs.sort_by(|a, b| b.held.cmp(&a.held).then_with(|| a.a_host.cmp(&b.a_host)));
    Stalls {
        since_s,
        threshold_s: r.threshold.as_millis() as f64 / 1e3,
        pairs,
    }
}

fn secs(s: f64) -> String {
    format!("{s:.1}s")
}

fn ended(p: &PairStalls) -> String {
    p.ended
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(e, n)| format!("{e} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn window(s: &Stalls) -> String {
    match s.since_s {
        Some(secs) => format!(
            "the last {}",
            tcpstall_common::duration::format(std::time::Duration::from_secs(secs))
        ),
        None => "all stored".to_string(),
    }
}

/// `tcpstall stalls`: every pair, its holds by length and how they ended.
pub fn render(s: &Stalls, width: Option<usize>) -> String {
    if s.pairs.is_empty() {
        return format!("no held send queue ended in {}\n", window(s));
    }
    let mut out = format!(
        "Held send queues that ended in {}, by host pair (threshold {}):\n\n",
        window(s),
        secs(s.threshold_s)
    );
    let mut t = Table::new(&[
        ("A (HELD SENDER)", false),
        ("B (PEER)", false),
        ("HELD", true),
        ("EPISODES", true),
        ("BELOW", true),
        (">=3s", true),
        ("LONGEST", true),
        ("MEAN", true),
        ("ENDED", false),
    ])
    .cuttable(&[0, 1, 8]);
    for p in &s.pairs {
        t.push(vec![
            p.a_host.clone(),
            p.b_host.clone().unwrap_or_else(|| "(unmonitored)".into()),
            p.held.to_string(),
            p.episodes.to_string(),
            p.below_threshold().to_string(),
            p.at_least_3s.to_string(),
            secs(p.longest_s),
            secs(p.mean_s),
            ended(p),
        ]);
    }
    out.push_str(&t.render_within(width));
    out
}

/// The part of `tcpstall report` about holds that ended short of the
/// threshold: nothing when there were none.
pub fn report_section(s: &Stalls) -> String {
    let short: Vec<&PairStalls> = s.pairs.iter().filter(|p| p.below_threshold() > 0).collect();
    if short.is_empty() {
        return String::new();
    }
    let total: u64 = short.iter().map(|p| p.below_threshold()).sum();
    let mut out = format!(
        "\n{total} held send queue{} ended short of the {} threshold in {} (no episode; an RPC \
         waiting on one may have timed out):\n",
        if total == 1 { "" } else { "s" },
        secs(s.threshold_s),
        window(s)
    );
    for p in short {
        let _ = writeln!(
            out,
            "  {} -> {}: {} ({} of 3s or more, longest {}; {})",
            p.a_host,
            p.b_host.as_deref().unwrap_or("(unmonitored)"),
            p.below_threshold(),
            p.at_least_3s,
            secs(p.longest_s),
            ended(p)
        );
    }
    out.push_str("  (`tcpstall stalls` for every pair)\n");
    out
}

#[cfg(test)]
mod tests {
    use tcpstall_proto::{convert, v1};

    use super::*;

    fn count(
        a: &str,
        b: &str,
        end: &str,
        le_ms: u64,
        n: u64,
        episodes: u64,
        max_ms: u64,
    ) -> v1::HeldSpanCount {
        v1::HeldSpanCount {
            a_host: a.into(),
            b_host: b.into(),
            end: end.into(),
            le_ms,
            count: n,
            episodes,
            total_ms: n * max_ms,
            max_ms,
        }
    }

    /// The counts as a collector sends them, read as the CLI reads them.
    fn sample() -> HeldSpans {
        convert::held_spans_from_wire(v1::ListHeldSpansResponse {
            counts: vec![
                count("web-1", "db-7", "reset", 10_000, 3, 0, 9_600),
                count("web-1", "db-7", "reset", 12_000, 1, 1, 10_500),
                count("web-1", "db-7", "moved", 2_000, 4, 0, 1_500),
                count("web-2", "", "drained", 0, 1, 1, 400_000),
            ],
            threshold_ms: 10_000,
        })
    }

    #[test]
    fn counts_gather_by_pair_with_their_shares() {
        let s = gather(&sample(), Some(3600));
        assert_eq!(s.threshold_s, 10.0);
        assert_eq!(s.pairs.len(), 2);
        let p = &s.pairs[0];
        assert_eq!(
            (p.a_host.as_str(), p.b_host.as_deref()),
            ("web-1", Some("db-7"))
        );
        assert_eq!((p.held, p.episodes, p.below_threshold()), (8, 1, 7));
        assert_eq!(p.at_least_3s, 4, "the 3 of (9, 10] and the 1 of (10, 12]");
        assert_eq!(p.longest_s, 10.5);
        assert_eq!(p.ended["reset"], 4);
        assert_eq!(p.ended["moved"], 4);
        assert_eq!(p.ended["closed"], 0, "every end present");
        assert_eq!(
            p.buckets,
            vec![
                Bucket {
                    le_s: Some(2.0),
                    count: 4
                },
                Bucket {
                    le_s: Some(10.0),
                    count: 3
                },
                Bucket {
                    le_s: Some(12.0),
                    count: 1
                },
            ]
        );
        let mean = (3.0 * 9.6 + 10.5 + 4.0 * 1.5) / 8.0;
        assert!((p.mean_s - mean).abs() < 1e-9, "{}", p.mean_s);
        let q = &s.pairs[1];
        assert_eq!(q.b_host, None, "unmonitored");
        assert_eq!(
            q.buckets,
            vec![Bucket {
                le_s: None,
                count: 1
            }]
        );
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(json["pairs"][1]["b_host"], serde_json::Value::Null);
        assert_eq!(json["pairs"][0]["ended"]["reset"], 4);
    }

    #[test]
    fn the_text_names_each_pair_and_the_report_only_what_fell_short() {
        let s = gather(&sample(), Some(3600));
        let text = render(&s, None);
        assert!(text.contains("the last 1h"), "{text}");
        assert!(text.contains("web-1") && text.contains("db-7"), "{text}");
        assert!(text.contains("reset 4"), "{text}");
        let report = report_section(&s);
        assert!(
            report.contains("7 held send queues ended short of the 10.0s threshold"),
            "{report}"
        );
        assert!(report.contains("web-1 -> db-7: 7"), "{report}");
        assert!(
            !report.contains("web-2"),
            "its one hold was an episode: {report}"
        );
        let none = gather(&HeldSpans::default(), None);
        assert_eq!(report_section(&none), "");
        assert!(render(&none, None).starts_with("no held send queue ended in all stored"));
    }
}
