//! Host names and their numbers, and who holds each name now.
//!
//! A host keeps its number for the collector's life, whichever stream it
//! speaks on. A name is held by one live session at a time, of one
//! machine: [`decide`] says whether a Hello may take it (the same machine
//! reconnecting replaces its old session; another machine is refused with
//! [`Taken`]), and [`Hosts::claim`] applies that to this collector's
//! sessions. [`decide`] is pure (no clock, no runtime, no gRPC) so that
//! fleet mode can make the same decision against a shared registry.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tcpstall_common::time::rfc3339;
use tcpstall_common::MachineId;

use crate::messages::HostId;

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A live session that holds a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub session: u64,
    /// `None`: an agent that said no machine id.
    pub machine: Option<MachineId>,
    /// The agent's address as the collector saw it, when known.
    pub peer: Option<SocketAddr>,
    /// When its Hello was taken, collector wall time (Unix ms).
    pub since_ms: i64,
}

/// Whose Hello it was that took a name: what [`decide`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// Nobody held it.
    Free,
    /// The same machine held it: its old session is replaced.
    Reconnected { old: u64 },
    /// It was held, and one side said no machine id, so nothing tells the
    /// machines apart: replaced, as before machine ids (see
    /// [`Claimed::unidentified`]).
    Unidentified { old: u64 },
}

impl Claimed {
    /// The session the claim replaces, if any.
    pub fn replaces(self) -> Option<u64> {
        match self {
            Claimed::Free => None,
            Claimed::Reconnected { old } | Claimed::Unidentified { old } => Some(old),
        }
    }
}

/// A claim refused: another machine's live session holds the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Taken {
    pub host: String,
    pub holder: Holder,
    /// The refused machine and where its agent is.
    pub machine: MachineId,
    pub peer: Option<SocketAddr>,
    /// When it was refused (collector wall time, Unix ms).
    pub at_ms: i64,
}

fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string())
}

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held_s = (self.at_ms - self.holder.since_ms).max(0) / 1000;
        write!(
            f,
            "host name {:?} is held by machine {} (agent at {}, connected since {}, {}s ago); \
             this agent is machine {} (at {}): two machines cannot report as one host. \
             Give each host its own name (the agent's --host, `host` in its file)",
            self.host,
            self.holder
                .machine
                .as_ref()
                .map_or("(none)", MachineId::as_str),
            peer_text(self.holder.peer),
            rfc3339(self.holder.since_ms),
            held_s,
            self.machine,
            peer_text(self.peer),
        )
    }
}

/// Whether a Hello from `machine` may take a name that `held` holds
/// (`None`: no live session holds it): the same machine replaces its old
/// session, another machine is refused, and where either said no machine
/// id the newer replaces the older, as before machine ids.
pub fn decide(
    host: &str,
    held: Option<&Holder>,
    machine: Option<&MachineId>,
    peer: Option<SocketAddr>,
    at_ms: i64,
) -> Result<Claimed, Box<Taken>> {
    let Some(holder) = held else {
        return Ok(Claimed::Free);
    };
    let old = holder.session;
    match (holder.machine.as_ref(), machine) {
        (Some(a), Some(b)) if a == b => Ok(Claimed::Reconnected { old }),
        (Some(_), Some(b)) => Err(Box::new(Taken {
            host: host.to_string(),
            holder: holder.clone(),
            machine: b.clone(),
            peer,
            at_ms,
        })),
        _ => Ok(Claimed::Unidentified { old }),
    }
}

/// Grows by one entry per distinct host name ever greeted (bounded in
/// practice by the fleet, and by the hosts a CA vouches for once streams
/// are authenticated).
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    names: Vec<Arc<str>>,
    ids: Map<Arc<str>, HostId>,
    /// By host number: the live session holding the name.
    holders: Vec<Option<Holder>>,
}

