//! What one stored sample row costs the store: 1,000 open episodes get 20
//! samples each (A's and B's, a pair per poll, as the aggregator sends
//! them), then a flush. The samples are built before the clock starts, in
//! the form the aggregator hands them over, so that what is timed is the
//! store's work (queue, SQLite, and whatever encoding it does itself).
//!
//! Run with
//! `cargo test --release -p tcpstall-collector --test store_cost -- --ignored --nocapture`.
//! The file builds against any version whose `StoredSample::sample` is made
//! `From` an `EndSample`, so the same file measures before and after a
//! change of the stored form.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tcpstall_collector::store::{NewEpisode, Side, Store, StoreConfig, StoredSample};
use tcpstall_common::{EndSample, FlowTuple, Opened, Positions, TcpState, TimerKind};
use tempfile::TempDir;

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

/// Fields as a Linux host reports an established connection.
fn base(flow: FlowTuple, cookie: u64, opened: Opened, pos: Positions) -> EndSample {
    EndSample {
        flow,
        netns: "host".into(),
        state: TcpState::Established,
        cookie,
        inode: (cookie as u32) | 1,
        opened: Some(opened),
        pos,
        unchanged_ms: 0,
        timer: None,
        timer_expires_ms: 0,
        retransmits: Some(0),
        probes: Some(0),
        backoff: Some(0),
        ca_state: Some(0),
        rto_us: Some(204_000),
        rtt_us: Some(180),
        snd_cwnd: Some(10),
        unacked: Some(0),
        lost: Some(0),
        retrans: Some(0),
        total_retrans: Some(0),
        last_data_sent_ms: Some(40),
        last_data_recv_ms: Some(40),
        last_ack_recv_ms: Some(40),
        bytes_retrans: Some(0),
        cork: None,
        cork_source: None,
        nodelay: None,
        nodelay_source: None,
        owner: None,
        owner_missing: None,
        absolute: None,
    }
}

/// A stuck sender at poll `n`: zero window, probing.
fn a_end(i: u32, n: u32) -> EndSample {
    let una = (1 << 32) + (u64::from(i) << 24);
    let sendq = 65_536;
    let pos = Positions {
        sendq,
        recvq: 0,
        notsent: Some(sendq),
        inflight: Some(0),
        snd_una: Some(una),
        snd_nxt: Some(una),
        write_seq: Some(una + u64::from(sendq)),
        rcv_nxt: Some(7_000),
        copied: Some(7_000),
        snd_wnd: Some(0),
        rcv_wnd: Some(65_535 << 7),
        snd_wscale: Some(7),
        rcv_wscale: Some(7),
    };
    let mut s = base(flow(i), (u64::from(i) << 1) | 1, Opened::Active, pos);
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
    let rcv_nxt = (1 << 32) + (u64::from(i) << 24);
    let recvq = 131_072;
    let pos = Positions {
        sendq: 0,
        recvq,
        notsent: Some(0),
        inflight: Some(0),
        snd_una: Some(7_000),
        snd_nxt: Some(7_000),
        write_seq: Some(7_000),
        rcv_nxt: Some(rcv_nxt),
        copied: Some(rcv_nxt - u64::from(recvq)),
        snd_wnd: Some(65_535 << 7),
        rcv_wnd: Some(0),
        snd_wscale: Some(7),
        rcv_wscale: Some(7),
    };
    let mut s = base(
        flow(i).reversed(),
        (1 << 63) | (u64::from(i) << 1),
        Opened::Passive,
        pos,
    );
    s.unchanged_ms = 10_000 + u64::from(n) * 1_000;
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
        started_at_ms: 1_000 + i64::from(i),
        duration_ms: 10_000,
        stuck_bytes: 65_536,
        a_host: format!("host-{i}"),
        a_netns: "host".into(),
        a_flow: flow(i),
        a_cookie: (u64::from(i) << 1) | 1,
        b_host: Some(format!("peer-{i}")),
        peer_note: None,
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
    let (store, thread, next) = Store::open(cfg.clone())?;
    for i in 0..EPISODES {
        assert!(store.open_episode(episode(next + i64::from(i), i)));
    }
    store.flush().await?;
    // Poll by poll, every episode's pair, as the aggregator sends them.
    let mut pairs = Vec::with_capacity((EPISODES * POLLS) as usize);
    for n in 0..POLLS {
        for i in 0..EPISODES {
            let at_ms = 11_000 + i64::from(n) * 1_000;
            let pair = vec![
                StoredSample {
                    side: Side::A,
                    host: format!("host-{i}"),
                    at_ms,
                    sample: a_end(i, n).into(),
                },
                StoredSample {
                    side: Side::B,
                    host: format!("peer-{i}"),
                    at_ms,
                    sample: b_end(i, n).into(),
                },
            ];
            pairs.push((next + i64::from(i), pair));
        }
    }
    let before = store.stats().snapshot();
    let cpu0 = process_cpu_secs();
    let t0 = Instant::now();
    for (id, pair) in pairs {
        assert!(store.add_samples(id, pair), "queue full");
    }
    store.flush().await?;
    let wall = t0.elapsed();
    let cpu = process_cpu_secs().zip(cpu0).map(|(a, b)| a - b);
    let after = store.stats().snapshot();
    let rows = u64::from(EPISODES * POLLS * 2);
    assert_eq!(after.committed_rows - before.committed_rows, rows);
    assert_eq!(after.write_errors, 0);
    let c = rusqlite::Connection::open(&cfg.path)?;
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    drop(c);
    store.shutdown().await;
    thread.join().map_err(|_| "store thread panicked")?;
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
