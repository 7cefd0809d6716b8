//! report, show and diff of episodes written straight into a collector's
//! store, at fixed times with exact numbers, as golden files: what the CLI
//! prints of an episode, whatever the matcher would have made of it. One
//! joined directly, one joined through a DNAT on the client's host (issue
//! 23: each end at its own addresses and as the other sees it, the
//! translation named), one whose sender's host masquerades and whose peer
//! no agent covers; and their JSON and CSV.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::{json, Value};
use tcpstall_collector::store::{EpisodeEnd, NewEpisode, StoredSample, VerdictBasis};
use tcpstall_common::record::JoinedVia;
use tcpstall_common::{EndSample, FlowTuple, Side, Translation};
use tcpstall_proto::convert::pack;
use tcpstall_tests::fake::stuck;
use tcpstall_tests::stored::{populate, Stored};
use tcpstall_tests::{binary, CollectorProcess};

/// 2026-01-01T00:00:00Z: every episode starts at a fixed time, so that the
/// text is the same on every run.
const START_MS: i64 = 1_767_225_600_000;

fn cli(url: &str, args: &[&str]) -> Output {
    let o = Command::new(binary("tcpstall"))
        .args(["--collector", url])
        .args(args)
        .env_remove("TCPSTALL_COLLECTOR")
        .env("NO_COLOR", "1")
        .output()
        .expect("run tcpstall");
    assert!(
        o.status.code().is_some_and(|c| c == 0 || c == 5),
        "tcpstall {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
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

fn tuple(local: &str, remote: &str) -> FlowTuple {
    FlowTuple::new(
        local.parse().expect("test address"),
        remote.parse().expect("test address"),
    )
}

/// A stalled reader's pair: A (the sender, at `a`) holds 5000 bytes with
/// the window shut; B (at `b`, its own view) has them all unread.
fn not_reading(a: FlowTuple, b: FlowTuple) -> (EndSample, EndSample) {
    let mut sa = stuck(a, 11, 12_000);
    sa.pos.snd_wnd = Some(0);
    sa.pos.notsent = Some(sa.pos.sendq);
    sa.pos.inflight = Some(0);
    sa.pos.snd_nxt = sa.pos.snd_una;
    let mut sb = stuck(b, 12, 0);
    sb.pos.sendq = 0;
    sb.pos.notsent = Some(0);
    sb.pos.inflight = Some(0);
    sb.pos.snd_nxt = sb.pos.snd_una;
    sb.pos.write_seq = sb.pos.snd_una;
    sb.pos.rcv_nxt = sa.pos.snd_una;
    sb.pos.recvq = 6000;
    sb.pos.copied = sa.pos.snd_una.map(|r| r - 6000);
    sb.pos.rcv_wnd = Some(0);
    (sa, sb)
}

/// A stalled reader, `n` minutes after [`START_MS`], A on `a_host`, B on
/// `b_host`.
fn stalled_reader(n: i64, a_host: &str, b_host: &str, a: EndSample, b: EndSample) -> Stored {
    let started_at_ms = START_MS + n * 60_000;
    let sample = |side, host: &str, at_ms, s: &EndSample| StoredSample {
        side,
        host: host.into(),
        at_ms,
        sample: pack(s),
    };
    Stored {
        episode: NewEpisode {
            id: 0,
            diagnosis: "peer_not_reading".into(),
            summary: format!("{b_host} is not reading: 6000 bytes unread, window 0"),
            evidence: BTreeMap::from([
                ("a_snd_una".to_string(), 10_000),
                ("b_rcv_nxt".to_string(), 10_000),
                ("b_recvq".to_string(), 6000),
            ]),
            // As a 5.4-6.1 kernel's verdict: no rcv_wnd, B's buffer full.
            basis: VerdictBasis {
                rested_on: vec!["a_snd_wnd".into(), "b_rmem_alloc".into(), "b_rcvbuf".into()],
                missing: vec!["b_rcv_wnd".into()],
            },
            started_at_ms,
            duration_ms: 12_000,
            stuck_bytes: a.pos.sendq,
            a_host: a_host.into(),
            a_netns: a.netns.clone(),
            a_flow: a.flow,
            a_cookie: a.cookie,
            b_host: Some(b_host.into()),
            peer_note: None,
            via: None,
        },
        samples: vec![
            sample(Side::A, a_host, started_at_ms + 10_000, &a),
            sample(Side::B, b_host, started_at_ms + 10_000, &b),
        ],
        end: Some(EpisodeEnd {
            ended_at_ms: started_at_ms + 20_000,
            end_reason: "moved".into(),
            duration_ms: 20_000,
        }),
    }
}

/// A server (web-1) whose client (client-1) stopped reading, joined
/// directly: the client's 4-tuple is the server's reversed.
fn direct() -> Stored {
    let a = tuple("198.18.20.1:8080", "198.18.20.2:41000");
    let (sa, sb) = not_reading(a, a.reversed());
    stalled_reader(0, "web-1", "client-1", sa, sb)
}

/// A server (web-2) whose client (client-2) stopped reading, the client
/// having dialled a service address its own host DNATs to the server, as
/// kube-proxy does: the client's conntrack entry joined the two.
fn dnat() -> Stored {
    let client = tuple("10.0.0.1:40000", "10.96.0.10:80");
    let server = tuple("10.1.0.7:8080", "10.0.0.1:40000");
    let entry = Translation {
        original: client,
        reply: server,
        src_nat: false,
        dst_nat: true,
    };
    let (sa, mut sb) = not_reading(server, client);
    sb.translation = Some(Box::new(entry));
    let mut e = stalled_reader(1, "web-2", "client-2", sa, sb);
    e.episode.via = Some(JoinedVia {
        host: "client-2".into(),
        translation: entry,
    });
    e
}

/// A client (laptop-3) sending to an address no agent covers, its host
/// masquerading the connection to another source: A's own conntrack entry
/// is all there is.
fn masqueraded() -> Stored {
    let a = tuple("192.168.1.5:50000", "203.0.113.7:443");
    let mut sa = stuck(a, 31, 12_000);
    sa.translation = Some(Box::new(Translation {
        original: a,
        reply: tuple("203.0.113.7:443", "198.51.100.1:61000"),
        src_nat: true,
        dst_nat: false,
    }));
    let started_at_ms = START_MS + 2 * 60_000;
    Stored {
        episode: NewEpisode {
            id: 0,
            diagnosis: "peer_unmonitored".into(),
            summary: "no agent covers 203.0.113.7: A's side only".into(),
            evidence: BTreeMap::from([("a_sendq".to_string(), 5000)]),
            basis: Default::default(),
            started_at_ms,
            duration_ms: 12_000,
            stuck_bytes: sa.pos.sendq,
            a_host: "laptop-3".into(),
            a_netns: sa.netns.clone(),
            a_flow: a,
            a_cookie: sa.cookie,
            b_host: None,
            peer_note: Some("no agent covers 203.0.113.7".into()),
            via: None,
        },
        samples: vec![StoredSample {
            side: Side::A,
            host: "laptop-3".into(),
            at_ms: started_at_ms + 10_000,
            sample: pack(&sa),
        }],
        end: Some(EpisodeEnd {
            ended_at_ms: started_at_ms + 20_000,
            end_reason: "moved".into(),
            duration_ms: 20_000,
        }),
    }
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_episodes_print_as_their_golden_files() {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let ids = populate(
        &dir.path().join("tcpstall.db"),
        vec![direct(), dnat(), masqueraded()],
    )
    .await;
    // Kept however old the fixed times get.
    let collector = CollectorProcess::start_in(dir, "127.0.0.1:0", &["--retention", "36500days"]);
    let url = collector.url();
    let report = |host| cli(&url, &["report", "--since", "36500days", "--host", host]);

    // Joined directly: as before NAT joins were printed.
    let direct = ids[0].to_string();
    golden("show_direct.txt", &text(&cli(&url, &["show", &direct])));
    golden("diff_direct.txt", &text(&cli(&url, &["diff", &direct])));
    golden("report_direct.txt", &text(&report("web-1")));
    let e = json(&cli(&url, &["--json", "show", &direct]));
    assert_eq!(e["via"], Value::Null, "{e}");
    assert_eq!(e["peer"]["a"]["translation"], Value::Null, "{e}");
    assert_eq!(e["peer"]["b"]["translation"], Value::Null, "{e}");

    // Joined through the client's DNAT.
    let dnat = ids[1].to_string();
    golden("show_dnat.txt", &text(&cli(&url, &["show", &dnat])));
    golden("diff_dnat.txt", &text(&cli(&url, &["diff", &dnat])));
    golden("report_dnat.txt", &text(&report("web-2")));
    let entry = json!({
        "original": {"src": "10.0.0.1:40000", "dst": "10.96.0.10:80"},
        "reply": {"src": "10.1.0.7:8080", "dst": "10.0.0.1:40000"},
        "src_nat": false,
        "dst_nat": true,
    });
    let mut via = entry.clone();
    via["host"] = json!("client-2");
    let e = json(&cli(&url, &["--json", "show", &dnat]));
    assert_eq!(e["via"], via, "{e}");
    let (a, b) = (&e["peer"]["a"], &e["peer"]["b"]);
    assert_eq!(
        (&a["local"], &a["remote"]),
        (&json!("10.1.0.7:8080"), &json!("10.0.0.1:40000"))
    );
    assert_eq!(
        (&b["local"], &b["remote"]),
        (&json!("10.0.0.1:40000"), &json!("10.96.0.10:80")),
        "B at its own addresses: {e}"
    );
    assert_ne!(
        a["community_id"], b["community_id"],
        "translated between them"
    );
    assert_eq!(b["translation"], entry, "{e}");
    assert_eq!(a["translation"], Value::Null, "{e}");
    // The same in report's JSON, and in export's lines and rows.
    let listed = json(&cli(
        &url,
        &[
            "--json",
            "report",
            "--since",
            "36500days",
            "--host",
            "web-2",
        ],
    ));
    assert_eq!(listed[0]["via"], via, "{listed}");
    let lines = text(&cli(&url, &["export", "--samples"]));
    let exported: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let x = exported
        .iter()
        .find(|x| x["id"] == ids[1])
        .expect("exported");
    assert_eq!(x["via"], via);
    let samples = x["samples"].as_array().cloned().unwrap_or_default();
    let of = |side: &str| samples.iter().find(|s| s["side"] == side).cloned();
    assert_eq!(of("b").map(|s| s["translation"].clone()), Some(entry));
    assert_eq!(of("a").map(|s| s["translation"].clone()), Some(Value::Null));
    let o = cli(&url, &["export", "--format", "csv"]);
    let mut rows = csv::Reader::from_reader(&*o.stdout);
    let header = rows.headers().expect("header").clone();
    let row = rows
        .records()
        .map(|r| r.expect("row"))
        .find(|r| r.get(0) == Some(dnat.as_str()))
        .expect("the DNAT's row");
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| row.get(i))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        (
            col("a_local"),
            col("b_local"),
            col("b_remote"),
            col("via_host")
        ),
        (
            "10.1.0.7:8080".into(),
            "10.0.0.1:40000".into(),
            "10.96.0.10:80".into(),
            "client-2".into()
        )
    );
    assert_eq!(
        col("via"),
        "10.0.0.1:40000 -> 10.96.0.10:80 => 10.1.0.7:8080 -> 10.0.0.1:40000 (dnat)"
    );

    // B unjoined, A's host masquerading: A's entry, no via.
    let masq = ids[2].to_string();
    golden("show_masqueraded.txt", &text(&cli(&url, &["show", &masq])));
    let e = json(&cli(&url, &["--json", "show", &masq]));
    assert_eq!(e["via"], Value::Null, "{e}");
    assert_eq!(e["peer"]["a"]["translation"]["src_nat"], true, "{e}");
    assert_eq!(
        e["peer"]["a"]["translation"]["reply"]["dst"], "198.51.100.1:61000",
        "{e}"
    );
}

/// db-7's application stops reading from two clients at once (one
/// incident), while web-1's client stops reading on its own (another):
/// `report` prints each incident with its pairs beneath, `--flat` one line
/// per pair, `incidents` one line per incident, and the JSON names each
/// episode's incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_stops_reading_from_two_clients_is_one_incident() {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let pair = |n: u8| {
        let a = tuple(&format!("198.18.30.{n}:41000"), "198.18.30.7:5432");
        let (sa, sb) = not_reading(a, a.reversed());
        (sa, sb)
    };
    let (a1, b1) = pair(1);
    let (a2, b2) = pair(2);
    let mut second = stalled_reader(0, "app-2", "db-7", a2, b2);
    // Five seconds later, while the first is held.
    second.episode.started_at_ms += 5_000;
    if let Some(end) = &mut second.end {
        end.ended_at_ms += 5_000;
    }
    let ids = populate(
        &dir.path().join("tcpstall.db"),
        vec![stalled_reader(0, "app-1", "db-7", a1, b1), second, direct()],
    )
    .await;
    let collector = CollectorProcess::start_in(dir, "127.0.0.1:0", &["--retention", "36500days"]);
    let url = collector.url();
    let since = ["--since", "36500days"];

    let mut args = vec!["report"];
    args.extend(since);
    golden("report_incidents.txt", &text(&cli(&url, &args)));
    args.push("--flat");
    golden("report_flat.txt", &text(&cli(&url, &args)));
    let mut args = vec!["incidents"];
    args.extend(since);
    golden("incidents.txt", &text(&cli(&url, &args)));

    let mut args = vec!["--json", "incidents"];
    args.extend(since);
    let incidents = json(&cli(&url, &args));
    let list = incidents.as_array().expect("an array");
    assert_eq!(list.len(), 2, "{incidents:#}");
    let db = list
        .iter()
        .find(|i| i["host"] == "db-7")
        .expect("db-7's incident");
    assert_eq!(db["id"], json!(ids[0]), "named by its first episode");
    assert_eq!(db["episodes"], json!([ids[0], ids[1]]));
    assert_eq!(db["role"], "peer");
    assert_eq!(db["diagnosis"], "peer_not_reading");
    assert_eq!((&db["pairs"], &db["hosts"]), (&json!(2), &json!(2)));
    assert_eq!(db["title"], "db-7 not reading from 2 hosts (2 pairs)");
    assert_eq!(db["stuck"], json!(10_000));
    assert_eq!(db["started_at"], "2026-01-01T00:00:00Z");
    assert_eq!(
        db["ended_at"], "2026-01-01T00:00:25Z",
        "the later one's end"
    );
    assert_eq!(db["open"], false);

    // Every episode's JSON names its incident: in a report, in the
    // history, and shown alone.
    for cmd in ["report", "episodes"] {
        let mut args = vec!["--json", cmd];
        args.extend(since);
        let eps = json(&cli(&url, &args));
        let incident_of = |id: i64| {
            eps.as_array()
                .and_then(|l| l.iter().find(|e| e["id"] == json!(id)))
                .map(|e| e["incident"].clone())
        };
        assert_eq!(incident_of(ids[0]), Some(json!(ids[0])), "{cmd}: {eps:#}");
        assert_eq!(incident_of(ids[1]), Some(json!(ids[0])), "{cmd}: {eps:#}");
        assert_eq!(incident_of(ids[2]), Some(json!(ids[2])), "{cmd}: alone");
    }
    let shown = json(&cli(&url, &["--json", "show", &ids[1].to_string()]));
    assert_eq!(shown["incident"], json!(ids[0]), "{shown:#}");
    let shown = text(&cli(&url, &["show", &ids[1].to_string()]));
    assert!(
        shown.contains(&format!(
            "Part of incident #{} (2 pairs): db-7 not reading from 2 hosts (2 pairs)",
            ids[0]
        )),
        "{shown}"
    );
    let alone = text(&cli(&url, &["show", &ids[2].to_string()]));
    assert!(!alone.contains("incident"), "{alone}");
}

