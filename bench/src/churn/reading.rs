//! What `agent-churn` reads at one moment: the agent's CPU, memory,
//! descriptors and own metrics, the collector's held-span histogram, and
//! the holders' counters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::hold::Counts;
use super::holders::ChurnHolders;
use crate::procfs::{self, Mem, Ticks};
use crate::procs::{Agent, Collector};

/// The agent's own counters.
#[derive(Debug, Clone, Default)]
pub(super) struct AgentFigures {
    pub(super) polls: f64,
    /// Held spans released, every end.
    pub(super) spans: f64,
    pub(super) spans_by_end: HashMap<String, f64>,
    pub(super) suspects: f64,
    pub(super) connections: f64,
    pub(super) sent_samples: f64,
    pub(super) dropped_samples: f64,
    pub(super) malformed: f64,
}

impl AgentFigures {
    fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<AgentFigures> {
        let text = tcpstall_prom::read::scrape(addr, Duration::from_secs(10))
            .with_context(|| format!("scraping the agent at {addr}"))?;
        let m = tcpstall_prom::read::series(&text);
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        let spans_by_end: HashMap<String, f64> = m
            .iter()
            .filter_map(|(k, v)| {
                let end = k
                    .strip_prefix("tcpstall_agent_held_ended_total{ended=\"")?
                    .strip_suffix("\"}")?;
                Some((end.to_string(), *v))
            })
            .collect();
        Ok(AgentFigures {
            polls: get("tcpstall_agent_polls_total"),
            spans: spans_by_end.values().sum(),
            spans_by_end,
            suspects: get("tcpstall_agent_suspects"),
            connections: get("tcpstall_agent_connections"),
            sent_samples: get("tcpstall_agent_sent_samples_total"),
            dropped_samples: get("tcpstall_agent_dropped_samples_total"),
            malformed: get("tcpstall_agent_malformed_replies_total"),
        })
    }
}

/// The collector's held-span histogram, every end added up.
#[derive(Debug, Clone, Default)]
pub(super) struct CollectorSpans {
    pub(super) count: f64,
    /// Cumulative count by bucket bound (seconds, as printed).
    le: HashMap<String, f64>,
}

impl CollectorSpans {
    fn scrape(c: &Collector) -> anyhow::Result<CollectorSpans> {
        let m = c.scrape_metrics()?;
        let mut out = CollectorSpans::default();
        for (k, v) in &m {
            if k.starts_with("tcpstall_collector_held_seconds_count{") {
                out.count += v;
            } else if let Some(rest) = k.strip_prefix("tcpstall_collector_held_seconds_bucket{") {
                if let Some(le) = rest
                    .split_once("le=\"")
                    .and_then(|(_, l)| l.strip_suffix("\"}"))
                {
                    *out.le.entry(le.to_string()).or_default() += v;
                }
            }
        }
        Ok(out)
    }

    /// Spans held more than `lo` and at most `hi` seconds, when both are
    /// bucket bounds (or `lo` is 0).
    pub(super) fn between(&self, lo: u64, hi: u64) -> Option<f64> {
        let at = |b: u64| -> Option<f64> {
            if b == 0 {
                Some(0.0)
            } else {
                self.le.get(&b.to_string()).copied()
            }
        };
        Some(at(hi)? - at(lo)?)
    }
}

#[derive(Debug, Clone)]
pub(super) struct Reading {
    pub(super) at: Instant,
    pub(super) agent: Ticks,
    pub(super) mem: Mem,
    pub(super) fds: usize,
    pub(super) figures: AgentFigures,
    pub(super) collector: CollectorSpans,
    pub(super) holders: Counts,
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}

pub(super) fn read(
    agent: &Agent,
    metrics: std::net::SocketAddr,
    collector: &Collector,
    holders: &ChurnHolders,
) -> anyhow::Result<Reading> {
    Ok(Reading {
        at: Instant::now(),
        agent: procfs::process_ticks(agent.pid())?,
        mem: Mem::of(agent.pid())?,
        fds: open_fds(agent.pid())?,
        figures: AgentFigures::scrape(metrics)?,
        collector: CollectorSpans::scrape(collector)?,
        holders: holders.counts(),
    })
}

/// The address the agent said it serves metrics on, once it has.
pub(super) fn agent_metrics_addr(log: &std::path::Path) -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("tcpstall-agent metrics on http://")?
            .strip_suffix("/metrics")?
            .parse()
            .ok()
    })
}
