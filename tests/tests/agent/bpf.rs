//! The BPF iter/tcp probe on live sockets: its absolute sequence numbers
//! against the relative positions sock_diag's tcp_info gives, for every
//! connection of the host; the cork bit; the SACK block a receiver with a
//! hole sends; the agent's snapshot reading the cork of another process's
//! socket, and saying "unknown" without the capability. Needs root (CAP_BPF + CAP_PERFMON) and an agent built with
//! clang; skips, saying why, otherwise.

use std::collections::HashMap;
use std::time::Duration;

use tcpstall_agent::netns::{self, Netns, NetnsSpec};
use tcpstall_agent::probe::TcpIterProbe;
use tcpstall_common::{KernelTcp, Opened, SackBlock, SocketSample};
use tcpstall_tests::{find, poll, wait_for, TestNetns};

use crate::{recv, send, Conn};

const DEADLINE: Duration = Duration::from_secs(10);

/// The loaded probe, or `None` (test skipped) when not root or when this
/// build has no BPF object. As root with the object built, a load failure
/// is a failure.
pub fn probe_or_skip() -> Option<TcpIterProbe> {
    if !tcpstall_tests::is_root() {
        eprintln!("skipped: the BPF probe needs root (CAP_BPF + CAP_PERFMON)");
        return None;
    }
    if let Err(e) = TcpIterProbe::built() {
        eprintln!("skipped: {e}");
        return None;
    }
    Some(TcpIterProbe::load().expect("load the iter/tcp program as root"))
}

/// One BPF pass over `ns`, by cookie.
pub fn bpf_pass(probe: &mut TcpIterProbe, ns: &Netns) -> HashMap<u64, KernelTcp> {
    let mut out = HashMap::new();
    probe
        .read(ns, |t| {
            out.insert(t.cookie, t);
        })
        .expect("BPF pass");
    out
}

/// What [`compare`] found.
#[derive(Debug, Default)]
struct Compared {
    /// Connections seen alike by both sock_diag passes and by BPF.
    checked: usize,
    /// Of those, the ones whose ISN came from the peer's receive side.
    isn_from_peer: usize,
    /// Connections that moved between the passes: not comparable.
    moving: usize,
}

/// The same connection, unmoved: state, positions and windows alike (the
/// timers and RTT in tcp_info change all the time).
fn still(a: &SocketSample, b: &SocketSample) -> bool {
    a.cookie == b.cookie && a.state == b.state && a.positions() == b.positions()
}

/// Compares every quiet connection's BPF record to its sock_diag sample.
/// `Err` names the first mismatch.
fn compare(
    before: &[SocketSample],
    after: &[SocketSample],
    bpf: &HashMap<u64, KernelTcp>,
) -> Result<Compared, String> {
    let before: HashMap<u64, &SocketSample> = before.iter().map(|s| (s.cookie, s)).collect();
    let quiet: HashMap<u64, &SocketSample> = after
        .iter()
        .filter(|s| before.get(&s.cookie).is_some_and(|b| still(b, s)))
        .map(|s| (s.cookie, s))
        .collect();
    let by_tuple: HashMap<_, _> = quiet
        .values()
        .map(|s| ((s.netns, s.local, s.remote), *s))
        .collect();
    let mut out = Compared {
        moving: after.len() - quiet.len(),
        ..Compared::default()
    };
    for s in quiet.values() {
        let Some(k) = bpf.get(&s.cookie) else {
            // The iterator leaves out TIME-WAIT and request sockets only.
            if s.info.is_some() {
                return Err(format!("BPF pass missed a quiet connection: {s:?}"));
            }
            continue;
        };
        let p = s.positions();
        let why = |what: &str| format!("{what}: sample {s:?}\npositions {p:?}\nbpf {k:?}");
        if k.state != s.state.kernel_number() {
            return Err(why("state"));
        }
        let opened = s.opened.ok_or_else(|| why("opened unknown"))?;
        // The ISN of our sending direction: from the peer's receive side
        // when both ends are on this host, else from our own snapshot.
        let peer = by_tuple
            .get(&(s.netns, s.remote, s.local))
            .and_then(|peer| bpf.get(&peer.cookie));
        let isn1 = match peer {
            Some(peer) => {
                out.isn_from_peer += 1;
                Some(peer.rcv_isn1())
            }
            None => k.snd_isn1(opened),
        };
        if let (Some(isn1), Some(una)) = (isn1, p.snd_una) {
            if u64::from(k.snd_una.wrapping_sub(isn1)) != una % (1 << 32) {
                return Err(why("absolute snd_una - ISN != tcp_info snd_una"));
            }
        }
        let pairs = [
            ("snd_una", p.snd_una, k.snd_relative(opened, k.snd_una)),
            ("snd_nxt", p.snd_nxt, k.snd_relative(opened, k.snd_nxt)),
            (
                "write_seq",
                p.write_seq,
                k.snd_relative(opened, k.write_seq),
            ),
            ("rcv_nxt", p.rcv_nxt, k.rcv_relative(k.rcv_nxt)),
            ("copied", p.copied, k.rcv_relative(k.copied_seq)),
        ];
        for (name, diag, bpf) in pairs {
            // SYN-SENT has no snd_una yet in either view.
            if diag.is_some() && diag != bpf {
                return Err(why(name));
            }
        }
        let info = s.info.as_ref().ok_or_else(|| why("no tcp_info"))?;
        if info.snd_wscale() != Some(k.snd_wscale) || info.rcv_wscale() != Some(k.rcv_wscale) {
            return Err(why("window scales"));
        }
        if info.snd_wnd().is_some_and(|w| w != k.snd_wnd)
            || info.rcv_wnd().is_some_and(|w| w != k.rcv_wnd)
        {
            return Err(why("windows"));
        }
        out.checked += 1;
    }
    Ok(out)
}

