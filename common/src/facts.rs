//! Both ends of a connection side by side, one row per fact: each end's
//! value, what the two mean together, and where the values came from.
//! `tcpstall diff` prints these rows as a table and the web page's episode
//! and flow pages as one; both read them from here so that they say the
//! same thing.

use crate::{AbsoluteSeq, Container, EndSample, FactSource, Positions, ProcessOwner, SackBlock};

/// One row: the fact, A's and B's values (`-` for an end never sampled,
/// `unknown` for a fact no probe read), what they mean together (empty
/// when nothing), and the source the values came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub name: &'static str,
    pub a: String,
    pub b: String,
    pub meaning: String,
    /// `tcp_info` (sock_diag's view of the socket), `probe` (the BPF or
    /// getsockopt probe: each value names which), `proc` (the socket's
    /// owner found in /proc) or `bpf`.
    pub source: &'static str,
}

/// Bytes in human units: 512, 1.5K, 64K, 2.0M, 3.1G (powers of 1024).
pub fn human_bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// [`human_bytes`] as a `Display`, written without allocating: a table of
/// 20,000 connections writes 100,000 of them. In whole numbers, rounded
/// half to even as `{:.1}` and `{:.0}` round the exact quotient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl std::fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
        let n = u128::from(self.0);
        let (mut u, mut div) = (0, 1u128);
        while u < UNITS.len() - 1 && n >= 1024 * div {
            div *= 1024;
            u += 1;
        }
        // `n * scale / div` rounded half to even.
        let rounded = |scale: u128| {
            let (q, r) = (n * scale / div, n * scale % div);
            if 2 * r > div || (2 * r == div && q % 2 == 1) {
                q + 1
            } else {
                q
            }
        };
        if u == 0 {
            write!(f, "{n}")
        } else if n < 10 * div {
            let tenths = rounded(10);
            write!(f, "{}.{}{}", tenths / 10, tenths % 10, UNITS[u])
        } else {
            write!(f, "{}{}", rounded(1), UNITS[u])
        }
    }
}

