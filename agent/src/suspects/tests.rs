//! Unit tests of `suspects`.

use std::net::SocketAddr;

use tcpstall_common::{Opened, TcpState};

use super::*;

const NS: u64 = 4026531840;
const POLL: Duration = Duration::from_secs(2);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A connection with `sendq` queued bytes, `acked` of them acknowledged
/// since the start (no tcp_info: marks come from the queue alone
/// unless `info` is given).
fn conn(cookie: u64, local: &str, remote: &str, sendq: u32) -> SocketSample {
    SocketSample {
        netns: NS,
        local: addr(local),
        remote: addr(remote),
        state: TcpState::Established,
        cookie,
        inode: 1000 + cookie as u32,
        uid: 0,
        rqueue: 0,
        wqueue: sendq,
        timer: None,
        timer_expires_ms: 0,
        timer_retransmits: 0,
        opened: Some(Opened::Active),
        info: None,
        skmem: None,
        cong: None,
        shutdown: None,
    }
}

fn a(cookie: u64, sendq: u32) -> SocketSample {
    conn(cookie, "198.18.0.1:40000", "198.18.0.2:80", sendq)
}

fn selector() -> Selector {
    Selector::new([(NS, "host".to_string())])
}

fn at(polls: u32) -> Duration {
    Duration::from_secs(100) + POLL * polls
}

fn held(since: Duration, last_held: Duration, ended: Duration, end: HeldEnd) -> HeldSpan {
    HeldSpan::new(since, last_held, ended, end).expect("an ordered span")
}

fn reasons(sel: &Selection) -> Vec<(SampleReason, u64, u64)> {
    sel.samples
        .iter()
        .map(|(r, s)| (*r, s.cookie, s.unchanged_ms))
        .collect()
}

#[test]
fn unchanged_twice_is_a_suspect_with_its_age() {
    let mut sel = selector();
    let first = sel.select(&[a(1, 300)], &[], at(0));
    assert!(first.is_empty(), "one poll proves nothing: {first:?}");
    assert_eq!(first.connections, 1);
    let second = sel.select(&[a(1, 300)], &[], at(1));
    assert_eq!(reasons(&second), vec![(SampleReason::Suspect, 1, 2000)]);
    assert_eq!(second.samples[0].1.netns, "host");
    let third = sel.select(&[a(1, 300)], &[], at(2) + Duration::from_millis(7));
    assert_eq!(reasons(&third), vec![(SampleReason::Suspect, 1, 4007)]);
}

#[test]
fn empty_and_moving_queues_are_never_sent() {
    let mut sel = selector();
    for i in 0..5 {
        // Idle, and a bulk transfer whose queue changes every poll.
        let polled = [a(1, 0), a(2, 1000 + i)];
        let out = sel.select(&polled, &[], at(i));
        assert!(out.is_empty(), "poll {i}: {out:?}");
    }
    assert_eq!(sel.tracked(), 1, "only the queued connection is kept");
}

#[test]
fn a_suspect_that_moves_is_released_once() {
    let mut sel = selector();
    sel.select(&[a(1, 300)], &[], at(0));
    assert_eq!(sel.select(&[a(1, 300)], &[], at(1)).samples.len(), 1);
    let moved = sel.select(&[a(1, 200)], &[], at(2));
    let span = held(at(0), at(1), at(2), HeldEnd::Moved);
    assert_eq!(
        reasons(&moved),
        vec![(SampleReason::Released(Some(span)), 1, 0)]
    );
    let later = sel.select(&[a(1, 100)], &[], at(3));
    assert!(later.is_empty(), "then nothing: {later:?}");
    // Stuck again at the new marks: a suspect again, aged from there.
    let again = sel.select(&[a(1, 100)], &[], at(4));
    assert_eq!(reasons(&again), vec![(SampleReason::Suspect, 1, 2000)]);
}

#[test]
fn a_suspect_that_drains_is_released_once_and_forgotten() {
    let mut sel = selector();
    sel.select(&[a(1, 300)], &[], at(0));
    sel.select(&[a(1, 300)], &[], at(1));
    let drained = sel.select(&[a(1, 0)], &[], at(2));
    let span = held(at(0), at(1), at(2), HeldEnd::Drained);
    assert_eq!(
        reasons(&drained),
        vec![(SampleReason::Released(Some(span)), 1, 0)]
    );
    assert_eq!(sel.tracked(), 0);
    assert!(sel.select(&[a(1, 0)], &[], at(3)).is_empty());
    assert!(
        sel.select(&[], &[], at(4)).is_empty(),
        "no closed after release"
    );
}

