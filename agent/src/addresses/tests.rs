//! Byte-exact tests of the address notifications as the kernel sends them
//! (`RTM_NEWADDR`/`RTM_DELADDR`: nlmsghdr, ifaddrmsg, attributes), and of
//! what the keeper makes of a listing.

use std::net::Ipv6Addr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// `ip addr add 198.18.0.7/24 dev eth0` as the kernel tells it:
/// RTM_NEWADDR with IFA_ADDRESS, IFA_LOCAL, IFA_LABEL and IFA_FLAGS.
#[rustfmt::skip]
const NEW_V4: [u8; 60] = [
    // nlmsghdr: length 60, type RTM_NEWADDR (20), no flags, seq 0, port 0
    // (a notification, not an answer).
    60, 0, 0, 0,  20, 0,  0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
    // ifaddrmsg: AF_INET, prefix 24, IFA_F_PERMANENT, scope universe,
    // interface index 2.
    2, 24, 0x80, 0,  2, 0, 0, 0,
    // IFA_ADDRESS 198.18.0.7.
    8, 0, 1, 0,  198, 18, 0, 7,
    // IFA_LOCAL 198.18.0.7.
    8, 0, 2, 0,  198, 18, 0, 7,
    // IFA_LABEL "eth0" with its NUL, padded to four bytes.
    9, 0, 3, 0,  b'e', b't', b'h', b'0',  0, 0, 0, 0,
    // IFA_FLAGS IFA_F_PERMANENT.
    8, 0, 8, 0,  0x80, 0, 0, 0,
];

/// The local end of a point-to-point link (`ip addr add 198.18.0.7 peer
/// 198.18.0.9 dev tun0`): IFA_ADDRESS is the peer's, IFA_LOCAL ours.
#[rustfmt::skip]
const NEW_PEER: [u8; 40] = [
    // nlmsghdr: length 40, RTM_NEWADDR.
    40, 0, 0, 0,  20, 0,  0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
    // ifaddrmsg: AF_INET, prefix 32, IFA_F_PERMANENT, universe, index 5.
    2, 32, 0x80, 0,  5, 0, 0, 0,
    // IFA_ADDRESS 198.18.0.9 (the peer), IFA_LOCAL 198.18.0.7.
    8, 0, 1, 0,  198, 18, 0, 9,
    8, 0, 2, 0,  198, 18, 0, 7,
];

/// `ip addr del fd00::7/64 dev eth0`: RTM_DELADDR with IFA_ADDRESS only
/// (IPv6 sends no IFA_LOCAL) and IFA_CACHEINFO.
#[rustfmt::skip]
const DEL_V6: [u8; 64] = [
    // nlmsghdr: length 64, type RTM_DELADDR (21).
    64, 0, 0, 0,  21, 0,  0, 0,  0, 0, 0, 0,  0, 0, 0, 0,
    // ifaddrmsg: AF_INET6, prefix 64, IFA_F_PERMANENT, universe, index 2.
    10, 64, 0x80, 0,  2, 0, 0, 0,
    // IFA_ADDRESS fd00::7.
    20, 0, 1, 0,  0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7,
    // IFA_CACHEINFO: preferred and valid forever, created 100, updated 200
    // (hundredths of a second since boot).
    20, 0, 6, 0,  0xff, 0xff, 0xff, 0xff,  0xff, 0xff, 0xff, 0xff,
                  100, 0, 0, 0,  200, 0, 0, 0,
];

/// NLMSG_DONE: not an address message.
#[rustfmt::skip]
const DONE: [u8; 20] = [
    20, 0, 0, 0,  3, 0,  2, 0,  0, 0, 0, 0,  0, 0, 0, 0,
    0, 0, 0, 0,
];

#[test]
fn an_added_ipv4_address() {
    let got = parse_events(&NEW_V4);
    assert_eq!(
        got,
        Events {
            changes: vec![AddressEvent {
                change: Change::New,
                index: 2,
                addr: Some(ip("198.18.0.7")),
            }],
            malformed: None,
        }
    );
    assert!(got.stale());
}

#[test]
fn a_point_to_point_address_is_the_local_one() {
    let got = parse_events(&NEW_PEER);
    assert_eq!(got.changes.len(), 1, "{got:?}");
    assert_eq!(got.changes[0].addr, Some(ip("198.18.0.7")));
    assert_eq!(got.changes[0].index, 5);
}

#[test]
fn a_removed_ipv6_address_and_two_messages_in_one_datagram() {
    let got = parse_events(&DEL_V6);
    assert_eq!(
        got.changes,
        vec![AddressEvent {
            change: Change::Del,
            index: 2,
            addr: Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7))),
        }]
    );
    let both: Vec<u8> = NEW_V4.iter().chain(DEL_V6.iter()).copied().collect();
    let got = parse_events(&both);
    let changes: Vec<Change> = got.changes.iter().map(|e| e.change).collect();
    assert_eq!(changes, [Change::New, Change::Del]);
    assert_eq!(got.malformed, None);
}

