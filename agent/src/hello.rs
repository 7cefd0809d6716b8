//! Who this agent is, for the Hello that opens every stream: host name,
//! machine id (read once at start: [`machine_id`]), kernel release, boot id, and each namespace with the addresses it owns
//! (the collector finds a flow's peer through them); that it answers
//! lookups, and whether its host forwards packets (may translate others'
//! flows).
//!
//! A namespace's addresses are read by a short-lived thread that enters it
//! (`setns`) and lists its interfaces, as [`crate::netns::open_diag`] does
//! for its sock_diag socket. Anything that cannot be read is logged and
//! left empty: a Hello with less in it beats no stream at all. The
//! addresses are kept current by [`crate::addresses`], and each Hello is
//! built from its list.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use tcpstall_common::{machine, normalize_addr, AgentHello, MachineId, NamespaceAddresses, ProbeSet};

use crate::netns::{self, Netns, NetnsError};

/// Where the kernel keeps this boot's id.
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// Where the machine id is read when none is configured, in this order:
/// systemd's, then D-Bus's (older or systemd-less hosts).
pub const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// This machine's id: `configured` (--machine-id, `machine_id`) if given,
/// else the first of `files` that holds one. A file that cannot be read or
/// holds no valid id is logged and the next one tried; `None` (warned of,
/// once: this runs at start) when none does. The collector then cannot
/// tell this machine from another that reports the same host name.
pub fn machine_id(configured: Option<MachineId>, files: &[&Path]) -> Option<MachineId> {
    if configured.is_some() {
        return configured;
    }
    for path in files {
        match std::fs::read_to_string(path) {
            Ok(text) => match machine::from_file_text(&text) {
                Ok(Some(id)) => return Some(id),
                Ok(None) => tracing::debug!(path = %path.display(), "machine id file is empty"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "machine id file holds no valid id")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the machine id")
            }
        }
    }
    tracing::warn!(
        files = ?files,
        "no machine id (none configured, none in the files): the collector cannot tell this \
         machine from another that reports the same host name; give --machine-id"
    );
    None
}

/// Why a namespace's addresses could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("listing the interfaces of namespace {label}: {source}")]
    List { label: String, source: nix::Error },
}

/// The host's name as the kernel has it.
pub fn hostname() -> io::Result<String> {
    let name = nix::unistd::gethostname().map_err(io::Error::from)?;
    name.into_string()
        .map_err(|raw| io::Error::other(format!("hostname {raw:?} is not UTF-8")))
}

/// `uname -r`.
pub fn kernel_release() -> io::Result<String> {
    let uts = nix::sys::utsname::uname().map_err(io::Error::from)?;
    Ok(uts.release().to_string_lossy().into_owned())
}

/// This boot's id: it changes when the host reboots.
pub fn boot_id() -> io::Result<String> {
    Ok(std::fs::read_to_string(BOOT_ID)?.trim().to_string())
}

/// Every address of every interface in `ns`, loopback included, sorted and
/// without repeats.
pub fn addresses(ns: &Netns) -> Result<Vec<IpAddr>, AddressError> {
    netns::run_in(ns, || list_here(&ns.label))?
}

/// The addresses of the namespace the calling thread is in.
fn list_here(label: &str) -> Result<Vec<IpAddr>, AddressError> {
    let ifaddrs = nix::ifaddrs::getifaddrs().map_err(|source| AddressError::List {
        label: label.to_string(),
        source,
    })?;
    let mut out = BTreeSet::new();
    for ifa in ifaddrs {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.insert(normalize_addr(std::net::SocketAddr::new(ip, 0)).ip());
    }
    Ok(out.into_iter().collect())
}

/// What a Hello says; built again for every new stream, with the
/// namespaces' addresses as they are then.
#[derive(Debug, Clone)]
pub struct Identity {
    pub host: String,
    /// This machine's stable identity, if it has one.
    pub machine_id: Option<MachineId>,
    pub interval: Duration,
    /// Which deeper probes work here, as found at start.
    pub probes: ProbeSet,
    /// The host's own namespace, whose forwarding the Hello reports.
    pub host_netns: netns::Netns,
}

impl Identity {
    /// The Hello with `namespaces` as they are known now (the agent keeps
    /// them current: [`crate::addresses`]). Blocking: it reads /proc.
    pub fn hello_with(&self, namespaces: Vec<NamespaceAddresses>) -> AgentHello {
        let kernel = kernel_release().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the kernel release");
            String::new()
        });
        let boot_id = boot_id().unwrap_or_else(|e| {
            tracing::warn!(error = %e, path = BOOT_ID, "cannot read the boot id");
            String::new()
        });
        AgentHello {
            host: self.host.clone(),
            machine_id: self.machine_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel,
            boot_id,
            namespaces,
            probes: self.probes,
            interval: self.interval,
            answers_lookups: true,
            forwards: forwards(&self.host_netns),
        }
    }
}

