//! The gateway and the matcher on explicit time with a real SQLite store,
//! their messages pumped between them by hand: two hosts, the join through
//! announced addresses, the watch request to the peer's agent, diagnosis
//! from both ends as they report, one-sided cases, expiry of what went
//! silent, and a host going away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tcpstall_collector::gateway::{AgentClock, Input};
use tcpstall_collector::inprocess::InProcess;
use tcpstall_collector::matcher::{FlowView, Question, Stats};
use tcpstall_collector::messages::{HostId, ToMatcher};
use tcpstall_collector::store::{
    EpisodeFilter, EpisodeRow, HeldFilter, HeldRow, SharedStore, SqliteStore, StoreConfig,
};
use tcpstall_common::{
    AgentBatch, ClosedSocket, EndSample, FlowTuple, HeldEnd, HeldSpan, HostHello,
    NamespaceAddresses, SampleReason, Side, TimerKind, ToAgent,
};
use tcpstall_proto::convert::unpack;
use tokio::sync::{mpsc, oneshot};

mod support;
use support::{a_end, b_end};

const THRESHOLD: Duration = Duration::from_secs(10);
/// Collector wall clock at the start of each test.
const T0: i64 = 1_800_000_000_000;

struct Rig {
    roles: InProcess,
    store: SharedStore,
    _dir: tempfile::TempDir,
    /// What the collector asked each host's agent.
    outbox: Vec<(String, mpsc::Receiver<ToAgent>)>,
    session: u64,
    /// Each session's host and its agent's clock, as its stream keeps them.
    streams: HashMap<u64, (HostId, AgentClock)>,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _thread, next) =
            SqliteStore::open(StoreConfig::new(dir.path().join("t.db"))).expect("store");
        let store: SharedStore = std::sync::Arc::new(store);
        Rig {
            roles: InProcess::new(store.clone(), THRESHOLD, next, 10, 720, 1024),
            store,
            _dir: dir,
            outbox: Vec::new(),
            session: 0,
            streams: HashMap::new(),
        }
    }

    /// A second collector's roles on this rig's store (another fleet
    /// node), numbering episodes by identity as fleet mode does; `self`
    /// numbers by identity from now on too.
    fn sharing(&mut self) -> Rig {
        self.roles.matcher.number_by_identity();
        let mut other = Rig {
            roles: InProcess::new(self.store.clone(), THRESHOLD, 1, 10, 720, 1024),
            store: self.store.clone(),
            _dir: tempfile::tempdir().expect("temp dir"),
            outbox: Vec::new(),
            session: 100,
            streams: HashMap::new(),
        };
        other.roles.matcher.number_by_identity();
        other
    }

    fn pump(&mut self, now: i64) {
        self.roles.pump(now);
    }

    fn gateway(&mut self, input: Input, now: i64) {
        self.roles.gateway.handle(input, now);
        self.pump(now);
    }

    /// Connects an agent for `host` owning `addr`; returns its session.
    fn hello(&mut self, host: &str, addr: &str, now: i64) -> u64 {
        self.hello_as(host, &[addr], false, now)
    }

    /// Connects an agent for `host` owning `addrs`, on a host that
    /// forwards packets or not; returns its session.
    fn hello_as(&mut self, host: &str, addrs: &[&str], forwards: bool, now: i64) -> u64 {
        self.hello_in(host, "host", addrs, forwards, now)
    }

    /// Connects an agent for `host` owning `addrs` in its namespace
    /// `netns`; returns its session.
    fn hello_in(
        &mut self,
        host: &str,
        netns: &str,
        addrs: &[&str],
        forwards: bool,
        now: i64,
    ) -> u64 {
        self.session += 1;
        let (tx, rx) = mpsc::channel(16);
        let (reply, mut res) = oneshot::channel();
        let mut addresses: Vec<IpAddr> = addrs.iter().map(|a| a.parse().expect("ip")).collect();
        addresses.push("127.0.0.1".parse().expect("ip"));
        self.gateway(
            Input::Hello {
                session: self.session,
                hello: Box::new(HostHello {
                    host: host.into(),
                    machine_id: None,
                    agent_version: "t".into(),
                    kernel: "6.18".into(),
                    boot_id: "b".into(),
                    namespaces: NamespaceAddresses::one(netns, addresses),
                    interval: Duration::from_secs(2),
                    answers_lookups: true,
                    forwards,
                    probes: Default::default(),
                }),
                peer: None,
                tx,
                reply,
            },
            now,
        );
        let id = res.try_recv().expect("answered").expect("accepted");
        self.streams
            .insert(self.session, (id, AgentClock::default()));
        self.outbox.push((host.into(), rx));
        self.session
    }

    fn gone(&mut self, session: u64, now: i64) {
        self.gateway(Input::Gone { session }, now);
    }

    fn send(
        &mut self,
        session: u64,
        mono_s: f64,
        samples: Vec<(SampleReason, EndSample)>,
        now: i64,
    ) {
        self.batch(
            session,
            AgentBatch {
                mono: Duration::from_secs_f64(mono_s),
                connections: 100,
                samples,
                ..AgentBatch::default()
            },
            now,
        );
    }

    /// A batch of `session`'s stream, as the stream hands it to the matcher.
    fn batch(&mut self, session: u64, batch: AgentBatch, now: i64) {
        let (host, clock) = self.streams.get_mut(&session).expect("a stream");
        let taken_ms = clock.taken_ms(batch.mono, now);
        let msg = ToMatcher::Batch {
            host: *host,
            session,
            taken_ms,
            batch,
        };
        self.roles.matcher.handle(msg, now);
        self.pump(now);
    }

    fn expire(&mut self, now: i64) {
        self.roles.matcher.expire(now, 5);
        self.pump(now);
    }

    fn ask<T>(&mut self, q: impl FnOnce(oneshot::Sender<T>) -> Question, now: i64) -> T {
        let (reply, mut answer) = oneshot::channel();
        self.roles.matcher.answer(q(reply), now);
        self.pump(now);
        answer.try_recv().expect("answered")
    }

    fn flow(&mut self, flow: FlowTuple, now: i64) -> FlowView {
        self.ask(|reply| Question::Flow { flow, reply }, now)
    }

    fn held_pending(&mut self, filter: &HeldFilter) -> Vec<HeldRow> {
        let filter = filter.clone();
        self.ask(|reply| Question::HeldPending { filter, reply }, T0)
    }

    fn stats(&self) -> Stats {
        self.roles.matcher.stats()
    }

    fn asked(&mut self, host: &str) -> Vec<ToAgent> {
        let mut out = Vec::new();
        for (h, rx) in self.outbox.iter_mut().filter(|(h, _)| h == host) {
            let _ = h;
            while let Ok(m) = rx.try_recv() {
                out.push(m);
            }
        }
        out
    }

    async fn episodes(&self) -> Vec<EpisodeRow> {
        self.store.flush().await.expect("flush");
        self.store
            .list_episodes(EpisodeFilter::default())
            .await
            .expect("list")
    }
}

/// A's stuck end towards B (B at 198.18.0.1), and B's view of the flow.
fn stuck_a(unchanged_ms: u64) -> EndSample {
    let mut a = a_end(1, 5000, 3000);
    a.unchanged_ms = unchanged_ms;
    a
}

fn zero_window(mut a: EndSample) -> EndSample {
    a.pos.snd_wnd = Some(0);
    a.pos.notsent = Some(a.pos.sendq);
    a.pos.inflight = Some(0);
    a.pos.snd_nxt = a.pos.snd_una;
    a.timer = Some(TimerKind::ZeroWindowProbe);
    a
}

fn at(s: f64) -> i64 {
    T0 + (s * 1000.0) as i64
}

