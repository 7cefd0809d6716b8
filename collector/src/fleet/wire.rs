//! What fleet mode puts on NATS, and how it reads it back: subjects, the
//! partition parts of a batch, host records, watch requests. A partition
//! message is a bundle: one node's parts of its hosts' batches for that
//! partition over a few milliseconds, each the agents' own `v1::Batch`
//! with its host, session and poll time ([`Bundle`]; one message per
//! partition and flush rather than one per host and poll: JetStream's cost
//! is mostly per message). A request is a `v1::CollectorMessage`; the
//! registries are JSON.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tcpstall_common::record::{FlowEnd, FlowEnds};
use tcpstall_common::{
    AgentBatch, EndSample, FlowKey, FlowTuple, FromCollector, MachineId, NamespaceAddresses,
    SampleReason, ToAgent,
};
use tcpstall_proto::convert::{self, ConvertError};
use tcpstall_proto::{raw, v1};

use crate::gateway::registry::Holder;
use crate::matcher::FlowView;
use crate::messages::partition;

/// The stream of every partition's samples.
pub const STREAM: &str = "TCPSTALL_SAMPLES";
/// Key-value buckets: hosts (who holds which host, its addresses), nodes
/// (alive), leases (which node owns which partition), fleet (settings
/// every node must share).
pub const HOSTS: &str = "tcpstall_hosts";
pub const NODES: &str = "tcpstall_nodes";
pub const LEASES: &str = "tcpstall_leases";
pub const FLEET: &str = "tcpstall_fleet";

/// The partition that asked, on a request for a host's agent.
pub const H_PARTITION: &str = "Tcpstall-Partition";

/// Where partition `p`'s samples are published.
pub fn samples_subject(p: u32) -> String {
    format!("tcpstall.samples.{p}")
}

/// Where a flow's live view is asked of the node that judges partition
/// `p` (request and reply: `v1::FlowTuple`, `v1::GetFlowResponse`).
pub fn flow_subject(p: u32) -> String {
    format!("tcpstall.flow.{p}")
}

/// Every partition's subjects (the stream's).
pub const SAMPLES_SUBJECTS: &str = "tcpstall.samples.*";

/// Where requests for host `name`'s agent go: the node holding its stream
/// listens there. A host name may hold characters a subject token cannot
/// (`.`, spaces), so the token is the name's bytes in hex.
pub fn host_subject(name: &str) -> String {
    format!("tcpstall.host.{}", hex(name))
}

/// A key of the hosts bucket for `name` (keys have the same limits as
/// subject tokens).
pub fn host_key(name: &str) -> String {
    format!("h{}", hex(name))
}

/// A key of the leases bucket.
pub fn lease_key(p: u32) -> String {
    format!("p{p}")
}

/// A key of the nodes bucket: the name in hex too (node names are host
/// names by default).
pub fn node_key(name: &str) -> String {
    format!("n{}", hex(name))
}

