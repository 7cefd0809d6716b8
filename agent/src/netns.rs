//! Network namespaces: which ones to read, what to call them, and how to
//! open a sock_diag socket inside one.
//!
//! sock_diag only sees the namespace its socket was created in. To read
//! another, a short-lived thread enters it with `setns(CLONE_NEWNET)` and
//! creates the socket there; the socket stays bound to that namespace for
//! its whole life, so later polls need no `setns` at all.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::sched::{setns, CloneFlags};

use crate::diag::DiagSocket;

/// Where `ip netns add` keeps named namespaces.
pub const RUN_NETNS: &str = "/run/netns";

/// What `--netns` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsSpec {
    /// A name under /run/netns.
    Named(String),
    /// A namespace file, such as /proc/1234/ns/net.
    Path(PathBuf),
    /// Every distinct namespace of /proc/*/ns/net and /run/netns.
    All,
}

impl FromStr for NetnsSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            Err("empty namespace: give a name under /run/netns, a path, or `all`".into())
        } else if s == "all" {
            Ok(NetnsSpec::All)
        } else if s.contains('/') {
            Ok(NetnsSpec::Path(PathBuf::from(s)))
        } else {
            Ok(NetnsSpec::Named(s.to_string()))
        }
    }
}

/// Why a namespace could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {label} ({path}): {source} (needs CAP_SYS_ADMIN)")]
    Enter {
        label: String,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("sock_diag socket in network namespace {label}: {source}")]
    Socket { label: String, source: io::Error },
    #[error("network namespace {label}: the thread that entered it panicked")]
    Thread { label: String },
}

/// One network namespace to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// How people name it: its /run/netns name, `host` for PID 1's, or
    /// `pid:N` for one only a process holds.
    pub label: String,
    /// The nsfs inode: identity, as in `ls -l /proc/N/ns/net`.
    pub inode: u64,
    /// A file that opens it; `None` for the namespace we run in.
    pub path: Option<PathBuf>,
}