#[tokio::test]
async fn join_watch_and_peer_not_reading_from_both_ends() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));

    // A's first suspect sample (held one poll, 2 s): nobody is asked yet.
    let a = zero_window(stuck_a(2000));
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(0.0),
    );
    assert!(rig.asked("hostb").is_empty(), "not at the first report");
    // Nor at its second (held 4 s). Its third (held 6 s, past threshold -
    // 2.5 polls = 5 s): the collector asks B to watch the peer end, once.
    rig.send(
        a_sess,
        102.0,
        vec![(SampleReason::Suspect, zero_window(stuck_a(4000)))],
        at(0.1),
    );
    assert!(rig.asked("hostb").is_empty(), "not at the second report");
    rig.send(
        a_sess,
        104.0,
        vec![(SampleReason::Suspect, zero_window(stuck_a(6000)))],
        at(0.2),
    );
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(a.flow.reversed())]);
    assert!(rig.asked("hosta").is_empty());

    // B answers with its end: a full receive queue and a closed window.
    let b = b_end(&a, 5000, 4096, 0);
    rig.send(
        b_sess,
        50.0,
        vec![(SampleReason::Watched, b.clone())],
        at(0.5),
    );

    // 9.9 s after the stall began (2 s before the first sample): nothing.
    rig.send(
        a_sess,
        107.9,
        vec![(SampleReason::Suspect, zero_window(stuck_a(9900)))],
        at(7.9),
    );
    assert!(rig.episodes().await.is_empty(), "no episode at 9.9 s");
    // 10.1 s: one episode, both ends joined, diagnosed from both.
    rig.send(
        a_sess,
        108.1,
        vec![(SampleReason::Suspect, zero_window(stuck_a(10_100)))],
        at(8.1),
    );
    let eps = rig.episodes().await;
    assert_eq!(eps.len(), 1, "{eps:?}");
    let e = &eps[0];
    assert_eq!(e.diagnosis, "peer_not_reading");
    assert_eq!(
        (e.a_host.as_str(), e.b_host.as_deref()),
        ("hosta", Some("hostb"))
    );
    assert_eq!(e.a_flow, a.flow);
    assert_eq!(e.evidence.get("b_recvq"), Some(&4096));
    assert_eq!(e.evidence.get("b_rcv_wnd"), Some(&0));
    assert!(e.open);
    assert_eq!(e.started_at_ms, at(8.1) - 10_100);

    assert_eq!(e.evidence.get("a_unchanged_ms"), Some(&10_100));

    // More polls store samples of both ends while it is open. A poll that
    // finds the same, only later or with a counter that grows while a
    // stall holds (another zero-window probe), leaves the episode's row as
    // it was (its duration is read from its start while it is open); the
    // counters are written when it ends.
    rig.send(
        b_sess,
        52.0,
        vec![(SampleReason::Watched, b.clone())],
        at(10.0),
    );
    rig.send(
        a_sess,
        110.1,
        vec![(SampleReason::Suspect, zero_window(stuck_a(12_100)))],
        at(10.1),
    );
    let e = &rig.episodes().await[0];
    assert_eq!(e.evidence.get("a_unchanged_ms"), Some(&10_100));
    assert_eq!(e.evidence.get("a_probes"), Some(&0));
    let mut probing = zero_window(stuck_a(14_100));
    probing.probes = Some(1);
    rig.send(
        a_sess,
        112.0,
        vec![(SampleReason::Suspect, probing)],
        at(11.0),
    );
    let e = &rig.episodes().await[0];
    assert_eq!(e.evidence.get("a_probes"), Some(&0));
    assert_eq!(e.evidence.get("a_unchanged_ms"), Some(&10_100));
    assert_eq!(e.diagnosis, "peer_not_reading");
    // Then A's queue moves: the episode ends, with the last sample kept,
    // and the peer's watch is released.
    let mut moved = zero_window(stuck_a(0));
    moved.pos.snd_una = Some(6000);
    moved.pos.snd_nxt = Some(6000);
    moved.pos.write_seq = Some(9000);
    rig.send(
        a_sess,
        112.1,
        vec![(SampleReason::Released(None), moved)],
        at(12.1),
    );
    let eps = rig.episodes().await;
    assert!(!eps[0].open);
    assert_eq!(eps[0].end_reason.as_deref(), Some("moved"));
    assert_eq!(
        eps[0].evidence.get("a_probes"),
        Some(&1),
        "counters at the end"
    );
    assert_eq!(eps[0].evidence.get("a_unchanged_ms"), Some(&14_100));
    assert_eq!(eps[0].diagnosis, "peer_not_reading");
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Unwatch(a.flow.reversed())]
    );
    let (_, samples) = rig
        .store
        .get_episode(eps[0].id)
        .await
        .expect("get")
        .expect("episode");
    let sides: Vec<Side> = samples.iter().map(|s| s.side).collect();
    assert!(
        sides.iter().filter(|s| **s == Side::A).count() >= 3,
        "first, open polls, last: {sides:?}"
    );
    assert!(sides.contains(&Side::B), "B's samples stored: {sides:?}");
    let last_a = samples.iter().rfind(|s| s.side == Side::A).expect("last A");
    let last_a = unpack(&last_a.sample).expect("a stored sample decodes");
    assert_eq!(last_a.pos.snd_una, Some(6000), "the last word is the move");
}

#[tokio::test]
async fn released_suspects_leave_nothing_behind() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    rig.hello("hostb", "198.18.0.1", at(0.0));
    // Three suspects: one drains, one moves (its queue still non-empty),
    // one held long enough to have its peer watched, then drained.
    let suspect = |cookie: u64, held_ms: u64| {
        let mut a = stuck_a(held_ms);
        a.cookie = cookie;
        a.flow.remote.set_port(40_000 + cookie as u16);
        a
    };
    let (drains, moves, watched) = (suspect(1, 2000), suspect(2, 2000), suspect(3, 6000));
    rig.send(
        a_sess,
        100.0,
        vec![
            (SampleReason::Suspect, drains.clone()),
            (SampleReason::Suspect, moves.clone()),
            (SampleReason::Suspect, watched.clone()),
        ],
        at(0.0),
    );
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Watch(watched.flow.reversed())]
    );
    let stats = rig.stats();
    assert_eq!((stats.suspects, stats.tracks, stats.watched), (3, 3, 1));

    let drained = |mut a: EndSample| {
        a.pos.sendq = 0;
        a.unchanged_ms = 0;
        a
    };
    let mut moved = moves.clone();
    moved.pos.snd_una = Some(5500);
    moved.pos.sendq = 2500;
    moved.unchanged_ms = 0;
    rig.send(
        a_sess,
        102.0,
        vec![
            (SampleReason::Released(None), drained(drains)),
            (SampleReason::Released(None), moved),
            (SampleReason::Released(None), drained(watched.clone())),
        ],
        at(2.0),
    );
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Unwatch(watched.flow.reversed())]
    );
    let stats = rig.stats();
    assert_eq!(
        (stats.suspects, stats.tracks, stats.watched),
        (0, 0, 0),
        "no suspect, track or watch left"
    );
    assert!(rig.episodes().await.is_empty());
}

#[tokio::test]
async fn a_socket_replaced_on_its_4_tuple_leaves_nothing_of_the_old_one() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    rig.hello("hostb", "198.18.0.1", at(0.0));
    // A suspect held long enough to have its peer watched...
    let old = stuck_a(6000);
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, old.clone())],
        at(0.0),
    );
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Watch(old.flow.reversed())]
    );
    // ...then another socket on the same 4-tuple (the port reused), held
    // as long: it needs the same peer end, so nothing is asked again.
    let mut new = old.clone();
    new.cookie = old.cookie + 1;
    rig.send(
        a_sess,
        102.0,
        vec![(SampleReason::Suspect, new.clone())],
        at(2.0),
    );
    assert_eq!(rig.asked("hostb"), vec![]);
    let stats = rig.stats();
    assert_eq!(
        (stats.suspects, stats.tracks, stats.watched),
        (1, 1, 1),
        "the old socket's suspect went with its track"
    );
    // The new one drains: nothing is left, and the peer is let go (the
    // old socket's claim on it went when it was replaced, not at expiry).
    let mut drained = new;
    drained.pos.sendq = 0;
    drained.unchanged_ms = 0;
    rig.send(
        a_sess,
        104.0,
        vec![(SampleReason::Released(None), drained)],
        at(4.0),
    );
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Unwatch(old.flow.reversed())]
    );
    let stats = rig.stats();
    assert_eq!((stats.suspects, stats.tracks, stats.watched), (0, 0, 0));
    assert!(rig.episodes().await.is_empty());
}

#[tokio::test]
async fn pending_peer_settles_when_it_reports_and_absent_peer_is_half_open() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    let a = stuck_a(11_000);
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(0.0),
    );
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "undetermined", "B has not reported yet");
    assert_eq!(
        eps[0].peer_note.as_deref(),
        Some("waiting for hostb to report")
    );

    // B says it has no such socket: half-open.
    rig.batch(
        b_sess,
        AgentBatch {
            mono: Duration::from_secs(40),
            absent: vec![a.flow.reversed()],
            ..AgentBatch::default()
        },
        at(1.0),
    );
    rig.send(
        a_sess,
        102.0,
        vec![(SampleReason::Suspect, stuck_a(13_000))],
        at(2.0),
    );
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "half_open", "{eps:?}");
    assert_eq!(
        eps[0].peer_note.as_deref(),
        Some("hostb has no such socket")
    );
}

