//! The store against real SQLite files in a temporary directory: round
//! trips, filters, migrations, the restart sweep, retention, back-pressure
//! and the flush barrier. A second, plain rusqlite connection checks what
//! really reached the file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use tcpstall_collector::store::sqlite::schema::{self, SCHEMA_VERSION};
use tcpstall_collector::store::{
    EpisodeEnd, EpisodeFilter, EpisodeRow, EpisodeUpdate, HeldFilter, HeldRow, HostRecord,
    NewEpisode, SharedStore, SqliteStore, StoreConfig, StoreError, StoredSample,
};
use tcpstall_common::record::JoinedVia;
use tcpstall_common::time::unix_ms;
use tcpstall_common::{
    Clock, EndReason, EndSample, FlowTuple, HeldEnd, Opened, Positions, Side, TcpState, TimerKind,
    Translation,
};
use tcpstall_proto::convert::{pack, unpack};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store in `dir` whose retention (a century) never touches the small
/// timestamps most tests use; the retention test sets its own.
fn config(dir: &TempDir) -> StoreConfig {
    StoreConfig {
        retention: Duration::from_secs(100 * 365 * 24 * 3600),
        ..StoreConfig::new(dir.path().join("tcpstall.db"))
    }
}

fn flow(a: &str, b: &str) -> FlowTuple {
    FlowTuple::new(
        a.parse().expect("test address"),
        b.parse().expect("test address"),
    )
}

/// A sample with every field set, Some and None mixed, and values near the
/// ends of their types (as far as the wire's checks allow: the store keeps
/// only samples that decode), so that a round trip that loses anything
/// shows.
fn end_sample(f: FlowTuple, cookie: u64, sendq: u32) -> EndSample {
    let una = u64::MAX - 5 - u64::from(sendq);
    EndSample {
        flow: f,
        netns: "ns-a".into(),
        state: TcpState::Established,
        cookie,
        inode: 4_000_000_001,
        opened: Some(Opened::Active),
        pos: Positions {
            sendq,
            recvq: 7,
            notsent: Some(sendq / 2),
            inflight: Some(sendq - sendq / 2),
            snd_una: Some(una),
            snd_nxt: Some(una + u64::from(sendq - sendq / 2)),
            write_seq: Some(una + u64::from(sendq)),
            rcv_nxt: Some(0),
            copied: None,
            snd_wnd: Some(0),
            rcv_wnd: None,
            snd_wscale: Some(14),
            rcv_wscale: Some(7),
        },
        unchanged_ms: 10_250,
        timer: Some(TimerKind::ZeroWindowProbe),
        timer_expires_ms: 1_234,
        retransmits: Some(0),
        probes: Some(3),
        backoff: Some(u8::MAX),
        ca_state: None,
        rto_us: Some(u32::MAX),
        rtt_us: Some(87),
        snd_cwnd: Some(10),
        unacked: Some(0),
        lost: None,
        retrans: Some(0),
        total_retrans: Some(2),
        last_data_sent_ms: Some(9_999),
        last_data_recv_ms: None,
        last_ack_recv_ms: Some(1),
        bytes_retrans: Some(u64::MAX),
        rmem_alloc: Some(u32::MAX),
        rcvbuf: Some(u32::MAX),
        cork: Some(true),
        cork_source: Some(tcpstall_common::FactSource::Bpf),
        nodelay: None,
        nodelay_source: None,
        owner: None,
        owner_missing: None,
        absolute: None,
        translation: None,
    }
}

fn episode(id: i64, a_host: &str, b_host: Option<&str>, diagnosis: &str, start: i64) -> NewEpisode {
    let mut evidence = BTreeMap::new();
    evidence.insert("a_sendq".to_string(), 4096);
    evidence.insert("a_snd_wnd".to_string(), 0);
    evidence.insert("b_rcv_nxt".to_string(), -1);
    evidence.insert("big".to_string(), i64::MAX);
    NewEpisode {
        id,
        diagnosis: diagnosis.into(),
        summary: format!("episode {id}: {diagnosis}"),
        evidence,
        basis: Default::default(),
        started_at_ms: start,
        duration_ms: 10_100,
        stuck_bytes: 4096,
        a_host: a_host.into(),
        a_netns: "ns-a".into(),
        a_flow: flow("198.18.0.1:40000", "[2001:db8::2]:8080"),
        a_cookie: u64::MAX - 1,
        b_host: b_host.map(str::to_string),
        peer_note: None,
        via: None,
    }
}

fn row_of(e: &NewEpisode) -> EpisodeRow {
    EpisodeRow {
        id: e.id,
        diagnosis: e.diagnosis.clone(),
        summary: e.summary.clone(),
        evidence: e.evidence.clone(),
        basis: e.basis.clone(),
        started_at_ms: e.started_at_ms,
        duration_ms: e.duration_ms,
        stuck_bytes: e.stuck_bytes,
        a_host: e.a_host.clone(),
        a_netns: e.a_netns.clone(),
        a_flow: e.a_flow,
        a_cookie: e.a_cookie,
        b_host: e.b_host.clone(),
        peer_note: e.peer_note.clone(),
        via: e.via.clone(),
        open: true,
        ended_at_ms: None,
        end_reason: None,
    }
}

fn stored(side: Side, host: &str, at_ms: i64, f: FlowTuple) -> StoredSample {
    StoredSample {
        side,
        host: host.into(),
        at_ms,
        sample: pack(&end_sample(f, 77, 4096)),
    }
}