#[test]
fn a_suspect_that_goes_is_closed() {
    let mut sel = selector();
    sel.select(&[a(1, 300)], &[], at(0));
    sel.select(&[a(1, 300)], &[], at(1));
    let gone = sel.select(&[], &[], at(2));
    assert!(gone.samples.is_empty());
    assert_eq!(
        gone.closed,
        vec![ClosedSocket {
            netns: "host".into(),
            flow: FlowTuple::new(addr("198.18.0.1:40000"), addr("198.18.0.2:80")),
            cookie: 1,
            // Gone while open with bytes queued: only an abort does that.
            held: Some(held(at(0), at(1), at(2), HeldEnd::Reset)),
        }]
    );
    assert_eq!(sel.tracked(), 0);
    assert!(sel.select(&[], &[], at(3)).is_empty(), "closed once");
}

#[test]
fn an_unsent_connection_that_goes_is_not_closed() {
    let mut sel = selector();
    sel.select(&[a(1, 300)], &[], at(0));
    let gone = sel.select(&[], &[], at(1));
    assert!(gone.is_empty(), "{gone:?}");
    assert_eq!(sel.tracked(), 0);
}

#[test]
fn a_new_cookie_on_the_same_tuple_is_a_new_connection() {
    let mut sel = selector();
    sel.select(&[a(1, 300)], &[], at(0));
    sel.select(&[a(1, 300)], &[], at(1));
    // Same 4-tuple, same queue, new socket: the old one is closed and
    // the new one starts from nothing.
    let reused = sel.select(&[a(2, 300)], &[], at(2));
    assert!(reused.samples.is_empty(), "{reused:?}");
    assert_eq!(reused.closed.len(), 1);
    assert_eq!(reused.closed[0].cookie, 1);
    let next = sel.select(&[a(2, 300)], &[], at(3));
    assert_eq!(reasons(&next), vec![(SampleReason::Suspect, 2, 2000)]);
}

#[test]
fn the_same_cookie_in_two_namespaces_is_two_connections() {
    let mut sel = Selector::new([(NS, "host".to_string()), (7, "lab".to_string())]);
    let mut other = a(1, 500);
    other.netns = 7;
    sel.select(&[a(1, 300), other.clone()], &[], at(0));
    let out = sel.select(&[a(1, 300), other], &[], at(1));
    let mut labels: Vec<&str> = out.samples.iter().map(|(_, s)| s.netns.as_str()).collect();
    labels.sort_unstable();
    assert_eq!(labels, vec!["host", "lab"]);
}

#[test]
fn marks_include_the_stream_positions() {
    let mut sel = selector();
    let mut s = a(1, 300);
    s.info = Some(tcp_info_with_acked(5000));
    sel.select(std::slice::from_ref(&s), &[], at(0));
    // Same queue length, but 100 more bytes acknowledged (and written):
    // it moved, so it is not a suspect.
    let mut moved = s;
    moved.info = Some(tcp_info_with_acked(5100));
    assert!(sel.select(&[moved.clone()], &[], at(1)).is_empty());
    let out = sel.select(&[moved], &[], at(2));
    assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
    assert_eq!(out.samples[0].1.pos.snd_una, Some(5099), "minus the SYN");
}

/// A tcp_info of the oldest supported length with `bytes_acked` set.
fn tcp_info_with_acked(acked: u64) -> tcpstall_common::TcpInfo {
    // tcpi_bytes_acked sits at offset 120 (after the 4.1 additions).
    let mut raw = vec![0u8; 192];
    raw[120..128].copy_from_slice(&acked.to_ne_bytes());
    tcpstall_common::TcpInfo::parse(&raw).expect("tcp_info")
}

#[test]
fn watched_flows_are_sent_every_poll_and_absent_when_missing() {
    let mut sel = selector();
    let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
    let flow = FlowTuple::new(b.local, b.remote);
    let nobody = FlowTuple::new(addr("198.18.0.2:81"), addr("198.18.0.9:1"));
    assert!(sel.watch(flow));
    assert!(sel.watch(nobody));
    for i in 0..3 {
        let out = sel.select(&[b.clone(), a(1, 0)], &[], at(i));
        assert_eq!(
            reasons(&out),
            vec![(SampleReason::Watched, 9, 0)],
            "poll {i}"
        );
        assert_eq!(out.absent, vec![nobody], "poll {i}");
    }
    // The watched socket goes: closed once, then the flow is absent.
    let gone = sel.select(&[a(1, 0)], &[], at(3));
    assert_eq!(gone.closed.len(), 1);
    assert_eq!(gone.closed[0].cookie, 9);
    let mut absent = gone.absent.clone();
    absent.sort_unstable();
    let mut want = vec![flow, nobody];
    want.sort_unstable();
    assert_eq!(absent, want);
    let later = sel.select(&[a(1, 0)], &[], at(4));
    assert!(later.closed.is_empty());
    // Unwatched: nothing more about either.
    sel.unwatch(&flow);
    sel.unwatch(&nobody);
    assert!(sel.select(&[b, a(1, 0)], &[], at(5)).is_empty());
    assert_eq!(sel.watched(), 0);
}

