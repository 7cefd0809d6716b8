//! report, show and diff of episodes written straight into a collector's
//! store, at fixed times with exact numbers, as golden files: what the CLI
//! prints of an episode, whatever the matcher would have made of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use tcpstall_collector::store::{
    EpisodeEnd, NewEpisode, SqliteStore, Store, StoreConfig, StoredSample,
};
use tcpstall_common::{EndSample, FlowTuple, Side};
use tcpstall_proto::convert::pack;
use tcpstall_tests::fake::stuck;
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

/// An episode as the store keeps it: the row, both ends' samples, its end.
struct Stored {
    episode: NewEpisode,
    samples: Vec<StoredSample>,
    end: EpisodeEnd,
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
        end: EpisodeEnd {
            ended_at_ms: started_at_ms + 20_000,
            end_reason: "moved".into(),
            duration_ms: 20_000,
        },
    }
}

/// A server (web-1) whose client (client-1) stopped reading, joined
/// directly: the client's 4-tuple is the server's reversed.
fn direct() -> Stored {
    let a = tuple("198.18.20.1:8080", "198.18.20.2:41000");
    let (sa, sb) = not_reading(a, a.reversed());
    stalled_reader(0, "web-1", "client-1", sa, sb)
}

/// Writes `episodes` into a store at `db`; returns their ids.
async fn populate(db: &Path, episodes: Vec<Stored>) -> Vec<i64> {
    let (store, thread, next) = SqliteStore::open(StoreConfig::new(db)).expect("open the store");
    let mut ids = Vec::new();
    for (id, mut e) in (next..).zip(episodes) {
        e.episode.id = id;
        assert!(store.open_episode(e.episode), "queued");
        assert!(store.add_samples(id, e.samples), "queued");
        assert!(store.close_episode(id, e.end), "queued");
        ids.push(id);
    }
    store.flush().await.expect("written");
    store.shutdown().await;
    thread.join().expect("store thread ends");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_episodes_print_as_their_golden_files() {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let ids = populate(&dir.path().join("tcpstall.db"), vec![direct()]).await;
    // Kept however old the fixed times get.
    let collector = CollectorProcess::start_in(dir, "127.0.0.1:0", &["--retention", "36500days"]);
    let url = collector.url();
    let report = |host| cli(&url, &["report", "--since", "36500days", "--host", host]);

    let direct = ids[0].to_string();
    golden("show_direct.txt", &text(&cli(&url, &["show", &direct])));
    golden("diff_direct.txt", &text(&cli(&url, &["diff", &direct])));
    golden("report_direct.txt", &text(&report("web-1")));
}
