//! tcpstall-collector: joins both ends of each flow, detects episodes where
//! a send queue stays stuck, and diagnoses them from both ends.
//!
//! The pure parts live here, tested without I/O: [`detect`] (episodes from
//! samples, `now` passed in) and [`diagnose`] (a verdict from both ends).
#![forbid(unsafe_code)]

pub mod detect;
pub mod diagnose;
pub mod store;