#[tokio::test]
async fn ack_lost_and_data_lost_need_both_ends() {
    for (b_rcv, want) in [(6500u64, "ack_lost"), (5000, "data_lost")] {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
        let mut a = stuck_a(6000);
        a.retransmits = Some(3);
        a.backoff = Some(3);
        rig.send(
            a_sess,
            100.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(0.0),
        );
        rig.send(
            b_sess,
            10.0,
            vec![(SampleReason::Watched, b_end(&a, b_rcv, 0, 65536))],
            at(0.5),
        );
        a.unchanged_ms = 10_000;
        rig.send(a_sess, 110.0, vec![(SampleReason::Suspect, a)], at(10.0));
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].diagnosis, want, "B.rcv_nxt {b_rcv}: {eps:?}");
    }
}

#[tokio::test]
async fn unmonitored_peer_is_said_so() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let mut a = stuck_a(10_500);
    a.flow.remote = "198.51.100.7:40000".parse().expect("addr");
    rig.send(a_sess, 100.0, vec![(SampleReason::Suspect, a)], at(0.0));
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "peer_unmonitored");
    assert_eq!(eps[0].b_host, None);
    assert!(rig.asked("hosta").is_empty(), "nobody to ask");
}

#[tokio::test]
async fn silent_suspects_expire_and_a_gone_host_ends_its_episodes() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let c_sess = rig.hello("hostc", "198.18.0.3", at(0.0));
    // hosta: a suspect that never became an episode goes silent.
    let mut quiet = stuck_a(0);
    quiet.cookie = 77;
    quiet.flow.local = "198.18.0.2:9999".parse().expect("addr");
    rig.send(a_sess, 100.0, vec![(SampleReason::Suspect, quiet)], at(0.0));
    assert_eq!(rig.stats().suspects, 1);
    rig.expire(at(9.9));
    assert_eq!(
        rig.stats().suspects,
        1,
        "4.95 polls of silence is not yet silence"
    );
    rig.expire(at(10.1));
    assert_eq!(rig.stats().suspects, 0, "five polls of silence end it");

    // hostc: an open episode; then its agent goes away.
    let mut c = stuck_a(10_000);
    c.flow.local = "198.18.0.3:8080".parse().expect("addr");
    rig.send(c_sess, 100.0, vec![(SampleReason::Suspect, c)], at(11.0));
    // hosta: an open episode of its own, which hostc's going must not end.
    let mut a_open = stuck_a(10_000);
    a_open.cookie = 78;
    a_open.flow.local = "198.18.0.2:8888".parse().expect("addr");
    rig.send(
        a_sess,
        111.0,
        vec![(SampleReason::Suspect, a_open)],
        at(11.0),
    );
    assert!(rig.episodes().await.iter().all(|e| e.open));
    rig.gone(c_sess, at(12.0));
    let eps = rig.episodes().await;
    let of = |host: &str| eps.iter().find(|e| e.a_host == host).expect("its episode");
    assert_eq!(of("hostc").end_reason.as_deref(), Some("host_gone"));
    assert!(of("hosta").open, "only the gone host's episodes end");
    assert_eq!(rig.roles.gateway.stats().agents, 1);
    let hosts = rig.store.list_hosts().await.expect("hosts");
    let c_row = hosts.iter().find(|h| h.host == "hostc").expect("hostc");
    assert!(!c_row.connected);
}

#[tokio::test]
async fn closed_socket_ends_the_episode_and_a_closed_peer_is_half_open_once_a_is_stuck_after() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    let a = zero_window(stuck_a(10_000));
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(0.0),
    );
    let b = b_end(&a, 5000, 4096, 0);
    rig.send(
        b_sess,
        10.0,
        vec![(SampleReason::Watched, b.clone())],
        at(0.5),
    );
    rig.send(
        a_sess,
        102.0,
        vec![(SampleReason::Suspect, zero_window(stuck_a(12_000)))],
        at(2.0),
    );
    assert_eq!(rig.episodes().await[0].diagnosis, "peer_not_reading");
    // B's socket goes (its host lost the connection): half-open.
    rig.batch(
        b_sess,
        AgentBatch {
            mono: Duration::from_secs(12),
            closed: vec![ClosedSocket {
                netns: "host".into(),
                flow: b.flow,
                cookie: b.cookie,
                held: None,
            }],
            ..AgentBatch::default()
        },
        at(2.5),
    );
    // Only once A is seen stuck in a sample taken after B went: A's report
    // taken at 102.4 s by its clock, buffered until after B's news, is no
    // proof (both ends go when a client closes, either agent first).
    assert_eq!(rig.episodes().await[0].diagnosis, "peer_not_reading");
    rig.send(
        a_sess,
        102.4,
        vec![(SampleReason::Suspect, zero_window(stuck_a(12_400)))],
        at(2.6),
    );
    assert_eq!(
        rig.episodes().await[0].diagnosis,
        "peer_not_reading",
        "taken before B's socket was known gone"
    );
    rig.send(
        a_sess,
        104.0,
        vec![(SampleReason::Suspect, zero_window(stuck_a(14_000)))],
        at(4.0),
    );
    assert_eq!(rig.episodes().await[0].diagnosis, "half_open");
    // A's socket closes: the episode ends.
    rig.batch(
        a_sess,
        AgentBatch {
            mono: Duration::from_secs(106),
            closed: vec![ClosedSocket {
                netns: "host".into(),
                flow: a.flow,
                cookie: a.cookie,
                held: None,
            }],
            ..AgentBatch::default()
        },
        at(6.0),
    );
    let eps = rig.episodes().await;
    assert_eq!(eps[0].end_reason.as_deref(), Some("closed"));
    assert_eq!(rig.stats().open_episodes, 0);
}

#[test]
fn flow_tuples_in_the_builders_point_at_each_other() {
    let a = stuck_a(0);
    let b = b_end(&a, 1, 0, 1);
    assert_eq!(b.flow, a.flow.reversed());
    assert_eq!(
        a.flow,
        FlowTuple::new(
            "198.18.0.2:8080".parse().expect("a"),
            "198.18.0.1:40000".parse().expect("b")
        )
    );
}

#[tokio::test]
async fn a_queue_held_briefly_costs_its_peer_nothing() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    rig.hello("hostb", "198.18.0.1", at(0.0));
    // Held one poll, then drained: neither a watch nor an unwatch.
    let a = stuck_a(2000);
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(0.0),
    );
    let mut drained = a.clone();
    drained.pos.sendq = 0;
    rig.send(
        a_sess,
        102.0,
        vec![(SampleReason::Released(None), drained)],
        at(2.0),
    );
    assert!(rig.asked("hostb").is_empty(), "B was never needed");
    assert_eq!(rig.stats().watched, 0);

    // Held three polls: B is asked at the third report (held 6 s, past
    // the threshold less 2.5 polls), not the second, and told to stop when
    // A's queue drains.
    let mut c = stuck_a(2000);
    c.cookie = 9;
    c.flow.remote.set_port(40_001);
    rig.send(
        a_sess,
        102.0,
        vec![(SampleReason::Suspect, c.clone())],
        at(2.0),
    );
    assert!(rig.asked("hostb").is_empty());
    c.unchanged_ms = 4000;
    rig.send(
        a_sess,
        104.0,
        vec![(SampleReason::Suspect, c.clone())],
        at(4.0),
    );
    assert!(rig.asked("hostb").is_empty(), "held 4 s: not yet");
    c.unchanged_ms = 6000;
    rig.send(
        a_sess,
        106.0,
        vec![(SampleReason::Suspect, c.clone())],
        at(6.0),
    );
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(c.flow.reversed())]);
    c.pos.sendq = 0;
    rig.send(
        a_sess,
        108.0,
        vec![(SampleReason::Released(None), c.clone())],
        at(8.0),
    );
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Unwatch(c.flow.reversed())]
    );
    assert_eq!(rig.stats().watched, 0);

    // An agent that has watched a queue longer than the collector (its
    // first report already held 8 s) has its peer asked at once.
    let mut d = stuck_a(8000);
    d.cookie = 10;
    d.flow.remote.set_port(40_002);
    rig.send(
        a_sess,
        110.0,
        vec![(SampleReason::Suspect, d.clone())],
        at(10.0),
    );
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(d.flow.reversed())]);

    // A peer end watched for a query: a suspect that never asked for it
    // does not take the query's claim away when it drains.
    let mut q = stuck_a(2000);
    q.cookie = 12;
    q.flow.remote.set_port(40_004);
    rig.flow(q.flow, at(10.2));
    rig.asked("hosta");
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(q.flow.reversed())]);
    rig.send(
        a_sess,
        110.5,
        vec![(SampleReason::Suspect, q.clone())],
        at(10.5),
    );
    q.pos.sendq = 0;
    rig.send(
        a_sess,
        111.0,
        vec![(SampleReason::Released(None), q)],
        at(10.8),
    );
    assert!(
        rig.asked("hostb").is_empty(),
        "the query still needs B's end"
    );

    // watch_peer_after = 0s (here from a reloaded config): every suspect's
    // peer is asked at its first report.
    rig.roles.matcher.answer(
        Question::Reload {
            threshold: THRESHOLD,
            watch_peer_after: Some(Duration::ZERO),
            max_samples: 720,
        },
        at(11.0),
    );
    let mut e = stuck_a(2000);
    e.cookie = 11;
    e.flow.remote.set_port(40_003);
    rig.send(
        a_sess,
        112.0,
        vec![(SampleReason::Suspect, e.clone())],
        at(12.0),
    );
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(e.flow.reversed())]);
}

