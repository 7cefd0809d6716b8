//! Deeper probes than sock_diag, each optional at run time: found out at
//! start, announced, and reported as unavailable (with the reason) rather
//! than failing the agent.
//!
//! | probe | gives | needs |
//! |---|---|---|
//! | [`bpf`]: BPF `iter/tcp` | absolute snd_una/snd_nxt/write_seq/rcv_nxt/copied_seq, rcv_wup, both windows and scales, SACK blocks sent and received, cork and nodelay | CAP_BPF + CAP_PERFMON, kernel BTF, kernel 5.12+, an agent built with clang |
//!
//! Records are joined to the sock_diag samples by socket cookie.

pub mod bpf;
pub mod record;

use std::collections::HashMap;

use tcpstall_common::KernelTcp;

use crate::netns::Netns;
pub use bpf::{ProbeError, TcpIterProbe};

/// One pass of the BPF probe over several namespaces, keyed by socket
/// cookie (cookies are unique across namespaces: one counter per host).
pub fn read_all(
    probe: &mut TcpIterProbe,
    namespaces: &[Netns],
    out: &mut HashMap<u64, KernelTcp>,
) -> Vec<(String, ProbeError)> {
    out.clear();
    let mut failures = Vec::new();
    for ns in namespaces {
        if let Err(e) = probe.read(ns, |t| {
            out.insert(t.cookie, t);
        }) {
            failures.push((ns.label.clone(), e));
        }
    }
    failures
}
