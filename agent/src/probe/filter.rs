//! The poll's first phase in the kernel (issue 27): the `tcpstall_filter`
//! iter/tcp program of agent/bpf/tcp_iter.bpf.c walks a namespace's TCP
//! sockets and writes only those `run` may want — a send queue, a cookie it
//! follows, a 4-tuple it watches, a local endpoint it counts holders of —
//! with the listeners and, at the end, how many sockets it saw. Each
//! socket comes as sock_diag's `inet_diag_msg` header would give it, so the
//! poller reads it with the base dump's parser and asks for the wanted
//! ones in full by the same exact request: the samples out are the same;
//! only the walk that copied every socket out is gone.
//!
//! What the agent wants is in three hash maps the program reads; each poll
//! brings them up to date with what changed since the last one.
//!
//! Record layout (native byte order, 80 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TSB2` (0x32425354) |
//! | 4 | 1 | kind: 1 a socket, 2 the walk's end |
//! | 8 | 72 | a socket: `struct inet_diag_msg` (family, state, timer, retrans, sockid, expires, rqueue, wqueue, uid, inode); the end: sockets seen (u64) |

use std::collections::HashSet;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use tcpstall_common::FlowTuple;

use super::bpf::{describe, load_program, open_iter, ProbeError};
use crate::netns::Netns;

const PROGRAM: &str = "tcpstall_filter";
pub const MAGIC: u32 = 0x3242_5354;
pub const RECORD_LEN: usize = 80;
/// The `inet_diag_msg` in a socket's record.
pub const MSG_AT: usize = 8;
const KIND_SOCKET: u8 = 1;
const KIND_END: u8 = 2;
/// Entries each map holds at most (`FILTER_ENTRIES` in the program).
pub const MAX_ENTRIES: usize = 65_536;

/// An endpoint as the program keys it: 16 address bytes (IPv4 as
/// IPv4-mapped IPv6), the port in host order, two bytes of padding.
type EndpointKey = [u8; 20];
type TupleKey = [u8; 40];

fn endpoint_key(a: SocketAddr) -> EndpointKey {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&ip);
    k[16..18].copy_from_slice(&a.port().to_ne_bytes());
    k
}

fn tuple_key(f: FlowTuple) -> TupleKey {
    let mut k = [0u8; 40];
    k[..20].copy_from_slice(&endpoint_key(f.local));
    k[20..].copy_from_slice(&endpoint_key(f.remote));
    k
}

/// What `run` may want beyond a send queue, for the program to let through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wants {
    /// Cookies of sockets it follows (a queue held at the last poll).
    pub cookies: HashSet<u64>,
    /// Flows it watches, as their socket's local and remote.
    pub tuples: HashSet<FlowTuple>,
    /// Local endpoints whose holders it counts.
    pub endpoints: HashSet<SocketAddr>,
}

/// What the filter has counted since it was loaded (for /metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FilterStats {
    /// Walks of a namespace in the kernel.
    pub passes: u64,
    /// Sockets the program wrote out (wanted, or listeners).
    pub written: u64,
    /// Passes whose records did not read back whole (a wrong magic or
    /// kind, a short tail, no end): the poll took sock_diag's base dump.
    pub malformed: u64,
    /// Wants beyond a map's size, not given to the program: the poll
    /// took sock_diag's base dump while there were any.
    pub overflowed: u64,
}

/// One walk's outcome.
#[derive(Debug)]
pub struct Pass {
    /// Sockets the kernel visited (listeners and every connection).
    pub seen: u64,
}

/// The loaded filter program and the wants its maps hold.
#[derive(Debug)]
pub struct KernelFilter {
    ebpf: Ebpf,
    buf: Vec<u8>,
    /// What the maps hold now.
    held: Wants,
    stats: FilterStats,
}

impl KernelFilter {
    /// Loads the program, once (its maps empty).
    pub fn load() -> Result<KernelFilter, ProbeError> {
        Ok(KernelFilter {
            ebpf: load_program(PROGRAM)?,
            buf: Vec::new(),
            held: Wants::default(),
            stats: FilterStats::default(),
        })
    }

