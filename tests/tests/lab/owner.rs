//! Issue 6: the process that owns each end of a stall, named on both
//! ends of the stored episode; and, with agents that lack CAP_SYS_PTRACE,
//! the owner reads "unknown (no permission)" and nothing else changes.
//!
//! Both ends of the lab's connection are opened by this test process (in
//! two namespace hosts), so both owners are this process.

use serde_json::Value;
use tcpstall_tests::lab::workload::{Pace, Rpc};
use tcpstall_tests::lab::{evidence, Lab, Settings};

use crate::{expect_one, RESPONSE};

const HOSTS: &[&str] = &["client", "server"];

/// A peer_not_reading stall on `lab`; returns the stored episode as
/// `tcpstall show --json` prints it. Checks the diagnosis and its
/// evidence as faults.rs does, so a lab whose agents see less must give
/// the same answer.
fn stalled_episode(lab: &Lab) -> Value {
    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    let len = rpc.request(RESPONSE);
    let _reader = rpc.read(Pace::Paused);
    let fault = std::time::SystemTime::now();
    let _writer = rpc.respond(len);
    let (e, _, _) = expect_one(lab, &rpc, "peer_not_reading", fault);
    assert_eq!(evidence(&e, "a_snd_wnd"), 0, "A sees a zero window");
    assert_eq!(evidence(&e, "b_rcv_wnd"), 0, "B advertises a zero window");
    assert_eq!(evidence(&e, "b_rcv_nxt"), evidence(&e, "a_snd_una"));
    let shown = lab.cli(&["show", &e.id.to_string()]);
    assert_eq!(shown["diagnosis"], "peer_not_reading", "{shown:#}");
    assert_eq!(shown["blame"], "B's application", "{shown:#}");
    shown
}

/// What the agent puts first in the command line: this test binary.
fn argv0() -> String {
    std::env::args().next().unwrap_or_default()
}

fn stall_names_the_owning_process_on_both_ends(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let shown = stalled_episode(&lab);
    for side in ["a", "b"] {
        let end = &shown["peer"][side];
        let owner = &end["owner"];
        assert_eq!(
            owner["pid"].as_u64(),
            Some(u64::from(std::process::id())),
            "peer.{side}: {end:#}"
        );
        let command = owner["command"].as_str().unwrap_or_default();
        assert!(
            command.starts_with(&argv0()),
            "peer.{side}: command {command:?} is not this test ({})",
            argv0()
        );
        assert!(end["owner_unknown"].is_null(), "peer.{side}: {end:#}");
    }
    // The text form says the same, with the source.
    let out = std::process::Command::new(tcpstall_tests::binary("tcpstall"))
        .args(["--collector", &lab.collector.url(), "show"])
        .arg(shown["id"].to_string())
        .output()
        .expect("run tcpstall show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let pid = format!("{} (proc)", std::process::id());
    let row = text
        .lines()
        .find(|l| l.starts_with("owner pid"))
        .unwrap_or_default();
    assert_eq!(
        row.matches(&pid).count(),
        2,
        "both ends: {text}\nthe JSON before: {shown:#}"
    );
    println!("{text}");
}

fn without_cap_sys_ptrace_the_owner_is_unknown_and_the_diagnosis_unchanged(s: Settings) {
    // Root less CAP_SYS_PTRACE may not read the descriptors of a process
    // with more capabilities than it has: this one.
    let lab = Lab::start_wrapped(
        HOSTS,
        s,
        &["setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-all"],
    );
    let shown = stalled_episode(&lab);
    drop(lab);
    for side in ["a", "b"] {
        let end = &shown["peer"][side];
        assert!(end["owner"].is_null(), "peer.{side}: {end:#}");
        assert_eq!(
            end["owner_unknown"], "no_permission",
            "peer.{side}: {end:#}"
        );
        assert_eq!(end["seen"], true, "peer.{side}: {end:#}");
    }
    // The same stall seen by agents with every capability: the same
    // diagnosis, evidence and known facts, but for the owner.
    let full = stalled_episode(&Lab::start(HOSTS, s));
    assert_eq!(shown["diagnosis"], full["diagnosis"]);
    assert_eq!(keys(&shown["evidence"]), keys(&full["evidence"]));
    for side in ["a", "b"] {
        assert_eq!(
            known(&shown["peer"][side]),
            known(&full["peer"][side]),
            "peer.{side}: without CAP_SYS_PTRACE only the owner is unknown"
        );
    }
}

at_both_settings!(stall_names_the_owning_process_on_both_ends:
    stall_names_the_owning_process_on_both_ends_fast,
    stall_names_the_owning_process_on_both_ends_at_the_defaults);
at_both_settings!(without_cap_sys_ptrace_the_owner_is_unknown_and_the_diagnosis_unchanged:
    without_cap_sys_ptrace_the_owner_is_unknown_and_the_diagnosis_unchanged_fast,
    without_cap_sys_ptrace_the_owner_is_unknown_and_the_diagnosis_unchanged_at_the_defaults);

/// The keys of a JSON object.
fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The facts of an end that are known (not null), owner fields aside.
fn known(end: &Value) -> Vec<String> {
    end.as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| !v.is_null() && !k.starts_with("owner"))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}
