//! The collector's responsiveness, seen from outside.
//!
//! [`run`]: the time from a stall's start to its stored episode. The
//! simulated agents of a few probe hosts report each stall they begin (its
//! flow, when its queue stopped moving and the poll that first saw it, by
//! the monotonic clock); one task per probe host asks the Query service's
//! ListEpisodes for that host's recent episodes every `every`, and the
//! first listing that holds a stall's flow marks it stored. An episode is
//! listed once the store thread committed it (queries travel the store's
//! queue behind the writes), so this is when an operator could see it; the
//! figure is late by at most `every` plus one call. Each listing also says
//! whether the episode's peer end is joined: with the simulated peer's
//! host as its B, and diagnosed peer_not_reading (which needs B's sample).
//!
//! [`matcher_delay`]: how far behind the matcher task runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tcpstall_agent::run::monotonic;
use tcpstall_common::FlowTuple;
use tcpstall_proto::convert::{flow_from_wire, flow_to_wire};
use tcpstall_proto::v1::{self, query_client::QueryClient};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use super::sim::{self, Nat, StallStart};

/// One stall of a probe host and what became of it.
#[derive(Debug, Clone)]
pub struct Stall {
    pub start: Duration,
    /// The poll that first saw the queue held.
    pub first_seen: Duration,
    /// Where its connection is translated.
    pub nat: Nat,
    /// When its episode was first listed, and with which diagnosis.
    pub stored: Option<(Duration, String)>,
    /// Whether its peer end was joined when the episode was first listed,
    /// and when it was last listed.
    pub joined_first: bool,
    pub joined_last: bool,
}

/// Whether an episode listed has its peer joined: the simulated peer's
/// host as its B, diagnosed peer_not_reading as only B's sample can make
/// it.
fn joined(e: &v1::Episode, peer: u32) -> bool {
    e.diagnosis == "peer_not_reading" && e.b_host == sim::host_name(peer)
}

/// What the probe saw.
#[derive(Debug, Default)]
pub struct Probed {
    pub stalls: Vec<Stall>,
    pub calls: u64,
    pub failed_calls: u64,
    pub rows: u64,
}

/// One host's recent episodes, listed at `at`.
struct Listing {
    host: u32,
    at: Duration,
    episodes: Option<Vec<v1::Episode>>,
}

/// Lists `host`'s recent episodes every `every` until `stop`.
async fn list_host(
    mut client: QueryClient<Channel>,
    host: u32,
    every: Duration,
    since: Duration,
    out: mpsc::Sender<Listing>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let req = v1::ListEpisodesRequest {
            since_s: since.as_secs().max(1),
            host: sim::host_name(host),
            diagnosis: String::new(),
            open_only: false,
            limit: 1000,
            page_token: String::new(),
        };
        let episodes = client
            .list_episodes(req)
            .await
            .ok()
            .map(|r| r.into_inner().episodes);
        let listing = Listing {
            host,
            at: monotonic(),
            episodes,
        };
        if out.send(listing).await.is_err() {
            return;
        }
    }
}

/// Runs until `stop`; returns every stall reported to it. Each probe host
/// is listed by its own task, so that one slow answer delays no other.
pub async fn run(
    channel: Channel,
    hosts: Vec<u32>,
    mut stalls: mpsc::Receiver<(u32, StallStart)>,
    every: Duration,
    since: Duration,
    mut stop: watch::Receiver<bool>,
) -> Probed {
    let (tx, mut listings) = mpsc::channel(1024);
    for &h in &hosts {
        tokio::spawn(list_host(
            QueryClient::new(channel.clone()),
            h,
            every,
            since,
            tx.clone(),
            stop.clone(),
        ));
    }
    drop(tx);
    let mut pending: HashMap<(u32, FlowTuple), (u32, Stall)> = HashMap::new();
    let mut out = Probed::default();
    loop {
        tokio::select! {
            // Stalls first: each is reported ~threshold before its episode.
            biased;
            _ = stop.changed() => break,
            Some((host, s)) = stalls.recv() => {
                let stall = Stall {
                    start: s.start,
                    first_seen: s.first_seen,
                    nat: s.nat,
                    stored: None,
                    joined_first: false,
                    joined_last: false,
                };
                pending.insert((host, s.flow), (s.peer, stall));
            }
            Some(l) = listings.recv() => {
                out.calls += 1;
                let Some(eps) = l.episodes else {
                    out.failed_calls += 1;
                    continue;
                };
                out.rows += eps.len() as u64;
                for e in eps {
                    let Ok(flow) = flow_from_wire(e.a_flow.as_ref()) else { continue };
                    if let Some((peer, s)) = pending.get_mut(&(l.host, flow)) {
                        s.joined_last = joined(&e, *peer);
                        if s.stored.is_none() {
                            s.joined_first = s.joined_last;
                            s.stored = Some((l.at, e.diagnosis));
                        }
                    }
                }
            }
        }
    }
    out.stalls = pending.into_values().map(|(_, s)| s).collect();
    out.stalls.sort_by_key(|s| s.start);
    out
}

/// How long the matcher takes to answer, asked every `every` until
/// `stop`: GetFlow goes through its command queue like the agents'
/// batches, so its round trip is the queue's delay plus one small command.
/// The flow asked about (TEST-NET addresses) belongs to no host, so it
/// starts no watch. Each call runs on its own, so that a stuck one does not
/// hold back the next. Returns (when asked, round trip), the round trip
/// `None` for a call still unanswered (or failed) at `stop`.
pub async fn matcher_delay(
    channel: Channel,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Vec<(Duration, Option<Duration>)> {
    let flow = FlowTuple::new(
        std::net::SocketAddr::from(([192, 0, 2, 1], 1)),
        std::net::SocketAddr::from(([192, 0, 2, 2], 2)),
    );
    // Two calls a second: room for every answer of a long run.
    let (tx, mut done) = mpsc::channel::<(usize, Duration)>(16_384);
    let mut asked: Vec<(Duration, Option<Duration>)> = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut calls = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some((i, d)) = done.recv() => asked[i].1 = Some(d),
            _ = tick.tick() => {
                let i = asked.len();
                asked.push((monotonic(), None));
                let mut client = QueryClient::new(channel.clone());
                let tx = tx.clone();
                calls.spawn(async move {
                    let t0 = Instant::now();
                    let req = v1::GetFlowRequest { flow: Some(flow_to_wire(flow)) };
                    if client.get_flow(req).await.is_ok() {
                        let _ = tx.try_send((i, t0.elapsed()));
                    }
                });
            }
        }
    }
    calls.abort_all();
    while let Ok((i, d)) = done.try_recv() {
        asked[i].1 = Some(d);
    }
    asked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_joined_when_the_episode_names_it_and_has_its_sample() {
        let ep = |diagnosis: &str, b_host: &str| v1::Episode {
            diagnosis: diagnosis.into(),
            b_host: b_host.into(),
            ..v1::Episode::default()
        };
        assert!(joined(&ep("peer_not_reading", &sim::host_name(3)), 3));
        assert!(!joined(&ep("peer_not_reading", &sim::host_name(4)), 3));
        assert!(!joined(&ep("half_open", &sim::host_name(3)), 3));
        assert!(!joined(&ep("undetermined", &sim::host_name(3)), 3));
        assert!(!joined(&ep("peer_unmonitored", ""), 3));
    }
}
