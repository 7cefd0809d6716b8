//! The detector and the diagnosis on hand-made pairs of samples; time is
//! passed in, so a 10 s threshold tests in microseconds.

use std::time::Duration;

use tcpstall_collector::detect;
use tcpstall_collector::diagnose::{diagnose, Peer};
use tcpstall_common::{Diagnosis, EndReason, EndSample, TimerKind};

mod support;
use support::{a_end, b_end};

// Hosts named by string here; the collector numbers them.
type Detector = detect::Detector<&'static str>;
type Event = detect::Event<&'static str>;
type ConnKey = detect::ConnKey<&'static str>;

const T: Duration = Duration::from_secs(10);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn opened(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::Opened { .. }))
}

fn closed_with(events: &[Event]) -> Option<EndReason> {
    events.iter().find_map(|e| match e {
        Event::Closed { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn threshold_is_exact_9_9_s_nothing_10_1_s_episode() {
    let mut d = Detector::new(T);
    let a = a_end(1, 5000, 3000);
    assert!(d.observe("a", &a, secs(100.0)).is_empty());
    assert!(
        d.observe("a", &a, secs(109.9)).is_empty(),
        "9.9 s is not yet an episode"
    );
    let ev = d.observe("a", &a, secs(110.1));
    assert_eq!(ev.len(), 1);
    match &ev[0] {
        Event::Opened {
            conn, stuck_for, ..
        } => {
            assert_eq!(
                conn,
                &ConnKey {
                    host: "a",
                    cookie: 1
                }
            );
            assert_eq!(*stuck_for, secs(10.1));
        }
        other => panic!("expected an opened episode, got {other:?}"),
    }
    assert!(
        d.observe("a", &a, secs(112.1)).is_empty(),
        "one episode, not one per poll"
    );
}

#[test]
fn agent_measured_age_counts_from_the_first_poll() {
    // The agent had seen the queue unchanged for 9 s before it first sent it.
    let mut d = Detector::new(T);
    let mut a = a_end(1, 5000, 3000);
    a.unchanged_ms = 9_000;
    assert!(d.observe("a", &a, secs(50.0)).is_empty());
    a.unchanged_ms = 10_100;
    assert!(opened(&d.observe("a", &a, secs(51.1))));
}

#[test]
fn moving_ends_the_episode_and_restarts_the_clock() {
    let mut d = Detector::new(T);
    let a = a_end(1, 5000, 3000);
    d.observe("a", &a, secs(0.0));
    assert!(opened(&d.observe("a", &a, secs(10.0))));
    let moved = a_end(1, 5100, 2900);
    assert_eq!(
        closed_with(&d.observe("a", &moved, secs(12.0))),
        Some(EndReason::Moved)
    );
    assert!(
        d.observe("a", &moved, secs(21.9)).is_empty(),
        "the clock restarted at the move"
    );
    assert!(opened(&d.observe("a", &moved, secs(22.0))));
}

#[test]
fn write_seq_moving_alone_also_ends_it() {
    let mut d = Detector::new(T);
    let a = a_end(1, 5000, 3000);
    d.observe("a", &a, secs(0.0));
    d.observe("a", &a, secs(10.0));
    let more = a_end(1, 5000, 4000);
    assert_eq!(
        closed_with(&d.observe("a", &more, secs(12.0))),
        Some(EndReason::Moved)
    );
}

#[test]
fn draining_and_closing_end_it() {
    let mut d = Detector::new(T);
    let a = a_end(1, 5000, 3000);
    d.observe("a", &a, secs(0.0));
    d.observe("a", &a, secs(10.0));
    let drained = a_end(1, 8000, 0);
    assert_eq!(
        closed_with(&d.observe("a", &drained, secs(11.0))),
        Some(EndReason::Drained)
    );
    assert_eq!(d.tracked(), 0);

    d.observe("a", &a, secs(20.0));
    d.observe("a", &a, secs(30.0));
    match d.closed("a", a.flow, 1, secs(31.0)) {
        Some(Event::Closed {
            reason, stuck_for, ..
        }) => {
            assert_eq!(reason, EndReason::Closed);
            assert_eq!(stuck_for, secs(11.0));
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(
        d.closed("a", a.flow, 1, secs(32.0)),
        None,
        "closing twice is nothing"
    );
}

#[test]
fn a_new_cookie_on_the_same_tuple_is_a_new_connection() {
    let mut d = Detector::new(T);
    let old = a_end(1, 5000, 3000);
    d.observe("a", &old, secs(0.0));
    assert!(opened(&d.observe("a", &old, secs(10.0))));
    let new = a_end(2, 0, 3000);
    let ev = d.observe("a", &new, secs(12.0));
    assert_eq!(closed_with(&ev), Some(EndReason::Replaced));
    assert!(!opened(&ev), "the new socket starts its own clock");
    assert!(d.observe("a", &new, secs(21.9)).is_empty());
    let ev = d.observe("a", &new, secs(22.0));
    assert!(matches!(&ev[..], [Event::Opened { conn, .. }] if conn.cookie == 2));
}

#[test]
fn a_new_socket_that_drains_at_once_still_replaces_the_old_one() {
    let mut d = Detector::new(T);
    let old = a_end(1, 5000, 3000);
    d.observe("a", &old, secs(0.0));
    assert!(opened(&d.observe("a", &old, secs(10.0))));
    // The new socket on the same 4-tuple is seen with its queue empty.
    let ev = d.observe("a", &a_end(2, 3000, 0), secs(12.0));
    assert_eq!(closed_with(&ev), Some(EndReason::Replaced));
    assert_eq!(d.tracked(), 0);
    assert_eq!(d.cookie_of("a", old.flow), None);
}

#[test]
fn a_connections_data_lives_as_long_as_its_socket_is_tracked() {
    use tcpstall_collector::tuple::Tuple;
    // The data the collector keeps beside a track: here, a count of the
    // samples seen of its socket.
    let mut d: detect::Detector<&'static str, u32> = detect::Detector::new(T);
    let a = a_end(1, 5000, 3000);
    let tuple = Tuple::new(a.flow);
    let step = |d: &mut detect::Detector<&'static str, u32>, s: &EndSample, at: f64| {
        let step = d.step("a", tuple, s, secs(at));
        let fresh = step.fresh;
        let ended = step.ended.map(|e| (e.cookie, e.data));
        if let Some(n) = step.data {
            *n += 1;
        }
        (fresh, ended)
    };
    assert_eq!(
        step(&mut d, &a, 0.0),
        (true, None),
        "a new socket's data is new"
    );
    assert_eq!(step(&mut d, &a, 2.0), (false, None));
    // Its queue moves: the stall starts again, the data stays.
    let moved = a_end(1, 6000, 3000);
    assert_eq!(step(&mut d, &moved, 4.0), (false, None));
    assert_eq!(d.data("a", tuple), Some((1, &3)));
    // Another socket on the 4-tuple: the old one's data ends with it.
    let other = a_end(2, 100, 3000);
    assert_eq!(step(&mut d, &other, 6.0), (true, Some((1, 3))));
    assert_eq!(d.data("a", tuple), Some((2, &1)));
    // Its last word hands back its data; a drain of nothing tracked, none.
    let last = d.last_step("a", tuple, &a_end(2, 3100, 0), secs(8.0));
    assert_eq!(last.ended.map(|e| (e.cookie, e.data)), Some((2, 1)));
    assert_eq!(d.tracked(), 0);
    let none = d.last_step("a", tuple, &a_end(2, 3100, 0), secs(10.0));
    assert!(none.ended.is_none());
    // A first and last word on a socket never tracked hands back nothing.
    let word = d.last_step("a", tuple, &a_end(3, 100, 3000), secs(12.0));
    assert!(word.ended.is_none());
    // A close hands back the data; a close of another cookie, nothing.
    step(&mut d, &a, 14.0);
    assert!(d.close("a", tuple, 9, secs(15.0)).is_none());
    assert_eq!(d.close("a", tuple, 1, secs(15.0)).map(|(_, n)| n), Some(1));
}

#[test]
fn what_drains_or_expires_leaves_nothing_behind() {
    let mut d = Detector::new(T);
    // A drain of a connection never tracked (its suspect expired, or its
    // queue emptied before a report) tracks nothing.
    let a = a_end(1, 5000, 3000);
    d.observe("a", &a_end(1, 8000, 0), secs(0.0));
    assert_eq!(d.cookie_of("a", a.flow), None);
    // A suspect that went silent is forgotten whole: a later socket on
    // its 4-tuple is not taken for its replacement, and its entry does
    // not stay for the life of the collector.
    d.observe("a", &a, secs(1.0));
    assert_eq!(d.cookie_of("a", a.flow), Some(1));
    assert_eq!(d.expire("a", secs(5.0)), 1);
    assert_eq!(d.tracked(), 0);
    assert_eq!(d.cookie_of("a", a.flow), None);
}

#[test]
fn host_gone_ends_only_that_hosts_episodes() {
    let mut d = Detector::new(T);
    let a = a_end(1, 5000, 3000);
    for host in ["a", "c"] {
        d.observe(host, &a, secs(0.0));
        d.observe(host, &a, secs(10.0));
    }
    let ev = d.host_gone("a");
    assert_eq!(ev.len(), 1);
    assert_eq!(closed_with(&ev), Some(EndReason::HostGone));
    assert!(d.is_open("c", a.flow));
    assert!(!d.is_open("a", a.flow));
}

#[test]
fn silent_suspects_expire_but_open_episodes_stay() {
    let mut d = Detector::new(T);
    d.observe("a", &a_end(1, 5000, 3000), secs(0.0));
    let mut stuck = a_end(2, 5000, 3000);
    stuck.flow.remote = "198.18.0.1:40001".parse().expect("addr");
    d.observe("a", &stuck, secs(0.0));
    d.observe("a", &stuck, secs(10.0));
    assert_eq!(d.expire("a", secs(5.0)), 1);
    assert_eq!(d.tracked(), 1);
}

#[test]
fn a_last_word_in_one_step_finds_what_a_sample_and_a_close_find() {
    use tcpstall_collector::tuple::Tuple;
    // SplitMix64: a reproducible sequence of samples.
    let mut seed = 0x5eed_u64;
    let mut next = move |n: u64| {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let mut other = a_end(1, 5000, 3000);
    other.flow.remote = "198.18.0.1:40001".parse().expect("addr");
    let flows = [a_end(1, 5000, 3000).flow, other.flow];
    for _ in 0..200 {
        // Two steps: observe, then close, as the collector did; one step.
        let (mut two, mut one) = (Detector::new(T), Detector::new(T));
        let mut now = secs(0.0);
        for _ in 0..40 {
            now += secs(0.5 * (1 + next(8)) as f64);
            let mut s = a_end(
                1 + next(2),
                [5000, 6000][next(2) as usize],
                [0, 3000][usize::from(next(4) != 0)],
            );
            s.flow = flows[next(2) as usize];
            s.unchanged_ms = [0, 4000, 12_000][next(3) as usize];
            let tuple = Tuple::new(s.flow);
            if next(3) == 0 {
                let mut want = two.observe_at("h", tuple, &s, now).events;
                want.extend(two.closed_at("h", tuple, s.cookie, now));
                let word = one.last_word_at("h", tuple, &s, now);
                let mut got = word.events;
                got.extend(word.closed);
                assert_eq!(got, want, "last word {s:?} at {now:?}");
            } else {
                let want = two.observe_at("h", tuple, &s, now);
                let got = one.observe_at("h", tuple, &s, now);
                assert_eq!(got, want, "sample {s:?} at {now:?}");
            }
            assert_eq!(one.tracked(), two.tracked());
            for f in flows {
                assert_eq!(one.cookie_of("h", f), two.cookie_of("h", f));
                assert_eq!(one.is_open("h", f), two.is_open("h", f));
            }
        }
    }
}

// ------------------------------------------------------------- diagnosis

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
    use tcpstall_collector::diagnose::Fact;
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
            "a_snd_wnd",
            "a_snd_wscale",
            "a_snd_cwnd",
            "a_retransmits",
            "a_backoff",
            "a_probes",
            "a_unchanged_ms",
            "a_cork",
            "b_rcv_nxt",
            "b_copied",
            "b_recvq",
            "b_rcv_wnd",
            "b_rcv_wscale",
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
    assert_eq!(
        diagnose(&a, Peer::Seen(&b)).diagnosis,
        Diagnosis::PeerNotReading
    );
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
