//! Real stalls judged from an older kernel's facts: the agents read
//! `tcp_info` cut to 3.10's 104 bytes or 4.18's 200
//! (`TCPSTALL_AGENT_TCP_INFO_LEN`), as those kernels send it, while this
//! kernel's sockets stall for real. The verdicts are docs/kernels.md's
//! table, and each names the facts it rested on and those it went
//! without. The fallbacks' signals are this kernel's own (its zero-window
//! probe timer and backoff, its receive memory against its buffer), so
//! these tests would catch a fallback that only holds in a fixture.

use std::time::SystemTime;

use tcpstall_proto::v1;
use tcpstall_tests::lab::workload::{Reader, Rpc, Writer};
use tcpstall_tests::lab::{evidence, Lab, Settings};
use tcpstall_tests::require_root;

use crate::expect_one;
use crate::faults::{
    client_acks_dropped, client_stops_reading, refusing_qdisc, server_data_dropped,
    window_updates_dropped,
};

const HOSTS: &[&str] = &["client", "server"];

/// A lab whose agents read `tcp_info` as a kernel that sends `len` bytes.
fn lab_of(len: usize) -> Lab {
    let env = format!("TCPSTALL_AGENT_TCP_INFO_LEN={len}");
    Lab::start_wrapped(HOSTS, Settings::FAST, &["env", &env])
}

/// Waits for the one episode of `want` and checks its basis.
fn judged(
    lab: &Lab,
    rpc: &Rpc,
    fault: SystemTime,
    want: &str,
    rested_on: &[&str],
    missing: &[&str],
) -> v1::Episode {
    let (e, _, _) = expect_one(lab, rpc, want, fault);
    assert_eq!(e.rested_on, rested_on, "rested on: {e:#?}");
    assert_eq!(e.missing, missing, "went without: {e:#?}");
    for m in missing.iter().filter(|m| **m != "a_cork") {
        assert!(
            !e.evidence.contains_key(*m),
            "{m} is missing, yet in the evidence: {e:#?}"
        );
    }
    // The operator reads the same in `show --json`.
    let shown = lab.cli(&["show", &e.id.to_string()]);
    assert_eq!(
        shown["rested_on"],
        serde_json::json!(rested_on),
        "{shown:#}"
    );
    assert_eq!(shown["missing"], serde_json::json!(missing), "{shown:#}");
    e
}

const ZERO_WINDOW: [&str; 4] = ["a_backoff", "a_probe_timer", "b_rmem_alloc", "b_rcvbuf"];
const NO_WINDOWS: [&str; 2] = ["a_snd_wnd", "b_rcv_wnd"];

/// A's probe timer runs and has backed off; B's buffer is at least 7/8
/// full: the signals a kernel without windows gives of a closed one.
fn assert_a_closed_window_as_old_kernels_show_it(e: &v1::Episode, b_full: bool) {
    let ev = |n| evidence(e, n);
    assert_eq!(ev("a_probe_timer"), 1, "A's zero-window probe timer runs");
    assert!(ev("a_backoff") > 0, "and has backed off");
    let (rmem, rcvbuf) = (ev("b_rmem_alloc"), ev("b_rcvbuf"));
    assert_eq!(
        rmem >= rcvbuf - rcvbuf / 8,
        b_full,
        "B's receive memory {rmem} of {rcvbuf}"
    );
}

#[test]
fn a_reader_that_stopped_on_4_18_or_3_10_is_peer_not_reading_by_its_full_buffer() {
    require_root!();
    for len in [200, 104] {
        let lab = lab_of(len);
        let (rpc, _reader, _writer, fault) = client_stops_reading(&lab);
        let e = judged(
            &lab,
            &rpc,
            fault,
            "peer_not_reading",
            &ZERO_WINDOW,
            &NO_WINDOWS,
        );
        assert_a_closed_window_as_old_kernels_show_it(&e, true);
        assert!(evidence(&e, "b_recvq") > 0, "B holds it unread");
        assert_eq!(
            e.evidence.contains_key("a_snd_una"),
            len >= 136,
            "byte positions from 4.1 on"
        );
    }
}

#[test]
fn a_lost_window_update_on_4_18_is_told_by_b_s_empty_buffer() {
    require_root!();
    let lab = lab_of(200);
    let (rpc, _reader, _writer, fault) = window_updates_dropped(&lab);
    let e = judged(
        &lab,
        &rpc,
        fault,
        "window_update_lost",
        &ZERO_WINDOW,
        &NO_WINDOWS,
    );
    assert_a_closed_window_as_old_kernels_show_it(&e, false);
    assert_eq!(evidence(&e, "b_recvq"), 0, "B read it all");
}

#[test]
fn data_lost_on_4_18_is_data_lost_without_the_window() {
    require_root!();
    let lab = lab_of(200);
    let (rpc, _reader, _writer, fault) = server_data_dropped(&lab);
    let rested = [
        "a_snd_una",
        "a_inflight",
        "a_retransmits",
        "a_backoff",
        "a_probe_timer",
        "b_rcv_nxt",
    ];
    let e = judged(&lab, &rpc, fault, "data_lost", &rested, &["a_snd_wnd"]);
    assert_eq!(
        evidence(&e, "a_probe_timer"),
        0,
        "A retransmits, no window probes"
    );
}

#[test]
fn losses_either_way_on_3_10_are_lost_in_network() {
    require_root!();
    let rested = [
        "a_unacked",
        "a_retransmits",
        "a_backoff",
        "a_probe_timer",
        "b_recvq",
    ];
    let missing = ["a_snd_una", "a_inflight", "a_snd_wnd", "b_rcv_nxt"];
    type Fault = fn(&Lab) -> (Rpc, Reader, Writer, SystemTime);
    let faults: [(&str, Fault); 2] = [("data", server_data_dropped), ("acks", client_acks_dropped)];
    for (what, fault_of) in faults {
        let lab = lab_of(104);
        let (rpc, _reader, _writer, fault) = fault_of(&lab);
        let e = judged(&lab, &rpc, fault, "lost_in_network", &rested, &missing);
        assert!(evidence(&e, "a_unacked") > 0, "{what}: segments in flight");
        let server_or_client = if what == "data" { "client" } else { "server" };
        assert!(
            lab.host(server_or_client).nft_packets(what) > 0,
            "{what} were dropped"
        );
    }
}

/// A host that will not send runs the same probe timer as a zero window;
/// its probes fail at home and back nothing off. Without `snd_wnd` this is
/// what keeps it from reading as a lost window update.
#[test]
fn a_refusing_qdisc_on_4_18_is_unsent_unblocked_not_a_zero_window() {
    require_root!();
    let lab = lab_of(200);
    let (rpc, _reader, _writer, fault) = refusing_qdisc(&lab);
    let rested = [
        "a_snd_una",
        "a_notsent",
        "a_inflight",
        "a_backoff",
        "a_probe_timer",
        "a_cork", // the agents' probes read it here
        "b_rcv_nxt",
    ];
    let e = judged(
        &lab,
        &rpc,
        fault,
        "unsent_unblocked",
        &rested,
        &["a_snd_wnd"],
    );
    assert_eq!(evidence(&e, "a_probe_timer"), 1, "the probe timer runs");
    assert_eq!(evidence(&e, "a_backoff"), 0, "and backs nothing off");
}
