//! How a snapshot reads: a table a person takes in at a glance, one JSON
//! object per connection for scripts, and both ends of a connection side by
//! side where the poll saw both.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;
use tcpstall_client::table::{human_bytes, human_micros, HumanBytes, Table};
use tcpstall_common::{
    CongName, FactSource, KernelTcp, Opened, Positions, SkMemInfo, SocketSample, TcpInfo, TcpState,
    TimerKind,
};

use crate::probe::json::{BpfJson, OwnerJson};
use crate::probe::owner::{self, OwnerIndex, OwnerLookup};

/// One connection as `--json` prints it. Field names are a contract with
/// users' scripts (docs/cli-json.md): add beside them, never rename.
#[derive(Debug, Serialize)]
pub struct ConnectionJson<'a> {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub cookie: u64,
    pub netns: &'a str,
    pub netns_inode: u64,
    pub inode: u32,
    pub uid: u32,
    pub opened: Option<Opened>,
    #[serde(flatten)]
    pub positions: Positions,
    pub timer: Option<TimerKind>,
    pub timer_expires_ms: u32,
    pub timer_retransmits: u8,
    pub shutdown: Option<u8>,
    pub cong: Option<CongName>,
    pub skmem: Option<SkMemInfo>,
    pub tcp_info: Option<&'a TcpInfo>,
    /// TCP_CORK where a probe could read it; `null` = unknown.
    pub cork: Option<bool>,
    /// TCP_NODELAY where a probe could read it; `null` = unknown.
    pub nodelay: Option<bool>,
    /// The probe `cork` and `nodelay` came from (`bpf`, `getsockopt`).
    pub cork_source: Option<FactSource>,
    /// The BPF probe's facts, when it ran (issue 6).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf: Option<BpfJson>,
    /// The owning process, when asked for (`snapshot --owners`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<OwnerJson>,
}

impl<'a> ConnectionJson<'a> {
    pub fn new(s: &'a SocketSample, netns: &'a str) -> Self {
        ConnectionJson {
            local: s.local,
            remote: s.remote,
            state: s.state,
            cookie: s.cookie,
            netns,
            netns_inode: s.netns,
            inode: s.inode,
            uid: s.uid,
            opened: s.opened,
            positions: s.positions(),
            timer: s.timer,
            timer_expires_ms: s.timer_expires_ms,
            timer_retransmits: s.timer_retransmits,
            shutdown: s.shutdown,
            cong: s.cong,
            skmem: s.skmem,
            tcp_info: s.info.as_ref(),
            cork: None,
            nodelay: None,
            cork_source: None,
            bpf: None,
            owner: None,
        }
    }

    /// Adds the owning process; where no probe gave the cork and the
    /// socket has bytes queued (a suspect), reads cork and nodelay through
    /// a duplicate of the owner's descriptor. Returns why that read
    /// failed, if it was tried and did.
    pub fn with_owner(
        &mut self,
        index: &mut OwnerIndex,
        wqueue: u32,
    ) -> Option<owner::GetsockoptError> {
        let found = index.lookup(u64::from(self.inode));
        let mut failed = None;
        if let OwnerLookup::Found(o) = &found {
            if self.cork.is_none() && wqueue > 0 {
                match owner::cork_by_getsockopt(o, u64::from(self.inode)) {
                    Ok((cork, nodelay)) => {
                        self.cork = Some(cork);
                        self.nodelay = Some(nodelay);
                        self.cork_source = Some(FactSource::Getsockopt);
                    }
                    Err(e) => failed = Some(e),
                }
            }
        }
        self.owner = Some(found.into());
        failed
    }

    /// Adds what the BPF probe read of this socket.
    pub fn with_bpf(mut self, k: Option<&KernelTcp>) -> Self {
        if let Some(k) = k {
            self.cork = Some(k.cork());
            self.nodelay = Some(k.nodelay());
            self.cork_source = Some(FactSource::Bpf);
            self.bpf = Some(BpfJson::new(k, self.opened));
        }
        self
    }
}

