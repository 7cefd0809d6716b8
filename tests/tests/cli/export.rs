//! `tcpstall export` against a real collector whose SQLite file holds more
//! episodes than one page: every episode exported once, in both formats,
//! `--since` cutting at the right place.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tcpstall_collector::store::{EpisodeEnd, NewEpisode, SqliteStore, Store, StoreConfig};
use tcpstall_common::time::unix_ms;
use tcpstall_common::FlowTuple;
use tcpstall_proto::v1::{self, query_client::QueryClient};
use tcpstall_tests::fake::{batch, connect, hello, stuck, suspect};
use tcpstall_tests::{binary, CollectorProcess};

/// Episodes that started three hours ago, and ended.
const OLD: i64 = 700;
/// Episodes that started in the last minutes (left open: the collector's
/// start ends them as `collector_restart`).
const RECENT: i64 = 500;

fn export(url: &str, args: &[&str]) -> Output {
    Command::new(binary("tcpstall"))
        .args(["--collector", url, "export"])
        .args(args)
        .env_remove("TCPSTALL_COLLECTOR")
        .output()
        .expect("run tcpstall export")
}

fn new_episode(id: i64, i: i64, started_at_ms: i64) -> NewEpisode {
    let port = u16::try_from(20_000 + i).expect("port");
    let a_flow = FlowTuple::new(
        std::net::SocketAddr::from(([198, 18, 5, 1], port)),
        std::net::SocketAddr::from(([198, 18, 5, 2], 443)),
    );
    NewEpisode {
        id,
        diagnosis: "peer_unmonitored".into(),
        summary: format!("episode {i}, \"quoted\", with commas"),
        evidence: BTreeMap::from([("a_sendq".to_string(), 4096)]),
        basis: Default::default(),
        started_at_ms,
        duration_ms: 12_000,
        stuck_bytes: 4096,
        a_host: "fixture".into(),
        a_netns: "host".into(),
        a_flow,
        a_cookie: u64::try_from(i).expect("cookie"),
        b_host: None,
        peer_note: Some("nobody monitors 198.18.5.2".into()),
        via: None,
    }
}

/// Writes the fixture episodes into `db`; returns (old ids, recent ids).
async fn populate(db: &Path) -> (HashSet<i64>, HashSet<i64>) {
    let (store, thread, next) = SqliteStore::open(StoreConfig::new(db)).expect("open the store");
    let now = unix_ms(SystemTime::now());
    let (mut old, mut recent) = (HashSet::new(), HashSet::new());
    for i in 0..OLD + RECENT {
        let id = next + i;
        let started = if i < OLD {
            now - 3 * 3600 * 1000 + i * 1000
        } else {
            now - 10 * 60 * 1000 + (i - OLD) * 100
        };
        assert!(store.open_episode(new_episode(id, i, started)), "queued");
        if i < OLD {
            let end = EpisodeEnd {
                ended_at_ms: started + 12_000,
                end_reason: "moved".into(),
                duration_ms: 12_000,
            };
            assert!(store.close_episode(id, end), "queued");
            old.insert(id);
        } else {
            recent.insert(id);
        }
    }
    store.flush().await.expect("written");
    store.shutdown().await;
    thread.join().expect("store thread ends");
    (old, recent)
}

