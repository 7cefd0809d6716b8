//! tcpstall benchmarks (see BENCHMARKS.md).
fn main() {}
