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
        let a_flow = flow.reversed();
        if let Some(e) = self.table.get_mut(&(owner, a_flow)) {
            self.ctx.rediagnose(a_flow, &mut e.suspect, None);
            self.ctx.record(owner, a_flow, &mut e.suspect, false);
        }
    }

    /// Both ends of `flow` as known now; asks the owners to watch it.
    pub(super) fn flow(&mut self, flow: FlowTuple, now_ms: i64) -> FlowView {
        let mut view = FlowView::default();
        for (slot, tuple) in [(0, flow), (1, flow.reversed())] {
            let known = self
                .find_end(tuple)
                .and_then(|(h, p)| Some((h, decode(p)?)));
            let host = known
                .as_ref()
                .map(|(h, _)| *h)
                .or_else(|| self.ctx.owners.get(&tuple.local.ip()).copied());
            if let Some(host) = host {
                let key = Tuple::new(tuple);
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
    /// up at the host that announced that address (as watches are asked of
    /// it), else (loopback, an address nobody announced) found by a scan of
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
        if let Some(&host) = self.ctx.owners.get(&tuple.local.ip()) {
            let watched = self.ctx.watched.get(&(host, key)).and_then(seen);
            let suspect = || self.table.get(&(host, key)).map(|e| &e.suspect.latest);
            return watched.or_else(suspect).map(|p| (host, p));
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

    /// A suspect that ended (on `flow`) no longer needs its peer's end.
    pub(super) fn let_peer_go(&mut self, s: &Suspect, flow: Tuple) {
        if let (Some(peer), true) = (s.peer, s.asked) {
            self.unwatch(peer, flow.reversed());
        }
    }

    pub(super) fn peer_of(&self, s: &Suspect, flow: Tuple) -> PeerNow {
        let Some(peer) = s.peer else {
            return PeerNow::Unmonitored;
        };
        let seen = |sample: &Packed| match decode(sample) {
            Some(b) => PeerNow::Seen(b),
            None => PeerNow::Pending(self.name(peer)),
        };
        match self.watched.get(&(peer, flow.reversed())).map(|w| &w.end) {
            Some(PeerEnd::Seen { sample, .. }) => seen(sample),
            // B's socket gone proves B lost the connection only once A is
            // seen still stuck after it: when both ends close (A's own
            // agent may tell of A a moment after B's tells of B), B's
            // going says nothing about the hold. Until then, B as it was.
            Some(PeerEnd::NoSocket { gone_ms, last }) => {
                if s.latest_at_ms > *gone_ms {
                    PeerNow::NoSocket(self.name(peer))
                } else if let Some((_, sample)) = last {
                    seen(sample)
                } else {
                    PeerNow::Pending(self.name(peer))
                }
            }
            Some(PeerEnd::Pending) | None => PeerNow::Pending(self.name(peer)),
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
        ToGateway::Watch { host, .. } | ToGateway::Unwatch { host, .. } => host,
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
