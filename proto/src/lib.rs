//! The tcpstall wire protocol, package `tcpstall.v1`.
//!
//! `proto/tcpstall/v1/tcpstall.proto` is the source; `src/gen/` holds the
//! Rust generated from it, checked in so that a build needs no `protoc`.
//! `tests/bootstrap.rs` regenerates it (with protox, a Rust protobuf
//! compiler) and fails when the checked-in code has drifted; run it with
//! `TCPSTALL_BLESS=1` to rewrite `src/gen/` after changing the `.proto`.

/// Generated code: lints that do not apply to it are off.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
#[rustfmt::skip]
pub mod v1 {
    include!("gen/tcpstall.v1.rs");
}

/// The Ingest and Query servers the collector serves: `AgentMessage` read
/// as [`raw::AgentMessage`], GetEpisode answered with
/// [`raw::GetEpisodeResponse`]; everything else `v1`'s.
#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
#[rustfmt::skip]
pub mod server {
    include!("gen/server.rs");
}

pub mod convert;
pub mod raw;
pub mod sample_wire;

/// The protocol version this build speaks (`Hello.protocol`).
pub const PROTOCOL_VERSION: u32 = 1;