/// Both ends of one connection for `--pair --json`.
#[derive(Debug, Serialize)]
pub struct PairJson<'a> {
    pub a: ConnectionJson<'a>,
    pub b: Option<ConnectionJson<'a>>,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn opt_bytes(v: Option<u32>) -> String {
    v.map_or_else(|| "-".to_string(), |v| human_bytes(u64::from(v)))
}

/// A value, or `-` when unknown, written without allocating.
struct Or<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Or<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Bytes in human units, or `-`.
fn or_bytes(v: Option<u32>) -> Or<HumanBytes> {
    Or(bytes(v))
}

/// Bytes in human units, when known.
fn bytes(v: Option<u32>) -> Option<HumanBytes> {
    v.map(|v| HumanBytes(u64::from(v)))
}

/// Two values as `a/b` (window scales, send and receive).
struct Slash<T>(T, T);

impl<T: std::fmt::Display> std::fmt::Display for Slash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// What a socket's detail line says of one fact: `name:value`, nothing
/// when the kernel did not give it.
struct Fact<'a, T>(&'a str, Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Fact<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.1 {
            Some(v) => write!(f, " {}:{v}", self.0),
            None => Ok(()),
        }
    }
}

/// The table of `snapshot`, to be written out: a row a connection with
/// its queues, and under it, as `ss -i` does, its sequence positions,
/// windows and timers as `name:value` (what the kernel does not give left
/// out), so that it fits 100 columns. `wide`: every fact in a column of
/// one long row, as before (for scripts that read columns).
pub fn connections_table(
    samples: &[&SocketSample],
    label: &dyn Fn(u64) -> String,
    show_ns: bool,
    wide: bool,
) -> Table {
    let mut cols = vec![];
    if show_ns {
        cols.push(("NETNS", false));
    }
    cols.extend_from_slice(&[
        ("STATE", false),
        ("LOCAL", false),
        ("REMOTE", false),
        ("SENDQ", true),
        ("RECVQ", true),
        ("UNSENT", true),
        ("INFLIGHT", true),
    ]);
    if wide {
        cols.extend_from_slice(&[
            ("SND_UNA", true),
            ("SND_NXT", true),
            ("WRITE_SEQ", true),
            ("RCV_NXT", true),
            ("COPIED", true),
            ("SND_WND", true),
            ("RCV_WND", true),
            ("WS", true),
            ("RTT", true),
            ("RETR", true),
            ("PROBES", true),
        ]);
    }
    let mut t = Table::new(&cols);
    for s in samples {
        let p = s.positions();
        let info = s.info.as_ref();
        if show_ns {
            t.cell(label(s.netns));
        }
        t.cell(s.state.ss_name());
        t.cell(s.local);
        t.cell(s.remote);
        t.cell(HumanBytes(u64::from(p.sendq)));
        t.cell(HumanBytes(u64::from(p.recvq)));
        t.cell(or_bytes(p.notsent));
        t.cell(or_bytes(p.inflight));
        let wscale = p.snd_wscale.zip(p.rcv_wscale).map(|(s, r)| Slash(s, r));
        let rtt = info.and_then(|i| i.rtt()).map(human_micros);
        let retr = info.and_then(|i| i.total_retrans());
        let probes = info.and_then(|i| i.probes());
        if wide {
            t.cell(Or(p.snd_una));
            t.cell(Or(p.snd_nxt));
            t.cell(Or(p.write_seq));
            t.cell(Or(p.rcv_nxt));
            t.cell(Or(p.copied));
            t.cell(or_bytes(p.snd_wnd));
            t.cell(or_bytes(p.rcv_wnd));
            t.cell(Or(wscale));
            t.cell(Or(rtt));
            t.cell(Or(retr));
            t.cell(Or(probes));
        } else {
            // Positions on one line, windows and timers on the next: at
            // most 99 columns with every position ten digits.
            t.note(format_args!(
                "{}{}{}{}{}",
                Fact("snd_una", p.snd_una),
                Fact("snd_nxt", p.snd_nxt),
                Fact("write_seq", p.write_seq),
                Fact("rcv_nxt", p.rcv_nxt),
                Fact("copied", p.copied),
            ));
            t.note(format_args!(
                "{}{}{}{}{}{}",
                Fact("snd_wnd", bytes(p.snd_wnd)),
                Fact("rcv_wnd", bytes(p.rcv_wnd)),
                Fact("ws", wscale),
                Fact("rtt", rtt),
                Fact("retr", retr),
                Fact("probes", probes),
            ));
        }
    }
    t
}

