//! Addresses that change after an agent said hello (issue 23): an agent's
//! announcement replaces what its host owns, on its current stream only;
//! a suspect seen before the change finds its peer's new owner at its next
//! sample (and lets a former one go). The gateway and the matcher on
//! explicit time with a real SQLite store, pumped by hand.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tcpstall_collector::gateway::{AgentClock, Input};
use tcpstall_collector::inprocess::InProcess;
use tcpstall_collector::matcher::Stats;
use tcpstall_collector::messages::{HostId, ToMatcher};
use tcpstall_collector::store::{EpisodeFilter, EpisodeRow, SharedStore, SqliteStore, StoreConfig};
use tcpstall_common::{
    AgentBatch, EndSample, HostHello, NamespaceAddresses, SampleReason, TimerKind, ToAgent,
};
use tokio::sync::{mpsc, oneshot};

mod support;
use support::{a_end, b_end};

const THRESHOLD: Duration = Duration::from_secs(10);
const T0: i64 = 1_800_000_000_000;

fn at(s: f64) -> i64 {
    T0 + (s * 1000.0) as i64
}

fn ips(addrs: &[&str]) -> Vec<IpAddr> {
    addrs.iter().map(|a| a.parse().expect("ip")).collect()
}

/// Hosts over the gateway and the matcher, as the streams drive them.
struct Rig {
    roles: InProcess,
    store: SharedStore,
    _dir: tempfile::TempDir,
    outbox: Vec<(String, mpsc::Receiver<ToAgent>)>,
    session: u64,
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

    /// A stream of `host`'s agent saying hello with `addrs`; its session.
    fn hello(&mut self, host: &str, addrs: &[&str], now: i64) -> u64 {
        self.session += 1;
        let (tx, rx) = mpsc::channel(16);
        let (reply, mut res) = oneshot::channel();
        let hello = HostHello {
            host: host.into(),
            machine_id: None,
            agent_version: "t".into(),
            kernel: "6.18".into(),
            boot_id: "b".into(),
            namespaces: NamespaceAddresses::one("host", ips(addrs)),
            interval: Duration::from_secs(2),
            answers_lookups: false,
            forwards: false,
            probes: Default::default(),
        };
        let input = Input::Hello {
            session: self.session,
            hello: Box::new(hello),
            peer: None,
            tx,
            reply,
        };
        self.roles.gateway.handle(input, now);
        self.roles.pump(now);
        let id = res.try_recv().expect("answered").expect("accepted");
        self.streams
            .insert(self.session, (id, AgentClock::default()));
        self.outbox.push((host.into(), rx));
        self.session
    }

    /// An announcement on `session`'s stream, as the stream hands it on.
    fn announce(&mut self, session: u64, addrs: &[&str], now: i64) {
        let (host, _) = self.streams[&session];
        let msg = ToMatcher::Addresses {
            host,
            session,
            addresses: NamespaceAddresses::one("host", ips(addrs)),
        };
        self.roles.matcher.handle(msg, now);
        self.roles.pump(now);
    }

    fn send(
        &mut self,
        session: u64,
        mono_s: f64,
        samples: Vec<(SampleReason, EndSample)>,
        now: i64,
    ) {
        let (host, clock) = self.streams.get_mut(&session).expect("a stream");
        let batch = AgentBatch {
            mono: Duration::from_secs_f64(mono_s),
            connections: 100,
            samples,
            ..AgentBatch::default()
        };
        let msg = ToMatcher::Batch {
            host: *host,
            session,
            taken_ms: clock.taken_ms(batch.mono, now),
            batch,
        };
        self.roles.matcher.handle(msg, now);
        self.roles.pump(now);
    }

    fn asked(&mut self, host: &str) -> Vec<ToAgent> {
        let mut out = Vec::new();
        for (_, rx) in self.outbox.iter_mut().filter(|(h, _)| h == host) {
            while let Ok(m) = rx.try_recv() {
                out.push(m);
            }
        }
        out
    }

    fn stats(&self) -> Stats {
        self.roles.matcher.stats()
    }

    async fn episodes(&self) -> Vec<EpisodeRow> {
        self.store.flush().await.expect("flush");
        self.store
            .list_episodes(EpisodeFilter::default())
            .await
            .expect("list")
    }
}

