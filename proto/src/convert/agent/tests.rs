//! Unit tests of the agent's messages' conversions: each goes to the wire
//! with the fields the agent has always set, and comes back whole through
//! the collector's side.

use std::net::IpAddr;
use std::time::Duration;

use prost::Message;
use tcpstall_common::{HeldEnd, HeldSpan, HostHello, MachineId, OwnerMissing};

use super::*;
use crate::convert::{
    agent_hello_from_wire, batch_from_wire, flow_from_wire, heartbeat_from_wire, hello_from_wire,
    to_agent_to_wire, welcome_to_wire,
};
use crate::raw;

fn sample() -> EndSample {
    crate::convert::tests::sample()
}

fn hello() -> AgentHello {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    AgentHello {
        host: "db-7".into(),
        machine_id: Some(MachineId::new("4c4c4544004d3510804ec4c04f4d3232").expect("id")),
        agent_version: "0.1.0".into(),
        kernel: "6.1.0-test".into(),
        boot_id: "2b1c1d3e-0000-4000-8000-000000000001".into(),
        namespaces: vec![
            NamespaceAddresses {
                label: "host".into(),
                inode: 4_026_531_840,
                addresses: vec![ip("127.0.0.1"), ip("198.18.0.1"), ip("2001:db8::1")],
            },
            NamespaceAddresses {
                label: "blue".into(),
                inode: 4_026_532_001,
                addresses: Vec::new(),
            },
        ],
        probes: ProbeSet {
            sock_diag: true,
            bpf_iter: false,
            getsockopt: true,
        },
        interval: Duration::from_millis(1500),
        answers_lookups: true,
        forwards: true,
    }
}

/// A batch with every kind of entry: a suspect, a release with its span, a
/// watched end, closings with and without a span, an absent flow.
fn batch() -> AgentBatch {
    let ms = Duration::from_millis;
    let moved = HeldSpan::new(ms(100), ms(1300), ms(1500), HeldEnd::Moved).expect("span");
    let reset = HeldSpan::new(ms(200), ms(1250), ms(1500), HeldEnd::Reset).expect("span");
    let s = sample();
    let mut watched = EndSample {
        cookie: 43,
        owner: None,
        owner_missing: Some(OwnerMissing::NoPermission),
        ..sample()
    };
    watched.flow = s.flow.reversed();
    AgentBatch {
        mono: Duration::from_micros(123_456_789),
        connections: 70_000,
        samples: vec![
            (SampleReason::Suspect, s.clone()),
            (
                SampleReason::Released(Some(moved)),
                EndSample {
                    cookie: 44,
                    ..s.clone()
                },
            ),
            (
                SampleReason::Released(None),
                EndSample {
                    cookie: 45,
                    ..s.clone()
                },
            ),
            (SampleReason::Watched, watched),
        ],
        packed: Vec::new(),
        closed: vec![
            ClosedSocket {
                netns: "host".into(),
                flow: s.flow,
                cookie: 4,
                held: Some(reset),
            },
            ClosedSocket {
                netns: "blue".into(),
                flow: s.flow.reversed(),
                cookie: 5,
                held: None,
            },
        ],
        absent: vec![s.flow.reversed()],
        lookups: vec![
            Lookup {
                flow: s.flow.reversed(),
                translation: None,
                connected_to: Some("192.0.2.9:443".parse().expect("addr")),
                asked: false,
            },
            Lookup {
                flow: crate::convert::tests::translation().reply,
                translation: Some(crate::convert::tests::translation()),
                connected_to: None,
                asked: true,
            },
        ],
        dropped_batches: 2,
        dropped_samples: 300,
    }
}

/// The Hello as the agent built it before the domain types existed
/// (agent/src/hello.rs): every field set, byte for byte.
#[test]
fn a_hello_goes_out_with_the_fields_the_agent_always_set() {
    let h = hello();
    let by_hand = v1::Hello {
        protocol: crate::PROTOCOL_VERSION,
        host: h.host.clone(),
        agent_version: h.agent_version.clone(),
        kernel: h.kernel.clone(),
        boot_id: h.boot_id.clone(),
        namespaces: h
            .namespaces
            .iter()
            .map(|ns| v1::Namespace {
                label: ns.label.clone(),
                inode: ns.inode,
                addresses: ns.addresses.iter().map(|ip| ip_to_wire(*ip)).collect(),
            })
            .collect(),
        probes: Some(v1::Probes {
            sock_diag: true,
            bpf_iter: false,
            getsockopt: true,
        }),
        interval_ms: 1500,
        answers_lookups: true,
        forwards: true,
        machine_id: "4c4c4544004d3510804ec4c04f4d3232".into(),
    };
    let wire = hello_to_wire(h);
    assert_eq!(wire, by_hand);
    assert_eq!(wire.encode_to_vec(), by_hand.encode_to_vec());
}

