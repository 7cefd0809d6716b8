//! `web-page`: how long the web page takes to answer over a large store.
//!
//! Writes `--episodes` ended episodes (four diagnoses, `--hosts` hosts,
//! spread over `--days`) and `--open` open ones into a SQLite store of its
//! own, serves the collector's web page over it in this process, and times
//! `GET`s over loopback HTTP: the History page with each filter and a deep
//! page, and the Now page (every open episode, grouped into incidents).
//! What it times is the server's whole answer, the store's query and the
//! rendering; the browser's drawing is not in it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tcpstall_collector::store::{EpisodeEnd, NewEpisode, SqliteStore, Store, StoreConfig};
use tcpstall_collector::web::{self, Web};
use tcpstall_common::FlowTuple;

#[derive(Debug, Args)]
pub struct WebArgs {
    /// Ended episodes in the store.
    #[arg(long, default_value_t = 1_000_000)]
    episodes: u64,
    /// Open episodes (the Now page's).
    #[arg(long, default_value_t = 1_000)]
    open: u64,
    /// Hosts the episodes' ends are on.
    #[arg(long, default_value_t = 1_000)]
    hosts: u64,
    /// Days the ended episodes spread over, back from now.
    #[arg(long, default_value_t = 30)]
    days: u64,
    /// Requests timed per page.
    #[arg(long, default_value_t = 50)]
    requests: usize,
}

const DIAGNOSES: [&str; 4] = ["peer_not_reading", "data_lost", "ack_lost", "half_open"];

pub fn run(args: &WebArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(measure(args))
}

async fn measure(args: &WebArgs) -> anyhow::Result<()> {
    // A store of its own, made afresh: opening one again ends the
    // episodes it has open, as a collector that starts does.
    let tmp = tempfile::tempdir()?;
    let db = tmp.path().join("tcpstall.db");
    let (store, thread, next) =
        SqliteStore::open(StoreConfig::new(&db)).context("opening the store")?;
    let store: Arc<dyn Store> = Arc::new(store);
    let now_ms = tcpstall_common::time::unix_ms(std::time::SystemTime::now());
    let t = Instant::now();
    fill(&store, args, next, now_ms).await?;
    eprintln!(
        "tcpstall-bench: {} ended and {} open episodes written in {:.1} s",
        args.episodes,
        args.open,
        t.elapsed().as_secs_f64()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let page = Arc::new(Web::new(store.clone(), None, false));
    let server = tokio::spawn(web::serve(listener, page, std::future::pending()));

    println!(
        "Web page over {} ended and {} open episodes ({} hosts, {} days), SQLite, {} requests each:\n",
        args.episodes, args.open, args.hosts, args.days, args.requests
    );
    println!("| page | rows | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let deep = {
        // A page 20 deep: its `after` from a request that lists them.
        let body = get(addr, "/episodes?since=all").await?;
        let after = body
            .split("after=")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        format!("/episodes?since=all&after={after}")
    };
    let pages = [
        ("History, last 24 hours", "/episodes".to_string()),
        ("History, all", "/episodes?since=all".to_string()),
        (
            "History, one diagnosis, 7 days",
            "/episodes?since=7days&diagnosis=data_lost".to_string(),
        ),
        (
            "History, one host, all",
            "/episodes?since=all&host=host-17".to_string(),
        ),
        (
            "History, one host and diagnosis, 30 days",
            "/episodes?since=30days&host=host-17&diagnosis=data_lost".to_string(),
        ),
        (
            "History, open only",
            "/episodes?since=all&state=open".to_string(),
        ),
        ("History, next page", deep),
        (
            "Now (every open episode, by incident)",
            "/now/live".to_string(),
        ),
        ("Now, the whole page", "/now".to_string()),
        (
            "Chart, last 24 hours",
            "/episodes/chart.svg?since=24h".to_string(),
        ),
        (
            "Chart, one diagnosis, 7 days",
            "/episodes/chart.svg?since=7days&diagnosis=data_lost".to_string(),
        ),
        (
            "Chart, 30 days",
            "/episodes/chart.svg?since=30days".to_string(),
        ),
        (
            "Chart, one host, all",
            "/episodes/chart.svg?since=all&host=host-17".to_string(),
        ),
        ("Chart, all", "/episodes/chart.svg?since=all".to_string()),
    ];
    for (name, path) in pages {
        let mut times = Vec::with_capacity(args.requests);
        let mut rows = 0;
        for _ in 0..args.requests {
            let t = Instant::now();
            let body = get(addr, &path).await?;
            times.push(t.elapsed());
            rows = body.matches("<tr class=\"episode\"").count()
                + body.matches("<tr class=\"pair\"").count()
                + body.matches("<rect class=\"bar\"").count();
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {name} | {rows} | {:.1} | {:.1} | {:.1} |",
            ms(at(0.5)),
            ms(at(0.99)),
            ms(at(1.0))
        );
    }
    server.abort();
    store.shutdown().await;
    let _ = thread.join();
    Ok(())
}

/// Writes the episodes, flushing as it goes so that the store's queue never
/// refuses one.
async fn fill(
    store: &Arc<dyn Store>,
    args: &WebArgs,
    next: i64,
    now_ms: i64,
) -> anyhow::Result<()> {
    let span_ms = i64::try_from(args.days * 86_400_000)?;
    let total = args.episodes + args.open;
    for n in 0..total {
        let id = next + i64::try_from(n)?;
        let open = n >= args.episodes;
        // Ended ones spread evenly over the span, oldest first; open ones
        // within the last minutes.
        let started_at_ms = if open {
            now_ms - 600_000 + i64::try_from(n - args.episodes)? * 100
        } else {
            now_ms - span_ms + i64::try_from(n)? * span_ms / i64::try_from(args.episodes.max(1))?
        };
        let a = n % args.hosts;
        let b = (n * 7 + 1) % args.hosts;
        let flow = FlowTuple::new(
            SocketAddr::from((
                [10, (a >> 8) as u8, a as u8, 1],
                40_000 + (n % 20_000) as u16,
            )),
            SocketAddr::from(([10, (b >> 8) as u8, b as u8, 2], 5432)),
        );
        let episode = NewEpisode {
            id,
            diagnosis: DIAGNOSES[(n % 4) as usize].into(),
            summary: "B's window is closed and its application has 124720 bytes unread".into(),
            evidence: BTreeMap::from([
                ("a_snd_una".to_string(), 124_720),
                ("b_rcv_nxt".to_string(), 124_720),
                ("b_rcv_wnd".to_string(), 0),
            ]),
            basis: Default::default(),
            started_at_ms,
            duration_ms: 12_000,
            stuck_bytes: 324_352,
            a_host: format!("host-{a}"),
            a_netns: "host".into(),
            a_flow: flow,
            a_cookie: n,
            b_host: Some(format!("host-{b}")),
            peer_note: None,
            via: None,
        };
        if !store.open_episode(episode) {
            bail!("the store refused episode {id}");
        }
        if !open
            && !store.close_episode(
                id,
                EpisodeEnd {
                    ended_at_ms: started_at_ms + 12_000,
                    end_reason: "drained".into(),
                    duration_ms: 12_000,
                },
            )
        {
            bail!("the store refused the end of episode {id}");
        }
        if n % 10_000 == 9_999 {
            store.flush().await.context("writing")?;
        }
    }
    store.flush().await.context("writing")?;
    Ok(())
}

/// `GET path` over loopback HTTP/1.1: the body, or why not.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        if !raw.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", raw.lines().next().unwrap_or(""));
        }
        Ok(raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    })
    .await?
}
