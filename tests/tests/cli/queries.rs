//! report, episodes, show and diff against a real collector whose episodes
//! come from exact, hand-made samples over real gRPC.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tcpstall_common::{FlowTuple, TimerKind};
use tcpstall_proto::convert;
use tcpstall_proto::v1;
use tcpstall_tests::fake::{batch, connect, hello, stuck, suspect};
use tcpstall_tests::{binary, CollectorProcess};

fn cli(url: &str, args: &[&str]) -> Output {
    Command::new(binary("tcpstall"))
        .args(["--collector", url])
        .args(args)
        .env_remove("TCPSTALL_COLLECTOR")
        .output()
        .expect("run tcpstall")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two episodes: hostx's flow to hosty, whose receiver is not reading
/// (peer_not_reading), and alpha's flow to an address nobody monitors.
/// The container B's reader runs in.
const CONTAINER: &str = "4f6bd4a5e0c0a9d8b7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4";

async fn stored_episodes(url: &str) -> (i64, i64) {
    let xy = FlowTuple::new(
        "198.18.9.1:8080".parse().expect("a"),
        "198.18.9.2:41000".parse().expect("b"),
    );
    let mut a = stuck(xy, 11, 0);
    a.pos.snd_wnd = Some(0);
    a.pos.notsent = Some(a.pos.sendq);
    a.pos.inflight = Some(0);
    a.pos.snd_nxt = a.pos.snd_una;
    a.timer = Some(TimerKind::ZeroWindowProbe);
    a.retransmits = Some(0);
    a.backoff = Some(0);
    let mut b = stuck(xy.reversed(), 12, 0);
    b.pos.sendq = 0;
    b.pos.notsent = Some(0);
    b.pos.inflight = Some(0);
    b.pos.snd_nxt = b.pos.snd_una;
    b.pos.write_seq = b.pos.snd_una;
    b.pos.rcv_nxt = a.pos.snd_una;
    b.pos.recvq = 6000;
    b.pos.copied = a.pos.snd_una.map(|r| r - 6000);
    b.pos.rcv_wnd = Some(0);
    // B's reader runs in a container.
    b.owner = Some(Box::new(tcpstall_common::ProcessOwner {
        pid: 4242,
        command: "java -jar app.jar".into(),
        unit: Some(format!("docker-{CONTAINER}.scope")),
        cgroup: Some(format!("/system.slice/docker-{CONTAINER}.scope")),
    }));
    let x = connect(url, hello("hostx", &["198.18.9.1"]))
        .await
        .expect("x");
    let y = connect(url, hello("hosty", &["198.18.9.2"]))
        .await
        .expect("y");
    x.tx.send(batch(Duration::from_secs(100), vec![suspect(&a)]))
        .await
        .expect("send");
    // As a real agent would: y answers the collector's watch request.
    let mut y = y;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, y.rx.message())
            .await
            .expect("a watch request in time");
        if let Ok(Some(v1::CollectorMessage {
            body: Some(v1::collector_message::Body::Watch(w)),
        })) = m
        {
            assert_eq!(convert::flow_from_wire(w.flow.as_ref()), Ok(xy.reversed()));
            break;
        }
    }
    y.tx.send(batch(
        Duration::from_secs(50),
        vec![convert::sample_to_wire(&b, v1::SampleReason::Watched)],
    ))
    .await
    .expect("send");
    a.unchanged_ms = 1500;
    x.tx.send(batch(Duration::from_millis(101_500), vec![suspect(&a)]))
        .await
        .expect("send");

    let lone = FlowTuple::new(
        "198.18.9.7:9000".parse().expect("a"),
        "203.0.113.5:5000".parse().expect("b"),
    );
    let z = connect(url, hello("alpha", &["198.18.9.7"]))
        .await
        .expect("alpha");
    z.tx.send(batch(
        Duration::from_secs(10),
        vec![suspect(&stuck(lone, 21, 1500))],
    ))
    .await
    .expect("send");

    // Wait until both are stored and the first is diagnosed from both ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = cli(url, &["--json", "episodes"]);
        let eps: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let list = eps.as_array().cloned().unwrap_or_default();
        let find = |d: &str| {
            list.iter()
                .find(|e| e["diagnosis"] == d)
                .and_then(|e| e["id"].as_i64())
        };
        if let (Some(p), Some(u)) = (find("peer_not_reading"), find("peer_unmonitored")) {
            // Keep the streams open while the caller looks.
            std::mem::forget((x, y, z));
            return (p, u);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "episodes not stored: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/cli/golden")
        .join(name);
    if std::env::var_os("TCPSTALL_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, want,
        "{name} differs from its golden file; TCPSTALL_BLESS=1 rewrites it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_episodes_show_diff_and_json() {
    let collector = CollectorProcess::start(&["--threshold", "1s"]);
    let url = collector.url();
    let (pnr, lone) = stored_episodes(&url).await;

    // report: text, exit 5 because pairs are stuck.
    let o = cli(&url, &["report"]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = text(&o);
    for needle in [
        "A (stuck sender)",
        "B (peer)",
        "hostx 198.18.9.1:8080",
        "hosty 198.18.9.2:41000",
        "peer_not_reading",
        "look at: B's application",
        "peer_unmonitored",
        "? 203.0.113.5:5000",
    ] {
        assert!(r.contains(needle), "`{needle}` missing from report:\n{r}");
    }
    assert!(
        r.lines().all(|l| l.chars().count() <= 200),
        "report rows stay readable:\n{r}"
    );
    assert!(!r.contains('\x1b'), "no colour when not on a terminal");

    // report --json: the documented schema.
    let o = cli(&url, &["--json", "report"]);
    let eps: Value = serde_json::from_slice(&o.stdout).expect("json");
    let e = eps
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == pnr))
        .expect("episode in report");
    for key in [
        "id",
        "diagnosis",
        "open",
        "started_at",
        "duration_s",
        "stuck",
        "peer",
    ] {
        assert!(e.get(key).is_some(), "{key} missing: {e}");
    }
    assert_eq!(e["stuck"], 5000);
    assert_eq!(e["open"], true);
    assert!(e["started_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    // Both ends of an untranslated flow share one Community ID.
    let id = e["peer"]["a"]["community_id"].as_str().unwrap_or_default();
    assert!(id.starts_with("1:") && id.len() == 30, "{id:?}");
    assert_eq!(
        e["peer"]["b"]["community_id"],
        e["peer"]["a"]["community_id"]
    );
    assert_eq!(e["peer"]["b"]["container"]["runtime"], "docker");
    assert_eq!(e["peer"]["b"]["container"]["id"], CONTAINER);
    assert!(
        e["peer"]["a"]["container"].is_null(),
        "A's owner unknown: {e}"
    );
    for side in ["a", "b"] {
        for key in [
            "host",
            "local",
            "remote",
            "community_id",
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
        ] {
            assert!(
                e["peer"][side].get(key).is_some(),
                "peer.{side}.{key} missing: {e}"
            );
        }
    }
    assert_eq!(e["peer"]["a"]["host"], "hostx");
    assert_eq!(e["peer"]["b"]["host"], "hosty");
    assert_eq!(e["peer"]["b"]["recvq"], 6000);
    assert_eq!(e["peer"]["a"]["snd_una"], e["peer"]["b"]["rcv_nxt"]);
    let l = eps
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == lone))
        .expect("lone episode");
    assert_eq!(
        l["peer"]["b"],
        Value::Null,
        "an unmonitored peer has no end"
    );

    // Filters.
    let only = |args: &[&str]| -> Vec<i64> {
        let mut all = vec!["--json", "episodes"];
        all.extend_from_slice(args);
        let v: Value = serde_json::from_slice(&cli(&url, &all).stdout).expect("json");
        v.as_array()
            .map(|a| a.iter().filter_map(|e| e["id"].as_i64()).collect())
            .unwrap_or_default()
    };
    assert_eq!(only(&["--diagnosis", "peer_unmonitored"]), vec![lone]);
    assert_eq!(
        only(&["--host", "hosty"]),
        vec![pnr],
        "a host filter matches the B end too"
    );
    assert_eq!(only(&["--host", "nobody"]), Vec::<i64>::new());
    let mut both = only(&["--open", "--since", "1h"]);
    both.sort_unstable();
    assert_eq!(both, vec![pnr, lone]);

    // show and diff of the stored episode; the diff is a golden file.
    let o = cli(&url, &["show", &pnr.to_string()]);
    assert!(o.status.success());
    let s = text(&o);
    assert!(
        s.contains(&format!("episode {pnr}  peer_not_reading  open")),
        "{s}"
    );
    assert!(s.contains("b_recvq") && s.contains("6000"), "{s}");
    let flow = tcpstall_common::FlowTuple::new(
        "198.18.9.1:8080".parse().expect("addr"),
        "198.18.9.2:41000".parse().expect("addr"),
    );
    let id = format!("  community id: {}\n", flow.community_id());
    assert!(s.contains(&id), "{id:?} missing in\n{s}");
    assert!(s.contains("  B runs in docker 4f6bd4a5e0c0\n"), "{s}");
    let o = cli(&url, &["diff", &pnr.to_string()]);
    assert!(o.status.success());
    golden("diff_peer_not_reading.txt", &text(&o));

    // A live diff by 4-tuple, in either order: both ends from the agents.
    for args in [
        ["diff", "198.18.9.1:8080", "198.18.9.2:41000"],
        ["diff", "198.18.9.2:41000", "198.18.9.1:8080"],
    ] {
        let o = cli(&url, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let d = text(&o);
        assert!(
            d.contains("hostx 198.18.9.1:8080") && d.contains("hosty 198.18.9.2:41000"),
            "{d}"
        );
    }
    let o = cli(&url, &["diff", "198.18.200.1:1", "198.18.200.2:2"]);
    assert_eq!(o.status.code(), Some(4), "a flow nobody reports");

    // The plot of the stored episode, both formats.
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["e.svg", "e.png"] {
        let path = dir.path().join(name);
        let o = cli(
            &url,
            &[
                "plot",
                &pnr.to_string(),
                "-o",
                path.to_str().expect("utf-8 path"),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let bytes = std::fs::read(&path).expect("plot written");
        if name.ends_with(".png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        } else {
            let svg = String::from_utf8_lossy(&bytes);
            for id in [
                "curve-a-snd-una",
                "curve-a-window-edge",
                "curve-b-rcv-nxt",
                "curve-b-copied",
                "id=\"stall\"",
                "peer_not_reading",
            ] {
                assert!(svg.contains(id), "{id} missing from the plot");
            }
        }
    }

    // Errors a script can tell apart.
    let o = cli(&url, &["show", "999999"]);
    assert_eq!(o.status.code(), Some(4));
    let o = cli(&url, &["report", "--diagnosis", "gremlins"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--diagnosis"));
    let o = cli("http://127.0.0.1:1", &["report"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

#[test]
fn a_collector_with_a_query_token_answers_only_queries_that_carry_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("query.token");
    std::fs::write(&token, "s3cret-token\n").expect("write token");
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "guess\n").expect("write token");
    let collector =
        CollectorProcess::start(&["--query-token-file", token.to_str().expect("utf-8 path")]);
    let url = collector.url();

    let none = cli(&url, &["episodes"]);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(err.contains("token"), "{err}");
    assert!(!err.contains("s3cret"), "the token must not leak: {err}");

    let guessed = cli(
        &url,
        &[
            "--token-file",
            wrong.to_str().expect("utf-8 path"),
            "episodes",
        ],
    );
    assert_eq!(guessed.status.code(), Some(1), "{guessed:?}");

    let right = cli(
        &url,
        &[
            "--token-file",
            token.to_str().expect("utf-8 path"),
            "episodes",
            "--json",
        ],
    );
    assert_eq!(right.status.code(), Some(0), "{right:?}");
    let v: Value = serde_json::from_slice(&right.stdout).expect("json");
    assert!(v.as_array().is_some_and(|a| a.is_empty()), "{v}");

    let missing = cli(&url, &["--token-file", "/nonexistent/token", "episodes"]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
}
