//! Unit tests of `run`.

use std::net::SocketAddr;

use tcpstall_common::{
    ClosedSocket, EndSample, FlowTuple, HeldEnd, HeldSpan, Lookup, Positions, TcpState,
};
use tcpstall_proto::convert::batch_to_wire;
use tcpstall_proto::v1;

use super::*;

/// A poll's batches as they go on the wire; each the same size as the
/// domain batch it came from.
fn wire(sel: &Selection, mono: Duration, max: usize) -> Vec<v1::Batch> {
    to_batches(sel.clone(), mono, max)
        .into_iter()
        .map(|b| {
            let n = crate::outbox::entries(&b);
            let w = batch_to_wire(b);
            assert_eq!(entries(&w), n);
            w
        })
        .collect()
}

/// Entries of a wire batch.
fn entries(b: &v1::Batch) -> usize {
    b.samples.len() + b.closed.len() + b.absent.len() + b.lookups.len()
}

/// A suspect's sample (also for the outbox's and the uplink's tests).
pub(crate) fn sample(cookie: u64) -> EndSample {
    let local: SocketAddr = "198.18.0.1:40000".parse().expect("addr");
    let remote: SocketAddr = "198.18.0.2:80".parse().expect("addr");
    EndSample {
        flow: FlowTuple::new(local, remote),
        netns: "host".into(),
        state: TcpState::Established,
        cookie,
        inode: 1,
        opened: None,
        pos: Positions {
            sendq: 10,
            ..Positions::default()
        },
        unchanged_ms: 2000,
        timer: None,
        timer_expires_ms: 0,
        retransmits: None,
        probes: None,
        backoff: None,
        ca_state: None,
        rto_us: None,
        rtt_us: None,
        snd_cwnd: None,
        unacked: None,
        lost: None,
        retrans: None,
        total_retrans: None,
        last_data_sent_ms: None,
        last_data_recv_ms: None,
        last_ack_recv_ms: None,
        bytes_retrans: None,
        rmem_alloc: None,
        rcvbuf: None,
        cork: None,
        cork_source: None,
        nodelay: None,
        nodelay_source: None,
        owner: None,
        owner_missing: None,
        absolute: None,
        translation: None,
    }
}

#[test]
fn a_selection_becomes_a_batch() {
    let s = sample(5);
    let ms = Duration::from_millis;
    let moved = HeldSpan::new(ms(100), ms(1300), ms(1500), HeldEnd::Moved).expect("span");
    let reset = HeldSpan::new(ms(200), ms(1250), ms(1500), HeldEnd::Reset).expect("span");
    let sel = Selection {
        samples: vec![
            (SampleReason::Suspect, s.clone()),
            (SampleReason::Released(Some(moved)), sample(6)),
        ],
        closed: vec![ClosedSocket {
            netns: "host".into(),
            flow: s.flow,
            cookie: 4,
            held: Some(reset),
        }],
        absent: vec![s.flow.reversed()],
        lookups: vec![lookup(7, true)],
        connections: 70_000,
    };
    let batches = wire(&sel, Duration::from_millis(1500), DEFAULT_BATCH_MAX);
    let [b] = &batches[..] else {
        panic!("one batch: {batches:?}");
    };
    assert_eq!(b.mono_us, 1_500_000);
    assert_eq!(b.connections, 70_000);
    assert_eq!(b.samples.len(), 2);
    assert_eq!(b.samples[0].reason, v1::SampleReason::Suspect as i32);
    assert_eq!(b.samples[0].unchanged_ms, 2000);
    assert_eq!(b.samples[1].reason, v1::SampleReason::Released as i32);
    let held = |h: Option<&v1::Held>| h.map(tcpstall_proto::convert::held_from_wire);
    assert_eq!(
        held(b.samples[0].held.as_ref()),
        None,
        "a suspect's hold goes on"
    );
    assert_eq!(held(b.samples[1].held.as_ref()), Some(Ok(moved)));
    assert_eq!(b.closed.len(), 1);
    assert_eq!(b.closed[0].cookie, 4);
    assert_eq!(held(b.closed[0].held.as_ref()), Some(Ok(reset)));
    assert_eq!(b.closed[0].netns, "host");
    assert_eq!(
        tcpstall_proto::convert::flow_from_wire(b.absent.first()),
        Ok(s.flow.reversed())
    );
    assert_eq!(b.lookups.len(), 1);
    assert!(b.lookups[0].asked);
    assert_eq!(
        tcpstall_proto::convert::flow_from_wire(b.lookups[0].flow.as_ref()),
        Ok(absent(7))
    );
    let back = tcpstall_proto::convert::sample_from_wire(&b.samples[0]).expect("valid");
    assert_eq!(back, s);
}

fn gone(cookie: u64) -> ClosedSocket {
    ClosedSocket {
        netns: "host".into(),
        flow: sample(cookie).flow,
        cookie,
        held: None,
    }
}

fn absent(port: u16) -> FlowTuple {
    FlowTuple::new(
        SocketAddr::from(([198, 18, 0, 1], port)),
        SocketAddr::from(([198, 18, 0, 3], 443)),
    )
}

/// What the host knows of `absent(port)`: the one socket on its endpoint.
fn lookup(port: u16, asked: bool) -> Lookup {
    Lookup {
        flow: absent(port),
        translation: None,
        connected_to: Some(SocketAddr::from(([198, 18, 0, 4], 6000))),
        asked,
    }
}

