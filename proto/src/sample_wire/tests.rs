//! Unit tests of `sample_wire`.

use super::*;
use prost::Message;

/// SplitMix64: the tests' randomness, seeded, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Small values most of the time, any value sometimes: varints of
    /// every length.
    fn num(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(128),
            1 => self.below(1 << 21),
            2 => self.below(1 << 35),
            _ => self.next(),
        }
    }

    fn opt64(&mut self) -> Option<u64> {
        (self.below(3) > 0).then(|| self.num())
    }

    fn opt32(&mut self) -> Option<u32> {
        self.opt64().map(|v| v as u32)
    }

    fn text(&mut self, max: u64) -> String {
        let n = self.below(max + 1);
        (0..n)
            .map(|_| char::from_u32(self.below(0x800) as u32 + 0x20).unwrap_or('x'))
            .collect()
    }

    fn endpoint(&mut self) -> Option<v1::Endpoint> {
        (self.below(8) > 0).then(|| v1::Endpoint {
            ip: (self.below(8) > 0).then(|| v1::Ip {
                octets: (0..[4, 16, 0, 5][self.below(4) as usize])
                    .map(|_| self.next() as u8)
                    .collect(),
            }),
            port: self.num() as u32,
        })
    }
}

/// A sample with every field present or absent at random.
fn random_sample(r: &mut Rng) -> v1::Sample {
    v1::Sample {
        reason: r.below(5) as i32,
        netns: r.text(12),
        local: r.endpoint(),
        remote: r.endpoint(),
        state: r.below(14) as u32,
        cookie: r.num(),
        inode: r.num() as u32,
        opened: r.below(4) as i32,
        sendq: r.num() as u32,
        recvq: r.num() as u32,
        unchanged_ms: r.num(),
        snd_una: r.opt64(),
        snd_nxt: r.opt64(),
        write_seq: r.opt64(),
        rcv_nxt: r.opt64(),
        copied: r.opt64(),
        notsent: r.opt32(),
        inflight: r.opt32(),
        snd_wnd: r.opt32(),
        rcv_wnd: r.opt32(),
        snd_wscale: r.opt32(),
        rcv_wscale: r.opt32(),
        timer: r.below(6) as i32,
        timer_expires_ms: r.num() as u32,
        retransmits: r.opt32(),
        probes: r.opt32(),
        backoff: r.opt32(),
        ca_state: r.opt32(),
        rto_us: r.opt32(),
        rtt_us: r.opt32(),
        snd_cwnd: r.opt32(),
        unacked: r.opt32(),
        lost: r.opt32(),
        retrans: r.opt32(),
        total_retrans: r.opt32(),
        last_data_sent_ms: r.opt32(),
        last_data_recv_ms: r.opt32(),
        last_ack_recv_ms: r.opt32(),
        bytes_retrans: r.opt64(),
        rmem_alloc: r.opt32(),
        rcvbuf: r.opt32(),
        cork: r.opt64().map(|v| v % 2 == 0),
        cork_source: r.below(4) as i32,
        nodelay: r.opt64().map(|v| v % 2 == 0),
        nodelay_source: r.below(4) as i32,
        owner: (r.below(3) == 0).then(|| v1::Owner {
            pid: r.num() as u32,
            command: r.text(40),
            unit: (r.below(2) == 0).then(|| r.text(10)),
            cgroup: (r.below(2) == 0).then(|| r.text(30)),
        }),
        owner_missing: r.below(4) as i32,
        absolute: (r.below(3) == 0).then(|| v1::AbsoluteSeq {
            snd_una: r.num() as u32,
            snd_nxt: r.num() as u32,
            write_seq: r.num() as u32,
            rcv_nxt: r.num() as u32,
            snd_isn: r.opt32(),
            rcv_isn: r.opt32(),
            sacks_sent: (0..r.below(4))
                .map(|_| v1::SackBlock {
                    start: r.num() as u32,
                    end: r.num() as u32,
                })
                .collect(),
            sacks_received: (0..r.below(3))
                .map(|_| v1::SackBlock {
                    start: r.num() as u32,
                    end: r.num() as u32,
                })
                .collect(),
        }),
        held: (r.below(3) == 0).then(|| v1::Held {
            since_us: r.num(),
            last_held_us: r.num(),
            ended_us: r.num(),
            end: r.below(6) as i32,
        }),
        translation: (r.below(3) == 0).then(|| v1::Translation {
            original: (r.below(4) > 0).then(|| v1::FlowTuple {
                local: r.endpoint(),
                remote: r.endpoint(),
            }),
            reply: (r.below(4) > 0).then(|| v1::FlowTuple {
                local: r.endpoint(),
                remote: r.endpoint(),
            }),
            src_nat: r.below(2) == 0,
            dst_nat: r.below(2) == 0,
        }),
    }
}

/// The property: this reader and prost agree on `bytes`.
#[track_caller]
fn agrees(bytes: &[u8]) {
    let ours = decode_sample(bytes);
    let prost = v1::Sample::decode(bytes);
    match (&ours, &prost) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "bytes {bytes:02x?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("disagree on {bytes:02x?}: ours {ours:?}, prost {prost:?}"),
    }
}

#[test]
fn every_field_reads_back_as_encoded() {
    let mut r = Rng(1);
    for _ in 0..5_000 {
        let s = random_sample(&mut r);
        assert_eq!(decode_sample(&s.encode_to_vec()), Ok(s));
    }
}

