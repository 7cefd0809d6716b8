//! `v1::Sample` read straight from its bytes.
//!
//! The collector checks every sample of every batch: at the fleet
//! (1,000 agents at 2 s polls) that is about 200,000 a second, and prost's
//! generic decoding of them was 13 % of the collector's CPU, most of it
//! in varints read through `Buf` one call at a time (BENCHMARKS.md). This
//! reader knows the message's fields and reads a slice in one pass.
//!
//! What it returns is what `v1::Sample::decode` returns for the same bytes:
//! the same message when prost accepts them, an error when prost refuses
//! them (the tests hold the two side by side over random samples and
//! corrupted encodings). So the checks of `convert::sample_from_wire`
//! apply unchanged, and proto3's rules hold: a repeated scalar's last
//! value wins, a repeated message field merges, unknown fields (groups
//! too) are skipped, nesting is limited as prost limits it. A field added
//! to the `.proto` must be added here: the tests build every message with
//! all its fields named, so they stop compiling until it is, and then
//! fail until this reader reads it.

use thiserror::Error;

use crate::v1;

/// Why bytes are not a `v1::Sample`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WireError {
    #[error("truncated or overlong varint")]
    Varint,
    #[error("invalid field key")]
    Key,
    #[error("field {tag}: wire type {got}, want {want}")]
    WireType { tag: u32, got: u8, want: u8 },
    #[error("field {0}: runs past the end of its message")]
    Length(u32),
    #[error("field {0}: string is not UTF-8")]
    Utf8(u32),
    #[error("field {0}: group end without its start")]
    Group(u32),
    #[error("nested too deep")]
    Depth,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const GROUP_START: u8 = 3;
const GROUP_END: u8 = 4;
const FIXED32: u8 = 5;

/// How deep messages and groups may nest (prost's default limit).
const DEPTH: u32 = 100;

/// Decodes `bytes` as a `v1::Sample`, as `v1::Sample::decode` would.
pub fn decode_sample(bytes: &[u8]) -> Result<v1::Sample, WireError> {
    let mut w = v1::Sample::default();
    let mut r = Reader(bytes);
    // Writers (prost, so the agent) put fields in their numbers' order.
    // Read in that order first, each field where its key is expected: a
    // key is then a comparison of one or two bytes, and each field's
    // branches are its own, which the CPU learns (one `match` over the
    // tag, taken forty times a sample, it mispredicts). Whatever is left,
    // in any order, repeated or unknown, the loop below reads.
    macro_rules! in_order {
        ($($tag:literal: $wt:expr),* $(,)?) => {$(
            if let Some(rest) = r.0.strip_prefix(key_bytes($tag, $wt).as_slice()) {
                r.0 = rest;
                sample_field(&mut w, $tag, $wt, &mut r, DEPTH)?;
            }
        )*};
    }
    in_order!(
        1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: VARINT, 7: VARINT, 8: VARINT,
        9: VARINT, 10: VARINT, 11: VARINT, 20: VARINT, 21: VARINT, 22: VARINT, 23: VARINT,
        24: VARINT, 25: VARINT, 26: VARINT, 27: VARINT, 28: VARINT, 29: VARINT, 30: VARINT,
        40: VARINT, 41: VARINT, 42: VARINT, 43: VARINT, 44: VARINT, 45: VARINT, 46: VARINT,
        47: VARINT, 48: VARINT, 49: VARINT, 50: VARINT, 51: VARINT, 52: VARINT, 53: VARINT,
        54: VARINT, 55: VARINT, 56: VARINT, 60: VARINT, 61: VARINT, 62: VARINT, 63: VARINT,
        64: LEN, 65: VARINT, 66: LEN, 70: LEN,
    );
    while !r.0.is_empty() {
        let (tag, wt) = r.key()?;
        sample_field(&mut w, tag, wt, &mut r, DEPTH)?;
    }
    Ok(w)
}

/// A field's key as written: one byte up to field 15, two up to 2047.
const fn key_bytes(tag: u32, wt: u8) -> KeyBytes {
    let key = (tag << 3) | wt as u32;
    if key < 0x80 {
        KeyBytes([key as u8, 0], 1)
    } else {
        KeyBytes([(key as u8) | 0x80, (key >> 7) as u8], 2)
    }
}

struct KeyBytes([u8; 2], usize);

impl KeyBytes {
    fn as_slice(&self) -> &[u8] {
        &self.0[..self.1]
    }
}

