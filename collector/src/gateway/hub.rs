//! The gateway's task: the sessions of the agents streaming now, the
//! registry of their hosts, and the watch requests the matcher asks of a
//! host, handed to the stream of the agent that holds it.
//!
//! It tells the matcher of hosts coming and going ([`ToMatcher::HostUp`],
//! [`ToMatcher::HostDown`]) before it answers the stream that said hello,
//! so that a stream's first batch never reaches the matcher ahead of its
//! host. Batches themselves go from the streams to the matcher directly.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use tcpstall_common::{Clock, HostHello, ToAgent};
use tokio::sync::{mpsc, oneshot};

use super::registry::{decide, Holder, Hosts, Taken};
use crate::messages::{HostId, ToGateway, ToMatcher};
use crate::store::{HostRecord, SharedStore};

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What the agents' streams (and this process's metrics and config) tell
/// the gateway.
#[derive(Debug)]
pub enum Input {
    /// A stream's Hello, checked; answered with the host's number, or why
    /// the collector will not take it.
    Hello {
        session: u64,
        /// Boxed: a Hello is once per stream, the other inputs many.
        hello: Box<HostHello>,
        /// The agent's address, when the transport knows it.
        peer: Option<SocketAddr>,
        /// Where the stream takes requests for its agent.
        tx: mpsc::Sender<ToAgent>,
        reply: HelloReply,
    },
    /// The agent's count of batches it had to drop.
    Heartbeat { session: u64, dropped_batches: u64 },
    /// The stream ended.
    Gone { session: u64 },
    Stats {
        reply: oneshot::Sender<GatewayStats>,
    },
    /// The agents streaming to this process now.
    Agents {
        reply: oneshot::Sender<Vec<AgentNow>>,
    },
    /// A reloaded config's limit, from now on.
    Reload { max_agents: usize },
}

/// Where a Hello is answered: the host's number, or why not.
pub type HelloReply = oneshot::Sender<Result<HostId, Refusal>>;

/// Why the gateway will not take a Hello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `max_agents` streams are open.
    #[error("collector is full: {max_agents} agents connected")]
    Full { max_agents: usize },
    /// Another machine's live session holds the host name.
    #[error(transparent)]
    Taken(Box<Taken>),
}

/// The gateway's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Agents streaming now.
    pub agents: usize,
    /// Batches the agents say they dropped (their queues were full).
    pub agent_dropped_batches: u64,
    /// Watch and unwatch requests dropped because an agent's outbound
    /// queue was full (a dropped watch is asked again).
    pub requests_dropped: u64,
    /// Hellos refused because another machine's live session holds the
    /// host name.
    pub hellos_refused_name_taken: u64,
    /// Hellos refused because `max_agents` streams were open.
    pub hellos_refused_full: u64,
    /// Hellos that said no machine id (agents that predate it, or found
    /// none): their host name is not guarded against another machine.
    pub hellos_without_machine_id: u64,
}

/// An agent streaming now, as the web page's Hosts shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentNow {
    pub host: String,
    pub probes: tcpstall_common::ProbeSet,
    pub interval: std::time::Duration,
    /// Batches it says it dropped since it started (its queue was full).
    pub dropped_batches: u64,
}

#[derive(Debug)]
struct Session {
    id: u64,
    hello: HostHello,
    tx: mpsc::Sender<ToAgent>,
    dropped_batches: u64,
}

/// Fleet mode: who holds a host name on another node (the fleet's
/// registry), if anyone does.
pub struct Elsewhere(pub Box<HeldBy>);

/// Who holds a name: `None` when nobody does.
pub type HeldBy = dyn Fn(&str) -> Option<Holder> + Send + Sync;

impl std::fmt::Debug for Elsewhere {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Elsewhere(..)")
    }
}

/// The gateway's state; its methods run on its task.
#[derive(Debug)]
pub struct Gateway {
    hosts: Hosts,
    sessions: Map<HostId, Session>,
    /// Session id -> host, for the inputs that name a session.
    session_hosts: Map<u64, HostId>,
    store: SharedStore,
    max_agents: usize,
    requests_dropped: u64,
    refused_name_taken: u64,
    refused_full: u64,
    without_machine_id: u64,
    /// Hosts already warned of for saying no machine id (one warning per
    /// host for the collector's life).
    warned_unidentified: HashSet<HostId, foldhash::fast::RandomState>,
    /// Fleet mode: who holds a name on another node.
    elsewhere: Option<Elsewhere>,
    /// For the matcher, in order: sent (waiting for room) before any reply.
    out: Vec<ToMatcher>,
    replies: Vec<(HelloReply, Result<HostId, Refusal>)>,
}

