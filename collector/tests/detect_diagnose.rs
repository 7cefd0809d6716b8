//! The detector and the diagnosis on hand-made samples; time is passed in,
//! so a 10 s threshold tests in microseconds. The detector is one track's
//! state machine: what the collector does with its events (the table of
//! tracks, their suspects, drains and hosts going) is tested in
//! `matcher.rs`.

use std::time::Duration;

use tcpstall_collector::matcher::detector::{Event, Restart, Track};
use tcpstall_collector::matcher::diagnose::{diagnose, Peer};
use tcpstall_common::{Diagnosis, EndReason, EndSample, HeldEnd, HeldSpan, TimerKind};

mod support;
use support::{a_end, b_end};

const T: Duration = Duration::from_secs(10);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A track of `s` first seen at `at`, after its first step.
fn track(s: &EndSample, at: f64) -> Track {
    let mut t = Track::new(s, secs(at));
    let first = t.step(s, secs(at), T);
    assert_eq!(first.restart, None, "a first sample restarts nothing");
    t
}

fn opened(cookie: u64, stuck_for: f64) -> Option<Event> {
    Some(Event::Opened {
        cookie,
        stuck_for: secs(stuck_for),
    })
}

fn closed(cookie: u64, reason: EndReason, stuck_for: f64) -> Option<Event> {
    Some(Event::Closed {
        cookie,
        reason,
        stuck_for: secs(stuck_for),
    })
}

#[test]
fn threshold_is_exact_9_9_s_nothing_10_1_s_episode() {
    let a = a_end(1, 5000, 3000);
    let mut t = track(&a, 100.0);
    let early = t.step(&a, secs(109.9), T);
    assert_eq!(early.opened, None, "9.9 s is not yet an episode");
    assert_eq!(early.held, secs(9.9));
    let step = t.step(&a, secs(110.1), T);
    assert_eq!(step.opened, opened(1, 10.1));
    assert_eq!(step.restart, None);
    assert!(t.is_open());
    assert_eq!(
        t.step(&a, secs(112.1), T).opened,
        None,
        "one episode, not one per poll"
    );
}

#[test]
fn agent_measured_age_counts_from_the_first_poll() {
    // The agent had seen the queue unchanged for 9 s before it first sent it.
    let mut a = a_end(1, 5000, 3000);
    a.unchanged_ms = 9_000;
    let mut t = track(&a, 50.0);
    assert!(!t.is_open());
    a.unchanged_ms = 10_100;
    assert_eq!(t.step(&a, secs(51.1), T).opened, opened(1, 10.1));
    // Held for the threshold already at its first report: open at once.
    let mut b = a_end(2, 5000, 3000);
    b.unchanged_ms = 12_000;
    let mut t = Track::new(&b, secs(70.0));
    assert_eq!(t.step(&b, secs(70.0), T).opened, opened(2, 12.0));
}

#[test]
fn moving_ends_the_episode_and_restarts_the_clock() {
    let a = a_end(1, 5000, 3000);
    let mut t = track(&a, 0.0);
    assert_eq!(t.step(&a, secs(10.0), T).opened, opened(1, 10.0));
    let moved = a_end(1, 5100, 2900);
    let step = t.step(&moved, secs(12.0), T);
    assert_eq!(
        step.restart,
        Some(Restart {
            reason: EndReason::Moved,
            closed: closed(1, EndReason::Moved, 12.0),
        })
    );
    assert_eq!(step.opened, None);
    assert_eq!(
        t.step(&moved, secs(21.9), T).opened,
        None,
        "the clock restarted at the move"
    );
    assert_eq!(t.step(&moved, secs(22.0), T).opened, opened(1, 10.0));
}