#[test]
fn unmatched_watches_are_those_no_socket_was_found_for() {
    let mut sel = selector();
    assert_eq!(sel.unmatched_watches().count(), 0);
    let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
    let flow = FlowTuple::new(b.local, b.remote);
    let nobody = FlowTuple::new(addr("198.18.0.2:81"), addr("198.18.0.9:1"));
    assert!(sel.watch(flow) && sel.watch(nobody));
    // Not polled yet: both.
    let mut before: Vec<FlowTuple> = sel.unmatched_watches().collect();
    before.sort_unstable();
    let mut both = vec![flow, nobody];
    both.sort_unstable();
    assert_eq!(before, both);
    sel.select(&[b], &[], at(0));
    assert_eq!(sel.unmatched_watches().collect::<Vec<_>>(), vec![nobody]);
    // Its socket goes: unmatched again.
    sel.select(&[], &[], at(1));
    let mut after: Vec<FlowTuple> = sel.unmatched_watches().collect();
    after.sort_unstable();
    assert_eq!(after, both);
    sel.clear_watches();
    assert_eq!(sel.unmatched_watches().count(), 0);
}

#[test]
fn a_watched_suspect_is_sent_once_as_a_suspect_and_closed_once() {
    let mut sel = selector();
    let s = a(1, 300);
    sel.watch(FlowTuple::new(s.local, s.remote));
    let first = sel.select(std::slice::from_ref(&s), &[], at(0));
    assert_eq!(reasons(&first), vec![(SampleReason::Watched, 1, 0)]);
    let second = sel.select(std::slice::from_ref(&s), &[], at(1));
    assert_eq!(reasons(&second), vec![(SampleReason::Suspect, 1, 2000)]);
    let gone = sel.select(&[], &[], at(2));
    assert_eq!(gone.closed.len(), 1, "{gone:?}");
}

#[test]
fn unwatched_sockets_are_not_closed_later() {
    let mut sel = selector();
    let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
    let flow = FlowTuple::new(b.local, b.remote);
    sel.watch(flow);
    sel.select(std::slice::from_ref(&b), &[], at(0));
    sel.unwatch(&flow);
    assert!(sel.select(&[], &[], at(1)).is_empty());
    sel.watch(flow);
    sel.select(&[b], &[], at(2));
    sel.clear_watches();
    assert!(sel.select(&[], &[], at(3)).is_empty());
    assert_eq!(sel.tracked(), 0);
}

#[test]
fn a_failed_namespace_hides_nothing_and_closes_nothing() {
    let mut sel = selector();
    let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
    sel.watch(FlowTuple::new(b.local, b.remote));
    sel.select(&[a(1, 300), b.clone()], &[], at(0));
    sel.select(&[a(1, 300), b.clone()], &[], at(1));
    let failed = sel.select(&[], &[NS], at(2));
    assert!(failed.is_empty(), "{failed:?}");
    // Back: still a suspect, aged from when its marks were first seen.
    let back = sel.select(&[a(1, 300), b], &[], at(3));
    assert_eq!(
        reasons(&back),
        vec![
            (SampleReason::Suspect, 1, 6000),
            (SampleReason::Watched, 9, 0)
        ]
    );
}

#[test]
fn watches_are_bounded() {
    let mut sel = selector();
    for port in 0..MAX_WATCHED as u16 {
        let f = FlowTuple::new(
            SocketAddr::from(([198, 18, 0, 1], port)),
            addr("198.18.0.2:80"),
        );
        assert!(sel.watch(f));
    }
    let one_more = FlowTuple::new(addr("198.18.0.3:1"), addr("198.18.0.2:80"));
    assert!(!sel.watch(one_more));
    let again = FlowTuple::new(
        SocketAddr::from(([198, 18, 0, 1], 0)),
        addr("198.18.0.2:80"),
    );
    assert!(sel.watch(again), "watching a watched flow again is fine");
    assert_eq!(sel.watched(), MAX_WATCHED);
}

