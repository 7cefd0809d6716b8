//! Unit tests of `sim`.

use tcpstall_collector::matcher::diagnose::{diagnose, Peer};
use tcpstall_common::Diagnosis;
use tcpstall_proto::convert::{sample_from_wire, sample_to_wire};
use tcpstall_proto::v1;

use super::*;

const POLL: Duration = Duration::from_secs(2);

/// Ten hosts, nothing translated.
const D10: Net = Net {
    hosts: 10,
    translated_every: 0,
};

fn shape(hosts: u32) -> Shape {
    Shape {
        net: Net::direct(hosts),
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
        a_queued(3, 17, true, D10, 12_000),
        a_queued(3, 17, false, D10, 2_000),
        a_released(3, 17, true, D10),
        a_released(3, 17, false, D10),
    ];
    // Host 0's first connections too: their stream starts lowest (a
    // non-reading peer's `copied` once went below zero there).
    for (i, k) in [(3, 17), (0, 0), (0, 1)] {
        for stuck in [true, false] {
            let flow = a_flow(i, k, stuck, D10).reversed();
            all.push(b_watched(flow, D10).expect("a simulated connection"));
        }
    }
    for s in all {
        let wire = sample_to_wire(&s, v1::SampleReason::Suspect);
        assert_eq!(sample_from_wire(&wire).as_ref(), Ok(&s), "{s:?}");
    }
}

#[test]
fn a_stuck_flow_and_its_watched_peer_diagnose_as_peer_not_reading() {
    let a = a_queued(3, 17, true, D10, 10_000);
    let b = b_watched(a.flow.reversed(), D10).expect("peer end");
    assert_eq!(b.pos.rcv_nxt, a.pos.snd_una);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::PeerNotReading, "{v:?}");
    // The churning ones would not be an episode's to diagnose, but
    // their ends are consistent too.
    let a = a_queued(3, 18, false, D10, 2_000);
    let b = b_watched(a.flow.reversed(), D10).expect("peer end");
    assert_eq!(b.pos.rcv_nxt, a.pos.snd_una);
}

#[test]
fn unknown_tuples_are_absent() {
    let f = a_flow(3, 17, true, D10).reversed();
    let mut other = f;
    other.local.set_port(80);
    assert!(b_watched(other, D10).is_none());
    assert!(
        b_watched(f, Net::direct(3)).is_none(),
        "host 3 is not among 3 hosts"
    );
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
    let f = a_flow(2, 99, true, D10).reversed();
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

/// Ten hosts, one in `every` connections translated.
fn nat_net(every: u32) -> Net {
    Net {
        hosts: 10,
        translated_every: every,
    }
}

/// The first connection of host 3 whose translation is `want`.
fn first(net: Net, want: Nat) -> u32 {
    (0..1000)
        .find(|&k| net.nat(k) == want)
        .expect("a connection")
}

#[test]
fn one_in_n_connections_is_translated_half_at_each_end() {
    let count = |net: Net, want: Nat| (0..4000).filter(|&k| net.nat(k) == want).count();
    let net = nat_net(4);
    assert_eq!(count(net, Nat::Direct), 3000);
    assert_eq!(count(net, Nat::Service), 500);
    assert_eq!(count(net, Nat::PortForward), 500);
    assert_eq!(count(D10, Nat::Direct), 4000, "off by default");
    // The last hosts forward packets, only when translation is on.
    let forwarders: Vec<u32> = (0..10).filter(|&i| net.forwards(i)).collect();
    assert_eq!(forwarders, vec![8, 9]);
    assert!((0..10).all(|i| !D10.forwards(i)));
    // Untranslated connections are as they were.
    for k in 0..40 {
        if net.nat(k) == Nat::Direct {
            assert_eq!(a_flow(3, k, true, net), a_flow(3, k, true, D10));
            assert_eq!(a_queued(3, k, true, net, 0), a_queued(3, k, true, D10, 0));
        }
    }
}

#[test]
fn translated_samples_pass_the_wire_checks() {
    let net = nat_net(2);
    let mut all = Vec::new();
    for want in [Nat::Service, Nat::PortForward] {
        let k = first(net, want);
        for stuck in [true, false] {
            all.push(a_queued(3, k, stuck, net, 12_000));
            all.push(a_released(3, k, stuck, net));
            all.push(b_watched(nat::b_flow(3, k, stuck, net), net).expect("the peer's socket"));
        }
    }
    for s in all {
        let wire = sample_to_wire(&s, v1::SampleReason::Suspect);
        assert_eq!(sample_from_wire(&wire).as_ref(), Ok(&s), "{s:?}");
    }
}

/// A service address dialled (DNAT on the sender's host): A's samples
/// carry the entry, whose other direction is the socket the peer holds;
/// the 4-tuple reversed is nobody's, and the peer's host knows nothing of it.
#[test]
fn a_service_address_leads_through_the_senders_entry_to_the_peer() {
    let net = nat_net(2);
    let k = first(net, Nat::Service);
    let a = a_queued(3, k, true, net, 10_000);
    let p = peer(3, k, 10);
    assert_eq!(a.flow.remote.ip(), nat::service_addr(p));
    assert_eq!(a.flow.remote.port(), STUCK_PORT);
    let t = a.translation.as_deref().expect("its host's entry");
    assert!(t.dst_nat && !t.src_nat);
    let b_flow = t.far_side(a.flow).expect("the entry holds A's flow");
    assert_eq!(b_flow.local.ip(), host_addr(p));
    assert_eq!(b_flow, nat::b_flow(3, k, true, net));
    let b = b_watched(b_flow, net).expect("the peer holds it");
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::PeerNotReading, "{v:?}");
    assert!(b_watched(a.flow.reversed(), net).is_none());
    assert!(nat::b_lookup(a.flow.reversed(), net).is_none());
    assert!(nat::b_lookup(b_flow, net).is_none(), "not translated there");
}

