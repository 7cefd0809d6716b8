//! The lab's shapes for translated connections (issue 23), built from
//! the hosts of [`super::net`]: IPv6 beside IPv4, a client network and a
//! server network with a gateway host between them, containers behind a
//! bridge inside a host, addresses added while the lab runs, and NAT rules
//! loaded with nftables inside a host.
//!
//! Every address stays in the lab's ranges: IPv4 from 198.18.0.0/15 and
//! IPv6 from 2001:2::/48 (RFC 5180, the benchmarking range that is the
//! IPv4 one's counterpart), each lab's networks /24s (/64s) of their own.
//! Everything is made inside namespaces the lab owns and goes with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::net::{subnet, Container, Host, Net, IFACE};
use crate::{run, TestNetns};

/// A gateway's interface on the server's network (on the client's it has
/// [`IFACE`], as a container has towards its host's bridge).
pub const IFACE2: &str = "eth1";
/// The bridge a host's containers hang on.
pub const BRIDGE: &str = "br0";
/// The nftables table the NAT rules of [`Host::nat`] go into (its family
/// is the rule's). Faults use `inet lab` ([`Host::nft_rule`]).
pub const NAT_TABLE: &str = "lab_nat";

/// The lab's IPv6 address standing for an IPv4 one: 198.(18+h).c.d is
/// 2001:2:0:hhcc::d, so that each /24 of the lab is a /64.
pub fn ipv6_of(v4: Ipv4Addr) -> Ipv6Addr {
    let [_, b, c, d] = v4.octets();
    let net = (u16::from(b.saturating_sub(18)) << 8) | u16::from(c);
    Ipv6Addr::new(0x2001, 0x2, 0, net, 0, 0, 0, u16::from(d))
}

/// A /24 of the lab's range for addresses no host holds: service
/// addresses that a translation turns into a real host's (kube-proxy's
/// ClusterIPs).
pub fn service_network() -> [u8; 3] {
    subnet()
}

impl Net {
    /// Gives every host an IPv6 address on its interface beside its IPv4
    /// one ([`ipv6_of`] it), without duplicate address detection so that
    /// it is usable at once. Before the agents start, so that they
    /// announce it.
    pub fn add_ipv6(&mut self) {
        for h in &mut self.hosts {
            let v6 = ipv6_of(h.addr);
            let cidr = format!("{v6}/64");
            run(
                "ip",
                &[
                    "-n", &h.ns.name, "-6", "addr", "add", &cidr, "dev", IFACE, "nodad",
                ],
            );
            h.addr6 = Some(v6);
        }
    }

    /// Two networks and a host routing between them: `client` alone on
    /// the first (its `.1`), `server` alone on the second (its `.1`), and
    /// `gateway` on both (`.254` of each: its [`Host::addr`] on the
    /// client's network, the other in [`Host::more_addrs`]). The client
    /// routes the server's network through the gateway; the server has no
    /// route back to the client's: only a translation on the gateway
    /// (masquerade, [`Host::nat`]) lets a connection through, as behind a
    /// NAT gateway. The hosts are in that order.
    pub fn routed(client: &str, gateway: &str, server: &str) -> Net {
        super::net::sweep_stale();
        let [a, b, c] = subnet();
        let [x, y, z] = subnet();
        let near = |last| Ipv4Addr::new(a, b, c, last);
        let far = |last| Ipv4Addr::new(x, y, z, last);
        let mut gw = Host::new(gateway, near(254));
        gw.more_addrs.push(far(254));
        let net = Net {
            hosts: vec![Host::new(client, near(1)), gw, Host::new(server, far(1))],
            bridge: None,
            containers: Vec::new(),
        };
        let [cl, gw, sv] = [&net.hosts[0], &net.hosts[1], &net.hosts[2]];
        veth(&cl.ns, IFACE, &gw.ns, IFACE);
        veth(&gw.ns, IFACE2, &sv.ns, IFACE);
        for (h, dev, addr) in [
            (cl, IFACE, cl.addr),
            (gw, IFACE, gw.addr),
            (gw, IFACE2, far(254)),
            (sv, IFACE, sv.addr),
        ] {
            address(&h.ns, dev, addr, 24);
            run("ip", &["-n", &h.ns.name, "link", "set", dev, "up"]);
        }
        let far_net = format!("{x}.{y}.{z}.0/24");
        let via = gw.addr.to_string();
        run(
            "ip",
            &["-n", &cl.ns.name, "route", "add", &far_net, "via", &via],
        );
        gw.forward();
        net
    }