fn hex(s: &str) -> String {
    use std::fmt::Write;
    s.bytes().fold(String::with_capacity(s.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The key that decides a sample's partition: its flow's, or where its own
/// host translated it, the far side's — the flow as the other end's socket
/// sees it, which is what the other end's samples are keyed by. So both
/// ends of a connection land in one partition through a NAT on either
/// end's host.
pub fn sample_key(s: &EndSample) -> FlowKey {
    s.translation
        .as_deref()
        .and_then(|t| t.far_side(s.flow))
        .unwrap_or(s.flow)
        .key()
}

/// Where a host's reports go when their own 4-tuple's key would send them
/// elsewhere.
pub trait Routes {
    /// The partition that asked this host for `flow` (a watched end, a
    /// translation), if one did.
    fn asked(&self, flow: FlowTuple) -> Option<u32>;
    /// The partition a socket's translated samples went to, for its
    /// reports that do not carry the translation (its closing).
    fn translated(&self, flow: FlowTuple) -> Option<u32>;
}

/// No routes: every report by its own key.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub struct ByKey;

#[cfg(test)]
impl Routes for ByKey {
    fn asked(&self, _: FlowTuple) -> Option<u32> {
        None
    }
    fn translated(&self, _: FlowTuple) -> Option<u32> {
        None
    }
}

/// A batch cut into its partitions' parts: each sample, closed socket,
/// absence and lookup goes to its flow's partition; the poll's time,
/// connection count and loss counters go with every part. Partitions with
/// nothing of this batch get no part.
///
/// What a partition asked of this host goes back to it: a watched end's
/// samples and absence, and lookups, go to the partition that asked for
/// them when it is not their own key's — a peer found through a
/// translation another host made has a 4-tuple of its own. A socket whose
/// samples went by their translation's far side has its reports without
/// one (its closing) follow them.
pub fn split(batch: AgentBatch, partitions: u32, routes: &impl Routes) -> BTreeMap<u32, AgentBatch> {
    let mut parts: BTreeMap<u32, AgentBatch> = BTreeMap::new();
    let empty = empty_part(&batch);
    let own = |key: FlowKey| partition(key, partitions);
    // Each sample's encoding, index for index, goes with it when the batch
    // has them all.
    let mut packed = if batch.packed.len() == batch.samples.len() {
        batch.packed
    } else {
        Vec::new()
    }
    .into_iter();
    for (reason, sample) in batch.samples {
        let p = match (reason, &sample.translation) {
            (SampleReason::Watched, _) => routes.asked(sample.flow),
            (_, None) => routes.translated(sample.flow),
            _ => None,
        }
        .unwrap_or_else(|| own(sample_key(&sample)));
        let part = part_of(&mut parts, &empty, p);
        if let Some(encoded) = packed.next() {
            part.packed.push(encoded);
        }
        part.samples.push((reason, sample));
    }
    for closed in batch.closed {
        let p = routes
            .translated(closed.flow)
            .unwrap_or_else(|| own(closed.flow.key()));
        part_of(&mut parts, &empty, p).closed.push(closed);
    }
    for flow in batch.absent {
        let p = routes.asked(flow).unwrap_or_else(|| own(flow.key()));
        part_of(&mut parts, &empty, p).absent.push(flow);
    }
    for lookup in batch.lookups {
        let p = routes
            .asked(lookup.flow)
            .unwrap_or_else(|| own(lookup.flow.key()));
        part_of(&mut parts, &empty, p).lookups.push(lookup);
    }
    parts
}

/// A part of `batch` with nothing in it: the poll's time, the connection
/// count and the loss counters, which go with every part.
pub fn empty_part(batch: &AgentBatch) -> AgentBatch {
    AgentBatch {
        mono: batch.mono,
        connections: batch.connections,
        dropped_batches: batch.dropped_batches,
        dropped_samples: batch.dropped_samples,
        ..AgentBatch::default()
    }
}

fn part_of<'a>(
    parts: &'a mut BTreeMap<u32, AgentBatch>,
    empty: &AgentBatch,
    p: u32,
) -> &'a mut AgentBatch {
    parts.entry(p).or_insert_with(|| empty.clone())
}

/// One host's part of a bundle: its batch part in the agents' own form,
/// each sample the bytes it came in (see `tcpstall_proto::raw`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BundlePart {
    #[prost(string, tag = "1")]
    pub host: String,
    #[prost(uint64, tag = "2")]
    pub session: u64,
    /// When its poll was taken, on its node's clock (Unix ms).
    #[prost(int64, tag = "3")]
    pub taken_ms: i64,
    #[prost(message, optional, tag = "4")]
    pub batch: Option<raw::Batch>,
}

/// A part of a batch as it goes into a bundle: the samples' encodings as
/// they came where the batch kept them (every one, in fleet mode), the
/// others encoded here.
pub fn part_to_wire(mut part: AgentBatch) -> raw::Batch {
    let samples = std::mem::take(&mut part.samples);
    let mut packed = std::mem::take(&mut part.packed);
    if packed.len() != samples.len() {
        packed = Vec::new();
    }
    let mut packed = packed.into_iter();
    let samples = samples
        .into_iter()
        .map(|(reason, s)| match packed.next().flatten() {
            Some(p) => Bytes::from(p.into_bytes()),
            None => Bytes::from(convert::reasoned_sample_to_wire(&reason, &s).encode_to_vec()),
        })
        .collect();
    let rest = convert::batch_to_wire(part);
    raw::Batch {
        mono_us: rest.mono_us,
        connections: rest.connections,
        samples,
        closed: rest.closed,
        dropped_batches: rest.dropped_batches,
        dropped_samples: rest.dropped_samples,
        absent: rest.absent,
        lookups: rest.lookups,
    }
}

