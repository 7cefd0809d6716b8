//! A sender that sets TCP_CORK and leaves it set: what Linux really does
//! with the corked bytes, and what tcpstall reports for it.
//!
//! Linux holds a corked partial segment only until the zero-window probe
//! timer (at least 200 ms) fires, which sends it anyway; so a cork alone
//! never holds a queue for seconds, and no episode opens.

use std::io::Write;
use std::time::{Duration, Instant};

use tcpstall_tests::lab::workload::{cork, Pace, Rpc};
use tcpstall_tests::lab::{Lab, Outcome, Settings};
use tcpstall_tests::wait_for;

use crate::assert_no_episode_for;

/// A response smaller than one segment: all of it waits for the cork.
const SMALL: usize = 100;

fn corked_partial_response_is_flushed_after_about_200ms_and_gives_no_episode(settings: Settings) {
    let lab = Lab::start(&["client", "server"], settings);
    let server = lab.host("server");
    let mut rpc = Rpc::open(lab.host("client"), server);
    rpc.request(SMALL as u64);
    let reader = rpc.read(Pace::Full);
    cork(&rpc.server, true);
    let t0 = Instant::now();
    rpc.server
        .write_all(&[0x43; SMALL])
        .expect("write the corked response");

    // What a poll sees while the cork holds it (sock_diag, as the agent).
    let held = wait_for(
        "the corked bytes seen held",
        Duration::from_millis(150),
        || {
            let s = server.socket(rpc.server_addr, rpc.client_addr)?;
            let p = s.positions();
            (p.sendq > 0).then_some(p)
        },
    );
    assert_eq!(
        held.notsent,
        Some(SMALL as u32),
        "held as not sent: {held:?}"
    );
    assert_eq!(held.inflight, Some(0), "nothing in flight: {held:?}");

    wait_for("the corked bytes delivered", Duration::from_secs(3), || {
        (reader.got() == SMALL as u64).then_some(())
    });
    let flushed = reader
        .last_read()
        .expect("the client read")
        .duration_since(t0);
    assert!(
        (Duration::from_millis(150)..Duration::from_secs(1)).contains(&flushed),
        "Linux flushes a corked partial segment after about 200 ms, not {flushed:?}"
    );
    let after = server
        .socket(rpc.server_addr, rpc.client_addr)
        .expect("the server's end");
    assert_eq!(after.wqueue, 0, "nothing left queued");

    // The cork is still set, the queue is empty: nothing to report.
    assert_no_episode_for(&lab, settings.detection_bound(), "a corked sender");
    Outcome {
        scenario: &crate::scenario("server corks a 100-byte response and leaves the cork set", settings),
        expected: "no episode (Linux flushes after ~200 ms)",
        observed: "none",
        detected: None,
        settings,
        note: format!(
            "flushed after {} ms; while held: sendq {}, notsent {}, in flight 0, cork not visible to sock_diag",
            flushed.as_millis(),
            held.sendq,
            held.notsent.unwrap_or(0)
        ),
    }
    .record();
}

at_both_settings!(corked_partial_response_is_flushed_after_about_200ms_and_gives_no_episode:
    corked_partial_response_is_flushed_after_about_200ms_and_gives_no_episode_fast,
    corked_partial_response_is_flushed_after_about_200ms_and_gives_no_episode_at_the_defaults);
