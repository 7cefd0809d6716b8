//! What one stored sample row costs the store: 1,000 open episodes get 20
//! samples each (A's and B's, a pair per poll, as the matcher sends
//! them), then a flush. The samples are built before the clock starts, in
//! the form the matcher hands them over, so that what is timed is the
//! store's work (queue, SQLite, and whatever encoding it does itself).
//!
//! Run with
//! `cargo test --release -p tcpstall-collector --test store_cost -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tcpstall_collector::store::{NewEpisode, SqliteStore, Store, StoreConfig, StoredSample};
use tcpstall_common::{EndSample, FlowTuple, Opened, Side, TimerKind};
use tcpstall_proto::convert::pack;
use tempfile::TempDir;

mod support;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const EPISODES: u32 = 1_000;
/// Polls per episode; each stores A and B.
const POLLS: u32 = 10;
const RUNS: usize = 5;

/// User plus system CPU seconds of this process (`/proc/self/stat`).
fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn flow(i: u32) -> FlowTuple {
    let a = [198, 18, (i >> 8) as u8, i as u8];
    let b = [198, 19, (i >> 8) as u8, i as u8];
    FlowTuple::new(
        SocketAddr::from((a, 10_000 + (i % 50_000) as u16)),
        SocketAddr::from((b, 7001)),
    )
}

/// A stuck sender at poll `n`: zero window, probing.
fn a_end(i: u32, n: u32) -> EndSample {
    let una = (1 << 32) + (u64::from(i) << 24);
    let mut s = support::a_end((u64::from(i) << 1) | 1, una, 65_536);
    s.flow = flow(i);
    s.opened = Some(Opened::Active);
    s.pos.notsent = Some(65_536);
    s.pos.inflight = Some(0);
    s.pos.snd_nxt = Some(una);
    s.pos.snd_wnd = Some(0);
    s.unchanged_ms = 10_000 + u64::from(n) * 1_000;
    s.timer = Some(TimerKind::ZeroWindowProbe);
    s.timer_expires_ms = 1_600;
    let probes = u8::try_from(s.unchanged_ms / 3_000).unwrap_or(u8::MAX);
    s.probes = Some(probes);
    s.backoff = Some(probes.min(15));
    s
}

/// Its peer, whose application does not read.
fn b_end(i: u32, n: u32) -> EndSample {
    let a = a_end(i, n);
    let mut s = support::b_end(&a, a.pos.snd_una.unwrap_or(0), 131_072, 0);
    s.cookie = (1 << 63) | (u64::from(i) << 1);
    s.opened = Some(Opened::Passive);
    s
}

fn episode(id: i64, i: u32) -> NewEpisode {
    let mut evidence = BTreeMap::new();
    evidence.insert("a_sendq".to_string(), 65_536);
    evidence.insert("a_snd_wnd".to_string(), 0);
    evidence.insert("b_recvq".to_string(), 131_072);
    NewEpisode {
        id,
        diagnosis: "peer_not_reading".into(),
        summary: "the peer's application is not reading".into(),
        evidence,
        basis: Default::default(),
        started_at_ms: 1_000 + i64::from(i),
        duration_ms: 10_000,
        stuck_bytes: 65_536,
        a_host: format!("host-{i}"),
        a_netns: "host".into(),
        a_flow: flow(i),
        a_cookie: (u64::from(i) << 1) | 1,
        b_host: Some(format!("peer-{i}")),
        peer_note: None,
        via: None,
    }
}

struct Run {
    wall: Duration,
    cpu: Option<f64>,
    file_bytes: u64,
}

async fn one_run() -> Result<Run, Box<dyn std::error::Error>> {
    let dir = TempDir::new()?;
    let cfg = StoreConfig {
        retention: Duration::from_secs(100 * 365 * 24 * 3600),
        ..StoreConfig::new(dir.path().join("tcpstall.db"))
    };
    let (store, thread, next) = SqliteStore::open(cfg.clone())?;
    for i in 0..EPISODES {
        assert!(store.open_episode(episode(next + i64::from(i), i)));
    }
    store.flush().await?;
    // Poll by poll, every episode's pair, as the matcher sends them.
    let mut pairs = Vec::with_capacity((EPISODES * POLLS) as usize);
    for n in 0..POLLS {
        for i in 0..EPISODES {
            let at_ms = 11_000 + i64::from(n) * 1_000;
            let pair = vec![
                StoredSample {
                    side: Side::A,
                    host: format!("host-{i}"),
                    at_ms,
                    sample: pack(&a_end(i, n)),
                },
                StoredSample {
                    side: Side::B,
                    host: format!("peer-{i}"),
                    at_ms,
                    sample: pack(&b_end(i, n)),
                },
            ];
            pairs.push((next + i64::from(i), pair));
        }
    }
    let before = store.stats();
    let cpu0 = process_cpu_secs();
    let t0 = Instant::now();
    for (id, pair) in pairs {
        assert!(store.add_samples(id, pair), "queue full");
    }
    store.flush().await?;
    let wall = t0.elapsed();
    let cpu = process_cpu_secs().zip(cpu0).map(|(a, b)| a - b);
    let after = store.stats();
    let rows = u64::from(EPISODES * POLLS * 2);
    assert_eq!(after.committed_rows - before.committed_rows, rows);
    assert_eq!(after.write_errors, 0);
    store.shutdown().await;
    thread.join().map_err(|_| "store thread panicked")?;
    // What the rows take once the write-ahead log is folded into the file.
    let c = rusqlite::Connection::open(&cfg.path)?;
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    drop(c);
    Ok(Run {
        wall,
        cpu,
        file_bytes: u64::try_from(pages * size)?,
    })
}

#[tokio::test]
#[ignore = "a cost figure, not a check"]
async fn store_cost_per_sample_row() -> TestResult {
    let rows = f64::from(EPISODES * POLLS * 2);
    let mut walls = Vec::new();
    let mut cpus = Vec::new();
    for k in 0..RUNS {
        let r = one_run().await?;
        let wall_us = r.wall.as_secs_f64() * 1e6 / rows;
        let cpu_us = r.cpu.map(|c| c * 1e6 / rows);
        println!(
            "run {k}: {rows} rows, wall {:.3} s = {wall_us:.1} us/row, process CPU {} us/row, \
             database {} bytes ({:.0} per row, episodes included)",
            r.wall.as_secs_f64(),
            cpu_us.map_or("?".to_string(), |c| format!("{c:.1}")),
            r.file_bytes,
            r.file_bytes as f64 / rows
        );
        walls.push(wall_us);
        cpus.extend(cpu_us);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "median of {RUNS}: wall {:.1} us/row, process CPU {:.1} us/row",
        median(&mut walls),
        median(&mut cpus)
    );
    Ok(())
}
