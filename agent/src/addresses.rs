//! The addresses of every namespace the agent reads, kept current (issue
//! 23): a VIP that keepalived moves here, an SNAT address added, a
//! container started after the agent did. The collector finds a flow's
//! peer by who announced its address, so an address is announced when it
//! appears or goes, not at the next reconnect.
//!
//! At start one rtnetlink socket per namespace is opened inside it (as the
//! sock_diag sockets are, [`crate::netns::run_in`]) and joined to the
//! address groups (`RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`) *before*
//! the namespace's addresses are first listed, so that no change slips in
//! between. Any address message on such a socket, or the kernel saying it
//! dropped some (`ENOBUFS`: the socket's buffer overflowed), marks its
//! namespace stale. A burst is gathered for [`GATHER`] (never more than
//! half a poll), then only the stale namespaces are listed again
//! ([`crate::hello::addresses`]); when that changed anything, every
//! namespace's addresses are published on a watch channel ([`Current`]).
//! The link sends them to a collector whose Welcome reads them, and builds
//! each Hello from them.
//!
//! A namespace whose socket cannot be opened, or stops working, is listed
//! again every poll instead: slower to notice nothing, never stale for
//! longer than a poll.
//!
//! The messages are read with `netlink-packet-route`; [`parse_events`]
//! turns one datagram into what changed, pure over bytes so that it is
//! tested byte for byte.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr as NetlinkAddr, TokioSocket};
use tcpstall_common::{normalize_addr, NamespaceAddresses};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::hello;
use crate::netns::{self, Netns};

/// The multicast groups of IPv4 and IPv6 address changes.
const GROUPS: u32 = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;

/// One datagram of address notifications is one address (a hundred bytes
/// or so); a longer one is cut, and read as "something changed".
const RECV_BUF: usize = 16 * 1024;

/// How long the first change of a burst waits for the rest (an interface
/// brought up with several addresses, a container's namespace set up)
/// before the namespaces are listed again.
pub const GATHER: Duration = Duration::from_millis(100);

/// Every namespace's addresses as they are now, in the order the agent
/// reads the namespaces: a watch channel that changes when they change.
pub type Current = watch::Receiver<Vec<NamespaceAddresses>>;

/// How long a burst is gathered for an agent polling every `interval`:
/// [`GATHER`], never more than half a poll.
pub fn gather(interval: Duration) -> Duration {
    GATHER.min(interval / 2)
}

/// Whether an address appeared or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `RTM_NEWADDR`: added (or its flags changed, say an IPv6 address
    /// done with duplicate address detection).
    New,
    /// `RTM_DELADDR`.
    Del,
}

/// One address notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressEvent {
    pub change: Change,
    /// The interface's index.
    pub index: u32,
    /// The address as `getifaddrs` reports it (the local one of a
    /// point-to-point link, else `IFA_ADDRESS`); `None` when it has none.
    pub addr: Option<IpAddr>,
}

/// What one datagram read from an address subscription says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Events {
    pub changes: Vec<AddressEvent>,
    /// Why the rest of the datagram could not be read, if it could not.
    pub malformed: Option<String>,
}

impl Events {
    /// Whether the namespace must be listed again: an address changed, or
    /// something could not be read (and may have said so).
    pub fn stale(&self) -> bool {
        !self.changes.is_empty() || self.malformed.is_some()
    }
}

/// Reads one datagram of rtnetlink notifications. Total: any bytes give
/// [`Events`], what could not be read named in `malformed`. Messages of
/// other kinds are skipped.
pub fn parse_events(chunk: &[u8]) -> Events {
    let mut out = Events::default();
    let mut rest = chunk;
    while !rest.is_empty() {
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) {
            Ok(msg) => msg,
            Err(e) => {
                out.malformed = Some(format!("{e}"));
                break;
            }
        };
        let len = msg.header.length as usize;
        if let NetlinkPayload::InnerMessage(inner) = msg.payload {
            match inner {
                RouteNetlinkMessage::NewAddress(m) => out.changes.push(event(Change::New, &m)),
                RouteNetlinkMessage::DelAddress(m) => out.changes.push(event(Change::Del, &m)),
                _ => {}
            }
        }
        // Messages are padded to four bytes; a length that does not
        // advance ends the walk rather than loop.
        let step = len.checked_add(3).map(|l| l & !3).unwrap_or(0);
        if step == 0 || step > rest.len() {
            break;
        }
        rest = &rest[step..];
    }
    out
}

