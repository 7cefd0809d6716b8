//! TLS end to end (issue 7): a real collector serving TLS with client
//! certificates required of agents, real agents presenting good, foreign,
//! expired and misnamed certificates, the CLI querying over TLS with a
//! token, and plaintext allowed only where it is asked for. Every
//! certificate is made here, in a temporary directory, by rcgen.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tcpstall_tests::{binary, wait_for, AgentProcess, CollectorProcess};

const AGENT_ARGS: &[&str] = &["--interval", "300ms", "--backoff-max", "500ms"];
const DEADLINE: Duration = Duration::from_secs(20);

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), valid
    /// now unless `expired`: (certificate PEM, key PEM).
    fn leaf(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![usage];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }
}

/// Writes `text` to `dir/name`; the path as a string for flags.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path.to_str().expect("utf-8 path").to_string()
}

/// A client identity's files: (cert, key).
fn identity(dir: &Path, tag: &str, pem: (String, String)) -> (String, String) {
    (
        write(dir, &format!("{tag}.crt"), &pem.0),
        write(dir, &format!("{tag}.key"), &pem.1),
    )
}

/// The files of a TLS test: a CA, the collector's identity signed by it,
/// and a query token.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: String,
    server: (String, String),
    token: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = Ca::new("tcpstall test CA");
        let ca_file = write(dir.path(), "ca.crt", &ca.pem());
        let server = identity(
            dir.path(),
            "collector",
            ca.leaf(
                &["localhost", "127.0.0.1"],
                ExtendedKeyUsagePurpose::ServerAuth,
                false,
            ),
        );
        let token = write(dir.path(), "query.token", "tls-test-token\n");
        Pki {
            dir,
            ca,
            ca_file,
            server,
            token,
        }
    }

    fn agent(&self, tag: &str, names: &[&str], expired: bool) -> (String, String) {
        identity(
            self.dir.path(),
            tag,
            self.ca
                .leaf(names, ExtendedKeyUsagePurpose::ClientAuth, expired),
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn https(c: &CollectorProcess) -> String {
    format!("https://127.0.0.1:{}", c.addr.port())
}

/// Starts an agent for `host` presenting `cert` to the collector at `url`.
fn agent(url: &str, host: &str, ca: &str, cert: Option<&(String, String)>) -> AgentProcess {
    let mut args = vec!["--host", host, "--tls-ca", ca];
    if let Some((c, k)) = cert {
        args.extend_from_slice(&["--tls-cert", c, "--tls-key", k]);
    }
    args.extend_from_slice(AGENT_ARGS);
    AgentProcess::start(url, &args)
}

fn cli(args: &[&str]) -> Output {
    Command::new(binary("tcpstall"))
        .args(args)
        .env_remove("TCPSTALL_COLLECTOR")
        .env_remove("TCPSTALL_TOKEN_FILE")
        .env_remove("TCPSTALL_TLS_CA")
        .output()
        .expect("run tcpstall")
}

/// The collector's metric `name`, scraped over plain HTTP on loopback.
fn metric(c: &CollectorProcess, name: &str) -> Option<String> {
    use std::io::{Read, Write};
    let addr = c.metrics_addr()?;
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(str::to_string)
}

#[test]
fn mutual_tls_accepts_the_right_agents_and_refuses_the_others() {
    let pki = Pki::new();
    let pid = std::process::id();
    let collector = CollectorProcess::start(&[
        "--tls-cert",
        &pki.server.0,
        "--tls-key",
        &pki.server.1,
        "--tls-client-ca",
        &pki.ca_file,
        "--query-token-file",
        &pki.token,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let url = https(&collector);

    // A good certificate, naming the host the agent reports for (in
    // another case than the certificate: DNS names compare so).
    let good = format!("tls-good-{pid}");
    let good_cert = pki.agent("good", &[&good.to_uppercase()], false);
    let _good_agent = agent(&url, &good, &pki.ca_file, Some(&good_cert));
    wait_for("the good agent to connect", DEADLINE, || {
        collector.logged(&["agent connected", &good]).then_some(())
    });

    // A certificate from another CA: refused in the handshake.
    let other_ca = Ca::new("some other CA");
    let foreign_host = format!("tls-foreign-{pid}");
    let foreign = identity(
        pki.dir.path(),
        "foreign",
        other_ca.leaf(&[&foreign_host], ExtendedKeyUsagePurpose::ClientAuth, false),
    );
    let foreign_agent = agent(&url, &foreign_host, &pki.ca_file, Some(&foreign));
    wait_for("the foreign certificate to be refused", DEADLINE, || {
        (collector.logged(&["TLS handshake refused", "UnknownIssuer"])
            && foreign_agent.logged(&["cannot reach the collector"]))
        .then_some(())
    });

    // An expired certificate from the right CA: refused in the handshake.
    let expired_host = format!("tls-expired-{pid}");
    let expired = pki.agent("expired", &[&expired_host], true);
    let expired_agent = agent(&url, &expired_host, &pki.ca_file, Some(&expired));
    wait_for("the expired certificate to be refused", DEADLINE, || {
        (collector.logged(&["TLS handshake refused", "certificate expired"])
            && expired_agent.logged(&["cannot reach the collector"]))
        .then_some(())
    });

    // A good certificate for one host, reporting for another: refused at
    // the Hello, both names in the collector's log and the agent's.
    let named = format!("tls-named-{pid}");
    let claimed = format!("tls-claimed-{pid}");
    let misnamed = pki.agent("misnamed", &[&named], false);
    let misnamed_agent = agent(&url, &claimed, &pki.ca_file, Some(&misnamed));
    wait_for("the misnamed agent to be refused", DEADLINE, || {
        (collector.logged(&["agent refused at hello", &claimed, &named])
            && misnamed_agent.logged(&["PermissionDenied", &claimed]))
        .then_some(())
    });

    // No client certificate at all: TLS lets it in (the CLI needs none),
    // the ingest does not.
    let anonymous = format!("tls-anonymous-{pid}");
    let anonymous_agent = agent(&url, &anonymous, &pki.ca_file, None);
    wait_for(
        "the agent without a certificate to be refused",
        DEADLINE,
        || {
            (collector.logged(&["agent refused: no client certificate"])
                && anonymous_agent.logged(&["Unauthenticated"]))
            .then_some(())
        },
    );

    // Plaintext to the TLS port: no stream.
    let plain = format!("tls-plain-{pid}");
    let mut args = vec!["--host", plain.as_str()];
    args.extend_from_slice(AGENT_ARGS);
    let plain_agent = AgentProcess::start(&collector.url(), &args);
    wait_for("the plaintext agent to fail", DEADLINE, || {
        plain_agent
            .logged(&["cannot reach the collector"])
            .then_some(())
    });

    // None of them got in; the good one is still the only agent.
    for host in [
        &foreign_host,
        &expired_host,
        &claimed,
        &named,
        &anonymous,
        &plain,
    ] {
        assert!(
            !collector.logged(&["agent connected", host]),
            "{host} was accepted"
        );
    }
    let handshakes: u64 = metric(
        &collector,
        "tcpstall_collector_tls_handshakes_refused_total",
    )
    .and_then(|v| v.parse().ok())
    .expect("the handshakes refused are counted");
    assert!(
        handshakes >= 2,
        "foreign and expired at least: {handshakes}"
    );
    wait_for("exactly one agent connected", DEADLINE, || {
        (metric(&collector, "tcpstall_collector_agents_connected").as_deref() == Some("1"))
            .then_some(())
    });

    // The CLI over TLS, with the token; without the CA or over http it
    // cannot talk to the collector.
    let o = cli(&[
        "--collector",
        &url,
        "--tls-ca",
        &pki.ca_file,
        "--token-file",
        &pki.token,
        "--json",
        "episodes",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(&[
        "--collector",
        &url,
        "--tls-ca",
        &pki.ca_file,
        "--json",
        "episodes",
    ]);
    assert!(!o.status.success(), "no token, no answer");
    let o = cli(&[
        "--collector",
        &collector.url(),
        "--token-file",
        &pki.token,
        "episodes",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "plaintext to a TLS port: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let other_ca_file = write(pki.dir.path(), "other-ca.crt", &other_ca.pem());
    let o = cli(&["--collector", &url, "--tls-ca", &other_ca_file, "episodes"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a collector the CA did not sign: {err}"
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    let o = cli(&[
        "--collector",
        &url,
        "--tls-ca",
        pki.path("missing.crt").to_str().expect("utf-8"),
        "episodes",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing CA file is a usage error"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--tls-ca"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs the collector binary until it exits or warns that it serves
/// plaintext; returns its exit status (`None`: it was running, and is
/// now stopped) and what it logged.
fn collector_start(args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(binary("tcpstall-collector"))
        .arg("--db")
        .arg(dir.path().join("tcpstall.db"))
        .args(args)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tcpstall-collector");
    let stderr = child.stderr.take().expect("stderr");
    let mut text = String::new();
    let mut running = false;
    // Ends at the warning or when the process exits (EOF); the test's
    // own timeout bounds a hang.
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        text.push_str(&line);
        text.push('\n');
        if line.contains("serving plaintext") {
            running = true;
            break;
        }
    }
    if running {
        let _ = child.kill();
        let _ = child.wait();
        (None, text)
    } else {
        (Some(child.wait().expect("wait")), text)
    }
}

#[test]
fn tls_without_client_certificates_takes_any_agent_that_trusts_it() {
    let pki = Pki::new();
    let collector =
        CollectorProcess::start(&["--tls-cert", &pki.server.0, "--tls-key", &pki.server.1]);
    let host = format!("tls-nocert-{}", std::process::id());
    let _agent = agent(&https(&collector), &host, &pki.ca_file, None);
    wait_for("the agent to connect over TLS", DEADLINE, || {
        collector.logged(&["agent connected", &host]).then_some(())
    });
    assert!(!collector.logged(&["serving plaintext"]));
}

/// Issue 24: a collector name with two addresses, over TLS. The agent
/// dials each address but checks the certificate against the URL's name
/// (the collectors' certificates name the name alone, not the addresses);
/// killed off one with SIGKILL, it is on the other within its backoff. The
/// name is in a hosts file only the agent sees
/// ([`tcpstall_tests::own_hosts_file`]).
#[test]
fn tls_to_a_name_with_two_addresses_checks_the_name_and_moves_on() {
    if !tcpstall_tests::is_root() {
        eprintln!("skipped: needs root for the agent's own mount namespace");
        return;
    }
    const NAME: &str = "collectors.tcpstall.test";
    let pki = Pki::new();
    let server = identity(
        pki.dir.path(),
        "named",
        pki.ca
            .leaf(&[NAME], ExtendedKeyUsagePurpose::ServerAuth, false),
    );
    let tls = ["--tls-cert", &server.0, "--tls-key", &server.1];
    let temp = || std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut nodes = vec![CollectorProcess::start_in(temp(), "127.0.0.2:0", &tls)];
    let port = nodes[0].addr.port();
    nodes.push(CollectorProcess::start_in(
        temp(),
        &format!("127.0.0.3:{port}"),
        &tls,
    ));
    let hosts = pki.path("hosts");
    std::fs::write(&hosts, format!("127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n"))
        .expect("write the hosts file");
    let wrapper = tcpstall_tests::own_hosts_file(&hosts);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let host = format!("tls-two-{}", std::process::id());
    let mut args = vec!["--host", host.as_str(), "--tls-ca", &pki.ca_file];
    args.extend_from_slice(AGENT_ARGS);
    let agent = AgentProcess::start_wrapped(&wrapper, &format!("https://{NAME}:{port}"), &args);
    let first = wait_for("the agent connected over TLS", DEADLINE, || {
        nodes
            .iter()
            .position(|n| n.logged(&["agent connected", &host]))
    });
    nodes[first].kill();
    let killed = std::time::Instant::now();
    let other = &nodes[1 - first];
    wait_for("the agent on the name's other address", DEADLINE, || {
        other.logged(&["agent connected", &host]).then_some(())
    });
    let moved = killed.elapsed();
    eprintln!(
        "on the other address over TLS {} ms after the kill",
        moved.as_millis()
    );
    // --backoff-max 500ms, and a TLS handshake on loopback.
    assert!(moved < Duration::from_millis(1500), "{moved:?}");
    // The collector logs the Hello before the agent has its answer.
    wait_for("the agent's word of the switch", DEADLINE, || {
        agent
            .logged(&["streaming to another collector"])
            .then_some(())
    });
    assert!(!agent.logged(&["certificate"]), "the name checked out");
}

#[test]
fn plaintext_only_where_allowed_and_always_with_a_warning() {
    // Loopback: no flag needed, a warning said.
    let c = CollectorProcess::start(&[]);
    wait_for("the loopback warning", DEADLINE, || {
        c.logged(&["WARN", "serving plaintext on loopback"])
            .then_some(())
    });
    drop(c);

    // Any other address: refused without --plaintext, with a clear error.
    let (status, err) = collector_start(&["--listen", "0.0.0.0:0"]);
    let status = status.expect("exited");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("--plaintext") && err.contains("--tls-cert"),
        "{err}"
    );

    // With --plaintext it starts, and warns.
    let (status, err) = collector_start(&["--listen", "0.0.0.0:0", "--plaintext"]);
    assert!(status.is_none(), "started: {err}");
    assert!(
        err.contains("WARN") && err.contains("serving plaintext"),
        "{err}"
    );

    // A certificate file that is not one: the flag and path named.
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = write(dir.path(), "junk.crt", "not a certificate\n");
    let (status, err) = collector_start(&["--tls-cert", &junk, "--tls-key", &junk]);
    assert!(!status.expect("exited").success(), "{err}");
    assert!(err.contains("--tls-cert") && err.contains(&junk), "{err}");

    // The agent: http:// to another host only with --plaintext (refused
    // before it connects anywhere).
    let out = Command::new(binary("tcpstall-agent"))
        .args([
            "run",
            "--collector",
            "http://198.18.0.1:7786",
            "--host",
            "x",
        ])
        .output()
        .expect("run tcpstall-agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--plaintext") && err.contains("https://"),
        "{err}"
    );
}

/// Fleet mode over TLS (issue 24): a node reaches a NATS server that
/// serves TLS and asks for a token when it trusts the server's CA and has
/// the token; without either it stops at start, saying why.
#[test]
fn a_fleet_node_reaches_nats_over_tls_with_its_token_and_stops_without() {
    tcpstall_tests::require_nats!();
    let pki = Pki::new();
    let dir = pki.dir.path();
    let token = write(dir, "nats.token", "nats-test-secret\n");
    let wrong = write(dir, "wrong.token", "not-it\n");
    let nats = tcpstall_tests::nats::NatsCluster::start_with(
        1,
        &format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ token: \"nats-test-secret\" }}",
            pki.server.0, pki.server.1
        ),
    );
    let url = nats.urls()[0].replace("nats://", "tls://");
    let fleet = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--nats",
            &url,
            "--nats-replicas",
            "1",
            "--partitions",
            "4",
            "--node-name",
            "tls-node",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let args = fleet(&[
        "--nats-tls-ca",
        &pki.ca_file,
        "--nats-token-file",
        &token,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = CollectorProcess::start(&args[2..]);
    wait_for("the node's partitions", DEADLINE, || {
        (tcpstall_tests::lab::fleet::owned(&node) == 4.0).then_some(())
    });
    for (extra, why) in [
        (vec!["--nats-tls-ca", pki.ca_file.as_str()], "no token"),
        (
            vec![
                "--nats-tls-ca",
                pki.ca_file.as_str(),
                "--nats-token-file",
                wrong.as_str(),
            ],
            "the wrong token",
        ),
        (
            vec!["--nats-token-file", token.as_str()],
            "the server's CA not trusted",
        ),
    ] {
        let args = fleet(&extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, log) = collector_start(&args);
        assert!(
            status.is_some_and(|s| !s.success()),
            "{why}: the node must stop at start\n{log}"
        );
        assert!(log.contains("NATS"), "{why}: the error says NATS\n{log}");
        assert!(
            !log.contains("nats-test-secret"),
            "{why}: never the token\n{log}"
        );
    }
    let (status, log) = collector_start(
        &fleet(&["--nats-token-file", "/nonexistent/nats.token"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(
        log.contains("--nats-token-file"),
        "the setting named\n{log}"
    );
}
