//! Which facts and which diagnoses each kernel gives (docs/kernels.md).
//!
//! A kernel sends the `tcp_info` it knows, and every layout is a prefix of
//! the next (pinned by `common/tests/tcp_info_fixtures.rs`): a kernel's
//! `tcp_info` is the newest layout cut to its length. So each scenario
//! below is both ends of one stall as the newest kernel reports them (the
//! values a real stall of that kind shows: `ss -tinm` of one on 6.18 for
//! the zero windows), cut to each kernel's length, joined into the samples
//! the agent sends (`EndSample::from_socket`, the agent's own derivation)
//! and diagnosed by the collector's own rules. One test per kernel pins its
//! verdicts and what they rested on; another pins the table in the docs to
//! what this code gives (`TCPSTALL_BLESS=1` rewrites it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use tcpstall_collector::matcher::diagnose::{diagnose, Peer, Verdict};
use tcpstall_common::tcp_info::{KNOWN_LEN, PLAIN_FIELDS};
use tcpstall_common::{
    Diagnosis, EndSample, FactSource, FlowTuple, Opened, SkMemInfo, SocketSample, TcpInfo,
    TcpState, TimerKind,
};

/// One kernel as the agent meets it: the `tcp_info` length it sends and
/// the probes it allows (with the capabilities the agent's unit grants).
struct Kernel {
    name: &'static str,
    /// Who runs it.
    runs: &'static str,
    tcp_info_len: usize,
    /// The cork/nodelay probe: getsockopt on a pidfd_getfd duplicate from
    /// 5.6, the BPF iterator from 5.12 (with BTF).
    cork_probe: Option<FactSource>,
    bpf: bool,
}

const KERNELS: [Kernel; 6] = [
    Kernel {
        name: "3.10",
        runs: "RHEL/CentOS 7 (upstream layout; see below)",
        tcp_info_len: 104,
        cork_probe: None,
        bpf: false,
    },
    Kernel {
        name: "4.18",
        runs: "RHEL 8",
        tcp_info_len: 200,
        cork_probe: None,
        bpf: false,
    },
    Kernel {
        name: "5.4",
        runs: "Ubuntu 20.04",
        tcp_info_len: 232,
        cork_probe: None,
        bpf: false,
    },
    Kernel {
        name: "5.14",
        runs: "RHEL 9",
        tcp_info_len: 232,
        cork_probe: Some(FactSource::Bpf),
        bpf: true,
    },
    Kernel {
        name: "6.1",
        runs: "Debian 12",
        tcp_info_len: 232,
        cork_probe: Some(FactSource::Bpf),
        bpf: true,
    },
    Kernel {
        name: "6.2+",
        runs: "Ubuntu 24.04, Debian 13, Fedora",
        tcp_info_len: 240,
        cork_probe: Some(FactSource::Bpf),
        bpf: true,
    },
];

fn kernel(name: &str) -> &'static Kernel {
    KERNELS
        .iter()
        .find(|k| k.name == name)
        .unwrap_or_else(|| panic!("no kernel {name}"))
}

/// The newest `tcp_info`, written field by field by name.
#[derive(Clone)]
struct Info([u8; KNOWN_LEN]);

impl Info {
    /// An established connection's ordinary figures.
    fn established() -> Info {
        let mut i = Info([0; KNOWN_LEN]);
        i.set("state", 1);
        i.set("options", 7); // timestamps, SACK, window scaling
        i.0[6] = 0x77; // both window scales 7
        i.set("rto", 204_000);
        i.set("ato", 40_000);
        for f in ["snd_mss", "rcv_mss", "advmss"] {
            i.set(f, 1448);
        }
        i.set("pmtu", 1500);
        i.set("rtt", 250);
        i.set("rttvar", 125);
        i.set("snd_cwnd", 10);
        i.set("snd_ssthresh", 0x7fff_ffff);
        i.set("rcv_space", 14_480);
        i.set("rcv_ssthresh", 64_088);
        i
    }

