//! Byte-exact tests of the ctnetlink request and reply: requests against
//! hand-written bytes, replies hand-built attribute by attribute.

use super::*;

fn at(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

/// An IPv4 flow asked by its original tuple: nlmsghdr, nfgenmsg,
/// then CTA_TUPLE_ORIG { CTA_TUPLE_IP { V4_SRC, V4_DST },
/// CTA_TUPLE_PROTO { NUM, SRC_PORT, DST_PORT } }, nested ones flagged.
#[test]
fn ipv4_request_by_original_tuple() {
    let flow = FlowTuple::new(at("10.0.0.1:40000"), at("10.0.0.2:80"));
    let got = get_request(7, Direction::Original, flow).expect("request");
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        // nlmsghdr: length 72, type (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        // flags NLM_F_REQUEST, seq 7, port id 0.
        72, 0, 0, 0,  0x01, 0x01,  0x01, 0x00,  7, 0, 0, 0,  0, 0, 0, 0,
        // nfgenmsg: family AF_INET, NFNETLINK_V0, res_id 0 (big endian).
        2, 0, 0, 0,
        // CTA_TUPLE_ORIG (1 | NLA_F_NESTED), 52 bytes.
        52, 0, 0x01, 0x80,
        //   CTA_TUPLE_IP (1 | NLA_F_NESTED), 20 bytes.
        20, 0, 0x01, 0x80,
        //     CTA_IP_V4_SRC 10.0.0.1, CTA_IP_V4_DST 10.0.0.2.
        8, 0, 1, 0,  10, 0, 0, 1,
        8, 0, 2, 0,  10, 0, 0, 2,
        //   CTA_TUPLE_PROTO (2 | NLA_F_NESTED), 28 bytes.
        28, 0, 0x02, 0x80,
        //     CTA_PROTO_NUM 6 (TCP), padded to four bytes.
        5, 0, 1, 0,  6, 0, 0, 0,
        //     CTA_PROTO_SRC_PORT 40000, CTA_PROTO_DST_PORT 80, big endian, padded.
        6, 0, 2, 0,  0x9c, 0x40, 0, 0,
        6, 0, 3, 0,  0x00, 0x50, 0, 0,
    ];
    assert_eq!(got, want);
}

/// An IPv6 flow asked by its reply tuple: CTA_TUPLE_REPLY, AF_INET6,
/// CTA_IP_V6_SRC and CTA_IP_V6_DST.
#[test]
fn ipv6_request_by_reply_tuple() {
    let flow = FlowTuple::new(at("[fd00::1]:40000"), at("[fd00::2]:443"));
    let got = get_request(8, Direction::Reply, flow).expect("request");
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        // nlmsghdr: length 96, CT_GET, NLM_F_REQUEST, seq 8.
        96, 0, 0, 0,  0x01, 0x01,  0x01, 0x00,  8, 0, 0, 0,  0, 0, 0, 0,
        // nfgenmsg: AF_INET6.
        10, 0, 0, 0,
        // CTA_TUPLE_REPLY (2 | NLA_F_NESTED), 76 bytes.
        76, 0, 0x02, 0x80,
        //   CTA_TUPLE_IP, 44 bytes.
        44, 0, 0x01, 0x80,
        //     CTA_IP_V6_SRC fd00::1.
        20, 0, 3, 0,  0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        //     CTA_IP_V6_DST fd00::2.
        20, 0, 4, 0,  0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
        //   CTA_TUPLE_PROTO, 28 bytes: TCP, 40000, 443.
        28, 0, 0x02, 0x80,
        5, 0, 1, 0,  6, 0, 0, 0,
        6, 0, 2, 0,  0x9c, 0x40, 0, 0,
        6, 0, 3, 0,  0x01, 0xbb, 0, 0,
    ];
    assert_eq!(got, want);
}

#[test]
fn mapped_addresses_are_asked_as_ipv4_and_mixed_families_refused() {
    let mapped = FlowTuple::new(at("[::ffff:10.0.0.1]:40000"), at("[::ffff:10.0.0.2]:80"));
    let plain = FlowTuple::new(at("10.0.0.1:40000"), at("10.0.0.2:80"));
    assert_eq!(
        get_request(7, Direction::Original, mapped).expect("request"),
        get_request(7, Direction::Original, plain).expect("request"),
    );
    let mixed = FlowTuple::new(at("10.0.0.1:40000"), at("[fd00::2]:80"));
    assert!(matches!(
        get_request(7, Direction::Original, mixed),
        Err(ConntrackError::MixedFamilies(_))
    ));
}

