//! The join: a suspect's peer end, asked of the host that announced the
//! peer's address (through the gateway, by host: the matcher never sees a
//! session), followed while suspects need it, and read when a suspect is
//! diagnosed; and the flow query's two ends.

use tcpstall_common::time::millis_i64;
use tcpstall_common::{FlowTuple, Packed};
use tokio::sync::mpsc;

use super::state::{decode, Ctx, Map, Matcher, PeerEnd, PeerNow, Stats, Suspect, Up, Watch};
use super::tuple::Tuple;
use crate::messages::{HostId, ToGateway};

/// Both ends of a flow as known now, with their hosts' names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowView {
    pub a: Option<(String, tcpstall_common::EndSample)>,
    pub b: Option<(String, tcpstall_common::EndSample)>,
}

impl Matcher {
    /// A watched end reported (or was reported gone): keep it, and bring
    /// the episode it is the peer of up to date. `end` makes the new state
    /// from the old, and only if the flow is watched (most samples are not
    /// of a watched end).
    pub(super) fn peer_report(
        &mut self,
        host: HostId,
        flow: Tuple,
        end: impl FnOnce(PeerEnd) -> PeerEnd,
    ) {
        let Some(w) = self.ctx.watched.get_mut(&(host, flow)) else {
            return;
        };
        w.end = end(std::mem::replace(&mut w.end, PeerEnd::Pending));
        let Some(owner) = w.episode_of else { return };
        let (owner, a_flow) = self
            .ctx
            .a_of
            .get(&(host, flow))
            .copied()
            .unwrap_or((owner, flow.reversed()));
        if let Some(e) = self.table.get_mut(&(owner, a_flow)) {
            self.ctx.rediagnose(a_flow, &mut e.suspect, None);
            self.ctx.record(owner, a_flow, &mut e.suspect, false);
        }
    }

    /// Both ends of `flow` as known now; asks the owners to watch it. The
    /// other end is `flow` reversed, unless `flow` is a suspect joined
    /// through a translation: then the 4-tuple its peer has.
    pub(super) fn flow(&mut self, flow: FlowTuple, now_ms: i64) -> FlowView {
        let mut view = FlowView::default();
        let other = self
            .ctx
            .owners
            .get(&flow.local.ip())
            .into_iter()
            .flatten()
            .find_map(|&h| self.table.get(&(h, Tuple::new(flow))))
            .and_then(|e| e.suspect.nat.as_ref()?.b_flow)
            .map_or(flow.reversed(), |b| b.flow());
        for (slot, tuple) in [(0, flow), (1, other)] {
            let known = self
                .find_end(tuple)
                .and_then(|(h, p)| Some((h, decode(p)?)));
            // The host that reports the end, else every host that holds
            // its address.
            let hosts: Vec<HostId> = match &known {
                Some((h, _)) => vec![*h],
                None => self
                    .ctx
                    .owners
                    .get(&tuple.local.ip())
                    .cloned()
                    .unwrap_or_default(),
            };
            let key = Tuple::new(tuple);
            for host in hosts {
                if !self.ctx.watched.contains_key(&(host, key)) {
                    self.ctx.watch(host, key, now_ms);
                }
            }
            let known = known.map(|(h, s)| (self.ctx.name(h).to_string(), s));
            if slot == 0 {
                view.a = known;
            } else {
                view.b = known;
            }
        }
        view
    }

    /// The latest sample of the end whose own side is `tuple.local`: looked
    /// up at the hosts that announced that address (as watches are asked of
    /// them), else (loopback, an address nobody announced) found by a scan of
    /// everything tracked. Queries come at any rate; the scan is for the
    /// cases the index cannot serve.
    fn find_end(&self, tuple: FlowTuple) -> Option<(HostId, &Packed)> {
        fn seen(w: &Watch) -> Option<&Packed> {
            match &w.end {
                PeerEnd::Seen { sample, .. } => Some(sample),
                _ => None,
            }
        }
        let key = Tuple::new(tuple);
        if let Some(hosts) = self.ctx.owners.get(&tuple.local.ip()) {
            return hosts.iter().find_map(|&host| {
                let watched = self.ctx.watched.get(&(host, key)).and_then(seen);
                let suspect = || self.table.get(&(host, key)).map(|e| &e.suspect.latest);
                watched.or_else(suspect).map(|p| (host, p))
            });
        }
        self.ctx
            .watched
            .iter()
            .find_map(|((h, t), w)| (*t == key).then(|| seen(w).map(|p| (*h, p))).flatten())
            .or_else(|| {
                self.table
                    .iter()
                    .find(|((_, t), _)| *t == key)
                    .map(|((h, _), e)| (*h, &e.suspect.latest))
            })
    }
}

