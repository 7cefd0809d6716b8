//! A 4-tuple as the matcher's maps hold it: 37 bytes, hashed and
//! compared as one slice.
//!
//! A [`FlowTuple`] is two `SocketAddr`s, 64 bytes, hashed field by field
//! through their enum. The collector keys several maps by (host, 4-tuple),
//! one entry per tracked connection, so the key's size is paid per
//! connection and its hash per sample. Nothing is lost: both families,
//! addresses and ports come back as they went in (the wire carries no
//! IPv6 flow label or scope, so those are always 0 here).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tcpstall_common::FlowTuple;

const LOCAL_V4: u8 = 1;
const REMOTE_V4: u8 = 2;

/// Local address (16), remote address (16), local port, remote port (2
/// each, big-endian), then which addresses are IPv4 (1). An IPv4 address
/// sits in the last four of its sixteen bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple([u8; 37]);

fn put(ip: IpAddr, out: &mut [u8]) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            out[12..16].copy_from_slice(&v4.octets());
            true
        }
        IpAddr::V6(v6) => {
            out.copy_from_slice(&v6.octets());
            false
        }
    }
}

fn get(b: &[u8], v4: bool) -> IpAddr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    if v4 {
        IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

impl Tuple {
    pub fn new(f: FlowTuple) -> Tuple {
        let mut b = [0u8; 37];
        let mut flags = 0;
        if put(f.local.ip(), &mut b[0..16]) {
            flags |= LOCAL_V4;
        }
        if put(f.remote.ip(), &mut b[16..32]) {
            flags |= REMOTE_V4;
        }
        b[32..34].copy_from_slice(&f.local.port().to_be_bytes());
        b[34..36].copy_from_slice(&f.remote.port().to_be_bytes());
        b[36] = flags;
        Tuple(b)
    }

    /// The 4-tuple back.
    pub fn flow(&self) -> FlowTuple {
        let b = &self.0;
        let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        FlowTuple::new(
            SocketAddr::new(get(&b[0..16], b[36] & LOCAL_V4 != 0), port(32)),
            SocketAddr::new(get(&b[16..32], b[36] & REMOTE_V4 != 0), port(34)),
        )
    }

    /// The same connection as the other end sees it.
    pub fn reversed(&self) -> Tuple {
        let b = &self.0;
        let mut r = [0u8; 37];
        r[0..16].copy_from_slice(&b[16..32]);
        r[16..32].copy_from_slice(&b[0..16]);
        r[32..34].copy_from_slice(&b[34..36]);
        r[34..36].copy_from_slice(&b[32..34]);
        r[36] = ((b[36] & LOCAL_V4) << 1) | ((b[36] & REMOTE_V4) >> 1);
        Tuple(r)
    }
}

impl From<FlowTuple> for Tuple {
    fn from(f: FlowTuple) -> Tuple {
        Tuple::new(f)
    }
}

impl fmt::Debug for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tuple({})", self.flow())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(local: &str, remote: &str) -> FlowTuple {
        FlowTuple::new(
            local.parse().expect("local"),
            remote.parse().expect("remote"),
        )
    }

    #[test]
    fn every_family_mix_comes_back_as_it_went_in() {
        for f in [
            flow("198.18.0.2:40000", "198.18.0.1:7000"),
            flow("[2001:db8::1]:443", "[2001:db8::2]:55000"),
            flow("10.0.0.1:1", "[2001:db8::2]:65535"),
            flow("[fe80::1]:0", "127.0.0.1:80"),
        ] {
            let t = Tuple::new(f);
            assert_eq!(t.flow(), f);
            assert_eq!(t.reversed().flow(), f.reversed());
            assert_eq!(t.reversed(), Tuple::new(f.reversed()));
            assert_eq!(t.reversed().reversed(), t);
        }
    }

    #[test]
    fn an_ipv4_address_and_its_mapped_ipv6_form_are_different_keys() {
        // The agents normalise mapped addresses; a key must not merge two
        // sockets that the wire tells apart.
        let v4 = flow("10.0.0.1:1", "10.0.0.2:2");
        let mapped = flow("[::ffff:10.0.0.1]:1", "10.0.0.2:2");
        let zero_prefixed = flow("[::10.0.0.1]:1", "10.0.0.2:2");
        assert_ne!(Tuple::new(v4), Tuple::new(mapped));
        assert_ne!(Tuple::new(v4), Tuple::new(zero_prefixed));
        assert_eq!(Tuple::new(zero_prefixed).flow(), zero_prefixed);
    }

    #[test]
    fn ports_and_directions_are_not_confused() {
        let a = flow("10.0.0.1:1000", "10.0.0.2:2000");
        let b = flow("10.0.0.1:2000", "10.0.0.2:1000");
        assert_ne!(Tuple::new(a), Tuple::new(b));
        assert_ne!(Tuple::new(a), Tuple::new(a.reversed()));
    }
}
