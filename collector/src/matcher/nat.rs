//! Joins through translations: when an address is rewritten between a
//! connection's two ends (a service address DNATed by its client's host,
//! a masquerade, a port-forward into a container, a NAT gateway), the
//! peer's end is not the suspect's 4-tuple reversed, and a join by 4-tuple
//! alone would find no socket and call the connection half-open.
//!
//! Three places may hold the translation, each tried in turn:
//! - the suspect's own host: its sample carries its conntrack entry, and
//!   the peer's 4-tuple is the entry's other direction ([`translated`]);
//! - the peer's host: asked for a flow it has no socket for, its agent
//!   looks the flow up in its conntrack and says what it found beside the
//!   absence ([`Lookup`]); the peer is then looked for at the translated
//!   4-tuple ([`Matcher::lookups`]);
//! - a host between them that forwards packets and runs an agent: asked
//!   only when the direct join failed (every host that could hold the
//!   peer has no socket for it, or no agent covers its address), with a
//!   Translate request per forwarding host, answered once each.
//!
//! A socket on the peer's endpoint that talks to a third address (a
//! translation by a host this collector cannot ask) is never taken for a
//! lost connection: the episode is `peer_unmonitored` with that reason,
//! unless the host that owns the third address translates and confirms it.

use tcpstall_common::time::millis_i64;
use tcpstall_common::{EndSample, FlowTuple, Lookup, Translation};

use super::join::ask_translate;
use super::state::{owners_of, AskedTranslation, Matcher, Nat, PeerEnd, Translating};
use super::tuple::Tuple;
use crate::messages::HostId;

/// Most times one suspect's peer is looked for again at a translated
/// 4-tuple: translations do not chain without end.
const MAX_HOPS: u8 = 3;

/// Most forwarding hosts asked to look one flow up.
pub(super) const MAX_TRANSLATORS: usize = 64;

/// A new suspect's join as its own host's conntrack gives it: the peer's
/// 4-tuple is the entry's other direction. `None` when its sample carries
/// no translation of its own flow.
pub(super) fn translated(host: HostId, sample: &EndSample) -> Option<Box<Nat>> {
    let t = sample.translation.as_deref().filter(|t| t.translated())?;
    let b = t.far_side(sample.flow)?;
    if b == sample.flow.reversed() {
        return None;
    }
    Some(Box::new(Nat {
        b_flow: Some(Tuple::new(b)),
        via: Some((host, *t)),
        ..Nat::default()
    }))
}

/// The peer's socket, as the host whose conntrack holds `t` finds it from
/// a watched flow `w` it has no socket for: `w` is the peer's end as the
/// suspect's side sees it, so the far end sends `w` reversed, and the
/// socket that answers is the entry's other direction.
fn behind(t: &Translation, w: FlowTuple) -> Option<FlowTuple> {
    t.far_side(w.reversed())
}

impl Matcher {
    /// What `host` said of flows it has no socket for: watched flows it
    /// found absent, and answers to Translate requests.
    pub(super) fn lookups(&mut self, host: HostId, lookups: &[Lookup], now_ms: i64) {
        for l in lookups {
            if l.asked {
                self.translate_answer(host, l, now_ms);
            } else {
                self.absent_lookup(host, l, now_ms);
            }
        }
    }

    /// The suspects whose peer is watched at `host` as `b_flow`: the one a
    /// translated join recorded, else the suspects on `b_flow` reversed
    /// whose peers include `host`.
    fn suspects_of(&self, host: HostId, b_flow: Tuple) -> Vec<(HostId, Tuple)> {
        if let Some(&a) = self.ctx.a_of.get(&(host, b_flow)) {
            return vec![a];
        }
        let a_flow = b_flow.reversed();
        let ip = b_flow.flow().remote.ip();
        let hosts = if ip.is_loopback() {
            vec![host]
        } else {
            self.ctx.owners.get(&ip).cloned().unwrap_or_default()
        };
        hosts
            .into_iter()
            .filter(|&h| {
                self.table.get(&(h, a_flow)).is_some_and(|e| {
                    e.suspect.b_flow(a_flow) == b_flow && e.suspect.peers.hosts().contains(&host)
                })
            })
            .map(|h| (h, a_flow))
            .collect()
    }