/// Flipped, dropped, inserted and cut bytes, and concatenations (which
/// proto3 reads as one message: last scalar wins, messages merge): the
/// two readers accept and refuse the same inputs, and agree on what
/// they accept.
#[test]
fn corrupted_encodings_are_read_as_prost_reads_them() {
    let mut r = Rng(2);
    for _ in 0..40_000 {
        let mut b = random_sample(&mut r).encode_to_vec();
        for _ in 0..=r.below(3) {
            let at = r.below(b.len() as u64 + 1) as usize;
            match r.below(6) {
                0 if at < b.len() => b[at] ^= 1 << r.below(8),
                1 if at < b.len() => {
                    b.remove(at);
                }
                2 => b.insert(at, r.next() as u8),
                3 => b.truncate(at),
                4 => b.extend(random_sample(&mut r).encode_to_vec()),
                _ if at < b.len() => b[at] = r.next() as u8,
                _ => {}
            }
        }
        agrees(&b);
    }
    // And bytes that were never a sample.
    for _ in 0..20_000 {
        let n = r.below(40) as usize;
        let b: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
        agrees(&b);
    }
}

fn key(tag: u32, wt: u8) -> Vec<u8> {
    let mut b = Vec::new();
    prost::encoding::encode_varint(u64::from(tag << 3 | u32::from(wt)), &mut b);
    b
}

#[test]
fn unknown_fields_of_every_wire_type_are_skipped() {
    let base = v1::Sample {
        cookie: 7,
        sendq: 10,
        ..Default::default()
    };
    let mut b = base.encode_to_vec();
    b.extend(key(1000, VARINT));
    b.extend([0xff, 0x01]);
    b.extend(key(1001, FIXED64));
    b.extend([1; 8]);
    b.extend(key(1002, LEN));
    b.extend([3, 1, 2, 3]);
    b.extend(key(1003, FIXED32));
    b.extend([1; 4]);
    b.extend(key(1004, GROUP_START));
    b.extend(key(5, VARINT));
    b.push(1);
    b.extend(key(1004, GROUP_END));
    assert_eq!(decode_sample(&b), Ok(base));
    agrees(&b);
}

#[test]
fn known_fields_with_the_wrong_wire_type_are_refused() {
    let mut b = key(6, FIXED64);
    b.extend([0; 8]);
    assert_eq!(
        decode_sample(&b),
        Err(WireError::WireType {
            tag: 6,
            got: FIXED64,
            want: VARINT
        })
    );
    agrees(&b);
    let mut b = key(3, VARINT);
    b.push(1);
    agrees(&b);
    assert!(decode_sample(&b).is_err());
}

#[test]
fn varints_keep_to_ten_bytes_and_sixty_four_bits() {
    // u64::MAX: nine bytes of 0xff, then 1.
    let mut b = key(6, VARINT);
    b.extend([0xff; 9]);
    b.push(0x01);
    assert_eq!(decode_sample(&b).map(|s| s.cookie), Ok(u64::MAX));
    agrees(&b);
    // A tenth byte of 2 would be bit 64.
    *b.last_mut().expect("bytes") = 0x02;
    assert_eq!(decode_sample(&b), Err(WireError::Varint));
    agrees(&b);
    // Eleven bytes.
    let mut b = key(6, VARINT);
    b.extend([0x80; 10]);
    b.push(0);
    agrees(&b);
    assert!(decode_sample(&b).is_err());
    // A key past u32, a tag of 0, wire types 6 and 7.
    for bad in [
        vec![0x80, 0x80, 0x80, 0x80, 0x10],
        vec![0x00],
        vec![0x0e],
        vec![0x0f],
    ] {
        assert_eq!(decode_sample(&bad), Err(WireError::Key));
        agrees(&bad);
    }
    // A uint32 field given more than 32 bits keeps the low ones.
    let mut b = key(9, VARINT);
    prost::encoding::encode_varint((1 << 40) | 5, &mut b);
    assert_eq!(decode_sample(&b).map(|s| s.sendq), Ok(5));
    agrees(&b);
}

#[test]
fn groups_nest_as_deep_as_prost_allows_and_no_deeper() {
    for depth in [99, 100, 101] {
        let mut b = Vec::new();
        for _ in 0..depth {
            b.extend(key(1000, GROUP_START));
        }
        for _ in 0..depth {
            b.extend(key(1000, GROUP_END));
        }
        agrees(&b);
        assert_eq!(decode_sample(&b).is_ok(), depth <= 100, "depth {depth}");
    }
    // A group closed by another field's end, or an end alone.
    let mut b = key(1000, GROUP_START);
    b.extend(key(1001, GROUP_END));
    agrees(&b);
    assert!(decode_sample(&b).is_err());
    let b = key(1000, GROUP_END);
    agrees(&b);
    assert!(decode_sample(&b).is_err());
}

#[test]
fn a_repeated_message_field_merges_and_a_repeated_scalar_is_replaced() {
    let first = v1::Sample {
        local: Some(v1::Endpoint {
            ip: Some(v1::Ip {
                octets: vec![10, 0, 0, 1],
            }),
            port: 80,
        }),
        cookie: 1,
        ..Default::default()
    };
    let second = v1::Sample {
        local: Some(v1::Endpoint { ip: None, port: 81 }),
        cookie: 2,
        ..Default::default()
    };
    let mut b = first.encode_to_vec();
    b.extend(second.encode_to_vec());
    let s = decode_sample(&b).expect("decodes");
    assert_eq!(s.cookie, 2);
    let local = s.local.expect("local");
    assert_eq!(local.port, 81);
    assert_eq!(local.ip.map(|ip| ip.octets), Some(vec![10, 0, 0, 1]));
    agrees(&b);
}

#[test]
fn a_string_that_is_not_utf8_is_refused() {
    let mut b = key(2, LEN);
    b.extend([2, 0xc3, 0x28]);
    assert_eq!(decode_sample(&b), Err(WireError::Utf8(2)));
    agrees(&b);
}
