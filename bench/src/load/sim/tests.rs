//! Unit tests of `sim`.

use tcpstall_collector::matcher::diagnose::{diagnose, Peer};
use tcpstall_common::Diagnosis;
use tcpstall_proto::convert::{sample_from_wire, sample_to_wire};
use tcpstall_proto::v1;

use super::*;

const POLL: Duration = Duration::from_secs(2);

fn shape(hosts: u32) -> Shape {
    Shape {
        hosts,
        conns: 20_000,
        suspects: 200.0,
        stuck: 10,
        interval: POLL,
        stuck_for: Duration::from_secs(30),
    }
}

#[test]
fn addresses_and_peers() {
    assert_eq!(host_addr(0), Ipv4Addr::new(198, 18, 0, 1));
    assert_eq!(host_addr(999), Ipv4Addr::new(198, 18, 3, 232));
    assert_eq!(host_of(host_addr(999)), Some(999));
    assert_eq!(host_of(Ipv4Addr::new(127, 0, 0, 1)), None);
    for k in 0..1000 {
        let p = peer(5, k, 10);
        assert!(p < 10 && p != 5);
    }
    assert_eq!(peer(0, 3, 1), 0);
}

#[test]
fn every_sample_passes_the_wire_checks() {
    let mut all = vec![
        a_queued(3, 17, true, 10, 12_000),
        a_queued(3, 17, false, 10, 2_000),
        a_released(3, 17, true, 10),
        a_released(3, 17, false, 10),
    ];
    // Host 0's first connections too: their stream starts lowest (a
    // non-reading peer's `copied` once went below zero there).
    for (i, k) in [(3, 17), (0, 0), (0, 1)] {
        for stuck in [true, false] {
            let flow = a_flow(i, k, stuck, 10).reversed();
            all.push(b_watched(flow, 10).expect("a simulated connection"));
        }
    }
    for s in all {
        let wire = sample_to_wire(&s, v1::SampleReason::Suspect);
        assert_eq!(sample_from_wire(&wire).as_ref(), Ok(&s), "{s:?}");
    }
}

#[test]
fn a_stuck_flow_and_its_watched_peer_diagnose_as_peer_not_reading() {
    let a = a_queued(3, 17, true, 10, 10_000);
    let b = b_watched(a.flow.reversed(), 10).expect("peer end");
    assert_eq!(b.pos.rcv_nxt, a.pos.snd_una);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::PeerNotReading, "{v:?}");
    // The churning ones would not be an episode's to diagnose, but
    // their ends are consistent too.
    let a = a_queued(3, 18, false, 10, 2_000);
    let b = b_watched(a.flow.reversed(), 10).expect("peer end");
    assert_eq!(b.pos.rcv_nxt, a.pos.snd_una);
}

#[test]
fn unknown_tuples_are_absent() {
    let f = a_flow(3, 17, true, 10).reversed();
    let mut other = f;
    other.local.set_port(80);
    assert!(b_watched(other, 10).is_none());
    assert!(b_watched(f, 3).is_none(), "host 3 is not among 3 hosts");
}

#[test]
fn churn_keeps_the_suspect_count_and_releases_each_once() {
    let mut h = Host::new(0, shape(10), 1);
    h.start_load(Duration::ZERO);
    let mut released = 0usize;
    let mut suspects = Vec::new();
    for n in 0..50u32 {
        let out = h.poll(POLL * n);
        let churn = |r: SampleReason| {
            out.samples
                .iter()
                .filter(|(x, s)| *x == r && s.flow.remote.port() == CHURN_PORT)
                .count()
        };
        if n >= 5 {
            suspects.push(churn(SampleReason::Suspect));
        }
        released += out
            .samples
            .iter()
            .filter(|(x, s)| {
                matches!(x, SampleReason::Released(_)) && s.flow.remote.port() == CHURN_PORT
            })
            .count();
        for (r, s) in &out.samples {
            if *r == SampleReason::Suspect && s.flow.remote.port() == CHURN_PORT {
                assert!(s.unchanged_ms == 2000 || s.unchanged_ms == 4000);
            }
        }
    }
    let mean = suspects.iter().sum::<usize>() as f64 / suspects.len() as f64;
    assert!((180.0..=220.0).contains(&mean), "mean suspects {mean}");
    // 133 new queues a poll, each released once.
    assert!(released > 40 * 120, "released {released}");
}

#[test]
fn stuck_flows_are_reported_with_their_age_then_released_and_replaced() {
    let mut h = Host::new(0, shape(10), 7);
    h.start_load(Duration::ZERO);
    let mut starts = Vec::new();
    let mut longest = 0;
    let mut stuck_released = 0;
    for n in 0..60u32 {
        let now = POLL * n;
        let out = h.poll(now);
        for st in &out.stalls {
            assert!(
                st.start <= now && now - st.start < POLL,
                "first seen at the next poll"
            );
            starts.push(st.flow);
        }
        for (r, s) in &out.samples {
            if s.flow.remote.port() == STUCK_PORT {
                match r {
                    SampleReason::Suspect => longest = longest.max(s.unchanged_ms),
                    SampleReason::Released(Some(h)) => {
                        assert!(h.since <= h.last_held && h.last_held <= h.ended);
                        stuck_released += 1
                    }
                    SampleReason::Released(None) | SampleReason::Watched => unreachable!(),
                }
            }
        }
        assert!(h.stuck() <= 10);
    }
    // 30 s stalls: reported up to 28-30 s after first seen.
    assert!((26_000..=30_000).contains(&longest), "longest {longest}");
    // Every slot has run through several stalls, each a new 4-tuple.
    assert!(starts.len() >= 30, "{} stalls", starts.len());
    let unique: HashSet<_> = starts.iter().collect();
    assert_eq!(unique.len(), starts.len());
    assert!(stuck_released >= 20);
}

#[test]
fn watched_flows_are_sent_every_poll_until_unwatched() {
    let mut h = Host::new(4, shape(10), 3);
    let f = a_flow(2, 99, true, 10).reversed();
    let mut owner = Host::new(peer(2, 99, 10), shape(10), 3);
    owner.watch(f);
    let out = owner.poll(POLL);
    assert_eq!(out.samples.len(), 1);
    assert_eq!(out.samples[0].0, SampleReason::Watched);
    assert_eq!(out.samples[0].1.pos.rcv_wnd, Some(0));
    owner.unwatch(&f);
    assert!(owner.poll(POLL * 2).samples.is_empty());
    // Unloaded and unwatched: nothing, so a heartbeat.
    assert!(h.poll(POLL).samples.is_empty());
}