#[test]
fn a_large_selection_is_split_not_cut() {
    let sel = Selection {
        samples: (0..300)
            .map(|c| (SampleReason::Suspect, sample(c)))
            .collect(),
        closed: (1000..1007).map(gone).collect(),
        absent: (1..=5).map(absent).collect(),
        lookups: (1..=3).map(|p| lookup(p, false)).collect(),
        connections: 400,
    };
    let n: usize = 300 + 7 + 5 + 3;
    let batches = wire(&sel, Duration::from_millis(2500), 128);
    assert_eq!(batches.len(), n.div_ceil(128));
    for b in &batches {
        assert!(entries(b) <= 128, "within the bound");
        assert!(entries(b) > 0);
        assert_eq!(b.mono_us, 2_500_000, "the poll's time on each");
        assert_eq!(b.connections, 400, "the poll's count on each");
        assert_eq!((b.dropped_batches, b.dropped_samples), (0, 0));
    }
    let cookies: Vec<u64> = batches
        .iter()
        .flat_map(|b| &b.samples)
        .map(|s| s.cookie)
        .collect();
    assert_eq!(cookies, (0..300).collect::<Vec<u64>>(), "all, in order");
    let closed: Vec<u64> = batches
        .iter()
        .flat_map(|b| &b.closed)
        .map(|c| c.cookie)
        .collect();
    assert_eq!(closed, (1000..1007).collect::<Vec<u64>>(), "all, in order");
    let absent_back: Vec<FlowTuple> = batches
        .iter()
        .flat_map(|b| &b.absent)
        .map(|f| tcpstall_proto::convert::flow_from_wire(Some(f)).expect("valid"))
        .collect();
    assert_eq!(absent_back, (1..=5).map(absent).collect::<Vec<_>>());
    // In the order the collector applies them: absent, samples, closed;
    // the lookups first, never after the absent entry they are about.
    assert_eq!(batches[0].lookups.len(), 3);
    assert!(batches[1..].iter().all(|b| b.lookups.is_empty()));
    assert_eq!(batches[0].absent.len(), 5);
    assert!(batches[..2].iter().all(|b| b.closed.is_empty()));
    assert_eq!(batches[2].closed.len(), 7);
    // Full batches but the last.
    assert!(batches[..2].iter().all(|b| entries(b) == 128));
    assert_eq!(entries(&batches[2]), n - 256);
}

#[test]
fn one_batch_is_never_more_than_the_guard() {
    let sel = Selection {
        samples: (0..MAX_BATCH_ENTRIES as u64 + 10)
            .map(|c| (SampleReason::Suspect, sample(c)))
            .collect(),
        closed: vec![gone(1)],
        absent: Vec::new(),
        lookups: Vec::new(),
        connections: 1,
    };
    let batches = wire(&sel, Duration::ZERO, usize::MAX);
    assert_eq!(batches.len(), 2);
    assert_eq!(entries(&batches[0]), MAX_BATCH_ENTRIES);
    assert_eq!(entries(&batches[1]), 11, "nothing cut");
    assert_eq!(batches[1].closed.len(), 1);
    // And a bound of 0 is taken as 1 (the settings refuse 0).
    let sel = Selection {
        samples: vec![(SampleReason::Suspect, sample(1))],
        closed: vec![gone(2)],
        absent: Vec::new(),
        lookups: Vec::new(),
        connections: 1,
    };
    assert_eq!(to_batches(sel, Duration::ZERO, 0).len(), 2);
    assert!(to_batches(Selection::default(), Duration::ZERO, 128).is_empty());
}

#[test]
fn polls_are_stamped_on_their_schedule() {
    let t = Instant::now();
    let first = mono_at(t);
    let sixth = mono_at(t + 6 * Duration::from_millis(500));
    assert_eq!(sixth - first, Duration::from_secs(3), "exactly");
    assert_eq!(
        first - mono_at(t - Duration::from_millis(1)),
        Duration::from_millis(1)
    );
    let (now, mono) = (mono_at(Instant::now()), monotonic());
    assert!(
        mono.abs_diff(now) < Duration::from_millis(100),
        "the same clock: {now:?} {mono:?}"
    );
}

#[test]
fn the_clock_is_monotonic() {
    let a = monotonic();
    let b = monotonic();
    assert!(b >= a);
    assert!(a > Duration::ZERO);
}

#[test]
fn a_selection_that_fits_is_one_batch_of_its_own_entries() {
    let sel = Selection {
        samples: vec![(SampleReason::Watched, sample(9))],
        closed: vec![gone(3)],
        absent: vec![absent(7)],
        lookups: vec![lookup(7, false)],
        connections: usize::MAX,
    };
    let batches = to_batches(sel.clone(), Duration::from_micros(5), 4);
    assert_eq!(
        batches,
        vec![AgentBatch {
            mono: Duration::from_micros(5),
            // Saturated, as the wire's u32 takes it.
            connections: u32::MAX,
            samples: sel.samples,
            packed: Vec::new(),
            closed: sel.closed,
            absent: sel.absent,
            lookups: sel.lookups,
            dropped_batches: 0,
            dropped_samples: 0,
        }]
    );
}