/// A partition message: the parts one node had for the partition over a
/// few milliseconds, of any of its hosts, in the order it took them.
/// Written a part at a time ([`bundle_push`]): a bundle is its parts'
/// field 1 entries one after another.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bundle {
    #[prost(message, repeated, tag = "1")]
    pub parts: Vec<BundlePart>,
}

/// Appends a host's part to a bundle being written.
pub fn bundle_push(buf: &mut bytes::BytesMut, part: &BundlePart) {
    prost::encoding::message::encode(1, part, buf);
}

/// The header naming a bundle's encoding: [`LZ4`], or absent for plain
/// protobuf (what nodes before compression published; still read).
pub const H_ENCODING: &str = "Tcpstall-Encoding";
/// A bundle compressed as one LZ4 block, its plain length (u32, little
/// endian) first. Samples of one partition have much in common: the
/// fleet benchmark's bundles shrink about 3.4 times, and the NATS
/// servers' work goes with the bytes they store and deliver.
pub const LZ4: &str = "lz4";
/// The largest plain bundle a partition accepts: a node seals one at
/// `BUNDLE_BYTES` plus a part; a larger declared length is refused before
/// anything is allocated for it.
pub const MAX_PLAIN_BUNDLE: usize = 4 << 20;

/// A sealed bundle's bytes as published: compressed, with its length.
pub fn compress_bundle(plain: &[u8]) -> Bytes {
    Bytes::from(lz4_flex::block::compress_prepend_size(plain))
}

/// A partition message read back: its parts, in order. `encoding`: its
/// [`H_ENCODING`] header.
pub fn decode_bundle(payload: Bytes, encoding: Option<&str>) -> Result<Vec<BundlePart>, PartError> {
    let plain = match encoding {
        None => payload,
        Some(LZ4) => {
            let (len, block) = payload
                .split_first_chunk::<4>()
                .ok_or(PartError::Lz4("shorter than its length".into()))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_PLAIN_BUNDLE {
                return Err(PartError::TooLarge(len));
            }
            let plain = lz4_flex::block::decompress(block, len)
                .map_err(|e| PartError::Lz4(e.to_string()))?;
            if plain.len() != len {
                return Err(PartError::Lz4(format!(
                    "{} bytes where its length says {len}",
                    plain.len()
                )));
            }
            Bytes::from(plain)
        }
        Some(other) => return Err(PartError::Encoding(other.to_string())),
    };
    Bundle::decode(plain)
        .map(|b| b.parts)
        .map_err(PartError::Decode)
}

/// A bundle's part checked as an agent's batch is (at most `max` entries).
pub fn check_part(batch: Option<raw::Batch>, max: usize) -> Result<AgentBatch, PartError> {
    convert::batch_from_wire(batch.unwrap_or_default(), max).map_err(PartError::Convert)
}

/// Why a partition message was skipped.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error("not a bundle of batch parts: {0}")]
    Decode(prost::DecodeError),
    #[error("an LZ4 bundle that does not decompress: {0}")]
    Lz4(String),
    #[error("a bundle of {0} bytes once decompressed (at most {MAX_PLAIN_BUNDLE})")]
    TooLarge(usize),
    #[error("a bundle in an unknown encoding {0:?}")]
    Encoding(String),
    #[error("a batch the agents' checks refuse: {0}")]
    Convert(ConvertError),
}

/// A request for a host's agent, as published on its subject.
pub fn encode_request(r: ToAgent) -> Bytes {
    Bytes::from(convert::to_agent_to_wire(r).encode_to_vec())
}

/// A request read back; `None` for anything else.
pub fn decode_request(payload: &[u8]) -> Option<ToAgent> {
    let m = v1::CollectorMessage::decode(payload).ok()?;
    match convert::collector_message_from_wire(m) {
        Ok(Some(FromCollector::Request(r))) => Some(r),
        _ => None,
    }
}

/// A flow whose live view is asked.
pub fn encode_flow(flow: FlowTuple) -> Bytes {
    Bytes::from(convert::flow_to_wire(flow).encode_to_vec())
}

pub fn decode_flow(payload: &[u8]) -> Option<FlowTuple> {
    let f = v1::FlowTuple::decode(payload).ok()?;
    convert::flow_from_wire(Some(&f)).ok()
}

/// A flow's live view, as the judging node answers.
pub fn encode_view(view: FlowView) -> Bytes {
    let end = |x: Option<(String, EndSample)>| x.map(|(host, sample)| FlowEnd { host, sample });
    let ends = FlowEnds {
        a: end(view.a),
        b: end(view.b),
    };
    Bytes::from(convert::flow_ends_to_wire(ends).encode_to_vec())
}

