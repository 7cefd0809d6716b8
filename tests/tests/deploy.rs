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

fn kubernetes() -> PathBuf {
    deploy().join("kubernetes")
}

/// The manifests (not the kustomization, which is not a resource).
fn manifests() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(kubernetes())
        .expect("deploy/kubernetes")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    out.sort();
    out
}

#[test]
fn the_kubernetes_manifests_are_valid() {
    let files = manifests();
    assert_eq!(files.len(), 4, "{files:?}");
    for f in &files {
        let out = match Command::new("kubernetes-validate")
            .args(["--strict", "--no-warn"])
            .arg(f)
            .output()
        {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "SKIP: kubernetes-validate is not installed (pip3 install kubernetes-validate)"
                );
                return;
            }
            Err(e) => panic!("kubernetes-validate: {e}"),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR") && text.contains("passed"),
            "{}:\n{text}",
            f.display()
        );
    }
}

/// A manifest's documents as JSON, read by Python's YAML (installed with
/// kubernetes-validate); `None` (said) without it.
fn documents(path: &Path) -> Option<Vec<serde_json::Value>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(out) = out else {
        eprintln!("SKIP: no python3 with yaml (pip3 install kubernetes-validate brings it)");
        return None;
    };
    Some(serde_json::from_slice(&out.stdout).expect("JSON from python"))
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// A ConfigMap's file, written out to be read as the binary reads it, the
/// Secret's files it names (under /etc/tcpstall/secret/) made beside it.
fn config_file(docs: &[serde_json::Value], key: &str, dir: &Path) -> PathBuf {
    const SECRET: &str = "/etc/tcpstall/secret/";
    let text = kind(docs, "ConfigMap")["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key}"));
    for name in text
        .split(SECRET)
        .skip(1)
        .filter_map(|r| r.split('"').next())
    {
        std::fs::write(dir.join(name), "not-a-real-secret\n").expect("write");
    }
    let here = format!("{}/", dir.display());
    let path = dir.join(key);
    std::fs::write(&path, text.replace(SECRET, &here)).expect("write");
    path
}

#[test]
fn the_agent_daemonset_has_the_units_capabilities_and_reads_only() {
    let Some(docs) = documents(&kubernetes().join("agent.yaml")) else {
        return;
    };
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    let agent = &pod["containers"][0];
    let caps = &agent["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], serde_json::json!(["ALL"]));
    // What the systemd unit grants, and entering pods' namespaces.
    let unit =
        std::fs::read_to_string(deploy().join("../packaging/systemd/tcpstall-agent.service"))
            .expect("the unit");
    let granted = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities");
    let mut want: BTreeSet<String> = granted
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    want.insert("SYS_ADMIN".into());
    let added: BTreeSet<String> = caps["add"]
        .as_array()
        .expect("add")
        .iter()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    assert_eq!(added, want);
    assert_eq!(agent["securityContext"]["privileged"], false);
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    for m in agent["volumeMounts"].as_array().expect("mounts") {
        assert_eq!(m["readOnly"], true, "{m}");
    }
    // Its configuration is one the agent takes.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config_file(&docs, "agent.toml", dir.path());
    let c = tcpstall_agent::config::Config::from_file(&path).expect("the agent reads it");
    c.validate().expect("and takes it");
}

#[test]
fn the_collectors_configurations_are_ones_it_takes() {
    for (file, key) in [
        ("collector.yaml", "collector.toml"),
        ("fleet.yaml", "collector.toml"),
    ] {
        let Some(docs) = documents(&kubernetes().join(file)) else {
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = config_file(&docs, key, dir.path());
        let c = tcpstall_collector::config::Config::from_file(&path)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        c.validate().unwrap_or_else(|e| panic!("{file}: {e}"));
        let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        assert_eq!(
            pod["containers"][0]["securityContext"]["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{file}"
        );
    }
}