/// Issue 6: absolute snd_una − ISN equals tcp_info's relative snd_una for
/// every connection of the host, and the other positions agree too.
#[test]
fn absolute_sequence_numbers_match_tcp_info_on_every_connection() {
    let Some(mut probe) = probe_or_skip() else {
        return;
    };
    let ns = netns::current().expect("current namespace");
    let mut conns = Vec::new();
    for (i, bind) in ["127.0.0.1:0", "[::1]:0", "127.0.0.1:0"].iter().enumerate() {
        let mut c = Conn::open(bind);
        let up = 1000 * (i + 1);
        let down = 70_000 + 333 * i;
        send(&mut c.client, up);
        recv(&mut c.server, up);
        send(&mut c.server, down);
        recv(&mut c.client, down);
        // Left unread: rcv_nxt and copied differ on the server.
        send(&mut c.client, 17);
        conns.push(c);
    }
    let cookies_of_test = |samples: &[SocketSample]| {
        conns
            .iter()
            .flat_map(|c| {
                [
                    (c.client_addr, c.server_addr),
                    (c.server_addr, c.client_addr),
                ]
            })
            .filter_map(|(l, r)| samples.iter().find(|s| s.local == l && s.remote == r))
            .map(|s| s.cookie)
            .collect::<Vec<_>>()
    };
    let (report, ours) = wait_for(
        "a pass where the test's connections hold still",
        DEADLINE,
        || {
            let before = poll(vec![]);
            let bpf = bpf_pass(&mut probe, &ns);
            let after = poll(vec![]);
            let ours = cookies_of_test(&after);
            let report = compare(&before, &after, &bpf).unwrap_or_else(|e| panic!("{e}"));
            let all_quiet = ours.len() == 2 * conns.len()
                && ours.iter().all(|c| {
                    let b = before.iter().find(|s| s.cookie == *c);
                    let a = after.iter().find(|s| s.cookie == *c);
                    a.zip(b).is_some_and(|(a, b)| still(a, b))
                });
            all_quiet.then_some((report, ours))
        },
    );
    eprintln!(
        "checked {} connections ({} with the peer's ISN), {} moved between passes",
        report.checked, report.isn_from_peer, report.moving
    );
    assert!(report.checked >= ours.len(), "{report:?}");
    assert!(report.isn_from_peer >= ours.len(), "{report:?}");
    assert_eq!(probe.stats().malformed, 0);
}