#[tokio::test]
async fn a_peer_host_that_reconnects_is_asked_again_for_what_it_watched() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    let a = zero_window(stuck_a(6000));
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(0.0),
    );
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(a.flow.reversed())]);

    // B's agent goes and comes back while A's suspect still needs B's end.
    rig.gone(b_sess, at(1.0));
    rig.outbox.retain(|(h, _)| h != "hostb");
    rig.hello("hostb", "198.18.0.1", at(2.0));
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Watch(a.flow.reversed())],
        "the new stream must carry the watch the old one had"
    );

    // Once A's queue drains nobody needs it: B is told to stop.
    let mut drained = a.clone();
    drained.pos.sendq = 0;
    rig.send(
        a_sess,
        102.0,
        vec![(SampleReason::Released(None), drained)],
        at(3.0),
    );
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Unwatch(a.flow.reversed())]
    );
}

#[tokio::test]
async fn a_watch_request_dropped_on_a_full_queue_is_asked_again() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    rig.hello("hostb", "198.18.0.1", at(0.0));
    // Seventeen suspects towards B: its queue (16 in this rig) takes
    // sixteen watch requests, the last is dropped.
    let suspects: Vec<EndSample> = (0..17u16)
        .map(|i| {
            let mut a = zero_window(stuck_a(6000));
            a.cookie = 100 + u64::from(i);
            a.flow.remote.set_port(40_000 + i);
            a
        })
        .collect();
    let batch = suspects
        .iter()
        .map(|a| (SampleReason::Suspect, a.clone()))
        .collect();
    rig.send(a_sess, 100.0, batch, at(0.0));
    assert_eq!(rig.asked("hostb").len(), 16);
    assert_eq!(rig.roles.gateway.stats().requests_dropped, 1);

    // At A's next report the dropped one is asked again (the queue has
    // room now), and only that one: the others were queued.
    let again: Vec<(SampleReason, EndSample)> = suspects
        .iter()
        .map(|a| (SampleReason::Suspect, a.clone()))
        .collect();
    let last = suspects.last().expect("17").flow.reversed();
    rig.send(a_sess, 102.0, again.clone(), at(2.0));
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(last)]);

    // B never answers: after two of its polls (4 s) each is asked again.
    rig.send(a_sess, 104.0, again.clone(), at(4.0));
    assert!(rig.asked("hostb").is_empty(), "not before two polls");
    rig.send(a_sess, 106.0, again, at(6.0));
    assert_eq!(rig.asked("hostb").len(), 16, "the sixteen asked at 0 s");
}

#[tokio::test]
async fn a_flow_query_finds_both_ends_through_their_hosts_and_loopback_by_scan() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    // Other suspects on both hosts, so that a wrong lookup has something
    // else to find.
    let mut others = Vec::new();
    for i in 0..50u16 {
        let mut o = stuck_a(6000);
        o.cookie = 1000 + u64::from(i);
        o.flow = FlowTuple::new(
            format!("198.18.0.2:{}", 9000 + i).parse().expect("addr"),
            format!("198.18.0.1:{}", 41000 + i).parse().expect("addr"),
        );
        others.push((SampleReason::Suspect, o));
    }
    rig.send(a_sess, 99.0, others, at(0.0));
    let a = stuck_a(6000);
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(0.0),
    );
    let b = b_end(&a, 5000, 4096, 0);
    rig.send(
        b_sess,
        50.0,
        vec![(SampleReason::Watched, b.clone())],
        at(0.5),
    );
    rig.asked("hostb");

    // Asked from either side, A's end is A's suspect and B's end B's
    // watched report, each named by its host.
    for (flow, mine, theirs) in [(a.flow, &a, &b), (a.flow.reversed(), &b, &a)] {
        let view = rig.flow(flow, at(1.0));
        let (ha, sa) = view.a.expect("this end");
        let (hb, sb) = view.b.expect("the other end");
        assert_eq!((&sa, &sb), (mine, theirs), "asked for {flow}");
        let hosts = if flow == a.flow {
            ("hosta", "hostb")
        } else {
            ("hostb", "hosta")
        };
        assert_eq!((ha.as_str(), hb.as_str()), hosts);
    }
    // (A query also asks a suspect's own host to watch it: drained here.)
    rig.asked("hosta");
    assert!(rig.asked("hostb").is_empty(), "B already watches its end");

    // A flow nobody reports: each end's owner is asked to watch it.
    let quiet = FlowTuple::new(
        "198.18.0.2:7777".parse().expect("addr"),
        "198.18.0.1:47777".parse().expect("addr"),
    );
    let view = rig.flow(quiet, at(1.0));
    assert!(view.a.is_none() && view.b.is_none());
    assert_eq!(rig.asked("hosta"), vec![ToAgent::Watch(quiet)]);
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(quiet.reversed())]);

    // Loopback belongs to no announced host: found by the scan.
    let mut lo = stuck_a(2000);
    lo.cookie = 77;
    lo.flow = FlowTuple::new(
        "127.0.0.1:8080".parse().expect("addr"),
        "127.0.0.1:40000".parse().expect("addr"),
    );
    rig.send(
        a_sess,
        101.0,
        vec![(SampleReason::Suspect, lo.clone())],
        at(1.0),
    );
    let view = rig.flow(lo.flow, at(1.5));
    assert_eq!(view.a, Some(("hosta".to_string(), lo)));
}

#[tokio::test]
async fn tracked_bytes_count_the_samples_held_and_let_go_of_them() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let empty = rig.stats().tracked_bytes;
    let stuck: Vec<(SampleReason, EndSample)> = (0..200u16)
        .map(|i| {
            let mut o = stuck_a(2000);
            o.cookie = 1000 + u64::from(i);
            o.flow = FlowTuple::new(
                format!("198.18.0.2:{}", 9000 + i).parse().expect("addr"),
                format!("198.18.0.1:{}", 41000 + i).parse().expect("addr"),
            );
            (SampleReason::Suspect, o)
        })
        .collect();
    rig.send(a_sess, 100.0, stuck.clone(), at(0.0));
    // A second poll: each suspect now holds its first and latest samples.
    rig.send(a_sess, 102.0, stuck.clone(), at(2.0));
    let held = rig.stats().tracked_bytes;
    // 200 suspects, two samples of ~100 bytes and a table slot each.
    assert!(
        held - empty > 200 * 300,
        "{empty} -> {held} bytes for 200 suspects"
    );
    // Released: the samples go; the tables keep their capacity.
    let released = stuck
        .into_iter()
        .map(|(_, mut s)| {
            s.pos.sendq = 0;
            (SampleReason::Released(None), s)
        })
        .collect();
    rig.send(a_sess, 104.0, released, at(4.0));
    let after = rig.stats().tracked_bytes;
    assert_eq!(rig.stats().suspects, 0);
    assert!(
        after < held && held - after > 200 * 150,
        "{held} -> {after} bytes once released"
    );
}

/// A's hold as its agent measured it, on A's clock (seconds).
fn span(since: f64, last_held: f64, ended: f64, end: HeldEnd) -> HeldSpan {
    let d = Duration::from_secs_f64;
    HeldSpan::new(d(since), d(last_held), d(ended), end).expect("an ordered span")
}

/// A's release with its hold, as A's agent sends it.
fn released(mono_s: f64, s: EndSample, held: HeldSpan) -> AgentBatch {
    AgentBatch {
        mono: Duration::from_secs_f64(mono_s),
        samples: vec![(SampleReason::Released(Some(held)), s)],
        ..AgentBatch::default()
    }
}

