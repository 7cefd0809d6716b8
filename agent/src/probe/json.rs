//! How the BPF probe's facts read in `snapshot --json`: absolute sequence
//! numbers as the kernel holds them, each direction's ISN, and every SACK
//! block both absolute and relative to its direction's first byte (the
//! numbering of the `snd_una`/`rcv_nxt` columns beside them).

use serde::Serialize;
use tcpstall_common::{FactSource, KernelTcp, Opened, SackBlock};

use super::owner::{Owner, OwnerLookup};

/// The `owner` of a connection: the process, or why it is not known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OwnerJson {
    Found(Owner),
    /// "unknown (no permission)" or "none".
    Unknown(&'static str),
}

impl From<OwnerLookup> for OwnerJson {
    fn from(l: OwnerLookup) -> OwnerJson {
        match l {
            OwnerLookup::Found(o) => OwnerJson::Found(o),
            OwnerLookup::None => OwnerJson::Unknown("none"),
            OwnerLookup::NoPermission => OwnerJson::Unknown("unknown (no permission)"),
        }
    }
}

/// One SACK block, absolute and relative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SackJson {
    pub start: u32,
    pub end: u32,
    pub rel_start: Option<u64>,
    pub rel_end: Option<u64>,
}

/// The `bpf` object of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BpfJson {
    pub source: FactSource,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub write_seq: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    pub rcv_wup: u32,
    pub rcv_wnd: u32,
    pub snd_wnd: u32,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// Our initial sequence number; `None` when who opened is unknown.
    pub snd_isn: Option<u32>,
    /// The peer's initial sequence number.
    pub rcv_isn: u32,
    pub cork: bool,
    pub nodelay: bool,
    pub sack_ok: bool,
    /// Blocks this side is sending (above its rcv_nxt).
    pub sacks_sent: Vec<SackJson>,
    /// Blocks the peer last reported (above our snd_una).
    pub sacks_received: Vec<SackJson>,
}

impl BpfJson {
    pub fn new(k: &KernelTcp, opened: Option<Opened>) -> BpfJson {
        let rcv = |b: SackBlock| SackJson {
            start: b.start,
            end: b.end,
            rel_start: k.rcv_relative(b.start),
            rel_end: k.rcv_relative(b.end),
        };
        let snd = |b: SackBlock| SackJson {
            start: b.start,
            end: b.end,
            rel_start: opened.and_then(|o| k.snd_relative(o, b.start)),
            rel_end: opened.and_then(|o| k.snd_relative(o, b.end)),
        };
        BpfJson {
            source: FactSource::Bpf,
            snd_una: k.snd_una,
            snd_nxt: k.snd_nxt,
            write_seq: k.write_seq,
            rcv_nxt: k.rcv_nxt,
            copied_seq: k.copied_seq,
            rcv_wup: k.rcv_wup,
            rcv_wnd: k.rcv_wnd,
            snd_wnd: k.snd_wnd,
            snd_wscale: k.snd_wscale,
            rcv_wscale: k.rcv_wscale,
            snd_isn: opened
                .and_then(|o| k.snd_isn1(o))
                .map(|i| i.wrapping_sub(1)),
            rcv_isn: k.rcv_isn1().wrapping_sub(1),
            cork: k.cork(),
            nodelay: k.nodelay(),
            sack_ok: k.sack_ok,
            sacks_sent: k.sacks_sent().map(rcv).collect(),
            sacks_received: k.sacks_received().map(snd).collect(),
        }
    }
}
