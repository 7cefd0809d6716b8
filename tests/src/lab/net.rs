//! The lab's hosts: network namespaces with one interface each, joined by
//! a veth pair (two hosts) or through a bridge namespace (more), with
//! addresses only from 198.18.0.0/15 and only inside the namespaces.
//! Other shapes (two networks and a gateway, containers behind a bridge,
//! IPv6, NAT rules) are built in [`super::nat`].
//!
//! Faults are put on a host with its own tools, run inside its namespace:
//! nftables rules ([`Host::nft`]) and queueing disciplines ([`Host::tc`]).
//! Everything a host holds (interfaces, rules, qdiscs) goes with its
//! namespace when the [`Net`] is dropped, also on panic.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use tcpstall_agent::netns::{self, NetnsSpec};
use tcpstall_common::SocketSample;

use crate::{poll, run, TestNetns};

/// Namespace names start with this, then the test process's pid.
pub const PREFIX: &str = "tcpstall-lab-";
/// The one interface of every host.
pub const IFACE: &str = "eth0";
/// Congestion control set on the lab's sockets: the fleet in the question
/// runs CentOS/RHEL, whose default it is, and a machine's own default (bbr
/// here) must not change what a fault looks like. Set per socket: a
/// namespace may only choose among `tcp_allowed_congestion_control`.
pub const CONGESTION_CONTROL: &str = "cubic";

/// Sets [`CONGESTION_CONTROL`] on a socket.
pub fn pin_congestion_control(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(
        s,
        sockopt::TcpCongestion,
        &std::ffi::OsString::from(CONGESTION_CONTROL),
    )
    .unwrap_or_else(|e| panic!("TCP_CONGESTION {CONGESTION_CONTROL}: {e}"));
}

/// One lab host: a namespace with one address.
#[derive(Debug)]
pub struct Host {
    /// The name its agent reports (unique per run).
    pub name: String,
    pub ns: TestNetns,
    /// Its address on [`IFACE`].
    pub addr: Ipv4Addr,
    /// Its IPv6 address on [`IFACE`], once the net has IPv6
    /// ([`Net::add_ipv6`]).
    pub addr6: Option<Ipv6Addr>,
    /// Its addresses on other interfaces: a gateway's on the second
    /// network, the bridge's in front of its containers.
    pub more_addrs: Vec<Ipv4Addr>,
}

impl Host {
    /// A new namespace for the host of `role`, named after it; `addr` is
    /// put on its interface by whoever makes the interface.
    pub(super) fn new(role: &str, addr: Ipv4Addr) -> Host {
        let ns = TestNetns::new("lab");
        let suffix = ns.name.trim_start_matches(PREFIX).to_string();
        Host {
            name: format!("{role}-{suffix}"),
            ns,
            addr,
            addr6: None,
            more_addrs: Vec::new(),
        }
    }

