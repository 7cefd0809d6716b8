//! `tcpstall demo`: the README's run command, to completion.

use std::process::Command;
use std::time::Duration;

use tcpstall_tests::binary;

#[test]
fn demo_finds_the_stuck_pair_and_leaves_nothing_behind() {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let plot = out_dir.path().join("demo.svg");
    let mut child = Command::new(binary("tcpstall"))
        .args(["demo", "--timeout", "60s", "--plot"])
        .arg(&plot)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tcpstall demo");
    // A deadline of our own, so a hung demo fails the test instead of CI.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tcpstall demo did not finish within 120s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "$ tcpstall report",
        "Incident #",
        "not reading from",
        "peer_not_reading",
        "B's application",
        "$ tcpstall diff",
        "highest ACK sent (rcv_nxt)",
        "B's window is closed: A may not send",
        "demo over",
    ] {
        assert!(
            stdout.contains(needle),
            "`{needle}` missing from:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("shortened for the demo"),
        "the demo says its threshold is shortened"
    );
    // The temporary directory it announced is gone.
    let db = stdout
        .lines()
        .find_map(|l| l.split("database ").nth(1))
        .expect("the demo names its database");
    let dir = std::path::Path::new(db.trim()).parent().expect("directory");
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Everything ran in the one process, which has exited: nothing of it
    // is left (no child processes were started).
}