fn event(change: Change, m: &AddressMessage) -> AddressEvent {
    let (mut local, mut address) = (None, None);
    for attribute in &m.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    AddressEvent {
        change,
        index: m.header.index,
        addr: local
            .or(address)
            .map(|ip| normalize_addr(SocketAddr::new(ip, 0)).ip()),
    }
}

/// A socket in the calling thread's namespace that hears of every address
/// added or removed there, read on the runtime of `runtime`.
pub fn subscribe(runtime: &tokio::runtime::Handle) -> io::Result<TokioSocket> {
    let _on = runtime.enter();
    let mut sock = TokioSocket::new(NETLINK_ROUTE)?;
    sock.socket_mut().bind(&NetlinkAddr::new(0, GROUPS))?;
    Ok(sock)
}

/// Which namespaces are to be listed again, and which have no working
/// subscription (those are listed every poll); shared by the readers and
/// the task that lists.
#[derive(Debug)]
struct Shared {
    stale: Box<[AtomicBool]>,
    blind: Box<[AtomicBool]>,
    wake: Notify,
}

impl Shared {
    fn new(n: usize) -> Shared {
        let flags = |_| AtomicBool::new(false);
        Shared {
            stale: (0..n).map(flags).collect(),
            blind: (0..n).map(flags).collect(),
            wake: Notify::new(),
        }
    }

