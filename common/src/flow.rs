//! Flow identity across hosts: a 4-tuple seen from one end, and the
//! canonical key both ends of a connection share.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A connection's 4-tuple as one end sees it: `local` is that end's own
/// address. The other end sees it [`reversed`](FlowTuple::reversed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowTuple {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl FlowTuple {
    pub fn new(local: SocketAddr, remote: SocketAddr) -> FlowTuple {
        FlowTuple { local, remote }
    }

    /// The same connection as the other end sees it.
    pub fn reversed(self) -> FlowTuple {
        FlowTuple {
            local: self.remote,
            remote: self.local,
        }
    }

    /// The key both ends map to.
    pub fn key(self) -> FlowKey {
        if self.local <= self.remote {
            FlowKey(self.local, self.remote)
        } else {
            FlowKey(self.remote, self.local)
        }
    }
}

impl fmt::Display for FlowTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.local, self.remote)
    }
}

/// The canonical 4-tuple: the lower endpoint first, so that both ends of a
/// connection produce the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey(pub SocketAddr, pub SocketAddr);

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <-> {}", self.0, self.1)
    }
}

/// One connection's entry in a host's connection tracking, as that host's
/// kernel holds it: the tuple its first packet carried and the tuple its
/// replies carry, each as source -> destination. Without translation the
/// reply is the original reversed; a translated connection differs in the
/// addresses or ports a rule rewrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Translation {
    /// The original direction: `local` is its source, `remote` its
    /// destination, as the first packet left the connection's initiator.
    pub original: FlowTuple,
    /// The reply direction: `local` is the reply's source (after a DNAT,
    /// the real server), `remote` its destination (after an SNAT, the
    /// translated client address).
    pub reply: FlowTuple,
    /// The source of the original direction was rewritten (SNAT, masquerade).
    pub src_nat: bool,
    /// The destination of the original direction was rewritten (DNAT).
    pub dst_nat: bool,
}

impl Translation {
    /// Whether any address or port of the connection was rewritten.
    pub fn translated(&self) -> bool {
        self.src_nat || self.dst_nat
    }

    /// The far end's socket, given one end's (`seen`, as that end's host
    /// sees it: local is its own side): a socket whose packets are the
    /// entry's original direction talks to a socket whose packets are its
    /// reply direction, and the other way round. `None` when `seen` is
    /// neither of the entry's tuples.
    ///
    /// Behind a DNAT, the client's `c -> vip` gives the server's
    /// `s -> c`; behind an SNAT, the server's `s -> n` (`n` the translated
    /// client) gives the client's `c -> s`.
    pub fn far_side(&self, seen: FlowTuple) -> Option<FlowTuple> {
        if seen == self.original {
            Some(self.reply)
        } else if seen == self.reply {
            Some(self.original)
        } else {
            None
        }
    }

    /// Whether `flow` is one of the entry's directions (the flow's socket
    /// is one of the connection's two ends).
    pub fn holds(&self, flow: FlowTuple) -> bool {
        flow == self.original || flow == self.reply
    }
}

impl fmt::Display for Translation {
    /// `original => reply`, each `source -> destination`, with what was
    /// rewritten: `10.0.0.1:5000 -> 10.96.0.10:80 => 10.1.0.7:8080 -> 10.0.0.1:5000 (dnat)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.src_nat, self.dst_nat) {
            (true, true) => "snat+dnat",
            (true, false) => "snat",
            (false, true) => "dnat",
            (false, false) => "untranslated",
        };
        write!(f, "{} => {} ({what})", self.original, self.reply)
    }
}

/// IANA's protocol number of TCP.
const IPPROTO_TCP: u8 = 6;

impl FlowTuple {
    /// The flow's Community ID (v1, seed 0, TCP), as the corelight
    /// community-id spec defines it: the same string from either end, and
    /// the one Zeek, Suricata and Elastic give the same connection.
    pub fn community_id(self) -> String {
        community_id_v1(0, IPPROTO_TCP, self.local, self.remote)
    }
}

/// Community ID v1 of a flow between `a` and `b` of protocol `proto`
/// (whose ports are those of the addresses): SHA-1 over the seed, the
/// lower endpoint's address then the other's, the protocol, a zero pad and
/// the two ports in the same order, all in network byte order; base64, with
/// the version in front. Both directions give the same ID. Addresses of
/// mixed families, which no socket has, are put in IPv6 form.
pub fn community_id_v1(seed: u16, proto: u8, a: SocketAddr, b: SocketAddr) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let octets = |ip: IpAddr| -> Vec<u8> {
        match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    };
    let (mut ia, mut ib) = (octets(a.ip()), octets(b.ip()));
    if ia.len() != ib.len() {
        let v6 = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        (ia, ib) = (v6(a.ip()), v6(b.ip()));
    }
    let (pa, pb) = (a.port(), b.port());
    let ((first, first_port), (second, second_port)) = if (&ia, pa) <= (&ib, pb) {
        ((ia, pa), (ib, pb))
    } else {
        ((ib, pb), (ia, pa))
    };
    let mut h = Sha1::new();
    h.update(seed.to_be_bytes());
    h.update(&first);
    h.update(&second);
    h.update([proto, 0]);
    h.update(first_port.to_be_bytes());
    h.update(second_port.to_be_bytes());
    let digest = h.finalize();
    format!(
        "1:{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_share_one_key() {
        let a = FlowTuple::new(
            "10.0.0.1:40000".parse().expect("addr"),
            "10.0.0.2:80".parse().expect("addr"),
        );
        assert_eq!(a.key(), a.reversed().key());
        assert_eq!(a.reversed().reversed(), a);
        assert_ne!(a, a.reversed());
    }

    /// The spec's published vectors (seed 0 and 1; ICMPv6 echo as its
    /// pair of types for the IPv6 path), from either direction.
    #[test]
    fn community_ids_match_the_spec_vectors() {
        let at = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        let (a, b) = (at("1.2.3.4:1122"), at("5.6.7.8:3344"));
        assert_eq!(
            community_id_v1(0, 6, a, b),
            "1:wCb3OG7yAFWelaUydu0D+125CLM="
        );
        assert_eq!(
            community_id_v1(0, 6, b, a),
            "1:wCb3OG7yAFWelaUydu0D+125CLM="
        );
        assert_eq!(
            community_id_v1(1, 6, a, b),
            "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk="
        );
        assert_eq!(
            community_id_v1(0, 17, a, b),
            "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="
        );
        assert_eq!(
            community_id_v1(1, 17, b, a),
            "1:OShq+iKDAMVouh/4bMxB9Sz4amw="
        );
        let (c, d) = (
            at("[fe80:1:203:405:607:809:a0b:c0d]:128"),
            at("[fe80:1011:1213:1415:1617:1819:1a1b:1c1d]:129"),
        );
        assert_eq!(
            community_id_v1(0, 58, c, d),
            "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="
        );
        assert_eq!(
            community_id_v1(0, 58, d, c),
            "1:0bf7hyMJUwt3fMED7z8LIfRpBeo="
        );
        // A flow's ID is its TCP one, the same from both ends.
        let f = FlowTuple::new(a, b);
        assert_eq!(f.community_id(), "1:wCb3OG7yAFWelaUydu0D+125CLM=");
        assert_eq!(f.reversed().community_id(), f.community_id());
    }
}