/// The unread part of a message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// A base-128 varint of at most ten bytes, the tenth at most 1.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        let Some(&first) = self.0.first() else {
            return Err(WireError::Varint);
        };
        if first < 0x80 {
            self.0 = &self.0[1..];
            return Ok(u64::from(first));
        }
        let mut v = 0u64;
        for (i, &b) in self.0.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return Err(WireError::Varint);
                }
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(WireError::Varint)
    }

    /// A field's number and wire type.
    #[inline]
    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = u32::try_from(self.varint()?).map_err(|_| WireError::Key)?;
        let wt = (key & 7) as u8;
        let tag = key >> 3;
        if wt > FIXED32 || tag == 0 {
            return Err(WireError::Key);
        }
        Ok((tag, wt))
    }

    fn take(&mut self, n: u64, tag: u32) -> Result<&'a [u8], WireError> {
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.0.len())
            .ok_or(WireError::Length(tag))?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A varint field's value.
    #[inline(always)]
    fn value(&mut self, tag: u32, wt: u8) -> Result<u64, WireError> {
        want(tag, wt, VARINT)?;
        self.varint()
    }

    /// A length-delimited field's bytes.
    fn bytes(&mut self, tag: u32, wt: u8) -> Result<&'a [u8], WireError> {
        want(tag, wt, LEN)?;
        let n = self.varint()?;
        self.take(n, tag)
    }

    /// A string field's value, replacing `out`'s.
    fn string(&mut self, tag: u32, wt: u8, out: &mut String) -> Result<(), WireError> {
        let b = self.bytes(tag, wt)?;
        let s = std::str::from_utf8(b).map_err(|_| WireError::Utf8(tag))?;
        out.clear();
        out.push_str(s);
        Ok(())
    }

    /// An embedded message's bytes, and the depth left inside it.
    fn message(&mut self, tag: u32, wt: u8, depth: u32) -> Result<(Reader<'a>, u32), WireError> {
        if depth == 0 {
            return Err(WireError::Depth);
        }
        Ok((Reader(self.bytes(tag, wt)?), depth - 1))
    }

    /// Passes over a field this reader does not know.
    fn skip(&mut self, tag: u32, wt: u8, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return Err(WireError::Depth);
        }
        match wt {
            VARINT => {
                self.varint()?;
            }
            FIXED64 => {
                self.take(8, tag)?;
            }
            LEN => {
                let n = self.varint()?;
                self.take(n, tag)?;
            }
            FIXED32 => {
                self.take(4, tag)?;
            }
            GROUP_START => loop {
                let (inner, iwt) = self.key()?;
                if iwt == GROUP_END {
                    if inner != tag {
                        return Err(WireError::Group(inner));
                    }
                    break;
                }
                self.skip(inner, iwt, depth - 1)?;
            },
            _ => return Err(WireError::Group(tag)),
        }
        Ok(())
    }
}

fn want(tag: u32, got: u8, want: u8) -> Result<(), WireError> {
    if got == want {
        Ok(())
    } else {
        Err(WireError::WireType { tag, got, want })
    }
}

/// Reads each field of an embedded message with `field`.
fn fields<'a, T>(
    mut r: Reader<'a>,
    depth: u32,
    out: &mut T,
    field: impl Fn(&mut T, u32, u8, &mut Reader<'a>, u32) -> Result<(), WireError>,
) -> Result<(), WireError> {
    while !r.0.is_empty() {
        let (tag, wt) = r.key()?;
        field(out, tag, wt, &mut r, depth)?;
    }
    Ok(())
}

