//! ss-like selection of connections: by state, port and address.

use std::net::IpAddr;
use std::str::FromStr;

use tcpstall_common::{SocketSample, TcpState};

/// An address or a prefix (`10.1.0.0/16`, `fd00::/8`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Prefix { addr, len })
    }
}

impl Prefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn bits(ip: IpAddr) -> (u128, u32) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        }
        let (want, width) = bits(self.addr);
        let (have, have_width) = bits(ip);
        if width != have_width {
            return false;
        }
        let shift = width - u32::from(self.len);
        shift >= width || want >> shift == have >> shift
    }
}

/// Which connections to show. Empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub states: Vec<TcpState>,
    /// Either end's port.
    pub ports: Vec<u16>,
    pub sports: Vec<u16>,
    pub dports: Vec<u16>,
    /// Either end's address.
    pub addrs: Vec<Prefix>,
    pub srcs: Vec<Prefix>,
    pub dsts: Vec<Prefix>,
    /// Only connections with bytes in the send queue.
    pub queued: bool,
}

impl Filter {
    pub fn matches(&self, s: &SocketSample) -> bool {
        let any = |list: &[u16], p: u16| list.is_empty() || list.contains(&p);
        let within =
            |list: &[Prefix], ip: IpAddr| list.is_empty() || list.iter().any(|p| p.contains(ip));
        (self.states.is_empty() || self.states.contains(&s.state))
            && (self.ports.is_empty()
                || self.ports.contains(&s.local.port())
                || self.ports.contains(&s.remote.port()))
            && any(&self.sports, s.local.port())
            && any(&self.dports, s.remote.port())
            && (self.addrs.is_empty()
                || self
                    .addrs
                    .iter()
                    .any(|p| p.contains(s.local.ip()) || p.contains(s.remote.ip())))
            && within(&self.srcs, s.local.ip())
            && within(&self.dsts, s.remote.ip())
            && (!self.queued || s.wqueue > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p: Prefix = "10.1.0.0/16".parse().expect("prefix");
        assert!(p.contains("10.1.200.3".parse().expect("ip")));
        assert!(!p.contains("10.2.0.1".parse().expect("ip")));
        assert!(!p.contains("::1".parse().expect("ip")));
        let all: Prefix = "0.0.0.0/0".parse().expect("prefix");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        let host: Prefix = "[::1]".parse().expect("prefix");
        assert!(host.contains("::1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nope".parse::<Prefix>().is_err());
    }
}
