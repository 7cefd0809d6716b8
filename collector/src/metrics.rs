//! The collector's Prometheus endpoint: `GET /metrics` on
//! `--metrics-listen`, in the text exposition format.
//!
//! Each scrape asks the matcher and the gateway for their counters (like a
//! query does) and
//! reads the store's and the ingest service's atomics. Names follow
//! Prometheus conventions: `tcpstall_collector_` prefix, `_total` for
//! counters, base units (seconds), one `diagnosis` label with the ids of
//! docs/design.md's table, every id present (zero included) so that a rule on a
//! diagnosis never sees a missing series.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tcpstall_common::HeldEnd;
use tcpstall_prom::{Exposition, HistogramSnapshot, Kind};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::gateway::{GatewayStats, Input};
use crate::matcher::held;
use crate::matcher::{Question, Stats};
use crate::store::{SharedStore, StoreStatsSnapshot};
use tcpstall_common::Diagnosis;

/// How long a scrape waits for the matcher and the gateway before
/// answering 503.
const ROLES_WAIT: Duration = Duration::from_secs(5);

/// Where the figures come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub matcher: mpsc::Sender<Question>,
    pub gateway: mpsc::Sender<Input>,
    pub store: SharedStore,
    /// Agent messages refused (the ingest service's counter).
    pub refused: Arc<AtomicU64>,
    /// TLS handshakes refused (the listener's counter).
    pub tls_refused: Arc<AtomicU64>,
    /// Fleet mode's counters, when the collector is a fleet node.
    pub fleet: Option<Arc<crate::fleet::FleetStats>>,
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, sources: Sources, shutdown: impl Future<Output = ()>) {
    let render = move || scrape(sources.clone());
    tcpstall_prom::serve(listener, render, shutdown).await;
}

/// One scrape: the matcher's counters (asked like a query), the store's
/// and the ingest service's atomics.
async fn scrape(sources: Sources) -> Result<String, String> {
    let asked = async {
        let (reply, stats) = oneshot::channel();
        sources.matcher.send(Question::Stats { reply }).await.ok()?;
        let stats = stats.await.ok()?;
        let (reply, gateway) = oneshot::channel();
        sources.gateway.send(Input::Stats { reply }).await.ok()?;
        Some((stats, gateway.await.ok()?))
    };
    match tokio::time::timeout(ROLES_WAIT, asked).await {
        Ok(Some((stats, gateway))) => {
            let mut text = render(
                &stats,
                &gateway,
                &sources.store.stats(),
                Refused {
                    messages: sources.refused.load(Ordering::Relaxed),
                    handshakes: sources.tls_refused.load(Ordering::Relaxed),
                },
                Heap::now(),
            );
            if let Some(fleet) = &sources.fleet {
                text.push_str(&fleet.render());
            }
            Ok(text)
        }
        _ => Err("the matcher or the gateway did not answer".into()),
    }
}

/// What the gRPC edge refused, counted since start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refused {
    /// Agent messages (malformed, oversized, impossible, unauthorised).
    pub messages: u64,
    /// TLS handshakes (unknown CA, expired certificate, not TLS at all).
    pub handshakes: u64,
}

/// The allocator's own figures (jemalloc's, when it is the process's
/// allocator: `tcpstall-collector`, not an embedding such as the demo).
#[derive(Debug, Clone, Copy, Default)]
pub struct Heap {
    /// Bytes the program holds.
    pub allocated: usize,
    /// Bytes of memory the allocator has in physical pages.
    pub resident: usize,
}

impl Heap {
    /// Now, or `None` where jemalloc allocated nothing (not the allocator)
    /// or cannot say.
    pub fn now() -> Option<Heap> {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        let heap = Heap {
            allocated: stats::allocated::read().ok()?,
            resident: stats::resident::read().ok()?,
        };
        (heap.allocated > 0).then_some(heap)
    }
}