#[test]
fn write_seq_moving_alone_also_ends_it() {
    let a = a_end(1, 5000, 3000);
    let mut t = track(&a, 0.0);
    t.step(&a, secs(10.0), T);
    let more = a_end(1, 5000, 4000);
    let restart = t.step(&more, secs(12.0), T).restart;
    assert_eq!(restart.map(|r| r.reason), Some(EndReason::Moved));
    assert_eq!(
        restart.and_then(|r| r.closed),
        closed(1, EndReason::Moved, 12.0)
    );
}

#[test]
fn a_move_before_the_threshold_closes_nothing() {
    let a = a_end(1, 5000, 3000);
    let mut t = track(&a, 0.0);
    let step = t.step(&a_end(1, 5100, 2900), secs(4.0), T);
    assert_eq!(
        step.restart,
        Some(Restart {
            reason: EndReason::Moved,
            closed: None,
        })
    );
}

#[test]
fn a_new_cookie_on_the_same_tuple_is_a_new_connection() {
    let old = a_end(1, 5000, 3000);
    let mut t = track(&old, 0.0);
    assert_eq!(t.step(&old, secs(10.0), T).opened, opened(1, 10.0));
    let new = a_end(2, 0, 3000);
    let step = t.step(&new, secs(12.0), T);
    assert_eq!(
        step.restart,
        Some(Restart {
            reason: EndReason::Replaced,
            closed: closed(1, EndReason::Replaced, 12.0),
        })
    );
    assert_eq!(step.opened, None, "the new socket starts its own clock");
    assert_eq!(t.cookie(), 2);
    assert_eq!(t.step(&new, secs(21.9), T).opened, None);
    assert_eq!(t.step(&new, secs(22.0), T).opened, opened(2, 10.0));
}

#[test]
fn a_tracks_end_closes_its_episode_only_if_one_is_open() {
    let a = a_end(1, 5000, 3000);
    let mut t = track(&a, 0.0);
    t.step(&a, secs(8.0), T);
    assert_eq!(
        t.end(EndReason::Drained, secs(9.0)),
        None,
        "held 9 s: no episode"
    );
    t.step(&a, secs(10.0), T);
    assert_eq!(
        t.end(EndReason::Drained, secs(11.0)),
        closed(1, EndReason::Drained, 11.0)
    );
    assert_eq!(
        t.end(EndReason::Closed, secs(31.0)),
        closed(1, EndReason::Closed, 31.0)
    );
    // A host gone ends it at the last time its agent reported it.
    assert_eq!(t.last(), secs(10.0));
    assert_eq!(
        t.end(EndReason::HostGone, t.last()),
        closed(1, EndReason::HostGone, 10.0)
    );
}

#[test]
fn a_hold_measured_by_its_agent_opens_and_closes_at_its_true_length() {
    let span = |since: f64, last_held: f64, ended: f64, end: HeldEnd| {
        HeldSpan::new(secs(since), secs(last_held), secs(ended), end).expect("an ordered span")
    };
    let a = a_end(1, 5000, 3000);
    let t = track(&a, 0.0);
    // Held 10.2 s by the agent's measure, ended between polls: an episode
    // of that length, opened and closed at once.
    let held = span(0.0, 10.0, 10.4, HeldEnd::Moved);
    assert_eq!(
        t.held_end(&held, T),
        [opened(1, 10.2), closed(1, EndReason::Moved, 10.2)]
    );
    // Short of the threshold: no episode.
    let short = span(0.0, 8.0, 8.25, HeldEnd::Drained);
    assert_eq!(t.held_end(&short, T), [None, None]);
    // Already open: it closes with the measured length and how it ended.
    let mut open = track(&a, 0.0);
    open.step(&a, secs(10.0), T);
    let reset = span(0.0, 11.0, 11.5, HeldEnd::Reset);
    assert_eq!(
        open.held_end(&reset, T),
        [None, closed(1, EndReason::Reset, 11.25)]
    );
}

fn zero_window(mut a: EndSample) -> EndSample {
    a.pos.snd_wnd = Some(0);
    a.pos.notsent = Some(a.pos.sendq);
    a.pos.inflight = Some(0);
    a.pos.snd_nxt = a.pos.snd_una;
    a.timer = Some(TimerKind::ZeroWindowProbe);
    a.probes = Some(3);
    a
}