    fn set(&mut self, name: &str, v: u64) -> &mut Info {
        let (_, offset, size) = PLAIN_FIELDS
            .iter()
            .find(|(n, _, _)| *n == name)
            .copied()
            .unwrap_or_else(|| panic!("no tcp_info field {name}"));
        self.0[offset..offset + size].copy_from_slice(&v.to_ne_bytes()[..size]);
        self
    }

    /// As a kernel that sends `len` bytes gives it.
    fn cut(&self, len: usize) -> TcpInfo {
        TcpInfo::parse(&self.0[..len]).expect("a layout the parser knows")
    }
}

/// One end of a scenario: what sock_diag reports of it on the newest
/// kernel.
#[derive(Clone)]
struct End {
    info: Info,
    rqueue: u32,
    wqueue: u32,
    timer: Option<TimerKind>,
    rmem: u32,
    rcvbuf: u32,
    opened: Opened,
    /// TCP_CORK as a probe would read it.
    cork: bool,
}

impl End {
    /// The server: accepted the connection, sends the answer.
    fn a() -> End {
        End {
            info: Info::established(),
            rqueue: 0,
            wqueue: 0,
            timer: None,
            rmem: 0,
            rcvbuf: 131_072,
            opened: Opened::Passive,
            cork: false,
        }
    }

    /// The client: connected, reads the answer.
    fn b() -> End {
        End {
            opened: Opened::Active,
            ..End::a()
        }
    }

    /// The sample the agent on kernel `k` sends of this end.
    fn sample(&self, k: &Kernel, flow: FlowTuple, cookie: u64) -> EndSample {
        let s = SocketSample {
            netns: 1,
            local: flow.local,
            remote: flow.remote,
            state: TcpState::Established,
            cookie,
            inode: cookie as u32,
            uid: 0,
            rqueue: self.rqueue,
            wqueue: self.wqueue,
            timer: self.timer,
            timer_expires_ms: 0,
            timer_retransmits: 0,
            opened: Some(self.opened),
            info: Some(self.info.cut(k.tcp_info_len)),
            skmem: Some(SkMemInfo {
                rmem_alloc: Some(self.rmem),
                rcvbuf: Some(self.rcvbuf),
                ..SkMemInfo::default()
            }),
            cong: None,
            shutdown: None,
        };
        let mut e = EndSample::from_socket(&s, "host", 12_000);
        e.cork = k.cork_probe.map(|_| self.cork);
        e.cork_source = k.cork_probe;
        e
    }
}

/// What really happened, and both ends as the newest kernel shows it.
struct Scenario {
    /// The diagnosis a kernel that gives every fact reaches.
    truth: Diagnosis,
    a: End,
    /// `None`: B's host is monitored and has no such socket.
    b: Option<End>,
}

/// A zero window as A sees it: everything unsent, the probe timer
/// (`persist`) running and backing off. ACKs to its probes reset
/// `probes` (`tcp_ack`), so a live peer keeps it at 0.
fn a_zero_window() -> End {
    let mut a = End::a();
    a.wqueue = 4_128_768;
    a.timer = Some(TimerKind::ZeroWindowProbe);
    a.info
        .set("backoff", 3)
        .set("unacked", 0)
        .set("bytes_acked", 127_728)
        .set("bytes_received", 120)
        .set("notsent_bytes", 4_128_768)
        .set("snd_wnd", 0);
    a
}

/// A with 20,000 bytes in flight unacknowledged, retransmitting.
fn a_retransmitting() -> End {
    let mut a = End::a();
    a.wqueue = 20_000;
    a.timer = Some(TimerKind::Retransmit);
    a.info
        .set("ca_state", 4) // loss
        .set("retransmits", 4)
        .set("backoff", 4)
        .set("unacked", 14)
        .set("lost", 14)
        .set("retrans", 1)
        .set("total_retrans", 5)
        .set("bytes_acked", 50_000)
        .set("bytes_received", 120)
        .set("notsent_bytes", 0)
        .set("snd_wnd", 65_536);
    a
}

