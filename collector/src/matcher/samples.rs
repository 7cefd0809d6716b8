//! A batch's samples through the table: each suspect's track steps, its
//! peer is asked for, events open and close episodes; a watched end's
//! report reaches the episode it is the peer of; releases and closings end
//! what they end. One lookup in the table per sample.

use std::time::Duration;

use tcpstall_common::time::{millis, millis_i64};
use tcpstall_common::{AgentBatch, EndReason, EndSample, HeldSpan, Packed, SampleReason};
use tcpstall_proto::convert::pack;

use super::detector::{Restart, Step, Track};
use super::state::{ask_peer_after, owners_of, take, Clocks, Entry, Matcher, PeerEnd, Suspect};
use super::tuple::Tuple;
use crate::messages::HostId;

/// The poll interval taken for a host the matcher has not heard say hello
/// (its batches are not handled; this is for what is left of it).
pub(super) const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

impl Matcher {
    /// Handles one batch from `host`, taken at `taken_ms` and handled at
    /// collector wall time `now_ms`.
    pub(super) fn batch(&mut self, host: HostId, taken_ms: i64, batch: AgentBatch, now_ms: i64) {
        let interval = self
            .ctx
            .up
            .get(&host)
            .map_or(DEFAULT_INTERVAL, |u| u.interval);
        let ask_after = self
            .ctx
            .watch_peer_after
            .unwrap_or_else(|| ask_peer_after(self.threshold, interval));
        let at = Clocks {
            mono: batch.mono,
            now_ms,
            taken_ms,
            ask_after,
        };
        self.ctx.stats.samples += batch.samples.len() as u64;
        for &flow in &batch.absent {
            self.peer_report(host, Tuple::new(flow), |old| old.gone(taken_ms));
        }
        let exact = batch.packed.len() == batch.samples.len();
        let mut packed = batch.packed.into_iter();
        // By reference: a sample is a few hundred bytes, not worth moving.
        for &(reason, ref sample) in &batch.samples {
            let mut slot = if exact { packed.next().flatten() } else { None };
            let tuple = Tuple::new(sample.flow);
            self.peer_report(host, tuple, |_| PeerEnd::Seen {
                at_ms: taken_ms,
                sample: if reason == SampleReason::Watched {
                    take(&mut slot, sample)
                } else {
                    slot.clone().unwrap_or_else(|| pack(sample))
                },
            });
            match reason {
                SampleReason::Watched => {}
                SampleReason::Released(Some(span)) => {
                    let ended = Some((sample, slot));
                    self.held_end(host, tuple, sample.cookie, ended, &span, at);
                }
                _ => self.observe(host, tuple, reason, sample, slot, at),
            }
        }
        for closed in batch.closed {
            let flow = Tuple::new(closed.flow);
            self.peer_report(host, flow, |old| old.gone(taken_ms));
            match closed.held {
                Some(span) => self.held_end(host, flow, closed.cookie, None, &span, at),
                None => self.close(host, flow, closed.cookie, batch.mono, now_ms),
            }
        }
        // What the host knows of the flows it has none of, then whether a
        // peer every candidate host said it has not needs a translator.
        if !batch.lookups.is_empty() {
            self.lookups(host, &batch.lookups, now_ms);
        }
        for flow in batch.absent {
            self.after_absent(host, Tuple::new(flow), now_ms);
        }
    }