fn base(s: &SocketSample) -> Base {
    Base {
        state: s.state,
        local: s.local,
        remote: s.remote,
        cookie: s.cookie,
        wqueue: s.wqueue,
    }
}

#[test]
fn leaving_out_unwanted_sockets_changes_nothing() {
    // Two selectors fed the same polls: one all connections, the other
    // only those it wants. Queues stick, move, drain and come back; a
    // watched idle flow; a suspect goes; a namespace fails once.
    let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
    let polls: Vec<(Vec<SocketSample>, Vec<u64>)> = vec![
        (vec![a(1, 300), a(2, 0), a(3, 50), b.clone()], vec![]),
        (vec![a(1, 300), a(2, 0), a(3, 50), b.clone()], vec![]),
        (vec![a(1, 0), a(2, 70), a(3, 50), b.clone()], vec![]),
        (vec![a(1, 0), a(2, 70), b.clone()], vec![]),
        (vec![], vec![NS]),
        (vec![a(1, 20), a(2, 0), b.clone()], vec![]),
        (vec![a(1, 20), a(2, 0)], vec![]),
        (vec![a(1, 20), a(2, 0), a(4, 0)], vec![]),
    ];
    let mut all = selector();
    let mut some = selector();
    let flow = FlowTuple::new(b.local, b.remote);
    assert!(all.watch(flow) && some.watch(flow));
    for (i, (polled, failed)) in polls.iter().enumerate() {
        let wanted: Vec<SocketSample> = polled
            .iter()
            .filter(|s| some.wants(s.netns, &base(s)))
            .cloned()
            .collect();
        let want = all.select(polled, failed, at(i as u32));
        let got = some.select_wanted(&wanted, &[], polled.len(), failed, at(i as u32));
        assert_eq!(got, want, "poll {i}");
    }
    assert_eq!(all.tracked(), some.tracked());
}

#[test]
fn memory_follows_the_queued_connections() {
    let mut sel = selector();
    let many: Vec<SocketSample> = (0..1000).map(|c| a(c, 10)).collect();
    sel.select(&many, &[], at(0));
    assert_eq!(sel.tracked(), 1000);
    let out = sel.select(&many, &[], at(1));
    assert_eq!(out.samples.len(), 1000);
    // All drain but ten; all are released once and the rest forgotten.
    let drained: Vec<SocketSample> = (0..1000).map(|c| a(c, u32::from(c < 10) * 10)).collect();
    let out = sel.select(&drained, &[], at(2));
    assert_eq!(
        out.samples
            .iter()
            .filter(|(r, _)| matches!(r, SampleReason::Released(_)))
            .count(),
        990
    );
    assert_eq!(sel.tracked(), 10);
    let out = sel.select(&[], &[], at(3));
    assert_eq!(out.closed.len(), 10);
    assert_eq!(sel.tracked(), 0);
}

fn id(n: u8) -> ExactId {
    ExactId {
        family: 2,
        sockid: [n; crate::diag::parse::SOCKID_LEN],
    }
}

/// Polls `a(1, 300)` twice with its exact id: a held suspect.
fn held_suspect() -> Selector {
    let mut sel = selector();
    sel.select_wanted(&[a(1, 300)], &[id(1)], 1, &[], at(0));
    let out = sel.select_wanted(&[a(1, 300)], &[id(1)], 1, &[], at(1));
    assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
    sel
}

const QUARTER: Duration = Duration::from_millis(500);

#[test]
fn a_follow_finds_where_a_hold_ends_between_polls() {
    let mut sel = held_suspect();
    let f = sel.followed(10);
    assert_eq!(
        f,
        vec![Followed {
            netns: NS,
            id: id(1),
            key: (NS, 1)
        }]
    );
    // Still held a quarter in: nothing to send.
    let still = sel.follow(&[((NS, 1), Exact::Found(a(1, 300)))], at(1) + QUARTER);
    assert!(still.is_empty(), "{still:?}");
    // Gone at the next follow: closed at once, its span ending between
    // the two follows, not at the next poll.
    let gone = sel.follow(&[((NS, 1), Exact::Gone)], at(1) + 2 * QUARTER);
    assert!(gone.samples.is_empty());
    assert_eq!(gone.closed.len(), 1, "{gone:?}");
    let span = gone.closed[0].held.expect("a held span");
    assert_eq!(
        span,
        held(at(0), at(1) + QUARTER, at(1) + 2 * QUARTER, HeldEnd::Reset)
    );
    assert_eq!(span.held(), Duration::from_millis(2750));
    assert_eq!(gone.connections, 1, "the last poll's count");
    // The next poll has nothing more to say of it.
    let next = sel.select_wanted(&[], &[], 0, &[], at(2));
    assert!(next.is_empty(), "{next:?}");
    assert!(sel.followed(10).is_empty());
}