#[test]
fn a_hello_comes_back_whole_and_as_the_collector_keeps_it() {
    let h = hello();
    let wire = hello_to_wire(h.clone());
    assert_eq!(agent_hello_from_wire(&wire), Ok(h.clone()));
    let host = hello_from_wire(&wire).expect("valid");
    assert_eq!(
        host,
        HostHello {
            host: h.host.clone(),
            machine_id: h.machine_id.clone(),
            agent_version: h.agent_version.clone(),
            kernel: h.kernel.clone(),
            boot_id: h.boot_id.clone(),
            namespaces: h.namespaces.clone(),
            interval: h.interval,
            answers_lookups: true,
            forwards: true,
            probes: h.probes,
        },
        "every namespace with its addresses, in order, and the probes"
    );
    // An interval beyond the wire's u32 of milliseconds saturates (the
    // collector refuses it), as it always did.
    let long = AgentHello {
        interval: Duration::from_secs(u64::from(u32::MAX)),
        ..h.clone()
    };
    assert_eq!(hello_to_wire(long).interval_ms, u32::MAX);
}

#[test]
fn a_machine_id_goes_on_the_wire_and_none_is_empty() {
    let h = hello();
    let wire = hello_to_wire(h.clone());
    assert_eq!(wire.machine_id, "4c4c4544004d3510804ec4c04f4d3232");
    // An agent without one (or one that predates it) sends none.
    let old = hello_to_wire(AgentHello {
        machine_id: None,
        ..h
    });
    assert_eq!(old.machine_id, "");
    assert_eq!(hello_from_wire(&old).expect("valid").machine_id, None);
    // What is sent must be one: the collector names the field.
    for bad in ["two words", "ctl\u{7}", &"m".repeat(129)] {
        let wire = v1::Hello {
            machine_id: bad.to_string(),
            ..wire.clone()
        };
        let err = hello_from_wire(&wire).expect_err("refused");
        assert!(err.to_string().contains("machine_id"), "{err}");
    }
}

#[test]
fn a_whole_hello_is_checked_as_the_collector_checks_it_and_its_labels_bounded() {
    let good = hello_to_wire(hello());
    let bad = |f: fn(&mut v1::Hello)| {
        let mut h = good.clone();
        f(&mut h);
        let whole = agent_hello_from_wire(&h).expect_err("refused");
        (whole, hello_from_wire(&h))
    };
    for f in [
        (|h: &mut v1::Hello| h.protocol = 99) as fn(&mut v1::Hello),
        |h| h.host = "db 7".into(),
        |h| h.interval_ms = 10,
        |h| {
            h.namespaces[1]
                .addresses
                .push(v1::Ip { octets: vec![1; 5] })
        },
        |h| h.kernel = "k".repeat(300),
    ] {
        let (whole, collector) = bad(f);
        assert_eq!(collector, Err(whole), "the same refusal either way");
    }
    // A label is bounded as a sample's namespace is, by the collector too
    // (it keeps which namespace holds each address).
    let (whole, collector) = bad(|h| h.namespaces[0].label = "x".repeat(300));
    assert_eq!(
        whole,
        ConvertError::TooLong {
            field: "namespaces.label",
            len: 300,
            max: crate::convert::MAX_NAME
        }
    );
    assert_eq!(collector, Err(whole));
    // No probes said: none work.
    let mut h = good.clone();
    h.probes = None;
    assert_eq!(
        agent_hello_from_wire(&h).map(|h| h.probes),
        Ok(ProbeSet::default())
    );
}

