//! The link's wait between attempts ([`tcpstall_common::backoff`]).

use std::time::Duration;

pub use tcpstall_common::backoff::Backoff;

/// The first retry after a failure waits about this long (doubled by
/// jitter at most), unless the ceiling is lower.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
