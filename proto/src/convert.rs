//! The one seam between wire messages and domain types. Everything that
//! arrives from the network is validated here: a message that names an
//! impossible state, address or sequence position is refused with a
//! [`ConvertError`] the service turns into `InvalidArgument`.
//!
//! The shared pieces (addresses, flows, samples, held spans) are here; the
//! Ingest stream's messages are in one submodule per side: `ingest` holds
//! what the collector reads and sends, `agent` what an agent sends and
//! reads; the query protocol's (both the collector's side and the CLI's)
//! are in `query`. Each message's two directions are tested as a round
//! trip.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use std::time::Duration;
use tcpstall_common::kernel_tcp::SACK_BLOCKS;
use tcpstall_common::time::micros;

use tcpstall_common::{
    AbsoluteSeq, EndSample, FactSource, FlowTuple, HeldEnd, HeldSpan, Opened, OwnerMissing,
    Positions, ProcessOwner, SackBlock, SampleReason, TcpState, TimerKind, Translation,
};

use crate::v1;

mod agent;
mod ingest;
mod query;
pub use agent::{
    agent_message_to_wire, batch_to_wire, collector_message_from_wire, heartbeat_to_wire,
    hello_to_wire,
};
pub use ingest::{
    addresses_from_wire, agent_hello_from_wire, batch_from_wire, batch_from_wire_keeping,
    heartbeat_from_wire, hello_from_wire, pack, to_agent_to_wire, unpack, welcome_to_wire, Keep,
    MAX_ADDRESSES,
};
pub use query::{
    episode_detail_from_wire, episode_detail_to_wire, episode_filter_from_wire, episode_from_wire,
    episode_page_from_wire, episode_page_to_wire, episode_query_to_wire, episode_request_from_wire,
    episode_request_to_wire, episode_sample_from_wire, episode_to_wire, flow_ends_from_wire,
    flow_ends_to_wire, flow_request_from_wire, flow_request_to_wire, held_filter_from_wire,
    held_query_to_wire, held_spans_from_wire, held_spans_to_wire, stored_sample_to_wire,
};

