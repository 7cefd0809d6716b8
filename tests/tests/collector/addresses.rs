//! Address announcements (issue 23) over real gRPC to a real collector:
//! its Welcome says it reads them; one that comes on a stream its host has
//! replaced is ignored (counted stale), one on the host's stream applied;
//! a malformed one ends its stream with InvalidArgument, and the collector
//! stays up.

use std::time::Duration;

use tcpstall_proto::convert;
use tcpstall_proto::v1::{self, agent_message, collector_message};
use tcpstall_tests::fake::{connect, ending, hello};
use tcpstall_tests::{scrape_until, wait_for, CollectorProcess};
use tonic::Code;

fn announcement(addrs: &[&str]) -> v1::AgentMessage {
    v1::AgentMessage {
        body: Some(agent_message::Body::Addresses(v1::Addresses {
            namespaces: vec![v1::Namespace {
                label: "host".into(),
                inode: 1,
                addresses: addrs
                    .iter()
                    .map(|a| convert::ip_to_wire(a.parse().expect("ip")))
                    .collect(),
            }],
        })),
    }
}

/// Waits until the collector's figures say `applied` announcements were
/// applied and `stale` ignored.
async fn counted(collector: &CollectorProcess, applied: f64, stale: f64) {
    let addr = wait_for(
        "the collector's metrics address",
        Duration::from_secs(10),
        || collector.metrics_addr(),
    );
    tokio::task::spawn_blocking(move || {
        scrape_until(
            addr,
            &format!("{applied} announcements applied, {stale} stale"),
            Duration::from_secs(10),
            |get| {
                get("tcpstall_collector_address_updates_total") == applied
                    && get("tcpstall_collector_address_updates_stale_total") == stale
            },
        )
    })
    .await
    .expect("scrape");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_count_on_the_hosts_stream_only_and_are_checked() {
    let mut collector = CollectorProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let url = collector.url();

    let mut old = connect(&url, hello("addr-host", &["198.18.9.50"]))
        .await
        .expect("hello accepted");
    let first = tokio::time::timeout(Duration::from_secs(10), old.rx.message())
        .await
        .expect("a first message in time")
        .expect("a message")
        .expect("not the end");
    match first.body {
        Some(collector_message::Body::Welcome(w)) => {
            assert!(w.reads_addresses, "the Welcome says it reads them: {w:?}")
        }
        other => panic!("the first message is a Welcome: {other:?}"),
    }

    // The host reconnects; its old stream is still open, and speaks.
    let mut new = connect(&url, hello("addr-host", &["198.18.9.50"]))
        .await
        .expect("hello again");
    old.tx
        .send(announcement(&["198.18.9.50", "198.18.9.1"]))
        .await
        .expect("send on the old stream");
    counted(&collector, 0.0, 1.0).await;
    new.tx
        .send(announcement(&["198.18.9.50", "198.18.9.2"]))
        .await
        .expect("send on the new stream");
    counted(&collector, 1.0, 1.0).await;

    // An address of five bytes: refused, naming the field.
    let mut bad = announcement(&["198.18.9.50"]);
    if let Some(agent_message::Body::Addresses(a)) = bad.body.as_mut() {
        a.namespaces[0].addresses.push(v1::Ip {
            octets: vec![198, 18, 9, 3, 0],
        });
    }
    new.tx.send(bad).await.expect("send");
    let status = ending(&mut new).await.expect("a status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(
        status.message().contains("namespaces.addresses"),
        "{status}"
    );
    assert!(collector.alive(), "the collector is up");
    // The log line is read off the collector's stderr by a thread of its
    // own: it may come a moment after the status.
    wait_for("the refusal logged", Duration::from_secs(5), || {
        collector
            .logged(&["agent message refused", "addr-host"])
            .then_some(())
    });
    counted(&collector, 1.0, 1.0).await;
}
