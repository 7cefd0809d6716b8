//! The agent's side of the Ingest stream: what an agent sends (its Hello,
//! batches and heartbeats, in their envelope) and what it reads back (the
//! collector's Welcome and its watch and unwatch requests, checked).
//!
//! The inverse of each is the collector's, in `ingest`.

use tcpstall_common::time::micros;
use tcpstall_common::{
    AgentBatch, AgentHello, ClosedSocket, EndSample, FlowTuple, FromCollector, Heartbeat, Lookup,
    NamespaceAddresses, ProbeSet, SampleReason, ToAgent, ToCollector, Welcome,
};

use super::{
    check_name, endpoint_from_wire, endpoint_to_wire, flow_to_wire, held_to_wire, ip_to_wire,
    owner_to_wire, reasoned_sample_to_wire, translation_to_wire, ConvertError,
};
use crate::v1::{self, agent_message, collector_message};

/// What an agent sends, in the Ingest stream's envelope.
pub fn agent_message_to_wire(m: ToCollector) -> v1::AgentMessage {
    let body = match m {
        ToCollector::Hello(h) => agent_message::Body::Hello(hello_to_wire(h)),
        ToCollector::Batch(b) => agent_message::Body::Batch(batch_to_wire(b)),
        ToCollector::Heartbeat(h) => agent_message::Body::Heartbeat(heartbeat_to_wire(h)),
        ToCollector::Addresses(namespaces) => agent_message::Body::Addresses(v1::Addresses {
            namespaces: namespaces.into_iter().map(namespace_to_wire).collect(),
        }),
    };
    v1::AgentMessage { body: Some(body) }
}

/// An agent's greeting on the wire, in the protocol this build speaks.
pub fn hello_to_wire(h: AgentHello) -> v1::Hello {
    v1::Hello {
        protocol: crate::PROTOCOL_VERSION,
        host: h.host,
        agent_version: h.agent_version,
        kernel: h.kernel,
        boot_id: h.boot_id,
        namespaces: h.namespaces.into_iter().map(namespace_to_wire).collect(),
        probes: Some(probes_to_wire(h.probes)),
        interval_ms: u32::try_from(h.interval.as_millis()).unwrap_or(u32::MAX),
        answers_lookups: h.answers_lookups,
        forwards: h.forwards,
        machine_id: h.machine_id.map(String::from).unwrap_or_default(),
    }
}

fn namespace_to_wire(ns: NamespaceAddresses) -> v1::Namespace {
    v1::Namespace {
        label: ns.label,
        inode: ns.inode,
        addresses: ns.addresses.into_iter().map(ip_to_wire).collect(),
    }
}

fn probes_to_wire(p: ProbeSet) -> v1::Probes {
    v1::Probes {
        sock_diag: p.sock_diag,
        bpf_iter: p.bpf_iter,
        getsockopt: p.getsockopt,
    }
}

/// A batch on the wire: each sample with why it is sent, the closings and
/// absent flows, and the loss counters as stamped. `packed` is not sent.
/// The batch is taken, so that its strings move to the wire instead of
/// being copied.
pub fn batch_to_wire(b: AgentBatch) -> v1::Batch {
    v1::Batch {
        mono_us: micros(b.mono),
        connections: b.connections,
        samples: b
            .samples
            .into_iter()
            .map(|(r, s)| reasoned_sample_into_wire(&r, s))
            .collect(),
        closed: b.closed.into_iter().map(closed_to_wire).collect(),
        dropped_batches: b.dropped_batches,
        dropped_samples: b.dropped_samples,
        absent: b.absent.into_iter().map(flow_to_wire).collect(),
        lookups: b.lookups.into_iter().map(lookup_to_wire).collect(),
    }
}

fn lookup_to_wire(l: Lookup) -> v1::Lookup {
    v1::Lookup {
        flow: Some(flow_to_wire(l.flow)),
        translation: l.translation.map(translation_to_wire),
        connected_to: l.connected_to.map(endpoint_to_wire),
        asked: l.asked,
    }
}

/// [`reasoned_sample_to_wire`] of a sample no longer needed: its namespace
/// and owner move to the wire instead of being copied.
fn reasoned_sample_into_wire(r: &SampleReason, mut s: EndSample) -> v1::Sample {
    let netns = std::mem::take(&mut s.netns);
    let owner = s.owner.take();
    let mut w = reasoned_sample_to_wire(r, &s);
    w.netns = netns;
    w.owner = owner.map(|o| owner_to_wire(*o));
    w
}

fn closed_to_wire(c: ClosedSocket) -> v1::Closed {
    v1::Closed {
        netns: c.netns,
        local: Some(endpoint_to_wire(c.flow.local)),
        remote: Some(endpoint_to_wire(c.flow.remote)),
        cookie: c.cookie,
        held: c.held.as_ref().map(held_to_wire),
    }
}

/// A heartbeat on the wire.
pub fn heartbeat_to_wire(h: Heartbeat) -> v1::Heartbeat {
    v1::Heartbeat {
        mono_us: micros(h.mono),
        connections: h.connections,
        dropped_batches: h.dropped_batches,
        dropped_samples: h.dropped_samples,
    }
}

/// Names of a request's flow fields, for its errors.
type FlowFields = [&'static str; 3];
const WATCH: FlowFields = ["watch.flow", "watch.flow.local", "watch.flow.remote"];
const UNWATCH: FlowFields = ["unwatch.flow", "unwatch.flow.local", "unwatch.flow.remote"];
const TRANSLATE: FlowFields = [
    "translate.flow",
    "translate.flow.local",
    "translate.flow.remote",
];

/// A collector's message as an agent reads it. `None` when it has no body
/// this build knows (a newer collector's message, or an empty one); a
/// watch or unwatch without a well-formed flow, or a Welcome with an
/// overlong version, is refused.
pub fn collector_message_from_wire(
    m: v1::CollectorMessage,
) -> Result<Option<FromCollector>, ConvertError> {
    let Some(body) = m.body else {
        return Ok(None);
    };
    let msg = match body {
        collector_message::Body::Welcome(w) => {
            check_name(&w.collector_version, "welcome.collector_version")?;
            FromCollector::Welcome(Welcome {
                protocol: w.protocol,
                collector_version: w.collector_version,
                reads_addresses: w.reads_addresses,
            })
        }
        collector_message::Body::Watch(w) => {
            FromCollector::Request(ToAgent::Watch(request_flow(w.flow.as_ref(), WATCH)?))
        }
        collector_message::Body::Unwatch(u) => {
            FromCollector::Request(ToAgent::Unwatch(request_flow(u.flow.as_ref(), UNWATCH)?))
        }
        collector_message::Body::Translate(t) => FromCollector::Request(ToAgent::Translate(
            request_flow(t.flow.as_ref(), TRANSLATE)?,
        )),
    };
    Ok(Some(msg))
}

fn request_flow(
    f: Option<&v1::FlowTuple>,
    [flow, local, remote]: FlowFields,
) -> Result<FlowTuple, ConvertError> {
    let f = f.ok_or(ConvertError::Missing(flow))?;
    Ok(FlowTuple::new(
        endpoint_from_wire(f.local.as_ref(), local)?,
        endpoint_from_wire(f.remote.as_ref(), remote)?,
    ))
}

#[cfg(test)]
mod tests;
