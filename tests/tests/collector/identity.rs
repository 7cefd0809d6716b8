//! One host name, one machine (issue 24, part 2): a second machine that
//! claims a host name a live agent holds is refused, with both machines
//! named, and the holder keeps streaming; the same machine reconnecting
//! replaces its old stream; an agent that says no machine id (an older
//! one) keeps the behaviour from before, counted. Real collector process,
//! real gRPC, and real agents where the real agent can say it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tcpstall_proto::v1::collector_message;
use tcpstall_tests::fake::{connect, hello, hello_of, FakeAgent};
use tcpstall_tests::{scrape_until, series, wait_for, AgentProcess, CollectorProcess};
use tonic::Code;

use crate::e2e::stalled;

const MACHINE_A: &str = "aaaa0000aaaa0000aaaa0000aaaa0000";
const MACHINE_B: &str = "bbbb1111bbbb1111bbbb1111bbbb1111";
const NAME_TAKEN: &str = "tcpstall_collector_hellos_refused_total{reason=\"name_taken\"}";
const UNIDENTIFIED: &str = "tcpstall_collector_hellos_without_machine_id_total";

/// Waits: at most this for anything in these tests.
const WAIT: Duration = Duration::from_secs(15);

fn figures(addr: SocketAddr) -> HashMap<String, f64> {
    series(&tcpstall_tests::scrape(addr))
}

/// The collector's first message on an accepted stream: its Welcome.
async fn welcomed(agent: &mut FakeAgent) {
    let first = tokio::time::timeout(WAIT, agent.rx.message())
        .await
        .expect("the Welcome in time")
        .expect("stream open")
        .expect("a message");
    assert!(
        matches!(first.body, Some(collector_message::Body::Welcome(_))),
        "{first:?}"
    );
}

