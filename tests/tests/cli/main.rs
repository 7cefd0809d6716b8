//! The `tcpstall` CLI against a real collector with real stored episodes,
//! `tcpstall export` paging through more than a page, and `tcpstall demo`
//! run to completion; stored episodes printed as golden files.

mod demo;
mod export;
mod queries;
mod stored;