    /// A sample the agent sent as a suspect: one step of its track, which
    /// the table keeps beside the suspect.
    fn observe(
        &mut self,
        host: HostId,
        tuple: Tuple,
        reason: SampleReason,
        sample: &EndSample,
        mut packed: Option<Packed>,
        at: Clocks,
    ) {
        let Clocks {
            mono,
            now_ms,
            taken_ms,
            ask_after,
        } = at;
        if matches!(reason, SampleReason::Released(_)) || sample.pos.sendq == 0 {
            self.last_word(host, tuple, sample, packed, mono, now_ms, taken_ms);
            return;
        }
        let ctx = &mut self.ctx;
        let (e, inserted) = self.table.get_or_insert_with((host, tuple), || Entry {
            track: Track::new(sample, mono),
            suspect: Suspect::default(),
        });
        let Step {
            restart,
            opened,
            held,
        } = e.track.step(sample, mono, self.threshold);
        // Another socket had the 4-tuple: its suspect ends here, and this
        // one starts afresh.
        let mut replaced = match restart {
            Some(Restart {
                reason: EndReason::Replaced,
                ..
            }) => Some(std::mem::take(&mut e.suspect)),
            _ => None,
        };
        let closed = restart.and_then(|r| r.closed);
        let changed = closed.is_some() || opened.is_some();
        // An episode opening (held for the threshold) is past it too.
        let ask = held >= ask_after || changed;
        let s = &mut e.suspect;
        // Whether it has an open episode, as long as no event changed that;
        // and whether to ask its peer's hosts to watch it (true) or to ask
        // again (false).
        let (mut open, mut request) = (false, None);
        if inserted || replaced.is_some() {
            // Its host's conntrack may say the peer sees another 4-tuple.
            let nat = super::nat::translated(host, sample);
            let b_ip = nat
                .as_ref()
                .and_then(|n| n.b_flow)
                .map_or(sample.flow.remote.ip(), |b| b.flow().local.ip());
            let peers = owners_of(&ctx.owners, host, b_ip);
            let asked = ask && !peers.is_none();
            *s = Suspect {
                peers,
                asked,
                peers_generation: ctx.announced.generation(),
                latest: take(&mut packed, sample),
                latest_at_ms: taken_ms,
                first: None,
                first_at_ms: taken_ms,
                episode: None,
                nat,
            };
            request = asked.then_some(true);
        } else {
            // Owners changed since its peers were found (an address
            // announced, a host up): found again.
            if s.peers_generation != ctx.announced.generation() {
                ctx.repeer(host, tuple, s, now_ms);
            }
            open = s.episode.is_some();
            let prev = std::mem::replace(&mut s.latest, take(&mut packed, sample));
            if restart.is_some() {
                // The queue moved: a new stall starts at this sample.
                s.first = None;
                s.first_at_ms = taken_ms;
            } else if s.first.is_none() {
                s.first = Some(prev);
            }
            s.latest_at_ms = taken_ms;
            if !s.peers.is_none() {
                if s.asked {
                    request = Some(false);
                } else if ask {
                    s.asked = true;
                    request = Some(true);
                }
            }
        }
        if let Some(new) = request {
            let b_flow = s.b_flow(tuple);
            for &peer in s.peers.hosts() {
                if new {
                    ctx.watch(peer, b_flow, now_ms);
                    if s.nat.is_some() {
                        ctx.a_of.insert((peer, b_flow), (host, tuple));
                    }
                } else {
                    ctx.ask_again(peer, b_flow, now_ms);
                }
            }
        }
        // The old stall's end first (of the socket it was), then this one's
        // opening.
        if let Some(closed) = closed {
            let of = replaced.as_mut().unwrap_or(s);
            ctx.apply(closed, host, tuple, of, now_ms, Some(sample));
        }
        if let Some(opened) = opened {
            ctx.apply(opened, host, tuple, s, now_ms, Some(sample));
        }
        if let Some(old) = replaced {
            ctx.let_peer_go(&old, tuple);
        }
        if (open || changed) && s.episode.is_some() {
            ctx.rediagnose(tuple, s, Some(sample));
            ctx.record(host, tuple, s, true);
        }
        // No agent covers the peer's address: a forwarding host may hold
        // the translation to one that does (asked once, when a peer would
        // have been).
        let translate = ask
            && s.peers.is_none()
            && !ctx.translators.is_empty()
            && s.nat.as_ref().is_none_or(|n| n.translate.is_none());
        if translate {
            self.ask_translators((host, tuple), now_ms);
        }
    }