#[test]
fn a_follow_releases_a_queue_that_moved_or_drained_and_the_next_poll_does_not() {
    let mut sel = held_suspect();
    let moved = sel.follow(&[((NS, 1), Exact::Found(a(1, 200)))], at(1) + QUARTER);
    let span = held(at(0), at(1), at(1) + QUARTER, HeldEnd::Moved);
    assert_eq!(
        reasons(&moved),
        vec![(SampleReason::Released(Some(span)), 1, 0)]
    );
    assert!(sel.followed(10).is_empty(), "no longer held");
    // Unchanged since the follow: held again, a suspect at this poll,
    // aged from the follow that saw its new marks first.
    let again = sel.select_wanted(&[a(1, 200)], &[id(1)], 1, &[], at(2));
    assert_eq!(reasons(&again), vec![(SampleReason::Suspect, 1, 1500)]);
    let drained = sel.follow(&[((NS, 1), Exact::Found(a(1, 0)))], at(2) + QUARTER);
    let span = held(at(1) + QUARTER, at(2), at(2) + QUARTER, HeldEnd::Drained);
    assert_eq!(
        reasons(&drained),
        vec![(SampleReason::Released(Some(span)), 1, 0)]
    );
    assert!(sel
        .select_wanted(&[a(1, 0)], &[id(1)], 1, &[], at(3))
        .is_empty());
    assert_eq!(sel.tracked(), 0);
}

#[test]
fn a_connection_that_starts_closing_while_held_ends_its_hold_once() {
    let mut sel = held_suspect();
    // The peer's FIN arrives: the same bytes held, now in CLOSE-WAIT.
    let mut fin = a(1, 300);
    fin.state = TcpState::CloseWait;
    let out = sel.follow(&[((NS, 1), Exact::Found(fin.clone()))], at(1) + QUARTER);
    let span = held(at(0), at(1), at(1) + QUARTER, HeldEnd::Closed);
    assert_eq!(
        reasons(&out),
        vec![(SampleReason::Released(Some(span)), 1, 0)]
    );
    // The same marks make no suspect again, and its going is no news.
    for i in 2..4 {
        let out = sel.select_wanted(std::slice::from_ref(&fin), &[id(1)], 1, &[], at(i));
        assert!(out.is_empty(), "poll {i}: {out:?}");
    }
    assert!(sel.select_wanted(&[], &[], 0, &[], at(4)).is_empty());
    assert_eq!(sel.tracked(), 0);
}

#[test]
fn a_hold_first_seen_closing_is_held_and_goes_closed() {
    // A client that shut its side down before asking (HTTP/1.0): the
    // server's stall starts in CLOSE-WAIT and is a stall like any.
    let mut half = a(1, 300);
    half.state = TcpState::CloseWait;
    let mut sel = selector();
    sel.select(std::slice::from_ref(&half), &[], at(0));
    let out = sel.select(std::slice::from_ref(&half), &[], at(1));
    assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
    // Its application closes: LAST-ACK, the bytes still held.
    half.state = TcpState::LastAck;
    let out = sel.select(std::slice::from_ref(&half), &[], at(2));
    let span = held(at(0), at(1), at(2), HeldEnd::Closed);
    assert_eq!(
        reasons(&out),
        vec![(SampleReason::Released(Some(span)), 1, 0)]
    );
    // A suspect gone after it was seen closing went closed, not reset.
    let mut sel = selector();
    let mut closing = a(2, 300);
    sel.select(std::slice::from_ref(&closing), &[], at(0));
    closing.state = TcpState::FinWait1;
    sel.select(std::slice::from_ref(&closing), &[], at(1));
    let gone = sel.select(&[], &[], at(2));
    let span = gone.closed[0].held.expect("held");
    assert_eq!(span.end, HeldEnd::Closed);
}

