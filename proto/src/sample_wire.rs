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
        64: LEN, 65: VARINT, 66: LEN, 70: LEN, 71: LEN,
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
        57 => w.rmem_alloc = Some(u32_of(r.value(tag, wt)?)),
        58 => w.rcvbuf = Some(u32_of(r.value(tag, wt)?)),
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
        71 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            let t = w.translation.get_or_insert_with(Default::default);
            fields(inner, d, t, translation_field)?;
        }
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn translation_field(
    t: &mut v1::Translation,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 | 2 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            let f = if tag == 1 {
                &mut t.original
            } else {
                &mut t.reply
            };
            fields(inner, d, f.get_or_insert_with(Default::default), flow_field)?;
        }
        3 => t.src_nat = r.value(tag, wt)? != 0,
        4 => t.dst_nat = r.value(tag, wt)? != 0,
        _ => r.skip(tag, wt, depth)?,
    }
    Ok(())
}

fn flow_field(
    f: &mut v1::FlowTuple,
    tag: u32,
    wt: u8,
    r: &mut Reader<'_>,
    depth: u32,
) -> Result<(), WireError> {
    match tag {
        1 | 2 => {
            let (inner, d) = r.message(tag, wt, depth)?;
            let e = if tag == 1 {
                &mut f.local
            } else {
                &mut f.remote
            };
            fields(
                inner,
                d,
                e.get_or_insert_with(Default::default),
                endpoint_field,
            )?;
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
mod tests;
