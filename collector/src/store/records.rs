//! The records the store keeps and gives back: domain types only, no
//! proto types. Samples are kept whole, in the [`Packed`] encoding the
//! collector already holds them in.

use std::collections::BTreeMap;

use tcpstall_common::{FlowTuple, HeldEnd, Side};

use tcpstall_common::Packed;

use super::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

/// An agent said hello (or is still there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub host: String,
    pub kernel: String,
    pub agent_version: String,
    pub boot_id: String,
    pub at_ms: i64,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub host: String,
    pub kernel: String,
    pub agent_version: String,
    pub boot_id: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub connected: bool,
}

/// An episode that has just opened. The caller allocates `id` (starting at
/// the one [`SqliteStore::open`](super::SqliteStore::open) returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEpisode {
    pub id: i64,
    /// A [`Diagnosis`](tcpstall_common::Diagnosis) id.
    pub diagnosis: String,
    pub summary: String,
    pub evidence: BTreeMap<String, i64>,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub stuck_bytes: u32,
    pub a_host: String,
    pub a_netns: String,
    pub a_flow: FlowTuple,
    pub a_cookie: u64,
    pub b_host: Option<String>,
    pub peer_note: Option<String>,
}

/// A new verdict or duration for an open episode; every field replaces the
/// stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeUpdate {
    pub id: i64,
    pub diagnosis: String,
    pub summary: String,
    pub evidence: BTreeMap<String, i64>,
    pub b_host: Option<String>,
    pub peer_note: Option<String>,
    pub duration_ms: u64,
    pub stuck_bytes: u32,
}

/// How an episode ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeEnd {
    pub ended_at_ms: i64,
    /// An [`EndReason`](tcpstall_common::EndReason) id.
    pub end_reason: String,
    pub duration_ms: u64,
}

/// An episode as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeRow {
    pub id: i64,
    pub diagnosis: String,
    pub summary: String,
    pub evidence: BTreeMap<String, i64>,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub stuck_bytes: u32,
    pub a_host: String,
    pub a_netns: String,
    pub a_flow: FlowTuple,
    pub a_cookie: u64,
    pub b_host: Option<String>,
    pub peer_note: Option<String>,
    pub open: bool,
    pub ended_at_ms: Option<i64>,
    pub end_reason: Option<String>,
}

/// One end of an episode's connection at one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSample {
    pub side: Side,
    pub host: String,
    pub at_ms: i64,
    /// Stored as those bytes (protobuf `tcpstall.v1.Sample`) in
    /// `samples.sample_pb`; rows of schema version 1 held JSON and are
    /// read back into the same encoding. `convert::unpack` gives the
    /// `EndSample`.
    pub sample: Packed,
}

/// Which episodes [`Store::list_episodes`](super::Store::list_episodes) returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodeFilter {
    /// Started at or after.
    pub since_ms: Option<i64>,
    /// A's host or B's host.
    pub host: Option<String>,
    pub diagnosis: Option<String>,
    pub open_only: bool,
    /// 0 = [`DEFAULT_LIST_LIMIT`]; capped at [`MAX_LIST_LIMIT`].
    pub limit: u32,
    /// Only episodes after this one in the list's order: (started_at_ms,
    /// id) of the last episode of the previous page.
    pub after: Option<(i64, i64)>,
}

impl EpisodeFilter {
    /// The row limit this filter really gets.
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        }
    }
}

/// Held spans of one host pair that ended one way in one minute, in one
/// duration bucket (the collector's `held` module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRow {
    /// The minute (its first millisecond) they ended in; for a row read
    /// back over a window, the latest such minute.
    pub minute_ms: i64,
    pub a_host: String,
    /// "" when no agent covers the peer.
    pub b_host: String,
    pub end: HeldEnd,
    /// The bucket's upper bound, 0 for the last.
    pub le_ms: u64,
    pub count: u64,
    pub episodes: u64,
    pub total_ms: u64,
    pub max_ms: u64,
}

/// Which held spans to count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldFilter {
    /// Only minutes from this one on (Unix ms); `None`: all.
    pub since_ms: Option<i64>,
    /// Only pairs with this host at either end.
    pub host: Option<String>,
}
