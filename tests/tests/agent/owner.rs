//! The owning process of a socket, and its cork read through a duplicate
//! of the owner's descriptor (`snapshot --owners`), with and without the
//! capabilities each needs. The agent runs as another process, with its
//! capabilities cut down by setpriv (util-linux). Needs root.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};

use serde_json::Value;
use tcpstall_tests::{binary, require_root};

use crate::Conn;

/// `tcpstall-agent snapshot --json --owners --port PORT` with only the
/// capabilities in `bounding` (setpriv syntax, e.g. "-all,+sys_ptrace"),
/// or all of root's when `None`. Rows by local address, and stderr.
fn snapshot(port: u16, bounding: Option<&str>) -> (HashMap<String, Value>, String) {
    let agent = binary("tcpstall-agent");
    let mut cmd = match bounding {
        Some(set) => {
            let mut c = std::process::Command::new("setpriv");
            c.arg(format!("--bounding-set={set}"))
                .arg("--inh-caps=-all")
                .arg(&agent);
            c
        }
        None => std::process::Command::new(&agent),
    };
    let out = cmd
        .args([
            "snapshot",
            "--json",
            "--owners",
            "--port",
            &port.to_string(),
        ])
        .output()
        .expect("run tcpstall-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
        .map(|r| (r["local"].as_str().unwrap_or_default().to_string(), r))
        .collect();
    (rows, stderr)
}

/// A pair whose client has a full send queue (the server never reads),
/// then TCP_CORK set: a suspect with the cork on.
fn corked_suspect() -> Conn {
    use nix::sys::socket::{setsockopt, sockopt};
    let mut c = Conn::open("127.0.0.1:0");
    c.client.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0x42u8; 64 * 1024];
    loop {
        match c.client.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    setsockopt(&c.client, sockopt::TcpCork, &true).expect("TCP_CORK");
    c
}

/// Issue 6: the process is named on both ends; with CAP_SYS_PTRACE alone
/// (no BPF) the cork comes from getsockopt; with no capability at all the
/// owner and the cork say unknown and nothing else changes.
#[test]
fn owner_and_cork_through_the_owners_descriptor() {
    require_root!();
    let c = corked_suspect();
    let port = c.server_addr.port();
    let (client, server) = (c.client_addr.to_string(), c.server_addr.to_string());
    let me = u64::from(std::process::id());
    let exe = std::env::current_exe().expect("test executable");
    let exe = exe.to_string_lossy();

    let (rows, stderr) = snapshot(port, Some("-all,+sys_ptrace"));
    assert!(
        stderr.contains("probe bpf: "),
        "BPF is announced as missing: {stderr}"
    );
    for end in [&client, &server] {
        let owner = &rows[end]["owner"];
        assert_eq!(owner["pid"], me, "{owner}");
        assert!(
            owner["command"].as_str().is_some_and(|c| c.contains(&*exe)),
            "{owner}"
        );
        assert!(owner["cgroup"].is_string(), "{owner}");
    }
    let a = &rows[&client];
    assert!(a["sendq"].as_u64().is_some_and(|q| q > 0), "{a}");
    assert_eq!(a["cork"], true, "{a}");
    assert_eq!(a["cork_source"], "getsockopt", "{a}");
    assert_eq!(a["nodelay"], false, "{a}");
    // Not a suspect: nothing queued, so no descriptor is borrowed.
    assert!(rows[&server]["cork"].is_null(), "{}", rows[&server]);

    let (bare, stderr) = snapshot(port, Some("-all"));
    assert!(
        stderr.contains("probe bpf: unknown (no permission)"),
        "{stderr}"
    );
    for (end, full) in [(&client, a), (&server, &rows[&server])] {
        let row = &bare[end];
        assert_eq!(row["owner"], "unknown (no permission)", "{row}");
        assert!(
            row["cork"].is_null() && row["cork_source"].is_null(),
            "{row}"
        );
        // The receiver still takes in the odd segment (its buffer grows),
        // so snd_una and rcv_nxt may move between the two runs; what the
        // applications wrote and read may not.
        for field in ["remote", "state", "cookie", "opened", "write_seq", "copied"] {
            assert_eq!(
                row[field], full[field],
                "{field} unchanged without capabilities"
            );
        }
    }
}
