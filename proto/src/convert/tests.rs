//! Unit tests of `convert`.

use super::*;

pub(super) fn sample() -> EndSample {
    EndSample {
        flow: FlowTuple::new(
            "198.18.0.1:40000".parse().expect("addr"),
            "[2001:db8::1]:80".parse().expect("addr"),
        ),
        netns: "host".into(),
        state: TcpState::Established,
        cookie: 42,
        inode: 7,
        opened: Some(Opened::Active),
        pos: Positions {
            sendq: 300,
            recvq: 20,
            notsent: Some(100),
            inflight: Some(200),
            snd_una: Some(1000),
            snd_nxt: Some(1200),
            write_seq: Some(1300),
            rcv_nxt: Some(70),
            copied: Some(50),
            snd_wnd: Some(65536),
            rcv_wnd: None,
            snd_wscale: Some(7),
            rcv_wscale: Some(9),
        },
        unchanged_ms: 4000,
        timer: Some(TimerKind::Retransmit),
        timer_expires_ms: 200,
        retransmits: Some(2),
        probes: Some(0),
        backoff: Some(1),
        ca_state: Some(4),
        rto_us: Some(408_000),
        rtt_us: Some(120),
        snd_cwnd: Some(1),
        unacked: Some(2),
        lost: Some(2),
        retrans: Some(1),
        total_retrans: Some(3),
        last_data_sent_ms: Some(5),
        last_data_recv_ms: None,
        last_ack_recv_ms: Some(4000),
        bytes_retrans: Some(600),
        rmem_alloc: Some(130_224),
        rcvbuf: Some(131_072),
        cork: Some(true),
        cork_source: Some(FactSource::Getsockopt),
        nodelay: Some(false),
        nodelay_source: Some(FactSource::Getsockopt),
        owner: Some(Box::new(ProcessOwner {
            pid: 4242,
            command: "/usr/bin/app --serve".into(),
            unit: Some("app.service".into()),
            cgroup: Some("/system.slice/app.service".into()),
        })),
        owner_missing: None,
        absolute: Some(Box::new(AbsoluteSeq {
            snd_una: u32::MAX - 100,
            snd_nxt: 99,
            write_seq: 199,
            rcv_nxt: 70,
            snd_isn: Some(u32::MAX - 1100),
            rcv_isn: None,
            sacks_sent: vec![],
            sacks_received: vec![SackBlock { start: 20, end: 90 }; 4],
        })),
        translation: Some(Box::new(translation())),
    }
}

/// A DNAT'd connection's entry: a client's dial of a service address,
/// rewritten to a server.
pub(super) fn translation() -> Translation {
    let a = |s: &str| s.parse().expect("addr");
    Translation {
        original: FlowTuple::new(a("10.0.0.1:40000"), a("10.96.0.10:80")),
        reply: FlowTuple::new(a("10.1.0.7:8080"), a("10.0.0.1:40000")),
        src_nat: false,
        dst_nat: true,
    }
}

#[test]
fn a_wire_sample_converts_the_same_taken_or_borrowed() {
    // Good ones, and ones refused for their name, for another field,
    // or for both (the same fault must be named either way).
    let mut cases = Vec::new();
    for netns in [
        String::new(),
        "host".into(),
        "n".repeat(MAX_NAME),
        "n".repeat(MAX_NAME + 1),
    ] {
        let mut w = sample_to_wire(&sample(), v1::SampleReason::Suspect);
        w.netns = netns;
        cases.push(w.clone());
        let mut bad_state = w.clone();
        bad_state.state = 99;
        cases.push(bad_state);
        let mut bad_port = w;
        if let Some(e) = bad_port.local.as_mut() {
            e.port = 70_000;
        }
        cases.push(bad_port);
    }
    let mut refused = 0;
    for w in cases {
        let borrowed = sample_from_wire(&w);
        refused += usize::from(borrowed.is_err());
        assert_eq!(sample_from_wire_owned(w), borrowed);
    }
    assert_eq!(refused, 9, "3 good names x 2 faults, and the long name x 3");
}