/// A closed from A's agent, with its hold.
fn a_gone(a: &EndSample, held: HeldSpan) -> AgentBatch {
    AgentBatch {
        mono: held.ended,
        closed: vec![ClosedSocket {
            netns: "host".into(),
            flow: a.flow,
            cookie: a.cookie,
            held: Some(held),
        }],
        ..AgentBatch::default()
    }
}

/// A held by a peer that stopped reading, reported at A's polls 100, 102,
/// ... `last` s (its hold began at 98.1 s by A's clock, so a poll at 108
/// finds it held 9.9 s), B's end reported by B after the ask. Each batch
/// of A's arrives at `at(mono - 100)`.
async fn held_short_of_the_threshold_at_every_poll(
    rig: &mut Rig,
    a_sess: u64,
    b_sess: u64,
    last: f64,
) -> EndSample {
    let a = zero_window(stuck_a(1_900));
    let polls = [100.0, 102.0, 104.0, 106.0, 108.0];
    for (i, mono) in polls.into_iter().filter(|m| *m <= last).enumerate() {
        let s = zero_window(stuck_a(1_900 + 2_000 * i as u64));
        rig.send(
            a_sess,
            mono,
            vec![(SampleReason::Suspect, s)],
            at(mono - 100.0),
        );
        if mono == 104.0 {
            assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(a.flow.reversed())]);
            let b = b_end(&a, 5000, 4096, 0);
            rig.send(b_sess, 50.0, vec![(SampleReason::Watched, b)], at(4.6));
        }
    }
    assert!(
        rig.episodes().await.is_empty(),
        "below the threshold at every poll"
    );
    a
}

#[tokio::test]
async fn a_hold_that_reaches_the_threshold_between_polls_is_an_episode_of_its_true_length() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    let a = held_short_of_the_threshold_at_every_poll(&mut rig, a_sess, b_sess, 108.0).await;
    // The client gives up at 108.6 s: its close resets A's socket, which
    // A's follow finds gone at 108.75 s (held at 108.5). B's agent tells
    // of B's socket first: that must not make it half-open.
    rig.batch(
        b_sess,
        AgentBatch {
            mono: Duration::from_secs_f64(54.65),
            closed: vec![ClosedSocket {
                netns: "host".into(),
                flow: a.flow.reversed(),
                cookie: a.cookie + 1000,
                held: None,
            }],
            ..AgentBatch::default()
        },
        at(8.7),
    );
    let held = span(98.1, 108.5, 108.75, HeldEnd::Reset);
    rig.batch(a_sess, a_gone(&a, held), at(8.75));
    let eps = rig.episodes().await;
    assert_eq!(eps.len(), 1, "{eps:?}");
    let e = &eps[0];
    assert_eq!(
        e.diagnosis, "peer_not_reading",
        "from the held samples: {e:?}"
    );
    assert!(!e.open);
    assert_eq!(e.end_reason.as_deref(), Some("reset"));
    assert_eq!(
        e.duration_ms, 10_525,
        "98.1 s to halfway between 108.5 and 108.75"
    );
    assert_eq!(e.b_host.as_deref(), Some("hostb"));
    assert_eq!(e.evidence.get("b_recvq"), Some(&4096));
    // On the collector's clock: ended when A's agent says, started that
    // long before.
    assert_eq!(e.ended_at_ms, Some(at(8.625)));
    assert_eq!(e.started_at_ms, at(8.625) - 10_525);
    // Its samples: A's first and last held, and B's last before it went.
    let (_, samples) = rig
        .store
        .get_episode(e.id)
        .await
        .expect("read")
        .expect("kept");
    let sides: Vec<(Side, i64)> = samples.iter().map(|s| (s.side, s.at_ms)).collect();
    assert_eq!(
        sides,
        vec![(Side::A, at(0.0)), (Side::B, at(4.6)), (Side::A, at(8.0))]
    );
    let stats = rig.stats();
    assert_eq!(stats.open_episodes, 0);
    assert_eq!(stats.suspects, 0);
    assert_eq!(stats.watched, 0, "the peer is let go");
    assert_eq!(
        stats.held.by_end[HeldEnd::Reset.index()].counts[10],
        1,
        "(10, 12]"
    );
}

#[tokio::test]
async fn a_hold_that_ends_short_of_the_threshold_is_counted_by_pair_not_recorded() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    let a = held_short_of_the_threshold_at_every_poll(&mut rig, a_sess, b_sess, 106.0).await;
    // Given up at 9.5 s.
    let held = span(98.1, 107.5, 107.75, HeldEnd::Reset);
    rig.batch(a_sess, a_gone(&a, held), at(8.1));
    // And another of its holds moved on after 2 s.
    let mut c = zero_window(stuck_a(2_000));
    c.cookie = 7;
    c.flow.remote = "198.18.0.1:40001".parse().expect("addr");
    rig.send(
        a_sess,
        110.0,
        vec![(SampleReason::Suspect, c.clone())],
        at(10.0),
    );
    let moved = span(108.0, 110.0, 110.25, HeldEnd::Moved);
    c.pos.sendq = 0;
    rig.batch(a_sess, released(110.25, c, moved), at(10.25));
    assert!(rig.episodes().await.is_empty(), "no episode");
    let held = rig.stats().held;
    assert_eq!(
        held.by_end[HeldEnd::Reset.index()].counts[9],
        1,
        "(9, 10]: 9.525 s"
    );
    assert_eq!(
        held.by_end[HeldEnd::Moved.index()].counts[2],
        1,
        "(2, 3]: 2.125 s"
    );
    // The minute in progress is the matcher's; a query adds it to the
    // store's minutes. Once over, it is the store's.
    let pending = rig.held_pending(&HeldFilter::default());
    assert_eq!(pending.iter().map(|r| r.count).sum::<u64>(), 2);
    let only_c = HeldFilter {
        since_ms: None,
        host: Some("hostc".into()),
    };
    assert!(rig.held_pending(&only_c).is_empty());
    rig.roles.matcher.store_held(at(11.0), false);
    rig.store.flush().await.expect("flush");
    assert!(
        rig.store
            .list_held(HeldFilter::default())
            .await
            .expect("list")
            .is_empty(),
        "the minute is not over"
    );
    rig.roles.matcher.store_held(at(11.0) + 60_000, false);
    rig.store.flush().await.expect("flush");
    assert!(rig.held_pending(&HeldFilter::default()).is_empty());
    let rows = rig
        .store
        .list_held(HeldFilter::default())
        .await
        .expect("list");
    let got: Vec<(&str, &str, HeldEnd, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.a_host.as_str(),
                r.b_host.as_str(),
                r.end,
                r.le_ms,
                r.count,
                r.episodes,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("hosta", "hostb", HeldEnd::Moved, 3_000, 1, 0),
            ("hosta", "hostb", HeldEnd::Reset, 10_000, 1, 0),
        ]
    );
}

#[tokio::test]
async fn an_open_episode_ends_with_the_measured_length_and_how_it_went() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let a = zero_window(stuck_a(10_000));
    rig.send(
        a_sess,
        100.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(0.0),
    );
    assert!(rig.episodes().await[0].open);
    // The peer's FIN arrives with the bytes still held: closed, 12.3 s.
    let held = span(90.0, 102.25, 102.35, HeldEnd::Closed);
    let mut fin = a.clone();
    fin.state = tcpstall_common::TcpState::CloseWait;
    rig.batch(a_sess, released(102.35, fin, held), at(2.35));
    let e = &rig.episodes().await[0];
    assert!(!e.open);
    assert_eq!(e.end_reason.as_deref(), Some("closed"));
    assert_eq!(e.duration_ms, 12_300);
    let (_, samples) = rig
        .store
        .get_episode(e.id)
        .await
        .expect("read")
        .expect("kept");
    let last = unpack(&samples.last().expect("samples").sample).expect("decodes");
    assert_eq!(
        last.state,
        tcpstall_common::TcpState::CloseWait,
        "the end is its last sample"
    );
    let c = rig.stats().held.by_end[HeldEnd::Closed.index()];
    assert_eq!((c.count(), c.counts[11]), (1, 1), "(12, 15]");
}

/// A host that says hello again replaces its stream: the old stream's
/// batches still in flight are stale, and only the new one's count.
#[tokio::test]
async fn a_replaced_stream_is_heard_no_more() {
    let mut rig = Rig::new();
    let old = rig.hello("hosta", "198.18.0.2", at(0.0));
    let new = rig.hello("hosta", "198.18.0.2", at(1.0));
    assert_eq!(rig.roles.gateway.stats().agents, 1);
    let suspect = vec![(SampleReason::Suspect, stuck_a(6000))];
    rig.send(old, 100.0, suspect.clone(), at(2.0));
    assert_eq!(rig.stats().suspects, 0, "a stale stream's batch was taken");
    rig.send(new, 100.0, suspect, at(2.0));
    assert_eq!(rig.stats().suspects, 1);
    // Its end ends what it reported.
    rig.gone(new, at(3.0));
    assert_eq!(rig.stats().suspects, 0);
    assert_eq!(rig.roles.gateway.stats().agents, 0);
}

