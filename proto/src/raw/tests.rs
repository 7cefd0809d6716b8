use super::*;
use prost::Message;

fn endpoint(last: u8, port: u32) -> Option<v1::Endpoint> {
    Some(v1::Endpoint {
        ip: Some(v1::Ip {
            octets: vec![198, 18, 0, last],
        }),
        port,
    })
}

/// A stuck sender's sample on the wire.
fn stuck(cookie: u64) -> v1::Sample {
    v1::Sample {
        reason: v1::SampleReason::Suspect as i32,
        netns: "host".into(),
        local: endpoint(1, 7000),
        remote: endpoint(2, 40000),
        state: 1,
        cookie,
        sendq: 3000,
        snd_una: Some(5000),
        write_seq: Some(8000),
        ..Default::default()
    }
}

/// Every field of `v1::Batch` set, so that a field `raw` lost or
/// numbered differently shows.
fn batch() -> v1::Batch {
    let sample = stuck;
    let flow = v1::FlowTuple {
        local: endpoint(1, 7001),
        remote: endpoint(3, 40001),
    };
    v1::Batch {
        mono_us: 12_345_678,
        connections: 20_000,
        samples: vec![sample(1), sample(2)],
        closed: vec![v1::Closed {
            netns: "host".into(),
            local: endpoint(1, 7002),
            remote: endpoint(4, 40002),
            cookie: 9,
            held: Some(v1::Held {
                since_us: 1_000,
                last_held_us: 11_000_000,
                ended_us: 11_250_000,
                end: v1::HeldEnd::Reset as i32,
            }),
        }],
        dropped_batches: 3,
        dropped_samples: 44,
        absent: vec![flow.clone()],
        lookups: vec![v1::Lookup {
            flow: Some(flow.clone()),
            translation: Some(v1::Translation {
                original: Some(flow.clone()),
                reply: Some(v1::FlowTuple {
                    local: endpoint(5, 8080),
                    remote: endpoint(3, 40001),
                }),
                src_nat: false,
                dst_nat: true,
            }),
            connected_to: endpoint(6, 443),
            asked: true,
        }],
    }
}

#[test]
fn a_v1_batch_reads_as_raw_with_each_sample_intact() {
    let wire = batch();
    let msg = v1::AgentMessage {
        body: Some(v1::agent_message::Body::Batch(wire.clone())),
    };
    let raw = AgentMessage::decode(&*msg.encode_to_vec()).expect("decodes as raw");
    let Some(agent_message::Body::Batch(b)) = raw.body else {
        panic!("not a batch: {raw:?}");
    };
    assert_eq!(b.mono_us, wire.mono_us);
    assert_eq!(b.connections, wire.connections);
    assert_eq!(b.closed, wire.closed);
    assert_eq!(b.dropped_batches, wire.dropped_batches);
    assert_eq!(b.dropped_samples, wire.dropped_samples);
    assert_eq!(b.absent, wire.absent);
    let samples: Vec<v1::Sample> = b
        .samples
        .iter()
        .map(|s| v1::Sample::decode(&**s).expect("a sample decodes"))
        .collect();
    assert_eq!(samples, wire.samples);
}