/// Finds, for each sample, the other end of its connection among the
/// samples: the socket whose local and remote addresses are this one's
/// reversed. Loopback ends must share a namespace (every namespace has its
/// own 127.0.0.1); other addresses may be in any namespace, the same one
/// preferred. Returns (a, b) index pairs, each connection once, the stuck
/// or connecting side as `a`, plus the unpaired samples as (a, None).
pub fn pair_up(samples: &[&SocketSample]) -> Vec<(usize, Option<usize>)> {
    let mut by_tuple: HashMap<(SocketAddr, SocketAddr), Vec<usize>> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        by_tuple.entry((s.local, s.remote)).or_default().push(i);
    }
    let mut taken = vec![false; samples.len()];
    let mut out = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        if taken[i] {
            continue;
        }
        taken[i] = true;
        let loopback = s.is_loopback();
        let peer = by_tuple.get(&(s.remote, s.local)).and_then(|cands| {
            let free = |j: &&usize| !taken[**j] && samples[**j].cookie != s.cookie;
            cands
                .iter()
                .filter(free)
                .find(|j| samples[**j].netns == s.netns)
                .or_else(|| {
                    if loopback {
                        None
                    } else {
                        cands.iter().find(free)
                    }
                })
                .copied()
        });
        match peer {
            Some(j) => {
                taken[j] = true;
                out.push(order(samples, i, j));
            }
            None => out.push((i, None)),
        }
    }
    out
}

/// The stuck sender first; otherwise the side that connected.
fn order(samples: &[&SocketSample], i: usize, j: usize) -> (usize, Option<usize>) {
    let (a, b) = (samples[i], samples[j]);
    let a_first = match (a.wqueue > 0, b.wqueue > 0) {
        (true, false) => true,
        (false, true) => false,
        _ => a.opened != Some(Opened::Passive),
    };
    if a_first {
        (i, Some(j))
    } else {
        (j, Some(i))
    }
}

/// The `--pair` table: each connection once, both ends on one row, the
/// numbers that must agree next to each other.
pub fn pairs_table(
    samples: &[&SocketSample],
    pairs: &[(usize, Option<usize>)],
    label: &dyn Fn(u64) -> String,
    show_ns: bool,
    wide: bool,
) -> Table {
    if !wide {
        return pairs_lines(samples, pairs, label, show_ns);
    }
    let mut cols = vec![];
    if show_ns {
        cols.push(("NETNS A/B", false));
    }
    cols.extend_from_slice(&[
        ("A", false),
        ("B", false),
        ("STATE A/B", false),
        ("A.SENDQ", true),
        ("A.UNSENT", true),
        ("A.SND_UNA", true),
        ("A.SND_NXT", true),
        ("B.RCV_NXT", true),
        ("B.RECVQ", true),
        ("A.SND_WND", true),
        ("B.RCV_WND", true),
        ("B.SENDQ", true),
        ("B.SND_UNA", true),
        ("B.SND_NXT", true),
        ("A.RCV_NXT", true),
        ("A.RECVQ", true),
    ]);
    let mut t = Table::new(&cols);
    let dash = || "-".to_string();
    for (a, b) in pairs {
        let sa = samples[*a];
        let sb = b.map(|b| samples[b]);
        let pa = sa.positions();
        let pb = sb.map(|s| s.positions());
        let mut row = vec![];
        if show_ns {
            row.push(match sb {
                Some(sb) => format!("{}/{}", label(sa.netns), label(sb.netns)),
                None => format!("{}/-", label(sa.netns)),
            });
        }
        let b_num = |f: &dyn Fn(&Positions) -> Option<u64>| {
            pb.as_ref().and_then(f).map_or_else(dash, |v| v.to_string())
        };
        let b_bytes = |f: &dyn Fn(&Positions) -> Option<u32>| {
            pb.as_ref()
                .and_then(f)
                .map_or_else(dash, |v| human_bytes(u64::from(v)))
        };
        row.extend([
            sa.local.to_string(),
            match sb {
                Some(sb) => sb.local.to_string(),
                None => format!("{} (not visible)", sa.remote),
            },
            format!(
                "{}/{}",
                sa.state.ss_name(),
                sb.map_or("-", |s| s.state.ss_name())
            ),
            human_bytes(u64::from(pa.sendq)),
            opt_bytes(pa.notsent),
            opt(pa.snd_una),
            opt(pa.snd_nxt),
            b_num(&|p| p.rcv_nxt),
            b_bytes(&|p| Some(p.recvq)),
            opt_bytes(pa.snd_wnd),
            b_bytes(&|p| p.rcv_wnd),
            b_bytes(&|p| Some(p.sendq)),
            b_num(&|p| p.snd_una),
            b_num(&|p| p.snd_nxt),
            opt(pa.rcv_nxt),
            human_bytes(u64::from(pa.recvq)),
        ]);
        t.push(row);
    }
    t
}

