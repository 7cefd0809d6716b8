//! The question's own stall, at the tools' defaults (issue 20): the client
//! sends its request, gets nothing back (it stops reading, or the answer
//! is lost), and gives up after its RPC timeout by closing the connection.
//! The server's send queue was held for about that long, then the close
//! ended it. Each scenario runs several RPCs whose starts fall at several
//! offsets against the agents' poll ticks.
//!
//! What must come out: a hold given up just past the threshold is one
//! episode with its true length (to a quarter of a second), its diagnosis
//! made from the samples taken while it was held, and how it ended; one
//! given up short of it is no episode but is counted; and the close at
//! the end never makes the verdict `half_open`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tcpstall_proto::v1;
use tcpstall_tests::lab::workload::Rpc;
use tcpstall_tests::lab::{flow_of, Lab, Outcome, Settings};
use tcpstall_tests::{require_root, wait_for};

use crate::RESPONSE;

const HOSTS: &[&str] = &["client", "server"];

/// How close a recorded duration must come to the hold's.
const WITHIN: Duration = Duration::from_millis(250);

/// One RPC the client gave up on.
#[derive(Debug, Clone, Copy)]
struct GaveUp {
    server: SocketAddr,
    client: SocketAddr,
    /// The server began to answer, and the client closed.
    answered: Instant,
    closed: Instant,
}

impl GaveUp {
    fn held(&self) -> Duration {
        self.closed - self.answered
    }
}

/// How the server's answer fails to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The client's application reads nothing.
    NotRead,
    /// The client's host drops every segment of the server's.
    Dropped,
}

/// Runs `n` RPCs, started `gap` apart: in each the client asks, the
/// server answers with more than the client's window, `fault` keeps the
/// answer from being read, and the client closes the connection `timeout`
/// after the answer began (closing with bytes unread, Linux resets it).
/// Returns when every client has closed; the servers' writers stop then.
fn give_up(lab: &Lab, n: usize, gap: Duration, timeout: Duration, fault: Fault) -> Vec<GaveUp> {
    let (client, server) = (lab.host("client"), lab.host("server"));
    std::thread::scope(|s| {
        let rpcs: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    // The workload's own pacing: RPC i starts i gaps in.
                    std::thread::sleep(gap * i as u32);
                    let mut rpc = Rpc::open(client, server);
                    let len = rpc.request(RESPONSE);
                    if fault == Fault::Dropped {
                        client.nft_rule(
                            "input",
                            &format!(
                                "ip saddr {} tcp sport {} tcp dport {}",
                                server.addr,
                                rpc.server_addr.port(),
                                rpc.client_addr.port()
                            ),
                            &format!("answer-{i}"),
                        );
                    }
                    let writer = rpc.respond(len);
                    let answered = writer.started;
                    // The client's RPC timeout, then it closes.
                    std::thread::sleep(
                        (answered + timeout).saturating_duration_since(Instant::now()),
                    );
                    let Rpc {
                        client: socket,
                        client_addr,
                        server_addr,
                        ..
                    } = rpc;
                    drop(socket);
                    let closed = Instant::now();
                    drop(writer);
                    GaveUp {
                        server: server_addr,
                        client: client_addr,
                        answered,
                        closed,
                    }
                })
            })
            .collect();
        rpcs.into_iter()
            .map(|t| t.join().expect("an RPC thread"))
            .collect()
    })
}

/// Every episode of `rpcs`, once each has one closed (or `within` passed,
/// which fails), checking on the way that none was ever `half_open`.
fn closed_episodes(lab: &Lab, rpcs: &[GaveUp], within: Duration) -> Vec<(GaveUp, v1::Episode)> {
    wait_for("an ended episode for every RPC", within, || {
        let eps = lab.episodes();
        for e in &eps {
            assert_ne!(
                e.diagnosis, "half_open",
                "a close made it half-open: {e:#?}"
            );
        }
        rpcs.iter()
            .map(|r| {
                let mine: Vec<&v1::Episode> = eps
                    .iter()
                    .filter(|e| flow_of(e) == Some((r.server, r.client)))
                    .collect();
                assert!(mine.len() <= 1, "one episode per RPC: {mine:#?}");
                mine.first().filter(|e| !e.open).map(|e| (*r, (*e).clone()))
            })
            .collect::<Option<Vec<_>>>()
    })
}

/// Checks one episode against the RPC it came from.
fn expect(r: &GaveUp, e: &v1::Episode, diagnosis: &str, end_reason: &str, lab: &Lab) {
    assert_eq!(e.diagnosis, diagnosis, "{e:#?}");
    assert_eq!(e.end_reason, end_reason, "{e:#?}");
    assert_eq!(e.a_host, lab.host("server").name, "A is the server");
    assert_eq!(e.b_host, lab.host("client").name, "B joined: {e:#?}");
    let got = Duration::from_millis(e.duration_ms);
    assert!(
        got.abs_diff(r.held()) <= WITHIN,
        "recorded {got:?} for a hold of {:?} (within {WITHIN:?})",
        r.held()
    );
}

fn record(scenario: &str, expected: &str, observed: &str, s: Settings, note: String) {
    Outcome {
        scenario,
        expected,
        observed,
        detected: None,
        settings: s,
        note,
    }
    .record();
}