/// A view read back; `None` when it does not decode.
pub fn decode_view(payload: &[u8]) -> Option<FlowView> {
    let r = v1::GetFlowResponse::decode(payload).ok()?;
    let ends = convert::flow_ends_from_wire(r).ok()?;
    let end = |e: Option<FlowEnd>| e.map(|e| (e.host, e.sample));
    Some(FlowView {
        a: end(ends.a),
        b: end(ends.b),
    })
}

/// A host as its node registers it in the hosts bucket, put again every
/// renewal: a record whose node stopped renewing it is of a host gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// The node whose gateway holds its stream.
    pub node: String,
    /// Its stream, unique in the fleet: batches of any other are stale.
    pub session: u64,
    /// Its machine's identity, when its agent says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Its agent's address, as its node saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<std::net::SocketAddr>,
    /// When its node took its Hello (Unix ms, that node's clock).
    #[serde(default)]
    pub since_ms: i64,
    pub interval_ms: u64,
    pub answers_lookups: bool,
    pub forwards: bool,
    pub namespaces: Vec<RecordNamespace>,
}

/// One namespace of a [`HostRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordNamespace {
    pub label: String,
    #[serde(default)]
    pub inode: u64,
    pub addresses: Vec<IpAddr>,
}

impl HostRecord {
    /// Who holds the name, for the one-machine-per-name decision.
    pub fn holder(&self) -> Holder {
        Holder {
            session: self.session,
            machine: self
                .machine
                .as_deref()
                .and_then(|m| MachineId::new(m).ok()),
            peer: self.peer,
            since_ms: self.since_ms,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn addresses(&self) -> Vec<NamespaceAddresses> {
        self.namespaces
            .iter()
            .map(|n| NamespaceAddresses {
                label: n.label.clone(),
                inode: n.inode,
                addresses: n.addresses.clone(),
            })
            .collect()
    }

    pub fn namespaces_of(addresses: &[NamespaceAddresses]) -> Vec<RecordNamespace> {
        addresses
            .iter()
            .map(|n| RecordNamespace {
                label: n.label.clone(),
                inode: n.inode,
                addresses: n.addresses.clone(),
            })
            .collect()
    }
}

/// The settings every node of a fleet must agree on, kept in the fleet
/// bucket by the first node: a node started with others is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub partitions: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::a_end;
    use tcpstall_common::ClosedSocket;

    fn stuck(local: &str, remote: &str, sendq: u32) -> EndSample {
        EndSample {
            flow: FlowTuple::new(local.parse().expect("addr"), remote.parse().expect("addr")),
            ..a_end(1, 1000, sendq)
        }
    }

    #[test]
    fn a_batch_splits_by_partition_and_reads_back_whole() {
        let mut batch = AgentBatch {
            mono: Duration::from_secs(7),
            connections: 40,
            dropped_batches: 2,
            dropped_samples: 9,
            ..AgentBatch::default()
        };
        for port in 40_000..40_040u16 {
            let s = stuck(&format!("10.0.0.1:{port}"), "10.0.0.2:5432", 1000);
            batch.samples.push((SampleReason::Suspect, s));
        }
        let gone = FlowTuple::new(
            "10.0.0.1:41000".parse().expect("addr"),
            "10.0.0.2:5432".parse().expect("addr"),
        );
        batch.closed.push(ClosedSocket {
            netns: "host".into(),
            flow: gone,
            cookie: 3,
            held: None,
        });
        batch.absent.push(gone.reversed());
        let parts = split(batch.clone(), 8, &ByKey);
        assert!(parts.len() > 1, "40 flows over 8 partitions");
        let mut back = 0;
        for (p, part) in parts {
            assert_eq!(part.mono, batch.mono);
            assert_eq!(part.connections, 40);
            assert_eq!((part.dropped_batches, part.dropped_samples), (2, 9));
            for (_, s) in &part.samples {
                assert_eq!(partition(s.flow.key(), 8), p);
            }
            back += part.samples.len();
            let mut buf = bytes::BytesMut::new();
            let out = |taken_ms| BundlePart {
                host: "h1".into(),
                session: 7,
                taken_ms,
                batch: Some(part_to_wire(part.clone())),
            };
            bundle_push(&mut buf, &out(5));
            bundle_push(&mut buf, &out(6));
            // As published (compressed) and as nodes before compression
            // published it: the same parts.
            let bundle = decode_bundle(compress_bundle(&buf), Some(LZ4)).expect("reads back");
            let plain = decode_bundle(buf.freeze(), None).expect("reads back");
            assert_eq!(bundle, plain);
            assert_eq!(bundle.len(), 2, "two parts, in order");
            assert_eq!((bundle[0].taken_ms, bundle[1].taken_ms), (5, 6));
            assert_eq!((bundle[1].host.as_str(), bundle[1].session), ("h1", 7));
            let read = check_part(bundle[1].batch.clone(), 100).expect("checks");
            assert_eq!(read.samples, part.samples);
            assert_eq!(read.closed, part.closed);
            assert_eq!(read.absent, part.absent);
        }
        assert_eq!(back, 40);
        let closed_p = partition(gone.key(), 8);
        let parts = split(batch.clone(), 8, &ByKey);
        assert_eq!(parts[&closed_p].closed.len(), 1);
        assert_eq!(parts[&closed_p].absent.len(), 1, "either direction: one key");
        // Asked by another partition: the watched end's reports go there,
        // a suspect on the same flow stays with its own key.
        let asked_by = (closed_p + 1) % 8;
        let watched = stuck("10.0.0.1:41000", "10.0.0.2:5432", 0);
        batch
            .samples
            .push((SampleReason::Watched, watched.clone()));
        struct Asked(FlowTuple, FlowTuple, u32);
        impl Routes for Asked {
            fn asked(&self, f: FlowTuple) -> Option<u32> {
                (f == self.0 || f == self.1).then_some(self.2)
            }
            fn translated(&self, f: FlowTuple) -> Option<u32> {
                // The closed socket's samples went by a far side.
                (f == self.1).then_some((self.2 + 1) % 8)
            }
        }
        let parts = split(batch, 8, &Asked(gone.reversed(), watched.flow, asked_by));
        assert!(parts[&asked_by]
            .samples
            .iter()
            .any(|(r, s)| *r == SampleReason::Watched && s.flow == watched.flow));
        assert_eq!(parts[&asked_by].absent, [gone.reversed()]);
        assert_eq!(
            parts[&((asked_by + 1) % 8)].closed.len(),
            1,
            "a closing follows its socket's translated samples"
        );
        assert!(matches!(
            decode_bundle(Bytes::from_static(b"\xff\xff"), None),
            Err(PartError::Decode(_))
        ));
        // A part over the agents' bound is refused as their batch would be.
        let mut buf = bytes::BytesMut::new();
        let big = AgentBatch {
            samples: (0..11)
                .map(|i| (SampleReason::Suspect, stuck(&format!("10.0.0.1:{}", 1000 + i), "10.0.0.2:80", 1)))
                .collect(),
            ..AgentBatch::default()
        };
        bundle_push(
            &mut buf,
            &BundlePart {
                batch: Some(part_to_wire(big)),
                ..BundlePart::default()
            },
        );
        let bundle = decode_bundle(compress_bundle(&buf), Some(LZ4)).expect("a bundle");
        assert!(matches!(
            check_part(bundle[0].batch.clone(), 10),
            Err(PartError::Convert(_))
        ));
    }

    #[test]
    fn a_sample_goes_on_in_the_bytes_it_came_in_and_keeps_its_place() {
        let enc = |r: &SampleReason, s: &EndSample| {
            Some(tcpstall_common::Packed::from_bytes(
                convert::reasoned_sample_to_wire(r, s).encode_to_vec(),
            ))
        };
        let mut batch = AgentBatch::default();
        for port in 40_000..40_020u16 {
            let s = stuck(&format!("10.0.0.1:{port}"), "10.0.0.2:5432", u32::from(port));
            batch.packed.push(enc(&SampleReason::Suspect, &s));
            batch.samples.push((SampleReason::Suspect, s));
        }
        // The edge sends what the agent sent: here, for the first sample,
        // bytes that say something else than its decoded form.
        let other = stuck("10.0.0.9:1", "10.0.0.2:5432", 7);
        batch.packed[0] = enc(&SampleReason::Suspect, &other);
        let first = batch.samples[0].1.flow;
        for (_, part) in split(batch, 4, &ByKey) {
            assert_eq!(part.packed.len(), part.samples.len(), "index for index");
            let read = check_part(Some(part_to_wire(part.clone())), 100).expect("checks");
            for (i, (_, s)) in part.samples.iter().enumerate() {
                if s.flow == first {
                    assert_eq!(read.samples[i].1.flow, other.flow, "the bytes as they came");
                } else {
                    assert_eq!(read.samples[i].1, *s);
                }
            }
        }
        // Without every encoding (single-node's kept ones only), each is
        // encoded here.
        let mut batch = AgentBatch::default();
        let s = stuck("10.0.0.1:1", "10.0.0.2:5432", 5);
        batch.samples.push((SampleReason::Suspect, s.clone()));
        let parts = split(batch, 4, &ByKey);
        let part = parts.into_values().next().expect("a part");
        assert!(part.packed.is_empty());
        let read = check_part(Some(part_to_wire(part)), 100).expect("checks");
        assert_eq!(read.samples[0].1, s);
    }

    #[test]
    fn a_translated_sample_goes_where_the_far_end_reports() {
        // The client's host DNATs 10.96.0.10:80 to the server 10.0.0.2:8080.
        let mut a = stuck("10.0.0.1:40000", "10.96.0.10:80", 500);
        let server = FlowTuple::new(
            "10.0.0.2:8080".parse().expect("addr"),
            "10.0.0.1:40000".parse().expect("addr"),
        );
        a.translation = Some(Box::new(tcpstall_common::Translation {
            original: a.flow,
            reply: server,
            src_nat: false,
            dst_nat: true,
        }));
        assert_eq!(sample_key(&a), server.key());
        let b = stuck("10.0.0.2:8080", "10.0.0.1:40000", 0);
        assert_eq!(sample_key(&b), sample_key(&a));
        // A port forward on the server's host: the server's end carries
        // the translation and goes by the client's key.
        let client = FlowTuple::new(
            "10.0.0.1:40000".parse().expect("addr"),
            "192.0.2.7:80".parse().expect("addr"),
        );
        let mut fwd = stuck("172.17.0.2:8080", "10.0.0.1:40000", 500);
        fwd.translation = Some(Box::new(tcpstall_common::Translation {
            original: client,
            reply: fwd.flow,
            src_nat: false,
            dst_nat: true,
        }));
        assert_eq!(sample_key(&fwd), client.key());
    }

    #[test]
    fn subjects_and_keys_hold_any_host_name() {
        assert_eq!(host_subject("db.7 x"), "tcpstall.host.64622e372078");
        assert_eq!(host_key("a"), "h61");
        assert_eq!(lease_key(3), "p3");
        let r = ToAgent::Watch(FlowTuple::new(
            "10.0.0.1:1".parse().expect("addr"),
            "10.0.0.2:2".parse().expect("addr"),
        ));
        assert_eq!(decode_request(&encode_request(r)), Some(r));
        assert_eq!(decode_request(b"\x01"), None);
    }

    #[test]
    fn a_compressed_bundle_that_lies_is_refused_before_it_is_decompressed() {
        let part = BundlePart {
            host: "h1".into(),
            taken_ms: 5,
            ..BundlePart::default()
        };
        let mut buf = bytes::BytesMut::new();
        for _ in 0..100 {
            bundle_push(&mut buf, &part);
        }
        let good = compress_bundle(&buf);
        assert!(good.len() < buf.len() / 3, "{} of {}", good.len(), buf.len());
        assert_eq!(decode_bundle(good.clone(), Some(LZ4)).map(|b| b.len()).ok(), Some(100));
        // A declared length beyond the bound: nothing allocated for it.
        let mut huge = good.to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_bundle(Bytes::from(huge), Some(LZ4)),
            Err(PartError::TooLarge(n)) if n == u32::MAX as usize
        ));
        // A length that is not the block's, a cut block, no length at all.
        let mut longer = good.to_vec();
        longer[..4].copy_from_slice(&(buf.len() as u32 + 1).to_le_bytes());
        assert!(matches!(decode_bundle(Bytes::from(longer), Some(LZ4)), Err(PartError::Lz4(_))));
        let cut = good.slice(..good.len() - 3);
        assert!(matches!(decode_bundle(cut, Some(LZ4)), Err(PartError::Lz4(_))));
        assert!(matches!(
            decode_bundle(Bytes::from_static(b"\x01"), Some(LZ4)),
            Err(PartError::Lz4(_))
        ));
        assert!(matches!(
            decode_bundle(good, Some("zstd")),
            Err(PartError::Encoding(e)) if e == "zstd"
        ));
    }
}
