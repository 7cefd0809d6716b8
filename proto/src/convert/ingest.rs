//! The collector's side of the Ingest stream: an agent's Hello, Batch and
//! Heartbeat as the collector checks them, the Welcome and requests it
//! sends back, and a sample kept in its wire encoding ([`pack`],
//! [`unpack`]).
//!
//! The inverse of each is the agent's, in `agent`.

use std::time::Duration;

use prost::Message;
use tcpstall_common::{
    AgentBatch, AgentHello, ClosedSocket, EndSample, FlowTuple, Heartbeat, HostHello, Lookup,
    MachineId, NamespaceAddresses, Packed, ProbeSet, SampleReason, ToAgent, Welcome,
};

use super::{
    check_name, endpoint_from_wire, flow_from_wire, flow_to_wire, held_from_wire, ip_from_wire,
    name_from_wire, reason_from_wire, sample_from_wire_owned, sample_to_wire,
    translation_from_wire, ConvertError,
};
use crate::v1::{self, collector_message};
use crate::{raw, sample_wire};

/// Most addresses one Hello may announce.
pub const MAX_ADDRESSES: usize = 65_536;

/// A sample in the encoding the collector keeps and stores.
pub fn pack(s: &EndSample) -> Packed {
    let wire = sample_to_wire(s, v1::SampleReason::Unspecified);
    Packed::from_bytes(wire.encode_to_vec())
}

/// The sample back. `None` only if what [`pack`] wrote (or a store kept)
/// no longer decodes, which would be a bug: the caller logs it and goes on.
pub fn unpack(p: &Packed) -> Option<EndSample> {
    let wire = sample_wire::decode_sample(p.as_bytes()).ok()?;
    sample_from_wire_owned(wire).ok()
}

/// An agent's Hello, checked: a protocol this collector speaks, a host name
/// fit for logs and keys, addresses, and a poll interval in range.
pub fn hello_from_wire(h: &v1::Hello) -> Result<HostHello, ConvertError> {
    if h.protocol == 0 || h.protocol > crate::PROTOCOL_VERSION {
        return Err(ConvertError::Protocol {
            got: h.protocol,
            speaks: crate::PROTOCOL_VERSION,
        });
    }
    let host = name_from_wire(&h.host, "host")?;
    if host.is_empty() || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConvertError::Invalid(
            "host: empty or with spaces or control characters".into(),
        ));
    }
    let namespaces = namespaces_from_wire(&h.namespaces)?;
    let count: usize = namespaces.iter().map(|ns| ns.addresses.len()).sum();
    if count > MAX_ADDRESSES {
        return Err(ConvertError::Invalid(format!(
            "more than {MAX_ADDRESSES} addresses"
        )));
    }
    let interval = Duration::from_millis(u64::from(h.interval_ms));
    if interval < Duration::from_millis(50) || interval > Duration::from_secs(3600) {
        return Err(ConvertError::Invalid(format!(
            "interval_ms {} out of range 50..=3600000",
            h.interval_ms
        )));
    }
    Ok(HostHello {
        host,
        machine_id: machine_id_from_wire(&h.machine_id)?,
        agent_version: name_from_wire(&h.agent_version, "agent_version")?,
        kernel: name_from_wire(&h.kernel, "kernel")?,
        boot_id: name_from_wire(&h.boot_id, "boot_id")?,
        namespaces,
        interval,
        answers_lookups: h.answers_lookups,
        forwards: h.forwards,
        probes: h.probes.map_or_else(ProbeSet::default, |p| ProbeSet {
            sock_diag: p.sock_diag,
            bpf_iter: p.bpf_iter,
            getsockopt: p.getsockopt,
        }),
    })
}

/// A Hello's machine id: empty (an agent that predates it, or found none)
/// is `None`; anything else must be one.
fn machine_id_from_wire(s: &str) -> Result<Option<MachineId>, ConvertError> {
    if s.is_empty() {
        return Ok(None);
    }
    MachineId::new(s)
        .map(Some)
        .map_err(|e| ConvertError::Invalid(format!("machine_id: {e}")))
}

/// An agent's Addresses: every namespace's addresses, checked and bounded
/// as a Hello's are.
pub fn addresses_from_wire(a: &v1::Addresses) -> Result<Vec<NamespaceAddresses>, ConvertError> {
    let namespaces = namespaces_from_wire(&a.namespaces)?;
    let n: usize = namespaces.iter().map(|ns| ns.addresses.len()).sum();
    if n > MAX_ADDRESSES {
        return Err(ConvertError::Invalid(format!(
            "more than {MAX_ADDRESSES} addresses"
        )));
    }
    Ok(namespaces)
}

fn namespaces_from_wire(ns: &[v1::Namespace]) -> Result<Vec<NamespaceAddresses>, ConvertError> {
    ns.iter()
        .map(|ns| {
            Ok(NamespaceAddresses {
                label: name_from_wire(&ns.label, "namespaces.label")?,
                inode: ns.inode,
                addresses: ns
                    .addresses
                    .iter()
                    .map(|ip| ip_from_wire(Some(ip), "namespaces.addresses"))
                    .collect::<Result<_, _>>()?,
            })
        })
        .collect()
}

