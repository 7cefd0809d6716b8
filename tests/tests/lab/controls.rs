//! Controls: connections that are not stuck must give no episode over
//! their whole run (the threshold, two polls, and a second more).

use std::time::Duration;

use tcpstall_common::TimerKind;
use tcpstall_tests::lab::workload::{keepalive, Pace, Rpc};
use tcpstall_tests::lab::{Lab, Outcome, Settings};
use tcpstall_tests::wait_for;

use crate::assert_no_episode_for;

const HOSTS: &[&str] = &["client", "server"];

fn run_length(s: Settings) -> Duration {
    s.detection_bound() + Duration::from_secs(1)
}

fn no_episode(name: &str, settings: Settings, note: String) {
    Outcome {
        scenario: &crate::scenario(name, settings),
        expected: "no episode",
        observed: "none",
        detected: None,
        settings,
        note,
    }
    .record();
}

fn bulk_transfer_at_full_speed_gives_no_episode(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    let len = rpc.request(u64::MAX);
    let reader = rpc.read(Pace::Full);
    let writer = rpc.respond(len);
    assert_no_episode_for(&lab, run_length(s), "a bulk transfer");
    let secs = run_length(s).as_secs_f64();
    let got = reader.got();
    let mb = got as f64 / 1e6;
    assert!(
        mb > 50.0,
        "the transfer ran at full speed: {mb:.0} MB in {secs:.1} s"
    );
    // The writer counts a write when it returns, which may be after the
    // reader has already counted its bytes: wait for the count, bounded.
    wait_for(
        "the writer to have counted every byte the reader got",
        Duration::from_secs(5),
        || (writer.written() >= got).then_some(()),
    );
    no_episode("healthy bulk transfer", s, format!("{:.0} MB/s", mb / secs));
}

fn slow_reader_that_keeps_moving_gives_no_episode(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let server = lab.host("server");
    let mut rpc = Rpc::open(lab.host("client"), server);
    let len = rpc.request(super::RESPONSE);
    // 16 KiB every 100 ms: far slower than the link, never stopping.
    let reader = rpc.read(Pace::Slow {
        bytes: 16 * 1024,
        every: Duration::from_millis(100),
    });
    let _writer = rpc.respond(len);
    let before = wait_for("the server's queue filled", Duration::from_secs(5), || {
        server
            .socket(rpc.server_addr, rpc.client_addr)
            .filter(|x| x.wqueue > 0)
    });
    assert_no_episode_for(&lab, run_length(s), "a slow reader");
    let after = server
        .socket(rpc.server_addr, rpc.client_addr)
        .expect("the server's end");
    assert!(after.wqueue > 0, "the queue never drained: {after:?}");
    let (p0, p1) = (before.positions(), after.positions());
    assert!(p1.snd_una > p0.snd_una, "and kept moving: {p0:?} {p1:?}");
    no_episode(
        "slow reader (16 KiB / 100 ms)",
        s,
        format!(
            "server's queue {} bytes at the end, {} read",
            after.wqueue,
            reader.got()
        ),
    );
}

fn idle_keepalive_connection_gives_no_episode(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let client = lab.host("client");
    let rpc = Rpc::open(client, lab.host("server"));
    keepalive(&rpc.client);
    keepalive(&rpc.server);
    assert_no_episode_for(&lab, run_length(s), "an idle connection");
    let c = client
        .socket(rpc.client_addr, rpc.server_addr)
        .expect("the client's end");
    assert_eq!(c.timer, Some(TimerKind::Keepalive), "{c:?}");
    no_episode(
        "idle connection with keepalive (1 s)",
        s,
        "keepalive timer running, queues empty".to_string(),
    );
}

at_both_settings!(bulk_transfer_at_full_speed_gives_no_episode:
    bulk_transfer_at_full_speed_gives_no_episode_fast,
    bulk_transfer_at_full_speed_gives_no_episode_at_the_defaults);
at_both_settings!(slow_reader_that_keeps_moving_gives_no_episode:
    slow_reader_that_keeps_moving_gives_no_episode_fast,
    slow_reader_that_keeps_moving_gives_no_episode_at_the_defaults);
at_both_settings!(idle_keepalive_connection_gives_no_episode:
    idle_keepalive_connection_gives_no_episode_fast,
    idle_keepalive_connection_gives_no_episode_at_the_defaults);
