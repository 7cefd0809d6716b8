//! Loads the BPF iter/tcp program (built by agent/build.rs from
//! agent/bpf/tcp_iter.bpf.c) and runs it once per poll per namespace.
//!
//! The program is loaded once, at start, with aya (pure Rust: it does the
//! `bpf()` syscalls and the CO-RE relocations against the running kernel's
//! BTF, so our crates stay free of unsafe code). Each pass attaches a new
//! iterator link and opens it with `bpf_iter_create`; the kernel walks the
//! TCP hash tables of the namespace the *opening* thread is in, so for a
//! foreign namespace that one call runs on a thread that entered it
//! ([`netns::run_in`]). Reading the file to its end runs the program over
//! every socket; [`super::record`] parses what it wrote.
//!
//! Needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN on kernels before
//! 5.8), kernel BTF and a kernel of 5.12 or later. Without them the probe
//! reports why and the agent goes on with sock_diag alone.

use std::fs::File;
use std::io::{self, Read};

use aya::programs::Iter;
use aya::{Btf, Ebpf, EbpfLoader};
use tcpstall_common::KernelTcp;

use super::record::{self, RecordStats};
use crate::netns::{self, Netns, NetnsError};

/// The object agent/build.rs compiled; empty when it could not.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_iter.bpf.o"));
/// Why build.rs did not build it; empty when it did.
const BUILD_STATUS: &str = include_str!(concat!(env!("OUT_DIR"), "/tcp_iter.status"));
/// The program's function name in the object.
const PROGRAM: &str = "tcpstall_tcp";

/// Why the probe cannot run (at start) or failed one pass.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("not built into this agent: {0}")]
    NotBuilt(&'static str),
    #[error("loading BPF needs CAP_BPF and CAP_PERFMON: {0}")]
    NoPermission(String),
    #[error("kernel BTF (/sys/kernel/btf/vmlinux) not usable: {0}")]
    Btf(String),
    #[error("loading the iter/tcp program: {0}")]
    Load(String),
    #[error("opening the iterator: {0}")]
    Iter(String),
    #[error("reading the iterator: {0}")]
    Read(#[source] io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl ProbeError {
    /// The probe is missing a capability rather than broken.
    pub fn is_permission(&self) -> bool {
        matches!(self, ProbeError::NoPermission(_))
    }
}

/// The whole error chain in one line, and whether it says EPERM/EACCES.
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> (String, bool) {
    let mut text = e.to_string();
    let mut denied = false;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            denied |= matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
        }
        let more = err.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cur = err.source();
    }
    (text, denied)
}

fn load_error(e: &(dyn std::error::Error + 'static)) -> ProbeError {
    match describe(e) {
        (text, true) => ProbeError::NoPermission(text),
        (text, false) => ProbeError::Load(text),
    }
}

/// The loaded iter/tcp program.
#[derive(Debug)]
pub struct TcpIterProbe {
    ebpf: Ebpf,
    buf: Vec<u8>,
    stats: RecordStats,
}

impl TcpIterProbe {
    /// Whether this build carries the program at all.
    pub fn built() -> Result<(), ProbeError> {
        if OBJECT.is_empty() {
            let why = if BUILD_STATUS.is_empty() {
                "no object"
            } else {
                BUILD_STATUS
            };
            return Err(ProbeError::NotBuilt(why));
        }
        Ok(())
    }

    /// Loads the program into the kernel, once.
    pub fn load() -> Result<TcpIterProbe, ProbeError> {
        Ok(TcpIterProbe {
            ebpf: load_program(PROGRAM)?,
            buf: Vec::new(),
            stats: RecordStats::default(),
        })
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' and benchmarks'
    /// What parsing skipped since the probe was loaded.
    pub fn stats(&self) -> &RecordStats {
        &self.stats
    }

    /// Runs one pass over every TCP connection of `ns` (listeners,
    /// TIME-WAIT and request sockets left out), handing each to `on`.
    pub fn read(&mut self, ns: &Netns, on: impl FnMut(KernelTcp)) -> Result<(), ProbeError> {
        let mut file = open_iter(&mut self.ebpf, PROGRAM, ns)?;
        self.buf.clear();
        file.read_to_end(&mut self.buf).map_err(ProbeError::Read)?;
        record::parse_pass(&self.buf, &mut self.stats, on);
        Ok(())
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' and benchmarks'
    /// One pass that only reads the bytes: the floor of [`Self::read`].
    pub fn read_raw(&mut self, ns: &Netns) -> Result<usize, ProbeError> {
        let mut file = open_iter(&mut self.ebpf, PROGRAM, ns)?;
        self.buf.clear();
        file.read_to_end(&mut self.buf).map_err(ProbeError::Read)
    }
}

/// The embedded object loaded with its maps, and its iter/tcp program
/// `program` loaded into the kernel (relocated against its BTF).
pub(super) fn load_program(program: &str) -> Result<Ebpf, ProbeError> {
    TcpIterProbe::built()?;
    let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(describe(&e).0))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(OBJECT)
        .map_err(|e| load_error(&e))?;
    let prog: &mut Iter = ebpf
        .program_mut(program)
        .ok_or_else(|| ProbeError::Load(format!("no program {program} in the object")))?
        .try_into()
        .map_err(|e| load_error(&e))?;
    prog.load("tcp", &btf).map_err(|e| load_error(&e))?;
    Ok(ebpf)
}

/// Opens a fresh iterator of `program` over `ns`'s TCP sockets.
pub(super) fn open_iter(ebpf: &mut Ebpf, program: &str, ns: &Netns) -> Result<File, ProbeError> {
    let prog: &mut Iter = ebpf
        .program_mut(program)
        .ok_or_else(|| ProbeError::Iter(format!("program {program} is gone")))?
        .try_into()
        .map_err(|e| ProbeError::Iter(describe(&e).0))?;
    let id = prog
        .attach()
        .map_err(|e| ProbeError::Iter(describe(&e).0))?;
    let link = prog
        .take_link(id)
        .map_err(|e| ProbeError::Iter(describe(&e).0))?;
    // The iterator's namespace is the one of the thread that opens it.
    netns::run_in(ns, move || link.into_file())?.map_err(|e| ProbeError::Iter(describe(&e).0))
}