/// What B's agent says of the peer end, in the join's table below.
#[derive(Debug, Clone, Copy)]
enum BSays {
    /// Its end: its rcv_nxt, receive queue and window.
    End {
        rcv_nxt: u64,
        recvq: u32,
        rcv_wnd: u32,
    },
    /// It has no such socket.
    NoSocket,
    /// Nothing (asked, not yet answered).
    Nothing,
    /// Nobody announced B's address: no agent to ask.
    NoAgent,
}

/// The join on explicit time, row by row as docs/design.md's diagnosis
/// table reads: A's end held past the threshold (its peer asked for at 5 s,
/// the defaults' 2.5 polls before it), what B's agent says of the other
/// end, and the diagnosis the episode opens with, with its peer note.
#[tokio::test]
async fn the_join_reads_as_the_diagnosis_table() {
    use BSays::*;
    let zero_window_a = || zero_window(stuck_a(6000));
    let retransmitting_a = || {
        let mut a = stuck_a(6000);
        a.retransmits = Some(3);
        a.backoff = Some(3);
        a
    };
    #[allow(clippy::type_complexity)]
    let table: [(&str, fn() -> EndSample, BSays, &str, Option<&str>); 6] = [
        // B's queue full, its window closed: B's application is not reading.
        (
            "peer not reading",
            zero_window_a,
            End {
                rcv_nxt: 5000,
                recvq: 4096,
                rcv_wnd: 0,
            },
            "peer_not_reading",
            None,
        ),
        // B has everything A sent (rcv_nxt past A's snd_una): its ACKs are
        // lost on the way back.
        (
            "acks lost",
            retransmitting_a,
            End {
                rcv_nxt: 8000,
                recvq: 0,
                rcv_wnd: 65536,
            },
            "ack_lost",
            None,
        ),
        // B is still at A's snd_una: A's data never arrives.
        (
            "data lost",
            retransmitting_a,
            End {
                rcv_nxt: 5000,
                recvq: 0,
                rcv_wnd: 65536,
            },
            "data_lost",
            None,
        ),
        (
            "B has no such socket",
            retransmitting_a,
            NoSocket,
            "half_open",
            Some("hostb has no such socket"),
        ),
        (
            "B not heard yet",
            retransmitting_a,
            Nothing,
            "undetermined",
            Some("waiting for hostb to report"),
        ),
        (
            "no agent for B",
            retransmitting_a,
            NoAgent,
            "peer_unmonitored",
            Some("no agent covers 198.18.0.1"),
        ),
    ];
    for (row, a_end_of, b_says, want, note) in table {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let b_addr = if matches!(b_says, NoAgent) {
            "198.18.0.99"
        } else {
            "198.18.0.1"
        };
        let b_sess = rig.hello("hostb", b_addr, at(0.0));
        let mut a = a_end_of();
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        let asked = rig.asked("hostb");
        match b_says {
            NoAgent => assert!(asked.is_empty(), "{row}: nobody to ask"),
            _ => assert_eq!(
                asked,
                vec![ToAgent::Watch(a.flow.reversed())],
                "{row}: B's host asked at 5 s held"
            ),
        }
        match b_says {
            End {
                rcv_nxt,
                recvq,
                rcv_wnd,
            } => {
                let b = b_end(&a, rcv_nxt, recvq, rcv_wnd);
                rig.send(b_sess, 7.0, vec![(SampleReason::Watched, b)], at(7.0));
            }
            NoSocket => rig.batch(
                b_sess,
                AgentBatch {
                    mono: Duration::from_secs(7),
                    absent: vec![a.flow.reversed()],
                    ..AgentBatch::default()
                },
                at(7.0),
            ),
            Nothing | NoAgent => {}
        }
        a.unchanged_ms = 10_000;
        rig.send(a_sess, 110.0, vec![(SampleReason::Suspect, a)], at(10.0));
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{row}: {eps:?}");
        assert_eq!(eps[0].diagnosis, want, "{row}: {eps:?}");
        assert_eq!(eps[0].peer_note.as_deref(), note, "{row}");
        let b_host = (!matches!(b_says, NoAgent)).then_some("hostb");
        assert_eq!(eps[0].b_host.as_deref(), b_host, "{row}");
    }
}

/// A request for a host whose stream is ending (its outbound side gone,
/// its Gone not yet heard) is no drop on a full queue: it is not counted,
/// and the watch is asked of the host's next stream.
#[tokio::test]
async fn a_request_to_a_closing_stream_is_no_drop_and_is_asked_again() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    rig.hello("hostb", "198.18.0.1", at(0.0));
    // B's stream stops taking requests (its outbound task has ended).
    rig.outbox.retain(|(h, _)| h != "hostb");
    let a = stuck_a(6000);
    rig.send(
        a_sess,
        106.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(6.0),
    );
    assert_eq!(rig.roles.gateway.stats().requests_dropped, 0);
    // B is back on a new stream: the watch is asked there at once.
    rig.hello("hostb", "198.18.0.1", at(7.0));
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(a.flow.reversed())]);
}

/// B's address as two hosts announce it (every Docker host's bridge
/// address, a container network repeated, a VIP): both are asked, and the
/// one that has the socket is B — whichever said hello last.
#[tokio::test]
async fn an_address_two_hosts_announce_is_joined_with_the_host_that_has_the_socket() {
    for hosts in [["hostb", "hostc"], ["hostc", "hostb"]] {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let mut sessions = HashMap::new();
        for h in hosts {
            sessions.insert(h, rig.hello(h, "198.18.0.1", at(0.0)));
        }
        let mut a = zero_window(stuck_a(6000));
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        let watch = vec![ToAgent::Watch(a.flow.reversed())];
        assert_eq!(rig.asked("hostb"), watch, "{hosts:?}: hostb asked");
        assert_eq!(rig.asked("hostc"), watch, "{hosts:?}: hostc asked");
        // hostc has no such socket; hostb has it, its reader stopped.
        rig.batch(
            sessions["hostc"],
            AgentBatch {
                mono: Duration::from_secs(7),
                absent: vec![a.flow.reversed()],
                ..AgentBatch::default()
            },
            at(7.0),
        );
        let b = b_end(&a, 5000, 4096, 0);
        rig.send(
            sessions["hostb"],
            7.5,
            vec![(SampleReason::Watched, b)],
            at(7.5),
        );
        a.unchanged_ms = 10_000;
        rig.send(
            a_sess,
            110.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(10.0),
        );
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{hosts:?}: {eps:?}");
        assert_eq!(eps[0].diagnosis, "peer_not_reading", "{hosts:?}: {eps:?}");
        assert_eq!(eps[0].b_host.as_deref(), Some("hostb"), "{hosts:?}");
        assert_eq!(eps[0].peer_note, None, "{hosts:?}");
        // Its end lets both go.
        let mut drained = a;
        drained.pos.sendq = 0;
        rig.send(
            a_sess,
            112.0,
            vec![(SampleReason::Released(None), drained.clone())],
            at(12.0),
        );
        let unwatch = vec![ToAgent::Unwatch(drained.flow.reversed())];
        assert_eq!(rig.asked("hostb"), unwatch, "{hosts:?}");
        assert_eq!(rig.asked("hostc"), unwatch, "{hosts:?}");
        assert_eq!(rig.stats().watched, 0, "{hosts:?}");
    }
}

/// Several hosts hold B's address and none has the socket: B's end may
/// be on a host nobody asked, so that is no half-open blamed on any of
/// them but a peer not joined, with the reason. While one has not
/// answered, it is waited for.
#[tokio::test]
async fn several_hosts_without_the_socket_is_never_half_open() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    // hostc holds it in a container its agent reads.
    let c_sess = rig.hello_in("hostc", "ctr-7", &["198.18.0.1"], false, at(0.0));
    let mut a = stuck_a(6000);
    rig.send(
        a_sess,
        106.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(6.0),
    );
    let absent = |mono: u64| AgentBatch {
        mono: Duration::from_secs(mono),
        absent: vec![a.flow.reversed()],
        ..AgentBatch::default()
    };
    rig.batch(b_sess, absent(7), at(7.0));
    a.unchanged_ms = 10_000;
    rig.send(
        a_sess,
        110.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(10.0),
    );
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "undetermined", "hostc not heard: {eps:?}");
    assert_eq!(
        eps[0].peer_note.as_deref(),
        Some("waiting for hostc to report")
    );
    rig.batch(c_sess, absent(11), at(11.0));
    a.unchanged_ms = 12_000;
    rig.send(a_sess, 112.0, vec![(SampleReason::Suspect, a)], at(12.0));
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "peer_unmonitored", "{eps:?}");
    assert_eq!(
        eps[0].peer_note.as_deref(),
        Some(
            "198.18.0.1 is held by several hosts (hostb in netns host, hostc in netns ctr-7) \
             and none has the socket"
        )
    );
    assert_eq!(eps[0].b_host, None, "no host blamed");
}