/// B as it reads: nothing queued, its window open.
fn b_reading(rcv_nxt: u64) -> End {
    let mut b = End::b();
    b.info
        .set("bytes_acked", 121)
        .set("bytes_received", rcv_nxt)
        .set("rcv_wnd", 65_536);
    b
}

/// A holding 3,000 bytes unsent with the window open and nothing in
/// flight, TCP_CORK as given. Not corked, its host refuses the data (the
/// lab's qdisc of limit 0): the probe timer runs, as for a zero window,
/// but its probes fail at home and back nothing off.
fn a_unsent(cork: bool) -> End {
    let mut a = End::a();
    a.wqueue = 3_000;
    a.cork = cork;
    if !cork {
        a.timer = Some(TimerKind::ZeroWindowProbe);
    }
    a.info
        .set("unacked", 0)
        .set("bytes_acked", 50_000)
        .set("bytes_received", 120)
        .set("notsent_bytes", 3_000)
        .set("snd_wnd", 65_536);
    a
}

fn scenarios() -> Vec<Scenario> {
    // B's application stopped reading: its buffer full (r130224 of
    // rb131072 in `ss -m` of such a stall on 6.18), its window closed.
    let mut not_reading = End::b();
    not_reading.rqueue = 127_728;
    not_reading.rmem = 130_224;
    not_reading
        .info
        .set("bytes_acked", 121)
        .set("bytes_received", 127_728)
        .set("rcv_wnd", 0);
    // B has read it all and reopened its window; A never heard.
    let mut reopened = not_reading.clone();
    reopened.rqueue = 0;
    reopened.rmem = 0;
    reopened.info.set("rcv_wnd", 65_536);
    vec![
        Scenario {
            truth: Diagnosis::PeerNotReading,
            a: a_zero_window(),
            b: Some(not_reading),
        },
        Scenario {
            truth: Diagnosis::WindowUpdateLost,
            a: a_zero_window(),
            b: Some(reopened),
        },
        Scenario {
            truth: Diagnosis::DataLost,
            a: a_retransmitting(),
            b: Some(b_reading(50_000)),
        },
        Scenario {
            truth: Diagnosis::AckLost,
            a: a_retransmitting(),
            b: Some(b_reading(70_000)),
        },
        Scenario {
            truth: Diagnosis::Corked,
            a: a_unsent(true),
            b: Some(b_reading(50_000)),
        },
        Scenario {
            truth: Diagnosis::UnsentUnblocked,
            a: a_unsent(false),
            b: Some(b_reading(50_000)),
        },
        Scenario {
            truth: Diagnosis::HalfOpen,
            a: a_retransmitting(),
            b: None,
        },
    ]
}

fn verdict(k: &Kernel, s: &Scenario) -> Verdict {
    let flow = FlowTuple::new(
        "198.18.0.2:8080".parse().expect("addr"),
        "198.18.0.1:40000".parse().expect("addr"),
    );
    let a = s.a.sample(k, flow, 1);
    match &s.b {
        Some(b) => diagnose(&a, Peer::Seen(&b.sample(k, flow.reversed(), 2))),
        None => diagnose(&a, Peer::NoSocket { host: "b" }),
    }
}

/// Kernel `k`'s verdict on each scenario: (truth, diagnosis, rested on,
/// missing).
fn verdicts(k: &Kernel) -> Vec<(Diagnosis, Diagnosis, Vec<&'static str>, Vec<&'static str>)> {
    scenarios()
        .iter()
        .map(|s| {
            let v = verdict(k, s);
            (s.truth, v.diagnosis, v.basis.rested_on(), v.basis.missing())
        })
        .collect()
}