/// Issue 6: a corked socket reads back as corked; uncorking clears it,
/// and TCP_NODELAY shows as nodelay.
#[test]
fn cork_and_nodelay_read_back() {
    use nix::sys::socket::{setsockopt, sockopt};
    let Some(mut probe) = probe_or_skip() else {
        return;
    };
    let ns = netns::current().expect("current namespace");
    let mut c = Conn::open("127.0.0.1:0");
    setsockopt(&c.client, sockopt::TcpCork, &true).expect("TCP_CORK");
    setsockopt(&c.server, sockopt::TcpNoDelay, &true).expect("TCP_NODELAY");
    send(&mut c.client, 100); // less than a segment: held by the cork
    let find = |probe: &mut TcpIterProbe, local, remote| {
        let all = poll(vec![]);
        let s = all
            .iter()
            .find(|s| s.local == local && s.remote == remote)
            .expect("socket in sock_diag")
            .clone();
        let k = *bpf_pass(probe, &ns)
            .get(&s.cookie)
            .expect("socket in the BPF pass");
        (s, k)
    };
    let (s, k) = find(&mut probe, c.client_addr, c.server_addr);
    assert!(k.cork(), "{k:?}");
    assert!(!k.nodelay(), "{k:?}");
    assert_eq!(s.opened, Some(Opened::Active));
    let (_, k) = find(&mut probe, c.server_addr, c.client_addr);
    assert!(!k.cork() && k.nodelay(), "{k:?}");

    setsockopt(&c.client, sockopt::TcpCork, &false).expect("uncork");
    recv(&mut c.server, 100);
    let (_, k) = find(&mut probe, c.client_addr, c.server_addr);
    assert!(!k.cork(), "{k:?}");
}

/// `nft` commands inside a test namespace.
fn nft_in(ns: &TestNetns, script: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("nft stdin");
        stdin.write_all(script.as_bytes()).expect("nft script");
    }
    let status = child.wait().expect("nft");
    assert!(status.success(), "nft -f failed on:\n{script}");
}

/// Issue 6: a receiver with a hole. In a test namespace, nftables drops
/// every copy of one 1000-byte segment (matched by its absolute sequence
/// number, which the probe itself gives) on input, where the sender
/// believes it sent it (a drop on output fails the send instead); the
/// next segment arrives. The
/// receiver's SACK block is exactly that next segment, its rcv_nxt is the
/// hole's start, and the sender holds the same block as last received.
#[test]
fn receiver_with_a_hole_sends_a_sack_block_around_it() {
    use nix::sys::socket::{setsockopt, sockopt};
    let Some(mut probe) = probe_or_skip() else {
        return;
    };
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: nft (Debian's nftables) is not installed");
        return;
    }
    let ns = TestNetns::new("sack");
    let mut c = ns.enter(|| Conn::open("127.0.0.1:0"));
    setsockopt(&c.client, sockopt::TcpNoDelay, &true).expect("TCP_NODELAY");
    let spaces = netns::resolve(&[NetnsSpec::Named(ns.name.clone())]).expect("resolve");
    let target = spaces[0].clone();

    send(&mut c.client, 1000);
    recv(&mut c.server, 1000);
    let samples = poll(spaces.clone());
    let cookie = |local, remote| {
        find(&samples, local, remote)
            .map(|s| s.cookie)
            .expect("socket in sock_diag")
    };
    let (client, server) = (
        cookie(c.client_addr, c.server_addr),
        cookie(c.server_addr, c.client_addr),
    );
    let records = bpf_pass(&mut probe, &target);
    let hole = records
        .get(&client)
        .expect("client in the BPF pass")
        .write_seq;

    nft_in(
        &ns,
        &format!(
            "table inet tcpstall_hole {{\n\
               chain input {{\n\
                 type filter hook input priority 0;\n\
                 tcp dport {} tcp sequence {hole} drop\n\
               }}\n\
             }}\n",
            c.server_addr.port()
        ),
    );
    send(&mut c.client, 1000); // dropped, and every retransmission of it
    wait_for("the dropped segment to leave", DEADLINE, || {
        let k = *bpf_pass(&mut probe, &target).get(&client)?;
        (k.snd_nxt == hole.wrapping_add(1000)).then_some(())
    });
    send(&mut c.client, 1000); // arrives above the hole

    let want = SackBlock {
        start: hole.wrapping_add(1000),
        end: hole.wrapping_add(2000),
    };
    let (rx, tx) = wait_for("the receiver's SACK block", DEADLINE, || {
        let records = bpf_pass(&mut probe, &target);
        let rx = *records.get(&server)?;
        let tx = *records.get(&client)?;
        let sent: Vec<_> = rx.sacks_sent().collect();
        let got: Vec<_> = tx.sacks_received().collect();
        (sent == [want] && got.contains(&want)).then_some((rx, tx))
    });
    assert_eq!(rx.rcv_nxt, hole, "the receiver waits for the hole: {rx:?}");
    assert_eq!(tx.snd_una, hole, "the sender's snd_una is the hole: {tx:?}");
    assert!(rx.sack_ok, "SACK negotiated: {rx:?}");
    // Relative to the client's ISN, as the report shows it: 1000 acked,
    // the block is bytes 2000..3000.
    let isn1 = rx.rcv_isn1();
    assert_eq!(want.start.wrapping_sub(isn1), 2000);
    assert_eq!(want.end.wrapping_sub(isn1), 3000);

    // Lift the drop: the retransmission fills the hole.
    nft_in(&ns, "delete table inet tcpstall_hole\n");
    recv(&mut c.server, 2000);
    let rx = wait_for("the hole filled", DEADLINE, || {
        let rx = *bpf_pass(&mut probe, &target).get(&server)?;
        (rx.rcv_nxt == hole.wrapping_add(2000)).then_some(rx)
    });
    assert_eq!(rx.sacks_sent().count(), 0, "{rx:?}");
}