/// When one of two hosts holding an address goes, the other is its only
/// owner: a later suspect asks only it, and its "no such socket" is a
/// half-open again.
#[tokio::test]
async fn an_address_left_with_one_owner_is_joined_as_before() {
    let mut rig = Rig::new();
    let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
    let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
    let c_sess = rig.hello("hostc", "198.18.0.1", at(0.0));
    rig.gone(c_sess, at(1.0));
    let mut a = stuck_a(6000);
    rig.send(
        a_sess,
        106.0,
        vec![(SampleReason::Suspect, a.clone())],
        at(6.0),
    );
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(a.flow.reversed())]);
    assert!(rig.asked("hostc").is_empty(), "hostc is gone");
    rig.batch(
        b_sess,
        AgentBatch {
            mono: Duration::from_secs(7),
            absent: vec![a.flow.reversed()],
            ..AgentBatch::default()
        },
        at(7.0),
    );
    a.unchanged_ms = 10_000;
    rig.send(a_sess, 110.0, vec![(SampleReason::Suspect, a)], at(10.0));
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "half_open", "{eps:?}");
    assert_eq!(eps[0].b_host.as_deref(), Some("hostb"));
}

// ------------------------------------------------------------ through NAT

/// A's end (the server, 198.18.0.2:8080, its queue held towards the client
/// at 198.18.0.1:40000) and what the lab would show of each translation.
mod nat {
    use super::*;
    use tcpstall_common::record::JoinedVia;
    use tcpstall_common::{Lookup, Translation};

    fn f(local: &str, remote: &str) -> FlowTuple {
        FlowTuple::new(local.parse().expect("addr"), remote.parse().expect("addr"))
    }

    fn t(original: FlowTuple, reply: FlowTuple, src_nat: bool, dst_nat: bool) -> Translation {
        Translation {
            original,
            reply,
            src_nat,
            dst_nat,
        }
    }

    /// The client's end on `flow`, not reading: `recvq` bytes read in
    /// but not by its application, and a closed window.
    fn not_reading(a: &EndSample, flow: FlowTuple) -> EndSample {
        let mut b = b_end(a, 5000, 4096, 0);
        b.flow = flow;
        b
    }

    fn via(host: &str, t: Option<&Translation>) -> Option<JoinedVia> {
        t.map(|t| JoinedVia {
            host: host.into(),
            translation: *t,
        })
    }

    fn lookup(flow: FlowTuple, tr: Option<Translation>, connected_to: Option<&str>) -> Lookup {
        Lookup {
            flow,
            translation: tr,
            connected_to: connected_to.map(|c| c.parse().expect("addr")),
            asked: false,
        }
    }

    fn absent_with(rig: &mut Rig, sess: u64, mono: f64, l: Lookup, now: i64) {
        rig.batch(
            sess,
            AgentBatch {
                mono: Duration::from_secs_f64(mono),
                absent: vec![l.flow],
                lookups: vec![l],
                ..AgentBatch::default()
            },
            now,
        );
    }

    fn open_after(rig: &mut Rig, sess: u64, mut a: EndSample) {
        a.unchanged_ms = 10_000;
        rig.send(sess, 110.0, vec![(SampleReason::Suspect, a)], at(10.0));
    }

