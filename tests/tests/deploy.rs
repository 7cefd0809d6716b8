//! What deploy/ ships beside the binaries: the Prometheus alerting rules
//! pass `promtool check rules` and their unit tests (a stall that fires, a
//! healthy hour that does not), and every metric the rules and the Grafana
//! dashboard name is one a running collector and agent export, so that
//! neither can drift from the metrics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tcpstall_tests::{scrape, wait_for, AgentProcess, CollectorProcess};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `promtool ARGS` in deploy/prometheus: its output, or `None` (said) when
/// promtool is not installed.
fn promtool(args: &[&str]) -> Option<String> {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(deploy().join("prometheus"))
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIP: promtool is not installed (Debian: apt-get install prometheus)");
            return None;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    Some(text)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(checked) = promtool(&["check", "rules", "tcpstall-rules.yml"]) else {
        return;
    };
    assert!(checked.contains("SUCCESS: 9 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "tcpstall-rules.test.yml"]).unwrap_or_default();
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The `tcpstall_…` names in a text: metric names, as rules and
/// dashboards write them.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tcpstall_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // A metric, not a job's or a file's name.
        if name.starts_with("tcpstall_agent_") || name.starts_with("tcpstall_collector_") {
            out.insert(name);
        }
    }
    out
}

/// The metric names in an exposition: each sample line's name.
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let rules =
        std::fs::read_to_string(deploy().join("prometheus/tcpstall-rules.yml")).expect("rules");
    let dashboard = std::fs::read_to_string(deploy().join("grafana/tcpstall-dashboard.json"))
        .expect("dashboard");
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    // Provisioning-ready: every query asks the data source chosen in the
    // dashboard's variable, not one of the author's.
    let panels = parsed["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{} has no query",
            p["title"]
        );
    }
    let named: BTreeSet<String> = names_in(&rules)
        .into_iter()
        .chain(names_in(&dashboard))
        .collect();
    assert!(named.len() >= 15, "{named:?}");

    let collector = CollectorProcess::start(&["--metrics-listen", "127.0.0.1:0"]);
    let host = format!("deploy-{}", std::process::id());
    let agent = AgentProcess::start(
        &collector.url(),
        &[
            "--host",
            &host,
            "--interval",
            "300ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let wait = Duration::from_secs(20);
    let collector_at = wait_for("the collector's metrics address", wait, || {
        collector.metrics_addr()
    });
    let agent_at = wait_for("the agent's metrics address", wait, || agent.metrics_addr());
    let agent_text = wait_for("the agent connected", wait, || {
        let t = scrape(agent_at);
        t.contains("tcpstall_agent_connected 1").then_some(t)
    });
    let have: BTreeSet<String> = exported(&agent_text)
        .into_iter()
        .chain(exported(&scrape(collector_at)))
        .collect();
    let missing: Vec<&String> = named.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named but not exported: {missing:?}\nexported: {have:?}"
    );
}

#[test]
fn names_are_read_from_queries() {
    let q = r#"sum by (le) (rate(tcpstall_agent_poll_duration_seconds_bucket{job=~"$agent"}[5m])) / tcpstall_collector_x"#;
    assert_eq!(
        names_in(q).into_iter().collect::<Vec<_>>(),
        [
            "tcpstall_agent_poll_duration_seconds_bucket",
            "tcpstall_collector_x"
        ]
    );
    assert_eq!(
        exported("# HELP a b\ntcpstall_agent_connected 1\nx_bucket{le=\"1\"} 2\n"),
        BTreeSet::from([
            "tcpstall_agent_connected".to_string(),
            "x_bucket".to_string()
        ])
    );
}