impl Ctx {
    /// Asks again for a watched end that has not answered in two of its
    /// agent's polls (the request may have been dropped, or its agent
    /// reconnected).
    pub(super) fn ask_again(&mut self, host: HostId, flow: Tuple, now_ms: i64) {
        // Every suspect sample comes here: most peers have answered, so
        // look at the watch before working out the agent's patience.
        let w = match self.watched.get_mut(&(host, flow)) {
            Some(w) if matches!(w.end, PeerEnd::Pending) => w,
            _ => return,
        };
        let Some(up) = self.up.get(&host) else {
            return;
        };
        let patience = millis_i64(up.interval * 2);
        if w.asked_at_ms.is_none_or(|t| now_ms - t > patience) {
            w.asked_at_ms = ask(&self.gateway, &self.up, &mut self.stats, host, flow, now_ms);
        }
    }

    pub(super) fn watch(&mut self, host: HostId, flow: Tuple, now_ms: i64) {
        let w = self.watched.get_or_insert(
            (host, flow),
            Watch {
                refs: 0,
                end: PeerEnd::Pending,
                episode_of: None,
                asked_at_ms: None,
            },
        );
        w.refs += 1;
        if w.refs == 1 {
            w.asked_at_ms = ask(&self.gateway, &self.up, &mut self.stats, host, flow, now_ms);
        }
    }

    pub(super) fn unwatch(&mut self, host: HostId, flow: Tuple) {
        let unneeded = self.watched.remove_if(&(host, flow), |w| {
            w.refs = w.refs.saturating_sub(1);
            w.refs == 0
        });
        if unneeded.is_some() {
            let unwatch = ToGateway::Unwatch {
                host,
                flow: flow.flow(),
            };
            request(&self.gateway, &self.up, &mut self.stats, unwatch, 0);
        }
    }

    /// The gateway could not deliver a watch request: due again at the
    /// suspect's next report.
    pub(super) fn unsent(&mut self, host: HostId, flow: FlowTuple) {
        if let Some(w) = self.watched.get_mut(&(host, Tuple::new(flow))) {
            if matches!(w.end, PeerEnd::Pending) {
                w.asked_at_ms = None;
            }
        }
    }

    /// A suspect that ended (on `flow`) no longer needs its peer's end,
    /// nor the translations asked for it.
    pub(super) fn let_peer_go(&mut self, s: &Suspect, flow: Tuple) {
        let b_flow = s.b_flow(flow);
        if s.asked {
            for &peer in s.peers.hosts() {
                self.unwatch(peer, b_flow);
            }
        }
        if let Some(nat) = &s.nat {
            for &peer in s.peers.hosts() {
                self.a_of.remove(&(peer, b_flow));
            }
            if nat.translate.is_some() {
                self.translating.retain(|_, asked| asked.suspect.1 != flow);
            }
        }
    }

    /// The host whose report of the peer end counts (the B of the
    /// episode): the one that reports the socket (or reported it before
    /// it went); with a single candidate, that one.
    pub(super) fn b_host(&self, s: &Suspect, flow: Tuple) -> Option<HostId> {
        let hosts = s.peers.hosts();
        let b_flow = s.b_flow(flow);
        hosts
            .iter()
            .copied()
            .find(|&p| self.b_report(p, b_flow).is_some())
            .or_else(|| (hosts.len() == 1).then(|| hosts[0]))
    }

    /// `peer`'s latest report of its end `b_flow`: when it was taken and
    /// the sample, the last before its socket went when it went.
    pub(super) fn b_report(&self, peer: HostId, b_flow: Tuple) -> Option<(i64, &Packed)> {
        match self.watched.get(&(peer, b_flow)).map(|w| &w.end) {
            Some(PeerEnd::Seen { at_ms, sample })
            | Some(PeerEnd::NoSocket {
                last: Some((at_ms, sample)),
                ..
            }) => Some((*at_ms, sample)),
            _ => None,
        }
    }