/// One attribute: length, type, value, padded to four bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(4 + value.len() as u16).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(value);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

const NESTED: u16 = 0x8000;

/// CTA_TUPLE_IP and CTA_TUPLE_PROTO of an IPv4 TCP tuple.
fn tuple_v4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let ip = [nla(1, &src), nla(2, &dst)].concat();
    let proto = [
        nla(1, &[6]),
        nla(2, &sport.to_be_bytes()),
        nla(3, &dport.to_be_bytes()),
    ]
    .concat();
    [nla(1 | NESTED, &ip), nla(2 | NESTED, &proto)].concat()
}

/// A whole netlink message: header, nfgenmsg (AF_INET), attributes.
fn message(kind: u16, seq: u32, attributes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(20 + attributes.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&4321u32.to_le_bytes());
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(attributes);
    out
}

/// The entry a DNAT from 198.18.0.1:80 to 127.0.0.1:8080 makes for a
/// client at 10.0.0.1:40000, as the kernel answers a GET (type
/// IPCTNL_MSG_CT_NEW), with CTA_ID (12) among attributes we skip.
fn dnat_reply(seq: u32, status: Option<u32>) -> Vec<u8> {
    let mut attributes = [
        nla(
            1 | NESTED,
            &tuple_v4([10, 0, 0, 1], 40000, [198, 18, 0, 1], 80),
        ),
        nla(
            2 | NESTED,
            &tuple_v4([127, 0, 0, 1], 8080, [10, 0, 0, 1], 40000),
        ),
        nla(12, &0xdead_beefu32.to_be_bytes()),
    ]
    .concat();
    if let Some(status) = status {
        attributes.extend(nla(3, &status.to_be_bytes()));
    }
    message(0x0100, seq, &attributes)
}

/// IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED | IPS_DST_NAT | IPS_DST_NAT_DONE.
const DNAT_STATUS: u32 = 0x2 | 0x4 | 0x8 | 0x20 | 0x100;

#[test]
fn a_dnat_entry_parses_into_its_translation() {
    let got = parse_reply(&dnat_reply(7, Some(DNAT_STATUS)), 7).expect("parse");
    assert_eq!(
        got,
        Reply::Answer(Some(Translation {
            original: FlowTuple::new(at("10.0.0.1:40000"), at("198.18.0.1:80")),
            reply: FlowTuple::new(at("127.0.0.1:8080"), at("10.0.0.1:40000")),
            src_nat: false,
            dst_nat: true,
        }))
    );
    // IPS_SRC_NAT alone.
    let Reply::Answer(Some(snat)) = parse_reply(&dnat_reply(7, Some(0x10)), 7).expect("parse")
    else {
        panic!("no answer");
    };
    assert!(snat.src_nat && !snat.dst_nat);
}

/// An NLMSG_ERROR: its code, then the request's header.
fn error_message(seq: u32, errno: i32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&36u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&4321u32.to_le_bytes());
    out.extend_from_slice(&(-errno).to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    out
}

#[test]
fn enoent_is_no_entry_and_other_errors_are_refusals() {
    assert_eq!(
        parse_reply(&error_message(7, libc::ENOENT), 7).expect("parse"),
        Reply::Answer(None)
    );
    match parse_reply(&error_message(7, libc::EPERM), 7) {
        Err(ConntrackError::Refused(e)) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn answers_to_other_requests_are_skipped() {
    let stale = error_message(6, libc::ENOENT);
    assert_eq!(parse_reply(&stale, 7).expect("parse"), Reply::NotOurs);
    let both = [stale, dnat_reply(7, Some(DNAT_STATUS))].concat();
    assert!(matches!(
        parse_reply(&both, 7).expect("parse"),
        Reply::Answer(Some(_))
    ));
}

#[test]
fn an_entry_without_status_is_malformed() {
    assert!(matches!(
        parse_reply(&dnat_reply(7, None), 7),
        Err(ConntrackError::Malformed(_))
    ));
}

/// Every prefix of a reply, and each byte flipped, gives a value or an
/// error, never a panic.
#[test]
fn truncated_and_corrupted_replies_do_not_panic() {
    let whole = dnat_reply(7, Some(DNAT_STATUS));
    for n in 0..whole.len() {
        let _ = parse_reply(&whole[..n], 7);
    }
    for i in 0..whole.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = whole.clone();
            bad[i] ^= flip;
            let _ = parse_reply(&bad, 7);
        }
    }
}
