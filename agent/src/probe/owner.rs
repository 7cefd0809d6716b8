//! The process that owns a socket (pid, command line, systemd unit or
//! cgroup), found from the socket's inode; and, where BPF is not allowed,
//! a suspect socket's cork and nodelay flags read through a duplicate of
//! the owner's descriptor.
//!
//! The command line is scrubbed before it goes anywhere ([`super::scrub`]:
//! secrets masked by default, or only the executable, or all of it).
//!
//! Finding the owner: the kernel has no inode → process index, so one
//! walk of /proc/*/fd builds one (every socket descriptor of every
//! process). The walk runs only when a lookup misses and the last walk is
//! older than the rescan interval, never on every poll; a hit is checked
//! with one `readlink` of the cached /proc/PID/fd/N, so a reused pid or
//! descriptor is caught. Reading another user's /proc/PID/fd needs
//! CAP_SYS_PTRACE: where the walk was refused somewhere and the inode was
//! not found, the answer is "unknown (no permission)", not "no owner".
//!
//! Reading the flags: `pidfd_open` on the owner, `pidfd_getfd` of its
//! descriptor (CAP_SYS_PTRACE for another user's or a more privileged
//! process, kernel 5.6+), `fstat` to be sure it is still the same socket,
//! `getsockopt(TCP_CORK)` and `(TCP_NODELAY)`, and the duplicate closed at
//! once. Never TCP_REPAIR: it would stop the application's I/O.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
use serde::Serialize;

use super::scrub::Scrubber;

/// Longest command line kept, in bytes, with the `…` that marks a cut
/// (the collector refuses longer ones).
pub const MAX_COMMAND: usize = 1024;

/// The process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    /// The descriptor number in that process.
    pub fd: u32,
    /// The command line, arguments joined by spaces, as the scrubber lets
    /// it out (the command name when the process has no command line, as
    /// kernel threads).
    pub command: String,
    /// The systemd unit (a `.service` or `.scope`) of its cgroup, if any.
    pub unit: Option<String>,
    /// Its cgroup v2 path.
    pub cgroup: Option<String>,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerLookup {
    Found(Owner),
    /// No process holds the socket (closed, or held only by the kernel).
    None,
    /// Not found, and some processes' descriptors could not be read.
    NoPermission,
}

/// Socket inode → (pid, fd), rebuilt by a walk of /proc when needed.
#[derive(Debug)]
pub struct OwnerIndex {
    proc_root: PathBuf,
    by_inode: HashMap<u64, (u32, u32)>,
    last_walk: Option<Instant>,
    /// The last walk was refused for at least one process.
    refused: bool,
    rescan: Duration,
    /// What of a command line is told.
    scrubber: Scrubber,
    /// Walks so far: tests and the benchmark check it stays low.
    pub walks: u64,
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

impl OwnerIndex {
    /// An index over `/proc`, walking it again at most once per `rescan`.
    pub fn new(rescan: Duration) -> OwnerIndex {
        Self::with_root("/proc", rescan)
    }

    pub fn with_root(proc_root: impl Into<PathBuf>, rescan: Duration) -> OwnerIndex {
        OwnerIndex {
            proc_root: proc_root.into(),
            by_inode: HashMap::new(),
            last_walk: None,
            refused: false,
            rescan,
            scrubber: Scrubber::default(),
            walks: 0,
        }
    }

    /// The same index, its owners' command lines told as `scrubber` says.
    pub fn scrubbed_by(self, scrubber: Scrubber) -> OwnerIndex {
        OwnerIndex { scrubber, ..self }
    }

    fn still_holds(&self, pid: u32, fd: u32, inode: u64) -> bool {
        let link = self.proc_root.join(format!("{pid}/fd/{fd}"));
        fs::read_link(link)
            .ok()
            .and_then(|l| socket_inode(&l))
            .is_some_and(|i| i == inode)
    }

    fn walk(&mut self) {
        self.by_inode.clear();
        self.refused = false;
        self.walks += 1;
        let Ok(dir) = fs::read_dir(&self.proc_root) else {
            self.refused = true;
            return;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let fds = match fs::read_dir(entry.path().join("fd")) {
                Ok(fds) => fds,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    self.refused = true;
                    continue;
                }
                // Exited meanwhile.
                Err(_) => continue,
            };
            for fd in fds.flatten() {
                let Some(n) = fd.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                match fs::read_link(fd.path()) {
                    Ok(link) => {
                        if let Some(inode) = socket_inode(&link) {
                            // The first holder found is as good as any other.
                            self.by_inode.entry(inode).or_insert((pid, n));
                        }
                    }
                    // The listing is allowed, the links are not.
                    Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                        self.refused = true;
                        break;
                    }
                    Err(_) => {}
                }
            }
        }
        self.last_walk = Some(Instant::now());
    }

    /// The owner of the socket with this inode. Walks /proc only on a miss
    /// and at most once per rescan interval.
    pub fn lookup(&mut self, inode: u64) -> OwnerLookup {
        if inode == 0 {
            return OwnerLookup::None;
        }
        let cached = self.by_inode.get(&inode).copied();
        let hit = cached.filter(|&(pid, fd)| self.still_holds(pid, fd, inode));
        let hit = match hit {
            Some(h) => Some(h),
            None => {
                let stale = self.last_walk.is_none_or(|t| t.elapsed() >= self.rescan);
                if stale || cached.is_some() {
                    self.walk();
                }
                self.by_inode.get(&inode).copied()
            }
        };
        match hit {
            Some((pid, fd)) => OwnerLookup::Found(self.describe(pid, fd)),
            None if self.refused => OwnerLookup::NoPermission,
            None => OwnerLookup::None,
        }
    }

    fn describe(&self, pid: u32, fd: u32) -> Owner {
        let base = self.proc_root.join(pid.to_string());
        let cmdline = fs::read(base.join("cmdline")).unwrap_or_default();
        let argv: Vec<_> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(String::from_utf8_lossy)
            .collect();
        // Scrubbed whole, then cut: a cut never leaves half a secret.
        let mut command = self.scrubber.command(&argv);
        if command.len() > MAX_COMMAND {
            let mut end = MAX_COMMAND - '…'.len_utf8();
            while !command.is_char_boundary(end) {
                end -= 1;
            }
            command.truncate(end);
            command.push('…');
        }
        if command.is_empty() {
            command = fs::read_to_string(base.join("comm"))
                .map(|c| format!("[{}]", c.trim()))
                .unwrap_or_default();
        }
        let cgroup = fs::read_to_string(base.join("cgroup"))
            .ok()
            .and_then(|c| cgroup_v2(&c));
        let unit = cgroup.as_deref().and_then(systemd_unit);
        Owner {
            pid,
            fd,
            command,
            unit,
            cgroup,
        }
    }
}

