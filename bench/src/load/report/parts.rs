//! The report's part for the system as a whole: CPU by part (the collector
//! nodes, NATS, PostgreSQL with its backends) and per sample taken, the
//! traffic on the bus and to the store, every counter of loss, and one
//! summary line for a comparison table. Printed in every mode: a single
//! collector on SQLite shows its NATS and PostgreSQL parts as zero.

use std::time::Duration;

use super::super::snap::Snap;
use super::super::system::System;
use crate::procfs::{self, Ticks};

pub(super) fn parts(system: &System, s: &Snap, e: &Snap, wall: Duration, cores: f64) {
    let d = |a: u64, b: u64| a.saturating_sub(b) as i64;
    let taken = d(e.samples_taken, s.samples_taken).max(1) as f64;
    let offered = d(e.samples_offered, s.samples_offered);
    let t = e.parts.since(&s.parts);
    let us = |ticks: u64| ticks as f64 / procfs::clock_ticks() as f64 * 1e6 / taken;
    let total = t.total();
    println!(
        "The system as a whole ({} collector node(s), {} NATS server(s), store {}), over the window:",
        system.nodes.len(),
        system.ports().nats.len(),
        system.store_name()
    );
    println!();
    println!("| part | CPU % of one core (user + sys) | % of the machine | CPU per sample taken |");
    println!("|---|---:|---:|---:|");
    let line = |name: &str, x: Ticks| {
        let p = procfs::percent_of_core(x.total(), wall);
        println!(
            "| {name} | {p:.1} ({:.1} + {:.1}) | {:.1} | {:.2} µs |",
            procfs::percent_of_core(x.user, wall),
            procfs::percent_of_core(x.sys, wall),
            p / cores,
            us(x.total())
        );
    };
    line("collector node(s)", t.nodes);
    line("NATS server(s)", t.nats);
    line("PostgreSQL (postmaster and backends)", t.postgres);
    let all = Ticks {
        user: t.nodes.user + t.nats.user + t.postgres.user,
        sys: t.nodes.sys + t.nats.sys + t.postgres.sys,
    };
    line("**all of them**", all);
    println!();

    let delta =
        |k: &str| e.totals.get(k).copied().unwrap_or(0.0) - s.totals.get(k).copied().unwrap_or(0.0);
    let since_start = |k: &str| e.totals.get(k).copied().unwrap_or(0.0);
    let published = delta("tcpstall_collector_batch_parts_published_total");
    println!("| traffic over the window | /s | per sample taken |");
    println!("|---|---:|---:|");
    let traffic = |k: &str, v: f64, unit: &str| {
        println!(
            "| {k} | {:.0}{unit} | {:.3}{unit} |",
            v / wall.as_secs_f64(),
            v / taken
        );
    };
    traffic("samples taken by the nodes' streams", taken, "");
    traffic(
        "bundles published to the samples stream (NATS messages in)",
        delta("tcpstall_collector_batch_bundles_published_total"),
        "",
    );
    traffic(
        "bundles read by the partitions (NATS messages out)",
        delta("tcpstall_collector_batch_bundles_read_total"),
        "",
    );
    traffic("batch parts published in those bundles", published, "");
    traffic(
        "batch parts handled by the partitions' matchers",
        delta("tcpstall_collector_batch_parts_handled_total"),
        "",
    );
    traffic(
        "watch requests forwarded through NATS to the agents' nodes",
        delta("tcpstall_collector_fleet_requests_forwarded_total"),
        "",
    );
    traffic(
        "bytes into the NATS servers (client connections)",
        d(e.nats_in, s.nats_in) as f64,
        " B",
    );
    traffic(
        "bytes out of the NATS servers",
        d(e.nats_out, s.nats_out) as f64,
        " B",
    );
    traffic("bytes into PostgreSQL", d(e.pg_in, s.pg_in) as f64, " B");
    traffic(
        "bytes out of PostgreSQL",
        d(e.pg_out, s.pg_out) as f64,
        " B",
    );
    traffic(
        "store rows written by committed transactions",
        delta("tcpstall_collector_store_rows_total"),
        "",
    );
    traffic(
        "store sample rows",
        (e.samples_stored - s.samples_stored) as f64,
        "",
    );
    traffic(
        "store episodes (new)",
        (e.db.episodes_max - s.db.episodes_max) as f64,
        "",
    );
    traffic(
        "store transactions",
        delta("tcpstall_collector_store_transactions_total"),
        "",
    );
    println!();

    println!("| lost or refused | in the window | since start |");
    println!("|---|---:|---:|");
    for k in [
        "tcpstall_collector_batch_parts_failed_total",
        "tcpstall_collector_batch_parts_unknown_host_dropped_total",
        "tcpstall_collector_batch_parts_stale_total",
        "tcpstall_collector_batch_parts_late_total",
        "tcpstall_collector_batch_parts_malformed_total",
        "tcpstall_collector_store_writes_dropped_total",
        "tcpstall_collector_store_write_errors_total",
        "tcpstall_collector_host_registrations_failed_total",
        "tcpstall_collector_partitions_lost_total",
    ] {
        println!("| {k} | {:.0} | {:.0} |", delta(k), since_start(k));
    }
    println!(
        "| the simulated agents' samples (batches) dropped | {} ({}) | {} ({}) |",
        d(e.samples_dropped, s.samples_dropped),
        d(e.batches_dropped, s.batches_dropped),
        e.samples_dropped,
        e.batches_dropped
    );
    println!();
    if system.fleet() {
        println!(
            "Per node at the end: partitions owned {:?}; batch parts handled {:?}; published {:?}.",
            system.per_node("tcpstall_collector_partitions_owned"),
            system.per_node("tcpstall_collector_batch_parts_handled_total"),
            system.per_node("tcpstall_collector_batch_parts_published_total"),
        );
        println!();
    }
    println!(
        "Summary: nodes {} store {} | samples/s taken {:.0} of {:.0} offered | CPU per sample {:.2} µs \
         (nodes {:.2}, NATS {:.2}, PostgreSQL {:.2}) | % of the machine {:.1} (nodes {:.1}, NATS {:.1}, \
         PostgreSQL {:.1})",
        system.nodes.len(),
        system.store_name(),
        taken / wall.as_secs_f64(),
        offered as f64 / wall.as_secs_f64(),
        us(total),
        us(t.nodes.total()),
        us(t.nats.total()),
        us(t.postgres.total()),
        procfs::percent_of_core(total, wall) / cores,
        procfs::percent_of_core(t.nodes.total(), wall) / cores,
        procfs::percent_of_core(t.nats.total(), wall) / cores,
        procfs::percent_of_core(t.postgres.total(), wall) / cores,
    );
    println!();
}
