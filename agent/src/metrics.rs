//! The agent's Prometheus endpoint: `GET /metrics` on `--metrics-listen`
//! (off by default), in the text exposition format.
//!
//! The run loop, the link and the outgoing stream count into one
//! [`AgentMetrics`] of atomics; a scrape reads them and renders, and never
//! waits for a poll. Names follow Prometheus conventions:
//! `tcpstall_agent_` prefix, `_total` for counters, base units (seconds,
//! bytes), labels with a fixed, small set of values.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tcpstall_common::HeldEnd;
use tcpstall_prom::{Exposition, Histogram, Kind};

use crate::diag::ParseStats;
use crate::outbox::Dropped;
use crate::translate::TranslateStats;

/// Bucket bounds of the poll duration, seconds: a poll of a few sockets
/// takes about a millisecond, of 20,000 some tens of milliseconds.
pub static POLL_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The probes a scrape reports, in this order.
pub const PROBES: [&str; 5] = ["sock_diag", "bpf", "getsockopt", "owner", "conntrack"];

/// Everything the agent counts for Prometheus.
#[derive(Debug)]
pub struct AgentMetrics {
    pub poll_duration: Histogram,
    polls: AtomicU64,
    /// Namespace walks the kernel filter did, and first phases it failed.
    filtered: AtomicU64,
    filter_failures: AtomicU64,
    namespace_failures: AtomicU64,
    connections: AtomicU64,
    suspects: AtomicU64,
    watched: AtomicU64,
    buffered: AtomicU64,
    dropped_batches: AtomicU64,
    dropped_samples: AtomicU64,
    sent_messages: AtomicU64,
    sent_bytes: AtomicU64,
    sent_samples: AtomicU64,
    /// Address announcements (every namespace's addresses, after a
    /// change) the stream took.
    addresses_sent: AtomicU64,
    reconnects: AtomicU64,
    /// Hellos the collector refused: another machine holds the host name.
    hellos_refused_name_taken: AtomicU64,
    connected: AtomicBool,
    /// Streams opened on another collector than the one before.
    collector_switches: AtomicU64,
    /// The collector of the latest stream (URL, address); read at scrapes
    /// only, written when a stream opens.
    collector: Mutex<Option<(String, String)>>,
    /// Parser skips: malformed messages, attributes, chunks; interrupted
    /// dumps (copied from the poller's own totals).
    malformed_messages: AtomicU64,
    malformed_attributes: AtomicU64,
    truncated_chunks: AtomicU64,
    interrupted: AtomicU64,
    /// One per [`PROBES`] entry.
    probes: [AtomicBool; 5],
    /// Follows done, sockets asked for by them, and held suspects a
    /// follow left for the next poll (over `follow_max`).
    follows: AtomicU64,
    follow_requests: AtomicU64,
    follow_skipped: AtomicU64,
    /// Holds that ended, by [`HeldEnd::index`].
    held_ended: [AtomicU64; 4],
    /// Conntrack lookups and their outcomes, the cache of sent sockets'
    /// translations, Translate requests (copied from the translator's
    /// own totals).
    conntrack_lookups: AtomicU64,
    conntrack_translated: AtomicU64,
    conntrack_errors: AtomicU64,
    conntrack_deferred: AtomicU64,
    conntrack_cached: AtomicU64,
    conntrack_cache_drops: AtomicU64,
    conntrack_unreadable: AtomicU64,
    translate_answered: AtomicU64,
    translate_dropped: AtomicU64,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics {
            poll_duration: Histogram::new(&POLL_BUCKETS),
            polls: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            filter_failures: AtomicU64::new(0),
            namespace_failures: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            suspects: AtomicU64::new(0),
            watched: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            dropped_batches: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
            sent_messages: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            sent_samples: AtomicU64::new(0),
            addresses_sent: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            hellos_refused_name_taken: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            collector_switches: AtomicU64::new(0),
            collector: Mutex::new(None),
            malformed_messages: AtomicU64::new(0),
            malformed_attributes: AtomicU64::new(0),
            truncated_chunks: AtomicU64::new(0),
            interrupted: AtomicU64::new(0),
            probes: Default::default(),
            follows: AtomicU64::new(0),
            follow_requests: AtomicU64::new(0),
            follow_skipped: AtomicU64::new(0),
            held_ended: Default::default(),
            conntrack_lookups: AtomicU64::new(0),
            conntrack_translated: AtomicU64::new(0),
            conntrack_errors: AtomicU64::new(0),
            conntrack_deferred: AtomicU64::new(0),
            conntrack_cached: AtomicU64::new(0),
            conntrack_cache_drops: AtomicU64::new(0),
            conntrack_unreadable: AtomicU64::new(0),
            translate_answered: AtomicU64::new(0),
            translate_dropped: AtomicU64::new(0),
        }
    }
}

