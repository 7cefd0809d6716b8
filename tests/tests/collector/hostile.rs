//! Hostile input: garbage, out-of-order, oversized and impossible messages
//! are refused with a gRPC status; the collector stays up and another
//! agent's stream and episode are untouched.

use std::io::{Read, Write};
use std::time::Duration;

use tcpstall_common::FlowTuple;
use tcpstall_proto::v1::{self, agent_message, query_client::QueryClient};
use tcpstall_tests::CollectorProcess;
use tonic::Code;

use tcpstall_tests::fake::{batch, connect, ending, hello, stuck, suspect};

async fn episodes(url: &str, host: &str) -> Vec<v1::Episode> {
    let mut q = QueryClient::connect(url.to_string())
        .await
        .expect("query client");
    q.list_episodes(v1::ListEpisodesRequest {
        host: host.into(),
        ..Default::default()
    })
    .await
    .expect("list episodes")
    .into_inner()
    .episodes
}

async fn wait_episodes(url: &str, host: &str, n: usize) -> Vec<v1::Episode> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let eps = episodes(url, host).await;
        if eps.len() >= n {
            return eps;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} episodes of {host}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_and_others_are_untouched() {
    let mut collector = CollectorProcess::start(&[
        "--threshold",
        "1s",
        "--max-batch-samples",
        "100",
        "--max-message-bytes",
        "65536",
    ]);
    let url = collector.url();

    // A well-behaved agent with a stuck flow to an unmonitored peer.
    let flow = FlowTuple::new(
        "198.18.7.1:8080".parse().expect("addr"),
        "198.18.7.2:40000".parse().expect("addr"),
    );
    let good = connect(&url, hello("good", &["198.18.7.1"]))
        .await
        .expect("good agent");
    good.tx
        .send(batch(
            Duration::from_secs(100),
            vec![suspect(&stuck(flow, 1, 0))],
        ))
        .await
        .expect("send");
    good.tx
        .send(batch(
            Duration::from_millis(101_500),
            vec![suspect(&stuck(flow, 1, 1500))],
        ))
        .await
        .expect("send");
    let eps = wait_episodes(&url, "good", 1).await;
    assert_eq!(eps[0].diagnosis, "peer_unmonitored");

    // 1. Bytes that are not HTTP/2 at all.
    {
        let mut raw = std::net::TcpStream::connect(collector.addr).expect("raw connect");
        raw.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let garbage: Vec<u8> = (0..8192u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let _ = raw.write_all(&garbage);
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink);
    }

    // 2. A batch before any Hello.
    let status = connect(&url, batch(Duration::ZERO, vec![]))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("Hello"), "{status}");

    // 3. A protocol from the future.
    let mut h = hello("future", &[]);
    if let Some(agent_message::Body::Hello(x)) = h.body.as_mut() {
        x.protocol = 99;
    }
    let status = connect(&url, h).await.expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");

    // 4. Impossible values: an unknown TCP state, snd_nxt below snd_una.
    for breaker in [
        Box::new(|s: &mut v1::Sample| s.state = 99) as Box<dyn Fn(&mut v1::Sample)>,
        Box::new(|s: &mut v1::Sample| s.snd_nxt = Some(1)),
        Box::new(|s: &mut v1::Sample| s.snd_wscale = Some(200)),
    ] {
        let mut evil = connect(&url, hello("evil", &["198.18.7.9"]))
            .await
            .expect("hello accepted");
        let mut s = suspect(&stuck(flow, 9, 0));
        breaker(&mut s);
        evil.tx
            .send(batch(Duration::from_secs(1), vec![s]))
            .await
            .expect("send");
        let status = ending(&mut evil).await.expect("a status");
        assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    }
    assert!(
        collector.logged(&["agent message refused", "evil"]),
        "the log names the refused agent"
    );

    // 5. Too many entries in one batch.
    let mut evil = connect(&url, hello("evil", &["198.18.7.9"]))
        .await
        .expect("hello");
    let many: Vec<v1::Sample> = (0..101)
        .map(|i| suspect(&stuck(flow, 100 + i, 0)))
        .collect();
    let _ = evil.tx.send(batch(Duration::from_secs(1), many)).await;
    let status = ending(&mut evil).await.expect("a status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");

    // 6. A message larger than the collector accepts.
    let mut evil = connect(&url, hello("evil", &["198.18.7.9"]))
        .await
        .expect("hello");
    let mut big = suspect(&stuck(flow, 7, 0));
    big.netns = "x".repeat(100_000);
    let _ = evil.tx.send(batch(Duration::from_secs(1), vec![big])).await;
    // tonic refuses it while decoding (OutOfRange); the status does not
    // always reach the client before the connection resets, so the log is
    // the witness that it was refused rather than dropped.
    if let Some(status) = ending(&mut evil).await {
        assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{status}"
        );
    }
    tcpstall_tests::wait_for(
        "the oversized message refused in the log",
        Duration::from_secs(5),
        || {
            collector
                .logged(&["agent message refused", "evil", "too large"])
                .then_some(())
        },
    );

    // The collector is up, the good agent's stream still works, its one
    // episode is intact, and nothing of the evil agent was stored.
    assert!(collector.alive(), "collector died");
    good.tx
        .send(batch(
            Duration::from_millis(102_000),
            vec![suspect(&stuck(flow, 1, 2000))],
        ))
        .await
        .expect("good stream still open");
    let eps = episodes(&url, "good").await;
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert!(eps[0].open);
    assert!(episodes(&url, "evil").await.is_empty());
    drop(good);
}

/// The collector reads the ingest stream's messages itself (not through
/// tonic's reader): batches far larger than an HTTP/2 frame (16 KB), sent
/// back to back so that one batch's end and the next's start can share a
/// frame, arrive whole, every sample of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_spread_over_many_http2_frames_are_read_whole() {
    const FLOWS: u16 = 1_000;
    let collector = CollectorProcess::start(&["--threshold", "1s"]);
    let url = collector.url();
    let flows: Vec<FlowTuple> = (0..FLOWS)
        .map(|i| {
            FlowTuple::new(
                "198.18.9.1:8080".parse().expect("addr"),
                std::net::SocketAddr::from(([198, 18, 9, 2], 20_000 + i)),
            )
        })
        .collect();
    let big = connect(&url, hello("big", &["198.18.9.1"]))
        .await
        .expect("hello accepted");
    for (mono_ms, held_ms) in [(100_000, 0), (101_500, 1_500)] {
        let samples: Vec<v1::Sample> = flows
            .iter()
            .zip(1u64..)
            .map(|(f, cookie)| suspect(&stuck(*f, cookie, held_ms)))
            .collect();
        let msg = batch(Duration::from_millis(mono_ms), samples);
        let wire = prost::Message::encoded_len(&msg);
        assert!(
            wire > 4 * 16_384,
            "a batch of {wire} bytes spans few frames"
        );
        big.tx.send(msg).await.expect("send");
    }
    let eps = wait_episodes(&url, "big", usize::from(FLOWS)).await;
    let mut ports: Vec<u16> = eps
        .iter()
        .filter_map(|e| tcpstall_tests::lab::flow_of(e).map(|(_, r)| r.port()))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), usize::from(FLOWS), "one episode per flow");
    assert!(!collector.logged(&["agent message refused"]));
    drop(big);
}
