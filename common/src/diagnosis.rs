//! The diagnoses a stuck send queue can get, by id and by whom to look at.
//! The rules that choose one live with the collector's matcher; the names
//! live here because everything that shows an episode needs them.

use std::fmt;

use serde::Serialize;

/// Diagnosis ids: a contract with users' scripts, never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Diagnosis {
    /// B's window is closed and its application has data unread.
    PeerNotReading,
    /// A sees a zero window that B has reopened: B's update never arrived.
    WindowUpdateLost,
    /// Unsent data, nothing in flight, window open, TCP_CORK set.
    Corked,
    /// Unsent data, nothing in flight, window open, no cork known.
    UnsentUnblocked,
    /// In flight, and B is still waiting for exactly what A resends.
    DataLost,
    /// B acknowledged bytes that A never saw acknowledged.
    AckLost,
    /// A resends what B's application is not behind on, and the kernel
    /// gives no byte positions (before 4.1) to say whether the data A→B or
    /// the ACKs B→A are lost.
    LostInNetwork,
    /// B's host is monitored but has no such socket.
    HalfOpen,
    /// No agent covers B's address.
    PeerUnmonitored,
    /// The evidence fits no row (said why in the summary).
    Undetermined,
}

impl Diagnosis {
    pub const ALL: [Diagnosis; 10] = [
        Diagnosis::PeerNotReading,
        Diagnosis::WindowUpdateLost,
        Diagnosis::Corked,
        Diagnosis::UnsentUnblocked,
        Diagnosis::DataLost,
        Diagnosis::AckLost,
        Diagnosis::LostInNetwork,
        Diagnosis::HalfOpen,
        Diagnosis::PeerUnmonitored,
        Diagnosis::Undetermined,
    ];

    /// The id stored and printed.
    pub fn id(self) -> &'static str {
        match self {
            Diagnosis::PeerNotReading => "peer_not_reading",
            Diagnosis::WindowUpdateLost => "window_update_lost",
            Diagnosis::Corked => "corked",
            Diagnosis::UnsentUnblocked => "unsent_unblocked",
            Diagnosis::DataLost => "data_lost",
            Diagnosis::AckLost => "ack_lost",
            Diagnosis::LostInNetwork => "lost_in_network",
            Diagnosis::HalfOpen => "half_open",
            Diagnosis::PeerUnmonitored => "peer_unmonitored",
            Diagnosis::Undetermined => "undetermined",
        }
    }

    /// Its place in [`Diagnosis::ALL`], for counters kept per diagnosis.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }

    pub fn from_id(id: &str) -> Option<Diagnosis> {
        Self::ALL.into_iter().find(|d| d.id() == id)
    }

    /// Whom to look at.
    pub fn blame(self) -> &'static str {
        match self {
            Diagnosis::PeerNotReading => "B's application",
            Diagnosis::WindowUpdateLost | Diagnosis::AckLost => "the network from B to A",
            Diagnosis::Corked => "A's application",
            Diagnosis::UnsentUnblocked => "A's host (qdisc, NIC, pacing)",
            Diagnosis::DataLost => "the network from A to B",
            Diagnosis::LostInNetwork => "the network between A and B",
            Diagnosis::HalfOpen => "B lost the connection",
            Diagnosis::PeerUnmonitored => "unknown: one-sided evidence only",
            Diagnosis::Undetermined => "unknown",
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}