impl Gateway {
    pub fn new(store: SharedStore, max_agents: usize) -> Gateway {
        Gateway {
            hosts: Hosts::default(),
            sessions: Map::default(),
            session_hosts: Map::default(),
            store,
            max_agents,
            requests_dropped: 0,
            refused_name_taken: 0,
            refused_full: 0,
            without_machine_id: 0,
            warned_unidentified: HashSet::default(),
            elsewhere: None,
            out: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Fleet mode: `held(name)` says who holds a host name on another
    /// node, if anyone does; a Hello is decided against it too.
    pub fn with_elsewhere(mut self, held: Elsewhere) -> Gateway {
        self.elsewhere = Some(held);
        self
    }

    /// Handles one input at collector wall time `now_ms`; what it has for
    /// the matcher and the streams waits in [`Gateway::deliver`].
    pub fn handle(&mut self, input: Input, now_ms: i64) {
        match input {
            Input::Hello {
                session,
                hello,
                peer,
                tx,
                reply,
            } => {
                let res = self.hello(session, *hello, peer, tx, now_ms);
                self.replies.push((reply, res));
            }
            Input::Heartbeat {
                session,
                dropped_batches,
            } => {
                if let Some(s) = self
                    .session_hosts
                    .get(&session)
                    .and_then(|h| self.sessions.get_mut(h))
                {
                    s.dropped_batches = dropped_batches;
                }
            }
            Input::Gone { session } => {
                if let Some(host) = self.session_hosts.get(&session).copied() {
                    self.gone(host, now_ms);
                }
            }
            Input::Agents { reply } => {
                let _ = reply.send(
                    self.sessions
                        .values()
                        .map(|s| AgentNow {
                            host: s.hello.host.clone(),
                            probes: s.hello.probes,
                            interval: s.hello.interval,
                            dropped_batches: s.dropped_batches,
                        })
                        .collect(),
                );
            }
            Input::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Input::Reload { max_agents } => self.max_agents = max_agents,
        }
    }

    /// Hands a request of the matcher's to the stream of the host's agent;
    /// a watch that cannot be (no stream, or its queue full) goes back to
    /// the matcher as [`ToMatcher::Unsent`], due again at once.
    pub fn request(&mut self, r: ToGateway) {
        let (host, msg) = match r {
            ToGateway::Watch { host, flow } => (host, ToAgent::Watch(flow)),
            ToGateway::Unwatch { host, flow } => (host, ToAgent::Unwatch(flow)),
            // Unanswered, a translation request is given up by the
            // matcher's patience: nothing to say back.
            ToGateway::Translate { host, flow } => (host, ToAgent::Translate(flow)),
        };
        let Some(s) = self.sessions.get(&host) else {
            if let ToAgent::Watch(flow) = msg {
                self.out.push(ToMatcher::Unsent { host, flow });
            }
            return;
        };
        match s.tx.try_send(msg) {
            Ok(()) => return,
            // Its stream is ending (its Gone is on the way): nothing to
            // count; the watch is asked again when the host is back.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                if let ToAgent::Watch(flow) = msg {
                    self.out.push(ToMatcher::Unsent { host, flow });
                }
                return;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {}
        }
        self.requests_dropped += 1;
        let n = self.requests_dropped;
        if n.is_power_of_two() {
            tracing::warn!(
                host = %s.hello.host,
                dropped = n,
                "agent's outbound queue is full; request dropped (a watch is asked again at the suspect's next report)"
            );
        }
        if let ToAgent::Watch(flow) = msg {
            self.out.push(ToMatcher::Unsent { host, flow });
        }
    }

    /// What waits for the matcher, then the answers to hellos: in this
    /// order, so that a host is up at the matcher before its stream sends
    /// a batch.
    pub fn pending(&mut self) -> Pending<'_> {
        Pending {
            to_matcher: self.out.drain(..),
            replies: self.replies.drain(..),
        }
    }

    /// Sends what [`Gateway::pending`] holds: to the matcher waiting for
    /// room (its queue is bounded), then the replies. `Err` when the
    /// matcher is gone.
    pub async fn deliver(&mut self, matcher: &mpsc::Sender<ToMatcher>) -> Result<(), ()> {
        let Pending {
            to_matcher,
            replies,
        } = self.pending();
        for m in to_matcher {
            matcher.send(m).await.map_err(|_| ())?;
        }
        for (reply, res) in replies {
            let _ = reply.send(res);
        }
        Ok(())
    }

    pub fn stats(&self) -> GatewayStats {
        GatewayStats {
            agents: self.sessions.len(),
            agent_dropped_batches: self.sessions.values().map(|s| s.dropped_batches).sum(),
            requests_dropped: self.requests_dropped,
            hellos_refused_name_taken: self.refused_name_taken,
            hellos_refused_full: self.refused_full,
            hellos_without_machine_id: self.without_machine_id,
        }
    }