/// Why a wire message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("{field}: address of {len} bytes (want 4 or 16)")]
    Address { field: &'static str, len: usize },
    #[error("{field}: port {port} out of range")]
    Port { field: &'static str, port: u32 },
    #[error("unknown TCP state {0}")]
    State(u32),
    #[error("{field}: {value} is out of range")]
    Range { field: &'static str, value: u64 },
    #[error("impossible positions: {0}")]
    Positions(&'static str),
    #[error("held: {0}")]
    Held(String),
    #[error("unknown reason {0}")]
    Reason(i32),
    #[error("{field}: {len} bytes, at most {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A peer speaking a protocol version this side does not.
    #[error("protocol {got} not spoken here (this collector speaks 1..={speaks})")]
    Protocol { got: u32, speaks: u32 },
    /// More entries than the receiver takes in one message.
    #[error("{what} of {n} entries, at most {max}")]
    TooMany {
        what: &'static str,
        n: usize,
        max: usize,
    },
    /// One sample of a batch, by its index.
    #[error("samples[{index}]: {error}")]
    Sample { index: usize, error: String },
    #[error("{0}")]
    Invalid(String),
}

/// Longest namespace label or host name accepted.
pub const MAX_NAME: usize = 255;
/// Longest owner command line accepted (the agent cuts it to this).
pub const MAX_COMMAND: usize = 1024;
/// Longest systemd unit name accepted (systemd's own limit).
pub const MAX_UNIT: usize = 256;
/// Longest cgroup path accepted (PATH_MAX).
pub const MAX_CGROUP: usize = 4096;

fn bounded(s: &str, field: &'static str, max: usize) -> Result<String, ConvertError> {
    if s.len() > max {
        return Err(ConvertError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(s.to_string())
}

pub fn ip_to_wire(ip: IpAddr) -> v1::Ip {
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    v1::Ip { octets }
}

pub fn ip_from_wire(ip: Option<&v1::Ip>, field: &'static str) -> Result<IpAddr, ConvertError> {
    let ip = ip.ok_or(ConvertError::Missing(field))?;
    let b = ip.octets.as_slice();
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        Ok(IpAddr::V4(Ipv4Addr::from(a)))
    } else if let Ok(a) = <[u8; 16]>::try_from(b) {
        Ok(IpAddr::V6(Ipv6Addr::from(a)))
    } else {
        Err(ConvertError::Address {
            field,
            len: b.len(),
        })
    }
}

pub fn endpoint_to_wire(a: SocketAddr) -> v1::Endpoint {
    v1::Endpoint {
        ip: Some(ip_to_wire(a.ip())),
        port: u32::from(a.port()),
    }
}

pub fn endpoint_from_wire(
    e: Option<&v1::Endpoint>,
    field: &'static str,
) -> Result<SocketAddr, ConvertError> {
    let e = e.ok_or(ConvertError::Missing(field))?;
    let ip = ip_from_wire(e.ip.as_ref(), field)?;
    let port = u16::try_from(e.port).map_err(|_| ConvertError::Port {
        field,
        port: e.port,
    })?;
    Ok(tcpstall_common::normalize_addr(SocketAddr::new(ip, port)))
}

pub fn flow_to_wire(f: FlowTuple) -> v1::FlowTuple {
    v1::FlowTuple {
        local: Some(endpoint_to_wire(f.local)),
        remote: Some(endpoint_to_wire(f.remote)),
    }
}

pub fn flow_from_wire(f: Option<&v1::FlowTuple>) -> Result<FlowTuple, ConvertError> {
    let f = f.ok_or(ConvertError::Missing("flow"))?;
    Ok(FlowTuple::new(
        endpoint_from_wire(f.local.as_ref(), "flow.local")?,
        endpoint_from_wire(f.remote.as_ref(), "flow.remote")?,
    ))
}

pub fn name_from_wire(s: &str, field: &'static str) -> Result<String, ConvertError> {
    check_name(s, field)?;
    Ok(s.to_string())
}

fn check_name(s: &str, field: &'static str) -> Result<(), ConvertError> {
    if s.len() > MAX_NAME {
        return Err(ConvertError::TooLong {
            field,
            len: s.len(),
            max: MAX_NAME,
        });
    }
    Ok(())
}

fn opened_to_wire(o: Option<Opened>) -> v1::Opened {
    match o {
        Some(Opened::Active) => v1::Opened::Active,
        Some(Opened::Passive) => v1::Opened::Passive,
        None => v1::Opened::Unspecified,
    }
}

fn opened_from_wire(o: i32) -> Option<Opened> {
    match v1::Opened::try_from(o) {
        Ok(v1::Opened::Active) => Some(Opened::Active),
        Ok(v1::Opened::Passive) => Some(Opened::Passive),
        _ => None,
    }
}

fn timer_to_wire(t: Option<TimerKind>) -> v1::Timer {
    match t {
        None => v1::Timer::None,
        Some(TimerKind::Retransmit) => v1::Timer::Retransmit,
        Some(TimerKind::Keepalive) => v1::Timer::Keepalive,
        Some(TimerKind::TimeWait) => v1::Timer::TimeWait,
        Some(TimerKind::ZeroWindowProbe) => v1::Timer::ZeroWindowProbe,
    }
}

fn timer_from_wire(t: i32) -> Option<TimerKind> {
    match v1::Timer::try_from(t) {
        Ok(v1::Timer::Retransmit) => Some(TimerKind::Retransmit),
        Ok(v1::Timer::Keepalive) => Some(TimerKind::Keepalive),
        Ok(v1::Timer::TimeWait) => Some(TimerKind::TimeWait),
        Ok(v1::Timer::ZeroWindowProbe) => Some(TimerKind::ZeroWindowProbe),
        _ => None,
    }
}

fn small(v: Option<u32>, field: &'static str, max: u32) -> Result<Option<u8>, ConvertError> {
    match v {
        None => Ok(None),
        Some(v) if v <= max => Ok(Some(v as u8)),
        Some(v) => Err(ConvertError::Range {
            field,
            value: u64::from(v),
        }),
    }
}

fn held_end_to_wire(e: HeldEnd) -> v1::HeldEnd {
    match e {
        HeldEnd::Moved => v1::HeldEnd::Moved,
        HeldEnd::Drained => v1::HeldEnd::Drained,
        HeldEnd::Closed => v1::HeldEnd::Closed,
        HeldEnd::Reset => v1::HeldEnd::Reset,
    }
}

/// A held span on the wire.
pub fn held_to_wire(h: &HeldSpan) -> v1::Held {
    v1::Held {
        since_us: micros(h.since),
        last_held_us: micros(h.last_held),
        ended_us: micros(h.ended),
        end: held_end_to_wire(h.end) as i32,
    }
}

/// A held span from the wire: its times in order and its end named, or
/// refused.
pub fn held_from_wire(h: &v1::Held) -> Result<HeldSpan, ConvertError> {
    let end = match v1::HeldEnd::try_from(h.end) {
        Ok(v1::HeldEnd::Moved) => HeldEnd::Moved,
        Ok(v1::HeldEnd::Drained) => HeldEnd::Drained,
        Ok(v1::HeldEnd::Closed) => HeldEnd::Closed,
        Ok(v1::HeldEnd::Reset) => HeldEnd::Reset,
        _ => return Err(ConvertError::Held(format!("unknown end {}", h.end))),
    };
    HeldSpan::new(
        Duration::from_micros(h.since_us),
        Duration::from_micros(h.last_held_us),
        Duration::from_micros(h.ended_us),
        end,
    )
    .map_err(|e| ConvertError::Held(e.to_string()))
}

/// A sample with why it was sent, on the wire: a release carries its
/// hold's span when it has one.
pub fn reasoned_sample_to_wire(r: &SampleReason, s: &EndSample) -> v1::Sample {
    let (reason, held) = match r {
        SampleReason::Suspect => (v1::SampleReason::Suspect, None),
        SampleReason::Watched => (v1::SampleReason::Watched, None),
        SampleReason::Released(h) => (v1::SampleReason::Released, h.as_ref().map(held_to_wire)),
    };
    let mut w = sample_to_wire(s, reason);
    w.held = held;
    w
}

/// Why a wire sample was sent, from its `reason` and `held` fields. A span
/// on anything but a release is ignored, as an unknown field would be.
pub fn reason_from_wire(
    reason: i32,
    held: Option<&v1::Held>,
) -> Result<SampleReason, ConvertError> {
    match v1::SampleReason::try_from(reason) {
        Ok(v1::SampleReason::Suspect) => Ok(SampleReason::Suspect),
        Ok(v1::SampleReason::Watched) => Ok(SampleReason::Watched),
        Ok(v1::SampleReason::Released) => Ok(SampleReason::Released(
            held.map(held_from_wire).transpose()?,
        )),
        _ => Err(ConvertError::Reason(reason)),
    }
}

/// A domain sample on the wire.
pub fn sample_to_wire(s: &EndSample, reason: v1::SampleReason) -> v1::Sample {
    let p = &s.pos;
    v1::Sample {
        reason: reason as i32,
        netns: s.netns.clone(),
        local: Some(endpoint_to_wire(s.flow.local)),
        remote: Some(endpoint_to_wire(s.flow.remote)),
        state: u32::from(s.state.kernel_number()),
        cookie: s.cookie,
        inode: s.inode,
        opened: opened_to_wire(s.opened) as i32,
        sendq: p.sendq,
        recvq: p.recvq,
        unchanged_ms: s.unchanged_ms,
        snd_una: p.snd_una,
        snd_nxt: p.snd_nxt,
        write_seq: p.write_seq,
        rcv_nxt: p.rcv_nxt,
        copied: p.copied,
        notsent: p.notsent,
        inflight: p.inflight,
        snd_wnd: p.snd_wnd,
        rcv_wnd: p.rcv_wnd,
        snd_wscale: p.snd_wscale.map(u32::from),
        rcv_wscale: p.rcv_wscale.map(u32::from),
        timer: timer_to_wire(s.timer) as i32,
        timer_expires_ms: s.timer_expires_ms,
        retransmits: s.retransmits.map(u32::from),
        probes: s.probes.map(u32::from),
        backoff: s.backoff.map(u32::from),
        ca_state: s.ca_state.map(u32::from),
        rto_us: s.rto_us,
        rtt_us: s.rtt_us,
        snd_cwnd: s.snd_cwnd,
        unacked: s.unacked,
        lost: s.lost,
        retrans: s.retrans,
        total_retrans: s.total_retrans,
        last_data_sent_ms: s.last_data_sent_ms,
        last_data_recv_ms: s.last_data_recv_ms,
        last_ack_recv_ms: s.last_ack_recv_ms,
        bytes_retrans: s.bytes_retrans,
        rmem_alloc: s.rmem_alloc,
        rcvbuf: s.rcvbuf,
        cork: s.cork,
        cork_source: source_to_wire(s.cork_source) as i32,
        nodelay: s.nodelay,
        nodelay_source: source_to_wire(s.nodelay_source) as i32,
        owner: s.owner.as_deref().cloned().map(owner_to_wire),
        owner_missing: owner_missing_to_wire(s.owner_missing) as i32,
        absolute: s.absolute.as_ref().map(|a| v1::AbsoluteSeq {
            snd_una: a.snd_una,
            snd_nxt: a.snd_nxt,
            write_seq: a.write_seq,
            rcv_nxt: a.rcv_nxt,
            snd_isn: a.snd_isn,
            rcv_isn: a.rcv_isn,
            sacks_sent: sacks_to_wire(&a.sacks_sent),
            sacks_received: sacks_to_wire(&a.sacks_received),
        }),
        // The agent sets it on released samples.
        held: None,
        translation: s.translation.as_deref().copied().map(translation_to_wire),
    }
}

/// A conntrack entry on the wire.
pub fn translation_to_wire(t: Translation) -> v1::Translation {
    v1::Translation {
        original: Some(flow_to_wire(t.original)),
        reply: Some(flow_to_wire(t.reply)),
        src_nat: t.src_nat,
        dst_nat: t.dst_nat,
    }
}

/// A conntrack entry from the wire: both tuples whole, of one family
/// (connection tracking never mixes them).
pub fn translation_from_wire(t: &v1::Translation) -> Result<Translation, ConvertError> {
    let original = flow_from_wire(t.original.as_ref())?;
    let reply = flow_from_wire(t.reply.as_ref())?;
    let family = |f: FlowTuple| (f.local.is_ipv4(), f.remote.is_ipv4());
    let (o, r) = (family(original), family(reply));
    if o.0 != o.1 || r.0 != r.1 || o != r {
        return Err(ConvertError::Invalid(format!(
            "translation: addresses of two families ({original} => {reply})"
        )));
    }
    Ok(Translation {
        original,
        reply,
        src_nat: t.src_nat,
        dst_nat: t.dst_nat,
    })
}

fn sacks_to_wire(b: &[SackBlock]) -> Vec<v1::SackBlock> {
    b.iter()
        .map(|b| v1::SackBlock {
            start: b.start,
            end: b.end,
        })
        .collect()
}

fn sacks_from_wire(
    b: &[v1::SackBlock],
    field: &'static str,
) -> Result<Vec<SackBlock>, ConvertError> {
    if b.len() > SACK_BLOCKS {
        return Err(ConvertError::Range {
            field,
            value: b.len() as u64,
        });
    }
    Ok(b.iter()
        .map(|b| SackBlock {
            start: b.start,
            end: b.end,
        })
        .collect())
}

fn owner_missing_to_wire(m: Option<OwnerMissing>) -> v1::OwnerMissing {
    match m {
        None => v1::OwnerMissing::Unspecified,
        Some(OwnerMissing::NoOwner) => v1::OwnerMissing::NoOwner,
        Some(OwnerMissing::NoPermission) => v1::OwnerMissing::NoPermission,
        Some(OwnerMissing::Off) => v1::OwnerMissing::Off,
    }
}

fn owner_missing_from_wire(m: i32) -> Option<OwnerMissing> {
    match v1::OwnerMissing::try_from(m).ok()? {
        v1::OwnerMissing::Unspecified => None,
        v1::OwnerMissing::NoOwner => Some(OwnerMissing::NoOwner),
        v1::OwnerMissing::NoPermission => Some(OwnerMissing::NoPermission),
        v1::OwnerMissing::Off => Some(OwnerMissing::Off),
    }
}

fn owner_to_wire(o: ProcessOwner) -> v1::Owner {
    v1::Owner {
        pid: o.pid,
        command: o.command,
        unit: o.unit,
        cgroup: o.cgroup,
    }
}

fn owner_from_wire(o: &v1::Owner) -> Result<ProcessOwner, ConvertError> {
    Ok(ProcessOwner {
        pid: o.pid,
        command: bounded(&o.command, "owner.command", MAX_COMMAND)?,
        unit: o
            .unit
            .as_deref()
            .map(|u| bounded(u, "owner.unit", MAX_UNIT))
            .transpose()?,
        cgroup: o
            .cgroup
            .as_deref()
            .map(|c| bounded(c, "owner.cgroup", MAX_CGROUP))
            .transpose()?,
    })
}

fn absolute_from_wire(a: &v1::AbsoluteSeq) -> Result<AbsoluteSeq, ConvertError> {
    Ok(AbsoluteSeq {
        snd_una: a.snd_una,
        snd_nxt: a.snd_nxt,
        write_seq: a.write_seq,
        rcv_nxt: a.rcv_nxt,
        snd_isn: a.snd_isn,
        rcv_isn: a.rcv_isn,
        sacks_sent: sacks_from_wire(&a.sacks_sent, "absolute.sacks_sent")?,
        sacks_received: sacks_from_wire(&a.sacks_received, "absolute.sacks_received")?,
    })
}

fn source_to_wire(s: Option<FactSource>) -> v1::FactSource {
    match s {
        None => v1::FactSource::Unspecified,
        Some(FactSource::TcpInfo) => v1::FactSource::TcpInfo,
        Some(FactSource::Bpf) => v1::FactSource::Bpf,
        Some(FactSource::Getsockopt) => v1::FactSource::Getsockopt,
    }
}

fn source_from_wire(s: i32) -> Option<FactSource> {
    match v1::FactSource::try_from(s).ok()? {
        v1::FactSource::Unspecified => None,
        v1::FactSource::TcpInfo => Some(FactSource::TcpInfo),
        v1::FactSource::Bpf => Some(FactSource::Bpf),
        v1::FactSource::Getsockopt => Some(FactSource::Getsockopt),
    }
}

/// A wire sample as a domain sample, refusing what TCP cannot produce.
pub fn sample_from_wire(w: &v1::Sample) -> Result<EndSample, ConvertError> {
    from_wire(w, || name_from_wire(&w.netns, "netns"))
}

/// [`sample_from_wire`] of a wire sample that is no longer needed: its
/// namespace's name is taken, not copied (a collector converts every
/// sample of every batch).
pub fn sample_from_wire_owned(mut w: v1::Sample) -> Result<EndSample, ConvertError> {
    let netns = std::mem::take(&mut w.netns);
    from_wire(&w, move || check_name(&netns, "netns").map(|()| netns))
}

/// [`sample_from_wire`], the namespace's name given by `netns` (called
/// where the name is checked, so that a sample with several faults is
/// refused for the same one either way).
fn from_wire(
    w: &v1::Sample,
    netns: impl FnOnce() -> Result<String, ConvertError>,
) -> Result<EndSample, ConvertError> {
    let state = u8::try_from(w.state)
        .ok()
        .and_then(TcpState::from_kernel)
        .filter(|s| *s != TcpState::Listen)
        .ok_or(ConvertError::State(w.state))?;
    let pos = Positions {
        sendq: w.sendq,
        recvq: w.recvq,
        notsent: w.notsent,
        inflight: w.inflight,
        snd_una: w.snd_una,
        snd_nxt: w.snd_nxt,
        write_seq: w.write_seq,
        rcv_nxt: w.rcv_nxt,
        copied: w.copied,
        snd_wnd: w.snd_wnd,
        rcv_wnd: w.rcv_wnd,
        snd_wscale: small(w.snd_wscale, "snd_wscale", 14)?,
        rcv_wscale: small(w.rcv_wscale, "rcv_wscale", 14)?,
    };
    check_positions(&pos)?;
    Ok(EndSample {
        flow: FlowTuple::new(
            endpoint_from_wire(w.local.as_ref(), "local")?,
            endpoint_from_wire(w.remote.as_ref(), "remote")?,
        ),
        netns: netns()?,
        state,
        cookie: w.cookie,
        inode: w.inode,
        opened: opened_from_wire(w.opened),
        pos,
        unchanged_ms: w.unchanged_ms,
        timer: timer_from_wire(w.timer),
        timer_expires_ms: w.timer_expires_ms,
        retransmits: small(w.retransmits, "retransmits", 255)?,
        probes: small(w.probes, "probes", 255)?,
        backoff: small(w.backoff, "backoff", 255)?,
        ca_state: small(w.ca_state, "ca_state", 4)?,
        rto_us: w.rto_us,
        rtt_us: w.rtt_us,
        snd_cwnd: w.snd_cwnd,
        unacked: w.unacked,
        lost: w.lost,
        retrans: w.retrans,
        total_retrans: w.total_retrans,
        last_data_sent_ms: w.last_data_sent_ms,
        last_data_recv_ms: w.last_data_recv_ms,
        last_ack_recv_ms: w.last_ack_recv_ms,
        bytes_retrans: w.bytes_retrans,
        rmem_alloc: w.rmem_alloc,
        rcvbuf: w.rcvbuf,
        // A source without a value says nothing.
        cork: w.cork,
        cork_source: w.cork.and(source_from_wire(w.cork_source)),
        nodelay: w.nodelay,
        nodelay_source: w.nodelay.and(source_from_wire(w.nodelay_source)),
        owner: w
            .owner
            .as_ref()
            .map(owner_from_wire)
            .transpose()?
            .map(Box::new),
        // A reason beside an owner says nothing.
        owner_missing: if w.owner.is_some() {
            None
        } else {
            owner_missing_from_wire(w.owner_missing)
        },
        absolute: w
            .absolute
            .as_ref()
            .map(absolute_from_wire)
            .transpose()?
            .map(Box::new),
        translation: w
            .translation
            .as_ref()
            .map(translation_from_wire)
            .transpose()?
            .map(Box::new),
    })
}

/// The relations every honest sample keeps.
fn check_positions(p: &Positions) -> Result<(), ConvertError> {
    let le = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => a <= b,
        _ => true,
    };
    if !le(p.snd_una, p.snd_nxt) {
        return Err(ConvertError::Positions("snd_nxt below snd_una"));
    }
    if !le(p.snd_nxt, p.write_seq) {
        return Err(ConvertError::Positions("write_seq below snd_nxt"));
    }
    if !le(p.copied, p.rcv_nxt) {
        return Err(ConvertError::Positions("copied beyond rcv_nxt"));
    }
    if let (Some(una), Some(w)) = (p.snd_una, p.write_seq) {
        if w - una != u64::from(p.sendq) {
            return Err(ConvertError::Positions("sendq is not write_seq - snd_una"));
        }
    }
    if let (Some(c), Some(r)) = (p.copied, p.rcv_nxt) {
        if r - c != u64::from(p.recvq) {
            return Err(ConvertError::Positions("recvq is not rcv_nxt - copied"));
        }
    }
    if p.notsent.is_some_and(|n| n > p.sendq) || p.inflight.is_some_and(|i| i > p.sendq) {
        return Err(ConvertError::Positions(
            "unsent or in-flight bytes exceed the send queue",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