/// The `--pair` table within 100 columns: a row a connection with both
/// ends' queues, and under it a line for each direction with the numbers
/// that must agree (what A sent against what B received, and back).
fn pairs_lines(
    samples: &[&SocketSample],
    pairs: &[(usize, Option<usize>)],
    label: &dyn Fn(u64) -> String,
    show_ns: bool,
) -> Table {
    let mut cols = vec![];
    if show_ns {
        cols.push(("NETNS A/B", false));
    }
    cols.extend_from_slice(&[
        ("A", false),
        ("B", false),
        ("STATE A/B", false),
        ("A.SENDQ", true),
        ("B.RECVQ", true),
        ("B.SENDQ", true),
        ("A.RECVQ", true),
    ]);
    let mut t = Table::new(&cols);
    for (a, b) in pairs {
        let sa = samples[*a];
        let sb = b.map(|b| samples[b]);
        let pa = sa.positions();
        let pb = sb.map(|s| s.positions());
        if show_ns {
            t.cell(Slash(
                label(sa.netns),
                sb.map_or_else(|| "-".to_string(), |sb| label(sb.netns)),
            ));
        }
        t.cell(sa.local);
        t.cell(sa.remote);
        t.cell(Slash(
            sa.state.ss_name(),
            sb.map_or("-", |s| s.state.ss_name()),
        ));
        t.cell(HumanBytes(u64::from(pa.sendq)));
        t.cell(or_bytes(pb.as_ref().map(|p| p.recvq)));
        t.cell(or_bytes(pb.as_ref().map(|p| p.sendq)));
        t.cell(HumanBytes(u64::from(pa.recvq)));
        t.note(format_args!(
            "A→B A{}{}{}{} B{}{}",
            Fact("snd_una", pa.snd_una),
            Fact("snd_nxt", pa.snd_nxt),
            Fact("unsent", bytes(pa.notsent)),
            Fact("snd_wnd", bytes(pa.snd_wnd)),
            Fact("rcv_nxt", pb.as_ref().and_then(|p| p.rcv_nxt)),
            Fact("rcv_wnd", bytes(pb.as_ref().and_then(|p| p.rcv_wnd))),
        ));
        match &pb {
            Some(pb) => t.note(format_args!(
                "B→A B{}{}{}{} A{}{}",
                Fact("snd_una", pb.snd_una),
                Fact("snd_nxt", pb.snd_nxt),
                Fact("unsent", bytes(pb.notsent)),
                Fact("snd_wnd", bytes(pb.snd_wnd)),
                Fact("rcv_nxt", pa.rcv_nxt),
                Fact("rcv_wnd", bytes(pa.rcv_wnd)),
            )),
            None => t.note("B not visible here (another host, or a namespace not read)"),
        }
    }
    t
}
