//! Fails when `src/gen/` no longer matches the `.proto` it was generated
//! from. `TCPSTALL_BLESS=1 cargo test -p tcpstall-proto --test bootstrap`
//! rewrites it.

use std::path::Path;

use tonic_prost_build::Builder;

/// Generates the .proto with `builder` and compares (or, blessing,
/// rewrites) `src/gen/<checked_in>`.
fn check(builder: Builder, checked_in: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["tcpstall/v1/tcpstall.proto"], [root.join("proto")])
        .expect("the .proto compiles");
    let out = tempfile::tempdir().expect("temp dir");
    builder
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    let fresh = std::fs::read_to_string(out.path().join("tcpstall.v1.rs")).expect("generated file");
    let path = root.join("src/gen").join(checked_in);
    if std::env::var_os("TCPSTALL_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write generated code");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "src/gen/{checked_in} is stale: run TCPSTALL_BLESS=1 cargo test -p tcpstall-proto --test bootstrap"
    );
}

#[test]
fn generated_code_matches_the_proto() {
    check(
        tonic_prost_build::configure()
            .build_client(true)
            .build_server(true),
        "tcpstall.v1.rs",
    );
}

/// The collector's servers: ingest reads `AgentMessage` as
/// `raw::AgentMessage` (samples left encoded), query answers GetEpisode
/// with `raw::GetEpisodeResponse` (stored samples sent as their bytes);
/// everything else is `v1`'s.
#[test]
fn generated_raw_servers_match_the_proto() {
    check(
        tonic_prost_build::configure()
            .build_client(false)
            .build_server(true)
            .extern_path(".tcpstall.v1", "crate::v1")
            .extern_path(".tcpstall.v1.AgentMessage", "crate::raw::AgentMessage")
            .extern_path(
                ".tcpstall.v1.GetEpisodeResponse",
                "crate::raw::GetEpisodeResponse",
            ),
        "server.rs",
    );
}