/// A's end, stuck towards B's 198.18.0.1 with a closed window, held
/// `unchanged_ms`.
fn stuck(unchanged_ms: u64) -> EndSample {
    let mut a = a_end(1, 5000, 3000);
    a.unchanged_ms = unchanged_ms;
    a.pos.snd_wnd = Some(0);
    a.pos.notsent = Some(a.pos.sendq);
    a.pos.inflight = Some(0);
    a.pos.snd_nxt = a.pos.snd_una;
    a.timer = Some(TimerKind::ZeroWindowProbe);
    a
}

fn suspect(unchanged_ms: u64) -> Vec<(SampleReason, EndSample)> {
    vec![(SampleReason::Suspect, stuck(unchanged_ms))]
}

/// B's address is announced after A's stall was opened as "no agent covers
/// it" (an SNAT address added, a VIP moved to hostb): at A's next sample
/// hostb is asked for the peer, and once it reports the episode is joined
/// and diagnosed from both ends.
#[tokio::test]
async fn an_address_announced_later_moves_an_unmonitored_peer_to_joined() {
    let mut rig = Rig::new();
    let a = rig.hello("hosta", &["198.18.0.2"], at(0.0));
    let b = rig.hello("hostb", &["198.18.0.50"], at(0.0));
    for (i, held) in [2000, 4000, 6000, 8000, 10_000].into_iter().enumerate() {
        let t = 2.0 * i as f64;
        rig.send(a, 100.0 + t, suspect(held), at(t));
    }
    let eps = rig.episodes().await;
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert_eq!(eps[0].diagnosis, "peer_unmonitored");
    assert_eq!(
        eps[0].peer_note.as_deref(),
        Some("no agent covers 198.18.0.1")
    );
    assert!(rig.asked("hostb").is_empty(), "nobody to ask yet");

    rig.announce(b, &["198.18.0.50", "198.18.0.1", "127.0.0.1"], at(9.0));
    assert_eq!(rig.stats().addresses_applied, 1);
    // A's next sample finds the new owner and asks it (A is past the
    // moment its peer is asked).
    rig.send(a, 110.0, suspect(12_000), at(10.0));
    let flow = stuck(0).flow;
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(flow.reversed())]);
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "undetermined", "waiting for hostb");
    // B reports its end: the reader stopped. The episode hears it at once.
    let b_sample = b_end(&stuck(0), 5000, 4096, 0);
    rig.send(b, 50.0, vec![(SampleReason::Watched, b_sample)], at(10.5));
    let eps = rig.episodes().await;
    assert_eq!(eps.len(), 1, "still one episode: {eps:?}");
    assert_eq!(eps[0].diagnosis, "peer_not_reading", "{eps:?}");
    assert_eq!(eps[0].b_host.as_deref(), Some("hostb"));
    assert_eq!(eps[0].peer_note, None);
    // Its end lets the new peer go.
    let mut drained = stuck(0);
    drained.pos.sendq = 0;
    rig.send(
        a,
        112.0,
        vec![(SampleReason::Released(None), drained)],
        at(12.0),
    );
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Unwatch(flow.reversed())]);
    assert_eq!(rig.stats().watched, 0);
}

/// An address announced before the stall is simply its owner's: the
/// suspect's peer is found at its first sample, as with a Hello's.
#[tokio::test]
async fn an_address_announced_before_the_stall_is_joined_as_a_hellos() {
    let mut rig = Rig::new();
    let a = rig.hello("hosta", &["198.18.0.2"], at(0.0));
    let b = rig.hello("hostb", &["198.18.0.50"], at(0.0));
    rig.announce(b, &["198.18.0.50", "198.18.0.1"], at(0.5));
    rig.send(a, 106.0, suspect(6000), at(6.0));
    assert_eq!(
        rig.asked("hostb"),
        vec![ToAgent::Watch(stuck(0).flow.reversed())]
    );
}