    fn hello(
        &mut self,
        session: u64,
        hello: HostHello,
        peer: Option<SocketAddr>,
        tx: mpsc::Sender<ToAgent>,
        now_ms: i64,
    ) -> Result<HostId, Refusal> {
        if self.hosts.holder(&hello.host).is_none() && self.sessions.len() >= self.max_agents {
            self.refused_full += 1;
            return Err(Refusal::Full {
                max_agents: self.max_agents,
            });
        }
        let claimant = Holder {
            session,
            machine: hello.machine_id.clone(),
            peer,
            since_ms: now_ms,
        };
        // In fleet mode the name may be held on another node: the same
        // decision against the fleet's registry first.
        let elsewhere = self
            .elsewhere
            .as_ref()
            .and_then(|held| (held.0)(&hello.host))
            .map(|holder| decide(&hello.host, Some(&holder), hello.machine_id.as_ref(), peer, now_ms));
        let claim = match elsewhere {
            Some(Err(taken)) => Err(taken),
            _ => self.hosts.claim(&hello.host, claimant.clone()),
        };
        let (host, claimed) = match claim {
            Ok(claimed) => claimed,
            Err(taken) => {
                self.refused_name_taken += 1;
                tracing::warn!(
                    host = %hello.host,
                    session,
                    machine = %taken.machine,
                    ?peer,
                    holder_session = taken.holder.session,
                    "agent refused: {taken}"
                );
                return Err(Refusal::Taken(taken));
            }
        };
        if hello.machine_id.is_none() {
            self.without_machine_id += 1;
            if self.warned_unidentified.insert(host) {
                tracing::warn!(
                    host = %hello.host,
                    ?peer,
                    "agent says no machine id (an older agent, or none found): another machine \
                     reporting this host name would replace it unnoticed; upgrade the agent or \
                     give it --machine-id"
                );
            }
        }
        if let Some(old) = claimed.replaces() {
            tracing::warn!(host = %hello.host, old, new = session, machine = %hello.machine_id.as_ref().map_or("none", |m| m.as_str()), "host reconnected; its previous stream is replaced");
            self.gone(host, now_ms);
        }
        self.store.host_seen(HostRecord {
            host: hello.host.clone(),
            kernel: hello.kernel.clone(),
            agent_version: hello.agent_version.clone(),
            boot_id: hello.boot_id.clone(),
            at_ms: now_ms,
        });
        tracing::info!(host = %hello.host, machine = %hello.machine_id.as_ref().map_or("none", |m| m.as_str()), ?peer, kernel = %hello.kernel, addresses = hello.address_count(), "agent connected");
        self.out.push(ToMatcher::HostUp {
            host,
            session,
            name: hello.host.clone(),
            addresses: hello.namespaces.clone(),
            interval: hello.interval,
            answers_lookups: hello.answers_lookups,
            forwards: hello.forwards,
            holder: claimant,
        });
        self.session_hosts.insert(session, host);
        self.sessions.insert(
            host,
            Session {
                id: session,
                hello,
                tx,
                dropped_batches: 0,
            },
        );
        Ok(host)
    }

    fn gone(&mut self, host: HostId, now_ms: i64) {
        let Some(session) = self.sessions.remove(&host) else {
            return;
        };
        let name = self.hosts.name(host);
        tracing::info!(host = %name, session = session.id, "agent gone");
        self.session_hosts.remove(&session.id);
        self.hosts.release(host, session.id);
        self.store.host_gone(&name, now_ms);
        self.out.push(ToMatcher::HostDown { host });
    }
}

/// What the gateway has to send, in order (see [`Gateway::pending`]).
#[derive(Debug)]
pub struct Pending<'a> {
    pub to_matcher: std::vec::Drain<'a, ToMatcher>,
    pub replies: std::vec::Drain<'a, (HelloReply, Result<HostId, Refusal>)>,
}

/// Runs the gateway until `stop` fires or its inputs are gone.
pub async fn run(
    mut gateway: Gateway,
    mut inbox: mpsc::Receiver<Input>,
    mut requests: mpsc::Receiver<ToGateway>,
    matcher: mpsc::Sender<ToMatcher>,
    mut stop: oneshot::Receiver<()>,
    clock: Clock,
) {
    loop {
        tokio::select! {
            input = inbox.recv() => match input {
                Some(input) => gateway.handle(input, clock.now_ms()),
                None => break,
            },
            Some(r) = requests.recv() => gateway.request(r),
            _ = &mut stop => break,
        }
        if gateway.deliver(&matcher).await.is_err() {
            break;
        }
    }
}