    /// A watched flow `host` has no socket for, with what its conntrack
    /// and sockets say: the peer is looked for where the translation
    /// points, or is known to be behind a translation nobody here holds.
    fn absent_lookup(&mut self, host: HostId, l: &Lookup, now_ms: i64) {
        let w = Tuple::new(l.flow);
        for a in self.suspects_of(host, w) {
            let found = l
                .translation
                .filter(Translation::translated)
                .and_then(|t| Some((t, behind(&t, l.flow)?)));
            match (found, l.connected_to) {
                (Some((t, r)), _) if Tuple::new(r) != w => {
                    self.retarget(a, Tuple::new(r), (host, t), now_ms);
                }
                (_, Some(x)) => self.connected_elsewhere(a, host, l.flow, x, now_ms),
                _ => {}
            }
        }
    }

    /// The peer's endpoint on `host` holds one socket, talking to `x`
    /// instead of the suspect: a translation on the way. The host that
    /// owns `x` is asked to confirm it when its agent can; else nothing
    /// here can join them, and the peer is not taken for lost.
    fn connected_elsewhere(
        &mut self,
        a: (HostId, Tuple),
        host: HostId,
        w: FlowTuple,
        x: std::net::SocketAddr,
        now_ms: i64,
    ) {
        let candidate = Tuple::new(FlowTuple::new(w.local, x));
        // The hosts that own `x` (a gateway's DNAT address) if their agents
        // answer; else every forwarding host (`x` is nobody's: a service
        // address a router translates).
        let owners: Vec<HostId> = self
            .ctx
            .owners
            .get(&x.ip())
            .map(|hs| {
                hs.iter()
                    .copied()
                    .filter(|h| self.ctx.up.get(h).is_some_and(|u| u.answers_lookups))
                    .collect()
            })
            .unwrap_or_default();
        let translators: Vec<HostId> = if owners.is_empty() {
            self.ctx.translators.clone()
        } else {
            owners
        }
        .into_iter()
        .filter(|&h| h != a.0)
        .take(MAX_TRANSLATORS)
        .collect();
        let why = format!(
            "translated by a host without an agent: {} on {} talks to {}, not {}",
            w.local,
            self.ctx.name(host),
            x,
            w.remote
        );
        let ctx = &mut self.ctx;
        let Some(e) = self.table.get_mut(&a) else {
            return;
        };
        let s = &mut e.suspect;
        let nat = s.nat.get_or_insert_with(Default::default);
        if nat.translate.is_some() {
            return;
        }
        if translators.is_empty() {
            nat.unjoined = Some(why);
        } else {
            let mut waiting = Vec::with_capacity(translators.len());
            for t in translators {
                if ask_translate(&ctx.gateway, &ctx.up, &mut ctx.stats, t, candidate, now_ms)
                    .is_some()
                {
                    let asked = AskedTranslation {
                        suspect: a,
                        confirms: Some((host, candidate)),
                    };
                    ctx.translating.insert((t, candidate), asked);
                    waiting.push(t);
                    ctx.stats.translate_asked += 1;
                }
            }
            nat.unjoined = Some(why);
            nat.translate = Some(Translating {
                asked_at_ms: now_ms,
                waiting,
            });
        }
        if s.episode.is_some() {
            ctx.rediagnose(a.1, s, None);
        }
    }

    /// A forwarding host's answer to a Translate request.
    fn translate_answer(&mut self, host: HostId, l: &Lookup, now_ms: i64) {
        let asked = Tuple::new(l.flow);
        let Some(AskedTranslation {
            suspect: a,
            confirms: confirm,
        }) = self.ctx.translating.remove(&(host, asked))
        else {
            return;
        };
        let ctx = &mut self.ctx;
        let Some(e) = self.table.get_mut(&a) else {
            return;
        };
        let s = &mut e.suspect;
        if let Some(t) = s.nat.as_mut().and_then(|n| n.translate.as_mut()) {
            t.waiting.retain(|&h| h != host);
        }
        let t = l.translation.filter(Translation::translated);
        let target = match (t, confirm) {
            // The socket on the peer's endpoint is the suspect's peer when
            // this host's entry joins it to the suspect's own 4-tuple.
            (Some(t), Some((_, candidate))) => (t.far_side(l.flow) == Some(a.1.flow()))
                .then_some((t, candidate)),
            // The suspect's own flow, translated here: its peer is the
            // entry's other direction.
            (Some(t), None) => t.far_side(l.flow).map(|b| (t, Tuple::new(b))),
            (None, _) => None,
        };
        match target {
            Some((t, b_flow)) => self.retarget(a, b_flow, (host, t), now_ms),
            None => {
                if s.episode.is_some() {
                    ctx.rediagnose(a.1, s, None);
                }
            }
        }
    }