/// An address its host no longer has is no longer its: a suspect asking
/// it lets it go at its next sample, and is told nobody covers the peer;
/// a new suspect does not ask it at all.
#[tokio::test]
async fn a_removed_address_drops_its_owner() {
    let mut rig = Rig::new();
    let a = rig.hello("hosta", &["198.18.0.2"], at(0.0));
    let b = rig.hello("hostb", &["198.18.0.1", "198.18.0.50"], at(0.0));
    rig.send(a, 106.0, suspect(6000), at(6.0));
    let flow = stuck(0).flow;
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(flow.reversed())]);
    rig.announce(b, &["198.18.0.50"], at(7.0));
    rig.send(a, 110.0, suspect(10_000), at(10.0));
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Unwatch(flow.reversed())]);
    assert_eq!(rig.stats().watched, 0);
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "peer_unmonitored", "{eps:?}");
    assert_eq!(eps[0].b_host, None);

    // A new stall towards the address: nobody is asked.
    let mut other = stuck(6000);
    other.flow.local.set_port(8081);
    other.cookie = 2;
    rig.send(a, 112.0, vec![(SampleReason::Suspect, other)], at(12.0));
    assert!(rig.asked("hostb").is_empty());
}

/// A VIP moves from hostb to hostc (keepalived): each announces; the
/// suspect lets hostb go and asks hostc.
#[tokio::test]
async fn a_moved_vip_is_asked_of_its_new_holder() {
    let mut rig = Rig::new();
    let a = rig.hello("hosta", &["198.18.0.2"], at(0.0));
    let b = rig.hello("hostb", &["198.18.0.1", "198.18.0.51"], at(0.0));
    let c = rig.hello("hostc", &["198.18.0.52"], at(0.0));
    rig.send(a, 106.0, suspect(6000), at(6.0));
    let flow = stuck(0).flow;
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(flow.reversed())]);
    rig.announce(b, &["198.18.0.51"], at(7.0));
    rig.announce(c, &["198.18.0.52", "198.18.0.1"], at(7.1));
    rig.send(a, 108.0, suspect(8000), at(8.0));
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Unwatch(flow.reversed())]);
    assert_eq!(rig.asked("hostc"), vec![ToAgent::Watch(flow.reversed())]);
    // Once is enough: the next sample asks nothing new.
    rig.send(a, 110.0, suspect(10_000), at(10.0));
    assert!(rig.asked("hostb").is_empty());
    assert!(rig.asked("hostc").is_empty());
    assert_eq!(rig.stats().addresses_applied, 2);
}

/// An announcement that comes on a stream its host has replaced (an old
/// connection's last words) is ignored, counted as stale: the host owns
/// what its current stream says.
#[tokio::test]
async fn an_announcement_on_a_replaced_stream_is_ignored() {
    let mut rig = Rig::new();
    let a = rig.hello("hosta", &["198.18.0.2"], at(0.0));
    let old = rig.hello("hostb", &["198.18.0.50"], at(0.0));
    let _new = rig.hello("hostb", &["198.18.0.50"], at(1.0));
    rig.announce(old, &["198.18.0.50", "198.18.0.1"], at(2.0));
    let stats = rig.stats();
    assert_eq!((stats.addresses_applied, stats.addresses_stale), (0, 1));
    rig.send(a, 106.0, suspect(6000), at(6.0));
    assert!(rig.asked("hostb").is_empty(), "hostb does not own it");
}

/// A host that goes away keeps its place among a suspect's peers while an
/// announcement elsewhere moves the owners (it said nothing of its own
/// addresses since): "waiting for hostb", never "no agent covers".
#[tokio::test]
async fn a_host_away_keeps_its_place_when_other_owners_change() {
    let mut rig = Rig::new();
    let a = rig.hello("hosta", &["198.18.0.2"], at(0.0));
    let b = rig.hello("hostb", &["198.18.0.1"], at(0.0));
    let c = rig.hello("hostc", &["198.18.0.52"], at(0.0));
    rig.send(a, 106.0, suspect(6000), at(6.0));
    let flow = stuck(0).flow;
    assert_eq!(rig.asked("hostb"), vec![ToAgent::Watch(flow.reversed())]);
    rig.roles
        .gateway
        .handle(Input::Gone { session: b }, at(7.0));
    rig.roles.pump(at(7.0));
    rig.announce(c, &["198.18.0.52", "198.18.0.53"], at(7.5));
    rig.send(a, 110.0, suspect(10_000), at(10.0));
    let eps = rig.episodes().await;
    assert_eq!(eps[0].diagnosis, "undetermined", "{eps:?}");
    assert_eq!(
        eps[0].peer_note.as_deref(),
        Some("waiting for hostb to report")
    );
    assert!(rig.asked("hostc").is_empty());
}
