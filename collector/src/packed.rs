//! A sample kept in the collector's memory in its wire encoding.
//!
//! The aggregator holds the latest sample of every suspect and of every
//! watched peer, and the first sample of every suspect's stall, for the
//! moment one of them becomes an episode. Decoded, an [`EndSample`] is
//! about 370 bytes plus its namespace's name; encoded, about 150. Most
//! suspects drain without ever being read back, so they are kept encoded
//! and decoded only when an episode, a re-diagnosis or a query needs them.

use prost::Message;
use tcpstall_common::EndSample;
use tcpstall_proto::convert;
use tcpstall_proto::sample_wire;
use tcpstall_proto::v1;

/// An [`EndSample`], protobuf-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed(Box<[u8]>);

impl Packed {
    pub fn new(s: &EndSample) -> Packed {
        let wire = convert::sample_to_wire(s, v1::SampleReason::Unspecified);
        Packed(wire.encode_to_vec().into_boxed_slice())
    }

    /// A sample's bytes as they came over the wire, already decoded and
    /// checked by `sample_from_wire` (the caller's job). A slice is copied
    /// into an allocation of its own, so that what is kept does not hold
    /// the buffer it came in.
    pub fn from_bytes(bytes: impl Into<Box<[u8]>>) -> Packed {
        Packed(bytes.into())
    }

    /// The sample back. `None` only if what [`Packed::new`] wrote no longer
    /// decodes, which would be a bug: the caller logs it and goes on.
    pub fn unpack(&self) -> Option<EndSample> {
        let wire = sample_wire::decode_sample(&self.0).ok()?;
        convert::sample_from_wire_owned(wire).ok()
    }

    /// The encoding: a `tcpstall.v1.Sample` message. What the store
    /// writes to `samples.sample_pb`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Bytes held on the heap.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tcpstall_common::{FactSource, FlowTuple, Positions, TcpState, TimerKind};

    /// A stuck sender with most facts known (also the query tests').
    pub(crate) fn sample() -> EndSample {
        EndSample {
            flow: FlowTuple::new(
                SocketAddr::from(([198, 18, 0, 2], 40000)),
                SocketAddr::from(([198, 18, 0, 1], 7000)),
            ),
            netns: "host".into(),
            state: TcpState::Established,
            cookie: 0xdead_beef,
            inode: 77,
            opened: None,
            pos: Positions {
                sendq: 3000,
                recvq: 0,
                notsent: Some(3000),
                inflight: Some(0),
                snd_una: Some(5000),
                snd_nxt: Some(5000),
                write_seq: Some(8000),
                rcv_nxt: Some(1),
                copied: Some(1),
                snd_wnd: Some(0),
                rcv_wnd: Some(65535),
                snd_wscale: Some(7),
                rcv_wscale: Some(7),
            },
            unchanged_ms: 4000,
            timer: Some(TimerKind::ZeroWindowProbe),
            timer_expires_ms: 180,
            retransmits: Some(0),
            probes: Some(3),
            backoff: Some(2),
            ca_state: Some(0),
            rto_us: Some(204_000),
            rtt_us: Some(31),
            snd_cwnd: Some(10),
            unacked: Some(0),
            lost: Some(0),
            retrans: Some(0),
            total_retrans: Some(0),
            last_data_sent_ms: Some(4000),
            last_data_recv_ms: None,
            last_ack_recv_ms: Some(190),
            bytes_retrans: Some(0),
            cork: Some(true),
            cork_source: Some(FactSource::Bpf),
            nodelay: None,
            nodelay_source: None,
            owner: None,
            owner_missing: None,
            absolute: None,
        }
    }

    #[test]
    fn owner_nodelay_and_absolute_facts_survive_packing() {
        let mut s = sample();
        s.nodelay = Some(true);
        s.nodelay_source = Some(FactSource::Bpf);
        s.owner = Some(Box::new(tcpstall_common::ProcessOwner {
            pid: 31337,
            command: "redis-server *:6379".into(),
            unit: Some("redis.service".into()),
            cgroup: Some("/system.slice/redis.service".into()),
        }));
        s.absolute = Some(Box::new(tcpstall_common::AbsoluteSeq {
            snd_una: 4_000_000_000,
            snd_nxt: 4_000_000_000,
            write_seq: 4_000_003_000,
            rcv_nxt: 17,
            snd_isn: Some(3_999_994_999),
            rcv_isn: Some(15),
            sacks_sent: vec![tcpstall_common::SackBlock { start: 30, end: 40 }],
            sacks_received: vec![],
        }));
        assert_eq!(Packed::new(&s).unpack(), Some(s.clone()));
        s.owner = None;
        s.owner_missing = Some(tcpstall_common::OwnerMissing::NoPermission);
        assert_eq!(Packed::new(&s).unpack(), Some(s));
    }

    #[test]
    fn a_packed_sample_comes_back_whole_and_smaller() {
        let s = sample();
        let p = Packed::new(&s);
        assert_eq!(p.unpack(), Some(s));
        assert!(
            p.len() < std::mem::size_of::<EndSample>() / 2,
            "{} bytes packed vs {} decoded",
            p.len(),
            std::mem::size_of::<EndSample>()
        );
    }
}
