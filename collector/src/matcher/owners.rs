//! Who owns which address: what each host up announced (at its hello, and
//! again whenever its agent says its addresses changed: a VIP moved, an
//! SNAT address added, a container started), kept both ways — address to
//! hosts in `Ctx::owners`, which the join reads, and host to addresses
//! here, so that an announcement replaces the host's own and touches no
//! other entry.
//!
//! A suspect's peers are the owners of its remote address when it was
//! first seen. A count of the changes to the owners (its generation) lets
//! a suspect seen before a change find its peers again at its next sample:
//! one comparison per sample while nothing changed, one lookup after.

use std::net::IpAddr;
use std::sync::Arc;

use tcpstall_common::NamespaceAddresses;

use super::state::{owners_of, Ctx, Map, Peers, Suspect};
use super::tuple::Tuple;
use crate::messages::HostId;

/// An address a host owns, and the label of the namespace holding it.
type Held = (IpAddr, Arc<str>);

/// What each host up announced, and how often the owners changed.
#[derive(Debug, Default)]
pub(super) struct Announced {
    /// Host -> the addresses it owns, each with the namespace that holds
    /// it: sorted by address, no address twice, neither loopback nor
    /// unspecified (those are never a peer's address to look up).
    by_host: Map<HostId, Box<[Held]>>,
    /// Moves (wrapping) whenever an address gains or loses an owner.
    generation: u32,
}

impl Announced {
    /// The owners' generation: a suspect whose peers were found at another
    /// finds them again.
    pub(super) fn generation(&self) -> u32 {
        self.generation
    }
}

/// The addresses of `namespaces` that can be a peer's, each with the
/// label of the namespace holding it (the first one, when several do):
/// sorted by address, no repeats.
fn owned(namespaces: &[NamespaceAddresses]) -> Box<[Held]> {
    let mut out: Vec<Held> = Vec::new();
    for ns in namespaces {
        let label: Arc<str> = Arc::from(ns.label.as_str());
        for &ip in &ns.addresses {
            if !ip.is_loopback() && !ip.is_unspecified() {
                out.push((ip, label.clone()));
            }
        }
    }
    // Stable: of an address held twice, the first namespace's stays.
    out.sort_by_key(|(ip, _)| *ip);
    out.dedup_by_key(|(ip, _)| *ip);
    out.into()
}

/// Whether `ip` is among `held` (sorted by address).
fn holds(held: &[Held], ip: IpAddr) -> bool {
    held.binary_search_by_key(&ip, |(a, _)| *a).is_ok()
}

/// Takes `host` from the owners of `ip`, and the entry with its last one.
fn disown(owners: &mut Map<IpAddr, Vec<HostId>>, ip: IpAddr, host: HostId) {
    if let Some(hosts) = owners.get_mut(&ip) {
        hosts.retain(|h| *h != host);
        if hosts.is_empty() {
            owners.remove(&ip);
        }
    }
}

impl Ctx {
    /// `host` owns `addresses` and no others from now on: it leaves the
    /// owners of what it no longer announces and joins those of what it
    /// now does (after the hosts that announced them before it). Whether
    /// anything changed.
    pub(super) fn announce(&mut self, host: HostId, addresses: &[NamespaceAddresses]) -> bool {
        let new = owned(addresses);
        let old = self.announced.by_host.remove(&host).unwrap_or_default();
        let mut changed = false;
        for &(ip, _) in old.iter().filter(|(ip, _)| !holds(&new, *ip)) {
            disown(&mut self.owners, ip, host);
            changed = true;
        }
        for &(ip, _) in new.iter().filter(|(ip, _)| !holds(&old, *ip)) {
            let hosts = self.owners.entry(ip).or_default();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
            changed = true;
        }
        if changed {
            self.announced.generation = self.announced.generation.wrapping_add(1);
        }
        if !new.is_empty() {
            self.announced.by_host.insert(host, new);
        }
        changed
    }

    /// `host` went away: it owns nothing now. The generation stays: its
    /// suspects' peers keep it until it is back (see [`Ctx::repeer`]).
    pub(super) fn disown_all(&mut self, host: HostId) {
        if let Some(old) = self.announced.by_host.remove(&host) {
            for (ip, _) in old.iter() {
                disown(&mut self.owners, *ip, host);
            }
        }
    }

    /// The label of the namespace in which `host` holds `ip`, as its agent
    /// announced it.
    pub(super) fn netns_of(&self, host: HostId, ip: IpAddr) -> Option<&str> {
        let held = self.announced.by_host.get(&host)?;
        let i = held.binary_search_by_key(&ip, |(a, _)| *a).ok()?;
        held.get(i).map(|(_, label)| &**label)
    }

    /// Finds suspect `s`'s peers again (of `host`, on `flow`), the owners
    /// having changed since they were found: the owners of the peer's
    /// address (its 4-tuple as the peer sees it, through a translation if
    /// one joined them). A host that announced it since becomes a peer,
    /// asked to watch the peer's end if the others were or an episode is
    /// open (which needs its peer now); one that no longer holds it is let
    /// go. A host that is away keeps its place (it has said nothing of its
    /// addresses since): its suspects hear "pending" from it until it is
    /// back, as before.
    pub(super) fn repeer(&mut self, host: HostId, flow: Tuple, s: &mut Suspect, now_ms: i64) {
        s.peers_generation = self.announced.generation;
        let b_flow = s.b_flow(flow);
        let found = owners_of(&self.owners, host, b_flow.flow().local.ip());
        let old: Vec<HostId> = s.peers.hosts().to_vec();
        let mut hosts: Vec<HostId> = found.hosts().to_vec();
        let away: Vec<HostId> = old
            .iter()
            .copied()
            .filter(|h| !self.up.contains_key(h) && !hosts.contains(h))
            .collect();
        hosts.extend(away);
        if hosts == old {
            return;
        }
        let open = s.episode.is_some();
        let translated = s.nat.is_some();
        let was_asked = s.asked;
        // An open episode needs its peer now, asked before or not.
        let ask = was_asked || (open && !hosts.is_empty());
        for &gone in old.iter().filter(|h| !hosts.contains(h)) {
            if was_asked {
                if let Some(w) = self.watched.get_mut(&(gone, b_flow)).filter(|_| open) {
                    w.episode_of = None;
                }
                self.unwatch(gone, b_flow);
            }
            if translated {
                self.a_of.remove(&(gone, b_flow));
            }
        }
        if ask {
            for &new in hosts.iter().filter(|h| !(was_asked && old.contains(h))) {
                self.watch(new, b_flow, now_ms);
                if translated {
                    self.a_of.insert((new, b_flow), (host, flow));
                }
                if let Some(w) = self.watched.get_mut(&(new, b_flow)).filter(|_| open) {
                    w.episode_of = Some(host);
                }
            }
        }
        tracing::debug!(host = %self.name(host), flow = %flow.flow(), was = ?old, now = ?hosts, "the peer's owners changed");
        s.peers = match hosts.as_slice() {
            [] => Peers::None,
            [one] => Peers::One(*one),
            many => Peers::Many(many.into()),
        };
        // Nobody to ask: asked when somebody announces the address.
        s.asked = ask && !s.peers.is_none();
    }
}