    /// A container on the host of `role`: a namespace with one address
    /// on its [`IFACE`], a veth into the host's [`BRIDGE`] (made with the
    /// first container, with its own /24, the bridge holding `.1`), and a
    /// default route through the host, which forwards. Its host's agent
    /// reads it ([`super::Lab::start_on`]). Returns its index in
    /// [`Net::containers`].
    pub fn add_container(&mut self, role: &str) -> usize {
        let i = self
            .hosts
            .iter()
            .position(|h| h.name.starts_with(&format!("{role}-")))
            .unwrap_or_else(|| panic!("no host {role}"));
        let on = self.hosts[i].name.clone();
        let n = self.containers.iter().filter(|c| c.on == on).count();
        let bridge = match self.containers.iter().find(|c| c.on == on) {
            Some(c) => {
                let [a, b, cc, _] = c.host.addr.octets();
                Ipv4Addr::new(a, b, cc, 1)
            }
            None => {
                let [a, b, c] = subnet();
                let gw = Ipv4Addr::new(a, b, c, 1);
                let host = &mut self.hosts[i];
                let ns = host.ns.name.clone();
                run("ip", &["-n", &ns, "link", "add", BRIDGE, "type", "bridge"]);
                address(&host.ns, BRIDGE, gw, 24);
                run("ip", &["-n", &ns, "link", "set", BRIDGE, "up"]);
                host.forward();
                host.more_addrs.push(gw);
                gw
            }
        };
        let [a, b, c, _] = bridge.octets();
        let last = u8::try_from(n + 2).expect("at most 250 containers on a host");
        let ctr = Host::new("ctr", Ipv4Addr::new(a, b, c, last));
        let host = &self.hosts[i];
        let port = format!("veth{n}");
        veth(&host.ns, &port, &ctr.ns, IFACE);
        run(
            "ip",
            &[
                "-n",
                &host.ns.name,
                "link",
                "set",
                &port,
                "master",
                BRIDGE,
                "up",
            ],
        );
        address(&ctr.ns, IFACE, ctr.addr, 24);
        run("ip", &["-n", &ctr.ns.name, "link", "set", IFACE, "up"]);
        let via = bridge.to_string();
        run(
            "ip",
            &["-n", &ctr.ns.name, "route", "add", "default", "via", &via],
        );
        self.containers.push(Container { on, host: ctr });
        self.containers.len() - 1
    }

    /// The first container on the host of `role`.
    pub fn container(&self, role: &str) -> &Host {
        let on = &self.host(role).name;
        self.containers
            .iter()
            .find(|c| &c.on == on)
            .map(|c| &c.host)
            .unwrap_or_else(|| panic!("no container on {role}"))
    }
}

impl Host {
    /// Adds one NAT rule, `matches` (packets of a connection's first
    /// packet) then `action` (`dnat to ...`, `masquerade`), to the base
    /// chain on `hook` of this host's `family` (ip, ip6, inet)
    /// [`NAT_TABLE`]: prerouting and output at the DNAT priority,
    /// postrouting and input at the SNAT one. The rule counts, with `tag`
    /// as its comment ([`Host::nft_packets`]): a NAT rule sees the first
    /// packet of each connection it translates.
    pub fn nat(&self, family: &str, hook: &str, matches: &str, action: &str, tag: &str) {
        let priority = match hook {
            "prerouting" | "output" => -100,
            _ => 100,
        };
        self.nft(&format!(
            "table {family} {NAT_TABLE} {{\n  chain {hook} {{\n    type nat hook {hook} priority {priority};\n    {matches} counter {action} comment \"{tag}\"\n  }}\n}}\n"
        ));
    }

    /// Turns IP forwarding on in this host's namespace (IPv4 and IPv6).
    pub fn forward(&self) {
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            self.exec("sysctl", &["-qw", key]);
        }
    }

    /// Adds `addr` (prefix `len`) to this host's [`IFACE`] while the lab
    /// runs: its agent has said hello without it.
    pub fn add_addr(&self, addr: IpAddr, len: u8) {
        let cidr = format!("{addr}/{len}");
        let mut args = vec!["addr", "add", cidr.as_str(), "dev", IFACE];
        if addr.is_ipv6() {
            args.push("nodad");
        }
        self.exec("ip", &args);
    }

    /// Holds `addr` on an interface of its own that leads nowhere (a veth
    /// whose both ends are here; this kernel has no dummy interfaces):
    /// the address is this host's, and no packet to it goes out. What a
    /// second holder of an address looks like to the collector.
    pub fn hold_alone(&self, addr: Ipv4Addr) {
        let ns = &self.ns.name;
        run(
            "ip",
            &[
                "-n", ns, "link", "add", "hold0", "type", "veth", "peer", "name", "hold1",
            ],
        );
        address(&self.ns, "hold0", addr, 32);
        run("ip", &["-n", ns, "link", "set", "hold0", "up"]);
    }
}

/// A veth pair, one end named `a_dev` in `a`, the other `b_dev` in `b`.
fn veth(a: &TestNetns, a_dev: &str, b: &TestNetns, b_dev: &str) {
    run(
        "ip",
        &[
            "link", "add", a_dev, "netns", &a.name, "type", "veth", "peer", "name", b_dev, "netns",
            &b.name,
        ],
    );
}

fn address(ns: &TestNetns, dev: &str, addr: Ipv4Addr, len: u8) {
    let cidr = format!("{addr}/{len}");
    run("ip", &["-n", &ns.name, "addr", "add", &cidr, "dev", dev]);
}