#[inline(always)]
fn sample_field(
    w: &mut v1::Sample,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    // Truncation as prost does it: a uint32 or an enum keeps its low bits.
    let u32_of = |v: u64| v as u32;
    match tag {
        1 => w.reason = r.value(tag, wt)? as i32,
        2 => r.string(tag, wt, &mut w.netns)?,
        3 | 4 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            let slot = if tag == 3 {
                &mut w.local
            } else {
                &mut w.remote
            };
            fields(
                inner,
                d,
                slot.get_or_insert_with(Default::default),
                endpoint_field,
            )?;
        }
        5 => w.state = u32_of(r.value(tag, wt)?),
        6 => w.cookie = r.value(tag, wt)?,
        7 => w.inode = u32_of(r.value(tag, wt)?),
        8 => w.opened = r.value(tag, wt)? as i32,
        9 => w.sendq = u32_of(r.value(tag, wt)?),
        10 => w.recvq = u32_of(r.value(tag, wt)?),
        11 => w.unchanged_ms = r.value(tag, wt)?,
        20 => w.snd_una = Some(r.value(tag, wt)?),
        21 => w.snd_nxt = Some(r.value(tag, wt)?),
        22 => w.write_seq = Some(r.value(tag, wt)?),
        23 => w.rcv_nxt = Some(r.value(tag, wt)?),
        24 => w.copied = Some(r.value(tag, wt)?),
        25 => w.notsent = Some(u32_of(r.value(tag, wt)?)),
        26 => w.inflight = Some(u32_of(r.value(tag, wt)?)),
        27 => w.snd_wnd = Some(u32_of(r.value(tag, wt)?)),
        28 => w.rcv_wnd = Some(u32_of(r.value(tag, wt)?)),
        29 => w.snd_wscale = Some(u32_of(r.value(tag, wt)?)),
        30 => w.rcv_wscale = Some(u32_of(r.value(tag, wt)?)),
        40 => w.timer = r.value(tag, wt)? as i32,
        41 => w.timer_expires_ms = u32_of(r.value(tag, wt)?),
        42..=55 => {
            let v = Some(u32_of(r.value(tag, wt)?));
            match tag {
                42 => w.retransmits = v,
                43 => w.probes = v,
                44 => w.backoff = v,
                45 => w.ca_state = v,
                46 => w.rto_us = v,
                47 => w.rtt_us = v,
                48 => w.snd_cwnd = v,
                49 => w.unacked = v,
                50 => w.lost = v,
                51 => w.retrans = v,
                52 => w.total_retrans = v,
                53 => w.last_data_sent_ms = v,
                54 => w.last_data_recv_ms = v,
                _ => w.last_ack_recv_ms = v,
            }
        }
        56 => w.bytes_retrans = Some(r.value(tag, wt)?),
        60 => w.cork = Some(r.value(tag, wt)? != 0),
        61 => w.cork_source = r.value(tag, wt)? as i32,
        62 => w.nodelay = Some(r.value(tag, wt)? != 0),
        63 => w.nodelay_source = r.value(tag, wt)? as i32,
        64 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            fields(
                inner,
                d,
                w.owner.get_or_insert_with(Default::default),
                owner_field,
            )?;
        }
        65 => w.owner_missing = r.value(tag, wt)? as i32,
        66 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            let a = w.absolute.get_or_insert_with(Default::default);
            fields(inner, d, a, absolute_field)?;
        }
        70 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            let h = w.held.get_or_insert_with(Default::default);
            fields(inner, d, h, held_field)?;
        }
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn held_field(
    h: &mut v1::Held,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 => h.since_us = r.value(tag, wt)?,
        2 => h.last_held_us = r.value(tag, wt)?,
        3 => h.ended_us = r.value(tag, wt)?,
        4 => h.end = r.value(tag, wt)? as i32,
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn endpoint_field(
    e: &mut v1::Endpoint,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            fields(
                inner,
                d,
                e.ip.get_or_insert_with(Default::default),
                ip_field,
            )?;
        }
        2 => e.port = r.value(tag, wt)? as u32,
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn ip_field(
    ip: &mut v1::Ip,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 => {
            let b = r.bytes(tag, wt)?;
            ip.octets.clear();
            ip.octets.extend_from_slice(b);
        }
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn owner_field(
    o: &mut v1::Owner,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 => o.pid = r.value(tag, wt)? as u32,
        2 => r.string(tag, wt, &mut o.command)?,
        3 => r.string(tag, wt, o.unit.get_or_insert_with(String::new))?,
        4 => r.string(tag, wt, o.cgroup.get_or_insert_with(String::new))?,
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn absolute_field(
    a: &mut v1::AbsoluteSeq,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 => a.snd_una = r.value(tag, wt)? as u32,
        2 => a.snd_nxt = r.value(tag, wt)? as u32,
        3 => a.write_seq = r.value(tag, wt)? as u32,
        4 => a.rcv_nxt = r.value(tag, wt)? as u32,
        5 => a.snd_isn = Some(r.value(tag, wt)? as u32),
        6 => a.rcv_isn = Some(r.value(tag, wt)? as u32),
        7 | 8 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            let mut block = v1::SackBlock::default();
            fields(inner, d, &mut block, sack_field)?;
            if tag == 7 {
                a.sacks_sent.push(block);
            } else {
                a.sacks_received.push(block);
            }
        }
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn sack_field(
    s: &mut v1::SackBlock,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 => s.start = r.value(tag, wt)? as u32,
        2 => s.end = r.value(tag, wt)? as u32,
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
