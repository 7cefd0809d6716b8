//! No secret leaves a host (issue 21): a process holding a stuck socket
//! has a password, an API key and a URL with a password in its arguments;
//! what reaches the collector, its store and `tcpstall show --json` has
//! them masked, and the rest of its command line as it was.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use tcpstall_tests::{binary, wait_for, AgentProcess, CollectorProcess};

/// Episode `id` as `tcpstall show --json` prints it.
fn shown_command(url: &str, id: i64) -> serde_json::Value {
    let out = Command::new(binary("tcpstall"))
        .args(["--collector", url, "--json", "show", &id.to_string()])
        .env_remove("TCPSTALL_COLLECTOR")
        .output()
        .expect("run tcpstall show");
    assert!(
        out.status.success(),
        "tcpstall show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn a_stuck_process_with_secrets_in_its_arguments_reaches_show_scrubbed() {
    let collector = CollectorProcess::start(&["--threshold", "2s"]);
    let url = collector.url();
    let host = format!("scrub-{}", std::process::id());
    let _agent = AgentProcess::start(
        &url,
        &[
            "--host",
            &host,
            "--interval",
            "300ms",
            "--backoff-max",
            "500ms",
        ],
    );
    // The peer: accepts and never reads.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let to = listener.local_addr().expect("addr").to_string();
    let mut sender = Command::new(binary("tcpstall-test-sender"))
        .args([
            "--connect",
            &to,
            "--db-password=hunter2",
            "--api-key",
            "AKIA123SECRET",
            "--dsn",
            "postgres://app:s3cret@db.internal/prod",
            "--port",
            "8080",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the sender");
    let (_peer, _) = listener.accept().expect("accept");
    let mut line = String::new();
    BufReader::new(sender.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the sender's address");
    let local: SocketAddr = line
        .trim()
        .strip_prefix("held ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {line:?}"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let id = wait_for("the sender's episode", Duration::from_secs(20), || {
        rt.block_on(super::e2e::list(&url))
            .into_iter()
            .find(|e| {
                tcpstall_proto::convert::flow_from_wire(e.a_flow.as_ref())
                    .is_ok_and(|f| f.local == local)
            })
            .map(|e| e.id)
    });
    let shown = shown_command(&url, id);
    let owner = &shown["peer"]["a"]["owner"];
    assert_eq!(
        owner["pid"].as_u64(),
        Some(u64::from(sender.id())),
        "{shown:#}"
    );
    let command = owner["command"].as_str().unwrap_or_default();
    assert!(
        command.ends_with(&format!(
            "tcpstall-test-sender --connect {to} --db-password=******** --api-key ******** \
             --dsn postgres://app:********@db.internal/prod --port 8080"
        )),
        "{command}"
    );
    // Nowhere in what the operator sees, nor in the store.
    let all = shown.to_string();
    for secret in ["hunter2", "AKIA123SECRET", "s3cret"] {
        assert!(!all.contains(secret), "{secret} in {all}");
    }
    let mut db = Vec::new();
    std::fs::File::open(&collector.db)
        .and_then(|mut f| f.read_to_end(&mut db))
        .expect("read the database");
    let wal = collector.db.with_extension("db-wal");
    if let Ok(mut f) = std::fs::File::open(&wal) {
        f.read_to_end(&mut db).expect("read the WAL");
    }
    for secret in ["hunter2", "AKIA123SECRET", "s3cret"] {
        let found = db.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{secret} stored by the collector");
    }
    drop(sender.stdin.take());
    let _ = sender.wait();
}
