//! What `agent-idle` reads at one moment: the agent's own metrics, the
//! kernel's counters of the agent's socket to the collector, and the CPU
//! and memory of the agent and the collector.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tcpstall_agent::Poller;
use tcpstall_common::{SocketSample, TcpState};

use crate::procfs::{self, Mem, Ticks};
use crate::procs::{Agent, Collector};

/// What the agent's own metrics counted over the window.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AgentFigures {
    pub(super) polls: f64,
    pub(super) follows: f64,
    pub(super) follow_requests: f64,
    pub(super) follow_skipped: f64,
    pub(super) sent_samples: f64,
    pub(super) suspects: f64,
    /// Conntrack lookups (ctnetlink requests) and those that found a
    /// translated entry; agents before issue 23 count none.
    pub(super) conntrack_lookups: f64,
    pub(super) conntrack_translated: f64,
    /// Lookups since the agent started (its warm-up included).
    pub(super) conntrack_lookups_ever: f64,
}

impl AgentFigures {
    pub(super) fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<AgentFigures> {
        let text = tcpstall_prom::read::scrape(addr, Duration::from_secs(10))
            .with_context(|| format!("scraping the agent at {addr}"))?;
        let m = tcpstall_prom::read::series(&text);
        let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
        Ok(AgentFigures {
            polls: get("tcpstall_agent_polls_total"),
            follows: get("tcpstall_agent_follows_total"),
            follow_requests: get("tcpstall_agent_follow_requests_total"),
            follow_skipped: get("tcpstall_agent_follow_skipped_total"),
            sent_samples: get("tcpstall_agent_sent_samples_total"),
            suspects: get("tcpstall_agent_suspects"),
            conntrack_lookups: get("tcpstall_agent_conntrack_lookups_total"),
            conntrack_translated: get("tcpstall_agent_conntrack_translated_total"),
            conntrack_lookups_ever: get("tcpstall_agent_conntrack_lookups_total"),
        })
    }

    pub(super) fn since(&self, s: &AgentFigures) -> AgentFigures {
        AgentFigures {
            polls: self.polls - s.polls,
            follows: self.follows - s.follows,
            follow_requests: self.follow_requests - s.follow_requests,
            follow_skipped: self.follow_skipped - s.follow_skipped,
            sent_samples: self.sent_samples - s.sent_samples,
            suspects: self.suspects,
            conntrack_lookups: self.conntrack_lookups - s.conntrack_lookups,
            conntrack_translated: self.conntrack_translated - s.conntrack_translated,
            conntrack_lookups_ever: self.conntrack_lookups_ever,
        }
    }
}

/// The address the agent said it serves metrics on (its log's line).
pub(super) fn agent_metrics_addr(log: &std::path::Path) -> Option<std::net::SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("tcpstall-agent metrics on http://")?
            .strip_suffix("/metrics")?
            .parse()
            .ok()
    })
}

/// The agent→collector socket's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Link {
    pub(super) cookie: u64,
    pub(super) bytes_acked: u64,
    pub(super) bytes_received: u64,
    pub(super) segs_out: u64,
    pub(super) data_segs_out: u64,
}

/// The agent's end of its connection to the collector: the one socket
/// whose remote port is the collector's and local port is not.
pub(super) fn find_link(
    poller: &mut Poller,
    port: u16,
    cookie: Option<u64>,
) -> anyhow::Result<Link> {
    let (samples, failures) = poller.poll();
    if let Some(f) = failures.into_iter().next() {
        return Err(f).context("polling for the agent's socket");
    }
    let ours: Vec<&SocketSample> = samples
        .iter()
        .filter(|s| {
            s.state == TcpState::Established
                && s.remote.port() == port
                && s.local.port() != port
                && s.remote.ip().is_loopback()
                && cookie.is_none_or(|c| c == s.cookie)
        })
        .collect();
    let [s] = ours.as_slice() else {
        bail!(
            "{} sockets to the collector's port {port}; want exactly the agent's",
            ours.len()
        );
    };
    let info = s.info.as_ref().context("the socket has no tcp_info")?;
    let need = |v: Option<u64>, what: &str| v.with_context(|| format!("tcp_info lacks {what}"));
    Ok(Link {
        cookie: s.cookie,
        bytes_acked: need(info.bytes_acked(), "bytes_acked")?,
        bytes_received: need(info.bytes_received(), "bytes_received")?,
        segs_out: need(info.segs_out().map(u64::from), "segs_out")?,
        data_segs_out: need(info.data_segs_out().map(u64::from), "data_segs_out")?,
    })
}

#[derive(Debug, Clone, Default)]
pub(super) struct Reading {
    pub(super) at: Option<Instant>,
    pub(super) agent: Ticks,
    pub(super) agent_threads: std::collections::BTreeMap<u32, (String, procfs::ThreadCpu)>,
    pub(super) agent_mem: Mem,
    pub(super) collector: Ticks,
    pub(super) link: Link,
}

pub(super) fn read(
    agent: &Agent,
    collector: &Collector,
    poller: &mut Poller,
    cookie: Option<u64>,
) -> anyhow::Result<Reading> {
    // The socket first: the bench's own poll must not fall inside the
    // agent's CPU readings' interval more than once each side.
    let link = find_link(poller, collector.addr.port(), cookie)?;
    Ok(Reading {
        at: Some(Instant::now()),
        agent: procfs::process_ticks(agent.pid())?,
        agent_threads: procfs::threads(agent.pid())?,
        agent_mem: Mem::of(agent.pid())?,
        collector: procfs::process_ticks(collector.pid())?,
        link,
    })
}