#[test]
fn peer_not_reading() {
    let a = zero_window(a_end(1, 5000, 3000));
    let b = b_end(&a, 5000, 4096, 0);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::PeerNotReading);
    assert_eq!(v.evidence["b_recvq"], 4096);
    assert_eq!(v.evidence["b_rcv_wnd"], 0);
    assert_eq!(v.evidence["a_snd_wnd"], 0);
}

#[test]
fn counters_that_grow_while_a_stall_holds_are_the_same_finding() {
    let a = zero_window(a_end(1, 5000, 3000));
    let b = b_end(&a, 5000, 4096, 0);
    let first = diagnose(&a, Peer::Seen(&b));
    // Later, with more zero-window probes and backoff: the same finding,
    // with other numbers (written when the episode ends).
    let mut later = a.clone();
    later.unchanged_ms += 4000;
    later.probes = Some(3);
    later.backoff = Some(3);
    let v = diagnose(&later, Peer::Seen(&b));
    assert!(first.same_finding(&v));
    assert!(!first.same_numbers(&v));
    // Only later: the same numbers too.
    let mut older = a.clone();
    older.unchanged_ms += 4000;
    assert!(first.same_numbers(&diagnose(&older, Peer::Seen(&b))));
    // B read some of its queue: another finding, written at once.
    let b_read = b_end(&a, 5000, 1024, 0);
    assert!(!first.same_finding(&diagnose(&a, Peer::Seen(&b_read))));
}

#[test]
fn evidence_keeps_the_names_episodes_are_stored_with() {
    use tcpstall_collector::matcher::diagnose::Fact;
    // Users' scripts read these names from stored episodes: never renamed.
    let names: Vec<&str> = Fact::ALL.iter().map(|f| f.name()).collect();
    assert_eq!(
        names,
        [
            "a_sendq",
            "a_snd_una",
            "a_snd_nxt",
            "a_write_seq",
            "a_notsent",
            "a_inflight",
            "a_unacked",
            "a_snd_wnd",
            "a_snd_wscale",
            "a_snd_cwnd",
            "a_retransmits",
            "a_backoff",
            "a_probes",
            "a_probe_timer",
            "a_unchanged_ms",
            "a_cork",
            "b_rcv_nxt",
            "b_copied",
            "b_recvq",
            "b_rcv_wnd",
            "b_rcv_wscale",
            "b_rmem_alloc",
            "b_rcvbuf",
            "b_sendq",
            "acked_not_seen",
        ]
    );
    // A verdict's numbers, by name, as a JSON object.
    let a = zero_window(a_end(1, 5000, 3000));
    let v = diagnose(&a, Peer::Seen(&b_end(&a, 5000, 4096, 0)));
    let json = serde_json::to_value(&v.evidence).expect("json");
    assert_eq!(json["b_recvq"], 4096);
    assert_eq!(json["a_snd_una"], 5000);
    assert_eq!(json.as_object().map(|o| o.len()), Some(v.evidence.len()));
    assert_eq!(v.evidence.get("a_sendq"), Some(3000));
    assert_eq!(v.evidence.get("acked_not_seen"), None);
}

#[test]
fn peer_not_reading_on_a_kernel_without_rcv_wnd() {
    let a = zero_window(a_end(1, 5000, 3000));
    let mut b = b_end(&a, 5000, 4096, 0);
    b.pos.rcv_wnd = None;
    // Its receive buffer full: the window is closed.
    b.rmem_alloc = Some(130_224);
    b.rcvbuf = Some(131_072);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::PeerNotReading);
    assert_eq!(
        v.basis.rested_on(),
        ["a_snd_wnd", "b_rmem_alloc", "b_rcvbuf"]
    );
    assert_eq!(v.basis.missing(), ["b_rcv_wnd"]);
    // The same buffer half empty: B had room, its update was lost.
    b.rmem_alloc = Some(65_536);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::WindowUpdateLost);
    assert!(v.summary.contains("65536 of 131072"), "{}", v.summary);
    // No memory figures either: bytes unread hold the window closed.
    (b.rmem_alloc, b.rcvbuf) = (None, None);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::PeerNotReading);
    assert_eq!(v.basis.rested_on(), ["a_snd_wnd", "b_recvq"]);
    assert_eq!(v.basis.missing(), ["b_rcv_wnd", "b_rmem_alloc"]);
}