/// The batch as the agent built it before the domain types existed
/// (agent/src/run.rs `to_batches`, agent/src/outbox.rs `pop`).
fn batch_by_hand(b: &AgentBatch) -> v1::Batch {
    v1::Batch {
        mono_us: micros(b.mono),
        connections: b.connections,
        samples: b
            .samples
            .iter()
            .map(|(r, s)| reasoned_sample_to_wire(r, s))
            .collect(),
        closed: b
            .closed
            .iter()
            .map(|g| v1::Closed {
                netns: g.netns.clone(),
                local: Some(endpoint_to_wire(g.flow.local)),
                remote: Some(endpoint_to_wire(g.flow.remote)),
                cookie: g.cookie,
                held: g.held.as_ref().map(held_to_wire),
            })
            .collect(),
        dropped_batches: b.dropped_batches,
        dropped_samples: b.dropped_samples,
        absent: b.absent.iter().map(|f| flow_to_wire(*f)).collect(),
        lookups: b
            .lookups
            .iter()
            .map(|l| v1::Lookup {
                flow: Some(flow_to_wire(l.flow)),
                translation: l.translation.map(|t| v1::Translation {
                    original: Some(flow_to_wire(t.original)),
                    reply: Some(flow_to_wire(t.reply)),
                    src_nat: t.src_nat,
                    dst_nat: t.dst_nat,
                }),
                connected_to: l.connected_to.map(endpoint_to_wire),
                asked: l.asked,
            })
            .collect(),
    }
}

#[test]
fn a_batch_goes_out_with_the_fields_the_agent_always_set() {
    let b = batch();
    let by_hand = batch_by_hand(&b);
    let wire = batch_to_wire(b);
    assert_eq!(wire, by_hand);
    assert_eq!(wire.encode_to_vec(), by_hand.encode_to_vec());
    // A release carries its span; nothing else does.
    let spans: Vec<bool> = wire.samples.iter().map(|s| s.held.is_some()).collect();
    assert_eq!(spans, [false, true, false, false]);
    // The agent's clock goes in whole microseconds.
    let fine = AgentBatch {
        mono: Duration::from_nanos(1_999),
        ..AgentBatch::default()
    };
    assert_eq!(batch_to_wire(fine).mono_us, 1);
}

/// What goes out as a Batch comes back through the collector's reading of
/// it equal, but for the encodings it keeps.
#[test]
fn a_batch_comes_back_whole() {
    let b = batch();
    let bytes = agent_message_to_wire(ToCollector::Batch(b.clone())).encode_to_vec();
    let Some(raw::agent_message::Body::Batch(r)) =
        raw::AgentMessage::decode(&bytes[..]).expect("decodes").body
    else {
        panic!("not a batch");
    };
    let mut back = batch_from_wire(r, 100).expect("valid");
    let kept: Vec<bool> = back.packed.iter().map(Option::is_some).collect();
    assert_eq!(kept, [true, false, false, true], "releases are not kept");
    back.packed.clear();
    assert_eq!(back, b);
}

#[test]
fn a_closing_with_an_overlong_namespace_is_refused() {
    let mut b = batch();
    b.closed[1].netns = "x".repeat(300);
    let wire = batch_to_wire(b);
    let r = raw::Batch::decode(&wire.encode_to_vec()[..]).expect("decodes");
    assert_eq!(
        batch_from_wire(r, 100),
        Err(ConvertError::TooLong {
            field: "closed.netns",
            len: 300,
            max: crate::convert::MAX_NAME
        })
    );
}

#[test]
fn a_heartbeat_goes_out_as_it_always_did_and_comes_back() {
    let h = Heartbeat {
        mono: Duration::from_micros(77),
        connections: 12,
        dropped_batches: 1,
        dropped_samples: 5,
    };
    let wire = heartbeat_to_wire(h);
    assert_eq!(
        wire,
        v1::Heartbeat {
            mono_us: 77,
            connections: 12,
            dropped_batches: 1,
            dropped_samples: 5,
        }
    );
    assert_eq!(heartbeat_from_wire(&wire), h);
}