/// `tcpstall-agent snapshot --json --port PORT` with only the
/// capabilities in `bounding` (setpriv syntax, from util-linux); rows by
/// local address, and what it said on stderr.
fn agent_rows(port: u16, bounding: &str) -> (HashMap<String, serde_json::Value>, String) {
    let agent = tcpstall_tests::binary("tcpstall-agent");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all")
        .arg(&agent);
    let out = cmd
        .args(["snapshot", "--json", "--port", &port.to_string()])
        .output()
        .expect("run tcpstall-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("one JSON object per line"))
        .map(|r| (r["local"].as_str().unwrap_or_default().to_string(), r))
        .collect();
    (rows, stderr)
}

/// Issue 6: the cork an application set, read back by another process
/// (the agent's snapshot) through the BPF probe with CAP_BPF and
/// CAP_PERFMON and no other capability, with its source; and without them
/// the same rows with cork "unknown" and nothing else changed.
#[test]
fn another_process_reads_the_cork_and_says_unknown_without_the_capability() {
    use nix::sys::socket::{setsockopt, sockopt};
    if probe_or_skip().is_none() {
        return;
    }
    let c = Conn::open("127.0.0.1:0");
    setsockopt(&c.client, sockopt::TcpCork, &true).expect("TCP_CORK");
    setsockopt(&c.server, sockopt::TcpNoDelay, &true).expect("TCP_NODELAY");
    let port = c.server_addr.port();
    let (client, server) = (c.client_addr.to_string(), c.server_addr.to_string());

    let (rows, stderr) = agent_rows(port, "-all,+bpf,+perfmon");
    assert!(!stderr.contains("probe bpf"), "{stderr}");
    let a = &rows[&client];
    assert_eq!(a["cork"], true, "{a}");
    assert_eq!(a["nodelay"], false, "{a}");
    assert_eq!(a["cork_source"], "bpf", "{a}");
    assert_eq!(a["bpf"]["cork"], true, "{a}");
    let b = &rows[&server];
    assert_eq!(
        (&b["cork"], &b["nodelay"]),
        (&false.into(), &true.into()),
        "{b}"
    );
    // Absolute and relative agree: rcv_nxt - rcv_isn - 1 is the relative rcv_nxt.
    let abs = |v: &serde_json::Value| v.as_u64().expect("number");
    assert_eq!(
        (abs(&b["bpf"]["rcv_nxt"]) + (1 << 32) - abs(&b["bpf"]["rcv_isn"]) - 1) % (1 << 32),
        abs(&b["rcv_nxt"]),
        "{b}"
    );

    let (bare, stderr) = agent_rows(port, "-all");
    assert!(
        stderr.contains("probe bpf: unknown (no permission)"),
        "{stderr}"
    );
    // The table shows no probe's facts, so it tries none (issue 27: the
    // BPF program's load was most of a one-shot view's cost).
    let table = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all"])
        .arg(tcpstall_tests::binary("tcpstall-agent"))
        .args(["snapshot", "--port", &port.to_string()])
        .output()
        .expect("run tcpstall-agent");
    let table_err = String::from_utf8_lossy(&table.stderr);
    assert!(table.status.success(), "{table_err}");
    assert!(!table_err.contains("probe"), "no probe tried: {table_err}");
    assert!(
        String::from_utf8_lossy(&table.stdout).contains(&client),
        "the connection listed"
    );
    for (local, full) in [(&client, a), (&server, b)] {
        let row = &bare[local];
        for field in ["cork", "nodelay", "cork_source"] {
            assert!(
                row[field].is_null(),
                "{field} unknown without CAP_BPF: {row}"
            );
        }
        assert!(row.get("bpf").is_none(), "{row}");
        for field in [
            "remote",
            "state",
            "cookie",
            "opened",
            "snd_una",
            "write_seq",
            "rcv_nxt",
            "copied",
        ] {
            assert_eq!(row[field], full[field], "{field} unchanged without CAP_BPF");
        }
    }
}
