//! Unit tests of `translate`: what is asked of which table, what is kept,
//! what is sent, over tables held in memory that answer as the kernel's
//! lookup by tuple does (an entry is found by either of its directions).
//! The real tables are tested in tests/tests/agent/translate.rs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use tcpstall_common::{EndSample, SampleReason};

use super::*;

const HOST: u64 = 1;
const POD: u64 = 2;
const OTHER: u64 = 3;

fn at(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn flow(local: &str, remote: &str) -> FlowTuple {
    FlowTuple::new(at(local), at(remote))
}

/// Tables in memory: entries by namespace, namespaces that fail every
/// request, and every request made.
#[derive(Debug, Default)]
struct Fake {
    readable: Vec<u64>,
    entries: HashMap<u64, Vec<Translation>>,
    failing: HashSet<u64>,
    asked: Vec<(u64, FlowTuple)>,
}

impl Conntracks for Fake {
    fn host(&self) -> u64 {
        HOST
    }

    fn readable(&self) -> &[u64] {
        &self.readable
    }

    fn lookup(
        &mut self,
        netns: u64,
        flow: FlowTuple,
    ) -> Option<Result<Option<Translation>, ConntrackError>> {
        self.asked.push((netns, flow));
        if self.failing.contains(&netns) {
            return Some(Err(ConntrackError::TimedOut));
        }
        let found = self
            .entries
            .get(&netns)
            .and_then(|es| es.iter().find(|t| t.holds(flow)).copied());
        Some(Ok(found))
    }
}

/// A client's connection to a service address, DNATed to a server.
fn dnat() -> Translation {
    Translation {
        original: flow("10.0.0.1:5000", "10.96.0.10:80"),
        reply: flow("10.1.0.7:8080", "10.0.0.1:5000"),
        src_nat: false,
        dst_nat: true,
    }
}

/// The same connection as an entry that rewrote nothing.
fn plain(f: FlowTuple) -> Translation {
    Translation {
        original: f,
        reply: f.reversed(),
        src_nat: false,
        dst_nat: false,
    }
}

fn translator(fake: Fake) -> Translator<Fake> {
    let labels = [
        (HOST, "host".to_string()),
        (POD, "pod".to_string()),
        (OTHER, "other".to_string()),
    ];
    Translator::new(fake, labels)
}

fn fake(readable: &[u64]) -> Fake {
    Fake {
        readable: readable.to_vec(),
        ..Fake::default()
    }
}

/// A sent sample of the socket `cookie` in namespace `netns` on `f`.
fn sent(netns: &str, cookie: u64, f: FlowTuple) -> (SampleReason, EndSample) {
    let mut s = crate::run::tests::sample(cookie);
    s.netns = netns.into();
    s.flow = f;
    (SampleReason::Suspect, s)
}

fn selection(samples: Vec<(SampleReason, EndSample)>) -> Selection {
    Selection {
        samples,
        ..Selection::default()
    }
}

fn translations(sel: &Selection) -> Vec<Option<Translation>> {
    sel.samples
        .iter()
        .map(|(_, s)| s.translation.as_deref().copied())
        .collect()
}

#[test]
fn a_suspect_sent_every_poll_is_looked_up_once() {
    let mut f = fake(&[HOST]);
    f.entries.insert(HOST, vec![dnat()]);
    let mut t = translator(f);
    for _ in 0..5 {
        let mut sel = selection(vec![sent("host", 7, dnat().original)]);
        t.poll(&mut sel, true);
        assert_eq!(translations(&sel), vec![Some(dnat())]);
    }
    assert_eq!(t.tables.asked, vec![(HOST, dnat().original)], "once");
    let stats = t.stats();
    assert_eq!((stats.lookups, stats.translated, stats.cached), (1, 1, 1));
}

#[test]
fn an_untranslated_connection_goes_without_and_is_not_asked_again() {
    let f0 = flow("10.0.0.1:5000", "10.0.0.9:80");
    let mut f = fake(&[HOST]);
    f.entries.insert(HOST, vec![plain(f0)]);
    let mut t = translator(f);
    for _ in 0..3 {
        let mut sel = selection(vec![sent("host", 7, f0), sent("host", 8, f0.reversed())]);
        t.poll(&mut sel, true);
        assert_eq!(translations(&sel), vec![None, None]);
    }
    assert_eq!(t.tables.asked.len(), 2, "{:?}", t.tables.asked);
    assert_eq!(t.stats().translated, 0);
}

#[test]
fn a_containers_connection_is_translated_in_the_hosts_table() {
    // The pod's own table tracks the connection untranslated; the host
    // masquerades it.
    let snat = Translation {
        original: flow("172.17.0.2:40000", "198.18.0.9:80"),
        reply: flow("198.18.0.9:80", "198.18.0.1:61000"),
        src_nat: true,
        dst_nat: false,
    };
    let mut f = fake(&[HOST, POD, OTHER]);
    f.entries.insert(POD, vec![plain(snat.original)]);
    f.entries.insert(HOST, vec![snat]);
    f.entries.insert(OTHER, vec![dnat()]);
    let mut t = translator(f);
    let mut sel = selection(vec![sent("pod", 3, snat.original)]);
    t.poll(&mut sel, true);
    assert_eq!(translations(&sel), vec![Some(snat)]);
    // Its own namespace first, then the host's; never another.
    assert_eq!(
        t.tables.asked,
        vec![(POD, snat.original), (HOST, snat.original)]
    );
}

#[test]
fn own_namespace_wins_and_the_host_is_asked_once_for_its_own() {
    let mut f = fake(&[HOST, POD]);
    f.entries.insert(POD, vec![dnat()]);
    f.entries.insert(HOST, vec![plain(dnat().original)]);
    let mut t = translator(f);
    let mut sel = selection(vec![sent("pod", 1, dnat().original)]);
    t.poll(&mut sel, true);
    assert_eq!(translations(&sel), vec![Some(dnat())]);
    assert_eq!(t.tables.asked, vec![(POD, dnat().original)]);
    // A host socket: the host's table, asked once (own and host are one).
    let f1 = flow("10.0.0.1:1", "10.0.0.2:2");
    let mut sel = selection(vec![sent("host", 2, f1)]);
    t.poll(&mut sel, true);
    assert_eq!(t.tables.asked[1..], [(HOST, f1)]);
}

#[test]
fn an_unreadable_namespace_is_never_asked() {
    let mut f = fake(&[HOST]);
    f.entries.insert(HOST, vec![dnat()]);
    let mut t = translator(f);
    let mut sel = selection(vec![sent("pod", 1, dnat().original)]);
    t.poll(&mut sel, true);
    assert_eq!(translations(&sel), vec![Some(dnat())]);
    assert_eq!(t.tables.asked, vec![(HOST, dnat().original)]);
    // Nothing readable: nothing asked, nothing attached.
    let mut t = translator(fake(&[]));
    let mut sel = selection(vec![sent("host", 1, dnat().original)]);
    t.poll(&mut sel, true);
    assert_eq!(translations(&sel), vec![None]);
    assert!(t.tables.asked.is_empty());
}

#[test]
fn the_cache_keeps_only_what_the_last_poll_sent() {
    let mut f = fake(&[HOST]);
    f.entries.insert(HOST, vec![dnat()]);
    let mut t = translator(f);
    let a = || sent("host", 1, dnat().original);
    let b = || sent("host", 2, dnat().reply);
    let mut sel = selection(vec![a(), b()]);
    t.poll(&mut sel, true);
    assert_eq!(t.stats().cached, 2);
    // A follow between polls finds it cached.
    let mut followed = selection(vec![b()]);
    t.follow(&mut followed);
    assert_eq!(translations(&followed), vec![Some(dnat())]);
    assert_eq!(t.tables.asked.len(), 2);
    // b released: the next poll sends a only, and b is forgotten.
    let mut sel = selection(vec![a()]);
    t.poll(&mut sel, true);
    assert_eq!(t.stats().cached, 1);
    assert_eq!(t.tables.asked.len(), 2);
    // b sent again (a new hold): looked up again.
    let mut sel = selection(vec![a(), b()]);
    t.poll(&mut sel, true);
    assert_eq!(translations(&sel), vec![Some(dnat()); 2]);
    assert_eq!(t.tables.asked.len(), 3);
    // A poll that sends nothing empties it.
    t.poll(&mut Selection::default(), true);
    assert_eq!(t.stats().cached, 0);
}

#[test]
fn a_full_cache_drops_counted_and_looks_up_again() {
    let mut t = translator(fake(&[HOST]));
    let many = |n: u64| -> Selection {
        selection(
            (0..n)
                .map(|c| sent("host", c, flow("10.0.0.1:1", "10.0.0.2:2")))
                .collect(),
        )
    };
    // Fill it, a budget's worth a poll, every socket sent every poll.
    let n = MAX_CACHED as u64 + 10;
    let mut polls = 0;
    while t.stats().cached < MAX_CACHED {
        t.poll(&mut many(n), true);
        polls += 1;
        assert!(polls <= MAX_CACHED / LOOKUP_BUDGET + 1, "{:?}", t.stats());
    }
    let asked = t.tables.asked.len();
    t.poll(&mut many(n), true);
    let stats = t.stats();
    assert_eq!(stats.cached, MAX_CACHED);
    assert_eq!(t.tables.asked.len(), asked + 10, "the ten left out, again");
    assert_eq!(stats.cache_drops, 10);
}

#[test]
fn a_poll_asks_at_most_its_budget_and_the_rest_waits() {
    let mut t = translator(fake(&[HOST]));
    let n = LOOKUP_BUDGET as u64 + 100;
    let sel = || {
        selection(
            (0..n)
                .map(|c| sent("host", c, flow("10.0.0.1:1", "10.0.0.2:2")))
                .collect(),
        )
    };
    t.poll(&mut sel(), true);
    assert_eq!(t.tables.asked.len(), LOOKUP_BUDGET);
    assert_eq!(t.stats().deferred, 100);
    t.poll(&mut sel(), true);
    assert_eq!(t.tables.asked.len(), LOOKUP_BUDGET + 100);
    t.poll(&mut sel(), true);
    assert_eq!(t.tables.asked.len(), LOOKUP_BUDGET + 100, "all cached");
}

#[test]
fn a_failed_lookup_is_not_kept_and_is_asked_again() {
    let mut f = fake(&[HOST, POD]);
    f.failing.insert(POD);
    f.entries.insert(HOST, vec![plain(dnat().original)]);
    let mut t = translator(f);
    for polls in 1..=3 {
        let mut sel = selection(vec![sent("pod", 1, dnat().original)]);
        t.poll(&mut sel, true);
        assert_eq!(translations(&sel), vec![None]);
        assert_eq!(t.tables.asked.len(), 2 * polls);
    }
    assert_eq!(t.stats().errors, 3);
    assert_eq!(t.stats().cached, 0);
    // It answers again: kept from then on.
    t.tables.failing.clear();
    t.tables.entries.insert(POD, vec![dnat()]);
    for _ in 0..2 {
        let mut sel = selection(vec![sent("pod", 1, dnat().original)]);
        t.poll(&mut sel, true);
        assert_eq!(translations(&sel), vec![Some(dnat())]);
    }
    assert_eq!(t.tables.asked.len(), 7);
}

/// A watched flow as the server's host is asked for it: the server's
/// address as the client sees it, to the client.
fn watched_vip() -> FlowTuple {
    dnat().original.reversed()
}

fn absent(flows: &[FlowTuple]) -> Selection {
    Selection {
        absent: flows.to_vec(),
        ..Selection::default()
    }
}

#[test]
fn an_absent_flow_held_by_conntrack_gets_one_lookup_while_it_says_the_same() {
    let mut f = fake(&[HOST, POD]);
    f.entries.insert(POD, vec![dnat()]);
    let mut t = translator(f);
    let w = watched_vip();
    t.endpoints([w]);
    let mut sel = absent(&[w]);
    t.poll(&mut sel, true);
    assert_eq!(
        sel.lookups,
        vec![Lookup {
            flow: w,
            translation: Some(dnat()),
            connected_to: None,
            asked: false,
        }]
    );
    // The flow the far end sends, in the host's table, then the others.
    assert_eq!(t.tables.asked, vec![(HOST, w.reversed()), (POD, w.reversed())]);
    for _ in 0..3 {
        t.endpoints([w]);
        let mut sel = absent(&[w]);
        t.poll(&mut sel, true);
        assert!(sel.lookups.is_empty(), "said already: {:?}", sel.lookups);
    }
    // A different answer is said.
    t.tables.entries.clear();
    let snat = Translation {
        src_nat: true,
        dst_nat: false,
        ..dnat()
    };
    t.tables.entries.insert(HOST, vec![snat]);
    t.endpoints([w]);
    let mut sel = absent(&[w]);
    t.poll(&mut sel, true);
    assert_eq!(sel.lookups.len(), 1);
    assert_eq!(sel.lookups[0].translation, Some(snat));
    // Found (not absent) for a poll, then absent again: said again.
    t.poll(&mut Selection::default(), true);
    t.endpoints([w]);
    let mut sel = absent(&[w]);
    t.poll(&mut sel, true);
    assert_eq!(sel.lookups.len(), 1);
    // A poll some namespace failed has no absent list: it forgets nothing.
    t.poll(&mut Selection::default(), false);
    t.endpoints([w]);
    let mut sel = absent(&[w]);
    t.poll(&mut sel, true);
    assert!(sel.lookups.is_empty());
}

#[test]
fn an_absent_flow_nothing_is_known_of_gets_no_lookup() {
    let mut f = fake(&[HOST]);
    f.entries.insert(HOST, vec![plain(watched_vip().reversed())]);
    let mut t = translator(f);
    let w = watched_vip();
    t.endpoints([w]);
    let mut sel = absent(&[w]);
    t.poll(&mut sel, true);
    assert!(sel.lookups.is_empty(), "untranslated and no socket: {sel:?}");
}

/// A connection's base message.
fn base(cookie: u64, local: &str, remote: &str, state: TcpState) -> Base {
    Base {
        state,
        local: at(local),
        remote: at(remote),
        cookie,
        wqueue: 0,
    }
}

#[test]
fn the_one_socket_on_an_absent_flows_endpoint_is_what_it_is_connected_to() {
    let w = flow("10.2.0.9:80", "10.1.0.5:5000");
    let shared = flow("10.2.0.9:443", "10.1.0.5:5001");
    let nobody = flow("10.2.0.9:22", "10.1.0.5:5002");
    let mut t = translator(fake(&[HOST]));
    let ends = t.endpoints([w, shared, nobody]);
    let gateway = "10.2.0.1:6000";
    ends.see(&base(1, "10.2.0.9:80", gateway, TcpState::Established));
    // Seen again (a poll that dumps twice): the same socket.
    ends.see(&base(1, "10.2.0.9:80", gateway, TcpState::Established));
    // Over: talks to nobody.
    ends.see(&base(2, "10.2.0.9:80", "10.2.0.1:6001", TcpState::TimeWait));
    // A listener's port with two connections: no one of them is it.
    ends.see(&base(3, "10.2.0.9:443", "10.2.0.1:7000", TcpState::Established));
    ends.see(&base(4, "10.2.0.9:443", "10.2.0.1:7001", TcpState::Established));
    // Not counted: not a watched flow's endpoint.
    ends.see(&base(5, "10.2.0.9:8080", gateway, TcpState::Established));
    let mut sel = absent(&[w, shared, nobody]);
    t.poll(&mut sel, true);
    assert_eq!(
        sel.lookups,
        vec![Lookup {
            flow: w,
            translation: None,
            connected_to: Some(at(gateway)),
            asked: false,
        }]
    );
}

#[test]
fn endpoints_count_nothing_while_no_watch_is_unmatched() {
    let mut t = translator(fake(&[HOST]));
    let ends = t.endpoints([]);
    ends.see(&base(1, "10.2.0.9:80", "10.2.0.1:6000", TcpState::Established));
    assert!(ends.held.is_empty());
    assert_eq!(ends.connected_to(at("10.2.0.9:80")), None);
    // IPv4-mapped endpoints are counted as IPv4, as the dump reads them.
    let ends = t.endpoints([flow("[::ffff:10.2.0.9]:80", "10.1.0.5:5000")]);
    ends.see(&base(1, "10.2.0.9:80", "10.2.0.1:6000", TcpState::Established));
    assert_eq!(
        ends.connected_to(at("[::ffff:10.2.0.9]:80")),
        Some(at("10.2.0.1:6000"))
    );
}

#[test]
fn every_translate_request_is_answered_once_found_or_not() {
    let mut f = fake(&[HOST, POD]);
    f.entries.insert(POD, vec![dnat()]);
    let mut t = translator(f);
    let found = dnat().reply;
    let missing = flow("10.9.9.9:1", "10.9.9.8:2");
    assert!(t.ask(found));
    assert!(t.ask(missing));
    let mut sel = Selection::default();
    t.poll(&mut sel, true);
    assert_eq!(
        sel.lookups,
        vec![
            Lookup {
                flow: found,
                translation: Some(dnat()),
                connected_to: None,
                asked: true,
            },
            Lookup {
                flow: missing,
                translation: None,
                connected_to: None,
                asked: true,
            },
        ]
    );
    // The flow and its reverse, in every readable table.
    let for_missing: Vec<_> = t.tables.asked.iter().filter(|(_, f)| f.key() == missing.key()).collect();
    assert_eq!(
        for_missing,
        [
            &(HOST, missing),
            &(HOST, missing.reversed()),
            &(POD, missing),
            &(POD, missing.reversed())
        ]
    );
    let mut sel = Selection::default();
    t.poll(&mut sel, true);
    assert!(sel.lookups.is_empty(), "answered once");
    assert_eq!(t.stats().answered, 2);
}

#[test]
fn translate_requests_are_bounded_and_a_gone_stream_drops_them_counted() {
    let mut t = translator(fake(&[HOST]));
    let f = |p: u16| flow("10.0.0.1:1", &format!("10.0.0.2:{p}"));
    for p in 0..MAX_ASKED as u16 {
        assert!(t.ask(f(p)));
    }
    assert!(!t.ask(f(60000)));
    assert_eq!(t.stats().asked_dropped, 1);
    // Each costs two requests in one table: a budget answers half.
    let mut sel = Selection::default();
    t.poll(&mut sel, true);
    assert_eq!(sel.lookups.len(), LOOKUP_BUDGET / 2);
    assert!(sel.lookups.iter().all(|l| l.asked));
    assert_eq!(t.forget_stream(), MAX_ASKED - LOOKUP_BUDGET / 2);
    let stats = t.stats();
    assert_eq!(stats.answered, LOOKUP_BUDGET as u64 / 2);
    assert_eq!(stats.asked_dropped, 1 + (MAX_ASKED - LOOKUP_BUDGET / 2) as u64);
    let mut sel = Selection::default();
    t.poll(&mut sel, true);
    assert!(sel.lookups.is_empty());
}

#[test]
fn a_sysctl_is_on_when_it_is_a_number_but_zero() {
    assert!(switched_on("1\n"));
    assert!(switched_on("2"));
    assert!(!switched_on("0\n"));
    assert!(!switched_on(""));
    assert!(!switched_on("on"));
}
