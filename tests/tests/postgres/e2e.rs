//! A real collector process on a PostgreSQL store: a real agent's stalled
//! loopback connection becomes an episode in PostgreSQL, and `tcpstall
//! episodes --json` reads it back through the collector's query service;
//! the password in `--store` never reaches the collector's log.

use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tcpstall_tests::{binary, AgentProcess, CollectorProcess};

use crate::{pg_or_skip, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_on_postgres_stores_a_stall_and_answers_episodes_json() -> TestResult {
    let pg = pg_or_skip!("a_collector_on_postgres");
    // Trust authentication ignores the password; the log must not show it.
    let store = format!(
        "postgres://postgres:hunter2-secret@127.0.0.1:{}/postgres",
        pg.port()
    );
    let collector = CollectorProcess::start(&["--threshold", "2s", "--store", &store]);
    let url = collector.url();
    let host = format!("pg-e2e-{}", std::process::id());
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

    // A connection whose receiver never reads.
    let l = TcpListener::bind("127.0.0.1:0")?;
    let _receiver = TcpStream::connect(l.local_addr()?)?;
    let (mut sender, _) = l.accept()?;
    sender.set_nonblocking(true)?;
    let chunk = vec![7u8; 65536];
    loop {
        match sender.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
    }
    let port = sender.local_addr()?.port();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let episode = loop {
        let out = Command::new(binary("tcpstall"))
            .args(["--collector", &url, "--json", "episodes", "--host", &host])
            .env_remove("TCPSTALL_COLLECTOR")
            .output()?;
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let found = list.as_array().and_then(|a| {
            a.iter()
                .find(|e| {
                    e["peer"]["a"]["local"]
                        .as_str()
                        .is_some_and(|l| l.ends_with(&format!(":{port}")))
                })
                .cloned()
        });
        if let Some(e) = found {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no episode for port {port}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(episode["peer"]["a"]["host"], host.as_str(), "{episode}");
    let id = episode["id"].as_i64().expect("an id");
    assert_eq!(
        pg.psql(
            "postgres",
            &format!("SELECT a_host FROM episodes WHERE id = {id}")
        ),
        host,
        "the episode is PostgreSQL's row"
    );
    assert!(
        collector.logged(&["postgres://postgres:***@127.0.0.1"]),
        "the store is named with its password hidden"
    );
    assert!(!collector.logged(&["hunter2"]), "the password was logged");
    drop(sender);
    Ok(())
}

#[test]
fn a_collector_that_cannot_reach_its_store_says_so_without_the_password() {
    let out = Command::new(binary("tcpstall-collector"))
        .args(["--listen", "127.0.0.1:0", "--store"])
        .arg("postgres://tcpstall:hunter2-secret@127.0.0.1:1/tcpstall")
        .env("RUST_LOG", "debug")
        .output()
        .expect("run tcpstall-collector");
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("tcpstall:***@127.0.0.1:1"), "{text}");
}
