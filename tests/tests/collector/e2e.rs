//! The real binaries as processes on loopback: a collector with a real
//! SQLite file, a real agent polling this host, real stuck sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tcpstall_proto::convert;
use tcpstall_proto::v1::{self, query_client::QueryClient};
use tcpstall_tests::{scrape, scrape_until, AgentProcess, CollectorProcess};

/// A connection whose receiver never reads: the sender's queue sticks.
pub(crate) struct Stalled {
    sender: TcpStream,
    _receiver: TcpStream,
    /// The sender's end: its local address is the server port.
    sender_addr: SocketAddr,
    receiver_addr: SocketAddr,
}

pub(crate) fn stalled() -> Stalled {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let receiver = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (mut sender, _) = l.accept().expect("accept");
    sender.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![7u8; 65536];
    loop {
        match sender.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    Stalled {
        sender_addr: sender.local_addr().expect("addr"),
        receiver_addr: receiver.local_addr().expect("addr"),
        sender,
        _receiver: receiver,
    }
}

/// A bulk transfer that keeps moving until dropped.
struct Bulk {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    port: u16,
}

fn bulk() -> Bulk {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let mut tx = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (mut rx, _) = l.accept().expect("accept");
    let stop = Arc::new(AtomicBool::new(false));
    let (s1, s2) = (stop.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let chunk = vec![1u8; 65536];
        while !s1.load(Ordering::Relaxed) {
            if tx.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let reader = std::thread::spawn(move || {
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut buf = vec![0u8; 65536];
        while !s2.load(Ordering::Relaxed) {
            match rx.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    });
    Bulk {
        stop,
        threads: vec![writer, reader],
        port,
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub(crate) async fn list(url: &str) -> Vec<v1::Episode> {
    let Ok(mut q) = QueryClient::connect(url.to_string()).await else {
        return Vec::new();
    };
    q.list_episodes(v1::ListEpisodesRequest::default())
        .await
        .map(|r| r.into_inner().episodes)
        .unwrap_or_default()
}

fn flow_of(e: &v1::Episode) -> Option<(SocketAddr, SocketAddr)> {
    let f = convert::flow_from_wire(e.a_flow.as_ref()).ok()?;
    Some((f.local, f.remote))
}

/// Episodes of the flow whose stuck sender is `local` -> `remote`.
async fn episodes_of(url: &str, local: SocketAddr, remote: SocketAddr) -> Vec<v1::Episode> {
    list(url)
        .await
        .into_iter()
        .filter(|e| flow_of(e) == Some((local, remote)))
        .collect()
}

async fn wait_for_episodes(
    url: &str,
    s: &Stalled,
    n: usize,
    open: usize,
    within: Duration,
) -> Vec<v1::Episode> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let eps = episodes_of(url, s.sender_addr, s.receiver_addr).await;
        if eps.len() >= n && eps.iter().filter(|e| e.open).count() >= open {
            return eps;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {n} episodes ({open} open): {eps:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const AGENT_ARGS: &[&str] = &["--interval", "300ms", "--backoff-max", "500ms"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_that_stops_reading_is_one_joined_peer_not_reading_episode() {
    let collector =
        CollectorProcess::start(&["--threshold", "2s", "--metrics-listen", "127.0.0.1:0"]);
    let url = collector.url();
    let host = format!("e2e-{}", std::process::id());
    let mut args = vec!["--host", host.as_str()];
    args.extend_from_slice(AGENT_ARGS);
    let _agent = AgentProcess::start(&url, &args);

    let s = stalled();
    let healthy = bulk();
    let idle = TcpListener::bind("127.0.0.1:0").expect("bind");
    let idle_port = idle.local_addr().expect("addr").port();
    let _idle_client = TcpStream::connect(idle.local_addr().expect("addr")).expect("connect");
    let _idle_server = idle.accept().expect("accept");

    let eps = wait_for_episodes(&url, &s, 1, 1, Duration::from_secs(20)).await;
    // Let a few more polls pass: still exactly one episode.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let eps_again = episodes_of(&url, s.sender_addr, s.receiver_addr).await;
    assert_eq!(eps_again.len(), 1, "exactly one episode: {eps_again:?}");
    let e = &eps[0];
    assert_eq!(e.diagnosis, "peer_not_reading", "{e:?}");
    assert_eq!(e.a_host, host);
    assert_eq!(e.b_host, host, "both ends joined");

    let mut q = QueryClient::connect(url.clone()).await.expect("query");
    let detail = q
        .get_episode(v1::GetEpisodeRequest { id: e.id })
        .await
        .expect("get episode")
        .into_inner();
    let ep = detail.episode.expect("episode");
    assert!(
        ep.evidence.get("b_recvq").copied().unwrap_or(0) > 0,
        "{:?}",
        ep.evidence
    );
    assert_eq!(ep.evidence.get("b_rcv_wnd"), Some(&0), "{:?}", ep.evidence);
    assert_eq!(ep.evidence.get("a_snd_wnd"), Some(&0), "{:?}", ep.evidence);
    let b_samples: Vec<&v1::EndSample> = detail.samples.iter().filter(|x| x.side == "b").collect();
    assert!(!b_samples.is_empty(), "B's samples stored");
    let b = b_samples[0].sample.as_ref().expect("sample");
    assert!(b.recvq > 0 && b.rcv_wnd == Some(0), "{b:?}");
    let a = detail
        .samples
        .iter()
        .find(|x| x.side == "a")
        .and_then(|x| x.sample.as_ref())
        .expect("A sample");
    assert_eq!(a.snd_una, b.rcv_nxt, "A.snd_una == B.rcv_nxt");

    // Prometheus sees it too, under its diagnosis (other tests' stuck
    // sockets on this host may add theirs: at least one).
    let metrics = collector.metrics_addr().expect("metrics address logged");
    let text = scrape(metrics);
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
    };
    assert!(value("tcpstall_collector_episodes_total{diagnosis=\"peer_not_reading\"}") >= 1.0);
    assert!(value("tcpstall_collector_episodes_open{diagnosis=\"peer_not_reading\"}") >= 1.0);
    assert_eq!(
        value("tcpstall_collector_episodes_total{diagnosis=\"ack_lost\"}"),
        0.0
    );
    assert_eq!(value("tcpstall_collector_agents_connected"), 1.0);
    assert!(value("tcpstall_collector_samples_received_total") > 0.0);
    assert!(value("tcpstall_collector_store_rows_total") > 0.0);
    assert!(value("tcpstall_collector_store_samples_total") > 0.0);
    // The suspect and its watched peer are held; jemalloc, the binary's
    // allocator, reports its heap.
    assert!(value("tcpstall_collector_tracked_bytes") > 0.0);
    let (allocated, resident) = (
        value("tcpstall_collector_heap_allocated_bytes"),
        value("tcpstall_collector_heap_resident_bytes"),
    );
    assert!(
        allocated > 0.0 && resident >= allocated,
        "heap {allocated} of {resident} resident"
    );

    // The healthy transfer and the idle connection never became episodes.
    let all = list(&url).await;
    let touches = |e: &v1::Episode, port: u16| {
        flow_of(e).is_some_and(|(l, r)| l.port() == port || r.port() == port)
    };
    assert!(
        !all.iter().any(|e| touches(e, healthy.port)),
        "bulk transfer called stuck: {all:?}"
    );
    assert!(
        !all.iter().any(|e| touches(e, idle_port)),
        "idle connection called stuck: {all:?}"
    );
    drop(s.sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_and_restarted_keeps_episodes_and_agent_comes_back() {
    let mut collector = CollectorProcess::start(&["--threshold", "2s"]);
    let url = collector.url();
    let addr = collector.addr.to_string();
    let dir = collector.dir.clone();
    let host = format!("restart-{}", std::process::id());
    let mut args = vec!["--host", host.as_str()];
    args.extend_from_slice(AGENT_ARGS);
    let _agent = AgentProcess::start(&url, &args);
    let s = stalled();

    let before = wait_for_episodes(&url, &s, 1, 1, Duration::from_secs(20)).await;
    let first_id = before[0].id;
    collector.kill(); // SIGKILL during an open episode
    let collector = CollectorProcess::start_in(dir, &addr, &["--threshold", "2s"]);

    // The agent reconnects by itself and the stall is detected again.
    let after = wait_for_episodes(&url, &s, 2, 1, Duration::from_secs(30)).await;
    let old = after
        .iter()
        .find(|e| e.id == first_id)
        .expect("the first episode survived");
    assert!(
        !old.open,
        "an episode left open by the killed collector is ended"
    );
    assert_eq!(old.end_reason, "collector_restart");
    assert_eq!(old.diagnosis, before[0].diagnosis);
    let new = after.iter().find(|e| e.open).expect("a new open episode");
    assert!(new.id > first_id);
    // Opened at once (the agent had watched it stall all along); the
    // verdict settles when the peer end's first sample arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let eps = episodes_of(&url, s.sender_addr, s.receiver_addr).await;
        let now = eps.iter().find(|e| e.id == new.id).expect("still there");
        if now.diagnosis == "peer_not_reading" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "diagnosis stuck at {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(collector.logged(&["agent connected", &host]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_is_marked_gone_and_others_are_served() {
    let collector = CollectorProcess::start(&["--threshold", "2s"]);
    let url = collector.url();
    let host = format!("gone-{}", std::process::id());
    let mut args = vec!["--host", host.as_str()];
    args.extend_from_slice(AGENT_ARGS);
    let mut agent = AgentProcess::start(&url, &args);
    let other_host = format!("other-{}", std::process::id());
    let mut other_args = vec!["--host", other_host.as_str()];
    other_args.extend_from_slice(AGENT_ARGS);
    let _other = AgentProcess::start(&url, &other_args);
    tcpstall_tests::wait_for("both agents connected", Duration::from_secs(20), || {
        (collector.logged(&["agent connected", &host])
            && collector.logged(&["agent connected", &other_host]))
        .then_some(())
    });

    agent.kill();
    tcpstall_tests::wait_for(
        "the killed agent marked gone",
        Duration::from_secs(20),
        || collector.logged(&["agent gone", &host]).then_some(()),
    );
    // The other agent still streams: a stall it sees becomes an episode.
    let s = stalled();
    let eps = wait_for_episodes(&url, &s, 1, 1, Duration::from_secs(20)).await;
    assert_eq!(eps[0].a_host, other_host);
    assert!(!collector.logged(&["agent gone", &other_host]));
}

#[test]
fn agent_metrics_show_polls_suspects_bytes_sent_and_reconnects() {
    let mut collector = CollectorProcess::start(&["--threshold", "2s"]);
    let (addr, dir) = (collector.addr.to_string(), collector.dir.clone());
    let host = format!("metrics-{}", std::process::id());
    let mut args = vec!["--host", host.as_str(), "--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(AGENT_ARGS);
    let agent = AgentProcess::start(&collector.url(), &args);
    let metrics = tcpstall_tests::wait_for(
        "the agent's metrics address",
        Duration::from_secs(20),
        || agent.metrics_addr(),
    );
    let s = stalled();

    let first = scrape_until(metrics, "a suspect sent", Duration::from_secs(20), |v| {
        v("tcpstall_agent_suspects") >= 1.0
            && v("tcpstall_agent_connected") == 1.0
            && v("tcpstall_agent_sent_samples_total") > 0.0
    });
    let polls = first["tcpstall_agent_polls_total"];
    assert!(polls >= 1.0);
    // The stuck pair and the agent's own stream at least.
    assert!(first["tcpstall_agent_connections"] >= 2.0, "{first:?}");
    assert!(first["tcpstall_agent_sent_bytes_total"] > 0.0, "{first:?}");
    assert!(
        first["tcpstall_agent_sent_messages_total"] >= 2.0,
        "{first:?}"
    );
    assert_eq!(
        first["tcpstall_agent_probe_available{probe=\"sock_diag\"}"],
        1.0
    );
    assert_eq!(first["tcpstall_agent_reconnects_total"], 0.0);
    assert!(first["tcpstall_agent_poll_duration_seconds_count"] >= 1.0);
    scrape_until(metrics, "polls going on", Duration::from_secs(10), |v| {
        v("tcpstall_agent_polls_total") > polls
    });

    collector.kill();
    scrape_until(
        metrics,
        "the stream seen down",
        Duration::from_secs(20),
        |v| v("tcpstall_agent_connected") == 0.0,
    );
    let _collector = CollectorProcess::start_in(dir, &addr, &["--threshold", "2s"]);
    scrape_until(metrics, "a reconnection", Duration::from_secs(30), |v| {
        v("tcpstall_agent_connected") == 1.0 && v("tcpstall_agent_reconnects_total") >= 1.0
    });
    drop(s.sender);
}