#[test]
fn an_old_agent_without_the_new_facts_is_accepted() {
    let mut w = sample_to_wire(&sample(), v1::SampleReason::Suspect);
    w.nodelay = None;
    w.nodelay_source = 0;
    w.owner = None;
    w.owner_missing = 0;
    w.absolute = None;
    let s = sample_from_wire(&w).expect("accepted");
    assert_eq!(s.nodelay, None);
    assert_eq!(s.owner, None);
    assert_eq!(s.owner_missing, None);
    assert_eq!(s.absolute, None);
    // Unknown with its reason round-trips too.
    let mut s = sample();
    s.owner = None;
    s.owner_missing = Some(OwnerMissing::NoPermission);
    let w = sample_to_wire(&s, v1::SampleReason::Watched);
    assert_eq!(sample_from_wire(&w), Ok(s));
}

#[test]
fn sample_round_trips() {
    let s = sample();
    let w = sample_to_wire(&s, v1::SampleReason::Suspect);
    assert_eq!(sample_from_wire(&w), Ok(s));
}

#[test]
fn impossible_values_are_refused() {
    let good = sample_to_wire(&sample(), v1::SampleReason::Suspect);
    type Breaker = Box<dyn Fn(&mut v1::Sample)>;
    let cases: Vec<(Breaker, &str)> = vec![
        (Box::new(|w| w.state = 99), "state"),
        (Box::new(|w| w.state = 10), "state"),
        (Box::new(|w| w.snd_nxt = Some(10)), "snd_nxt"),
        (Box::new(|w| w.sendq = 1), "sendq"),
        (Box::new(|w| w.recvq = 1), "recvq"),
        (Box::new(|w| w.snd_wscale = Some(15)), "wscale"),
        (Box::new(|w| w.local = None), "local"),
        (
            Box::new(|w| {
                if let Some(e) = w.remote.as_mut() {
                    e.port = 70000;
                }
            }),
            "port",
        ),
        (
            Box::new(|w| {
                if let Some(e) = w.remote.as_mut() {
                    e.ip = Some(v1::Ip {
                        octets: vec![1, 2, 3],
                    });
                }
            }),
            "address",
        ),
        (Box::new(|w| w.netns = "x".repeat(300)), "netns"),
        (
            Box::new(|w| {
                if let Some(o) = w.owner.as_mut() {
                    o.command = "x".repeat(MAX_COMMAND + 1);
                }
            }),
            "owner.command",
        ),
        (
            Box::new(|w| {
                if let Some(o) = w.owner.as_mut() {
                    o.unit = Some("u".repeat(MAX_UNIT + 1));
                }
            }),
            "owner.unit",
        ),
        (
            Box::new(|w| {
                if let Some(o) = w.owner.as_mut() {
                    o.cgroup = Some("/".repeat(MAX_CGROUP + 1));
                }
            }),
            "owner.cgroup",
        ),
        (
            Box::new(|w| {
                if let Some(a) = w.absolute.as_mut() {
                    a.sacks_received.push(v1::SackBlock { start: 1, end: 2 });
                }
            }),
            "sacks",
        ),
    ];
    for (break_it, what) in cases {
        let mut w = good.clone();
        break_it(&mut w);
        assert!(sample_from_wire(&w).is_err(), "{what} must be refused");
    }
}

#[test]
fn held_spans_cross_the_wire_and_bad_ones_are_refused() {
    let ms = Duration::from_millis;
    let h = HeldSpan::new(ms(1_000), ms(11_250), ms(11_500), HeldEnd::Closed).expect("span");
    assert_eq!(held_from_wire(&held_to_wire(&h)), Ok(h));
    let mut w = held_to_wire(&h);
    w.end = v1::HeldEnd::Unspecified as i32;
    assert!(held_from_wire(&w).is_err(), "an end must be named");
    let mut w = held_to_wire(&h);
    w.end = 17;
    assert!(held_from_wire(&w).is_err(), "an unknown end is refused");
    let mut w = held_to_wire(&h);
    w.ended_us = w.last_held_us - 1;
    assert!(
        held_from_wire(&w).is_err(),
        "over before its last held look"
    );
    let mut w = held_to_wire(&h);
    w.since_us = w.last_held_us + 1;
    assert!(held_from_wire(&w).is_err(), "held after its last held look");
}