    /// The peer of suspect `s` (on `flow`) as known now. With several
    /// hosts holding the peer's address, a socket found on any of them
    /// wins over its absence elsewhere; one still to answer leaves it
    /// pending; only when every one of them has answered that it has no
    /// such socket is that a finding: half-open with one candidate, and
    /// with several no join at all (the socket may be on a host nobody
    /// asked), never a half-open blamed on a host that never had it.
    pub(super) fn peer_of(&self, s: &Suspect, flow: Tuple) -> PeerNow {
        let hosts = s.peers.hosts();
        let b_flow = s.b_flow(flow);
        // Forwarding hosts still to say whether they translate it.
        let translating = s
            .nat
            .as_ref()
            .and_then(|n| n.translate.as_ref())
            .and_then(|t| self.still_translating(t, s.latest_at_ms));
        if hosts.is_empty() {
            if let Some(host) = translating {
                return PeerNow::Pending(self.name(host));
            }
            return PeerNow::Unmonitored(b_flow.flow().local.ip());
        }
        let seen = |peer: HostId, sample: &Packed| match decode(sample) {
            Some(b) => PeerNow::Seen(b),
            None => PeerNow::Pending(self.name(peer)),
        };
        let (mut before, mut pending) = (None, None);
        for &peer in hosts {
            match self.watched.get(&(peer, b_flow)).map(|w| &w.end) {
                Some(PeerEnd::Seen { sample, .. }) => return seen(peer, sample),
                // B's socket gone proves B lost the connection only once A
                // is seen still stuck after it: when both ends close (A's
                // own agent may tell of A a moment after B's tells of B),
                // B's going says nothing about the hold. Until then, B as
                // it was.
                Some(PeerEnd::NoSocket { gone_ms, last }) => {
                    if s.latest_at_ms > *gone_ms {
                        continue;
                    }
                    match last {
                        Some((_, sample)) => {
                            before.get_or_insert((peer, sample));
                        }
                        None => {
                            pending.get_or_insert(peer);
                        }
                    }
                }
                Some(PeerEnd::Pending) | None => {
                    pending.get_or_insert(peer);
                }
            }
        }
        if let Some((peer, sample)) = before {
            return seen(peer, sample);
        }
        if let Some(peer) = pending.or(translating) {
            return PeerNow::Pending(self.name(peer));
        }
        if let Some(why) = s.nat.as_ref().and_then(|n| n.unjoined.as_ref()) {
            return PeerNow::Unjoined(why.clone());
        }
        match hosts {
            [one] => PeerNow::NoSocket(self.name(*one)),
            many => {
                // Each host with the namespace it holds the address in.
                let ip = b_flow.flow().local.ip();
                let names: Vec<String> = many
                    .iter()
                    .map(|&h| match self.netns_of(h, ip) {
                        Some(ns) => format!("{} in netns {ns}", self.name(h)),
                        None => self.name(h).to_string(),
                    })
                    .collect();
                PeerNow::Unjoined(format!(
                    "{} is held by several hosts ({}) and none has the socket",
                    b_flow.flow().local.ip(),
                    names.join(", ")
                ))
            }
        }
    }
}

/// Asks the gateway to have `host`'s agent watch `flow` (see [`request`]).
fn ask(
    gateway: &mpsc::Sender<ToGateway>,
    up: &Map<HostId, Up>,
    stats: &mut Stats,
    host: HostId,
    flow: Tuple,
    now_ms: i64,
) -> Option<i64> {
    let flow = flow.flow();
    request(gateway, up, stats, ToGateway::Watch { host, flow }, now_ms)
}

/// Asks the gateway to have `host`'s agent look `flow` up in its
/// connection tracking (see [`request`]).
pub(super) fn ask_translate(
    gateway: &mpsc::Sender<ToGateway>,
    up: &Map<HostId, Up>,
    stats: &mut Stats,
    host: HostId,
    flow: Tuple,
    now_ms: i64,
) -> Option<i64> {
    let flow = flow.flow();
    request(gateway, up, stats, ToGateway::Translate { host, flow }, now_ms)
}

/// Hands a request for `host`'s agent to the gateway: `Some(now_ms)` when
/// it was, `None` when it could not be (the host does not stream now, or
/// the gateway's queue is full: counted, and logged at powers of two). A
/// function of the fields it needs, not of `Ctx`, so that a caller can
/// keep an entry of the watch table borrowed meanwhile.
fn request(
    gateway: &mpsc::Sender<ToGateway>,
    up: &Map<HostId, Up>,
    stats: &mut Stats,
    msg: ToGateway,
    now_ms: i64,
) -> Option<i64> {
    let host = match msg {
        ToGateway::Watch { host, .. }
        | ToGateway::Unwatch { host, .. }
        | ToGateway::Translate { host, .. } => host,
    };
    if !up.contains_key(&host) {
        return None;
    }
    if gateway.try_send(msg).is_ok() {
        return Some(now_ms);
    }
    stats.requests_dropped += 1;
    let n = stats.requests_dropped;
    if n.is_power_of_two() {
        tracing::warn!(
            dropped = n,
            "the gateway's queue is full; request dropped (a watch is asked again at the suspect's next report)"
        );
    }
    None
}