/// An agent's Hello, whole: every check [`hello_from_wire`] makes, and
/// each namespace's label bounded as a sample's is. A Hello that does not
/// say which probes work reads as none working.
pub fn agent_hello_from_wire(h: &v1::Hello) -> Result<AgentHello, ConvertError> {
    let HostHello {
        host,
        machine_id,
        agent_version,
        kernel,
        boot_id,
        namespaces,
        interval,
        answers_lookups,
        forwards,
        probes,
    } = hello_from_wire(h)?;
    Ok(AgentHello {
        host,
        machine_id,
        agent_version,
        kernel,
        boot_id,
        namespaces,
        probes,
        interval,
        answers_lookups,
        forwards,
    })
}

/// An agent's Batch, checked. Each sample is decoded to check it; the
/// encoding it came in is what the collector keeps, copied out of the
/// message (each sample is a slice of the message's buffer, which goes with
/// the batch).
pub fn batch_from_wire(b: raw::Batch, max_entries: usize) -> Result<AgentBatch, ConvertError> {
    batch_from_wire_keeping(b, max_entries, Keep::Kept)
}

/// Which samples' encodings a checked batch keeps in `packed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Those the matcher may keep (not a released sample's: it is kept
    /// only as an episode's last, and encoded there if so).
    Kept,
    /// Every one: the batch goes on over the wire again (fleet mode's
    /// edge sends the bytes it was given rather than encode them anew).
    All,
}

/// [`batch_from_wire`], keeping the encodings `keep` says.
pub fn batch_from_wire_keeping(
    b: raw::Batch,
    max_entries: usize,
    keep: Keep,
) -> Result<AgentBatch, ConvertError> {
    let n = b.samples.len() + b.closed.len() + b.absent.len() + b.lookups.len();
    if n > max_entries {
        return Err(ConvertError::TooMany {
            what: "batch",
            n,
            max: max_entries,
        });
    }
    let mut samples = Vec::with_capacity(b.samples.len());
    let mut packed = Vec::with_capacity(b.samples.len());
    for (index, bytes) in b.samples.into_iter().enumerate() {
        let at = |e: &dyn std::fmt::Display| ConvertError::Sample {
            index,
            error: e.to_string(),
        };
        let w = sample_wire::decode_sample(&bytes).map_err(|e| at(&e))?;
        let reason = reason_from_wire(w.reason, w.held.as_ref()).map_err(|e| at(&e))?;
        let s = sample_from_wire_owned(w).map_err(|e| at(&e))?;
        // What the matcher may keep; a released sample is kept only as an
        // episode's last, and encoded there if so.
        let released = matches!(reason, SampleReason::Released(_));
        packed.push((keep == Keep::All || !released).then(|| Packed::from_bytes(&bytes[..])));
        samples.push((reason, s));
    }
    let closed = b
        .closed
        .into_iter()
        .map(|c| {
            let flow = FlowTuple::new(
                endpoint_from_wire(c.local.as_ref(), "closed.local")?,
                endpoint_from_wire(c.remote.as_ref(), "closed.remote")?,
            );
            let held = c.held.as_ref().map(held_from_wire).transpose()?;
            // Its namespace's name is taken, not copied, as a sample's is.
            check_name(&c.netns, "closed.netns")?;
            Ok(ClosedSocket {
                netns: c.netns,
                flow,
                cookie: c.cookie,
                held,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()?;
    let absent = b
        .absent
        .iter()
        .map(|f| flow_from_wire(Some(f)))
        .collect::<Result<Vec<_>, ConvertError>>()?;
    let lookups = b
        .lookups
        .iter()
        .map(lookup_from_wire)
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Ok(AgentBatch {
        mono: Duration::from_micros(b.mono_us),
        connections: b.connections,
        samples,
        packed,
        closed,
        absent,
        lookups,
        dropped_batches: b.dropped_batches,
        dropped_samples: b.dropped_samples,
    })
}

fn lookup_from_wire(l: &v1::Lookup) -> Result<Lookup, ConvertError> {
    Ok(Lookup {
        flow: flow_from_wire(l.flow.as_ref())?,
        translation: l
            .translation
            .as_ref()
            .map(translation_from_wire)
            .transpose()?,
        connected_to: l
            .connected_to
            .as_ref()
            .map(|e| endpoint_from_wire(Some(e), "lookup.connected_to"))
            .transpose()?,
        asked: l.asked,
    })
}

/// An agent's Heartbeat: plain counters, nothing to refuse.
pub fn heartbeat_from_wire(h: &v1::Heartbeat) -> Heartbeat {
    Heartbeat {
        mono: Duration::from_micros(h.mono_us),
        connections: h.connections,
        dropped_batches: h.dropped_batches,
        dropped_samples: h.dropped_samples,
    }
}

/// The collector's first word on a stream, on the wire.
pub fn welcome_to_wire(w: Welcome) -> v1::CollectorMessage {
    v1::CollectorMessage {
        body: Some(collector_message::Body::Welcome(v1::Welcome {
            protocol: w.protocol,
            collector_version: w.collector_version,
            reads_addresses: w.reads_addresses,
        })),
    }
}

/// A request to an agent on the wire.
pub fn to_agent_to_wire(msg: ToAgent) -> v1::CollectorMessage {
    let body = match msg {
        ToAgent::Watch(flow) => collector_message::Body::Watch(v1::Watch {
            flow: Some(flow_to_wire(flow)),
            reason: "peer of a suspect flow".into(),
        }),
        ToAgent::Unwatch(flow) => collector_message::Body::Unwatch(v1::Unwatch {
            flow: Some(flow_to_wire(flow)),
        }),
        ToAgent::Translate(flow) => collector_message::Body::Translate(v1::Translate {
            flow: Some(flow_to_wire(flow)),
        }),
    };
    v1::CollectorMessage { body: Some(body) }
}

#[cfg(test)]
mod tests;