    fn mark(&self, i: usize) {
        if let Some(f) = self.stale.get(i) {
            f.store(true, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }

    fn go_blind(&self, i: usize) {
        if let Some(f) = self.blind.get(i) {
            f.store(true, Ordering::Relaxed);
        }
        self.mark(i);
    }

    fn any_blind(&self) -> bool {
        self.blind.iter().any(|f| f.load(Ordering::Relaxed))
    }

    /// Marks every blind namespace stale.
    fn mark_blind(&self) {
        for (stale, blind) in self.stale.iter().zip(self.blind.iter()) {
            if blind.load(Ordering::Relaxed) {
                stale.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The stale namespaces, no longer marked.
    fn take(&self) -> Vec<usize> {
        self.stale
            .iter()
            .enumerate()
            .filter(|(_, f)| f.swap(false, Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Subscribes to every namespace's address changes, lists their addresses,
/// and keeps them current from then on (see the module doc) for an agent
/// polling every `interval`. Must run inside the tokio runtime; its work
/// ends when every receiver of the result is gone.
pub async fn follow(namespaces: Vec<Netns>, interval: Duration) -> anyhow::Result<Current> {
    let spaces = namespaces.clone();
    let runtime = tokio::runtime::Handle::current();
    let opened = tokio::task::spawn_blocking(move || {
        spaces
            .iter()
            .map(|ns| {
                // The subscription first: a change made while the list is
                // read is then heard of, and listed again.
                let sub = netns::run_in(ns, || subscribe(&runtime))
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.map_err(|e| e.to_string()));
                let addresses = hello::addresses(ns).unwrap_or_else(|e| {
                    tracing::warn!(netns = %ns.label, error = %e, "cannot list addresses");
                    Vec::new()
                });
                (sub, addresses)
            })
            .collect::<Vec<_>>()
    })
    .await
    .context("subscribing to address changes")?;
    let shared = Arc::new(Shared::new(namespaces.len()));
    let mut readers = JoinSet::new();
    let mut current = Vec::with_capacity(namespaces.len());
    for (i, (ns, (sub, addresses))) in namespaces.iter().zip(opened).enumerate() {
        match sub {
            Ok(sock) => {
                readers.spawn(read(i, ns.label.clone(), sock, shared.clone()));
            }
            Err(error) => {
                tracing::warn!(netns = %ns.label, %error, "cannot hear of address changes; listing the namespace's addresses every poll instead");
                if let Some(f) = shared.blind.get(i) {
                    f.store(true, Ordering::Relaxed);
                }
            }
        }
        current.push(NamespaceAddresses {
            label: ns.label.clone(),
            inode: ns.inode,
            addresses,
        });
    }
    let (tx, rx) = watch::channel(current.clone());
    let keeper = Keeper {
        namespaces,
        current,
        shared,
        gather: gather(interval),
        every: interval,
        _readers: readers,
    };
    tokio::spawn(keeper.run(tx));
    Ok(rx)
}

/// Reads namespace `i`'s notifications and marks it stale when they say
/// an address changed; marks it blind when its socket fails.
async fn read(i: usize, label: String, sock: TokioSocket, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        match sock.recv(&mut buf).await {
            Ok(()) => {
                let events = parse_events(&buf);
                for e in &events.changes {
                    tracing::debug!(netns = %label, change = ?e.change, index = e.index, addr = ?e.addr, "address change");
                }
                if let Some(why) = &events.malformed {
                    tracing::debug!(netns = %label, error = %why, "unreadable address notification; listing again");
                }
                if events.stale() {
                    shared.mark(i);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::debug!(netns = %label, "address notifications overflowed; listing again");
                shared.mark(i);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(netns = %label, error = %e, "address changes no longer heard of; listing the namespace's addresses every poll instead");
                shared.go_blind(i);
                return;
            }
        }
    }
}

/// The task that lists stale namespaces again and publishes what changed.
#[derive(Debug)]
struct Keeper {
    namespaces: Vec<Netns>,
    current: Vec<NamespaceAddresses>,
    shared: Arc<Shared>,
    gather: Duration,
    /// How often blind namespaces are listed: every poll.
    every: Duration,
    /// The readers, stopped when the keeper ends.
    _readers: JoinSet<()>,
}

impl Keeper {
    async fn run(mut self, tx: watch::Sender<Vec<NamespaceAddresses>>) {
        let start = tokio::time::Instant::now() + self.every;
        let mut blind_tick = tokio::time::interval_at(start, self.every);
        blind_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = self.shared.wake.notified() => {}
                _ = blind_tick.tick(), if self.shared.any_blind() => self.shared.mark_blind(),
            }
            // The rest of the burst.
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(self.gather) => {}
            }
            let stale = self.shared.take();
            if stale.is_empty() {
                continue;
            }
            let spaces: Vec<(usize, Netns)> = stale
                .iter()
                .filter_map(|&i| Some((i, self.namespaces.get(i)?.clone())))
                .collect();
            let listed = tokio::task::spawn_blocking(move || {
                spaces
                    .into_iter()
                    .map(|(i, ns)| (i, hello::addresses(&ns)))
                    .collect::<Vec<_>>()
            })
            .await;
            let listed = match listed {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(error = %e, "listing addresses failed");
                    continue;
                }
            };
            if self.apply(listed) {
                tx.send_replace(self.current.clone());
            }
        }
    }

    /// Takes in what was listed; whether anything changed. A namespace
    /// that could not be listed keeps what it had.
    fn apply(
        &mut self,
        listed: Vec<(usize, Result<Vec<IpAddr>, hello::AddressError>)>,
    ) -> bool {
        let mut changed = false;
        for (i, res) in listed {
            let Some(ns) = self.current.get_mut(i) else {
                continue;
            };
            match res {
                Ok(addresses) if addresses != ns.addresses => {
                    // Both lists are sorted.
                    let added = addresses
                        .iter()
                        .filter(|a| ns.addresses.binary_search(a).is_err());
                    let gone = ns
                        .addresses
                        .iter()
                        .filter(|a| addresses.binary_search(a).is_err());
                    tracing::info!(
                        netns = %ns.label,
                        added = ?added.collect::<Vec<_>>(),
                        gone = ?gone.collect::<Vec<_>>(),
                        "addresses changed"
                    );
                    ns.addresses = addresses;
                    changed = true;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(netns = %ns.label, error = %e, "cannot list addresses; keeping the last list");
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests;