#[test]
fn window_update_lost() {
    let a = zero_window(a_end(1, 5000, 3000));
    let b = b_end(&a, 5000, 0, 65536);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::WindowUpdateLost);
    assert_eq!(v.evidence["b_rcv_wnd"], 65536);
}

#[test]
fn data_lost() {
    let mut a = a_end(1, 5000, 3000);
    a.retransmits = Some(4);
    a.backoff = Some(4);
    a.timer = Some(TimerKind::Retransmit);
    let b = b_end(&a, 5000, 0, 65536);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::DataLost);
    assert_eq!(v.evidence["b_rcv_nxt"], v.evidence["a_snd_una"]);
    assert_eq!(v.evidence["a_inflight"], 3000);
}

#[test]
fn ack_lost_even_when_b_got_only_part() {
    let mut a = a_end(1, 5000, 3000);
    a.retransmits = Some(2);
    for rcv in [8000, 6500] {
        let b = b_end(&a, rcv, 0, 65536);
        let v = diagnose(&a, Peer::Seen(&b));
        assert_eq!(v.diagnosis, Diagnosis::AckLost, "B at {rcv}");
        assert_eq!(v.evidence["acked_not_seen"], (rcv - 5000) as i64);
    }
}

fn unsent(mut a: EndSample, cork: Option<bool>) -> EndSample {
    a.pos.notsent = Some(a.pos.sendq);
    a.pos.inflight = Some(0);
    a.pos.snd_nxt = a.pos.snd_una;
    a.cork = cork;
    a
}

#[test]
fn corked_only_when_the_cork_is_known_set() {
    let a = unsent(a_end(1, 5000, 3000), Some(true));
    let b = b_end(&a, 5000, 0, 65536);
    assert_eq!(diagnose(&a, Peer::Seen(&b)).diagnosis, Diagnosis::Corked);
    for cork in [Some(false), None] {
        let a = unsent(a_end(1, 5000, 3000), cork);
        let v = diagnose(&a, Peer::Seen(&b));
        assert_eq!(v.diagnosis, Diagnosis::UnsentUnblocked, "cork {cork:?}");
    }
}

#[test]
fn one_sided_cases_say_which_end_is_missing_and_why() {
    let a = zero_window(a_end(1, 5000, 3000));
    let v = diagnose(&a, Peer::NoSocket { host: "hostb" });
    assert_eq!(v.diagnosis, Diagnosis::HalfOpen);
    assert!(v.summary.contains("hostb"), "{}", v.summary);
    let v = diagnose(&a, Peer::Unmonitored);
    assert_eq!(v.diagnosis, Diagnosis::PeerUnmonitored);
    assert!(
        v.summary.contains("198.18.0.1:40000") && v.summary.contains("zero window"),
        "{}",
        v.summary
    );
    let v = diagnose(&a, Peer::Pending { host: "hostb" });
    assert_eq!(v.diagnosis, Diagnosis::Undetermined);
}

#[test]
fn impossible_pair_is_not_blamed_on_anyone() {
    let a = a_end(1, 5000, 3000);
    let b = b_end(&a, 4000, 0, 65536);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::Undetermined);
    assert!(v.summary.contains("cannot"), "{}", v.summary);
}

#[test]
fn ids_round_trip() {
    for d in Diagnosis::ALL {
        assert_eq!(Diagnosis::from_id(d.id()), Some(d));
    }
}