/// A port forwarded into a container on the peer's host: A's sample is as
/// if direct; the peer has no socket on the 4-tuple reversed, and says so
/// with its entry, which leads to the container's socket.
#[test]
fn a_port_forward_is_absent_with_the_peers_entry_then_held_in_the_container() {
    let net = nat_net(2);
    let k = first(net, Nat::PortForward);
    let a = a_queued(3, k, true, net, 10_000);
    let p = peer(3, k, 10);
    assert_eq!(a.flow, a_flow(3, k, true, D10));
    assert!(a.translation.is_none());
    let w = a.flow.reversed();
    assert!(b_watched(w, net).is_none());
    let l = nat::b_lookup(w, net).expect("its host's entry");
    assert_eq!((l.flow, l.asked, l.connected_to), (w, false, None));
    let t = l.translation.expect("an entry");
    assert!(t.dst_nat && t.holds(a.flow));
    // Where the collector looks next: the entry's other direction.
    let behind = t.far_side(w.reversed()).expect("the entry holds it");
    assert_eq!(behind.local.ip(), nat::container_addr(p));
    assert_eq!(behind.local.port(), STUCK_PORT + nat::CONTAINER_PORT_OFFSET);
    assert_eq!(behind.remote, a.flow.local);
    let b = b_watched(behind, net).expect("the container's socket");
    assert_eq!(b.netns, nat::CONTAINER_NETNS);
    assert_eq!(b.pos.rcv_nxt, a.pos.snd_una);
    let v = diagnose(&a, Peer::Seen(&b));
    assert_eq!(v.diagnosis, Diagnosis::PeerNotReading, "{v:?}");
    assert!(nat::b_lookup(behind, net).is_none(), "the socket itself");
}

#[test]
fn a_host_says_what_its_conntrack_holds_and_answers_translate_requests() {
    let net = nat_net(2);
    let k = first(net, Nat::PortForward);
    let w = a_flow(3, k, true, net).reversed();
    let mut s = shape(10);
    s.net = net;
    let mut owner = Host::new(peer(3, k, 10), s, 3);
    owner.watch(w);
    let out = owner.poll(POLL);
    assert_eq!(out.absent, vec![w]);
    assert_eq!(out.lookups, vec![nat::b_lookup(w, net).expect("entry")]);
    assert!(out.samples.is_empty());
    // Asked for the container's socket instead.
    owner.unwatch(&w);
    owner.watch(nat::b_flow(3, k, true, net));
    let out = owner.poll(POLL * 2);
    assert!(out.absent.is_empty() && out.lookups.is_empty());
    assert_eq!(out.samples.len(), 1);
    assert_eq!(out.samples[0].0, SampleReason::Watched);
    owner.unwatch(&nat::b_flow(3, k, true, net));
    // A Translate request: answered once, at the next poll, with no entry.
    let asked = a_flow(3, k, true, net);
    assert!(owner.translate(asked));
    let out = owner.poll(POLL * 3);
    assert_eq!(out.lookups, vec![nat::translate_answer(asked)]);
    assert!(out.lookups[0].asked && out.lookups[0].translation.is_none());
    assert!(!out.is_empty(), "an answer is worth a batch");
    assert!(owner.poll(POLL * 4).is_empty());
    // Bounded.
    for _ in 0..MAX_TRANSLATE_ASKED {
        assert!(owner.translate(asked));
    }
    assert!(!owner.translate(asked));
    assert_eq!(owner.poll(POLL * 5).lookups.len(), MAX_TRANSLATE_ASKED);
}

#[test]
fn stalls_say_where_they_are_translated_and_whose_peer_they_have() {
    let mut s = shape(10);
    s.net = nat_net(2);
    let mut h = Host::new(3, s, 7);
    h.start_load(Duration::ZERO);
    let mut seen = HashSet::new();
    for n in 0..30u32 {
        for st in h.poll(POLL * n).stalls {
            let k = u32::from(st.flow.local.port() - CLIENT_PORT_BASE);
            assert_eq!(st.nat, s.net.nat(k));
            assert_eq!(st.peer, peer(3, k, 10));
            assert_eq!(st.flow, a_flow(3, k, true, s.net));
            seen.insert(st.nat);
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}