impl Hosts {
    /// The number of `name`, given now if it has none.
    pub(crate) fn id(&mut self, name: &str) -> HostId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = HostId(u32::try_from(self.names.len()).unwrap_or(u32::MAX));
        let name: Arc<str> = Arc::from(name);
        self.names.push(name.clone());
        self.holders.push(None);
        self.ids.insert(name, id);
        id
    }

    /// The name of `id`, if it has one.
    pub(crate) fn get(&self, id: HostId) -> Option<Arc<str>> {
        self.names.get(id.0 as usize).cloned()
    }

    pub(crate) fn name(&self, id: HostId) -> Arc<str> {
        self.names
            .get(id.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }

    /// The live session holding `name`, if any.
    pub(super) fn holder(&self, name: &str) -> Option<&Holder> {
        let id = self.ids.get(name)?;
        self.holders.get(id.0 as usize)?.as_ref()
    }

    /// Gives `name` to `claimant` if [`decide`] allows it: the host's
    /// number and what the claim replaced; the name's holder unchanged
    /// when refused.
    pub(super) fn claim(
        &mut self,
        name: &str,
        claimant: Holder,
    ) -> Result<(HostId, Claimed), Box<Taken>> {
        let claimed = decide(
            name,
            self.holder(name),
            claimant.machine.as_ref(),
            claimant.peer,
            claimant.since_ms,
        )?;
        let id = self.id(name);
        if let Some(slot) = self.holders.get_mut(id.0 as usize) {
            *slot = Some(claimant);
        }
        Ok((id, claimed))
    }

    /// `session` let go of `host` (its stream ended); a newer session that
    /// replaced it keeps the name.
    pub(super) fn release(&mut self, host: HostId, session: u64) {
        if let Some(slot) = self.holders.get_mut(host.0 as usize) {
            if slot.as_ref().is_some_and(|h| h.session == session) {
                *slot = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> MachineId {
        MachineId::new(s).expect("machine id")
    }

    fn holder(session: u64, machine: Option<&str>) -> Holder {
        Holder {
            session,
            machine: machine.map(m),
            peer: Some(SocketAddr::from(([198, 18, 0, 7], 40_001))),
            since_ms: 1_796_635_200_000,
        }
    }

    #[test]
    fn a_host_keeps_its_number() {
        let mut h = Hosts::default();
        let a = h.id("alpha");
        let b = h.id("beta");
        assert_ne!(a, b);
        assert_eq!(h.id("alpha"), a);
        assert_eq!(&*h.name(b), "beta");
        assert_eq!(&*h.name(HostId(99)), "?");
    }

    #[test]
    fn a_free_name_is_taken_by_anyone() {
        let at = 1_796_635_260_000;
        assert_eq!(
            decide("db-7", None, Some(&m("aaaa")), None, at),
            Ok(Claimed::Free)
        );
        assert_eq!(decide("db-7", None, None, None, at), Ok(Claimed::Free));
    }

    #[test]
    fn the_same_machine_replaces_its_old_session() {
        let held = holder(3, Some("aaaa"));
        let got = decide("db-7", Some(&held), Some(&m("aaaa")), None, 0);
        assert_eq!(got, Ok(Claimed::Reconnected { old: 3 }));
        assert_eq!(got.ok().and_then(Claimed::replaces), Some(3));
    }

    #[test]
    fn another_machine_is_refused_and_both_are_named() {
        let held = holder(3, Some("aaaa"));
        let peer = Some(SocketAddr::from(([198, 18, 0, 9], 50_002)));
        let at = held.since_ms + 61_500;
        let taken = decide("localhost.localdomain", Some(&held), Some(&m("bbbb")), peer, at)
            .expect_err("refused");
        assert_eq!(taken.holder, held, "the holder as it is");
        assert_eq!(taken.machine, m("bbbb"));
        let text = taken.to_string();
        for part in [
            "\"localhost.localdomain\"",
            "held by machine aaaa",
            "agent at 198.18.0.7:40001",
            "since 2026-12-07T09:20:00Z, 61s ago",
            "this agent is machine bbbb (at 198.18.0.9:50002)",
            "--host",
        ] {
            assert!(text.contains(part), "{part:?} in {text}");
        }
    }

    #[test]
    fn without_a_machine_id_on_either_side_the_newer_replaces_as_before() {
        let old = holder(3, None);
        assert_eq!(
            decide("db-7", Some(&old), Some(&m("bbbb")), None, 0),
            Ok(Claimed::Unidentified { old: 3 })
        );
        let identified = holder(4, Some("aaaa"));
        assert_eq!(
            decide("db-7", Some(&identified), None, None, 0),
            Ok(Claimed::Unidentified { old: 4 })
        );
        assert_eq!(
            decide("db-7", Some(&old), None, None, 0),
            Ok(Claimed::Unidentified { old: 3 })
        );
    }

    #[test]
    fn claims_hold_names_until_their_session_lets_go() {
        let mut h = Hosts::default();
        let (id, c) = h.claim("db-7", holder(1, Some("aaaa"))).expect("free");
        assert_eq!(c, Claimed::Free);
        assert_eq!(h.holder("db-7").map(|x| x.session), Some(1));
        // Another machine: refused, the holder untouched.
        let err = h.claim("db-7", holder(2, Some("bbbb"))).expect_err("taken");
        assert_eq!(err.holder.session, 1);
        assert_eq!(h.holder("db-7").map(|x| x.session), Some(1));
        // The same machine again: replaces session 1, same number.
        let (again, c) = h.claim("db-7", holder(3, Some("aaaa"))).expect("same");
        assert_eq!((again, c), (id, Claimed::Reconnected { old: 1 }));
        // The replaced session's end does not free the name...
        h.release(id, 1);
        assert_eq!(h.holder("db-7").map(|x| x.session), Some(3));
        // ...its holder's end does, and then another machine may take it.
        h.release(id, 3);
        assert_eq!(h.holder("db-7"), None);
        let (_, c) = h.claim("db-7", holder(4, Some("bbbb"))).expect("free again");
        assert_eq!(c, Claimed::Free);
    }
}
