//! Looks one TCP flow up in the kernel's connection tracking (ctnetlink
//! over `NETLINK_NETFILTER`) and reports its translation: the entry's
//! original and reply tuples and which of source and destination a NAT
//! rule rewrote. One `IPCTNL_MSG_CT_GET` request per flow, never a table
//! dump.
//!
//! The messages are built and read with `netlink-packet-netfilter` (the
//! rust-netlink family's ctnetlink types); this module turns a
//! [`FlowTuple`] into a request and a reply into a [`Translation`], both
//! pure over bytes ([`get_request`], [`parse_reply`]) so that they are
//! tested byte for byte, and keeps the I/O in [`Conntrack`].
//!
//! Either direction finds the entry: the kernel's lookup by tuple
//! (`nf_conntrack_find_get`) searches the hash that holds both directions
//! of every entry, so a socket on the reply side of a translation (the
//! server behind a DNAT, whose `local -> remote` is the entry's reply
//! tuple) is found by the same request as the initiator's socket. One
//! request per flow therefore answers both sides; [`Conntrack::get`] asks
//! with an explicit direction for callers and tests that want it.
//!
//! The agent opens one socket per namespace it reads and one in the
//! host's own namespace ([`crate::translate::Tables`]), and asks only about
//! what it sends (suspects, watched flows, the collector's Translate
//! requests). Every receive waits at most [`RECV_TIMEOUT`], so a kernel
//! that does not answer costs a poll that long, never the poll.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Status, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};
use tcpstall_common::{normalize_addr, FlowTuple, Translation};

/// `NFNETLINK_V0`, the only version of the nfnetlink header.
const NFNETLINK_V0: u8 = 0;

/// A reply to one GET is one entry: a few hundred bytes, far below this.
const RECV_BUF: usize = 8192;

/// How long one receive waits for the kernel's answer. A GET is answered
/// in microseconds, within the `send` itself; this only bounds a kernel
/// that does not answer at all.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// Which of an entry's two tuples a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `CTA_TUPLE_ORIG`: the flow is the entry's original direction.
    Original,
    /// `CTA_TUPLE_REPLY`: the flow is the entry's reply direction.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests'
    Reply,
}

/// Why a lookup gave no answer. An absent entry is not an error
/// (`Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("ctnetlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel refused the conntrack request: {0}")]
    Refused(io::Error),
    #[error("no answer from ctnetlink within {RECV_TIMEOUT:?}")]
    TimedOut,
    #[error("a flow between addresses of two families has no conntrack entry: {0}")]
    MixedFamilies(FlowTuple),
    #[error("malformed conntrack reply: {0}")]
    Malformed(String),
}

/// A ctnetlink socket, bound to the network namespace it was opened in.
#[derive(Debug)]
pub struct Conntrack {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl Conntrack {
    /// Opens a socket in the calling thread's network namespace; its
    /// receives wait at most [`RECV_TIMEOUT`].
    pub fn open() -> io::Result<Conntrack> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&NetlinkAddr::new(0, 0))?;
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(RECV_TIMEOUT),
        )?;
        Ok(Conntrack {
            sock,
            buf: vec![0; RECV_BUF],
            seq: 0,
        })
    }

    /// The translation of the connection `flow` (as one end's socket sees
    /// it: `local -> remote`) belongs to, whichever side of the entry that
    /// socket is on; `None` when the namespace tracks no such connection.
    pub fn lookup(&mut self, flow: FlowTuple) -> Result<Option<Translation>, ConntrackError> {
        // The kernel matches the tuple against both directions of every
        // entry (see the module doc), so one request answers both sides.
        self.get(Direction::Original, flow)
    }

    /// Asks for the entry whose `direction` tuple is `flow.local ->
    /// flow.remote`.
    pub fn get(
        &mut self,
        direction: Direction,
        flow: FlowTuple,
    ) -> Result<Option<Translation>, ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        let request = get_request(self.seq, direction, flow)?;
        self.sock.send(&request, 0)?;
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                // SO_RCVTIMEO ran out (EAGAIN); a late answer is skipped
                // by its sequence number on the next request.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ConntrackError::TimedOut)
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(ConntrackError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "ctnetlink socket closed before the reply",
                )));
            }
            match parse_reply(&self.buf[..n.min(self.buf.len())], self.seq)? {
                Reply::Answer(answer) => return Ok(answer),
                // A late answer to an earlier request: wait for ours.
                Reply::NotOurs => continue,
            }
        }
    }
}