    /// The agent's last word on a connection (its release, or a drained
    /// queue): its track ends in the same step, and an open episode ends
    /// with this sample as its last. Most last words are of suspects that
    /// never became episodes (a third of all samples in a busy fleet): one
    /// lookup.
    #[allow(clippy::too_many_arguments)]
    fn last_word(
        &mut self,
        host: HostId,
        tuple: Tuple,
        sample: &EndSample,
        mut packed: Option<Packed>,
        mono: Duration,
        now_ms: i64,
        taken_ms: i64,
    ) {
        // Nothing tracked: no suspect of it was heard, so nothing to end.
        let Some(mut e) = self.table.remove(&(host, tuple)) else {
            return;
        };
        let ctx = &mut self.ctx;
        let own = e.track.cookie() == sample.cookie;
        // A last word is kept only as an episode's closing sample.
        if own && e.suspect.episode.is_some() {
            e.suspect.latest = take(&mut packed, sample);
            e.suspect.latest_at_ms = taken_ms;
        }
        let s = &mut e.suspect;
        if sample.pos.sendq == 0 {
            // Drained: its stall ends (or, of another socket, was replaced).
            let reason = if own {
                EndReason::Drained
            } else {
                EndReason::Replaced
            };
            if let Some(closed) = e.track.end(reason, mono) {
                ctx.apply(closed, host, tuple, s, now_ms, Some(sample));
            }
        } else if own {
            // Its last step (a move closes the stall before it), then its end.
            let step = e.track.step(sample, mono, self.threshold);
            let closing = e.track.end(EndReason::Closed, mono);
            for event in [step.restart.and_then(|r| r.closed), step.opened, closing]
                .into_iter()
                .flatten()
            {
                ctx.apply(event, host, tuple, s, now_ms, Some(sample));
            }
        } else if let Some(closed) = e.track.end(EndReason::Replaced, mono) {
            // Another socket's last word: the tracked one was replaced; the
            // new one was never a suspect here, so nothing of it is kept.
            ctx.apply(closed, host, tuple, s, now_ms, Some(sample));
        }
        ctx.let_peer_go(s, tuple);
    }

    /// The end of a hold its agent measured (`span`), with the sample that
    /// found it over when there is one (a released socket; none for a
    /// socket gone): the suspect's track ends, and with it its episode, or
    /// an episode opens and ends at once for a hold that reached the
    /// threshold between polls. Either way the verdict is the one made
    /// from the samples taken while the queue was held: the sample after
    /// the end is stored as the episode's last, never diagnosed. Every
    /// span is counted, episode or not.
    fn held_end(
        &mut self,
        host: HostId,
        tuple: Tuple,
        cookie: u64,
        after: Option<(&EndSample, Option<Packed>)>,
        span: &HeldSpan,
        at: Clocks,
    ) {
        let ctx = &mut self.ctx;
        let entry = self
            .table
            .remove_if(&(host, tuple), |e| e.track.cookie() == cookie);
        let [opened, closed] = entry
            .as_ref()
            .map_or([None, None], |e| e.track.held_end(span, self.threshold));
        let episode = closed.is_some();
        // When the hold ended, on the collector's clock.
        let since_end = at.mono.saturating_sub(span.end_at());
        let end_ms = at.taken_ms.saturating_sub(millis_i64(since_end));
        let peer = match &entry {
            Some(e) => e.suspect.peers.first(),
            None => owners_of(&ctx.owners, host, tuple.flow().remote.ip()).first(),
        };
        tracing::debug!(
            host = %ctx.name(host),
            flow = %tuple.flow(),
            cookie,
            end = %span.end,
            held_ms = millis(span.held()),
            episode,
            tracked = entry.is_some(),
            "hold ended"
        );
        // A partition taken over recounts its stream's past: the minutes
        // its previous owner stored are not counted again.
        if end_ms >= ctx.held_from_ms {
            ctx.held
                .add(end_ms, host, peer, span.end, span.held(), episode);
        }
        let Some(mut e) = entry else { return };
        let s = &mut e.suspect;
        if let Some(opened) = opened {
            // `a` None: the suspect's latest sample, the last held one.
            ctx.apply(opened, host, tuple, s, end_ms, None);
            ctx.record(host, tuple, s, true);
        }
        if let (Some((sample, mut packed)), true) = (after, s.episode.is_some()) {
            s.latest = take(&mut packed, sample);
            s.latest_at_ms = at.taken_ms;
        }
        if let Some(closed) = closed {
            ctx.apply(closed, host, tuple, s, end_ms, None);
        }
        ctx.let_peer_go(s, tuple);
    }

    /// The socket `cookie` on `flow` went, as its agent said or by its
    /// silence: its episode ends, and its peer is let go.
    pub(super) fn close(
        &mut self,
        host: HostId,
        flow: Tuple,
        cookie: u64,
        mono: Duration,
        now_ms: i64,
    ) {
        let Some(mut e) = self
            .table
            .remove_if(&(host, flow), |e| e.track.cookie() == cookie)
        else {
            return;
        };
        if let Some(closed) = e.track.end(EndReason::Closed, mono) {
            self.ctx
                .apply(closed, host, flow, &mut e.suspect, now_ms, None);
        }
        self.ctx.let_peer_go(&e.suspect, flow);
    }
}