#[test]
fn a_raw_message_reads_as_v1() {
    let wire = batch();
    let raw = AgentMessage {
        body: Some(agent_message::Body::Batch(Batch {
            mono_us: wire.mono_us,
            connections: wire.connections,
            samples: wire
                .samples
                .iter()
                .map(|s| s.encode_to_vec().into())
                .collect(),
            closed: wire.closed.clone(),
            dropped_batches: wire.dropped_batches,
            dropped_samples: wire.dropped_samples,
            absent: wire.absent.clone(),
            lookups: wire.lookups.clone(),
        })),
    };
    let back = v1::AgentMessage::decode(&*raw.encode_to_vec()).expect("decodes as v1");
    assert_eq!(back.body, Some(v1::agent_message::Body::Batch(wire)));
    for body in [
        v1::agent_message::Body::Hello(v1::Hello {
            protocol: 1,
            host: "db-7".into(),
            ..Default::default()
        }),
        v1::agent_message::Body::Heartbeat(v1::Heartbeat {
            dropped_batches: 5,
            ..Default::default()
        }),
        v1::agent_message::Body::Addresses(v1::Addresses {
            namespaces: vec![v1::Namespace {
                label: "host".into(),
                inode: 7,
                addresses: vec![v1::Ip {
                    octets: vec![10, 0, 0, 1],
                }],
            }],
        }),
    ] {
        let msg = v1::AgentMessage { body: Some(body) };
        let raw = AgentMessage::decode(&*msg.encode_to_vec()).expect("decodes as raw");
        assert_eq!(raw.encode_to_vec(), msg.encode_to_vec());
    }
}

/// An answer with every field of `v1::GetEpisodeResponse` set, one sample
/// absent and one empty, so that a field `raw` lost or numbered
/// differently shows.
fn answer() -> v1::GetEpisodeResponse {
    let sample = |cookie| v1::Sample {
        cork_source: v1::FactSource::Bpf as i32,
        ..stuck(cookie)
    };
    let end = |side: &str, at_ms, sample| v1::EndSample {
        side: side.into(),
        host: format!("host-{side}"),
        at_ms,
        sample,
    };
    v1::GetEpisodeResponse {
        episode: Some(v1::Episode {
            id: 42,
            diagnosis: "peer_not_reading".into(),
            open: true,
            started_at_ms: 1_732_000_000_000,
            duration_ms: 12_000,
            stuck_bytes: 3000,
            a_host: "host-a".into(),
            a_flow: Some(v1::FlowTuple {
                local: endpoint(1, 7000),
                remote: endpoint(2, 40000),
            }),
            b_host: "host-b".into(),
            summary: "B is not reading".into(),
            evidence: [("b_recvq".to_string(), 4096)].into(),
            ..Default::default()
        }),
        samples: vec![
            end("a", 1_732_000_000_500, Some(sample(1))),
            end("b", 1_732_000_000_600, Some(sample(2))),
            end("a", 1_732_000_000_700, None),
            end("b", 1_732_000_000_800, Some(v1::Sample::default())),
        ],
    }
}

/// `answer()` with each sample as its encoding.
fn raw_answer() -> GetEpisodeResponse {
    let wire = answer();
    GetEpisodeResponse {
        episode: wire.episode,
        samples: wire
            .samples
            .into_iter()
            .map(|s| EndSample {
                side: s.side,
                host: s.host,
                at_ms: s.at_ms,
                sample: s.sample.map(|s| s.encode_to_vec().into()),
            })
            .collect(),
    }
}

#[test]
fn a_raw_episode_answer_is_the_v1_answer_byte_for_byte() {
    let raw = raw_answer().encode_to_vec();
    assert_eq!(raw, answer().encode_to_vec());
    let read = v1::GetEpisodeResponse::decode(&*raw).expect("a client reads it as v1");
    assert_eq!(read, answer());
    let back = GetEpisodeResponse::decode(&*answer().encode_to_vec()).expect("decodes as raw");
    assert_eq!(back, raw_answer());
}

#[test]
fn a_raw_sample_goes_out_as_its_bytes_unread() {
    // Bytes that are not a sample at all travel as they are: the raw
    // answer never looks into them (the store checked them when it read
    // them).
    let junk = vec![0xff, 0x01, 0x02];
    let raw = GetEpisodeResponse {
        episode: None,
        samples: vec![EndSample {
            side: "a".into(),
            host: "host-a".into(),
            at_ms: 5,
            sample: Some(junk.clone().into()),
        }],
    };
    let back = GetEpisodeResponse::decode(&*raw.encode_to_vec()).expect("decodes as raw");
    assert_eq!(back.samples[0].sample.as_deref(), Some(&junk[..]));
}