    /// Runs `cmd args` inside this host's namespace; panics with its output
    /// if it fails.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.ns.name.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Loads an nftables script (`nft -f -`) inside this host.
    pub fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft (is nftables installed?)");
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(script.as_bytes())
            .expect("write the nft script");
        let out = child.wait_with_output().expect("wait for nft");
        assert!(
            out.status.success(),
            "nft on {} failed: {}\n{script}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Adds one rule to a base chain on `hook` (input, output, ...) of this
    /// host's `inet lab` table, with a counter and `tag` as its comment
    /// (for [`Host::nft_packets`]).
    pub fn nft_rule(&self, hook: &str, rule: &str, tag: &str) {
        self.nft(&format!(
            "table inet lab {{\n  chain {hook} {{\n    type filter hook {hook} priority 0;\n    {rule} counter drop comment \"{tag}\"\n  }}\n}}\n"
        ));
    }

    /// The packets the rule tagged `tag` has dropped.
    pub fn nft_packets(&self, tag: &str) -> u64 {
        let rules = self.nft_ruleset();
        let quoted = format!("\"{tag}\"");
        let line = rules
            .lines()
            .find(|l| l.contains(&quoted) && l.contains("counter packets"))
            .unwrap_or_else(|| panic!("no rule {tag} in\n{rules}"));
        line.split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {line:?}"))
    }

    /// The host's nftables ruleset with counters, for failure messages.
    pub fn nft_ruleset(&self) -> String {
        self.exec("nft", &["list", "ruleset"])
    }

    /// `tc ARGS` inside this host.
    pub fn tc(&self, args: &[&str]) -> String {
        self.exec("tc", args)
    }

    /// A listening socket on this host's address, any port.
    pub fn listen(&self) -> TcpListener {
        self.listen_at(SocketAddr::new(IpAddr::V4(self.addr), 0))
    }

    /// A listening socket on `at` (an address of this host; port 0 for
    /// any).
    pub fn listen_at(&self, at: SocketAddr) -> TcpListener {
        self.ns
            .enter(move || TcpListener::bind(at))
            .unwrap_or_else(|e| panic!("listen on {at} in {}: {e}", self.name))
    }

    /// A connection from this host to `to`, with
    /// [`CONGESTION_CONTROL`].
    pub fn connect(&self, to: SocketAddr) -> TcpStream {
        let s = self
            .ns
            .enter(move || TcpStream::connect(to))
            .unwrap_or_else(|e| panic!("connect from {} to {to}: {e}", self.name));
        pin_congestion_control(&s);
        s
    }

    /// As [`Host::connect`], giving up after `within`: a path through
    /// translations that a rule got wrong drops the SYN, and a plain
    /// connect would wait out every SYN retry.
    pub fn connect_within(&self, to: SocketAddr, within: std::time::Duration) -> TcpStream {
        let s = self
            .ns
            .enter(move || TcpStream::connect_timeout(&to, within))
            .unwrap_or_else(|e| panic!("connect from {} to {to}: {e}", self.name));
        pin_congestion_control(&s);
        s
    }

    /// One sock_diag poll of this host, as its agent would see it.
    pub fn sockets(&self) -> Vec<SocketSample> {
        let spaces = netns::resolve(&[NetnsSpec::Named(self.ns.name.clone())])
            .expect("resolve the host's namespace");
        poll(spaces)
    }

    /// This host's socket `local` -> `remote`, if it has one.
    pub fn socket(&self, local: SocketAddr, remote: SocketAddr) -> Option<SocketSample> {
        crate::find(&self.sockets(), local, remote)
    }
}

/// The hosts of one lab and what joins them. Dropping it removes every
/// namespace (and with them the interfaces, rules and qdiscs).
#[derive(Debug)]
pub struct Net {
    pub hosts: Vec<Host>,
    /// The namespace holding the bridge when there are more than two hosts.
    pub bridge: Option<TestNetns>,
    /// Namespaces inside hosts ([`Net::add_container`]): no agent of their
    /// own, read by their host's.
    pub containers: Vec<Container>,
}

/// A container: a namespace of its own on a lab host, whose agent reads it
/// beside the host's own namespace.
#[derive(Debug)]
pub struct Container {
    /// The name of the host it runs on.
    pub on: String,
    /// Its namespace and address (its `name` is only a label: no agent
    /// reports it).
    pub host: Host,
}

/// Removes lab namespaces left by test processes that no longer run (a
/// test killed before its drops ran). Only names with our prefix whose pid
/// is gone are touched.
pub fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir(netns::RUN_NETNS) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A /24 of 198.18.0.0/15 for one lab (or one network of a lab),
/// different for every one this process builds (512 of them, then
/// reused).
pub(super) fn subnet() -> [u8; 3] {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 512;
    let hi = u8::try_from(n / 256).unwrap_or(0);
    let lo = u8::try_from(n % 256).unwrap_or(0);
    [198, 18 + hi, lo]
}

impl Net {
    /// Hosts named `names` (suffixed to be unique), each with an address
    /// of the same /24, joined directly (two) or by a bridge (more).
    pub fn new(names: &[&str]) -> Net {
        assert!((2..=200).contains(&names.len()), "a lab has 2 to 200 hosts");
        sweep_stale();
        let [a, b, c] = subnet();
        let mut hosts = Vec::with_capacity(names.len());
        for (i, role) in names.iter().enumerate() {
            let last = u8::try_from(i + 1).expect("at most 200 hosts");
            hosts.push(Host::new(role, Ipv4Addr::new(a, b, c, last)));
        }
        let mut net = Net {
            hosts,
            bridge: None,
            containers: Vec::new(),
        };
        if net.hosts.len() == 2 {
            let (x, y) = (&net.hosts[0].ns.name, &net.hosts[1].ns.name);
            run(
                "ip",
                &[
                    "link", "add", IFACE, "netns", x, "type", "veth", "peer", "name", IFACE,
                    "netns", y,
                ],
            );
        } else {
            let br = TestNetns::new("lab");
            run(
                "ip",
                &["-n", &br.name, "link", "add", "br0", "type", "bridge"],
            );
            run("ip", &["-n", &br.name, "link", "set", "br0", "up"]);
            for (i, h) in net.hosts.iter().enumerate() {
                let port = format!("p{i}");
                run(
                    "ip",
                    &[
                        "link", "add", IFACE, "netns", &h.ns.name, "type", "veth", "peer", "name",
                        &port, "netns", &br.name,
                    ],
                );
                run(
                    "ip",
                    &["-n", &br.name, "link", "set", &port, "master", "br0", "up"],
                );
            }
            net.bridge = Some(br);
        }
        for h in &net.hosts {
            let cidr = format!("{}/24", h.addr);
            run(
                "ip",
                &["-n", &h.ns.name, "addr", "add", &cidr, "dev", IFACE],
            );
            run("ip", &["-n", &h.ns.name, "link", "set", IFACE, "up"]);
        }
        net
    }

    /// The host whose name starts with `role`.
    pub fn host(&self, role: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name.starts_with(&format!("{role}-")))
            .unwrap_or_else(|| panic!("no host {role}"))
    }
}
