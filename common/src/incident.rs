//! Episodes grouped into incidents: people think "db-7 stopped reading
//! from 12 clients at 10:02", not in twelve 4-tuples.
//!
//! An incident is the episodes of one diagnosis that share a host on the
//! same side — the stuck sender's (A) or the peer's (B) — and overlap in
//! time. A host shared by many pairs is the incident's hub; each episode
//! belongs to one incident, the one of its largest hub (ties go to the side
//! the diagnosis blames), so that a client stuck on two servers at once
//! does not chain the servers' incidents into one. An episode that shares
//! nothing is an incident of its own.
//!
//! An incident is named by its first episode (the earliest start, then
//! the lowest id): its id stays while episodes join it later. Incidents are
//! computed over the episodes given: a list cut short by a limit or a time
//! filter may split one.

use std::collections::{BTreeMap, BTreeSet};

use crate::Diagnosis;

/// One episode, as far as grouping needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    pub id: i64,
    pub diagnosis: &'a str,
    /// The stuck sender's host.
    pub a_host: &'a str,
    /// The peer's host; `None` when no agent covers it.
    pub b_host: Option<&'a str>,
    pub start_ms: i64,
    /// Its end; while it is open, now (as the caller sees it). An open
    /// episode overlaps everything after its start, whatever this says.
    pub end_ms: i64,
    pub open: bool,
    pub stuck: u64,
}

impl Member<'_> {
    /// An episode's `end_ms`: its start and how long it lasted; while it
    /// is open, at least `now_ms` (its stored length is as of its last
    /// update).
    pub fn end_of(start_ms: i64, lasted_ms: u64, open: bool, now_ms: i64) -> i64 {
        let end = start_ms.saturating_add(i64::try_from(lasted_ms).unwrap_or(i64::MAX));
        if open {
            end.max(now_ms)
        } else {
            end
        }
    }
}

/// Which side of its pairs an incident's host is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The peer (B) of every pair: the host its senders are stuck on.
    Peer,
    /// The stuck sender (A) of every pair.
    Sender,
}

impl Role {
    /// The side a diagnosis blames: where to look first.
    pub fn blamed(diagnosis: &str) -> Role {
        match Diagnosis::from_id(diagnosis) {
            Some(
                Diagnosis::PeerNotReading
                | Diagnosis::HalfOpen
                | Diagnosis::WindowUpdateLost
                | Diagnosis::AckLost,
            ) => Role::Peer,
            _ => Role::Sender,
        }
    }
}

/// Episodes of one diagnosis around one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// Its first episode's id.
    pub id: i64,
    pub diagnosis: String,
    pub host: String,
    pub role: Role,
    /// Its episodes, as indices into the members given, earliest first.
    pub members: Vec<usize>,
    /// Distinct hosts on the other side (a peer no agent covers counts
    /// once per pair: nothing says two are one).
    pub others: usize,
    /// That host when there is only one, and known.
    pub other: Option<String>,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Any of its episodes still open.
    pub open: bool,
    /// Bytes stuck over its episodes.
    pub stuck: u64,
}

/// A host on one side of one diagnosis's pairs: (diagnosis, side, host).
type Hub<'a> = (&'a str, Role, &'a str);