/// Each message in its envelope, read back as the collector reads the
/// stream.
#[test]
fn every_message_goes_in_its_envelope_and_comes_back() {
    let heartbeat = Heartbeat {
        mono: Duration::from_micros(5),
        ..Heartbeat::default()
    };
    for m in [
        ToCollector::Hello(hello()),
        ToCollector::Batch(batch()),
        ToCollector::Heartbeat(heartbeat),
        ToCollector::Addresses(hello().namespaces),
    ] {
        let bytes = agent_message_to_wire(m.clone()).encode_to_vec();
        let body = raw::AgentMessage::decode(&bytes[..])
            .expect("decodes")
            .body
            .expect("a body");
        let back = match body {
            raw::agent_message::Body::Hello(h) => {
                ToCollector::Hello(agent_hello_from_wire(&h).expect("valid"))
            }
            raw::agent_message::Body::Batch(b) => {
                let mut b = batch_from_wire(b, 100).expect("valid");
                b.packed.clear();
                ToCollector::Batch(b)
            }
            raw::agent_message::Body::Heartbeat(h) => {
                ToCollector::Heartbeat(heartbeat_from_wire(&h))
            }
            raw::agent_message::Body::Addresses(a) => {
                ToCollector::Addresses(crate::convert::addresses_from_wire(&a).expect("valid"))
            }
        };
        assert_eq!(back, m);
    }
}

#[test]
fn requests_and_the_welcome_come_back_whole() {
    let flow = sample().flow;
    for ask in [
        ToAgent::Watch(flow),
        ToAgent::Unwatch(flow.reversed()),
        ToAgent::Translate(flow),
    ] {
        assert_eq!(
            collector_message_from_wire(to_agent_to_wire(ask)),
            Ok(Some(FromCollector::Request(ask)))
        );
    }
    let welcome = Welcome {
        protocol: crate::PROTOCOL_VERSION,
        collector_version: "0.1.0".into(),
        reads_addresses: true,
    };
    assert_eq!(
        collector_message_from_wire(welcome_to_wire(welcome.clone())),
        Ok(Some(FromCollector::Welcome(welcome)))
    );
    // No body this build knows: nothing to do, nothing wrong.
    assert_eq!(
        collector_message_from_wire(v1::CollectorMessage { body: None }),
        Ok(None)
    );
}

#[test]
fn a_malformed_request_is_refused_naming_its_field() {
    let flow = flow_to_wire(sample().flow);
    let watch = |flow: Option<v1::FlowTuple>| v1::CollectorMessage {
        body: Some(collector_message::Body::Watch(v1::Watch {
            flow,
            reason: "peer of a suspect flow".into(),
        })),
    };
    let unwatch = |flow: Option<v1::FlowTuple>| v1::CollectorMessage {
        body: Some(collector_message::Body::Unwatch(v1::Unwatch { flow })),
    };
    assert_eq!(
        collector_message_from_wire(watch(None)),
        Err(ConvertError::Missing("watch.flow"))
    );
    assert_eq!(
        collector_message_from_wire(unwatch(None)),
        Err(ConvertError::Missing("unwatch.flow"))
    );
    let mut short = flow.clone();
    short.local = Some(v1::Endpoint {
        ip: Some(v1::Ip {
            octets: vec![10, 0],
        }),
        port: 80,
    });
    assert_eq!(
        collector_message_from_wire(watch(Some(short))),
        Err(ConvertError::Address {
            field: "watch.flow.local",
            len: 2
        })
    );
    let mut port = flow.clone();
    if let Some(e) = port.remote.as_mut() {
        e.port = 70_000;
    }
    assert_eq!(
        collector_message_from_wire(unwatch(Some(port))),
        Err(ConvertError::Port {
            field: "unwatch.flow.remote",
            port: 70_000
        })
    );
    let mut no_remote = flow.clone();
    no_remote.remote = None;
    assert_eq!(
        collector_message_from_wire(watch(Some(no_remote))),
        Err(ConvertError::Missing("watch.flow.remote"))
    );
    // The flow is read as the agent always read it.
    assert_eq!(
        collector_message_from_wire(watch(Some(flow.clone()))),
        Ok(Some(FromCollector::Request(ToAgent::Watch(
            flow_from_wire(Some(&flow)).expect("valid")
        ))))
    );
    let long = welcome_to_wire(Welcome {
        protocol: 1,
        collector_version: "v".repeat(300),
        reads_addresses: false,
    });
    assert!(matches!(
        collector_message_from_wire(long),
        Err(ConvertError::TooLong {
            field: "welcome.collector_version",
            ..
        })
    ));
}
