//! An episode's life: opened when a suspect's track says its queue was
//! held for the threshold, diagnosed from both ends (again whenever either
//! reports something new), its samples of both ends stored up to a cap,
//! and closed with how it ended. Every row goes to the store without
//! waiting.

use std::time::Duration;

use tcpstall_common::time::{millis, millis_i64};
use tcpstall_common::record::JoinedVia;
use tcpstall_common::{EndReason, EndSample, Side, Translation};

use super::detector::Event;
use super::diagnose::{diagnose, Evidence, Fact, Verdict};
use super::held;
use super::state::{a_sample, Ctx, OpenEpisode, PeerNow, Suspect};
use super::tuple::Tuple;
use crate::messages::HostId;
use crate::store::{EpisodeEnd, EpisodeUpdate, HeldRow, NewEpisode, StoredSample, VerdictBasis};

impl Ctx {
    pub(super) fn held_row(&self, k: &held::Key<HostId>, c: &held::Count) -> HeldRow {
        HeldRow {
            minute_ms: k.minute_ms,
            a_host: self.name(k.a).to_string(),
            b_host: k.b.map(|b| self.name(b).to_string()).unwrap_or_default(),
            end: k.end,
            le_ms: held::le_ms(usize::from(k.bucket)),
            count: c.count,
            episodes: c.episodes,
            total_ms: c.total_ms,
            max_ms: c.max_ms,
        }
    }

    /// Re-diagnoses the open episode of suspect `s` (on `flow`) from A's
    /// latest sample (`a` when the caller has it at hand) and its peer as
    /// known now; stores a change.
    pub(super) fn rediagnose(&mut self, flow: Tuple, s: &mut Suspect, a: Option<&EndSample>) {
        if s.episode.is_none() {
            return;
        }
        let Some(a) = a_sample(a, s) else { return };
        let a = a.as_ref();
        let peer = self.peer_of(s, flow);
        let verdict = diagnose(a, peer.as_peer());
        let b_host = self.b_host(s, flow);
        let via = s.nat.as_ref().and_then(|n| n.via);
        let Some(ep) = s.episode.as_mut() else {
            return;
        };
        // Most polls of a held queue find what the last one did, a little
        // later, its counters perhaps higher: nothing to store until it
        // ends (its duration is read from its start). A join through a
        // translation found since is stored at once.
        if ep.verdict.same_finding(&verdict) && ep.via == via {
            ep.unstored |= !ep.verdict.same_numbers(&verdict);
            ep.verdict = verdict;
            return;
        }
        if ep.verdict.diagnosis != verdict.diagnosis {
            tracing::info!(episode = ep.id, from = %ep.verdict.diagnosis, to = %verdict.diagnosis, "diagnosis changed");
            let open = &mut self.stats.open_by_diagnosis[ep.verdict.diagnosis.index()];
            *open = open.saturating_sub(1);
            self.stats.open_by_diagnosis[verdict.diagnosis.index()] += 1;
        }
        let update = self.episode_update(
            ep.id,
            &verdict,
            b_host,
            &peer,
            via,
            a.unchanged_ms,
            a.pos.sendq,
        );
        self.store.update_episode(update);
        ep.via = via;
        ep.verdict = verdict;
        ep.unstored = false;
    }

