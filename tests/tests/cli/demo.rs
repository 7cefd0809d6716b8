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

/// `tcpstall demo --serve`: the same run, then the web page with the stuck
/// pair on it until Ctrl-C; then it stops as the plain demo does.
#[test]
fn demo_serve_keeps_the_stuck_pair_on_the_web_page_until_ctrl_c() {
    use std::io::{BufRead, Read, Write};

    let out_dir = tempfile::tempdir().expect("temp dir");
    let port = tcpstall_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(binary("tcpstall"))
        .args([
            "demo",
            "--timeout",
            "60s",
            "--serve",
            "--web-listen",
            &addr,
            "--plot",
        ])
        .arg(out_dir.path().join("demo.svg"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run tcpstall demo --serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // Until it says where the page is (a deadline of our own).
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut said = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.starts_with("web page: http://");
                said.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("no web page address within 90 s:\n{}", said.join("\n"));
            }
        }
    }
    assert!(said.last().is_some_and(|l| l.contains(&addr)), "{said:?}");

    // The page, over plain HTTP: the demo's stuck pair, open.
    let mut s = std::net::TcpStream::connect(&addr).expect("the web page");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(
        format!("GET /now HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("request");
    let mut page = String::new();
    s.read_to_string(&mut page).expect("the page");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    for needle in ["demo-host", "peer_not_reading", "not reading from"] {
        assert!(
            page.contains(needle),
            "{needle} missing from the Now page:\n{page}"
        );
    }

    // Ctrl-C: it stops everything and says so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("tcpstall demo --serve did not stop within 30 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    // Its last lines: the reader ends with its output.
    let rest: Vec<String> = rx.iter().collect();
    assert!(rest.iter().any(|l| l.contains("demo over")), "{rest:?}");
}
