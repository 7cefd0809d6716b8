//! The `tcpstall` CLI against a real collector with real stored episodes,
//! and `tcpstall demo` run to completion.

mod demo;
mod queries;