/// The facts of A (the stuck sender) and B (its peer); either may never
/// have been sampled.
pub fn facts(a: Option<&EndSample>, b: Option<&EndSample>) -> Vec<Fact> {
    let none = Positions::default();
    let pa = a.map_or(&none, |a| &a.pos);
    let pb = b.map_or(&none, |b| &b.pos);
    // A value of an end, `-` when it was never sampled.
    let of =
        |e: Option<&EndSample>, f: &dyn Fn(&EndSample) -> String| e.map_or_else(|| "-".into(), f);
    let bytes = |v: Option<u32>| opt(v.map(u64::from).map(human_bytes));
    let mut out: Vec<Fact> = Vec::new();
    let mut fact = |name, f: &dyn Fn(&EndSample) -> String, meaning: String, source| {
        out.push(Fact {
            name,
            a: of(a, f),
            b: of(b, f),
            meaning,
            source,
        });
    };
    const INFO: &str = "tcp_info";
    fact("state", &|e| e.state.ss_name().into(), String::new(), INFO);
    fact(
        "window advertised (rcv_wnd)",
        &|e| bytes(e.pos.rcv_wnd),
        match (pb.rcv_wnd, pa.snd_wnd) {
            (Some(0), _) => "B's window is closed: A may not send".into(),
            (Some(bw), Some(0)) if bw > 0 => format!(
                "B advertises {} but A still sees 0: the update was lost",
                human_bytes(u64::from(bw))
            ),
            _ => String::new(),
        },
        INFO,
    );
    fact(
        "window seen from peer (snd_wnd)",
        &|e| bytes(e.pos.snd_wnd),
        String::new(),
        INFO,
    );
    fact(
        "receive memory (skmem r/rb)",
        &|e| match (e.rmem_alloc, e.rcvbuf) {
            (None, None) => "unknown".into(),
            (r, rb) => format!("{}/{}", bytes(r), bytes(rb)),
        },
        match (pb.rcv_wnd, b.and_then(EndSample::receive_buffer_full)) {
            // Only where the kernel gives no receive window (before 6.2)
            // does the buffer tell it.
            (None, Some(true)) => "B's buffer is full: its window is closed".into(),
            (None, Some(false)) if pa.snd_wnd == Some(0) => {
                "B's buffer has room, yet A sees a zero window".into()
            }
            _ => String::new(),
        },
        INFO,
    );
    fact(
        "window scale (snd/rcv)",
        &|e| format!("{}/{}", opt(e.pos.snd_wscale), opt(e.pos.rcv_wscale)),
        match (pa.snd_wscale, pb.rcv_wscale) {
            (Some(x), Some(y)) if x != y => "A's and B's scale factors disagree".into(),
            _ => String::new(),
        },
        INFO,
    );
    fact(
        "highest ACK sent (rcv_nxt)",
        &|e| opt(e.pos.rcv_nxt),
        match (pa.snd_una, pb.rcv_nxt) {
            (Some(una), Some(rcv)) if rcv > una => format!(
                "B acknowledged {} bytes A never saw acknowledged: ACKs lost B→A",
                rcv - una
            ),
            (Some(una), Some(rcv)) if rcv == una => {
                "B has received exactly what A saw acknowledged".into()
            }
            (Some(_), Some(_)) => "B is behind A's snd_una: not the same connection?".into(),
            _ => String::new(),
        },
        INFO,
    );
    fact(
        "first unacknowledged (snd_una)",
        &|e| opt(e.pos.snd_una),
        String::new(),
        INFO,
    );
    fact(
        "next sequence to send (snd_nxt)",
        &|e| opt(e.pos.snd_nxt),
        match (pa.snd_nxt, pb.rcv_nxt) {
            (Some(nxt), Some(rcv)) if nxt > rcv => format!(
                "{} bytes sent by A not yet received in order by B",
                nxt - rcv
            ),
            _ => String::new(),
        },
        INFO,
    );
    fact(
        "end of writes (write_seq)",
        &|e| opt(e.pos.write_seq),
        String::new(),
        INFO,
    );
    fact(
        "unsent",
        &|e| bytes(e.pos.notsent),
        match pa.notsent {
            Some(n) if n > 0 && pa.inflight == Some(0) && pa.snd_wnd.unwrap_or(0) > 0 => {
                "A holds data with the window open and nothing in flight".into()
            }
            _ => String::new(),
        },
        INFO,
    );
    fact("in flight", &|e| bytes(e.pos.inflight), String::new(), INFO);
    fact(
        "send queue",
        &|e| human_bytes(u64::from(e.pos.sendq)),
        String::new(),
        INFO,
    );
    fact(
        "receive queue (unread)",
        &|e| human_bytes(u64::from(e.pos.recvq)),
        if pb.recvq > 0 {
            format!(
                "B's application has {} unread",
                human_bytes(u64::from(pb.recvq))
            )
        } else {
            String::new()
        },
        INFO,
    );
    fact(
        "SACK scoreboard (unacked/lost/retrans segs)",
        &|e| format!("{}/{}/{}", opt(e.unacked), opt(e.lost), opt(e.retrans)),
        match a.and_then(|a| a.lost) {
            Some(l) if l > 0 => format!("A counts {l} segments lost"),
            _ => String::new(),
        },
        INFO,
    );
    fact("retransmits", &|e| opt(e.retransmits), String::new(), INFO);
    fact("backoff", &|e| opt(e.backoff), String::new(), INFO);
    fact(
        "zero-window probes",
        &|e| opt(e.probes),
        String::new(),
        INFO,
    );
    fact(
        "cork",
        &|e| flag(e.cork, e.cork_source),
        "TCP_CORK needs the BPF or getsockopt probe".into(),
        "probe",
    );
    fact(
        "nodelay",
        &|e| flag(e.nodelay, e.nodelay_source),
        "TCP_NODELAY needs the BPF or getsockopt probe".into(),
        "probe",
    );
    fact(
        "owner pid",
        &|e| owner(e, |o| o.pid.to_string()),
        "the process holding the socket".into(),
        "proc",
    );
    // Whole: a table that must fit a width cuts it (`tcpstall diff`, not
    // with --wide), the web page wraps it.
    fact(
        "owner command",
        &|e| owner(e, |o| o.command.clone()),
        String::new(),
        "proc",
    );
    // A container by the name its runtime prints (`docker 4f6bd4a5e0c0`),
    // not its 80-character scope; else the unit, else the cgroup.
    let unit = |o: &ProcessOwner| {
        let container = o.cgroup.as_deref().and_then(Container::from_cgroup);
        container
            .map(|c| c.short())
            .or_else(|| o.unit.clone())
            .or_else(|| o.cgroup.clone())
            .unwrap_or_else(|| "-".into())
    };
    fact(
        "owner unit/cgroup",
        &|e| owner(e, unit),
        String::new(),
        "proc",
    );
    fact(
        "snd_una/snd_nxt/write_seq (absolute)",
        &|e| {
            absolute(e, |x| {
                format!("{}/{}/{}", x.snd_una, x.snd_nxt, x.write_seq)
            })
        },
        "as a packet capture shows them".into(),
        "bpf",
    );
    fact(
        "rcv_nxt (absolute)",
        &|e| absolute(e, |x| x.rcv_nxt.to_string()),
        String::new(),
        "bpf",
    );
    fact(
        "ISN send/receive",
        &|e| absolute(e, |x| format!("{}/{}", opt(x.snd_isn), opt(x.rcv_isn))),
        String::new(),
        "bpf",
    );
    fact(
        "SACK blocks sent",
        &|e| absolute(e, |x| sacks(&x.sacks_sent)),
        "data this end holds above a hole".into(),
        "bpf",
    );
    fact(
        "SACK blocks received",
        &|e| absolute(e, |x| sacks(&x.sacks_received)),
        "what the peer reports holding above a hole".into(),
        "bpf",
    );
    out
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// At most `max` characters of `s`, a cut marked with `…`.
pub fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A probe's flag and its source: `true (bpf)`, or `unknown`.
fn flag(v: Option<bool>, source: Option<FactSource>) -> String {
    match (v, source) {
        (Some(c), Some(src)) => format!("{c} ({})", src.name()),
        (Some(c), None) => c.to_string(),
        (None, _) => "unknown".into(),
    }
}

/// An owner fact with its source, or why it is unknown.
fn owner(e: &EndSample, f: impl Fn(&ProcessOwner) -> String) -> String {
    match (&e.owner, e.owner_missing) {
        (Some(o), _) => format!("{} (proc)", f(o)),
        (None, Some(why)) => format!("unknown ({})", why.name()),
        (None, None) => "unknown".into(),
    }
}

/// A BPF fact with its source, or `unknown`.
fn absolute(e: &EndSample, f: impl Fn(&AbsoluteSeq) -> String) -> String {
    e.absolute
        .as_ref()
        .map_or_else(|| "unknown".into(), |x| format!("{} (bpf)", f(x)))
}

/// SACK blocks as `start-end` pairs, `none` without any.
fn sacks(b: &[SackBlock]) -> String {
    if b.is_empty() {
        return "none".into();
    }
    b.iter()
        .map(|b| format!("{}-{}", b.start, b.end))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SkMemInfo, SocketSample, TcpState};

    fn end(local: &str, remote: &str, skmem: Option<(u32, u32)>) -> EndSample {
        let s = SocketSample {
            netns: 1,
            local: local.parse().expect("addr"),
            remote: remote.parse().expect("addr"),
            state: TcpState::Established,
            cookie: 1,
            inode: 1,
            uid: 0,
            rqueue: 0,
            wqueue: 0,
            timer: None,
            timer_expires_ms: 0,
            timer_retransmits: 0,
            opened: None,
            info: None,
            skmem: skmem.map(|(r, rb)| SkMemInfo {
                rmem_alloc: Some(r),
                rcvbuf: Some(rb),
                ..SkMemInfo::default()
            }),
            cong: None,
            shutdown: None,
        };
        EndSample::from_socket(&s, "host", 0)
    }

    fn memory_row(a: &EndSample, b: &EndSample) -> Fact {
        facts(Some(a), Some(b))
            .into_iter()
            .find(|f| f.name == "receive memory (skmem r/rb)")
            .expect("the row")
    }

    #[test]
    fn a_full_receive_buffer_says_the_window_is_closed_where_no_rcv_wnd_does() {
        let a = end("10.0.0.1:80", "10.0.0.2:4000", None);
        let full = end("10.0.0.2:4000", "10.0.0.1:80", Some((130_224, 131_072)));
        let row = memory_row(&a, &full);
        assert_eq!((row.a.as_str(), row.b.as_str()), ("unknown", "127K/128K"));
        assert_eq!(row.meaning, "B's buffer is full: its window is closed");
        let mut a_zero = a.clone();
        a_zero.pos.snd_wnd = Some(0);
        let room = end("10.0.0.2:4000", "10.0.0.1:80", Some((0, 131_072)));
        assert_eq!(
            memory_row(&a_zero, &room).meaning,
            "B's buffer has room, yet A sees a zero window"
        );
        assert_eq!(
            memory_row(&a, &room).meaning,
            "",
            "an open window, nothing to say"
        );
        // With rcv_wnd (6.2+) the window speaks for itself.
        let mut full_6_2 = full.clone();
        full_6_2.pos.rcv_wnd = Some(0);
        assert_eq!(memory_row(&a, &full_6_2).meaning, "");
    }

    /// The float formatting `HumanBytes` replaced, as the reference.
    fn by_floats(n: u64) -> String {
        const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
        let mut v = n as f64;
        let mut u = 0;
        while v >= 1024.0 && u < UNITS.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            n.to_string()
        } else if v < 10.0 {
            format!("{v:.1}{}", UNITS[u])
        } else {
            format!("{v:.0}{}", UNITS[u])
        }
    }

    #[test]
    fn whole_number_formatting_says_what_floats_said() {
        // Every value to 64 KiB, ties (1280 = 1.25K) and the unit edges.
        let edges = (1..5u32).flat_map(|u| {
            let p = 1024u64.pow(u);
            [
                p - 1,
                p,
                p + 1,
                10 * p - 1,
                10 * p,
                10 * p + p / 20,
                1023 * p + p / 2,
            ]
        });
        for n in (0..=65_536u64)
            .chain(edges)
            .chain([u64::MAX / 4096, 1 << 52])
        {
            assert_eq!(HumanBytes(n).to_string(), by_floats(n), "{n}");
        }
    }

    #[test]
    fn bytes_in_human_units() {
        assert_eq!(human_bytes(0), "0");
        assert_eq!(human_bytes(1023), "1023");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(65536), "64K");
        assert_eq!(human_bytes(2 * 1024 * 1024), "2.0M");
    }

    #[test]
    fn long_commands_are_cut_and_sack_blocks_listed() {
        assert_eq!(short("nginx: worker", 60), "nginx: worker");
        let cut = short(&"é".repeat(100), 10);
        assert_eq!(cut.chars().count(), 10);
        assert!(cut.ends_with('…'));
        assert_eq!(sacks(&[]), "none");
        assert_eq!(
            sacks(&[
                SackBlock { start: 10, end: 20 },
                SackBlock {
                    start: u32::MAX - 5,
                    end: 3
                }
            ]),
            format!("10-20, {}-3", u32::MAX - 5)
        );
    }
}