/// Groups `members` into incidents: open ones first, then the oldest
/// first, then the most bytes stuck.
pub fn group(members: &[Member<'_>]) -> Vec<Incident> {
    let mut hubs: BTreeMap<Hub<'_>, Vec<usize>> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        hubs.entry((m.diagnosis, Role::Sender, m.a_host))
            .or_default()
            .push(i);
        if let Some(b) = m.b_host {
            hubs.entry((m.diagnosis, Role::Peer, b))
                .or_default()
                .push(i);
        }
    }
    let mut order: Vec<(Hub<'_>, Vec<usize>)> = hubs.into_iter().collect();
    let rank = |k: &Hub<'_>| u8::from(Role::blamed(k.0) != k.1);
    order.sort_by(|(ka, a), (kb, b)| {
        b.len()
            .cmp(&a.len())
            .then(rank(ka).cmp(&rank(kb)))
            .then(ka.cmp(kb))
    });
    let mut taken = vec![false; members.len()];
    let mut out = Vec::new();
    for ((diagnosis, role, host), hub) in order {
        let mut free: Vec<usize> = hub.into_iter().filter(|&i| !taken[i]).collect();
        if free.len() < 2 {
            continue;
        }
        free.sort_by_key(|&i| (members[i].start_ms, members[i].id));
        for run in overlapping(members, &free) {
            if run.len() < 2 {
                continue;
            }
            for &i in &run {
                taken[i] = true;
            }
            out.push(incident(members, diagnosis, role, host, run));
        }
    }
    for (i, m) in members.iter().enumerate() {
        if taken[i] {
            continue;
        }
        let (role, host) = match (Role::blamed(m.diagnosis), m.b_host) {
            (Role::Peer, Some(b)) => (Role::Peer, b),
            _ => (Role::Sender, m.a_host),
        };
        out.push(incident(members, m.diagnosis, role, host, vec![i]));
    }
    out.sort_by(|a, b| {
        b.open
            .cmp(&a.open)
            .then(a.start_ms.cmp(&b.start_ms))
            .then(b.stuck.cmp(&a.stuck))
            .then(a.id.cmp(&b.id))
    });
    out
}

/// `sorted` (by start) cut into runs whose spans overlap, each episode
/// starting before the run so far has ended.
fn overlapping(members: &[Member<'_>], sorted: &[usize]) -> Vec<Vec<usize>> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut until = i64::MIN;
    for &i in sorted {
        let m = &members[i];
        // Still going: it reaches past anything that starts later.
        let end = if m.open { i64::MAX } else { m.end_ms };
        match runs.last_mut() {
            Some(run) if m.start_ms <= until => {
                run.push(i);
                until = until.max(end);
            }
            _ => {
                runs.push(vec![i]);
                until = end;
            }
        }
    }
    runs
}

fn incident(
    members: &[Member<'_>],
    diagnosis: &str,
    role: Role,
    host: &str,
    mut run: Vec<usize>,
) -> Incident {
    run.sort_by_key(|&i| (members[i].start_ms, members[i].id));
    let mut others = BTreeSet::new();
    let mut unknown = 0;
    for &i in &run {
        let m = &members[i];
        match role {
            Role::Peer => {
                others.insert(m.a_host);
            }
            Role::Sender => match m.b_host {
                Some(b) => {
                    others.insert(b);
                }
                None => unknown += 1,
            },
        }
    }
    let of = |f: fn(&Member<'_>) -> i64| run.iter().map(move |&i| f(&members[i]));
    Incident {
        id: run.first().map_or(0, |&i| members[i].id),
        diagnosis: diagnosis.to_string(),
        host: host.to_string(),
        role,
        others: others.len() + unknown,
        other: match (others.len(), unknown) {
            (1, 0) => others.first().map(|h| (*h).to_string()),
            _ => None,
        },
        start_ms: of(|m| m.start_ms).min().unwrap_or(0),
        end_ms: of(|m| m.end_ms).max().unwrap_or(0),
        open: run.iter().any(|&i| members[i].open),
        stuck: run.iter().map(|&i| members[i].stuck).sum(),
        members: run,
    }
}

impl Incident {
    /// The incident in words: who, what, how many.
    pub fn title(&self) -> String {
        let h = &self.host;
        let n = self.members.len();
        let hosts = self
            .other
            .clone()
            .unwrap_or_else(|| count(self.others, "host", "hosts"));
        // More than one pair is said; one is the title itself.
        let pairs = if n > 1 {
            format!(" ({n} pairs)")
        } else {
            String::new()
        };
        let conns = count(n, "connection", "connections");
        let d = Diagnosis::from_id(&self.diagnosis);
        match (self.role, d) {
            (Role::Peer, Some(Diagnosis::PeerNotReading)) => {
                format!("{h} not reading from {hosts}{pairs}")
            }
            (Role::Peer, Some(Diagnosis::WindowUpdateLost)) => {
                format!("window updates from {h} lost on the way to {hosts}{pairs}")
            }
            (Role::Peer, Some(Diagnosis::AckLost)) => {
                format!("ACKs from {h} lost on the way to {hosts}{pairs}")
            }
            (Role::Peer, Some(Diagnosis::DataLost)) => {
                format!("data to {h} from {hosts} lost on the way{pairs}")
            }
            (Role::Peer, Some(Diagnosis::HalfOpen)) => {
                format!("{h} lost {conns} that {hosts} still send on")
            }
            (Role::Peer, Some(Diagnosis::Corked)) => {
                format!("{hosts} corked sending to {h}{pairs}")
            }
            (Role::Peer, Some(Diagnosis::UnsentUnblocked)) => {
                format!("{hosts} hold unsent data for {h}{pairs}")
            }
            (Role::Peer, _) => {
                format!("{hosts} stuck sending to {h}, {}{pairs}", self.diagnosis)
            }
            (Role::Sender, Some(Diagnosis::PeerNotReading)) => {
                format!("{hosts} not reading from {h}{pairs}")
            }
            (Role::Sender, Some(Diagnosis::WindowUpdateLost)) => {
                format!("window updates to {h} from {hosts} lost on the way{pairs}")
            }
            (Role::Sender, Some(Diagnosis::AckLost)) => {
                format!("ACKs to {h} from {hosts} lost on the way{pairs}")
            }
            (Role::Sender, Some(Diagnosis::DataLost)) => {
                format!("data from {h} to {hosts} lost on the way{pairs}")
            }
            (Role::Sender, Some(Diagnosis::HalfOpen)) => {
                format!("{h} sends on {conns} that {hosts} lost")
            }
            (Role::Sender, Some(Diagnosis::Corked)) => {
                format!("{h} corked {conns} to {hosts}")
            }
            (Role::Sender, Some(Diagnosis::UnsentUnblocked)) => {
                format!("{h} holds unsent data on {conns} to {hosts} (qdisc, NIC, pacing)")
            }
            (Role::Sender, Some(Diagnosis::PeerUnmonitored)) => {
                format!("{h} stuck sending on {conns} to peers without an agent")
            }
            (Role::Sender, Some(Diagnosis::Undetermined)) => {
                format!("{h} stuck sending to {hosts}, cause undetermined{pairs}")
            }
            (Role::Sender, _) => {
                format!("{h} stuck sending to {hosts}, {}{pairs}", self.diagnosis)
            }
        }
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m<'a>(
        id: i64,
        d: &'a str,
        a: &'a str,
        b: Option<&'a str>,
        start: i64,
        end: i64,
    ) -> Member<'a> {
        Member {
            id,
            diagnosis: d,
            a_host: a,
            b_host: b,
            start_ms: start,
            end_ms: end,
            open: false,
            stuck: 1000,
        }
    }

    const PNR: &str = "peer_not_reading";

    #[test]
    fn a_host_that_stops_reading_from_its_clients_is_one_incident_named_for_it() {
        let eps = [
            m(7, PNR, "app-1", Some("db-7"), 1_000, 20_000),
            m(3, PNR, "app-2", Some("db-7"), 2_000, 21_000),
            m(9, PNR, "app-2", Some("db-7"), 2_500, 19_000),
            m(4, PNR, "app-3", Some("db-7"), 5_000, 25_000),
        ];
        let inc = group(&eps);
        assert_eq!(inc.len(), 1, "{inc:#?}");
        let i = &inc[0];
        assert_eq!((i.id, i.role, i.host.as_str()), (7, Role::Peer, "db-7"));
        assert_eq!(i.members, [0, 1, 2, 3]);
        assert_eq!(
            (i.others, i.start_ms, i.end_ms, i.stuck),
            (3, 1_000, 25_000, 4_000)
        );
        assert_eq!(i.title(), "db-7 not reading from 3 hosts (4 pairs)");
    }

    #[test]
    fn episodes_apart_in_time_or_diagnosis_are_apart() {
        let eps = [
            m(1, PNR, "app-1", Some("db-7"), 1_000, 10_000),
            // Starts after the first ended: another incident.
            m(2, PNR, "app-2", Some("db-7"), 10_001, 20_000),
            // Overlaps the second, but another diagnosis.
            m(3, "data_lost", "app-3", Some("db-7"), 11_000, 20_000),
            m(4, PNR, "app-3", Some("db-7"), 15_000, 30_000),
        ];
        let inc = group(&eps);
        let sets: Vec<Vec<usize>> = inc.iter().map(|i| i.members.clone()).collect();
        assert_eq!(sets, [vec![0], vec![1, 3], vec![2]], "{inc:#?}");
        // A run is judged by how far it reaches, not by its last episode.
        let eps = [
            m(1, PNR, "a", Some("db"), 0, 100_000),
            m(2, PNR, "b", Some("db"), 10, 20),
            m(3, PNR, "c", Some("db"), 50_000, 60_000),
        ];
        assert_eq!(group(&eps).len(), 1);
        // An open episode is still going, whatever its last stored length:
        // one that opened after it is part of its incident.
        let mut eps = [
            m(1, PNR, "a", Some("db"), 0, 3_000),
            m(2, PNR, "b", Some("db"), 10_000, 13_000),
        ];
        assert_eq!(group(&eps).len(), 2, "both ended: apart");
        eps[0].open = true;
        assert_eq!(group(&eps).len(), 1, "the first still open: together");
    }

    #[test]
    fn a_client_stuck_on_two_servers_joins_the_larger_incident_not_both() {
        let eps = [
            m(1, PNR, "app-1", Some("db-7"), 0, 10_000),
            m(2, PNR, "app-2", Some("db-7"), 0, 10_000),
            m(3, PNR, "app-3", Some("db-7"), 0, 10_000),
            // app-3 is also stuck on cache-1, as is app-4.
            m(4, PNR, "app-3", Some("cache-1"), 0, 10_000),
            m(5, PNR, "app-4", Some("cache-1"), 0, 10_000),
        ];
        let inc = group(&eps);
        let named: Vec<(&str, Vec<usize>)> = inc
            .iter()
            .map(|i| (i.host.as_str(), i.members.clone()))
            .collect();
        assert_eq!(
            named,
            [("db-7", vec![0, 1, 2]), ("cache-1", vec![3, 4])],
            "{inc:#?}"
        );
    }

    #[test]
    fn the_hub_is_the_larger_side_and_a_tie_goes_to_the_side_blamed() {
        // One client, three servers not reading from it.
        let eps = [
            m(1, PNR, "app-1", Some("db-1"), 0, 10_000),
            m(2, PNR, "app-1", Some("db-2"), 0, 10_000),
            m(3, PNR, "app-1", Some("db-3"), 0, 10_000),
        ];
        let inc = group(&eps);
        assert_eq!(
            (inc.len(), inc[0].role, inc[0].host.as_str()),
            (1, Role::Sender, "app-1")
        );
        assert_eq!(inc[0].title(), "3 hosts not reading from app-1 (3 pairs)");
        // Two pairs between the same two hosts: blamed side, B.
        let eps = [
            m(1, PNR, "app-1", Some("db-1"), 0, 10_000),
            m(2, PNR, "app-1", Some("db-1"), 0, 10_000),
        ];
        assert_eq!(group(&eps)[0].role, Role::Peer);
        let eps = [
            m(1, "corked", "app-1", Some("db-1"), 0, 10_000),
            m(2, "corked", "app-1", Some("db-1"), 0, 10_000),
        ];
        let i = &group(&eps)[0];
        assert_eq!(
            (i.role, i.title().as_str()),
            (Role::Sender, "app-1 corked 2 connections to db-1")
        );
    }

    #[test]
    fn a_lone_episode_is_an_incident_of_its_own_named_by_its_blamed_side() {
        let eps = [
            m(5, PNR, "app-1", Some("db-7"), 0, 10_000),
            m(6, "peer_unmonitored", "app-2", None, 0, 10_000),
        ];
        let inc = group(&eps);
        assert_eq!(inc.len(), 2);
        assert_eq!(inc[0].title(), "db-7 not reading from app-1");
        assert_eq!(
            inc[1].title(),
            "app-2 stuck sending on 1 connection to peers without an agent"
        );
        assert_eq!(inc[1].others, 1, "an unknown peer counts");
    }

    #[test]
    fn open_incidents_come_first_then_the_oldest_and_the_id_is_the_first_episode() {
        let mut eps = vec![
            m(10, PNR, "a", Some("x"), 5_000, 9_000),
            m(11, PNR, "b", Some("y"), 1_000, 9_000),
            m(12, PNR, "c", Some("z"), 3_000, 9_000),
            // Joins y's later, with an id lower than its first: the
            // incident keeps the first episode's id.
            m(2, PNR, "d", Some("y"), 4_000, 9_000),
        ];
        eps[0].open = true;
        let inc = group(&eps);
        let ids: Vec<i64> = inc.iter().map(|i| i.id).collect();
        assert_eq!(ids, [10, 11, 12]);
        assert!(inc[0].open && !inc[1].open);
        assert!(group(&[]).is_empty());
    }
}