fn collector_with_metrics() -> (CollectorProcess, SocketAddr) {
    let collector = CollectorProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = wait_for("the collector's metrics address", WAIT, || {
        collector.metrics_addr()
    });
    (collector, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_machines_one_name_the_second_is_refused_with_both_named() {
    let (collector, metrics) = collector_with_metrics();
    let url = collector.url();
    let host = format!("dup-{}", std::process::id());
    // Something for the holder to report: its samples show it streams on.
    let _stuck = stalled();
    let agent_args = |machine: &'static str| {
        vec![
            "--host".to_string(),
            host.clone(),
            "--machine-id".into(),
            machine.into(),
            "--interval".into(),
            "300ms".into(),
            "--backoff-max".into(),
            "500ms".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ]
    };
    let args_a = agent_args(MACHINE_A);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let _a = AgentProcess::start(&url, &args_a);
    wait_for("machine A's agent connected", WAIT, || {
        collector
            .logged(&["agent connected", &host, MACHINE_A])
            .then_some(())
    });

    // Machine B over gRPC: refused with ALREADY_EXISTS, both named.
    let refused = connect(&url, hello_of(&host, MACHINE_B, &["198.18.24.2"]))
        .await
        .expect_err("the name is machine A's");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    let message = refused.message();
    for part in [
        host.as_str(),
        MACHINE_A,
        MACHINE_B,
        "127.0.0.1:",
        "since",
        "--host",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    let got = scrape_until(metrics, "one refusal counted", WAIT, |v| {
        v(NAME_TAKEN) >= 1.0
    });
    assert_eq!(got.get(NAME_TAKEN), Some(&1.0), "exactly one: {got:?}");
    assert_eq!(got.get("tcpstall_collector_agents_connected"), Some(&1.0));
    assert!(collector.logged(&["agent refused", &host, MACHINE_A, MACHINE_B]));

    // Machine B's real agent: refused too; it says so at error level with
    // the collector's message, counts it apart from failures, and retries.
    let args_b = agent_args(MACHINE_B);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let b = AgentProcess::start(&url, &args_b);
    wait_for("machine B's agent logs the refusal", WAIT, || {
        b.logged(&[
            "ERROR",
            "refused this agent's hello",
            &host,
            MACHINE_A,
            MACHINE_B,
        ])
        .then_some(())
    });
    assert!(
        !b.logged(&["cannot reach the collector"]),
        "a refusal is not a network failure"
    );
    let b_metrics = wait_for("machine B's metrics address", WAIT, || b.metrics_addr());
    scrape_until(b_metrics, "B refused again, never connected", WAIT, |v| {
        v("tcpstall_agent_hellos_refused_total{reason=\"name_taken\"}") >= 2.0
            && v("tcpstall_agent_connected") == 0.0
    });

    // Machine A streams on: its samples still reach the collector, and its
    // stream was never replaced.
    let before = figures(metrics)
        .get("tcpstall_collector_samples_received_total")
        .copied()
        .unwrap_or(0.0);
    scrape_until(metrics, "A's samples keep coming", WAIT, |v| {
        v("tcpstall_collector_samples_received_total") > before
            && v("tcpstall_collector_agents_connected") == 1.0
            && v(NAME_TAKEN) >= 3.0
    });
    assert!(!collector.logged(&["previous stream is replaced", &host]));
    assert!(!collector.logged(&["agent gone", &host]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_machine_reconnecting_replaces_its_old_stream() {
    let (collector, metrics) = collector_with_metrics();
    let url = collector.url();
    let host = format!("again-{}", std::process::id());
    let mut old = connect(&url, hello_of(&host, MACHINE_A, &["198.18.24.3"]))
        .await
        .expect("first stream");
    welcomed(&mut old).await;
    // The old stream is still open (its end not noticed): the same machine
    // comes back on a new one, and is taken.
    let mut new = connect(&url, hello_of(&host, MACHINE_A, &["198.18.24.3"]))
        .await
        .expect("the same machine is taken again");
    welcomed(&mut new).await;
    wait_for("the old stream replaced", WAIT, || {
        collector
            .logged(&["previous stream is replaced", &host])
            .then_some(())
    });
    let got = scrape_until(metrics, "one agent", WAIT, |v| {
        v("tcpstall_collector_agents_connected") == 1.0
    });
    assert_eq!(got.get(NAME_TAKEN), Some(&0.0), "{got:?}");
    // The name is the new stream's: another machine is still refused, and
    // told of the machine that holds it.
    let refused = connect(&url, hello_of(&host, MACHINE_B, &["198.18.24.4"]))
        .await
        .expect_err("held");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert!(refused.message().contains(MACHINE_A), "{refused:?}");
    drop(old);
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_machine_id_replaces_as_before_warned_once_and_counted() {
    let (collector, metrics) = collector_with_metrics();
    let url = collector.url();
    let host = format!("old-{}", std::process::id());
    // Two Hellos without a machine id (an older agent's, or two machines'
    // that cannot be told apart): the second replaces the first, as before.
    let mut first = connect(&url, hello(&host, &["198.18.24.5"]))
        .await
        .expect("taken");
    welcomed(&mut first).await;
    let mut second = connect(&url, hello(&host, &["198.18.24.6"]))
        .await
        .expect("replaces, as before machine ids");
    welcomed(&mut second).await;
    wait_for("the first replaced", WAIT, || {
        collector
            .logged(&["previous stream is replaced", &host])
            .then_some(())
    });
    let got = scrape_until(metrics, "both counted", WAIT, |v| v(UNIDENTIFIED) >= 2.0);
    assert_eq!(got.get(UNIDENTIFIED), Some(&2.0), "{got:?}");
    assert_eq!(got.get(NAME_TAKEN), Some(&0.0), "{got:?}");
    // An identified agent for a name an unidentified one holds: nothing
    // tells the machines apart, so it replaces it too.
    let mut identified = connect(&url, hello_of(&host, MACHINE_A, &["198.18.24.7"]))
        .await
        .expect("replaces the unidentified holder");
    welcomed(&mut identified).await;
    let got = scrape_until(metrics, "one agent", WAIT, |v| {
        v("tcpstall_collector_agents_connected") == 1.0
    });
    assert_eq!(got.get(UNIDENTIFIED), Some(&2.0), "{got:?}");
    // Warned of once for the host, not once per Hello.
    let warnings = collector
        .log
        .lock()
        .map(|l| {
            l.iter()
                .filter(|line| line.contains("says no machine id") && line.contains(&host))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(warnings, 1);
    drop((first, second, identified));
}
