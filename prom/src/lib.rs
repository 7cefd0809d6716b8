//! tcpstall's Prometheus endpoint, shared by the agent and the collector:
//! [`text`] writes the exposition format (and counts durations in a
//! histogram of atomics), [`serve`] answers `GET /metrics` with the text a
//! caller's render function makes on each scrape, and [`read`] reads an
//! endpoint back (for tests and benchmarks).
#![forbid(unsafe_code)]

pub mod read;
pub mod serve;
pub mod text;

pub use serve::serve;
pub use text::{Exposition, Family, Histogram, HistogramSnapshot, Kind, CONTENT_TYPE};