/// The ids of a JSON-lines export; every line must parse.
fn jsonl_ids(o: &Output) -> Vec<i64> {
    assert!(
        o.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            for key in [
                "id",
                "diagnosis",
                "open",
                "started_at",
                "duration_s",
                "peer",
            ] {
                assert!(v.get(key).is_some(), "{key} missing: {l}");
            }
            v["id"].as_i64().expect("numeric id")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_pages_through_every_episode_in_jsonl_and_csv() {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let (old, recent) = populate(&dir.path().join("tcpstall.db")).await;
    let collector = CollectorProcess::start_in(dir.clone(), "127.0.0.1:0", &["--threshold", "1s"]);
    let url = collector.url();

    // One episode open now, from a hand-driven agent.
    let lone = FlowTuple::new(
        "198.18.7.1:9000".parse().expect("a"),
        "203.0.113.9:5000".parse().expect("b"),
    );
    let live = connect(&url, hello("live", &["198.18.7.1"]))
        .await
        .expect("agent stream");
    live.tx
        .send(batch(
            Duration::from_secs(10),
            vec![suspect(&stuck(lone, 31, 1500))],
        ))
        .await
        .expect("send");
    let mut q = QueryClient::connect(url.clone()).await.expect("query");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let open_id = loop {
        let open = q
            .list_episodes(v1::ListEpisodesRequest {
                open_only: true,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner()
            .episodes;
        if let Some(e) = open.first() {
            break e.id;
        }
        assert!(tokio::time::Instant::now() < deadline, "no open episode");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // 1,201: more than two of the CLI's pages of 500.
    let total = old.len() + recent.len() + 1;

    // Everything: more than one page, each episode once.
    let all = jsonl_ids(&export(&url, &["--format", "jsonl"]));
    assert_eq!(all.len(), total, "one line per episode");
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), total, "ids unique");
    assert!(old.is_subset(&unique) && recent.is_subset(&unique));
    assert!(unique.contains(&open_id), "open episodes too");

    // --since: the last hour holds the recent ones and the open one only.
    let since: HashSet<i64> = jsonl_ids(&export(&url, &["--since", "1h"]))
        .into_iter()
        .collect();
    let mut want = recent.clone();
    want.insert(open_id);
    assert_eq!(since, want, "--since 1h");

    // --samples: each episode's stored samples nested, with the fields of
    // an end; the fixture episodes have none, the live one has A's.
    let o = export(&url, &["--since", "1h", "--samples"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), want.len());
    for line in &lines {
        let samples = line["samples"].as_array().expect("samples array");
        if line["id"] == open_id {
            let a = samples.first().expect("the live episode's samples");
            assert_eq!(a["side"], "a");
            assert_eq!(a["host"], "live");
            assert_eq!(a["local"], "198.18.7.1:9000");
            assert_eq!(a["sendq"], 5000);
            assert!(a["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
        } else {
            assert!(samples.is_empty(), "{line}");
        }
    }
    let o = export(&url, &["--format", "csv", "--samples"]);
    assert_eq!(o.status.code(), Some(2), "--samples is for jsonl");

    // CSV to a file: a header, then as many rows; nothing else left behind.
    let out_dir = tempfile::tempdir().expect("temp dir");
    let path = out_dir.path().join("episodes.csv");
    let path_arg = path.to_str().expect("utf-8 path");
    let o = export(&url, &["--format", "csv", "--output", path_arg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout.is_empty(), "nothing on stdout with --output");
    let mut reader = csv::Reader::from_path(&path).expect("csv file");
    let header = reader.headers().expect("header").clone();
    for column in [
        "id",
        "diagnosis",
        "open",
        "started_at",
        "ended_at",
        "a_local",
    ] {
        assert!(header.iter().any(|h| h == column), "{column} in {header:?}");
    }
    let id_col = header.iter().position(|h| h == "id").expect("id column");
    let summary_col = header.iter().position(|h| h == "summary").expect("summary");
    let mut csv_ids = HashSet::new();
    for record in reader.records() {
        let record = record.expect("a well-formed row");
        assert_eq!(record.len(), header.len());
        let id: i64 = record[id_col].parse().expect("numeric id");
        assert!(csv_ids.insert(id), "{id} twice");
        if old.contains(&id) {
            assert!(record[summary_col].contains("\"quoted\", with commas"));
        }
    }
    assert_eq!(csv_ids, unique, "the same episodes as JSON lines");
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .expect("read dir")
        .map_while(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("episodes.csv")]);

    // A format that does not exist names the flag; usage exit code.
    let o = export(&url, &["--format", "xml"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--format") && err.contains("xml"), "{err}");
    drop(live);
}

#[test]
fn export_from_an_unreachable_collector_fails_clearly() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("never.jsonl");
    let url = format!("http://127.0.0.1:{port}");
    let o = export(&url, &["--output", path.to_str().expect("utf-8 path")]);
    assert_eq!(o.status.code(), Some(3), "the unreachable exit code");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot reach the collector"), "{err}");
    assert!(!path.exists(), "no file from a failed export");
}