fn durations(found: &[(GaveUp, v1::Episode)]) -> String {
    found
        .iter()
        .map(|(r, e)| {
            format!(
                "{:.2}s for {:.2}s",
                e.duration_ms as f64 / 1e3,
                r.held().as_secs_f64()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn the_questions_stall_given_up_past_the_threshold_is_one_episode_of_its_length() {
    require_root!();
    let s = Settings::DEFAULTS;
    let lab = Lab::start(HOSTS, s);
    // Four RPCs a quarter of a poll apart: their starts fall at four
    // offsets against the agents' ticks.
    let rpcs = give_up(
        &lab,
        4,
        s.interval / 4,
        Duration::from_millis(10_500),
        Fault::NotRead,
    );
    let found = closed_episodes(&lab, &rpcs, 2 * s.interval + Duration::from_secs(3));
    for (r, e) in &found {
        // The client's close with bytes unread resets the server's socket.
        expect(r, e, "peer_not_reading", "reset", &lab);
    }
    record(
        "client reads nothing, gives up after 10.5 s (4 offsets)",
        "peer_not_reading, 10.5 s, reset",
        "peer_not_reading, reset",
        s,
        durations(&found),
    );
}

#[test]
fn an_answer_dropped_until_the_client_gives_up_is_data_lost_of_its_length() {
    require_root!();
    let s = Settings::DEFAULTS;
    let lab = Lab::start(HOSTS, s);
    let rpcs = give_up(
        &lab,
        3,
        s.interval / 3,
        Duration::from_millis(10_500),
        Fault::Dropped,
    );
    let found = closed_episodes(&lab, &rpcs, 2 * s.interval + Duration::from_secs(3));
    for (r, e) in &found {
        // Nothing arrived, so nothing was unread: the client's close sends
        // a FIN, which the server's socket takes with its bytes still held.
        expect(r, e, "data_lost", "closed", &lab);
    }
    record(
        "server's answer dropped, client gives up after 10.5 s (3 offsets)",
        "data_lost, 10.5 s, closed",
        "data_lost, closed",
        s,
        durations(&found),
    );
}

#[test]
fn a_stall_given_up_short_of_the_threshold_is_no_episode_but_is_counted() {
    require_root!();
    let s = Settings::DEFAULTS;
    let lab = Lab::start(HOSTS, s);
    let before = lab.metrics();
    let count = |m: &std::collections::HashMap<String, f64>, le: &str| {
        let key = format!("tcpstall_collector_held_seconds_bucket{{ended=\"reset\",le=\"{le}\"}}");
        m.get(&key).copied().unwrap_or(0.0)
    };
    let rpcs = give_up(
        &lab,
        3,
        s.interval / 3,
        Duration::from_millis(9_500),
        Fault::NotRead,
    );
    // Every span reaches the collector's histogram: three more held
    // between 9 and 10 s, none past 10.
    let after = wait_for("the three spans counted", Duration::from_secs(5), || {
        let m = lab.metrics();
        (count(&m, "+Inf") - count(&before, "+Inf") >= 3.0).then_some(m)
    });
    let more = |le| count(&after, le) - count(&before, le);
    assert_eq!(more("9"), 0.0, "{after:?}");
    assert_eq!(more("10"), 3.0, "{after:?}");
    assert_eq!(more("+Inf"), 3.0, "{after:?}");
    assert!(
        lab.episodes().is_empty(),
        "no episode: {:#?}",
        lab.episodes()
    );
    // The operator sees them by host pair.
    let server = lab.host("server").name.clone();
    let client = lab.host("client").name.clone();
    let stalls = wait_for("the pair's count", Duration::from_secs(5), || {
        let j = lab.cli(&["stalls", "--since", "5m"]);
        let pair = j["pairs"]
            .as_array()?
            .iter()
            .find(|p| p["a_host"] == server.as_str())?
            .clone();
        (pair["held"].as_u64() >= Some(3)).then_some(pair)
    });
    assert_eq!(stalls["b_host"], client.as_str(), "{stalls:#}");
    assert_eq!(stalls["episodes"], 0, "{stalls:#}");
    assert_eq!(stalls["ended"]["reset"], 3, "{stalls:#}");
    assert!(stalls["at_least_3s"].as_u64() >= Some(3), "{stalls:#}");
    let report = lab.cli_text(&["report"]);
    assert!(
        report.contains("held send queues ended short of the 10.0s threshold")
            && report.contains(&format!("{server} -> {client}: 3")),
        "{report}"
    );
    // Still nothing a poll later: no episode was only late.
    crate::assert_no_episode_for(&lab, s.interval, "a stall given up at 9.5 s");
    let longest = stalls["longest_s"].as_f64().unwrap_or(0.0);
    let _ = rpcs;
    record(
        "client reads nothing, gives up after 9.5 s (3 offsets)",
        "no episode; counted",
        "none; 3 in (9 s, 10 s]",
        s,
        format!("longest {longest:.2}s"),
    );
}

#[test]
fn a_stall_closed_at_14_5s_is_never_half_open_in_twenty_tries() {
    require_root!();
    let s = Settings::DEFAULTS;
    let lab = Lab::start(HOSTS, s);
    // Twenty RPCs a tenth of a poll apart: both ends' sockets go at the
    // client's close, and which agent tells first varies.
    let rpcs = give_up(
        &lab,
        20,
        s.interval / 10,
        Duration::from_millis(14_500),
        Fault::NotRead,
    );
    let found = closed_episodes(&lab, &rpcs, 2 * s.interval + Duration::from_secs(3));
    assert_eq!(found.len(), 20);
    for (r, e) in &found {
        expect(r, e, "peer_not_reading", "reset", &lab);
    }
    let ms = found.iter().map(|(_, e)| e.duration_ms);
    let (least, most) = (ms.clone().min().unwrap_or(0), ms.max().unwrap_or(0));
    record(
        "client reads nothing, gives up after 14.5 s (20 offsets)",
        "peer_not_reading every time",
        "peer_not_reading x20",
        s,
        format!(
            "{:.2}-{:.2}s for 14.5s",
            least as f64 / 1e3,
            most as f64 / 1e3
        ),
    );
}