/// The bytes of an `IPCTNL_MSG_CT_GET` request for the TCP entry whose
/// `direction` tuple is `flow.local -> flow.remote`. IPv4-mapped IPv6
/// addresses are asked as IPv4, the family conntrack tracks them in.
pub fn get_request(
    seq: u32,
    direction: Direction,
    flow: FlowTuple,
) -> Result<Vec<u8>, ConntrackError> {
    let (src, dst) = (normalize_addr(flow.local), normalize_addr(flow.remote));
    let family = match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => NetfilterProtoFamily::IPv4,
        (IpAddr::V6(_), IpAddr::V6(_)) => NetfilterProtoFamily::IPv6,
        _ => return Err(ConntrackError::MixedFamilies(flow)),
    };
    let tuple = vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(src.ip()),
            IPTuple::DestinationAddress(dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::SourcePort(src.port()),
            ProtoTuple::DestinationPort(dst.port()),
        ]),
    ];
    let attribute = match direction {
        Direction::Original => ConntrackAttribute::CtaTupleOrig(tuple),
        Direction::Reply => ConntrackAttribute::CtaTupleReply(tuple),
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, NFNETLINK_V0, 0),
            ConntrackMessage::Get(vec![attribute]),
        )),
    );
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    Ok(out)
}

/// What one received datagram said about request `seq`.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// The answer: the entry's translation, or `None` (`ENOENT`).
    Answer(Option<Translation>),
    /// Messages for other requests only.
    NotOurs,
}

/// Reads one datagram of ctnetlink replies, looking for the answer to
/// request `seq`. Total: any bytes give a [`Reply`] or an error value.
pub fn parse_reply(chunk: &[u8], seq: u32) -> Result<Reply, ConntrackError> {
    let mut rest = chunk;
    while !rest.is_empty() {
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(rest)
            .map_err(|e| ConntrackError::Malformed(format!("{e}")))?;
        let len = msg.header.length as usize;
        if msg.header.sequence_number == seq {
            return answer(msg.payload).map(Reply::Answer);
        }
        // Messages are padded to four bytes; a length that does not
        // advance ends the walk rather than loop.
        let step = len.checked_add(3).map(|l| l & !3).unwrap_or(0);
        if step == 0 || step > rest.len() {
            break;
        }
        rest = &rest[step..];
    }
    Ok(Reply::NotOurs)
}

fn answer(
    payload: NetlinkPayload<NetfilterMessage>,
) -> Result<Option<Translation>, ConntrackError> {
    match payload {
        NetlinkPayload::Error(e) => match e.code {
            // An acknowledgement carries no entry.
            None => Ok(None),
            Some(code) if code.get() == -libc::ENOENT => Ok(None),
            Some(_) => Err(ConntrackError::Refused(e.to_io())),
        },
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ct),
            ..
        }) => match ct {
            ConntrackMessage::New(attributes) | ConntrackMessage::Get(attributes) => {
                translation(&attributes).map(Some)
            }
            other => Err(ConntrackError::Malformed(format!(
                "unexpected conntrack message {:?}",
                other.message_type()
            ))),
        },
        other => Err(ConntrackError::Malformed(format!(
            "unexpected netlink message type {}",
            other.message_type()
        ))),
    }
}

/// The entry's tuples and NAT bits. Every one of them must be present.
fn translation(attributes: &[ConntrackAttribute]) -> Result<Translation, ConntrackError> {
    let (mut original, mut reply, mut status) = (None, None, None);
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(t) => original = Some(flow_of(t, "original")?),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(flow_of(t, "reply")?),
            ConntrackAttribute::CtaStatus(s) => status = Some(*s),
            _ => {}
        }
    }
    let missing = |what: &str| ConntrackError::Malformed(format!("no {what} in the entry"));
    let status = status.ok_or_else(|| missing("CTA_STATUS"))?;
    Ok(Translation {
        original: original.ok_or_else(|| missing("CTA_TUPLE_ORIG"))?,
        reply: reply.ok_or_else(|| missing("CTA_TUPLE_REPLY"))?,
        src_nat: status.contains(Status::SrcNat),
        dst_nat: status.contains(Status::DstNat),
    })
}

/// A tuple as source -> destination; it must be TCP and complete.
fn flow_of(tuple: &[Tuple], which: &str) -> Result<FlowTuple, ConntrackError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(*n),
                        ProtoTuple::SourcePort(port) => sport = Some(*port),
                        ProtoTuple::DestinationPort(port) => dport = Some(*port),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let bad = |what: &str| ConntrackError::Malformed(format!("{which} tuple: {what}"));
    match proto {
        Some(Protocol::Tcp) => {}
        Some(other) => return Err(bad(&format!("protocol {} is not TCP", u8::from(other)))),
        None => return Err(bad("no protocol")),
    }
    let (src, dst) = (
        src.ok_or_else(|| bad("no source address"))?,
        dst.ok_or_else(|| bad("no destination address"))?,
    );
    let (sport, dport) = (
        sport.ok_or_else(|| bad("no source port"))?,
        dport.ok_or_else(|| bad("no destination port"))?,
    );
    Ok(FlowTuple::new(
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
    ))
}

#[cfg(test)]
mod tests;