/// The exposition text.
pub fn render(
    stats: &Stats,
    gateway: &GatewayStats,
    store: &StoreStatsSnapshot,
    refused: Refused,
    heap: Option<Heap>,
) -> String {
    let mut out = Exposition::new();
    let mut one = |name: &str, kind: Kind, help: &str, value: f64| {
        out.single(name, kind, help, value);
    };
    one(
        "tcpstall_collector_agents_connected",
        Kind::Gauge,
        "Agents with an open stream.",
        gateway.agents as f64,
    );
    one(
        "tcpstall_collector_suspects",
        Kind::Gauge,
        "Connections whose send queue is reported stuck now.",
        stats.suspects as f64,
    );
    one(
        "tcpstall_collector_watched_peers",
        Kind::Gauge,
        "Peer ends agents are asked to report now.",
        stats.watched as f64,
    );
    one(
        "tcpstall_collector_tracked_bytes",
        Kind::Gauge,
        "Estimated bytes of the suspects and watched peers held: tables and kept samples.",
        stats.tracked_bytes as f64,
    );
    if let Some(heap) = heap {
        one(
            "tcpstall_collector_heap_allocated_bytes",
            Kind::Gauge,
            "Bytes allocated by the collector (jemalloc).",
            heap.allocated as f64,
        );
        one(
            "tcpstall_collector_heap_resident_bytes",
            Kind::Gauge,
            "Bytes of physical memory the allocator holds (jemalloc).",
            heap.resident as f64,
        );
    }
    one(
        "tcpstall_collector_samples_received_total",
        Kind::Counter,
        "Samples received from agents.",
        stats.samples as f64,
    );
    one(
        "tcpstall_collector_address_updates_total",
        Kind::Counter,
        "Address announcements applied: an agent said its addresses changed, and its host owns the new ones.",
        stats.addresses_applied as f64,
    );
    one(
        "tcpstall_collector_address_updates_stale_total",
        Kind::Counter,
        "Address announcements ignored: they came on a stream its host had already replaced.",
        stats.addresses_stale as f64,
    );
    one(
        "tcpstall_collector_messages_refused_total",
        Kind::Counter,
        "Agent messages refused as malformed, oversized or impossible, or from an agent its certificate does not name.",
        refused.messages as f64,
    );
    one(
        "tcpstall_collector_tls_handshakes_refused_total",
        Kind::Counter,
        "TLS handshakes refused: a certificate from an unknown CA, expired, or no TLS at all.",
        refused.handshakes as f64,
    );
    one(
        "tcpstall_collector_requests_dropped_total",
        Kind::Counter,
        "Watch and unwatch requests dropped on a full queue: the gateway's or an agent's (watches are asked again).",
        (stats.requests_dropped + gateway.requests_dropped) as f64,
    );
    one(
        "tcpstall_collector_peers_joined_via_translation_total",
        Kind::Counter,
        "Suspects whose peer was looked for again at a translated 4-tuple (a NAT between the ends: the peer's host's or a gateway's conntrack).",
        stats.joined_via_translation as f64,
    );
    one(
        "tcpstall_collector_translate_requests_total",
        Kind::Counter,
        "Translate requests asked of forwarding hosts because a direct join failed.",
        stats.translate_asked as f64,
    );
    one(
        "tcpstall_collector_translate_requests_skipped_total",
        Kind::Counter,
        "Forwarding hosts not asked to translate a flow: beyond the most asked for one flow.",
        stats.translate_skipped as f64,
    );
    one(
        "tcpstall_collector_agent_dropped_batches",
        Kind::Gauge,
        "Batches the connected agents report having dropped while cut off.",
        gateway.agent_dropped_batches as f64,
    );
    one(
        "tcpstall_collector_store_writes_dropped_total",
        Kind::Counter,
        "Writes the store refused (queue full or stopped).",
        store.dropped as f64,
    );
    one(
        "tcpstall_collector_store_write_errors_total",
        Kind::Counter,
        "Writes that failed in SQLite.",
        store.write_errors as f64,
    );
    one(
        "tcpstall_collector_store_rows_total",
        Kind::Counter,
        "Rows written by committed transactions.",
        store.committed_rows as f64,
    );
    one(
        "tcpstall_collector_store_samples_total",
        Kind::Counter,
        "Sample rows inserted by committed transactions.",
        store.samples_stored as f64,
    );
    one(
        "tcpstall_collector_store_transactions_total",
        Kind::Counter,
        "Write transactions committed.",
        store.transactions as f64,
    );
    one(
        "tcpstall_collector_store_last_commit_seconds",
        Kind::Gauge,
        "Duration of the latest write transaction, BEGIN to COMMIT.",
        store.last_commit_micros as f64 / 1e6,
    );
    one(
        "tcpstall_collector_store_max_commit_seconds",
        Kind::Gauge,
        "Longest write transaction since start.",
        store.max_commit_micros as f64 / 1e6,
    );
    one(
        "tcpstall_collector_store_pruned_rows_total",
        Kind::Counter,
        "Rows deleted by retention and the size bound: episodes, their samples, held-span counts.",
        store.pruned_rows as f64,
    );
    one(
        "tcpstall_collector_store_pruned_episodes_total",
        Kind::Counter,
        "Episodes deleted by retention.",
        store.pruned_episodes as f64,
    );
    out.family(
        "tcpstall_collector_hellos_refused_total",
        Kind::Counter,
        "Agents' Hellos refused, by reason: name_taken (another machine's live agent holds the host name), full (max_agents streams open).",
    )
    .sample(&[("reason", "name_taken")], gateway.hellos_refused_name_taken as f64)
    .sample(&[("reason", "full")], gateway.hellos_refused_full as f64);
    out.single(
        "tcpstall_collector_hellos_without_machine_id_total",
        Kind::Counter,
        "Agents' Hellos that said no machine id (older agents): their host name is not guarded, another machine's Hello replaces them.",
        gateway.hellos_without_machine_id as f64,
    );
    let mut labelled = |name: &str, kind: Kind, help: &str, value: &dyn Fn(usize) -> f64| {
        let mut family = out.family(name, kind, help);
        for (i, d) in Diagnosis::ALL.iter().enumerate() {
            family.sample(&[("diagnosis", d.id())], value(i));
        }
    };
    labelled(
        "tcpstall_collector_episodes_open",
        Kind::Gauge,
        "Episodes open now, by their current diagnosis.",
        &|i| stats.open_by_diagnosis[i] as f64,
    );
    labelled(
        "tcpstall_collector_episodes_total",
        Kind::Counter,
        "Episodes opened since start, by the diagnosis they opened with.",
        &|i| stats.opened_by_diagnosis[i] as f64,
    );
    let held: Vec<HistogramSnapshot> = stats
        .held
        .by_end
        .iter()
        .map(|h| HistogramSnapshot {
            bounds: &held::BUCKETS_S,
            counts: h.counts[..held::BUCKETS_S.len()].to_vec(),
            count: h.count(),
            sum_seconds: h.sum_ms as f64 / 1e3,
        })
        .collect();
    let labels: Vec<[(&str, &str); 1]> = HeldEnd::ALL.iter().map(|e| [("ended", e.id())]).collect();
    let series: Vec<(&[(&str, &str)], &HistogramSnapshot)> =
        labels.iter().map(|l| &l[..]).zip(held.iter()).collect();
    out.histograms(
        "tcpstall_collector_held_seconds",
        "How long each held send queue that ended was held (its agent's measure), episode or not, by how it ended: moved, drained, closed (a FIN either way), reset (gone while open).",
        &series,
    );
    out.single(
        "tcpstall_collector_held_uncounted_total",
        Kind::Counter,
        "Held spans in the histogram but not counted by host pair: too many pairs at once.",
        stats.held.dropped as f64,
    );
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_diagnosis_has_its_series_and_the_format_parses() {
        let mut stats = Stats {
            samples: 1234,
            requests_dropped: 1,
            joined_via_translation: 6,
            translate_asked: 8,
            addresses_applied: 6,
            addresses_stale: 1,
            ..Stats::default()
        };
        let gateway = GatewayStats {
            agents: 3,
            agent_dropped_batches: 4,
            requests_dropped: 2,
            hellos_refused_name_taken: 3,
            hellos_refused_full: 1,
            hellos_without_machine_id: 5,
        };
        stats.open_by_diagnosis[Diagnosis::AckLost.index()] = 2;
        stats.opened_by_diagnosis[Diagnosis::AckLost.index()] = 5;
        let reset = &mut stats.held.by_end[HeldEnd::Reset.index()];
        reset.counts[9] = 3; // three spans of 9 to 10 s
        reset.counts[10] = 1; // one of 10 to 12 s
        reset.sum_ms = 39_000;
        let refused = Refused {
            messages: 7,
            handshakes: 2,
        };
        let heap = Heap {
            allocated: 1000,
            resident: 4096,
        };
        let text = render(
            &stats,
            &gateway,
            &StoreStatsSnapshot::default(),
            refused,
            Some(heap),
        );
        assert!(text.contains("tcpstall_collector_agents_connected 3\n"));
        assert!(text.contains("tcpstall_collector_requests_dropped_total 3\n"));
        assert!(text.contains("tcpstall_collector_agent_dropped_batches 4\n"));
        assert!(text.contains("tcpstall_collector_peers_joined_via_translation_total 6\n"));
        assert!(text.contains("tcpstall_collector_translate_requests_total 8\n"));
        assert!(text.contains("tcpstall_collector_heap_allocated_bytes 1000\n"));
        assert!(text.contains("tcpstall_collector_heap_resident_bytes 4096\n"));
        assert!(text.contains("tcpstall_collector_samples_received_total 1234\n"));
        assert!(text.contains("tcpstall_collector_address_updates_total 6\n"));
        assert!(text.contains("tcpstall_collector_address_updates_stale_total 1\n"));
        assert!(text.contains("tcpstall_collector_messages_refused_total 7\n"));
        assert!(text.contains("tcpstall_collector_tls_handshakes_refused_total 2\n"));
        assert!(
            text.contains("tcpstall_collector_hellos_refused_total{reason=\"name_taken\"} 3\n")
        );
        assert!(text.contains("tcpstall_collector_hellos_refused_total{reason=\"full\"} 1\n"));
        assert!(text.contains("tcpstall_collector_hellos_without_machine_id_total 5\n"));
        assert!(text.contains("tcpstall_collector_episodes_open{diagnosis=\"ack_lost\"} 2\n"));
        assert!(text.contains("tcpstall_collector_episodes_total{diagnosis=\"ack_lost\"} 5\n"));
        for line in [
            "tcpstall_collector_held_seconds_bucket{ended=\"reset\",le=\"9\"} 0\n",
            "tcpstall_collector_held_seconds_bucket{ended=\"reset\",le=\"10\"} 3\n",
            "tcpstall_collector_held_seconds_bucket{ended=\"reset\",le=\"12\"} 4\n",
            "tcpstall_collector_held_seconds_bucket{ended=\"reset\",le=\"+Inf\"} 4\n",
            "tcpstall_collector_held_seconds_sum{ended=\"reset\"} 39\n",
            "tcpstall_collector_held_seconds_count{ended=\"moved\"} 0\n",
            "tcpstall_collector_held_seconds_count{ended=\"closed\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing in\n{text}");
        }
        for d in Diagnosis::ALL {
            let series = format!(
                "tcpstall_collector_episodes_open{{diagnosis=\"{}\"}} ",
                d.id()
            );
            assert!(text.contains(&series), "{series} missing");
        }
        // Every sample line: a name (with labels), a space, a number; every
        // family announced by HELP and TYPE before its samples.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
                typed.insert(name.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let name = series.split('{').next().expect("name");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "{name} sampled before its TYPE");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            value.parse::<f64>().expect("numeric value");
        }
    }
}