/// The cgroup v2 path of a /proc/PID/cgroup (the `0::` line).
pub fn cgroup_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
}

/// The innermost systemd unit (`.service` or `.scope`) in a cgroup path.
pub fn systemd_unit(cgroup: &str) -> Option<String> {
    cgroup
        .split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_string)
}

/// Why the flags could not be read through the owner's descriptor.
#[derive(Debug, thiserror::Error)]
pub enum GetsockoptError {
    #[error("pidfd_getfd needs CAP_SYS_PTRACE: {0}")]
    NoPermission(io::Error),
    #[error("the process or descriptor is gone")]
    Gone,
    #[error("descriptor {fd} of pid {pid} is no longer that socket")]
    Changed { pid: u32, fd: u32 },
    #[error("{0}")]
    Io(io::Error),
}

impl GetsockoptError {
    fn from_errno(e: rustix::io::Errno) -> GetsockoptError {
        let e = io::Error::from(e);
        match e.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => GetsockoptError::NoPermission(e),
            Some(libc::ESRCH | libc::EBADF) => GetsockoptError::Gone,
            _ => GetsockoptError::Io(e),
        }
    }
}

/// Cork and nodelay of one socket, through a duplicate of its owner's
/// descriptor, closed before returning.
pub fn cork_by_getsockopt(owner: &Owner, inode: u64) -> Result<(bool, bool), GetsockoptError> {
    let pid = i32::try_from(owner.pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or(GetsockoptError::Gone)?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(GetsockoptError::from_errno)?;
    let fd = i32::try_from(owner.fd).map_err(|_| GetsockoptError::Gone)?;
    let dup = pidfd_getfd(pidfd.as_fd(), fd, PidfdGetfdFlags::empty())
        .map_err(GetsockoptError::from_errno)?;
    let same = rustix::fs::fstat(&dup).map_err(GetsockoptError::from_errno)?;
    if same.st_ino != inode {
        return Err(GetsockoptError::Changed {
            pid: owner.pid,
            fd: owner.fd,
        });
    }
    let cork = rustix::net::sockopt::tcp_cork(&dup).map_err(GetsockoptError::from_errno)?;
    let nodelay = rustix::net::sockopt::tcp_nodelay(&dup).map_err(GetsockoptError::from_errno)?;
    drop(dup);
    Ok((cork, nodelay))
}

#[cfg(test)]
/// The inode of a descriptor of ours (tests).
pub fn inode_of(fd: impl AsFd) -> io::Result<u64> {
    let f = rustix::fs::fstat(fd).map_err(io::Error::from)?;
    Ok(f.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links_parse() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(Path::new("socket:[x]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn units_from_cgroups() {
        let text = "0::/system.slice/nginx.service\n";
        let cg = cgroup_v2(text).expect("v2 line");
        assert_eq!(cg, "/system.slice/nginx.service");
        assert_eq!(systemd_unit(&cg).as_deref(), Some("nginx.service"));
        assert_eq!(
            systemd_unit("/user.slice/user-1000.slice/session-4.scope").as_deref(),
            Some("session-4.scope")
        );
        assert_eq!(systemd_unit("/docker/abc"), None);
        assert_eq!(cgroup_v2("12:cpu:/x\n"), None);
        assert_eq!(cgroup_v2("0::/\n").as_deref(), Some("/"));
    }

    #[test]
    fn own_socket_is_found_and_walks_are_few() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let inode = inode_of(&listener).expect("fstat");
        let mut index = OwnerIndex::new(Duration::from_secs(3600));
        let OwnerLookup::Found(owner) = index.lookup(inode) else {
            panic!("own socket not found");
        };
        assert_eq!(owner.pid, std::process::id());
        assert!(!owner.command.is_empty());
        // A hit does not walk again; nor does a miss within the interval.
        let walks = index.walks;
        assert!(matches!(index.lookup(inode), OwnerLookup::Found(_)));
        assert!(!matches!(index.lookup(u64::MAX - 1), OwnerLookup::Found(_)));
        assert_eq!(index.walks, walks);
    }
}