    /// Looks for suspect `a`'s peer at `b_flow` from now on, joined
    /// through `via`: the old peer is let go, the hosts that own
    /// `b_flow`'s local address are asked to watch it, and an open
    /// episode hears of it.
    fn retarget(
        &mut self,
        a: (HostId, Tuple),
        b_flow: Tuple,
        via: (HostId, Translation),
        now_ms: i64,
    ) {
        let ctx = &mut self.ctx;
        let Some(e) = self.table.get_mut(&a) else {
            return;
        };
        let s = &mut e.suspect;
        let old = s.b_flow(a.1);
        if old == b_flow || s.nat.as_ref().is_some_and(|n| n.hops >= MAX_HOPS) {
            return;
        }
        let open = s.episode.is_some();
        if open {
            ctx.mark_episode_of(s, a.1, None);
        }
        if s.asked {
            for &p in s.peers.hosts() {
                ctx.unwatch(p, old);
            }
        }
        for &p in s.peers.hosts() {
            ctx.a_of.remove(&(p, old));
        }
        let nat = s.nat.get_or_insert_with(Default::default);
        nat.hops += 1;
        nat.b_flow = Some(b_flow);
        nat.via = Some(via);
        nat.unjoined = None;
        s.peers = owners_of(&ctx.owners, a.0, b_flow.flow().local.ip());
        s.asked = !s.peers.is_none();
        for &p in s.peers.hosts() {
            ctx.watch(p, b_flow, now_ms);
            ctx.a_of.insert((p, b_flow), a);
        }
        ctx.stats.joined_via_translation += 1;
        tracing::debug!(
            host = %ctx.name(a.0),
            flow = %a.1.flow(),
            peer = %b_flow.flow(),
            via = %via.1,
            by = %ctx.name(via.0),
            "peer looked for through a translation"
        );
        if open {
            ctx.mark_episode_of(s, a.1, Some(a.0));
            ctx.rediagnose(a.1, s, None);
            ctx.record(a.0, a.1, s, false);
        }
    }

    /// After `host` said it has no socket for `w`: a suspect whose every
    /// candidate host now says so, and that no translation explains yet,
    /// has the forwarding hosts asked before its peer is called lost.
    pub(super) fn after_absent(&mut self, host: HostId, w: Tuple, now_ms: i64) {
        if self.ctx.translators.is_empty() {
            return;
        }
        for a in self.suspects_of(host, w) {
            let Some(e) = self.table.get(&a) else {
                continue;
            };
            let s = &e.suspect;
            if s.nat.as_ref().is_some_and(|n| n.translate.is_some()) {
                continue;
            }
            let b_flow = s.b_flow(a.1);
            let all_absent = s.peers.hosts().iter().all(|&p| {
                matches!(
                    self.ctx.watched.get(&(p, b_flow)).map(|w| &w.end),
                    Some(PeerEnd::NoSocket { .. })
                )
            });
            if all_absent {
                self.ask_translators(a, now_ms);
            }
        }
    }

    /// Asks every forwarding host (but the suspect's own, whose conntrack
    /// its samples carry) to look suspect `a`'s flow up, once.
    pub(super) fn ask_translators(&mut self, a: (HostId, Tuple), now_ms: i64) {
        let ctx = &mut self.ctx;
        let Some(e) = self.table.get_mut(&a) else {
            return;
        };
        let s = &mut e.suspect;
        let peers = s.peers.hosts();
        let mut waiting = Vec::new();
        let mut skipped = 0u64;
        for &t in &ctx.translators {
            if t == a.0 || peers.contains(&t) {
                continue;
            }
            if waiting.len() == MAX_TRANSLATORS {
                skipped += 1;
                continue;
            }
            if ask_translate(&ctx.gateway, &ctx.up, &mut ctx.stats, t, a.1, now_ms).is_some() {
                let asked = AskedTranslation {
                    suspect: a,
                    confirms: None,
                };
                ctx.translating.insert((t, a.1), asked);
                waiting.push(t);
            }
        }
        ctx.stats.translate_asked += waiting.len() as u64;
        ctx.stats.translate_skipped += skipped;
        let nat = s.nat.get_or_insert_with(Default::default);
        nat.translate = Some(Translating {
            asked_at_ms: now_ms,
            waiting,
        });
        if s.episode.is_some() {
            ctx.rediagnose(a.1, s, None);
        }
    }
}

impl super::state::Ctx {
    /// A forwarding host still to answer `t` by `now_ms`: each has two of
    /// its polls and a second for it, then its silence is taken for "not
    /// here".
    pub(super) fn still_translating(&self, t: &Translating, now_ms: i64) -> Option<HostId> {
        t.waiting.iter().copied().find(|h| {
            self.up.get(h).is_some_and(|u| {
                now_ms - t.asked_at_ms <= millis_i64(u.interval * 2) + 1000
            })
        })
    }
}
