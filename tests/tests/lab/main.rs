//! The lab (issue 5): namespace hosts joined by veth, a real agent on each
//! and a real collector, faults injected with nftables and tc, and every
//! diagnosis reproduced end to end; controls that must give no episode;
//! what a corked sender really looks like. Needs root; skips without it.
//!
//! The client sends the request, the server answers: the server's end is
//! the stuck sender (the tool's "A"), the client's its peer ("B").
//! Results are printed as `lab-result` lines (docs/lab.md has the table).

/// A scenario runs at the lab's fast settings and at the tools' defaults:
/// `at_both_settings!(scenario: fast_test, defaults_test)` makes the two
/// tests of `fn scenario(s: Settings)`.
macro_rules! at_both_settings {
    ($scenario:ident: $fast:ident, $defaults:ident) => {
        #[test]
        fn $fast() {
            tcpstall_tests::require_root!();
            $scenario(tcpstall_tests::lab::Settings::FAST);
        }

        #[test]
        fn $defaults() {
            tcpstall_tests::require_root!();
            $scenario(tcpstall_tests::lab::Settings::DEFAULTS);
        }
    };
}

mod addresses;
mod controls;
mod cork;
mod faults;
mod fleet;
mod incidents;
mod kernels;
mod nat;
mod owner;
mod question;
mod topology;
mod web;

use std::time::{Duration, Instant, SystemTime};

use tcpstall_common::time::unix_ms;
use tcpstall_proto::v1;
use tcpstall_tests::lab::workload::Rpc;
use tcpstall_tests::lab::{flow_of, Lab, Outcome, Settings};

/// The response the client asks for: more than its receive window and the
/// server's send buffer hold, so that a stall leaves bytes queued.
pub const RESPONSE: u64 = 16 << 20;

/// Panics if the collector has any episode at some moment during `dur`
/// (checked every 100 ms): what a control must show over its whole run.
pub fn assert_no_episode_for(lab: &Lab, dur: Duration, what: &str) {
    let end = Instant::now() + dur;
    loop {
        let eps = lab.episodes();
        assert!(eps.is_empty(), "{what} became an episode: {eps:#?}");
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// When a fault was detected, after the fault.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    /// The collector opened the episode: the collector's clock on the A
    /// sample that crossed the threshold (both clocks are this machine's).
    pub opened: Duration,
    /// The test first saw the right diagnosis through a query.
    pub seen: Duration,
}

/// What every fault must show: one episode of the server's end (its flow
/// as the server sees it: towards `rpc.server_peer`) with diagnosis
/// `want`, opened within the threshold and two polls of `fault`, still the
/// only episode and still `want` two polls later, both ends named. Returns the episode (as last read), its samples and when it was
/// detected.
pub fn expect_one(
    lab: &Lab,
    rpc: &Rpc,
    want: &str,
    fault: SystemTime,
) -> (v1::Episode, v1::GetEpisodeResponse, Detection) {
    expect_one_with_b(lab, rpc, want, fault, &lab.host("client").name)
}

/// As [`expect_one`], with B's host named `b_host` ("" when no agent
/// covers it).
pub fn expect_one_with_b(
    lab: &Lab,
    rpc: &Rpc,
    want: &str,
    fault: SystemTime,
    b_host: &str,
) -> (v1::Episode, v1::GetEpisodeResponse, Detection) {
    let s = lab.settings;
    let bound = s.detection_bound();
    let (_, seen) = lab.wait_for_diagnosis(
        rpc.server_addr,
        rpc.server_peer,
        want,
        fault,
        bound + Duration::from_secs(5),
    );
    // Two more polls: no second episode, and the verdict holds.
    let end = Instant::now() + 2 * s.interval;
    let eps = loop {
        let eps = lab.episodes();
        assert_eq!(eps.len(), 1, "exactly one episode: {eps:#?}");
        if Instant::now() >= end {
            break eps;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let e = eps.into_iter().next().expect("one episode");
    assert_eq!(flow_of(&e), Some((rpc.server_addr, rpc.server_peer)));
    assert_eq!(e.diagnosis, want, "the verdict held: {e:#?}");
    assert!(e.open, "still stuck, still open: {e:#?}");
    assert_eq!(e.a_host, lab.host("server").name, "A is the server");
    assert_eq!(e.b_host, b_host, "B joined: {e:#?}");
    let detail = lab.episode(e.id);
    // The collector stores the stall's first A sample when it opens the
    // episode, then the one that crossed the threshold.
    let threshold_ms = u64::try_from(s.threshold.as_millis()).unwrap_or(u64::MAX);
    let mut a: Vec<(i64, u64)> = detail
        .samples
        .iter()
        .filter(|x| x.side == "a")
        .filter_map(|x| x.sample.as_ref().map(|a| (x.at_ms, a.unchanged_ms)))
        .collect();
    a.sort_unstable();
    let opened_ms = match a.as_slice() {
        [(at, unchanged), ..] if *unchanged >= threshold_ms => *at,
        [_, (at, _), ..] => *at,
        _ => panic!("no A sample of the opening: {detail:#?}"),
    };
    let opened = Duration::from_millis(u64::try_from(opened_ms - unix_ms(fault)).unwrap_or(0));
    assert!(
        opened <= bound,
        "{want} opened {opened:?} after the fault, later than threshold + 2 polls ({bound:?})"
    );
    (e, detail, Detection { opened, seen })
}

/// A scenario's name for the docs' table, with the settings when they are
/// the tools' defaults.
pub fn scenario(name: &str, s: Settings) -> String {
    if s == Settings::DEFAULTS {
        format!("{name} (defaults)")
    } else {
        name.to_string()
    }
}

/// Records a fault's outcome for the docs.
pub fn record(
    scenario: &str,
    expected: &str,
    e: &v1::Episode,
    detected: Detection,
    s: Settings,
    note: String,
) {
    Outcome {
        scenario,
        expected,
        observed: &e.diagnosis,
        detected: Some((detected.opened, detected.seen)),
        settings: s,
        note,
    }
    .record();
}

/// The A sample stored last (the longest stuck).
pub fn latest_a(detail: &v1::GetEpisodeResponse) -> &v1::Sample {
    detail
        .samples
        .iter()
        .filter(|x| x.side == "a")
        .filter_map(|x| x.sample.as_ref())
        .max_by_key(|a| a.unchanged_ms)
        .expect("an A sample")
}
