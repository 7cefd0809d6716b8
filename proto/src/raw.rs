//! The agent's messages as the collector reads them: a `Batch` whose
//! samples stay in their encoding, each one the bytes of a `v1::Sample`.
//!
//! A repeated message field and a repeated `bytes` field share their wire
//! form (tag, length, payload), so these types read exactly what `v1`
//! writes. The collector keeps most samples encoded (to unpack only when an
//! episode needs them); reading them this way saves it decoding a sample
//! only to encode it again. Each sample is still decoded once, to check it.
//!
//! Field numbers are `v1`'s; the tests below fail when the two part.

use crate::v1;

/// `v1::AgentMessage`, batches' samples left encoded.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct AgentMessage {
    #[prost(oneof = "agent_message::Body", tags = "1, 2, 3")]
    pub body: ::core::option::Option<agent_message::Body>,
}

pub mod agent_message {
    use crate::v1;

    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "1")]
        Hello(v1::Hello),
        #[prost(message, tag = "2")]
        Batch(super::Batch),
        #[prost(message, tag = "3")]
        Heartbeat(v1::Heartbeat),
    }
}

/// `v1::Batch` with each sample as the bytes of a `v1::Sample`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Batch {
    #[prost(uint64, tag = "1")]
    pub mono_us: u64,
    #[prost(uint32, tag = "2")]
    pub connections: u32,
    /// Read from a `Bytes` buffer, each is a slice of it, not a copy.
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub samples: ::prost::alloc::vec::Vec<::prost::bytes::Bytes>,
    #[prost(message, repeated, tag = "4")]
    pub closed: ::prost::alloc::vec::Vec<v1::Closed>,
    #[prost(uint64, tag = "5")]
    pub dropped_batches: u64,
    #[prost(uint64, tag = "6")]
    pub dropped_samples: u64,
    #[prost(message, repeated, tag = "7")]
    pub absent: ::prost::alloc::vec::Vec<v1::FlowTuple>,
}

#[cfg(test)]
mod tests {
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

    /// Every field of `v1::Batch` set, so that a field `raw` lost or
    /// numbered differently shows.
    fn batch() -> v1::Batch {
        let sample = |cookie| v1::Sample {
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
        };
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
            absent: vec![flow],
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
        ] {
            let msg = v1::AgentMessage { body: Some(body) };
            let raw = AgentMessage::decode(&*msg.encode_to_vec()).expect("decodes as raw");
            assert_eq!(raw.encode_to_vec(), msg.encode_to_vec());
        }
    }
}