    /// The row of episode `id` as `verdict` finds it, B on `peer_host`,
    /// joined through `via`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn episode_update(
        &self,
        id: i64,
        verdict: &Verdict,
        peer_host: Option<HostId>,
        peer: &PeerNow,
        via: Option<(HostId, Translation)>,
        duration_ms: u64,
        stuck_bytes: u32,
    ) -> EpisodeUpdate {
        let via = self.joined_via(via);
        EpisodeUpdate {
            id,
            diagnosis: verdict.diagnosis.id().to_string(),
            summary: verdict.summary.clone(),
            evidence: evidence(&verdict.evidence),
            basis: basis(verdict),
            b_host: peer_host.map(|p| self.name(p).to_string()),
            peer_note: peer_note(peer),
            via,
            duration_ms,
            stuck_bytes,
        }
    }

    /// Stores this poll's samples of an open episode: A's latest when the
    /// caller has just observed it (`a_new`), and B's latest report (the
    /// last before its socket went, when it went) when it is newer than
    /// the last one stored; each side up to the per-episode cap.
    pub(super) fn record(&mut self, host: HostId, flow: Tuple, s: &mut Suspect, a_new: bool) {
        let b_flow = s.b_flow(flow);
        let Some(ep) = s.episode.as_mut() else { return };
        let mut batch = Vec::new();
        if a_new && s.latest_at_ms > ep.last_a_ms && ep.stored_a < self.max_samples {
            batch.push(StoredSample {
                side: Side::A,
                host: self.name(host).to_string(),
                at_ms: s.latest_at_ms,
                sample: s.latest.clone(),
            });
            ep.stored_a += 1;
            ep.last_a_ms = s.latest_at_ms;
        }
        let b = s
            .peers
            .hosts()
            .iter()
            .find_map(|&p| self.b_report(p, b_flow).map(|r| (p, r)));
        if let Some((peer, (at_ms, sample))) = b {
            if at_ms > ep.last_b_ms && ep.stored_b < self.max_samples {
                batch.push(StoredSample {
                    side: Side::B,
                    host: self.name(peer).to_string(),
                    at_ms,
                    sample: sample.clone(),
                });
                ep.stored_b += 1;
                ep.last_b_ms = at_ms;
            }
        }
        if !batch.is_empty() {
            self.store.add_samples(ep.id, batch);
        }
    }

    /// An event of `s`'s track, applied to it. `a`: the sample just
    /// observed of the event's connection, if any.
    pub(super) fn apply(
        &mut self,
        event: Event,
        host: HostId,
        flow: Tuple,
        s: &mut Suspect,
        now_ms: i64,
        a: Option<&EndSample>,
    ) {
        match event {
            Event::Opened { cookie, stuck_for } => {
                let Some(a) = a_sample(a.filter(|a| a.cookie == cookie), s) else {
                    return;
                };
                self.open_episode(host, cookie, flow, s, stuck_for, now_ms, &a);
            }
            Event::Closed {
                reason, stuck_for, ..
            } => self.close_episode(host, flow, s, reason, stuck_for, now_ms),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_episode(
        &mut self,
        host_id: HostId,
        cookie: u64,
        tuple: Tuple,
        s: &mut Suspect,
        stuck_for: Duration,
        now_ms: i64,
        a: &EndSample,
    ) {
        let host = self.name(host_id);
        let flow = tuple.flow();
        let peer = self.peer_of(s, tuple);
        let verdict = diagnose(a, peer.as_peer());
        let note = peer_note(&peer);
        let via = s.nat.as_ref().and_then(|n| n.via);
        let mut started_at_ms = now_ms.saturating_sub(millis_i64(stuck_for));
        let adopted = if self.ids_of_identity {
            self.adopted.remove(&(host.clone(), flow, cookie))
        } else {
            None
        };
        let id = if let Some(a) = adopted {
            // Stored by the partition's previous owner: the same episode.
            started_at_ms = a.started_at_ms;
            a.id
        } else if self.ids_of_identity {
            // The same stall opens under the same id on whichever node
            // judges it, and again when a partition is replayed: its flow
            // and its start, to the second (the start is the reporting
            // agent's count of the hold, put on the collector's clock by
            // its stream's offset, which moves by milliseconds at most).
            crate::store::episode_id_of(flow.key(), started_at_ms.div_euclid(1000) * 1000)
        } else {
            let id = self.next_episode;
            self.next_episode += 1;
            id
        };
        if !self.replaying {
            self.stats.episodes_opened += 1;
        }
        tracing::info!(episode = id, host = %host, %flow, diagnosis = %verdict.diagnosis, stuck_ms = millis(stuck_for), "episode opened");
        self.store.open_episode(NewEpisode {
            id,
            diagnosis: verdict.diagnosis.id().to_string(),
            summary: verdict.summary.clone(),
            evidence: evidence(&verdict.evidence),
            basis: basis(&verdict),
            started_at_ms,
            duration_ms: millis(stuck_for),
            stuck_bytes: a.pos.sendq,
            a_host: host.to_string(),
            a_netns: a.netns.clone(),
            a_flow: flow,
            a_cookie: cookie,
            b_host: self.b_host(s, tuple).map(|p| self.name(p).to_string()),
            peer_note: note,
            via: self.joined_via(via),
        });
        // The first sample of the stall, then this poll's (record).
        let mut last_a_ms = i64::MIN;
        if let Some(first) = s.first.take() {
            last_a_ms = s.first_at_ms;
            self.store.add_samples(
                id,
                vec![StoredSample {
                    side: Side::A,
                    host: host.to_string(),
                    at_ms: s.first_at_ms,
                    sample: first,
                }],
            );
        }
        // Whichever of the peer's hosts reports, the episode hears of it.
        self.mark_episode_of(s, tuple, Some(host_id));
        self.open_episodes += 1;
        self.stats.open_by_diagnosis[verdict.diagnosis.index()] += 1;
        if !self.replaying {
            self.stats.opened_by_diagnosis[verdict.diagnosis.index()] += 1;
        }
        s.episode = Some(Box::new(OpenEpisode {
            id,
            verdict,
            unstored: false,
            stored_a: 1,
            stored_b: 0,
            last_a_ms,
            last_b_ms: i64::MIN,
            via,
        }));
    }

    /// Ends `s`'s open episode, its latest sample the last stored.
    pub(super) fn close_episode(
        &mut self,
        host_id: HostId,
        flow: Tuple,
        s: &mut Suspect,
        reason: EndReason,
        stuck_for: Duration,
        now_ms: i64,
    ) {
        let Some(ep) = s.episode.take() else { return };
        if ep.unstored {
            // Its counters as they ended.
            let peer = self.peer_of(s, flow);
            let v = &ep.verdict;
            let stuck_bytes = v
                .evidence
                .fact(Fact::ASendq)
                .map_or(0, |b| u32::try_from(b).unwrap_or(u32::MAX));
            let b_host = self.b_host(s, flow);
            let via = s.nat.as_ref().and_then(|n| n.via);
            let update = self.episode_update(
                ep.id,
                v,
                b_host,
                &peer,
                via,
                millis(stuck_for),
                stuck_bytes,
            );
            self.store.update_episode(update);
        }
        self.open_episodes = self.open_episodes.saturating_sub(1);
        let open = &mut self.stats.open_by_diagnosis[ep.verdict.diagnosis.index()];
        *open = open.saturating_sub(1);
        self.mark_episode_of(s, flow, None);
        let host = self.name(host_id);
        tracing::info!(episode = ep.id, host = %host, reason = reason.id(), "episode closed");
        // The last word on A, unless it is stored already (a socket gone
        // leaves its last held sample as its last word).
        if s.latest_at_ms > ep.last_a_ms {
            self.store.add_samples(
                ep.id,
                vec![StoredSample {
                    side: Side::A,
                    host: host.to_string(),
                    at_ms: s.latest_at_ms,
                    sample: s.latest.clone(),
                }],
            );
        }
        self.store.close_episode(
            ep.id,
            EpisodeEnd {
                ended_at_ms: now_ms,
                end_reason: reason.id().to_string(),
                duration_ms: millis(stuck_for),
            },
        );
    }
}

impl Ctx {
    /// The translation that joined an episode's ends, named for its row.
    fn joined_via(&self, via: Option<(HostId, Translation)>) -> Option<JoinedVia> {
        via.map(|(host, translation)| JoinedVia {
            host: self.name(host).to_string(),
            translation,
        })
    }

    /// Tells the watches of `s`'s peer (on `flow`) which host's open
    /// episode they are the peer of (`None`: no longer).
    pub(super) fn mark_episode_of(&mut self, s: &Suspect, flow: Tuple, host: Option<HostId>) {
        let b_flow = s.b_flow(flow);
        for &peer in s.peers.hosts() {
            if let Some(w) = self.watched.get_mut(&(peer, b_flow)) {
                w.episode_of = host;
            }
        }
    }
}

fn evidence(ev: &Evidence) -> std::collections::BTreeMap<String, i64> {
    ev.iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn basis(verdict: &Verdict) -> VerdictBasis {
    let names = |v: Vec<&str>| v.into_iter().map(String::from).collect();
    VerdictBasis {
        rested_on: names(verdict.basis.rested_on()),
        missing: names(verdict.basis.missing()),
    }
}

fn peer_note(peer: &PeerNow) -> Option<String> {
    match peer {
        PeerNow::Seen(_) => None,
        PeerNow::NoSocket(host) => Some(format!("{host} has no such socket")),
        PeerNow::Pending(host) => Some(format!("waiting for {host} to report")),
        PeerNow::Unmonitored(ip) => Some(format!("no agent covers {ip}")),
        PeerNow::Unjoined(why) => Some(why.clone()),
    }
}