fn inode_of(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// Names by inode: /run/netns entries, and `host` for PID 1's namespace.
fn names() -> BTreeMap<u64, String> {
    let mut names = BTreeMap::new();
    if let Ok(ino) = inode_of(Path::new("/proc/1/ns/net")) {
        names.insert(ino, "host".to_string());
    }
    if let Ok(dir) = std::fs::read_dir(RUN_NETNS) {
        for entry in dir.flatten() {
            if let Ok(ino) = inode_of(&entry.path()) {
                names.insert(ino, entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names
}

/// The namespace this process runs in.
pub fn current() -> Result<Netns, NetnsError> {
    let path = PathBuf::from("/proc/self/ns/net");
    let inode = inode_of(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    let label = names()
        .remove(&inode)
        .unwrap_or_else(|| format!("pid:{}", std::process::id()));
    Ok(Netns {
        label,
        inode,
        path: None,
    })
}

/// The host's own network namespace: PID 1's, where a container's
/// connections are translated on their way out and in. The namespace this
/// process runs in when PID 1's cannot be looked at (a PID namespace of
/// its own, say), which is then the only host it knows of.
pub fn host() -> Result<Netns, NetnsError> {
    let path = PathBuf::from("/proc/1/ns/net");
    match inode_of(&path) {
        Ok(inode) => Ok(Netns {
            label: "host".to_string(),
            inode,
            path: Some(path),
        }),
        Err(_) => current(),
    }
}

/// The host's namespace as `--host-netns` names it, else [`host`].
pub fn host_from(spec: Option<&NetnsSpec>) -> Result<Netns, NetnsError> {
    match spec {
        None | Some(NetnsSpec::All) => host(),
        Some(NetnsSpec::Named(name)) => from_path(Path::new(RUN_NETNS).join(name), "host"),
        Some(NetnsSpec::Path(path)) => from_path(path.clone(), "host"),
    }
}

/// Every distinct namespace: those of all processes and all named ones.
/// Processes that exit while we look are skipped.
pub fn discover_all() -> Result<Vec<Netns>, NetnsError> {
    let own = current()?;
    let mut names = names();
    let mut found: BTreeMap<u64, Netns> = BTreeMap::new();
    found.insert(own.inode, own);
    if let Ok(dir) = std::fs::read_dir(RUN_NETNS) {
        for entry in dir.flatten() {
            let path = entry.path();
            if let Ok(inode) = inode_of(&path) {
                found.entry(inode).or_insert_with(|| Netns {
                    label: entry.file_name().to_string_lossy().into_owned(),
                    inode,
                    path: Some(path),
                });
            }
        }
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map_err(|source| NetnsError::Open {
            path: "/proc".into(),
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Ok(inode) = inode_of(&path) else { continue };
        found.entry(inode).or_insert_with(|| Netns {
            label: names.remove(&inode).unwrap_or_else(|| format!("pid:{pid}")),
            inode,
            path: Some(path),
        });
    }
    Ok(found.into_values().collect())
}

/// Resolves the `--netns` arguments; none means the current namespace.
/// The result has no namespace twice.
pub fn resolve(specs: &[NetnsSpec]) -> Result<Vec<Netns>, NetnsError> {
    if specs.is_empty() {
        return Ok(vec![current()?]);
    }
    let mut out: Vec<Netns> = Vec::new();
    for spec in specs {
        let add = match spec {
            NetnsSpec::All => discover_all()?,
            NetnsSpec::Named(name) => vec![from_path(Path::new(RUN_NETNS).join(name), name)?],
            NetnsSpec::Path(path) => {
                let label = names().remove(&inode_of(path).unwrap_or(0));
                let label = label.unwrap_or_else(|| path.display().to_string());
                vec![from_path(path.clone(), &label)?]
            }
        };
        for ns in add {
            if !out.iter().any(|o| o.inode == ns.inode) {
                out.push(ns);
            }
        }
    }
    Ok(out)
}

fn from_path(path: PathBuf, label: &str) -> Result<Netns, NetnsError> {
    let inode = inode_of(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    Ok(Netns {
        label: label.to_string(),
        inode,
        path: Some(path),
    })
}

/// Runs `f` inside `ns`: directly when it is the namespace we run in,
/// else on a short-lived thread that enters it first (its namespace change
/// dies with it). What `f` creates there (sockets) stays bound to `ns`.
pub fn run_in<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let own = inode_of(Path::new("/proc/self/ns/net")).ok();
    let path = match &ns.path {
        Some(path) if own != Some(ns.inode) => path,
        _ => return Ok(f()),
    };
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    let joined = std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                label: ns.label.clone(),
                path: path.clone(),
                source,
            })?;
            Ok(f())
        })
        .join()
    });
    joined.unwrap_or_else(|_| {
        Err(NetnsError::Thread {
            label: ns.label.clone(),
        })
    })
}

/// Opens a sock_diag socket inside `ns`.
pub fn open_diag(ns: &Netns) -> Result<DiagSocket, NetnsError> {
    run_in(ns, DiagSocket::open)?.map_err(|source| NetnsError::Socket {
        label: ns.label.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing() {
        assert_eq!("all".parse::<NetnsSpec>(), Ok(NetnsSpec::All));
        assert_eq!(
            "lab1".parse::<NetnsSpec>(),
            Ok(NetnsSpec::Named("lab1".into()))
        );
        assert_eq!(
            "/proc/1/ns/net".parse::<NetnsSpec>(),
            Ok(NetnsSpec::Path("/proc/1/ns/net".into()))
        );
        assert!("".parse::<NetnsSpec>().is_err());
    }

    #[test]
    fn missing_named_namespace_is_a_clear_error() {
        let err =
            resolve(&[NetnsSpec::Named("tcpstall-no-such-ns-x9".into())]).expect_err("must fail");
        assert!(
            err.to_string()
                .contains("/run/netns/tcpstall-no-such-ns-x9"),
            "{err}"
        );
    }

    #[test]
    fn current_namespace_is_always_resolved() {
        let all = resolve(&[]).expect("current namespace");
        assert_eq!(all.len(), 1);
        assert!(all[0].path.is_none());
    }
}
