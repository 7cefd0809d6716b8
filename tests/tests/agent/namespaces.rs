//! Connections inside a namespace the test created, read with --netns.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tcpstall_agent::netns::{self, NetnsSpec};
use tcpstall_common::TcpState;
use tcpstall_tests::{binary, find, poll, require_root, wait_for, TestNetns};

use crate::{recv, send, Conn};

fn snapshot_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new(binary("tcpstall-agent"))
        .arg("snapshot")
        .arg("--json")
        .args(args)
        .output()
        .expect("run tcpstall-agent");
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

fn has(rows: &[Value], local: SocketAddr, remote: SocketAddr) -> bool {
    rows.iter().any(|r| {
        r["local"] == Value::String(local.to_string())
            && r["remote"] == Value::String(remote.to_string())
    })
}

#[test]
fn connection_in_a_test_namespace_is_seen_with_netns() {
    require_root!();
    let ns = TestNetns::new("snap");
    let mut c = ns.enter(|| Conn::open("127.0.0.1:0"));
    send(&mut c.client, 777);
    recv(&mut c.server, 777);
    let listen_addr = c.server_addr;

    // The library, pointed at the namespace by name.
    let spaces = netns::resolve(&[NetnsSpec::Named(ns.name.clone())]).expect("resolve");
    let inode = spaces[0].inode;
    let all = wait_for(
        "both ends inside the namespace",
        Duration::from_secs(10),
        || {
            let all = poll(spaces.clone());
            let a = find(&all, c.client_addr, c.server_addr)?;
            (a.wqueue == 0).then_some(all)
        },
    );
    let a = find(&all, c.client_addr, c.server_addr).expect("client end");
    let b = find(&all, c.server_addr, c.client_addr).expect("server end");
    assert_eq!((a.netns, b.netns), (inode, inode));
    assert_eq!(a.positions().snd_una, Some(777));
    assert_eq!(b.positions().rcv_nxt, Some(777));
    assert!(
        all.iter()
            .all(|s| s.state != TcpState::Listen && s.remote.port() != 0),
        "listeners are never connections: {all:?}"
    );
    assert_eq!(
        all.len(),
        2,
        "the namespace holds exactly our connection: {all:?}"
    );

    // The binary, by name and by path: labelled with the namespace.
    for spec in [ns.name.clone(), ns.path().display().to_string()] {
        let rows = snapshot_json(&["--netns", &spec]);
        assert!(has(&rows, c.client_addr, c.server_addr), "{rows:?}");
        assert!(has(&rows, c.server_addr, c.client_addr), "{rows:?}");
        assert!(
            rows.iter()
                .all(|r| r["netns"] == Value::String(ns.name.clone())),
            "{rows:?}"
        );
        assert!(rows.iter().all(|r| r["state"] != "listen"));
        assert!(!rows
            .iter()
            .any(|r| r["local"] == Value::String(listen_addr.to_string())
                && r["remote"].as_str().is_some_and(|s| s.ends_with(":0"))));
    }

    // `all` includes it next to this namespace; the default does not.
    let rows = snapshot_json(&["--netns", "all"]);
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|r| r["netns"] == Value::String(ns.name.clone()))
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
    let own = snapshot_json(&[]);
    assert!(!own.iter().any(|r| r["netns_inode"] == inode));
}

#[test]
fn pairs_across_two_namespaces() {
    require_root!();
    use std::net::{TcpListener, TcpStream};
    let (x, y) = (TestNetns::new("pa"), TestNetns::new("pb"));
    let veth_x = format!("tsx{}", std::process::id() % 100_000);
    let veth_y = format!("tsy{}", std::process::id() % 100_000);
    tcpstall_tests::run(
        "ip",
        &[
            "link", "add", &veth_x, "netns", &x.name, "type", "veth", "peer", "name", &veth_y,
            "netns", &y.name,
        ],
    );
    tcpstall_tests::run(
        "ip",
        &[
            "-n",
            &x.name,
            "addr",
            "add",
            "198.18.0.1/30",
            "dev",
            &veth_x,
        ],
    );
    tcpstall_tests::run(
        "ip",
        &[
            "-n",
            &y.name,
            "addr",
            "add",
            "198.18.0.2/30",
            "dev",
            &veth_y,
        ],
    );
    tcpstall_tests::run("ip", &["-n", &x.name, "link", "set", &veth_x, "up"]);
    tcpstall_tests::run("ip", &["-n", &y.name, "link", "set", &veth_y, "up"]);
    let listener = y.enter(|| TcpListener::bind("198.18.0.2:0").expect("bind"));
    let server = listener.local_addr().expect("addr");
    let client =
        x.enter(|| TcpStream::connect_timeout(&server, Duration::from_secs(5)).expect("connect"));
    let (_accepted, _) = listener.accept().expect("accept");
    let client_addr = client.local_addr().expect("addr");

    let out = Command::new(binary("tcpstall-agent"))
        .args([
            "snapshot", "--pair", "--json", "--netns", &x.name, "--netns", &y.name,
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 1, "one connection, one row: {rows:?}");
    let row = &rows[0];
    assert_eq!(row["a"]["local"], Value::String(client_addr.to_string()));
    assert_eq!(row["a"]["netns"], Value::String(x.name.clone()));
    assert_eq!(row["b"]["local"], Value::String(server.to_string()));
    assert_eq!(row["b"]["netns"], Value::String(y.name.clone()));
    assert_eq!(row["a"]["snd_una"], row["b"]["rcv_nxt"]);
}
