//! `tcpstall-agent`: the per-host agent. Everything is in the library; its
//! command line is `tcpstall_agent::cli`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tcpstall_agent::cli::main()
}