fn n(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// What one poll saw, for [`AgentMetrics::polled`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PollFigures {
    pub connections: usize,
    pub suspects: usize,
    pub watched: usize,
    pub failed_namespaces: usize,
    pub parse: ParseStats,
    /// Namespaces whose first phase ran in the kernel in this poll.
    pub filtered: usize,
    /// First phases the kernel filter failed, since the agent started.
    pub filter_failures: u64,
}

impl AgentMetrics {
    /// A poll finished (its duration goes to [`Self::poll_duration`]).
    pub fn polled(&self, f: &PollFigures) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        self.filtered.fetch_add(n(f.filtered), Ordering::Relaxed);
        self.filter_failures
            .store(f.filter_failures, Ordering::Relaxed);
        self.namespace_failures
            .fetch_add(n(f.failed_namespaces), Ordering::Relaxed);
        self.connections.store(n(f.connections), Ordering::Relaxed);
        self.suspects.store(n(f.suspects), Ordering::Relaxed);
        self.watched.store(n(f.watched), Ordering::Relaxed);
        let p = &f.parse;
        self.malformed_messages
            .store(p.malformed_messages, Ordering::Relaxed);
        self.malformed_attributes
            .store(p.malformed_attributes, Ordering::Relaxed);
        self.truncated_chunks
            .store(p.truncated_chunks, Ordering::Relaxed);
        self.interrupted.store(p.interrupted, Ordering::Relaxed);
    }

    /// A follow asked the kernel for `requests` suspects alone and left
    /// `skipped` for the next poll.
    pub fn followed(&self, requests: usize, skipped: usize) {
        self.follows.fetch_add(1, Ordering::Relaxed);
        self.follow_requests
            .fetch_add(n(requests), Ordering::Relaxed);
        self.follow_skipped.fetch_add(n(skipped), Ordering::Relaxed);
    }

    /// A look (poll or follow) found these holds over.
    pub fn held_ended<'a>(&self, ended: impl IntoIterator<Item = &'a HeldEnd>) {
        for e in ended {
            self.held_ended[e.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The translator's totals as they are now.
    pub fn translations(&self, t: &TranslateStats) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.conntrack_lookups, t.lookups);
        set(&self.conntrack_translated, t.translated);
        set(&self.conntrack_errors, t.errors);
        set(&self.conntrack_deferred, t.deferred);
        set(&self.conntrack_cached, n(t.cached));
        set(&self.conntrack_cache_drops, t.cache_drops);
        set(&self.conntrack_unreadable, n(t.unreadable));
        set(&self.translate_answered, t.answered);
        set(&self.translate_dropped, t.asked_dropped);
    }

    /// The buffer now: batches waiting, and loss since start.
    pub fn outbox(&self, buffered: usize, dropped: Dropped) {
        self.buffered.store(n(buffered), Ordering::Relaxed);
        self.dropped_batches
            .store(dropped.batches, Ordering::Relaxed);
        self.dropped_samples
            .store(dropped.samples, Ordering::Relaxed);
    }

    /// The transport took a message of `bytes` (encoded) with `samples`.
    pub fn sent(&self, bytes: usize, samples: usize) {
        self.sent_messages.fetch_add(1, Ordering::Relaxed);
        self.sent_bytes.fetch_add(n(bytes), Ordering::Relaxed);
        self.sent_samples.fetch_add(n(samples), Ordering::Relaxed);
    }

    /// The transport took an announcement of the namespaces' addresses
    /// (counted in [`Self::sent`] too).
    pub fn addresses_sent(&self) {
        self.addresses_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream opened (`reconnect`: not the agent's first) or closed.
    pub fn link(&self, up: bool, reconnect: bool) {
        if up && reconnect {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.connected.store(up, Ordering::Relaxed);
    }

    /// The collector refused a Hello: another machine's agent holds this
    /// host name.
    pub fn hello_refused(&self) {
        self.hellos_refused_name_taken
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A stream opened on `target` (`switched`: another collector than
    /// the latest stream's).
    pub fn collector(&self, target: &crate::collectors::Target, switched: bool) {
        if switched {
            self.collector_switches.fetch_add(1, Ordering::Relaxed);
        }
        let now = (target.url.clone(), target.addr.to_string());
        *self
            .collector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(now);
    }

    /// Whether the probe named in [`PROBES`] is available.
    pub fn probe(&self, name: &str, available: bool) {
        if let Some(i) = PROBES.iter().position(|p| *p == name) {
            self.probes[i].store(available, Ordering::Relaxed);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let flag = |a: &AtomicBool| f64::from(u8::from(a.load(Ordering::Relaxed)));
        let mut e = Exposition::new();
        e.family(
            "tcpstall_agent_build_info",
            Kind::Gauge,
            "Always 1; the agent's version in a label.",
        )
        .sample(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        e.histogram(
            "tcpstall_agent_poll_duration_seconds",
            "Duration of one poll of every namespace read (sock_diag dumps, deeper probes).",
            &self.poll_duration.snapshot(),
        );
        e.single(
            "tcpstall_agent_polls_total",
            Kind::Counter,
            "Polls done.",
            get(&self.polls),
        );
        e.single(
            "tcpstall_agent_kernel_filter_passes_total",
            Kind::Counter,
            "Namespace walks whose first phase the BPF filter did in the kernel (the others: sock_diag's dump of every connection).",
            get(&self.filtered),
        );
        e.single(
            "tcpstall_agent_kernel_filter_failures_total",
            Kind::Counter,
            "First phases the BPF filter failed; each fell back to sock_diag's dump.",
            get(&self.filter_failures),
        );
        e.single(
            "tcpstall_agent_poll_errors_total",
            Kind::Counter,
            "Namespace dumps that failed (the other namespaces of the poll still count).",
            get(&self.namespace_failures),
        );
        e.single(
            "tcpstall_agent_connections",
            Kind::Gauge,
            "TCP connections (listeners excluded) in the last poll.",
            get(&self.connections),
        );
        e.single(
            "tcpstall_agent_suspects",
            Kind::Gauge,
            "Connections whose send queue was stuck in the last poll.",
            get(&self.suspects),
        );
        e.single(
            "tcpstall_agent_follows_total",
            Kind::Counter,
            "Follows done: the held suspects asked for alone between polls.",
            get(&self.follows),
        );
        e.single(
            "tcpstall_agent_follow_requests_total",
            Kind::Counter,
            "Sockets asked for by follows (one exact sock_diag request each).",
            get(&self.follow_requests),
        );
        e.single(
            "tcpstall_agent_follow_skipped_total",
            Kind::Counter,
            "Held suspects a follow left to the next poll: more than follow_max were held.",
            get(&self.follow_skipped),
        );
        let mut ended = e.family(
            "tcpstall_agent_held_ended_total",
            Kind::Counter,
            "Held send queues whose hold ended, by how (moved, drained, closed, reset).",
        );
        for (end, count) in HeldEnd::ALL.iter().zip(&self.held_ended) {
            ended.sample(&[("ended", end.id())], get(count));
        }
        e.single(
            "tcpstall_agent_conntrack_lookups_total",
            Kind::Counter,
            "Connection tracking lookups (one ctnetlink request each) for sent sockets, watched flows with no socket here and Translate requests.",
            get(&self.conntrack_lookups),
        );
        e.single(
            "tcpstall_agent_conntrack_translated_total",
            Kind::Counter,
            "Lookups that found a translated entry (source or destination rewritten).",
            get(&self.conntrack_translated),
        );
        e.single(
            "tcpstall_agent_conntrack_errors_total",
            Kind::Counter,
            "Lookups that failed (no answer in time, refused, malformed); asked again at the next poll.",
            get(&self.conntrack_errors),
        );
        e.single(
            "tcpstall_agent_conntrack_deferred_total",
            Kind::Counter,
            "Sockets and flows whose lookup waited for a later poll: more were due than a poll asks.",
            get(&self.conntrack_deferred),
        );
        e.single(
            "tcpstall_agent_conntrack_cached_sockets",
            Kind::Gauge,
            "Sent sockets whose lookup's answer is kept (one lookup in a socket's life).",
            get(&self.conntrack_cached),
        );
        e.single(
            "tcpstall_agent_conntrack_cache_drops_total",
            Kind::Counter,
            "Answers not kept because the cache was full (those sockets are looked up again).",
            get(&self.conntrack_cache_drops),
        );
        e.single(
            "tcpstall_agent_conntrack_unreadable_namespaces",
            Kind::Gauge,
            "Namespaces whose connection tracking cannot be read (no ctnetlink, not permitted): no translations from them.",
            get(&self.conntrack_unreadable),
        );
        e.family(
            "tcpstall_agent_translate_requests_total",
            Kind::Counter,
            "The collector's Translate requests, answered or dropped (queue full, or their stream ended first).",
        )
        .sample(&[("outcome", "answered")], get(&self.translate_answered))
        .sample(&[("outcome", "dropped")], get(&self.translate_dropped));
        e.single(
            "tcpstall_agent_watched_flows",
            Kind::Gauge,
            "Flows the collector asked this agent to report.",
            get(&self.watched),
        );
        let mut probes = e.family(
            "tcpstall_agent_probe_available",
            Kind::Gauge,
            "1 when the probe works on this host, 0 when it is off, not permitted or unavailable.",
        );
        for (name, available) in PROBES.iter().zip(&self.probes) {
            probes.sample(&[("probe", name)], flag(available));
        }
        e.single(
            "tcpstall_agent_connected",
            Kind::Gauge,
            "1 while a stream to the collector is open.",
            flag(&self.connected),
        );
        e.single(
            "tcpstall_agent_reconnects_total",
            Kind::Counter,
            "Streams to the collector opened after the first one.",
            get(&self.reconnects),
        );
        e.family(
            "tcpstall_agent_hellos_refused_total",
            Kind::Counter,
            "Hellos the collector refused, by reason: name_taken (another machine's agent holds this host name; its log names both).",
        )
        .sample(
            &[("reason", "name_taken")],
            get(&self.hellos_refused_name_taken),
        );
        e.single(
            "tcpstall_agent_collector_switches_total",
            Kind::Counter,
            "Streams opened on another collector (URL or address) than the stream before.",
            get(&self.collector_switches),
        );
        let current = self
            .collector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut info = e.family(
            "tcpstall_agent_collector_info",
            Kind::Gauge,
            "Always 1: the collector of the latest stream, its URL and the address streamed to (none before the first stream).",
        );
        if let Some((url, address)) = &current {
            info.sample(&[("url", url), ("address", address)], 1.0);
        }
        e.single(
            "tcpstall_agent_sent_messages_total",
            Kind::Counter,
            "Messages (hello, batches, heartbeats, address announcements) the stream took for the collector.",
            get(&self.sent_messages),
        );
        e.single(
            "tcpstall_agent_sent_bytes_total",
            Kind::Counter,
            "Encoded bytes of those messages (protobuf, before gRPC framing).",
            get(&self.sent_bytes),
        );
        e.single(
            "tcpstall_agent_sent_samples_total",
            Kind::Counter,
            "Socket samples in the batches the stream took.",
            get(&self.sent_samples),
        );
        e.single(
            "tcpstall_agent_address_announcements_total",
            Kind::Counter,
            "Announcements of the namespaces' addresses after they changed, taken for the collector.",
            get(&self.addresses_sent),
        );
        e.single(
            "tcpstall_agent_buffered_batches",
            Kind::Gauge,
            "Batches waiting in the buffer for the collector.",
            get(&self.buffered),
        );
        e.single(
            "tcpstall_agent_dropped_batches_total",
            Kind::Counter,
            "Batches dropped: buffer full while cut off, or lost with a broken stream.",
            get(&self.dropped_batches),
        );
        e.single(
            "tcpstall_agent_dropped_samples_total",
            Kind::Counter,
            "Samples in dropped batches, and samples cut from a poll larger than a batch.",
            get(&self.dropped_samples),
        );
        e.family(
            "tcpstall_agent_malformed_replies_total",
            Kind::Counter,
            "Parts of the kernel's sock_diag replies that could not be parsed and were skipped.",
        )
        .sample(&[("part", "message")], get(&self.malformed_messages))
        .sample(&[("part", "attribute")], get(&self.malformed_attributes))
        .sample(&[("part", "chunk")], get(&self.truncated_chunks));
        e.single(
            "tcpstall_agent_interrupted_dumps_total",
            Kind::Counter,
            "sock_diag replies the kernel flagged as interrupted (the table changed mid-dump).",
            get(&self.interrupted),
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_family_is_announced_and_the_numbers_are_the_counted_ones() {
        let m = AgentMetrics::default();
        m.probe("sock_diag", true);
        m.probe("getsockopt", true);
        m.probe("nonsense", true);
        m.polled(&PollFigures {
            connections: 120,
            suspects: 2,
            watched: 1,
            failed_namespaces: 1,
            parse: ParseStats {
                malformed_messages: 3,
                ..ParseStats::default()
            },
            filtered: 1,
            filter_failures: 2,
        });
        m.poll_duration.observe(Duration::from_millis(3));
        m.followed(7, 2);
        m.followed(3, 0);
        m.held_ended(&[HeldEnd::Reset, HeldEnd::Moved, HeldEnd::Reset]);
        m.probe("conntrack", true);
        m.translations(&TranslateStats {
            lookups: 12,
            translated: 3,
            errors: 1,
            deferred: 4,
            cached: 5,
            cache_drops: 2,
            answered: 6,
            asked_dropped: 7,
            unreadable: 1,
        });
        m.sent(300, 0);
        m.sent(1200, 4);
        m.addresses_sent();
        m.link(true, false);
        let target = |url: &str, addr: &str| crate::collectors::Target {
            url: url.into(),
            addr: addr.parse().expect("address"),
        };
        m.collector(&target("http://c.example:7786", "10.0.0.1:7786"), false);
        m.link(false, false);
        m.link(true, true);
        m.hello_refused();
        m.collector(&target("http://c.example:7786", "[fd00::2]:7786"), true);
        m.outbox(
            5,
            Dropped {
                batches: 2,
                samples: 9,
            },
        );
        let text = m.render();
        for line in [
            "tcpstall_agent_polls_total 1\n",
            "tcpstall_agent_kernel_filter_passes_total 1\n",
            "tcpstall_agent_kernel_filter_failures_total 2\n",
            "tcpstall_agent_poll_errors_total 1\n",
            "tcpstall_agent_connections 120\n",
            "tcpstall_agent_suspects 2\n",
            "tcpstall_agent_watched_flows 1\n",
            "tcpstall_agent_follows_total 2\n",
            "tcpstall_agent_follow_requests_total 10\n",
            "tcpstall_agent_follow_skipped_total 2\n",
            "tcpstall_agent_held_ended_total{ended=\"reset\"} 2\n",
            "tcpstall_agent_held_ended_total{ended=\"moved\"} 1\n",
            "tcpstall_agent_held_ended_total{ended=\"drained\"} 0\n",
            "tcpstall_agent_probe_available{probe=\"sock_diag\"} 1\n",
            "tcpstall_agent_probe_available{probe=\"bpf\"} 0\n",
            "tcpstall_agent_probe_available{probe=\"getsockopt\"} 1\n",
            "tcpstall_agent_probe_available{probe=\"owner\"} 0\n",
            "tcpstall_agent_probe_available{probe=\"conntrack\"} 1\n",
            "tcpstall_agent_conntrack_lookups_total 12\n",
            "tcpstall_agent_conntrack_translated_total 3\n",
            "tcpstall_agent_conntrack_errors_total 1\n",
            "tcpstall_agent_conntrack_deferred_total 4\n",
            "tcpstall_agent_conntrack_cached_sockets 5\n",
            "tcpstall_agent_conntrack_cache_drops_total 2\n",
            "tcpstall_agent_conntrack_unreadable_namespaces 1\n",
            "tcpstall_agent_translate_requests_total{outcome=\"answered\"} 6\n",
            "tcpstall_agent_translate_requests_total{outcome=\"dropped\"} 7\n",
            "tcpstall_agent_sent_messages_total 2\n",
            "tcpstall_agent_sent_bytes_total 1500\n",
            "tcpstall_agent_sent_samples_total 4\n",
            "tcpstall_agent_address_announcements_total 1\n",
            "tcpstall_agent_connected 1\n",
            "tcpstall_agent_reconnects_total 1\n",
            "tcpstall_agent_hellos_refused_total{reason=\"name_taken\"} 1\n",
            "tcpstall_agent_collector_switches_total 1\n",
            "tcpstall_agent_collector_info{url=\"http://c.example:7786\",address=\"[fd00::2]:7786\"} 1\n",
            "tcpstall_agent_buffered_batches 5\n",
            "tcpstall_agent_dropped_batches_total 2\n",
            "tcpstall_agent_dropped_samples_total 9\n",
            "tcpstall_agent_malformed_replies_total{part=\"message\"} 3\n",
            "tcpstall_agent_poll_duration_seconds_bucket{le=\"0.0025\"} 0\n",
            "tcpstall_agent_poll_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "tcpstall_agent_poll_duration_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        let version = format!(
            "tcpstall_agent_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");

        // Every sample belongs to a family announced by HELP and TYPE
        // before it; names are snake case with the agent's prefix.
        let mut typed = HashSet::new();
        let mut helped = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP name text");
                helped.insert(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
                assert!(typed.insert(name.to_string()), "{name} announced twice");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let name = series.split('{').next().expect("name");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} sampled before its TYPE");
            assert!(name.starts_with("tcpstall_agent_"), "{name}");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            value.parse::<f64>().expect("numeric value");
        }
    }
}
