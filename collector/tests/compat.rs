//! Upgrades: what an agent of an earlier release sent must still be taken
//! by this collector. Each release adds a fixture — a Hello and a Batch
//! exactly as that release's agent encoded them — and never rewrites an
//! old one; the proto only evolves by adding fields.
//!
//! `TCPSTALL_BLESS=1` writes the fixture of the current release if it is
//! missing (never over an existing one).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use prost::Message;
use tcpstall_common::{FlowTuple, SampleReason, ToCollector};
use tcpstall_proto::convert::{self, batch_from_wire, hello_from_wire};
use tcpstall_proto::raw;
use tcpstall_proto::v1::{self, agent_message};

mod support;
use support::a_end;

fn fixture(release: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("agent-{release}.bin"))
}

/// What this release's agent says: a Hello, then one Batch with a suspect,
/// a watched peer end, a closed socket and an absent flow.
fn messages() -> Vec<v1::AgentMessage> {
    let hello = v1::Hello {
        protocol: tcpstall_proto::PROTOCOL_VERSION,
        host: "old-agent".into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel: "5.14.0-test".into(),
        boot_id: "boot".into(),
        namespaces: vec![v1::Namespace {
            label: "host".into(),
            inode: 4_026_531_840,
            addresses: vec![convert::ip_to_wire("198.18.3.2".parse().expect("ip"))],
        }],
        probes: Some(v1::Probes {
            sock_diag: true,
            ..Default::default()
        }),
        interval_ms: 2000,
        ..Default::default()
    };
    let a = a_end(41, 5000, 3000);
    let mut b = a_end(42, 1, 0);
    b.flow = a.flow.reversed();
    let gone = FlowTuple::new(
        SocketAddr::from(([198, 18, 3, 2], 9000)),
        SocketAddr::from(([198, 18, 3, 9], 50000)),
    );
    let batch = v1::Batch {
        mono_us: 123_456_789,
        connections: 20_000,
        samples: vec![
            convert::sample_to_wire(&a, v1::SampleReason::Suspect),
            convert::sample_to_wire(&b, v1::SampleReason::Watched),
        ],
        closed: vec![v1::Closed {
            local: Some(convert::endpoint_to_wire(gone.local)),
            remote: Some(convert::endpoint_to_wire(gone.remote)),
            cookie: 7,
            netns: "host".into(),
            held: None,
        }],
        absent: vec![convert::flow_to_wire(gone.reversed())],
        dropped_batches: 2,
        dropped_samples: 300,
        ..Default::default()
    };
    vec![
        v1::AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        },
        v1::AgentMessage {
            body: Some(agent_message::Body::Batch(batch)),
        },
    ]
}

/// Length-delimited messages, as on a stream.
fn encode(msgs: &[v1::AgentMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode_length_delimited(&mut out).expect("encode");
    }
    out
}

/// Each message as a domain message, then on the wire as this release's
/// agent writes it.
fn sent_again(msgs: &[raw::AgentMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let domain = match m.body.clone().expect("a body") {
            raw::agent_message::Body::Hello(h) => {
                ToCollector::Hello(convert::agent_hello_from_wire(&h).expect("valid"))
            }
            raw::agent_message::Body::Batch(b) => {
                ToCollector::Batch(batch_from_wire(b, 50_000).expect("valid"))
            }
            raw::agent_message::Body::Heartbeat(h) => {
                ToCollector::Heartbeat(convert::heartbeat_from_wire(&h))
            }
            raw::agent_message::Body::Addresses(a) => {
                ToCollector::Addresses(convert::addresses_from_wire(&a).expect("valid"))
            }
        };
        convert::agent_message_to_wire(domain)
            .encode_length_delimited(&mut out)
            .expect("encode");
    }
    out
}

/// As the collector reads them.
fn decode(mut bytes: &[u8]) -> Vec<raw::AgentMessage> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        out.push(raw::AgentMessage::decode_length_delimited(&mut bytes).expect("decodes"));
    }
    out
}

#[test]
fn every_earlier_agent_release_is_understood() {
    let current = fixture(env!("CARGO_PKG_VERSION"));
    if std::env::var_os("TCPSTALL_BLESS").is_some() && !current.exists() {
        std::fs::write(&current, encode(&messages())).expect("write fixture");
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "bin") {
            continue;
        }
        seen += 1;
        let bytes = std::fs::read(&path).expect("read fixture");
        let msgs = decode(&bytes);
        // Read as domain messages and sent again as this release's agent
        // sends them: the same bytes, nothing the agent said lost or
        // changed on the way through.
        assert_eq!(sent_again(&msgs), bytes, "{}", path.display());
        let [hello, batch] = msgs.as_slice() else {
            panic!("{}: a Hello and a Batch", path.display());
        };
        let Some(raw::agent_message::Body::Hello(h)) = &hello.body else {
            panic!("{}: first a Hello", path.display());
        };
        let h =
            hello_from_wire(h).unwrap_or_else(|s| panic!("{}: hello refused: {s}", path.display()));
        assert_eq!(h.host, "old-agent");
        assert_eq!(h.interval, Duration::from_secs(2));
        let Some(raw::agent_message::Body::Batch(b)) = &batch.body else {
            panic!("{}: then a Batch", path.display());
        };
        let b = batch_from_wire(b.clone(), 50_000)
            .unwrap_or_else(|s| panic!("{}: batch refused: {s}", path.display()));
        assert_eq!(b.samples.len(), 2);
        assert_eq!(b.samples[0].0, SampleReason::Suspect);
        assert_eq!(b.samples[0].1.pos.sendq, 3000);
        assert_eq!(b.samples[1].0, SampleReason::Watched);
        assert_eq!((b.closed.len(), b.absent.len()), (1, 1));
        assert_eq!((b.dropped_batches, b.dropped_samples), (2, 300));
    }
    assert!(seen >= 1, "no fixture in {}", dir.display());
}