    pub fn stats(&self) -> FilterStats {
        self.stats
    }

    /// Brings the maps to `wants`: what is new inserted, what went
    /// removed. `Err` when a set is larger than its map or the kernel
    /// refuses an update; the maps may then hold part of it, and the
    /// caller must not trust a pass until a `set` succeeds.
    pub fn set(&mut self, wants: &Wants) -> Result<(), ProbeError> {
        if wants.cookies.len() > MAX_ENTRIES
            || wants.tuples.len() > MAX_ENTRIES
            || wants.endpoints.len() > MAX_ENTRIES
        {
            self.stats.overflowed += 1;
            return Err(ProbeError::Iter(format!(
                "more than {MAX_ENTRIES} sockets, flows or endpoints wanted"
            )));
        }
        sync(
            hash_map(&mut self.ebpf, "TRACKED")?,
            &mut self.held.cookies,
            &wants.cookies,
            |c| *c,
        )?;
        sync(
            hash_map(&mut self.ebpf, "WATCHED")?,
            &mut self.held.tuples,
            &wants.tuples,
            |f| tuple_key(*f),
        )?;
        sync(
            hash_map(&mut self.ebpf, "ENDPOINTS")?,
            &mut self.held.endpoints,
            &wants.endpoints,
            |a| endpoint_key(*a),
        )?;
        let mut sizes: Array<&mut MapData, [u32; 3]> = self
            .ebpf
            .map_mut("SIZES")
            .ok_or_else(|| ProbeError::Iter("no map SIZES".into()))?
            .try_into()
            .map_err(|e| map_error(&e))?;
        let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
        let held = [
            n(self.held.cookies.len()),
            n(self.held.tuples.len()),
            n(self.held.endpoints.len()),
        ];
        sizes.set(0, held, 0).map_err(|e| map_error(&e))
    }

    /// Walks `ns`'s TCP sockets in the kernel, handing `on` each socket
    /// written (its `inet_diag_msg` bytes). `Err` when the iterator cannot
    /// run or what it wrote does not read back whole: the caller then
    /// dumps with sock_diag (`on` may have seen part of the pass).
    pub fn pass(&mut self, ns: &Netns, mut on: impl FnMut(&[u8])) -> Result<Pass, ProbeError> {
        let mut file = open_iter(&mut self.ebpf, PROGRAM, ns)?;
        self.buf.clear();
        file.read_to_end(&mut self.buf).map_err(ProbeError::Read)?;
        self.stats.passes += 1;
        match parse_pass(&self.buf, &mut on) {
            Ok((seen, written)) => {
                self.stats.written += written;
                Ok(Pass { seen })
            }
            Err(why) => {
                self.stats.malformed += 1;
                Err(ProbeError::Iter(why))
            }
        }
    }
}