fn ids(rows: &[EpisodeRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

/// Opens the SQLite store and hands it out as the other roles hold it, so
/// that every test here goes through the `Store` trait.
fn open(cfg: StoreConfig) -> Result<(SharedStore, JoinHandle<()>, i64), StoreError> {
    let (store, thread, next) = SqliteStore::open(cfg)?;
    Ok((Arc::new(store), thread, next))
}

fn count(path: &Path, sql: &str) -> i64 {
    let c = Connection::open(path).expect("second connection");
    c.query_row(sql, [], |r| r.get(0)).expect("count query")
}

async fn stop(store: SharedStore, thread: std::thread::JoinHandle<()>) {
    store.shutdown().await;
    thread.join().expect("store thread ends cleanly");
}

/// A store in `dir` under a size bound of `max` bytes whose retention tick
/// never comes within a test: the bound must hold from the checks after
/// each commit alone (a tick's worth of writes at 1,000 agents is over
/// 100 MB).
fn bounded(dir: &TempDir, max: u64) -> StoreConfig {
    StoreConfig {
        max_bytes: Some(max),
        retention_every: Duration::from_secs(3600),
        ..config(dir)
    }
}

/// Queues episode `id` started at `start` with 40 samples (~150 bytes of
/// protobuf each, ~8 KB in all), ended 10 ms later.
fn write_ended(store: &SharedStore, id: i64, start: i64) -> bool {
    let e = episode(id, "alpha", None, "data_lost", start);
    let samples = (0..40)
        .map(|k| stored(Side::A, "alpha", start + k, e.a_flow))
        .collect();
    store.open_episode(e)
        && store.add_samples(id, samples)
        && store.close_episode(
            id,
            EpisodeEnd {
                ended_at_ms: start + 10,
                end_reason: "moved".into(),
                duration_ms: 10,
            },
        )
}

#[tokio::test]
async fn episode_round_trips_with_evidence_and_both_sides() -> TestResult {
    let dir = TempDir::new()?;
    let (store, thread, next) = open(config(&dir))?;
    assert_eq!(next, 1, "a new database starts at id 1");

    let mut e = episode(next, "alpha", Some("beta"), "peer_not_reading", 1_000);
    e.peer_note = Some("b: pid 42 (server)".into());
    let f = e.a_flow;
    let samples = vec![
        stored(Side::A, "alpha", 1_000, f),
        stored(Side::B, "beta", 1_001, f.reversed()),
        stored(Side::A, "alpha", 3_000, f),
        stored(Side::B, "beta", 3_002, f.reversed()),
    ];
    assert!(store.open_episode(e.clone()));
    assert!(store.add_samples(e.id, samples[..2].to_vec()));
    assert!(store.add_samples(e.id, samples[2..].to_vec()));

    let (row, got) = store.get_episode(e.id).await?.ok_or("episode stored")?;
    assert_eq!(row, row_of(&e));
    assert_eq!(got, samples, "samples of both sides, exact, in time order");
    assert_eq!(store.get_episode(e.id + 1).await?, None);

    // Addresses readable with the sqlite3 shell; samples as protobuf.
    let path = config(&dir).path;
    let c = Connection::open(&path)?;
    let (local, remote): (String, String) = c.query_row(
        "SELECT a_local, a_remote FROM episodes WHERE id = ?1",
        [e.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    assert_eq!(
        (local.as_str(), remote.as_str()),
        ("198.18.0.1:40000", "[2001:db8::2]:8080")
    );
    // And the flow's Community ID, to find it by from Zeek or Suricata data.
    let id: String = c.query_row(
        "SELECT id FROM episodes WHERE community_id = ?1",
        [f.community_id()],
        |r| r.get::<_, i64>(0).map(|id| id.to_string()),
    )?;
    assert_eq!(id, e.id.to_string());
    let (json, pb): (String, Vec<u8>) = c.query_row(
        "SELECT sample, sample_pb FROM samples WHERE side = 'b' ORDER BY at_ms LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    assert_eq!(json, "", "no JSON since schema version 2");
    assert_eq!(pb, samples[1].sample.as_bytes());

    let s = store.stats();
    assert_eq!(s.committed_rows, 5, "one episode and four samples: {s:?}");
    assert_eq!(s.samples_stored, 4, "{s:?}");
    assert_eq!(s.dropped, 0);
    assert_eq!(s.write_errors, 0);
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn hosts_are_upserted_and_marked_gone() -> TestResult {
    let dir = TempDir::new()?;
    let (store, thread, _) = open(config(&dir))?;
    let hello = |host: &str, at_ms, kernel: &str| HostRecord {
        host: host.into(),
        kernel: kernel.into(),
        agent_version: "0.1.0".into(),
        boot_id: format!("boot-{host}"),
        at_ms,
    };
    assert!(store.host_seen(hello("beta", 100, "6.18")));
    assert!(store.host_seen(hello("alpha", 200, "3.10.0-1160.el7")));
    assert!(store.host_gone("beta", 300));
    assert!(store.host_seen(hello("alpha", 400, "4.18.0-553.el8")));

    let hosts = store.list_hosts().await?;
    assert_eq!(hosts.len(), 2);
    let (alpha, beta) = (&hosts[0], &hosts[1]);
    assert_eq!(alpha.host, "alpha");
    assert_eq!((alpha.first_seen_ms, alpha.last_seen_ms), (200, 400));
    assert_eq!(
        alpha.kernel, "4.18.0-553.el8",
        "a new hello refreshes the host"
    );
    assert!(alpha.connected);
    assert_eq!(beta.host, "beta");
    assert_eq!((beta.first_seen_ms, beta.last_seen_ms), (100, 300));
    assert!(!beta.connected);
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn filters_select_by_since_host_diagnosis_open_and_limit() -> TestResult {
    let dir = TempDir::new()?;
    let (store, thread, next) = open(config(&dir))?;
    let eps = [
        episode(next, "alpha", Some("beta"), "peer_not_reading", 1_000),
        episode(next + 1, "beta", Some("gamma"), "data_lost", 2_000),
        episode(next + 2, "gamma", None, "peer_unmonitored", 3_000),
        episode(next + 3, "alpha", Some("gamma"), "data_lost", 4_000),
        episode(next + 4, "delta", Some("alpha"), "ack_lost", 4_000),
    ];
    for e in &eps {
        assert!(store.open_episode(e.clone()));
    }
    let end = EpisodeEnd {
        ended_at_ms: 5_000,
        end_reason: "moved".into(),
        duration_ms: 12_000,
    };
    assert!(store.close_episode(next + 1, end.clone()));
    assert!(store.close_episode(next + 3, end));

    let list = |f: EpisodeFilter| store.list_episodes(f);
    let all = list(EpisodeFilter::default()).await?;
    // Newest first; equal starts by id, newest first.
    assert_eq!(ids(&all), [next + 4, next + 3, next + 2, next + 1, next]);

    let since = list(EpisodeFilter {
        since_ms: Some(3_000),
        ..Default::default()
    });
    assert_eq!(
        ids(&since.await?),
        [next + 4, next + 3, next + 2],
        "start at or after"
    );

    let alpha = list(EpisodeFilter {
        host: Some("alpha".into()),
        ..Default::default()
    });
    assert_eq!(
        ids(&alpha.await?),
        [next + 4, next + 3, next],
        "alpha as A or as B"
    );

    let gamma = list(EpisodeFilter {
        host: Some("gamma".into()),
        ..Default::default()
    });
    assert_eq!(ids(&gamma.await?), [next + 3, next + 2, next + 1]);

    let lost = list(EpisodeFilter {
        diagnosis: Some("data_lost".into()),
        ..Default::default()
    });
    assert_eq!(ids(&lost.await?), [next + 3, next + 1]);

    let open = list(EpisodeFilter {
        open_only: true,
        ..Default::default()
    });
    assert_eq!(ids(&open.await?), [next + 4, next + 2, next]);

    let two = list(EpisodeFilter {
        limit: 2,
        ..Default::default()
    });
    assert_eq!(ids(&two.await?), [next + 4, next + 3]);

    let combined = list(EpisodeFilter {
        since_ms: Some(2_000),
        host: Some("gamma".into()),
        diagnosis: Some("data_lost".into()),
        open_only: false,
        limit: 1,
        after: None,
    });
    assert_eq!(ids(&combined.await?), [next + 3]);

    let none = list(EpisodeFilter {
        host: Some("nobody".into()),
        ..Default::default()
    });
    assert!(none.await?.is_empty());

    assert_eq!(EpisodeFilter::default().effective_limit(), 1000);
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn pages_after_a_place_cover_every_episode_once_even_on_equal_starts() -> TestResult {
    let dir = TempDir::new()?;
    let (store, thread, next) = open(config(&dir))?;
    // 23 episodes, starts in threes: page edges fall inside equal starts.
    for i in 0..23 {
        let e = episode(next + i, "alpha", None, "peer_unmonitored", 1_000 + i / 3);
        assert!(store.open_episode(e));
    }
    let whole = store.list_episodes(EpisodeFilter::default()).await?;
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_episodes(EpisodeFilter {
                limit: 5,
                after,
                ..Default::default()
            })
            .await?;
        paged.extend(ids(&page));
        match page.last() {
            Some(last) if page.len() == 5 => after = Some((last.started_at_ms, last.id)),
            _ => break,
        }
    }
    assert_eq!(
        paged,
        ids(&whole),
        "the same order, nothing twice or missed"
    );
    assert_eq!(paged.len(), 23);
    let since = store
        .list_episodes(EpisodeFilter {
            since_ms: Some(1_005),
            after: Some((1_006, next + 18)),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        ids(&since),
        [next + 17, next + 16, next + 15],
        "both bounds"
    );
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn update_then_close() -> TestResult {
    let dir = TempDir::new()?;
    let (store, thread, next) = open(config(&dir))?;
    let e = episode(next, "alpha", None, "peer_unmonitored", 1_000);
    assert!(store.open_episode(e.clone()));

    let mut evidence = BTreeMap::new();
    evidence.insert("b_rcv_wnd".to_string(), 0);
    let update = EpisodeUpdate {
        id: e.id,
        diagnosis: "peer_not_reading".into(),
        summary: "beta stopped reading".into(),
        evidence: evidence.clone(),
        basis: Default::default(),
        b_host: Some("beta".into()),
        peer_note: Some("pid 7".into()),
        via: None,
        duration_ms: 14_000,
        stuck_bytes: 8192,
    };
    assert!(store.update_episode(update));
    let (row, _) = store.get_episode(e.id).await?.ok_or("stored")?;
    let mut want = row_of(&e);
    want.diagnosis = "peer_not_reading".into();
    want.summary = "beta stopped reading".into();
    want.evidence = evidence;
    want.b_host = Some("beta".into());
    want.peer_note = Some("pid 7".into());
    want.duration_ms = 14_000;
    want.stuck_bytes = 8192;
    assert_eq!(row, want);

    let end = EpisodeEnd {
        ended_at_ms: 20_000,
        end_reason: "drained".into(),
        duration_ms: 19_000,
    };
    assert!(store.close_episode(e.id, end));
    let (row, _) = store.get_episode(e.id).await?.ok_or("stored")?;
    want.open = false;
    want.ended_at_ms = Some(20_000);
    want.end_reason = Some("drained".into());
    want.duration_ms = 19_000;
    assert_eq!(row, want);

    // Writes naming an unknown episode fail on the thread: counted, logged,
    // and the thread goes on.
    let ghost = EpisodeEnd {
        ended_at_ms: 1,
        end_reason: "closed".into(),
        duration_ms: 1,
    };
    assert!(store.close_episode(999, ghost));
    assert!(store.add_samples(999, vec![stored(Side::A, "alpha", 1, e.a_flow)]));
    assert!(
        store.open_episode(e.clone()),
        "a duplicate id is refused by SQLite"
    );
    store.flush().await?;
    assert_eq!(store.stats().write_errors, 3);
    assert_eq!(store.get_episode(e.id).await?.map(|(r, _)| r), Some(want));
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn migrations_are_idempotent_and_a_newer_schema_is_refused() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let (store, thread, next) = open(cfg.clone())?;
    let e = episode(next, "alpha", Some("beta"), "data_lost", 1_000);
    assert!(store.open_episode(e.clone()));
    assert!(store.close_episode(
        e.id,
        EpisodeEnd {
            ended_at_ms: unix_ms(SystemTime::now()),
            end_reason: "moved".into(),
            duration_ms: 11_000,
        }
    ));
    stop(store, thread).await;

    for _ in 0..2 {
        let (store, thread, next_again) = open(cfg.clone())?;
        assert_eq!(next_again, next + 1);
        let rows = store.list_episodes(EpisodeFilter::default()).await?;
        assert_eq!(ids(&rows), [e.id]);
        stop(store, thread).await;
    }
    assert_eq!(count(&cfg.path, "PRAGMA user_version"), SCHEMA_VERSION);
    let mode: String =
        Connection::open(&cfg.path)?.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    assert_eq!(mode, "wal");

    // A newer collector wrote this file: refuse it, name both versions.
    Connection::open(&cfg.path)?.pragma_update(None, "user_version", SCHEMA_VERSION + 1)?;
    match open(cfg.clone()) {
        Err(StoreError::TooNew { found, known, .. }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
    let msg = open(cfg.clone())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("newer"), "{msg}");
    // Refusing changed nothing.
    assert_eq!(count(&cfg.path, "PRAGMA user_version"), SCHEMA_VERSION + 1);
    Ok(())
}

/// Schema version 1 as the first release created it, copied rather than
/// taken from the collector: the upgrade test must build the file an
/// older collector left, whatever the migrations list becomes.
const SCHEMA_V1: &str = "
    CREATE TABLE hosts (
        host          TEXT PRIMARY KEY NOT NULL,
        kernel        TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        boot_id       TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL,
        connected     INTEGER NOT NULL CHECK (connected IN (0, 1))
    );
    CREATE TABLE episodes (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        diagnosis     TEXT NOT NULL,
        summary       TEXT NOT NULL,
        evidence      TEXT NOT NULL,
        started_at_ms INTEGER NOT NULL,
        duration_ms   INTEGER NOT NULL,
        stuck_bytes   INTEGER NOT NULL,
        a_host        TEXT NOT NULL,
        a_netns       TEXT NOT NULL,
        a_local       TEXT NOT NULL,
        a_remote      TEXT NOT NULL,
        a_cookie      INTEGER NOT NULL,
        b_host        TEXT,
        peer_note     TEXT,
        open          INTEGER NOT NULL CHECK (open IN (0, 1)),
        ended_at_ms   INTEGER,
        end_reason    TEXT
    );
    CREATE INDEX episodes_started ON episodes (started_at_ms);
    CREATE INDEX episodes_diagnosis ON episodes (diagnosis);
    CREATE INDEX episodes_open ON episodes (open);
    CREATE INDEX episodes_a_host ON episodes (a_host);
    CREATE INDEX episodes_b_host ON episodes (b_host);
    CREATE TABLE samples (
        id         INTEGER PRIMARY KEY,
        episode_id INTEGER NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        side       TEXT NOT NULL CHECK (side IN ('a', 'b')),
        host       TEXT NOT NULL,
        at_ms      INTEGER NOT NULL,
        sample     TEXT NOT NULL
    );
    CREATE INDEX samples_episode ON samples (episode_id, at_ms);
";

/// A file at schema version 1 holding an episode and one sample as JSON,
/// written the way the version 1 collector wrote them.
fn version_1_file(path: &Path, e: &NewEpisode, old: &EndSample, at_ms: i64) -> TestResult {
    let c = Connection::open(path)?;
    c.execute_batch(SCHEMA_V1)?;
    c.pragma_update(None, "user_version", 1)?;
    c.execute(
        "INSERT INTO episodes (id, diagnosis, summary, evidence, started_at_ms,
            duration_ms, stuck_bytes, a_host, a_netns, a_local, a_remote,
            a_cookie, b_host, peer_note, open)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 1)",
        rusqlite::params![
            e.id,
            e.diagnosis,
            e.summary,
            serde_json::to_string(&e.evidence)?,
            e.started_at_ms,
            i64::try_from(e.duration_ms)?,
            e.stuck_bytes,
            e.a_host,
            e.a_netns,
            e.a_flow.local.to_string(),
            e.a_flow.remote.to_string(),
            i64::from_ne_bytes(e.a_cookie.to_ne_bytes()),
            e.b_host,
            e.peer_note,
        ],
    )?;
    c.execute(
        "INSERT INTO samples (episode_id, side, host, at_ms, sample)
         VALUES (?1, 'a', ?2, ?3, ?4)",
        rusqlite::params![e.id, e.a_host, at_ms, serde_json::to_string(old)?],
    )?;
    Ok(())
}

#[tokio::test]
async fn a_version_1_file_upgrades_and_its_json_samples_read_beside_new_ones() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let e = episode(7, "alpha", Some("beta"), "peer_not_reading", 1_000);
    let f = e.a_flow;
    let old = end_sample(f, 77, 4096);
    version_1_file(&cfg.path, &e, &old, 2_000)?;

    let (store, thread, next) = open(cfg.clone())?;
    assert_eq!(next, e.id + 1);
    assert_eq!(count(&cfg.path, "PRAGMA user_version"), 9);
    assert_eq!(SCHEMA_VERSION, 9);
    let (row, got) = store.get_episode(e.id).await?.ok_or("episode kept")?;
    assert_eq!((row.id, row.a_cookie, row.a_flow), (e.id, e.a_cookie, f));
    assert!(
        row.basis.is_empty(),
        "stored before verdicts kept their basis"
    );
    assert_eq!(got.len(), 1);
    assert_eq!(
        unpack(&got[0].sample).as_ref(),
        Some(&old),
        "the JSON, read"
    );
    assert_eq!((got[0].side, got[0].at_ms), (Side::A, 2_000));

    // New samples on either side of the old one in time.
    let mut b = end_sample(f.reversed(), 78, 0);
    b.netns = "ns-b".into();
    let new = vec![
        StoredSample {
            side: Side::B,
            host: "beta".into(),
            at_ms: 1_500,
            sample: pack(&b),
        },
        StoredSample {
            side: Side::A,
            host: "alpha".into(),
            at_ms: 3_000,
            sample: pack(&end_sample(f, 77, 2048)),
        },
    ];
    assert!(store.add_samples(e.id, new.clone()));
    let (_, got) = store.get_episode(e.id).await?.ok_or("episode kept")?;
    let want = vec![
        new[0].clone(),
        StoredSample {
            side: Side::A,
            host: "alpha".into(),
            at_ms: 2_000,
            sample: pack(&old),
        },
        new[1].clone(),
    ];
    assert_eq!(got, want, "old and new, in time order");
    assert_eq!(unpack(&got[0].sample), Some(b));
    assert_eq!(unpack(&got[2].sample), Some(end_sample(f, 77, 2048)));
    stop(store, thread).await;

    // In the file: the old row as it was, the new ones as protobuf.
    assert_eq!(
        count(
            &cfg.path,
            "SELECT count(*) FROM samples WHERE sample_pb IS NULL AND sample LIKE '{%'"
        ),
        1
    );
    assert_eq!(
        count(
            &cfg.path,
            "SELECT count(*) FROM samples WHERE sample_pb IS NOT NULL AND sample = ''"
        ),
        2
    );
    Ok(())
}

/// Versions 2 to 5 as they were released, copied for the same reason as
/// [`SCHEMA_V1`]: run after it, they make the file a version 5 collector
/// left.
const SCHEMA_V2_TO_V5: &str = "
    ALTER TABLE samples ADD COLUMN sample_pb BLOB;
    CREATE TABLE held_spans (
        minute_ms   INTEGER NOT NULL,
        a_host      TEXT NOT NULL,
        b_host      TEXT NOT NULL,
        end_reason  TEXT NOT NULL,
        le_ms       INTEGER NOT NULL,
        count       INTEGER NOT NULL,
        episodes    INTEGER NOT NULL,
        total_ms    INTEGER NOT NULL,
        max_ms      INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, a_host, b_host, end_reason, le_ms)
    ) WITHOUT ROWID;
    CREATE INDEX episodes_ended ON episodes (open, ended_at_ms);
    DROP INDEX episodes_open;
    CREATE INDEX episodes_a_host_started ON episodes (a_host, started_at_ms);
    DROP INDEX episodes_a_host;
    CREATE INDEX episodes_b_host_started ON episodes (b_host, started_at_ms);
    DROP INDEX episodes_b_host;
    ALTER TABLE episodes ADD COLUMN community_id TEXT;
    CREATE INDEX episodes_community_id ON episodes (community_id);
";

/// A file at schema version 5 holding an ended episode with one sample of
/// each end, written the way the version 5 collector wrote them.
fn version_5_file(path: &Path, e: &NewEpisode, samples: &[StoredSample]) -> TestResult {
    let c = Connection::open(path)?;
    c.execute_batch(SCHEMA_V1)?;
    c.execute_batch(SCHEMA_V2_TO_V5)?;
    c.pragma_update(None, "user_version", 5)?;
    c.execute(
        "INSERT INTO episodes (id, diagnosis, summary, evidence, started_at_ms,
            duration_ms, stuck_bytes, a_host, a_netns, a_local, a_remote,
            a_cookie, b_host, peer_note, open, community_id, ended_at_ms, end_reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 0, ?15,
            ?16, 'moved')",
        rusqlite::params![
            e.id,
            e.diagnosis,
            e.summary,
            serde_json::to_string(&e.evidence)?,
            e.started_at_ms,
            i64::try_from(e.duration_ms)?,
            e.stuck_bytes,
            e.a_host,
            e.a_netns,
            e.a_flow.local.to_string(),
            e.a_flow.remote.to_string(),
            i64::from_ne_bytes(e.a_cookie.to_ne_bytes()),
            e.b_host,
            e.peer_note,
            e.a_flow.community_id(),
            e.started_at_ms + 20_000,
        ],
    )?;
    for s in samples {
        c.execute(
            "INSERT INTO samples (episode_id, side, host, at_ms, sample, sample_pb)
             VALUES (?1, ?2, ?3, ?4, '', ?5)",
            rusqlite::params![e.id, s.side.as_str(), s.host, s.at_ms, s.sample.as_bytes()],
        )?;
    }
    Ok(())
}

#[tokio::test]
async fn a_version_5_file_upgrades_its_episodes_kept_without_a_translation() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let e = episode(9, "alpha", Some("beta"), "peer_not_reading", 1_000);
    let f = e.a_flow;
    let samples = vec![
        stored(Side::A, "alpha", 1_000, f),
        stored(Side::B, "beta", 1_001, f.reversed()),
    ];
    version_5_file(&cfg.path, &e, &samples)?;

    let (store, thread, next) = open(cfg.clone())?;
    assert_eq!(next, e.id + 1);
    assert_eq!(count(&cfg.path, "PRAGMA user_version"), SCHEMA_VERSION);
    let (row, got) = store.get_episode(e.id).await?.ok_or("episode kept")?;
    let mut want = row_of(&e);
    want.open = false;
    want.ended_at_ms = Some(e.started_at_ms + 20_000);
    want.end_reason = Some("moved".into());
    assert_eq!(row, want, "every field as it was, no translation");
    assert_eq!(got, samples);
    assert_eq!(via_columns(&cfg.path, e.id)?, [None, None, None, None]);
    assert_eq!(
        count(
            &cfg.path,
            &format!(
                "SELECT count(*) FROM episodes WHERE community_id = '{}'",
                f.community_id()
            )
        ),
        1,
        "the Community ID kept"
    );

    // Episodes of the upgraded file keep a translation like new ones.
    let mut joined = episode(next, "alpha", Some("beta"), "peer_not_reading", 5_000);
    joined.via = Some(dnat_on_beta());
    assert!(store.open_episode(joined.clone()));
    let listed = store.list_episodes(EpisodeFilter::default()).await?;
    assert_eq!(listed, [row_of(&joined), want]);
    stop(store, thread).await;
    Ok(())
}

/// A DNAT on B's host, as kube-proxy makes one: B, the client, dials a
/// service address; its host sends the connection to A, the server.
fn dnat_on_beta() -> JoinedVia {
    JoinedVia {
        host: "beta".into(),
        translation: Translation {
            original: flow("10.0.0.1:40000", "10.96.0.10:80"),
            reply: flow("10.1.0.7:8080", "10.0.0.1:40000"),
            src_nat: false,
            dst_nat: true,
        },
    }
}

/// An IPv6 masquerade on a gateway between the two.
fn snat_on_gateway() -> JoinedVia {
    JoinedVia {
        host: "gw".into(),
        translation: Translation {
            original: flow("[2001:db8::1]:5000", "[2001:db8:1::9]:443"),
            reply: flow("[2001:db8:1::9]:443", "[2001:db8:2::1]:61000"),
            src_nat: true,
            dst_nat: false,
        },
    }
}

/// The `via_*` columns of episode `id` as the file holds them.
fn via_columns(path: &Path, id: i64) -> rusqlite::Result<[Option<String>; 4]> {
    Connection::open(path)?.query_row(
        "SELECT via_host, via_original, via_reply, via_nat FROM episodes WHERE id = ?1",
        [id],
        |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]),
    )
}

#[tokio::test]
async fn the_translation_that_joined_the_ends_is_kept_replaced_and_cleared() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let (store, thread, next) = open(cfg.clone())?;
    let mut e = episode(next, "alpha", Some("beta"), "peer_not_reading", 1_000);
    e.a_flow = flow("10.1.0.7:8080", "10.0.0.1:40000");
    e.via = Some(dnat_on_beta());
    assert!(store.open_episode(e.clone()));
    let plain = episode(next + 1, "alpha", Some("beta"), "peer_not_reading", 2_000);
    assert!(store.open_episode(plain.clone()));

    let (row, _) = store.get_episode(e.id).await?.ok_or("stored")?;
    assert_eq!(row, row_of(&e));
    let listed = store.list_episodes(EpisodeFilter::default()).await?;
    assert_eq!(listed, [row_of(&plain), row_of(&e)], "lists carry it too");
    // Readable, and comparable, in the sqlite3 shell.
    let want = [
        "beta",
        "10.0.0.1:40000 -> 10.96.0.10:80",
        "10.1.0.7:8080 -> 10.0.0.1:40000",
        "dnat",
    ];
    assert_eq!(via_columns(&cfg.path, e.id)?, want.map(|s| Some(s.into())));
    assert_eq!(via_columns(&cfg.path, plain.id)?, [None, None, None, None]);

    // An update replaces it, as it replaces b_host, and None clears it.
    let update = |via: Option<JoinedVia>| EpisodeUpdate {
        id: e.id,
        diagnosis: "peer_not_reading".into(),
        summary: "beta stopped reading".into(),
        evidence: e.evidence.clone(),
        basis: Default::default(),
        b_host: Some("beta".into()),
        peer_note: None,
        via,
        duration_ms: 14_000,
        stuck_bytes: 4096,
    };
    assert!(store.update_episode(update(Some(snat_on_gateway()))));
    let (row, _) = store.get_episode(e.id).await?.ok_or("stored")?;
    assert_eq!(row.via, Some(snat_on_gateway()));
    assert_eq!(row.duration_ms, 14_000);
    let [host, original, reply, nat] = via_columns(&cfg.path, e.id)?;
    assert_eq!(
        (host, original, reply, nat),
        (
            Some("gw".into()),
            Some("[2001:db8::1]:5000 -> [2001:db8:1::9]:443".into()),
            Some("[2001:db8:1::9]:443 -> [2001:db8:2::1]:61000".into()),
            Some("snat".into())
        )
    );
    assert!(store.update_episode(update(None)));
    let (row, _) = store.get_episode(e.id).await?.ok_or("stored")?;
    assert_eq!(row.via, None);
    assert_eq!(via_columns(&cfg.path, e.id)?, [None, None, None, None]);

    // What a person's edit may leave: an error naming the column, no panic.
    assert!(store.update_episode(update(Some(dnat_on_beta()))));
    store.flush().await?;
    let c = Connection::open(&cfg.path)?;
    let good = via_columns(&cfg.path, e.id)?;
    let set = |column: &str, value: Option<&str>| {
        c.execute(
            &format!("UPDATE episodes SET {column} = ?1 WHERE id = ?2"),
            rusqlite::params![value, e.id],
        )
    };
    let columns = ["via_host", "via_original", "via_reply", "via_nat"];
    let bad = [
        (1, Some("10.0.0.1:40000 => 10.96.0.10:80")),
        (2, Some("10.1.0.7 -> 10.0.0.1:40000")),
        (2, None),
        (3, None),
    ];
    for (i, value) in bad {
        set(columns[i], value)?;
        match store.get_episode(e.id).await {
            Err(StoreError::Corrupt { id, column, .. }) => {
                assert_eq!((id, column), (e.id, columns[i]), "{value:?}");
            }
            other => panic!(
                "{} = {value:?}: expected Corrupt, got {other:?}",
                columns[i]
            ),
        }
        set(columns[i], good[i].as_deref())?;
    }
    assert_eq!(
        store.get_episode(e.id).await?.and_then(|(r, _)| r.via),
        Some(dnat_on_beta()),
        "mended"
    );
    // The schema refuses a word it does not know.
    let refused = c.execute(
        "UPDATE episodes SET via_nat = 'masquerade' WHERE id = ?1",
        [e.id],
    );
    assert!(refused.is_err(), "{refused:?}");
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn samples_are_stored_as_wire_samples_and_bad_bytes_are_corrupt() -> TestResult {
    use prost::Message;
    use tcpstall_proto::{convert, v1};

    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let (store, thread, next) = open(cfg.clone())?;
    let e = episode(next, "alpha", Some("beta"), "peer_not_reading", 1_000);
    let written = end_sample(e.a_flow, 77, 4096);
    assert!(store.open_episode(e.clone()));
    assert!(store.add_samples(
        e.id,
        vec![StoredSample {
            side: Side::A,
            host: "alpha".into(),
            at_ms: 1_000,
            sample: pack(&written),
        }]
    ));
    store.flush().await?;

    let c = Connection::open(&cfg.path)?;
    let pb: Vec<u8> = c.query_row("SELECT sample_pb FROM samples", [], |r| r.get(0))?;
    let w = v1::Sample::decode(&*pb)?;
    assert_eq!(w.cookie, 77);
    assert_eq!(w.sendq, 4096);
    assert_eq!(w.netns, "ns-a");
    assert_eq!(w.snd_una, written.pos.snd_una);
    assert_eq!(w.bytes_retrans, Some(u64::MAX));
    assert_eq!(w.timer, v1::Timer::ZeroWindowProbe as i32);
    assert_eq!(convert::sample_from_wire(&w)?, written, "every field");

    // Bytes that are not a sample: an error naming the column, no panic.
    let bad: [(&str, rusqlite::types::Value); 3] = [
        ("garbage", vec![0xff, 0xff, 0xff].into()),
        ("a message that is no valid sample", Vec::<u8>::new().into()),
        ("text", "not protobuf".to_string().into()),
    ];
    for (what, value) in bad {
        c.execute("UPDATE samples SET sample_pb = ?1", [value])?;
        match store.get_episode(e.id).await {
            Err(StoreError::Corrupt { id, column, .. }) => {
                assert_eq!((id, column), (e.id, "sample_pb"), "{what}");
            }
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }
    // A NULL one falls back to the JSON column, here ''.
    c.execute("UPDATE samples SET sample_pb = NULL", [])?;
    match store.get_episode(e.id).await {
        Err(StoreError::Corrupt { column, .. }) => assert_eq!(column, "sample"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = store
        .get_episode(e.id)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("column sample"), "{msg}");
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn restart_ends_open_episodes_and_keeps_closed_ones() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let (store, thread, next) = open(cfg.clone())?;
    // Recent times: retention (30 days by default) must not take them.
    let t0 = unix_ms(SystemTime::now()) - 60_000;
    let with_samples = episode(next, "alpha", Some("beta"), "peer_not_reading", t0 + 1_000);
    let bare = episode(next + 1, "alpha", None, "peer_unmonitored", t0 + 2_000);
    let closed = episode(next + 2, "beta", None, "corked", t0 + 500);
    let f = with_samples.a_flow;
    for e in [&with_samples, &bare, &closed] {
        assert!(store.open_episode(e.clone()));
    }
    assert!(store.add_samples(
        with_samples.id,
        vec![
            stored(Side::A, "alpha", t0 + 1_000, f),
            stored(Side::B, "beta", t0 + 4_500, f.reversed()),
            stored(Side::A, "alpha", t0 + 4_000, f),
        ]
    ));
    let end = EpisodeEnd {
        ended_at_ms: t0 + 9_000,
        end_reason: "drained".into(),
        duration_ms: 8_500,
    };
    assert!(store.close_episode(closed.id, end));
    assert!(store.host_seen(HostRecord {
        host: "alpha".into(),
        kernel: "6.18".into(),
        agent_version: "0.1.0".into(),
        boot_id: "b".into(),
        at_ms: 1_000,
    }));
    // Stop without a shutdown: dropping the last handle commits and ends.
    store.flush().await?;
    drop(store);
    thread.join().map_err(|_| "store thread panicked")?;

    let (store, thread, next_again) = open(cfg)?;
    assert_eq!(next_again, next + 3);
    let rows = store.list_episodes(EpisodeFilter::default()).await?;
    let by_id = |id| rows.iter().find(|r| r.id == id).cloned().ok_or("row");

    let mut want = row_of(&with_samples);
    want.open = false;
    want.ended_at_ms = Some(t0 + 4_500);
    want.end_reason = Some(EndReason::CollectorRestart.id().into());
    assert_eq!(by_id(with_samples.id)?, want, "ended at its last sample");

    let mut want = row_of(&bare);
    want.open = false;
    want.ended_at_ms = Some(t0 + 2_000);
    want.end_reason = Some(EndReason::CollectorRestart.id().into());
    assert_eq!(by_id(bare.id)?, want, "no samples: ended at its start");

    let mut want = row_of(&closed);
    want.open = false;
    want.ended_at_ms = Some(t0 + 9_000);
    want.end_reason = Some("drained".into());
    want.duration_ms = 8_500;
    assert_eq!(by_id(closed.id)?, want, "closed episodes untouched");

    let (_, samples) = store.get_episode(with_samples.id).await?.ok_or("stored")?;
    assert_eq!(samples.len(), 3, "samples survive a restart");
    let hosts = store.list_hosts().await?;
    assert!(
        hosts.iter().all(|h| !h.connected),
        "no agent is connected yet"
    );
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn retention_deletes_old_closed_episodes_with_their_samples() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = StoreConfig {
        retention: Duration::from_secs(600),
        retention_every: Duration::from_millis(20),
        ..config(&dir)
    };
    let (store, thread, next) = open(cfg.clone())?;
    let now = unix_ms(SystemTime::now());
    let hour = 3_600_000;
    let old = episode(next, "alpha", None, "data_lost", now - 2 * hour);
    let recent = episode(next + 1, "alpha", None, "data_lost", now - 2 * hour);
    let open_old = episode(next + 2, "alpha", None, "data_lost", now - 3 * hour);
    for e in [&old, &recent, &open_old] {
        assert!(store.open_episode(e.clone()));
        assert!(store.add_samples(
            e.id,
            vec![stored(Side::A, "alpha", e.started_at_ms, e.a_flow)]
        ));
    }
    let end = |at| EpisodeEnd {
        ended_at_ms: at,
        end_reason: "moved".into(),
        duration_ms: 1,
    };
    assert!(store.close_episode(old.id, end(now - hour)));
    assert!(store.close_episode(recent.id, end(now - 1_000)));

    let deadline = Instant::now() + Duration::from_secs(10);
    while store.get_episode(old.id).await?.is_some() {
        assert!(Instant::now() < deadline, "retention never pruned");
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
    let left = store.list_episodes(EpisodeFilter::default()).await?;
    let mut left = ids(&left);
    left.sort_unstable();
    assert_eq!(
        left,
        [recent.id, open_old.id],
        "recent and open episodes stay"
    );
    let per_episode = "SELECT group_concat(episode_id) FROM \
         (SELECT DISTINCT episode_id FROM samples ORDER BY episode_id)";
    let c = Connection::open(&cfg.path)?;
    let with_samples: String = c.query_row(per_episode, [], |r| r.get(0))?;
    assert_eq!(
        with_samples,
        format!("{},{}", recent.id, open_old.id),
        "samples went too"
    );
    assert_eq!(store.stats().pruned_episodes, 1);
    assert_eq!(
        store.stats().pruned_rows,
        2,
        "the episode and the sample it cascaded to"
    );
    stop(store, thread).await;
    Ok(())
}

/// Retention ages episodes by the clock the collector hands the store, not
/// the system's: on a clock set in 2030, episodes that ended then go when
/// that clock says so (read from SystemTime, neither would ever go).
#[tokio::test]
async fn retention_ages_episodes_by_the_clock_it_is_handed() -> TestResult {
    let dir = TempDir::new()?;
    let t0 = 1_900_000_000_000;
    let (clock, hand) = Clock::manual(t0);
    let cfg = StoreConfig {
        retention: Duration::from_secs(600),
        retention_every: Duration::from_millis(20),
        clock,
        ..config(&dir)
    };
    let (store, thread, next) = open(cfg)?;
    let older = episode(next, "alpha", None, "data_lost", t0 - 3_600_000);
    let newer = episode(next + 1, "alpha", None, "data_lost", t0 - 3_600_000);
    let end = |at| EpisodeEnd {
        ended_at_ms: at,
        end_reason: "moved".into(),
        duration_ms: 1,
    };
    for (e, ended) in [(&older, t0 - 601_000), (&newer, t0 - 1_000)] {
        assert!(store.open_episode(e.clone()));
        assert!(store.close_episode(e.id, end(ended)));
    }
    let gone = |id: i64| {
        let store = store.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while store.get_episode(id).await?.is_some() {
                assert!(Instant::now() < deadline, "episode {id} never pruned");
                tokio::task::yield_now().await;
                std::thread::yield_now();
            }
            Ok::<(), StoreError>(())
        }
    };
    gone(older.id).await?;
    assert!(
        store.get_episode(newer.id).await?.is_some(),
        "ended 1 s before the clock's now: kept"
    );
    hand.advance(Duration::from_secs(600));
    gone(newer.id).await?;
    stop(store, thread).await;
    Ok(())
}

fn held_row(minute_ms: i64, a: &str, b: &str, end: HeldEnd, le_ms: u64, count: u64) -> HeldRow {
    HeldRow {
        minute_ms,
        a_host: a.into(),
        b_host: b.into(),
        end,
        le_ms,
        count,
        episodes: u64::from(le_ms == 12_000) * count,
        total_ms: count * 9_500,
        max_ms: 9_000 + count,
    }
}

#[tokio::test]
async fn held_span_counts_add_up_by_pair_and_window_and_age_out() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = StoreConfig {
        retention: Duration::from_secs(600),
        retention_every: Duration::from_millis(20),
        ..config(&dir)
    };
    let (store, thread, _) = open(cfg.clone())?;
    let minute = 60_000;
    let now = unix_ms(SystemTime::now()) / minute * minute;
    let hour = 3_600_000;
    // The same minute's counts come in two writes: they add up.
    assert!(store.add_held(vec![
        held_row(now, "web-1", "db-7", HeldEnd::Reset, 10_000, 2),
        held_row(now, "web-1", "db-7", HeldEnd::Moved, 3_000, 5),
        held_row(now - minute, "web-2", "", HeldEnd::Closed, 12_000, 1),
    ]));
    assert!(store.add_held(vec![held_row(
        now,
        "web-1",
        "db-7",
        HeldEnd::Reset,
        10_000,
        3
    )]));
    // Older than the retention: deleted by the next prune.
    assert!(store.add_held(vec![held_row(
        now - 2 * hour,
        "web-9",
        "db-7",
        HeldEnd::Drained,
        1_000,
        4
    )]));
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = store.list_held(HeldFilter::default()).await?;
        if rows.iter().all(|r| r.a_host != "web-9") {
            break rows;
        }
        assert!(Instant::now() < deadline, "held spans never aged out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    type Figures<'a> = (&'a str, &'a str, HeldEnd, u64, u64, u64, u64, u64);
    let got: Vec<Figures<'_>> = rows
        .iter()
        .map(|r| {
            (
                r.a_host.as_str(),
                r.b_host.as_str(),
                r.end,
                r.le_ms,
                r.count,
                r.episodes,
                r.total_ms,
                r.max_ms,
            )
        })
        .collect();
    // The busiest pair first (7 spans), then by end and bucket.
    assert_eq!(
        got,
        vec![
            ("web-1", "db-7", HeldEnd::Moved, 3_000, 5, 0, 47_500, 9_005),
            ("web-1", "db-7", HeldEnd::Reset, 10_000, 5, 0, 47_500, 9_003),
            ("web-2", "", HeldEnd::Closed, 12_000, 1, 1, 9_500, 9_001),
        ]
    );
    assert_eq!(rows[1].minute_ms, now);
    // A window that leaves the older minute out; a host at either end.
    let recent = store
        .list_held(HeldFilter {
            since_ms: Some(now),
            host: None,
        })
        .await?;
    assert_eq!(recent.len(), 2);
    let db7 = store
        .list_held(HeldFilter {
            since_ms: None,
            host: Some("db-7".into()),
        })
        .await?;
    assert!(db7.iter().all(|r| r.b_host == "db-7") && db7.len() == 2);
    // A row edited to an unknown end is an error, not a panic.
    let c = Connection::open(&cfg.path)?;
    c.execute(
        "UPDATE held_spans SET end_reason = 'lost' WHERE a_host = 'web-2'",
        [],
    )?;
    let err = store
        .list_held(HeldFilter::default())
        .await
        .expect_err("corrupt");
    assert!(err.to_string().contains("end_reason"), "{err}");
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn a_full_queue_counts_drops_instead_of_blocking() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = StoreConfig {
        queue: 1,
        ..config(&dir)
    };
    let (store, thread, _) = open(cfg.clone())?;
    store.flush().await?;

    // Another connection holds the write lock: the store thread's next
    // write waits in SQLite's busy handler, and the queue of one fills.
    let blocker = Connection::open(&cfg.path)?;
    blocker.execute_batch("BEGIN EXCLUSIVE")?;

    let hello = |i: usize| HostRecord {
        host: format!("host-{i:03}"),
        kernel: "6.18".into(),
        agent_version: "0.1.0".into(),
        boot_id: "b".into(),
        at_ms: 1,
    };
    const SENT: usize = 200;
    let started = Instant::now();
    let mut accepted = Vec::new();
    for i in 0..SENT {
        if store.host_seen(hello(i)) {
            accepted.push(format!("host-{i:03}"));
        }
    }
    let took = started.elapsed();
    eprintln!(
        "queue of 1, store stalled: {} of {SENT} writes accepted",
        accepted.len()
    );
    let stats = store.stats();
    assert!(
        took < Duration::from_secs(1),
        "writes never wait for the store (took {took:?}, the busy timeout is 5 s)"
    );
    assert_eq!(
        stats.dropped,
        (SENT - accepted.len()) as u64,
        "every refusal counted"
    );
    // The thread takes a command or two before it stalls; the queue holds
    // one more. Everything else must have been refused.
    assert!(
        !accepted.is_empty() && accepted.len() <= 10,
        "accepted {}",
        accepted.len()
    );

    blocker.execute_batch("COMMIT")?;
    store.flush().await?;
    let stored: Vec<String> = store
        .list_hosts()
        .await?
        .into_iter()
        .map(|h| h.host)
        .collect();
    assert_eq!(stored, accepted, "exactly what was accepted is stored");
    assert_eq!(store.stats().write_errors, 0);
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn flush_is_a_barrier_and_shutdown_stops_the_store() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let (store, thread, next) = open(cfg.clone())?;
    let e = episode(next, "alpha", Some("beta"), "ack_lost", 1_000);
    assert!(store.open_episode(e.clone()));
    for i in 0..2_000 {
        let s = stored(Side::A, "alpha", i, e.a_flow);
        assert!(store.add_samples(e.id, vec![s]));
    }
    store.flush().await?;
    // Seen by another connection: committed to the file, not just queued.
    assert_eq!(count(&cfg.path, "SELECT count(*) FROM samples"), 2_000);
    let s = store.stats();
    assert_eq!(s.committed_rows, 2_001);
    assert!(s.transactions >= 1 && s.transactions <= 2_001, "{s:?}");

    let other = store.clone();
    stop(store, thread).await;
    let before = other.stats().dropped;
    assert!(!other.add_samples(e.id, vec![stored(Side::B, "beta", 1, e.a_flow)]));
    assert_eq!(other.stats().dropped, before + 1);
    assert!(matches!(other.flush().await, Err(StoreError::Closed)));
    assert!(matches!(other.list_hosts().await, Err(StoreError::Closed)));
    Ok(())
}

/// User plus system CPU time of this process, from `/proc/self/stat`
/// (Linux; `None` elsewhere). Less sensitive than wall time to other work
/// on a busy machine.
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are fields 14 and 15, i.e. 12 and 13 after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // The kernel's USER_HZ, 100 on every Linux ABI we run on.
    Some((utime + stime) / 100.0)
}

/// Throughput: 100,000 samples in 50,000 two-sample commands, the way the
/// matcher sends them (one A and one B end per poll), across 1,000
/// episodes. Run with
/// `cargo test --release -p tcpstall-collector --test store -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "throughput figure, not a check"]
async fn throughput_100k_samples() -> TestResult {
    let dir = TempDir::new()?;
    let (store, thread, next) = open(config(&dir))?;
    let episodes = 1_000;
    for i in 0..episodes {
        assert!(store.open_episode(episode(next + i, "alpha", Some("beta"), "data_lost", i)));
    }
    store.flush().await?;
    let f = flow("198.18.0.1:40000", "198.18.0.2:80");
    // Encoded once: the matcher hands the store the agents' encoding.
    let a = stored(Side::A, "alpha", 0, f);
    let b = stored(Side::B, "beta", 0, f.reversed());
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    let mut sent = 0u64;
    for n in 0..50_000i64 {
        let id = next + n % episodes;
        let pair = vec![
            StoredSample {
                at_ms: n,
                ..a.clone()
            },
            StoredSample {
                at_ms: n,
                ..b.clone()
            },
        ];
        if store.add_samples(id, pair) {
            sent += 2;
        }
    }
    store.flush().await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = process_cpu_secs().zip(cpu_before).map(|(a, b)| a - b);
    let s = store.stats();
    println!(
        "store throughput: {sent} samples in {secs:.3} s = {:.0} rows/s; \
         {} transactions, max commit {} us, dropped {}",
        sent as f64 / secs,
        s.transactions,
        s.max_commit_micros,
        s.dropped
    );
    if let Some(cpu) = cpu {
        println!(
            "process CPU (user+sys) {cpu:.3} s = {:.0} rows per CPU-second",
            sent as f64 / cpu
        );
    }
    assert_eq!(s.dropped, 0);

    println!(
        "each sample {} bytes of protobuf, encoded before (as the agents do)",
        a.sample.len()
    );
    stop(store, thread).await;
    Ok(())
}

#[tokio::test]
async fn a_size_bound_keeps_the_file_under_it_while_writes_go_past_it() -> TestResult {
    const MAX: u64 = 2 * 1024 * 1024;
    let dir = TempDir::new()?;
    let cfg = bounded(&dir, MAX);
    let (store, thread, next) = open(cfg.clone())?;
    // The database's size as a reader sees it (the WAL's committed pages
    // included; the file itself grows only at checkpoints). The WAL file
    // beside it counts against the bound too, but at this tiny bound its
    // smallest size (64 pages) is an eighth of it; the soak benchmark
    // shows both at real sizes.
    let reader = Connection::open(&cfg.path)?;
    let db_bytes = || -> rusqlite::Result<u64> {
        let pragma = |name: &str| reader.pragma_query_value(None, name, |r| r.get::<_, i64>(0));
        Ok(u64::try_from(pragma("page_count")? * pragma("page_size")?).unwrap_or(0))
    };
    let now = unix_ms(SystemTime::now());
    // The oldest of all, and open: never deleted.
    let open = episode(next, "alpha", None, "data_lost", now - 10_000_000);
    assert!(store.open_episode(open.clone()));
    // 800 closed episodes of 40 samples each (~150 bytes of protobuf):
    // several times the bound.
    let mut peak = 0;
    // Once retention began: the most free pages kept.
    let mut kept = 0i64;
    let mut last = next;
    for i in 1..=800 {
        let id = next + i;
        assert!(write_ended(&store, id, now - 5_000_000 + i * 1000));
        // A commit every 5 episodes (~40 KB): less than the 5 % of the
        // bound the store leaves between its mark and the bound.
        if i % 5 == 0 {
            store.flush().await?;
            let size = db_bytes()?;
            peak = peak.max(size);
            if store.stats().pruned_episodes > 0 {
                let free = reader.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
                kept = kept.max(free);
            }
        }
        last = id;
    }
    store.flush().await?;
    let written: i64 =
        Connection::open(&cfg.path)?
            .query_row("SELECT count(*) FROM episodes", [], |r| r.get(0))?;
    assert!(peak <= MAX, "peak {peak} bytes, bound {MAX}");
    // Pages freed by deletion are reused, not given back and regrown.
    assert!(kept > 0, "no free page kept for reuse");
    let pruned = store.stats().pruned_episodes;
    assert!(
        pruned > 400,
        "only {pruned} episodes pruned of 800 ({written} left at the end of writing)"
    );
    assert!(
        store.get_episode(open.id).await?.is_some(),
        "open episodes stay"
    );
    assert!(store.get_episode(last).await?.is_some(), "the newest stays");
    assert!(
        store.get_episode(next + 1).await?.is_none(),
        "the oldest ended went first"
    );
    stop(store, thread).await;
    Ok(())
}

/// Held-span counts count against the size bound as episodes do, and the
/// two go oldest first together: minutes older than the oldest ended
/// episode before it, episodes before the minutes after them. Retention
/// by age alone (days) let the counts, 65,536 rows a minute at 1,000
/// agents, fill a bound by themselves and leave no room for episodes.
#[tokio::test]
async fn a_size_bound_takes_held_span_minutes_and_episodes_oldest_first() -> TestResult {
    const MAX: u64 = 2 * 1024 * 1024;
    const MINUTE: i64 = 60_000;
    let dir = TempDir::new()?;
    let cfg = bounded(&dir, MAX);
    let (store, thread, next) = open(cfg.clone())?;
    let reader = Connection::open(&cfg.path)?;
    let q =
        |sql: &str, p: i64| -> rusqlite::Result<i64> { reader.query_row(sql, [p], |r| r.get(0)) };
    let db_bytes = || -> rusqlite::Result<u64> {
        let pragma = |name: &str| reader.pragma_query_value(None, name, |r| r.get::<_, i64>(0));
        Ok(u64::try_from(pragma("page_count")? * pragma("page_size")?).unwrap_or(0))
    };
    // A minute's counts: 200 pairs of hosts (~20 KB).
    let minute = |m: i64| -> Vec<HeldRow> {
        (0..200)
            .map(|k| {
                let a = format!("host-{k:03}.rack-17.west.example.net");
                held_row(
                    m,
                    &a,
                    "peer.rack-18.west.example.net",
                    HeldEnd::Moved,
                    12_000,
                    1,
                )
            })
            .collect()
    };
    let t0 = (unix_ms(SystemTime::now()) - 10 * 3_600_000) / MINUTE * MINUTE;
    let open = episode(next, "alpha", None, "data_lost", t0 - 4 * 3_600_000);
    assert!(store.open_episode(open.clone()));
    let mut peak = 0;
    // 1. Twenty minutes of counts, then ten episodes ended an hour later.
    for m in 0..20 {
        assert!(store.add_held(minute(t0 + m * MINUTE)));
    }
    let episodes_end = t0 + 60 * MINUTE;
    for i in 1..=10 {
        let e = episode(next + i, "alpha", None, "data_lost", episodes_end - 20_000);
        assert!(store.open_episode(e.clone()));
        let samples = (0..40)
            .map(|k| stored(Side::A, "alpha", e.started_at_ms + k, e.a_flow))
            .collect();
        assert!(store.add_samples(e.id, samples));
        assert!(store.close_episode(
            e.id,
            EpisodeEnd {
                ended_at_ms: episodes_end + i,
                end_reason: "moved".into(),
                duration_ms: 20_000,
            }
        ));
    }
    store.flush().await?;
    // 2. Minutes after them, twice the bound.
    let later = t0 + 120 * MINUTE;
    let episodes_left = "SELECT count(*) FROM episodes WHERE open = 0 AND ?1 = ?1";
    let minutes_before = "SELECT count(DISTINCT minute_ms) FROM held_spans WHERE minute_ms < ?1";
    // Four minutes a commit (~80 KB, within the 5 % the store leaves
    // between its mark and the bound).
    for m in 0..200 {
        assert!(store.add_held(minute(later + m * MINUTE)));
        if m % 4 != 3 {
            continue;
        }
        store.flush().await?;
        peak = peak.max(db_bytes()?);
        if q(episodes_left, 0)? < 10 {
            assert_eq!(
                q(minutes_before, episodes_end)?,
                0,
                "an episode went while older minutes stayed"
            );
        }
        let later_gone = m + 1
            - q(
                "SELECT count(DISTINCT minute_ms) FROM held_spans WHERE minute_ms >= ?1",
                later,
            )?;
        if later_gone > 0 {
            assert_eq!(
                q(episodes_left, 0)?,
                0,
                "a minute after the episodes went before them"
            );
        }
    }
    assert!(peak <= MAX, "peak {peak} bytes, bound {MAX}");
    assert_eq!(q(episodes_left, 0)?, 0, "the ended episodes went");
    assert_eq!(store.stats().pruned_episodes, 10);
    let newest = later + 199 * MINUTE;
    assert_eq!(
        q(
            "SELECT count(*) FROM held_spans WHERE minute_ms = ?1",
            newest
        )?,
        200,
        "the newest minute stays whole"
    );
    let kept = q(minutes_before, newest + 1)?;
    assert!(
        (10..200).contains(&kept),
        "{kept} of 200 later minutes kept: the bound held some, and took the rest"
    );
    assert!(
        store.get_episode(open.id).await?.is_some(),
        "open episodes stay"
    );
    stop(store, thread).await;
    Ok(())
}

/// A reader that holds a snapshot keeps checkpoints from resetting the
/// WAL, which then grows with every commit. Counted against the bound,
/// that growth had the store delete ended episodes to make room, each
/// deletion writing more WAL: all of them would go, and the WAL would not
/// shrink by a byte until the reader let go.
#[tokio::test]
async fn a_wal_held_by_a_reader_does_not_make_the_store_delete_episodes() -> TestResult {
    const MAX: u64 = 2 * 1024 * 1024;
    let dir = TempDir::new()?;
    let cfg = bounded(&dir, MAX);
    let (store, thread, next) = open(cfg.clone())?;
    // Someone's long read: a transaction with a snapshot, held open.
    let reader = Connection::open(&cfg.path)?;
    reader.execute_batch("BEGIN")?;
    let seen: i64 = reader.query_row("SELECT count(*) FROM episodes", [], |r| r.get(0))?;
    assert_eq!(seen, 0);
    let now = unix_ms(SystemTime::now());
    // ~1.2 MB of ended episodes: the pages in use stay under 90 % of the
    // bound, the WAL behind the reader grows by as much.
    let mut ids = Vec::new();
    for i in 1..=120 {
        let id = next + i;
        assert!(write_ended(&store, id, now - 5_000_000 + i * 1000));
        if i % 5 == 0 {
            store.flush().await?;
        }
        ids.push(id);
    }
    store.flush().await?;
    let wal = std::fs::metadata(dir.path().join("tcpstall.db-wal"))?.len();
    let pages: i64 = Connection::open(&cfg.path)?.query_row(
        "SELECT (SELECT page_count FROM pragma_page_count())
              - (SELECT freelist_count FROM pragma_freelist_count())",
        [],
        |r| r.get(0),
    )?;
    let in_use = u64::try_from(pages)? * 4096;
    assert!(
        in_use < MAX / 100 * 90 && in_use + wal > MAX,
        "the case: pages in use {in_use} under the mark, with the WAL {wal} past the bound"
    );
    assert_eq!(store.stats().pruned_episodes, 0, "nothing deleted");
    let kept: i64 = Connection::open(&cfg.path)?.query_row(
        "SELECT count(*) FROM episodes WHERE open = 0",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(kept, 120);
    // The reader lets go: the next checkpoint resets the WAL, and the
    // store goes on as before.
    reader.execute_batch("COMMIT")?;
    assert!(store.open_episode(episode(next + 500, "alpha", None, "data_lost", now)));
    store.flush().await?;
    assert!(store.get_episode(ids[0]).await?.is_some());
    stop(store, thread).await;
    Ok(())
}

/// Retention's statements walk the index on (open, ended_at_ms): no scan of
/// every episode, no sort of every ended one. On the index on `open` alone
/// both cost grew with the table, and the collector's CPU with it.
#[tokio::test]
async fn retention_reads_ended_episodes_by_index_oldest_first() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let (store, thread, _) = open(cfg.clone())?;
    stop(store, thread).await;
    let c = Connection::open(&cfg.path)?;
    for (sql, params) in [
        (schema::PRUNE_BY_AGE, &[1i64, 500][..]),
        (schema::PRUNE_OLDEST, &[500][..]),
    ] {
        let mut plan = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let steps: Vec<String> = plan
            .query_map(rusqlite::params_from_iter(params), |r| {
                r.get::<_, String>(3)
            })?
            .collect::<Result<_, _>>()?;
        let plan = steps.join("\n");
        assert!(
            plan.contains("USING COVERING INDEX episodes_ended")
                || plan.contains("USING INDEX episodes_ended"),
            "{sql}\nplan:\n{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{sql} sorts:\n{plan}");
        assert!(
            !plan.contains("SCAN episodes\n") && !plan.ends_with("SCAN episodes"),
            "{sql} scans:\n{plan}"
        );
    }
    Ok(())
}

/// A host's recent episodes are found by (host, start) on either side, not
/// by reading every episode the host ever had.
#[tokio::test]
async fn a_hosts_recent_episodes_are_read_by_host_and_start() -> TestResult {
    let dir = TempDir::new()?;
    let cfg = config(&dir);
    let (store, thread, _) = open(cfg.clone())?;
    stop(store, thread).await;
    let c = Connection::open(&cfg.path)?;
    let sql = "EXPLAIN QUERY PLAN SELECT id FROM episodes
                WHERE started_at_ms >= ?1 AND (a_host = ?2 OR b_host = ?2)";
    let mut plan = c.prepare(sql)?;
    let steps: Vec<String> = plan
        .query_map(rusqlite::params![1i64, "alpha"], |r| r.get::<_, String>(3))?
        .collect::<Result<_, _>>()?;
    let plan = steps.join("\n");
    for side in ["a", "b"] {
        assert!(
            plan.contains(&format!(
                "episodes_{side}_host_started ({side}_host=? AND started_at_ms>?)"
            )),
            "plan:\n{plan}"
        );
    }
    Ok(())
}
