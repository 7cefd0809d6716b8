//! SIGTERM: the collector drains what its streams already sent, the store
//! commits what it holds, and the process exits cleanly within a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tcpstall_common::FlowTuple;
use tcpstall_proto::v1::{self, query_client::QueryClient};
use tcpstall_tests::fake::{batch, connect, hello, stuck, suspect};
use tcpstall_tests::{wait_for, CollectorProcess};

/// Stalls opened by one batch just before the signal.
const STALLS: u16 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_episodes_open_loses_none_of_them() {
    let mut collector = CollectorProcess::start(&["--threshold", "1s"]);
    let url = collector.url();
    let mut agent = connect(&url, hello("term-a", &["198.18.9.1"]))
        .await
        .expect("hello");
    // The Welcome: the stream is established.
    agent.rx.message().await.expect("welcome").expect("welcome");
    let flows: Vec<FlowTuple> = (0..STALLS)
        .map(|i| {
            FlowTuple::new(
                SocketAddr::from(([198, 18, 9, 1], 8080)),
                SocketAddr::from(([198, 18, 9, 2], 40_000 + i)),
            )
        })
        .collect();
    let samples = |unchanged_ms| {
        flows
            .iter()
            .enumerate()
            .map(|(i, f)| suspect(&stuck(*f, 1000 + i as u64, unchanged_ms)))
            .collect::<Vec<_>>()
    };
    agent
        .tx
        .send(batch(Duration::from_secs(100), samples(0)))
        .await
        .expect("send");
    // This batch crosses the threshold for all of them: fifty episodes
    // and their samples go to the store, and the signal follows at once.
    agent
        .tx
        .send(batch(Duration::from_millis(101_500), samples(1500)))
        .await
        .expect("send");
    let pid = Pid::from_raw(i32::try_from(collector.child.id()).expect("pid"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");

    let started = Instant::now();
    let status = wait_for("the collector to exit", Duration::from_secs(15), || {
        collector.child.try_wait().ok().flatten()
    });
    assert!(status.success(), "exit status {status:?}");
    // Two seconds of grace for the streams, then the store's flush.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(collector.logged(&["shutting down"]));

    // A new collector on the same database finds every episode.
    let again = CollectorProcess::start_in(collector.dir.clone(), "127.0.0.1:0", &[]);
    let mut q = QueryClient::connect(again.url()).await.expect("query");
    let episodes = q
        .list_episodes(v1::ListEpisodesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .episodes;
    assert_eq!(episodes.len(), usize::from(STALLS), "{episodes:?}");
    for e in &episodes {
        let detail = q
            .get_episode(v1::GetEpisodeRequest { id: e.id })
            .await
            .expect("get")
            .into_inner();
        assert!(
            detail.samples.iter().any(|s| s.side == "a"),
            "episode {} kept its samples",
            e.id
        );
    }
}

use super::e2e::list as episodes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_threshold_and_a_broken_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("collector.toml");
    std::fs::write(&file, "threshold = \"30s\"\n").expect("write config");
    let path = file.to_str().expect("utf-8 path");
    let mut collector =
        CollectorProcess::start(&["--config", path, "--metrics-listen", "127.0.0.1:0"]);
    let url = collector.url();
    let pid = Pid::from_raw(i32::try_from(collector.child.id()).expect("pid"));
    let mut agent = connect(&url, hello("hup-a", &["198.18.9.17"]))
        .await
        .expect("hello");
    agent.rx.message().await.expect("welcome").expect("welcome");
    let f = FlowTuple::new(
        SocketAddr::from(([198, 18, 9, 17], 8080)),
        SocketAddr::from(([198, 18, 9, 18], 40_000)),
    );
    let send = |mono_ms: u64, unchanged_ms: u64| {
        batch(
            Duration::from_millis(mono_ms),
            vec![suspect(&stuck(f, 77, unchanged_ms))],
        )
    };
    agent.tx.send(send(100_000, 0)).await.expect("send");
    agent.tx.send(send(104_000, 4_000)).await.expect("send");

    // A file that no longer parses: logged, the running settings stay.
    std::fs::write(&file, "threshold = \"soon\"\n").expect("write config");
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    wait_for("the failed reload logged", Duration::from_secs(10), || {
        collector.logged(&["config reload failed"]).then_some(())
    });
    assert!(collector.alive());
    agent.tx.send(send(105_000, 5_000)).await.expect("send");
    // Once the matcher counted the third sample it has judged it: one
    // scrape shows both, from one snapshot of its state.
    let metrics = wait_for("the metrics address", Duration::from_secs(10), || {
        collector.metrics_addr()
    });
    let figures = tokio::task::spawn_blocking(move || {
        tcpstall_tests::scrape_until(metrics, "three samples", Duration::from_secs(10), |get| {
            get("tcpstall_collector_samples_received_total") >= 3.0
        })
    })
    .await
    .expect("scrape");
    let opened: f64 = figures
        .iter()
        .filter(|(k, _)| k.starts_with("tcpstall_collector_episodes_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        opened, 0.0,
        "5 s stuck is no episode under a 30 s threshold: {figures:?}"
    );
    assert!(episodes(&url).await.is_empty());

    std::fs::write(&file, "threshold = \"2s\"\n").expect("write config");
    kill(pid, Signal::SIGHUP).expect("SIGHUP");
    wait_for("the reload logged", Duration::from_secs(10), || {
        collector.logged(&["config reloaded", "2s"]).then_some(())
    });
    agent.tx.send(send(106_000, 6_000)).await.expect("send");
    let mut found = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while found.is_empty() {
        assert!(Instant::now() < deadline, "no episode after the reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
        found = episodes(&url).await;
    }
    assert_eq!(found.len(), 1, "{found:?}");
}