/// A tcp_info of a sender facing a shut window, its last data sent
/// `sent_ms` before the look.
fn shut_window(sent_ms: u32) -> tcpstall_common::TcpInfo {
    let mut raw = vec![0u8; 232];
    raw[44..48].copy_from_slice(&sent_ms.to_ne_bytes());
    raw[144..148].copy_from_slice(&300u32.to_ne_bytes()); // all unsent
    raw[168..176].copy_from_slice(&u64::MAX.to_ne_bytes()); // busy for ever
    tcpstall_common::TcpInfo::parse(&raw).expect("tcp_info")
}

#[test]
fn a_hold_is_aged_from_the_kernels_clocks_within_the_agents_looks() {
    let mut sel = selector();
    sel.select(&[], &[], at(0));
    // First seen at the second poll, its window shut 1.5 s before.
    let mut s = a(1, 300);
    s.info = Some(shut_window(1500));
    sel.select(std::slice::from_ref(&s), &[], at(1));
    let out = sel.select(std::slice::from_ref(&s), &[], at(2));
    assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 3500)]);
    // A clock that says 5 s is held to the previous poll, which saw no
    // queue: 2 s before the first look.
    let mut sel = selector();
    sel.select(&[], &[], at(0));
    s.info = Some(shut_window(5000));
    sel.select(std::slice::from_ref(&s), &[], at(1));
    let out = sel.select(std::slice::from_ref(&s), &[], at(2));
    assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 4000)]);
}

#[test]
fn follows_ask_for_the_longest_held_first_and_no_more_than_asked() {
    let mut sel = selector();
    let polled: Vec<SocketSample> = (1..=5).map(|c| a(c, 100)).collect();
    let ids: Vec<ExactId> = (1..=5).map(|c| id(c as u8)).collect();
    // 4 and 5 are queued a poll later than the rest.
    sel.select_wanted(&polled[..3], &ids[..3], 3, &[], at(0));
    sel.select_wanted(&polled, &ids, 5, &[], at(1));
    sel.select_wanted(&polled, &ids, 5, &[], at(2));
    assert_eq!(sel.suspects(), 5);
    let first: Vec<u64> = sel.followed(3).iter().map(|f| f.key.1).collect();
    assert_eq!(first, vec![1, 2, 3]);
    assert_eq!(sel.followed(10).len(), 5);
    // A socket the poll gave no id for is not followed.
    let mut sel = selector();
    sel.select(&[a(9, 10)], &[], at(0));
    sel.select(&[a(9, 10)], &[], at(1));
    assert_eq!(sel.suspects(), 1);
    assert!(sel.followed(10).is_empty());
}

#[test]
fn a_later_reading_of_the_opener_does_not_move_the_marks() {
    // First read as accepted (no SYN in bytes_acked); a later reading
    // whose counters do not add up calls it the connecting side.
    let mut s = a(1, 300);
    s.opened = Some(Opened::Passive);
    s.info = Some(tcp_info_with_acked(5000));
    let mut sel = selector();
    sel.select_wanted(std::slice::from_ref(&s), &[id(1)], 1, &[], at(0));
    let mut odd = s.clone();
    odd.opened = Some(Opened::Active);
    let out = sel.select_wanted(std::slice::from_ref(&odd), &[id(1)], 1, &[], at(1));
    assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
    assert_eq!(out.samples[0].1.pos.snd_una, Some(5000), "as first read");
    let follow = sel.follow(&[((NS, 1), Exact::Found(odd))], at(1) + QUARTER);
    assert!(follow.is_empty(), "still held: {follow:?}");
}

#[test]
fn an_application_closing_a_held_socket_ends_its_hold_closed_not_moved() {
    // The server's application closes while its bytes are held: the
    // FIN goes behind them (one byte more) and the socket is LAST-ACK.
    let mut sel = held_suspect();
    let mut closed = a(1, 301);
    closed.state = TcpState::LastAck;
    let out = sel.follow(&[((NS, 1), Exact::Found(closed.clone()))], at(1) + QUARTER);
    let span = held(at(0), at(1), at(1) + QUARTER, HeldEnd::Closed);
    assert_eq!(
        reasons(&out),
        vec![(SampleReason::Released(Some(span)), 1, 0)]
    );
    let later = sel.select_wanted(std::slice::from_ref(&closed), &[id(1)], 1, &[], at(2));
    assert!(later.is_empty(), "{later:?}");
    // A FIN's byte without a close is a write like any.
    let mut sel = held_suspect();
    let out = sel.follow(&[((NS, 1), Exact::Found(a(1, 301)))], at(1) + QUARTER);
    assert!(matches!(out.samples[0].0, SampleReason::Released(Some(h)) if h.end == HeldEnd::Moved));
}