#[test]
fn other_messages_say_nothing_changed() {
    let got = parse_events(&DONE);
    assert_eq!(got, Events::default());
    assert!(!got.stale());
    assert!(!parse_events(&[]).stale());
}

/// Any bytes give a value; what cannot be read makes the namespace stale
/// (the datagram may have said an address changed).
#[test]
fn cut_or_garbled_notifications_are_read_as_stale_never_a_panic() {
    for cut in 1..NEW_V4.len() {
        let got = parse_events(&NEW_V4[..cut]);
        assert!(got.malformed.is_some(), "cut at {cut}: {got:?}");
        assert!(got.stale());
    }
    // A length that claims less than a header.
    let mut short = NEW_V4;
    short[0] = 4;
    assert!(parse_events(&short).stale());
    // A good message, then a cut one: the first is kept.
    let mut both: Vec<u8> = NEW_V4.to_vec();
    both.extend_from_slice(&DEL_V6[..30]);
    let got = parse_events(&both);
    assert_eq!(got.changes.len(), 1);
    assert!(got.malformed.is_some());
    // Noise of every length and pattern.
    for n in 0..200usize {
        let noise: Vec<u8> = (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let _ = parse_events(&noise);
    }
}

#[test]
fn a_burst_is_gathered_for_a_tenth_of_a_second_never_more_than_half_a_poll() {
    let ms = Duration::from_millis;
    assert_eq!(gather(Duration::from_secs(2)), ms(100));
    assert_eq!(gather(ms(500)), ms(100));
    assert_eq!(gather(ms(100)), ms(50));
}

#[test]
fn stale_marks_are_taken_once_and_blind_namespaces_marked_together() {
    let s = Shared::new(3);
    assert!(s.take().is_empty());
    s.mark(2);
    s.mark(0);
    s.mark(2);
    s.mark(9); // out of range: ignored
    assert_eq!(s.take(), vec![0, 2]);
    assert!(s.take().is_empty());
    assert!(!s.any_blind());
    s.go_blind(1);
    assert!(s.any_blind());
    assert_eq!(s.take(), vec![1], "going blind lists it at once");
    s.mark_blind();
    assert_eq!(s.take(), vec![1]);
}

fn keeper(lists: &[&[&str]]) -> Keeper {
    let namespaces: Vec<Netns> = (0..lists.len())
        .map(|i| Netns {
            label: format!("ns{i}"),
            inode: i as u64 + 1,
            path: None,
        })
        .collect();
    let current = namespaces
        .iter()
        .zip(lists)
        .map(|(ns, l)| NamespaceAddresses {
            label: ns.label.clone(),
            inode: ns.inode,
            addresses: l.iter().map(|a| ip(a)).collect(),
        })
        .collect();
    Keeper {
        shared: Arc::new(Shared::new(namespaces.len())),
        namespaces,
        current,
        gather: GATHER,
        every: Duration::from_secs(2),
        _readers: JoinSet::new(),
    }
}

#[test]
fn a_listing_that_changed_something_is_published_and_a_failed_one_keeps_the_last() {
    let mut k = keeper(&[&["127.0.0.1", "198.18.0.1"], &["198.18.0.2"]]);
    // The same again: nothing to announce.
    let same = vec![(1, Ok(vec![ip("198.18.0.2")]))];
    assert!(!k.apply(same));
    // One namespace gains an address: changed, the other untouched.
    let more = vec![(1, Ok(vec![ip("198.18.0.2"), ip("198.18.0.3")]))];
    assert!(k.apply(more));
    assert_eq!(k.current[1].addresses, [ip("198.18.0.2"), ip("198.18.0.3")]);
    assert_eq!(k.current[0].addresses, [ip("127.0.0.1"), ip("198.18.0.1")]);
    // A namespace that cannot be listed keeps what it had.
    let gone = Netns {
        label: "gone".into(),
        inode: 99,
        path: Some("/run/netns/tcpstall-no-such-ns-a3".into()),
    };
    let failed = hello::addresses(&gone).map(|_| Vec::new());
    assert!(failed.is_err());
    assert!(!k.apply(vec![(0, failed), (7, Ok(Vec::new()))]));
    assert_eq!(k.current[0].addresses, [ip("127.0.0.1"), ip("198.18.0.1")]);
    // A removal is a change.
    assert!(k.apply(vec![(0, Ok(vec![ip("127.0.0.1")]))]));
    assert_eq!(k.current[0].label, "ns0");
    assert_eq!(k.current[0].inode, 1);
}

/// In this process's own namespace (no privilege needed to listen): the
/// first list is every address `getifaddrs` sees, and the keeper stops
/// when its last receiver goes.
#[tokio::test]
async fn following_the_own_namespace_starts_from_its_addresses() {
    let ns = netns::current().expect("own namespace");
    let rx = follow(vec![ns.clone()], Duration::from_millis(200))
        .await
        .expect("follow");
    let now = rx.borrow().clone();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].inode, ns.inode);
    assert_eq!(now[0].label, ns.label);
    assert_eq!(
        now[0].addresses,
        hello::addresses(&ns).expect("addresses"),
        "the listing the Hello made"
    );
    drop(rx);
}