fn map_error(e: &(dyn std::error::Error + 'static)) -> ProbeError {
    ProbeError::Iter(describe(e).0)
}

/// The program's hash map `name`, keyed by `K`.
fn hash_map<'a, K: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<BpfHashMap<&'a mut MapData, K, u8>, ProbeError> {
    ebpf.map_mut(name)
        .ok_or_else(|| ProbeError::Iter(format!("no map {name}")))?
        .try_into()
        .map_err(|e| map_error(&e))
}

/// Inserts into `map` what `want` has and `held` lacks, removes what went.
fn sync<T: Eq + std::hash::Hash + Clone, K: aya::Pod>(
    mut map: BpfHashMap<&mut MapData, K, u8>,
    held: &mut HashSet<T>,
    want: &HashSet<T>,
    key: impl Fn(&T) -> K,
) -> Result<(), ProbeError> {
    let err = |e: aya::maps::MapError| ProbeError::Iter(describe(&e).0);
    let gone: Vec<T> = held.difference(want).cloned().collect();
    for v in gone {
        match map.remove(&key(&v)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(err(e)),
        }
        held.remove(&v);
    }
    for v in want {
        if !held.contains(v) {
            map.insert(key(v), 1, 0).map_err(err)?;
            held.insert(v.clone());
        }
    }
    Ok(())
}

/// Reads one pass's records: each socket's message to `on`; returns the
/// sockets seen and written. A record that is not one, or a pass without
/// its end, is an error (what was read cannot be trusted to be all).
pub fn parse_pass(buf: &[u8], on: &mut impl FnMut(&[u8])) -> Result<(u64, u64), String> {
    let mut written = 0;
    for rec in buf.chunks(RECORD_LEN) {
        let (magic, kind) = match rec {
            [m0, m1, m2, m3, kind, ..] if rec.len() == RECORD_LEN => {
                (u32::from_ne_bytes([*m0, *m1, *m2, *m3]), *kind)
            }
            _ => return Err(format!("a short record of {} bytes", rec.len())),
        };
        if magic != MAGIC {
            return Err(format!("a record with magic {magic:#x}"));
        }
        match kind {
            KIND_SOCKET => {
                written += 1;
                on(&rec[MSG_AT..]);
            }
            KIND_END => {
                let mut seen = [0u8; 8];
                seen.copy_from_slice(&rec[MSG_AT..MSG_AT + 8]);
                if rec.as_ptr_range().end != buf.as_ptr_range().end {
                    return Err("records after the end".into());
                }
                return Ok((u64::from_ne_bytes(seen), written));
            }
            other => return Err(format!("a record of kind {other}")),
        }
    }
    Err("no end record".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_LEN];
        r[..4].copy_from_slice(&MAGIC.to_ne_bytes());
        r[4] = kind;
        r[MSG_AT..MSG_AT + body.len()].copy_from_slice(body);
        r
    }

    #[test]
    fn a_pass_reads_its_sockets_and_its_end() {
        let mut buf = rec(KIND_SOCKET, &[2, 1]);
        buf.extend(rec(KIND_SOCKET, &[10, 8]));
        buf.extend(rec(KIND_END, &7u64.to_ne_bytes()));
        let mut seen = vec![];
        let got = parse_pass(&buf, &mut |m: &[u8]| seen.push((m[0], m[1], m.len())));
        assert_eq!(got, Ok((7, 2)));
        assert_eq!(seen, vec![(2, 1, 72), (10, 8, 72)]);
    }

    #[test]
    fn a_pass_that_does_not_read_back_whole_is_refused() {
        let sock = rec(KIND_SOCKET, &[2, 1]);
        let end = rec(KIND_END, &1u64.to_ne_bytes());
        let none = |_: &[u8]| {};
        // No end: the walk was cut short.
        assert!(parse_pass(&sock, &mut { none }).is_err());
        // A short tail.
        let mut short = sock.clone();
        short.extend(&end[..40]);
        assert!(parse_pass(&short, &mut { none }).is_err());
        // A wrong magic.
        let mut bad = end.clone();
        bad[0] ^= 0xff;
        assert!(parse_pass(&bad, &mut { none }).is_err());
        // An unknown kind.
        assert!(parse_pass(&rec(9, &[]), &mut { none }).is_err());
        // Records after the end.
        let mut after = end.clone();
        after.extend(&sock);
        assert!(parse_pass(&after, &mut { none }).is_err());
    }

    #[test]
    fn keys_are_what_the_program_builds() {
        let v4: SocketAddr = "10.1.2.3:443".parse().expect("an address");
        let k = endpoint_key(v4);
        assert_eq!(&k[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k[12..16], &[10, 1, 2, 3]);
        assert_eq!(u16::from_ne_bytes([k[16], k[17]]), 443);
        // An IPv4-mapped IPv6 socket keys as its IPv4 address does.
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:443".parse().expect("an address");
        assert_eq!(endpoint_key(mapped), k);
        let f = FlowTuple::new(v4, "10.9.9.9:5000".parse().expect("an address"));
        let t = tuple_key(f);
        assert_eq!(&t[..20], &k);
        assert_eq!(&t[20..], &endpoint_key("10.9.9.9:5000".parse().expect("an address")));
    }
}
