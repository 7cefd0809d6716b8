//! `tcpstall-agent snapshot` as a person and a script use it: the table,
//! the JSON contract, filters, the pair view, and errors for bad flags.

use std::net::Shutdown;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tcpstall_tests::{binary, wait_for};

use crate::{recv, send, Conn};

fn agent(args: &[&str]) -> Output {
    Command::new(binary("tcpstall-agent"))
        .args(args)
        .output()
        .expect("run tcpstall-agent")
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// The field names docs/cli-json.md promises to scripts.
const CONTRACT: &[&str] = &[
    "local",
    "remote",
    "state",
    "cookie",
    "netns",
    "sendq",
    "recvq",
    "notsent",
    "inflight",
    "snd_una",
    "snd_nxt",
    "write_seq",
    "rcv_nxt",
    "copied",
    "snd_wnd",
    "rcv_wnd",
    "snd_wscale",
    "rcv_wscale",
    "tcp_info",
];

#[test]
fn json_has_the_contract_fields_and_port_filter_selects() {
    let mut c = Conn::open("127.0.0.1:0");
    send(&mut c.client, 100);
    recv(&mut c.server, 100);
    let port = c.server_addr.port().to_string();
    let rows = wait_for("both ends acknowledged", Duration::from_secs(10), || {
        let rows = json_lines(&agent(&["snapshot", "--json", "--port", &port]));
        (rows.len() == 2 && rows.iter().all(|r| r["sendq"] == 0)).then_some(rows)
    });
    for r in &rows {
        for field in CONTRACT {
            assert!(r.get(field).is_some(), "field {field} missing in {r}");
        }
        assert_eq!(r["state"], "established");
        assert_eq!(r["tcp_info"]["len"], 280);
        assert!(r["tcp_info"]["rtt"].as_u64().is_some());
    }
    let client = rows
        .iter()
        .find(|r| r["local"] == Value::String(c.client_addr.to_string()))
        .expect("client row");
    assert_eq!(client["snd_una"], 100);
    assert_eq!(client["opened"], "active");

    // --sport selects one end, --dport the other.
    let rows = json_lines(&agent(&["snapshot", "--json", "--sport", &port]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["local"], Value::String(c.server_addr.to_string()));
    let rows = json_lines(&agent(&["snapshot", "--json", "--dport", &port]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["local"], Value::String(c.client_addr.to_string()));
    // A state filter that excludes them, and an address filter that does.
    let rows = json_lines(&agent(&[
        "snapshot",
        "--json",
        "--port",
        &port,
        "--state",
        "time-wait",
    ]));
    assert!(rows.is_empty(), "{rows:?}");
    let rows = json_lines(&agent(&[
        "snapshot", "--json", "--port", &port, "--addr", "::1",
    ]));
    assert!(rows.is_empty(), "{rows:?}");
    let rows = json_lines(&agent(&[
        "snapshot",
        "--json",
        "--port",
        &port,
        "--addr",
        "127.0.0.0/8",
    ]));
    assert_eq!(rows.len(), 2);
}

#[test]
fn time_wait_has_null_positions_not_zero() {
    let mut c = Conn::open("127.0.0.1:0");
    send(&mut c.client, 10);
    recv(&mut c.server, 10);
    let port = c.server_addr.port().to_string();
    c.client.shutdown(Shutdown::Both).expect("shutdown");
    drop(c.client);
    c.server.shutdown(Shutdown::Both).expect("shutdown");
    let row = wait_for("the client in TIME-WAIT", Duration::from_secs(10), || {
        let rows = json_lines(&agent(&[
            "snapshot",
            "--json",
            "--dport",
            &port,
            "--state",
            "time-wait",
        ]));
        rows.into_iter().next()
    });
    assert_eq!(row["state"], "time_wait");
    for field in [
        "snd_una",
        "snd_nxt",
        "write_seq",
        "rcv_nxt",
        "copied",
        "snd_wnd",
        "notsent",
        "tcp_info",
    ] {
        assert_eq!(
            row[field],
            Value::Null,
            "{field} must be null without tcp_info"
        );
    }
    assert_eq!(row["sendq"], 0);
}

#[test]
fn table_and_pair_views() {
    let mut c = Conn::open("127.0.0.1:0");
    send(&mut c.client, 4321);
    recv(&mut c.server, 4321);
    let port = c.server_addr.port().to_string();
    // Established only: a TIME-WAIT socket an earlier test left on this
    // port number (as its ephemeral port) would be a third row.
    // A row a socket, its positions on a line under it, its windows and
    // timers on the next.
    let table = wait_for(
        "the table to show both ends settled",
        Duration::from_secs(10),
        || {
            let out = agent(&["snapshot", "--port", &port, "--state", "estab"]);
            assert!(out.status.success());
            let t = String::from_utf8_lossy(&out.stdout).into_owned();
            (t.lines().count() == 7 && t.matches("4321").count() >= 2).then_some(t)
        },
    );
    let header = table.lines().next().expect("header");
    for col in [
        "STATE", "LOCAL", "REMOTE", "SENDQ", "RECVQ", "UNSENT", "INFLIGHT",
    ] {
        assert!(header.contains(col), "{col} missing from {header}");
    }
    assert!(table.contains("ESTAB"));
    let lines: Vec<&str> = table.lines().collect();
    for socket in lines[1..].chunks(3) {
        assert!(socket[0].starts_with("ESTAB"), "{table}");
        assert!(socket[1].starts_with("    snd_una:"), "{table}");
        assert!(socket[2].starts_with("    snd_wnd:"), "{table}");
        for fact in ["snd_nxt:", "write_seq:", "rcv_nxt:", "copied:"] {
            assert!(socket[1].contains(fact), "{fact} missing: {table}");
        }
        for fact in ["rcv_wnd:", "ws:", "rtt:", "retr:0", "probes:0"] {
            assert!(socket[2].contains(fact), "{fact} missing: {table}");
        }
    }
    // The client sent 4321 bytes, the server read them.
    assert!(
        table.contains("snd_una:4321 snd_nxt:4321 write_seq:4321"),
        "the client's positions: {table}"
    );
    assert!(
        table.contains("rcv_nxt:4321 copied:4321"),
        "the server's: {table}"
    );
    for line in table.lines() {
        assert!(line.chars().count() <= 100, "over 100 columns: {line:?}");
    }

    // --wide: every fact a column, a row a socket.
    let out = agent(&["snapshot", "--wide", "--port", &port, "--state", "estab"]);
    let wide = String::from_utf8_lossy(&out.stdout);
    assert_eq!(wide.lines().count(), 3, "header and two rows: {wide}");
    let header = wide.lines().next().expect("header");
    for col in [
        "STATE", "LOCAL", "REMOTE", "SENDQ", "RECVQ", "SND_UNA", "SND_NXT", "RCV_NXT", "SND_WND",
        "RCV_WND", "WS",
    ] {
        assert!(header.contains(col), "{col} missing from {header}");
    }

    let out = agent(&["snapshot", "--pair", "--port", &port, "--state", "estab"]);
    let pair = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = pair.lines().collect();
    assert_eq!(lines.len(), 4, "header, one row, a line each way: {pair}");
    let row = lines[1];
    assert!(
        row.starts_with(&c.client_addr.to_string()),
        "the connecting side is A: {row}"
    );
    assert!(row.contains(&c.server_addr.to_string()));
    assert!(
        lines[2].starts_with("    A→B A snd_una:4321 snd_nxt:4321")
            && lines[2].contains(" B rcv_nxt:4321"),
        "what A sent against what B received: {pair}"
    );
    assert!(lines[3].starts_with("    B→A B snd_una:0"), "{pair}");
    let out = agent(&[
        "snapshot", "--pair", "--wide", "--port", &port, "--state", "estab",
    ]);
    let wide = String::from_utf8_lossy(&out.stdout);
    assert_eq!(wide.lines().count(), 2, "header and one row: {wide}");
    assert!(
        wide.lines().next().is_some_and(|h| h.contains("B.RCV_NXT")),
        "{wide}"
    );

    let rows = json_lines(&agent(&[
        "snapshot", "--pair", "--json", "--port", &port, "--state", "estab",
    ]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["a"]["snd_una"], 4321);
    assert_eq!(rows[0]["b"]["rcv_nxt"], 4321);
}

#[test]
fn bad_flags_name_themselves() {
    let out = agent(&["snapshot", "--state", "sleepy"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--state") && err.contains("sleepy"), "{err}");

    let out = agent(&["snapshot", "--addr", "10.0.0.0/99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--addr"));

    let out = agent(&["snapshot", "--netns", "tcpstall-no-such-namespace"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/run/netns/tcpstall-no-such-namespace"),
        "{err}"
    );
}

#[test]
fn a_bad_machine_id_names_its_flag_before_anything_starts() {
    for bad in ["", "two words", "caf\u{e9}"] {
        let out = agent(&[
            "run",
            "--collector",
            "http://127.0.0.1:9",
            "--machine-id",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--machine-id"), "{bad:?}: {err}");
    }
}