/// Asserts kernel `name`'s verdict on the scenario whose truth is `truth`.
fn expect(name: &str, truth: Diagnosis, got: Diagnosis, rested_on: &[&str], missing: &[&str]) {
    let k = kernel(name);
    let all = verdicts(k);
    let (_, d, r, m) = all
        .iter()
        .find(|(t, ..)| *t == truth)
        .unwrap_or_else(|| panic!("no scenario {truth}"));
    assert_eq!(*d, got, "{name}: {truth}");
    assert_eq!(r, rested_on, "{name}: {truth}: rested on");
    assert_eq!(m, missing, "{name}: {truth}: missing");
}

use Diagnosis::*;

#[test]
fn kernel_3_10_tells_a_reader_that_stopped_from_a_loss_but_not_which_loss() {
    let zero_window = ["a_backoff", "a_probe_timer", "b_rmem_alloc", "b_rcvbuf"];
    let windows = ["a_snd_wnd", "b_rcv_wnd"];
    expect(
        "3.10",
        PeerNotReading,
        PeerNotReading,
        &zero_window,
        &windows,
    );
    expect(
        "3.10",
        WindowUpdateLost,
        WindowUpdateLost,
        &zero_window,
        &windows,
    );
    let lost = [
        "a_unacked",
        "a_retransmits",
        "a_backoff",
        "a_probe_timer",
        "b_recvq",
    ];
    let no_positions = ["a_snd_una", "a_inflight", "a_snd_wnd", "b_rcv_nxt"];
    expect("3.10", DataLost, LostInNetwork, &lost, &no_positions);
    expect("3.10", AckLost, LostInNetwork, &lost, &no_positions);
    let unsent_missing = [
        "a_snd_una",
        "a_notsent",
        "a_inflight",
        "a_snd_wnd",
        "a_cork",
        "b_rcv_nxt",
    ];
    expect(
        "3.10",
        Corked,
        UnsentUnblocked,
        &["a_unacked", "a_probe_timer"],
        &unsent_missing,
    );
    let refused = ["a_unacked", "a_backoff", "a_probe_timer"];
    expect(
        "3.10",
        UnsentUnblocked,
        UnsentUnblocked,
        &refused,
        &unsent_missing,
    );
    expect("3.10", HalfOpen, HalfOpen, &["a_sendq"], &[]);
}

#[test]
fn kernel_4_18_has_positions_but_no_windows() {
    let zero_window = ["a_backoff", "a_probe_timer", "b_rmem_alloc", "b_rcvbuf"];
    let windows = ["a_snd_wnd", "b_rcv_wnd"];
    expect(
        "4.18",
        PeerNotReading,
        PeerNotReading,
        &zero_window,
        &windows,
    );
    expect(
        "4.18",
        WindowUpdateLost,
        WindowUpdateLost,
        &zero_window,
        &windows,
    );
    let lost = [
        "a_snd_una",
        "a_inflight",
        "a_retransmits",
        "a_backoff",
        "a_probe_timer",
        "b_rcv_nxt",
    ];
    expect("4.18", DataLost, DataLost, &lost, &["a_snd_wnd"]);
    let acked = ["a_snd_una", "a_probe_timer", "b_rcv_nxt", "acked_not_seen"];
    expect("4.18", AckLost, AckLost, &acked, &["a_snd_wnd"]);
    let unsent = [
        "a_snd_una",
        "a_notsent",
        "a_inflight",
        "a_probe_timer",
        "b_rcv_nxt",
    ];
    expect(
        "4.18",
        Corked,
        UnsentUnblocked,
        &unsent,
        &["a_snd_wnd", "a_cork"],
    );
    let refused = [
        "a_snd_una",
        "a_notsent",
        "a_inflight",
        "a_backoff",
        "a_probe_timer",
        "b_rcv_nxt",
    ];
    expect(
        "4.18",
        UnsentUnblocked,
        UnsentUnblocked,
        &refused,
        &["a_snd_wnd", "a_cork"],
    );
    expect("4.18", HalfOpen, HalfOpen, &["a_sendq"], &[]);
}

