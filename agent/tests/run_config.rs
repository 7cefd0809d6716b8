//! The settings of `tcpstall-agent run` through the real binary:
//! `print-config` with no flags is the committed example, a flag beats the
//! file and the file beats the default, bad settings are named, and `run`
//! refuses to start without a collector.

use std::path::PathBuf;
use std::process::{Command, Output};

use tcpstall_agent::config::Config;

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tcpstall-agent"))
        .args(args)
        .output()
        .expect("run tcpstall-agent")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A file in a directory removed when the returned guard drops, also when
/// the test fails.
fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn print_config_with_no_flags_is_the_committed_example() {
    let out = agent(&["print-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
    let committed = std::fs::read_to_string(&example).expect("agent.example.toml");
    assert_eq!(
        stdout(&out),
        committed,
        "regenerate with `tcpstall-agent print-config > agent/agent.example.toml`"
    );
    let parsed: Config = toml::from_str(&committed).expect("the example parses");
    assert_eq!(parsed, Config::default());
}

#[test]
fn a_flag_beats_the_file_and_the_file_beats_the_default() {
    let (_dir, file) = temp_file(
        "layers.toml",
        "collector = \"http://198.18.0.1:7786\"\nplaintext = true\ninterval = \"3s\"\nbuffer = 5\nhost = \"from-file\"\n",
    );
    let path = file.to_str().expect("utf-8 path");
    let out = agent(&[
        "print-config",
        "--config",
        path,
        "--buffer",
        "9",
        "--interval",
        "750ms",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let effective: Config = toml::from_str(&stdout(&out)).expect("print-config prints TOML");
    assert_eq!(effective.buffer, 9, "flag over file");
    assert_eq!(
        effective.interval,
        std::time::Duration::from_millis(750),
        "flag over file"
    );
    assert_eq!(
        effective.host.as_deref(),
        Some("from-file"),
        "file over default"
    );
    assert_eq!(effective.collector, Some("http://198.18.0.1:7786".into()));
    assert_eq!(
        effective.backoff_max,
        Config::default().backoff_max,
        "default"
    );
}

/// Issue 24: `--collector` repeated is a list, printed as one; a bad URL
/// among them is refused, naming itself.
#[test]
fn the_collector_flag_repeated_is_a_list() {
    let out = agent(&[
        "print-config",
        "--collector",
        "http://127.0.0.1:7786",
        "--collector",
        "http://localhost:7787",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("\ncollector = [\"http://127.0.0.1:7786\", \"http://localhost:7787\"]\n"),
        "{text}"
    );
    let effective: Config = toml::from_str(&text).expect("print-config prints TOML");
    assert_eq!(
        effective.require_collectors().expect("set"),
        ["http://127.0.0.1:7786", "http://localhost:7787"]
    );

    let out = agent(&[
        "print-config",
        "--collector",
        "http://127.0.0.1:7786",
        "--collector",
        "ftp://127.0.0.1:7787",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`ftp://127.0.0.1:7787`: scheme ftp"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_settings_are_refused_with_their_name() {
    let (_dir, file) = temp_file("typo.toml", "bufer = 3\n");
    let path = file.to_str().expect("utf-8 path");
    let out = agent(&["print-config", "--config", path]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bufer"), "{}", stderr(&out));

    let out = agent(&["print-config", "--interval", "soon"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("soon"), "{}", stderr(&out));

    let out = agent(&["print-config", "--buffer", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("buffer"), "{}", stderr(&out));

    let out = agent(&["print-config", "--batch-max", "0"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--batch-max"), "{}", stderr(&out));
}

#[test]
fn run_without_a_collector_says_so() {
    let out = agent(&["run", "--interval", "1s"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--collector"), "{}", stderr(&out));
}