    /// A port-forward on A's own host (hostA:80 -> A's 8080): A's sample
    /// carries the entry, and the client is asked for its own 4-tuple,
    /// towards port 80, never for the reversed one it does not have.
    #[tokio::test]
    async fn a_translation_on_the_suspects_host_asks_the_peer_for_its_own_tuple() {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
        let mut a = zero_window(stuck_a(6000));
        let b_flow = f("198.18.0.1:40000", "198.18.0.2:80");
        a.translation = Some(Box::new(t(b_flow, a.flow, false, true)));
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(b_flow)]);
        let b = not_reading(&a, b_flow);
        rig.send(b_sess, 7.0, vec![(SampleReason::Watched, b)], at(7.0));
        open_after(&mut rig, a_sess, a);
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].diagnosis, "peer_not_reading", "{eps:?}");
        assert_eq!(eps[0].b_host.as_deref(), Some("hostb"));
        assert_eq!(rig.stats().joined_via_translation, 0, "joined at once");
        assert_eq!(
            eps[0].via,
            via(
                "hosta",
                Some(&t(
                    b_flow,
                    f("198.18.0.2:8080", "198.18.0.1:40000"),
                    false,
                    true
                ))
            )
        );
    }

    /// A service address on the client's host (kube-proxy's shape): the
    /// client has no socket for the server's tuple reversed, but its
    /// conntrack maps it to the socket it has, towards the service
    /// address; the collector watches that one instead — a join, never a
    /// half-open.
    #[tokio::test]
    async fn a_dnat_on_the_peers_host_is_followed_to_the_socket_it_holds() {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
        let a = zero_window(stuck_a(6000));
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        let w = a.flow.reversed();
        assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(w)]);
        let vip = f("198.18.0.1:40000", "10.96.0.10:80");
        let entry = t(vip, a.flow, false, true);
        absent_with(&mut rig, b_sess, 7.0, lookup(w, Some(entry), None), at(7.0));
        assert_eq!(
            rig.asked("hostb"),
            vec![ToAgent::Unwatch(w), ToAgent::Watch(vip)],
            "the socket the translation points at, on the host that holds its address"
        );
        let b = not_reading(&a, vip);
        rig.send(b_sess, 8.0, vec![(SampleReason::Watched, b)], at(8.0));
        // The flow query shows the end the client has, towards the service.
        let view = rig.flow(a.flow, at(8.5));
        assert_eq!(
            view.b.map(|(h, s)| (h, s.flow)),
            Some(("hostb".to_string(), vip))
        );
        open_after(&mut rig, a_sess, a);
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].diagnosis, "peer_not_reading", "{eps:?}");
        assert_eq!(eps[0].b_host.as_deref(), Some("hostb"));
        assert_eq!(rig.stats().joined_via_translation, 1);
        assert_eq!(
            eps[0].via,
            via("hostb", Some(&entry)),
            "named where it was found"
        );
    }

    /// The client's socket talks to a third address (a gateway without an
    /// agent rewrote it): the server's peer is not lost, it is out of
    /// sight — peer_unmonitored with that reason, never half_open.
    #[tokio::test]
    async fn a_translation_nobody_here_holds_is_unmonitored_not_half_open() {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
        let a = zero_window(stuck_a(6000));
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        let w = a.flow.reversed();
        absent_with(
            &mut rig,
            b_sess,
            7.0,
            lookup(w, None, Some("203.0.113.1:80")),
            at(7.0),
        );
        open_after(&mut rig, a_sess, a);
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].diagnosis, "peer_unmonitored", "{eps:?}");
        let note = eps[0].peer_note.clone().unwrap_or_default();
        assert!(
            note.contains("translated by a host without an agent")
                && note.contains("203.0.113.1:80"),
            "{note}"
        );
    }

    /// The same client behind a gateway that runs an agent: the gateway,
    /// which owns the address the client talks to, is asked to look that
    /// connection up, its DNAT entry joins it to the server's, and the
    /// client's socket is the peer.
    #[tokio::test]
    async fn a_gateway_with_an_agent_confirms_the_socket_on_the_peers_endpoint() {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
        let g_sess = rig.hello_as("gateway", &["203.0.113.1"], true, at(0.0));
        let a = zero_window(stuck_a(6000));
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        let w = a.flow.reversed();
        absent_with(
            &mut rig,
            b_sess,
            7.0,
            lookup(w, None, Some("203.0.113.1:80")),
            at(7.0),
        );
        let via_gw = f("198.18.0.1:40000", "203.0.113.1:80");
        assert_eq!(rig.asked("gateway"), vec![ToAgent::Translate(via_gw)]);
        let entry = t(via_gw, a.flow, false, true);
        rig.batch(
            g_sess,
            AgentBatch {
                mono: Duration::from_secs(7),
                lookups: vec![Lookup {
                    asked: true,
                    ..lookup(via_gw, Some(entry), None)
                }],
                ..AgentBatch::default()
            },
            at(7.2),
        );
        assert_eq!(
            rig.asked("hostb"),
            vec![
                ToAgent::Watch(w),
                ToAgent::Unwatch(w),
                ToAgent::Watch(via_gw)
            ]
        );
        let b = not_reading(&a, via_gw);
        rig.send(b_sess, 8.0, vec![(SampleReason::Watched, b)], at(8.0));
        open_after(&mut rig, a_sess, a);
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].diagnosis, "peer_not_reading", "{eps:?}");
        assert_eq!(eps[0].b_host.as_deref(), Some("hostb"));
        assert_eq!(eps[0].via, via("gateway", Some(&entry)));
    }

    /// A client dials an address no agent owns (a service address a router
    /// translates): the forwarding hosts are asked, and the one holding
    /// the translation leads to the server's end.
    #[tokio::test]
    async fn an_address_nobody_owns_is_asked_of_the_forwarding_hosts() {
        let mut rig = Rig::new();
        let a_sess = rig.hello("client", "198.18.0.1", at(0.0));
        let s_sess = rig.hello("server", "198.18.0.2", at(0.0));
        let g_sess = rig.hello_as("router", &["198.18.9.1"], true, at(0.0));
        let _quiet = rig.hello_as("bystander", &["198.18.9.2"], false, at(0.0));
        // The client's queue held towards 10.96.0.10:80, nobody's.
        let mut a = zero_window(stuck_a(6000));
        a.flow = f("198.18.0.1:40000", "10.96.0.10:80");
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        assert_eq!(rig.asked("router"), vec![ToAgent::Translate(a.flow)]);
        assert!(rig.asked("bystander").is_empty(), "only hosts that forward");
        let server = f("198.18.0.2:8080", "198.18.0.1:40000");
        let entry = t(a.flow, server, false, true);
        rig.batch(
            g_sess,
            AgentBatch {
                mono: Duration::from_secs(7),
                lookups: vec![Lookup {
                    asked: true,
                    ..lookup(a.flow, Some(entry), None)
                }],
                ..AgentBatch::default()
            },
            at(7.0),
        );
        assert_eq!(rig.asked("server"), vec![ToAgent::Watch(server)]);
        let b = not_reading(&a, server);
        rig.send(s_sess, 8.0, vec![(SampleReason::Watched, b)], at(8.0));
        open_after(&mut rig, a_sess, a);
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].diagnosis, "peer_not_reading", "{eps:?}");
        assert_eq!(eps[0].b_host.as_deref(), Some("server"));
        assert_eq!(eps[0].via, via("router", Some(&entry)));
    }

    /// Forwarding hosts that do not hold the flow say so (or keep quiet
    /// past their patience): then, and only then, the peer is what the
    /// direct join found — here, no agent covers its address.
    #[tokio::test]
    async fn forwarding_hosts_without_the_flow_leave_the_verdict_to_the_direct_join() {
        let mut rig = Rig::new();
        let a_sess = rig.hello("client", "198.18.0.1", at(0.0));
        let g_sess = rig.hello_as("router", &["198.18.9.1"], true, at(0.0));
        let mut a = zero_window(stuck_a(6000));
        a.flow = f("198.18.0.1:40000", "10.96.0.10:80");
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        assert_eq!(rig.asked("router"), vec![ToAgent::Translate(a.flow)]);
        rig.batch(
            g_sess,
            AgentBatch {
                mono: Duration::from_secs(7),
                lookups: vec![Lookup {
                    asked: true,
                    ..lookup(a.flow, None, None)
                }],
                ..AgentBatch::default()
            },
            at(7.0),
        );
        open_after(&mut rig, a_sess, a);
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].diagnosis, "peer_unmonitored", "{eps:?}");
        assert_eq!(
            eps[0].peer_note.as_deref(),
            Some("no agent covers 10.96.0.10")
        );
    }

    /// The client's socket is gone (killed) behind its host's DNAT: the
    /// entry leads to the socket it had, which its host no longer has — a
    /// real half-open still reads half_open.
    #[tokio::test]
    async fn a_real_half_open_behind_a_dnat_reads_half_open() {
        let mut rig = Rig::new();
        let a_sess = rig.hello("hosta", "198.18.0.2", at(0.0));
        let b_sess = rig.hello("hostb", "198.18.0.1", at(0.0));
        let a = zero_window(stuck_a(6000));
        rig.send(
            a_sess,
            106.0,
            vec![(SampleReason::Suspect, a.clone())],
            at(6.0),
        );
        let w = a.flow.reversed();
        let vip = f("198.18.0.1:40000", "10.96.0.10:80");
        let entry = t(vip, a.flow, false, true);
        absent_with(&mut rig, b_sess, 7.0, lookup(w, Some(entry), None), at(7.0));
        rig.batch(
            b_sess,
            AgentBatch {
                mono: Duration::from_secs(8),
                absent: vec![vip],
                ..AgentBatch::default()
            },
            at(8.0),
        );
        open_after(&mut rig, a_sess, a);
        let eps = rig.episodes().await;
        assert_eq!(eps.len(), 1, "{eps:?}");
        assert_eq!(eps[0].diagnosis, "half_open", "{eps:?}");
        assert_eq!(eps[0].b_host.as_deref(), Some("hostb"));
    }
}

/// Fleet mode (issue 24): a node that takes a partition over adopts the
/// episodes its previous owner left open. A stall it finds again keeps the
/// stored id and start although this node computes another start (its
/// agent's first sample here is later, on another clock offset); one it
/// does not find again is ended as a restart's are, when last known open.
#[tokio::test]
async fn a_partition_taken_over_keeps_its_open_episodes_and_ends_those_not_found_again() {
    let mut first = Rig::new();
    first.roles.matcher.number_by_identity();
    let a_sess = first.hello("hosta", "198.18.0.2", at(0.0));
    let mut kept = stuck_a(10_000);
    kept.cookie = 41;
    let mut lost = stuck_a(10_000);
    lost.cookie = 42;
    lost.flow.local = "198.18.0.2:9999".parse().expect("addr");
    first.send(
        a_sess,
        100.0,
        vec![
            (SampleReason::Suspect, kept.clone()),
            (SampleReason::Suspect, lost.clone()),
        ],
        at(10.0),
    );
    let stored = first.episodes().await;
    assert_eq!(stored.len(), 2, "{stored:#?}");
    let of = |eps: &[EpisodeRow], cookie: u64| {
        eps.iter()
            .find(|e| e.a_cookie == cookie)
            .cloned()
            .expect("its episode")
    };
    let kept_row = of(&stored, 41);
    assert_eq!(
        kept_row.id,
        tcpstall_collector::store::episode_id_of(
            kept.flow.key(),
            kept_row.started_at_ms.div_euclid(1000) * 1000
        ),
        "numbered by identity"
    );

    // The next owner: the same host in a new session on another node, its
    // first sample of the stall 3.7 s later saying it has been held 12.5 s
    // (the start it computes is 1.2 s off: another second, another id).
    let mut next = first.sharing();
    next.roles.matcher.adopt(stored.clone());
    let s2 = next.hello("hosta", "198.18.0.2", at(13.7));
    let mut again = kept.clone();
    again.unchanged_ms = 12_500;
    next.send(
        s2,
        103.0,
        vec![(SampleReason::Suspect, again.clone())],
        at(13.7),
    );
    assert_eq!(next.roles.matcher.end_unclaimed(), 1, "the lost stall's");
    // The stall drains: the stored episode ends, under its id.
    let mut drained = again;
    drained.pos.sendq = 0;
    next.send(s2, 104.0, vec![(SampleReason::Suspect, drained)], at(14.7));
    let now = next.episodes().await;
    assert_eq!(now.len(), 2, "nothing stored anew: {now:#?}");
    let kept_now = of(&now, 41);
    assert_eq!(kept_now.id, kept_row.id);
    assert_eq!(kept_now.started_at_ms, kept_row.started_at_ms);
    assert!(!kept_now.open, "ended by the next owner: {kept_now:#?}");
    let lost_now = of(&now, 42);
    assert!(!lost_now.open);
    assert_eq!(lost_now.end_reason.as_deref(), Some("collector_restart"));
    let lost_then = of(&stored, 42);
    assert_eq!(
        lost_now.ended_at_ms,
        Some(lost_then.started_at_ms + lost_then.duration_ms as i64),
        "when it was last known open"
    );
}