#[test]
fn kernel_5_4_sees_a_s_window_and_judges_b_s_by_its_buffer_but_no_cork() {
    a_s_window_b_s_buffer("5.4");
}

#[test]
fn kernel_5_14_sees_a_s_window_judges_b_s_by_its_buffer_and_tells_a_cork() {
    a_s_window_b_s_buffer("5.14");
}

#[test]
fn kernel_6_1_sees_a_s_window_judges_b_s_by_its_buffer_and_tells_a_cork() {
    a_s_window_b_s_buffer("6.1");
}

/// 5.4 to 6.1: `snd_wnd` but no `rcv_wnd`; the cork probes from 5.6.
fn a_s_window_b_s_buffer(k: &str) {
    {
        let zero_window = ["a_snd_wnd", "b_rmem_alloc", "b_rcvbuf"];
        expect(
            k,
            PeerNotReading,
            PeerNotReading,
            &zero_window,
            &["b_rcv_wnd"],
        );
        expect(
            k,
            WindowUpdateLost,
            WindowUpdateLost,
            &zero_window,
            &["b_rcv_wnd"],
        );
        let lost = [
            "a_snd_una",
            "a_inflight",
            "a_snd_wnd",
            "a_retransmits",
            "a_backoff",
            "b_rcv_nxt",
        ];
        expect(k, DataLost, DataLost, &lost, &[]);
        let acked = ["a_snd_una", "a_snd_wnd", "b_rcv_nxt", "acked_not_seen"];
        expect(k, AckLost, AckLost, &acked, &[]);
        let unsent = [
            "a_snd_una",
            "a_notsent",
            "a_inflight",
            "a_snd_wnd",
            "b_rcv_nxt",
        ];
        if k == "5.4" {
            // No cork probe before 5.6: a cork cannot be told.
            expect(k, Corked, UnsentUnblocked, &unsent, &["a_cork"]);
            expect(k, UnsentUnblocked, UnsentUnblocked, &unsent, &["a_cork"]);
        } else {
            let with_cork = [
                "a_snd_una",
                "a_notsent",
                "a_inflight",
                "a_snd_wnd",
                "a_cork",
                "b_rcv_nxt",
            ];
            expect(k, Corked, Corked, &with_cork, &[]);
            expect(k, UnsentUnblocked, UnsentUnblocked, &with_cork, &[]);
        }
        expect(k, HalfOpen, HalfOpen, &["a_sendq"], &[]);
    }
}

#[test]
fn kernel_6_2_gives_every_fact() {
    let k = kernel("6.2+");
    for (truth, got, _, missing) in verdicts(k) {
        assert_eq!(got, truth, "6.2+ reaches every diagnosis");
        assert!(
            missing.is_empty(),
            "6.2+ misses nothing for {truth}: {missing:?}"
        );
    }
    expect(
        "6.2+",
        PeerNotReading,
        PeerNotReading,
        &["a_snd_wnd", "b_rcv_wnd"],
        &[],
    );
    expect(
        "6.2+",
        WindowUpdateLost,
        WindowUpdateLost,
        &["a_snd_wnd", "b_rcv_wnd"],
        &[],
    );
}

/// A buffer just under 7/8 full is open, at 7/8 closed: the line the
/// fallback draws, where the kernel would still offer about two segments.
#[test]
fn a_buffer_at_seven_eighths_is_a_closed_window() {
    let k = kernel("4.18");
    let mut s = scenarios().remove(0);
    let b = s.b.as_mut().expect("B");
    b.rcvbuf = 131_072;
    b.rmem = 131_072 - 131_072 / 8;
    assert_eq!(verdict(k, &s).diagnosis, PeerNotReading);
    s.b.as_mut().expect("B").rmem -= 1;
    assert_eq!(verdict(k, &s).diagnosis, WindowUpdateLost);
}