/// A server whose process has a 300-character command line (a JVM's, say)
/// and a long unit name: `diff` fits 100 columns, the command cut with
/// `…`, what each fact means on the line beneath; `--wide` and `--json`
/// keep it whole. So do `episodes` and `report`'s tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_character_command_line_fits_100_columns() {
    let command = format!(
        "/usr/lib/jvm/java-17-openjdk-amd64/bin/java -Xms4g -Xmx4g -XX:+UseG1GC {} -jar /opt/orders/orders-service.jar",
        (0..20)
            .map(|i| format!("-Dorders.shard.{i}=on"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let command: String = command
        .chars()
        .chain(std::iter::repeat('x'))
        .take(300)
        .collect();
    assert_eq!(command.chars().count(), 300);
    let a = tuple("198.18.21.1:8443", "198.18.21.2:52000");
    let (mut sa, sb) = not_reading(a, a.reversed());
    sa.owner = Some(Box::new(tcpstall_common::ProcessOwner {
        pid: 4242,
        command: command.clone(),
        unit: Some("orders-service-with-a-rather-long-unit-name@primary.service".into()),
        cgroup: None,
    }));
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let ids = populate(
        &dir.path().join("tcpstall.db"),
        vec![stalled_reader(
            0,
            "orders-1.prod.eu-west-1.example.com",
            "client-7.prod.eu-west-1.example.com",
            sa,
            sb,
        )],
    )
    .await;
    let collector = CollectorProcess::start_in(dir, "127.0.0.1:0", &["--retention", "36500days"]);
    let url = collector.url();
    let id = ids[0].to_string();

    let fits = |what: &str, out: &str| {
        for line in out.lines() {
            assert!(
                line.chars().count() <= 100,
                "{what}: a line of {} columns: {line}",
                line.chars().count()
            );
        }
    };
    let diff = text(&cli(&url, &["diff", &id]));
    golden("diff_long_command.txt", &diff);
    fits("diff", &diff);
    assert!(
        diff.contains("/usr/lib/jvm/java-17"),
        "the command's start: {diff}"
    );
    assert!(diff.contains('…'), "the command cut: {diff}");
    assert!(
        diff.contains("    → B's window is closed: A may not send"),
        "the meaning beneath its fact: {diff}"
    );
    let wide = text(&cli(&url, &["--wide", "diff", &id]));
    assert!(
        wide.contains(&command),
        "--wide keeps the command whole: {wide}"
    );
    assert!(wide.lines().any(|l| l.chars().count() > 300), "{wide}");
    let e = json(&cli(&url, &["--json", "diff", &id]));
    assert_eq!(e["a"]["owner"]["command"], command.as_str(), "{e}");
    let since = ["--since", "36500days"];
    for args in [&["episodes"][..], &["report"][..]] {
        let args: Vec<&str> = args.iter().chain(&since).copied().collect();
        let out = text(&cli(&url, &args));
        // The table: from its header (report prints its incident first) to
        // the first empty line.
        let table: String = out
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("ID "))
            .take_while(|l| !l.is_empty())
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!table.is_empty(), "{}: no table in {out}", args[0]);
        fits(args[0], &table);
        assert!(
            table.contains('…'),
            "{}: the long host cut: {table}",
            args[0]
        );
    }
}