/// Whether the host's own namespace forwards packets; false when that
/// cannot be read (said in the log).
fn forwards(host: &netns::Netns) -> bool {
    let read = crate::translate::forwards(host);
    read.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read whether the host forwards packets");
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespace_has_loopback() {
        let ns = crate::netns::current().expect("own namespace");
        let addrs = addresses(&ns).expect("addresses");
        assert!(
            addrs.contains(&IpAddr::from([127, 0, 0, 1])),
            "loopback is included: {addrs:?}"
        );
        let mut sorted = addrs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, addrs, "sorted, no repeats");
    }

    #[test]
    fn hello_says_who_we_are() {
        let ns = crate::netns::current().expect("own namespace");
        let id = Identity {
            host: "h1".into(),
            machine_id: MachineId::new("0123456789abcdef0123456789abcdef").ok(),
            interval: Duration::from_millis(1500),
            probes: ProbeSet {
                sock_diag: true,
                bpf_iter: true,
                getsockopt: false,
            },
            host_netns: ns.clone(),
        };
        let listed = NamespaceAddresses {
            label: ns.label.clone(),
            inode: ns.inode,
            addresses: addresses(&ns).expect("addresses"),
        };
        let said = id.hello_with(vec![listed]);
        assert_eq!(said.host, "h1");
        assert_eq!(said.agent_version, env!("CARGO_PKG_VERSION"));
        // As it goes on the wire.
        let hello = tcpstall_proto::convert::hello_to_wire(said);
        assert_eq!(hello.protocol, tcpstall_proto::PROTOCOL_VERSION);
        assert_eq!(hello.host, "h1");
        assert_eq!(hello.machine_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(hello.interval_ms, 1500);
        assert_eq!(hello.kernel, kernel_release().expect("uname"));
        assert_eq!(hello.boot_id.len(), 36, "a UUID: {:?}", hello.boot_id);
        assert_eq!(hello.namespaces.len(), 1);
        assert_eq!(hello.namespaces[0].inode, ns.inode);
        assert_eq!(hello.namespaces[0].label, ns.label);
        assert!(hello.namespaces[0]
            .addresses
            .iter()
            .any(|ip| ip.octets == [127, 0, 0, 1]));
        // It answers Translate requests and sends lookups.
        assert!(hello.answers_lookups);
        // The Hello announces the probes found at start, as given.
        assert!(hello
            .probes
            .is_some_and(|p| p.sock_diag && p.bpf_iter && !p.getsockopt));
    }

    #[test]
    fn the_machine_id_is_configured_else_read_from_the_first_file_that_has_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let etc = write("etc-machine-id", "0123456789abcdef0123456789abcdef\n");
        let dbus = write("dbus-machine-id", "fedcba9876543210fedcba9876543210\n");
        let empty = write("empty", "\n");
        let bad = write("bad", "not an id\n");
        let missing = dir.path().join("missing");
        let id = |configured: Option<&str>, files: &[&Path]| {
            machine_id(configured.map(|s| MachineId::new(s).expect("id")), files)
                .map(String::from)
        };
        let first = Some("0123456789abcdef0123456789abcdef".to_string());
        let second = Some("fedcba9876543210fedcba9876543210".to_string());
        // Configured beats the files.
        assert_eq!(id(Some("web-17-a"), &[&etc]), Some("web-17-a".into()));
        assert_eq!(id(None, &[&etc, &dbus]), first);
        // A missing, empty or malformed file: the next one is tried.
        assert_eq!(id(None, &[&missing, &dbus]), second);
        assert_eq!(id(None, &[&empty, &dbus]), second);
        assert_eq!(id(None, &[&bad, &dbus]), second);
        // None anywhere: none sent.
        assert_eq!(id(None, &[&missing, &empty]), None);
        assert_eq!(id(None, &[]), None);
    }

    #[test]
    fn a_missing_namespace_file_is_an_error_not_a_panic() {
        let ns = Netns {
            label: "gone".into(),
            inode: 1,
            path: Some("/run/netns/tcpstall-no-such-ns-h7".into()),
        };
        let err = addresses(&ns).expect_err("no such file");
        assert!(err.to_string().contains("tcpstall-no-such-ns-h7"), "{err}");
    }
}