/// Whether a `tcp_info` of `len` bytes holds field `name`.
fn holds(len: usize, name: &str) -> bool {
    PLAIN_FIELDS
        .iter()
        .any(|(n, offset, size)| *n == name && offset + size <= len)
}

/// The tables of docs/kernels.md, from the layouts and the rules.
fn tables() -> String {
    let mut out = String::new();
    let yes = |b: bool| if b { "yes" } else { "—" };
    out.push_str("| kernel | runs on | `tcp_info` bytes | byte positions (`bytes_acked`, `bytes_received`) | `notsent_bytes` | `snd_wnd` | `rcv_wnd` | BPF `iter/tcp` probe | cork/nodelay probe |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for k in &KERNELS {
        let n = k.tcp_info_len;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.name,
            k.runs,
            n,
            yes(holds(n, "bytes_acked") && holds(n, "bytes_received")),
            yes(holds(n, "notsent_bytes")),
            yes(holds(n, "snd_wnd")),
            yes(holds(n, "rcv_wnd")),
            yes(k.bpf),
            k.cork_probe.map_or("—", |s| s.name()),
        );
    }
    out.push('\n');
    out.push_str("| what happened | ");
    out.push_str(
        &KERNELS
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(" | "),
    );
    out.push_str(" |\n|---|");
    out.push_str(&"---|".repeat(KERNELS.len()));
    out.push('\n');
    let all: Vec<_> = KERNELS.iter().map(verdicts).collect();
    for (i, s) in scenarios().iter().enumerate() {
        let _ = write!(out, "| {} |", s.truth);
        for per_kernel in &all {
            let got = per_kernel[i].1;
            if got == s.truth {
                let _ = write!(out, " {got} |");
            } else {
                let _ = write!(out, " **{got}** |");
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str("| what happened | kernels | the verdict rests on | and goes without |\n|---|---|---|---|\n");
    for (i, s) in scenarios().iter().enumerate() {
        // Kernels with the same basis, in one row.
        let mut rows: BTreeMap<(String, String, String), Vec<&str>> = BTreeMap::new();
        for (k, per_kernel) in KERNELS.iter().zip(&all) {
            let (_, got, rested, missing) = &per_kernel[i];
            rows.entry((got.to_string(), rested.join(", "), missing.join(", ")))
                .or_default()
                .push(k.name);
        }
        let mut rows: Vec<_> = rows.into_iter().collect();
        rows.sort_by_key(|(_, ks)| KERNELS.iter().position(|k| k.name == ks[0]));
        for ((got, rested, missing), ks) in rows {
            let verdict = if got == s.truth.id() {
                String::new()
            } else {
                format!(" (gives {got})")
            };
            let _ = writeln!(
                out,
                "| {}{verdict} | {} | {} | {} |",
                s.truth,
                ks.join(", "),
                rested,
                if missing.is_empty() { "—" } else { &missing }
            );
        }
    }
    out
}

const BEGIN: &str = "<!-- tables: written by collector/tests/kernels.rs -->\n";
const END: &str = "<!-- end of tables -->\n";

#[test]
fn the_docs_table_is_what_the_layouts_and_rules_give() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/kernels.md");
    let doc = std::fs::read_to_string(&path).expect("docs/kernels.md");
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/kernels.md lacks the table markers");
    };
    let fresh = tables();
    if std::env::var_os("TCPSTALL_BLESS").is_some() {
        let new = format!("{}{BEGIN}{fresh}{}", &doc[..b], &doc[e..]);
        std::fs::write(&path, new).expect("write docs/kernels.md");
        return;
    }
    assert_eq!(
        &doc[b + BEGIN.len()..e],
        fresh,
        "docs/kernels.md's tables are stale: TCPSTALL_BLESS=1 cargo test -p tcpstall-collector --test kernels"
    );
}
