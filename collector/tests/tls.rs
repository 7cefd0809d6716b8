//! The binding of an agent's certificate to the host it reports for, and
//! the TLS files' errors, on certificates made here by rcgen.

use std::path::PathBuf;

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::CertificateDer;
use tcpstall_collector::config::Config;
use tcpstall_collector::tls::{agent_identity, check_host, server_config, AgentIdentity};
use tonic::Code;

/// A self-signed certificate naming `names` (the binding check looks at
/// names only; the chain was verified in the handshake).
fn cert(names: &[&str]) -> (CertificateDer<'static>, String, String) {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let key = KeyPair::generate().expect("key");
    let c = CertificateParams::new(names)
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (c.der().clone(), c.pem(), key.serialize_pem())
}

fn identity(names: &[&str]) -> AgentIdentity {
    let (der, _, _) = cert(names);
    agent_identity(true, Some(&[der])).expect("a certificate")
}

#[test]
fn an_agent_reports_only_for_a_host_its_certificate_names() {
    let id = identity(&["web-17.example", "web-17"]);
    check_host(&id, "web-17").expect("named");
    check_host(&id, "WEB-17.Example").expect("DNS names compare case-insensitively");
    let refused = check_host(&id, "db-3").expect_err("another host");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("db-3"), "{}", refused.message());
    assert!(
        refused.message().contains("web-17.example"),
        "{}",
        refused.message()
    );
    let refused = check_host(&id, "web_17!").expect_err("not a DNS name");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused = check_host(&id, "web-17.example.evil").expect_err("suffix");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // An IP address as the host: only an IP subjectAltName names it.
    let ip = identity(&["198.18.0.7"]);
    check_host(&ip, "198.18.0.7").expect("IP SAN");
    check_host(&ip, "198.18.0.8").expect_err("another address");
}

#[test]
fn without_mtls_nothing_is_asked_and_with_it_a_certificate_is_required() {
    let id = agent_identity(false, None).expect("not required");
    check_host(&id, "anything").expect("no binding without mTLS");
    let refused = agent_identity(true, None).expect_err("required");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = agent_identity(true, Some(&[])).expect_err("required");
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[test]
fn bad_tls_files_are_named_by_flag_and_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let put = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let (_, cert_pem, key_pem) = cert(&["localhost"]);
    let good_cert = put("c.crt", &cert_pem);
    let good_key = put("c.key", &key_pem);
    let (_, _, other_key_pem) = cert(&["localhost"]);
    let other_key = put("other.key", &other_key_pem);
    let junk = put("junk.pem", "junk\n");
    let missing = dir.path().join("missing.pem");
    let config = |cert: &PathBuf, key: &PathBuf, ca: Option<&PathBuf>| Config {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key.clone()),
        tls_client_ca: ca.cloned(),
        ..Config::default()
    };
    assert!(
        server_config(&config(&good_cert, &good_key, Some(&good_cert)))
            .expect("good files")
            .is_some()
    );
    assert!(server_config(&Config::default())
        .expect("plaintext")
        .is_none());
    let cases = [
        (config(&missing, &good_key, None), "--tls-cert", &missing),
        (config(&junk, &good_key, None), "--tls-cert", &junk),
        (config(&good_cert, &junk, None), "--tls-key", &junk),
        (
            config(&good_cert, &other_key, None),
            "--tls-key",
            &other_key,
        ),
        (
            config(&good_cert, &good_key, Some(&junk)),
            "--tls-client-ca",
            &junk,
        ),
    ];
    for (c, flag, path) in cases {
        let err = server_config(&c).expect_err("refused").to_string();
        assert!(err.contains(flag), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
