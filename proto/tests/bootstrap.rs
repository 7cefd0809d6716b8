//! Fails when `src/gen/` no longer matches the `.proto` it was generated
//! from. `TCPSTALL_BLESS=1 cargo test -p tcpstall-proto --test bootstrap`
//! rewrites it.

use std::path::Path;

#[test]
fn generated_code_matches_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["tcpstall/v1/tcpstall.proto"], [root.join("proto")])
        .expect("the .proto compiles");
    let out = tempfile::tempdir().expect("temp dir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    let fresh = std::fs::read_to_string(out.path().join("tcpstall.v1.rs")).expect("generated file");
    let checked_in = root.join("src/gen/tcpstall.v1.rs");
    if std::env::var_os("TCPSTALL_BLESS").is_some() {
        std::fs::write(&checked_in, &fresh).expect("write generated code");
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "src/gen/tcpstall.v1.rs is stale: run TCPSTALL_BLESS=1 cargo test -p tcpstall-proto --test bootstrap"
    );
}

/// The collector's ingest server reads `AgentMessage` as `raw::AgentMessage`
/// (samples left encoded); everything else is `v1`'s.
#[test]
fn generated_raw_ingest_server_matches_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fds = protox::compile(["tcpstall/v1/tcpstall.proto"], [root.join("proto")])
        .expect("the .proto compiles");
    let out = tempfile::tempdir().expect("temp dir");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".tcpstall.v1", "crate::v1")
        .extern_path(".tcpstall.v1.AgentMessage", "crate::raw::AgentMessage")
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    let fresh = std::fs::read_to_string(out.path().join("tcpstall.v1.rs")).expect("generated file");
    let checked_in = root.join("src/gen/ingest_raw.rs");
    if std::env::var_os("TCPSTALL_BLESS").is_some() {
        std::fs::write(&checked_in, &fresh).expect("write generated code");
        return;
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == fresh,
        "src/gen/ingest_raw.rs is stale: run TCPSTALL_BLESS=1 cargo test -p tcpstall-proto --test bootstrap"
    );
}
