//! `tcpstall-agent`'s command line: `run` (the agent), `snapshot`, `netns`,
//! `capture`, `print-config`. The binary is this module's [`main`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Config};
use crate::diag::{parse, Family};
use crate::filter::{Filter, Prefix};
use crate::netns::{self, NetnsSpec};
use crate::poll::Poller;
use crate::probe::owner::OwnerIndex;
use crate::probe::scrub::{OwnerArgs, Scrubber};
use crate::probe::{ProbeStatus, Probes};
use crate::view::{self, ConnectionJson, PairJson};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tcpstall_client::table;
use tcpstall_common::{SocketSample, TcpState};

/// Reads every TCP connection's state from the kernel (sock_diag) and shows
/// where each side stands in the byte stream.
#[derive(Debug, Parser)]
#[command(name = "tcpstall-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll once and print every TCP connection (listeners excluded).
    Snapshot(SnapshotArgs),
    /// Save the kernel's raw sock_diag replies to a file, for bug reports
    /// and parser fixtures.
    Capture(CaptureArgs),
    /// Poll every interval and stream what is worth sending (stuck send
    /// queues, flows the collector watches, their closing) to the
    /// collector; reconnect by itself; stop on SIGINT or SIGTERM.
    Run(config::Flags),
    /// Print the effective settings (defaults, then --config FILE, then
    /// flags) as a commented TOML file.
    PrintConfig(config::Flags),
}

#[derive(Debug, Args)]
struct NetnsArgs {
    /// Network namespace to read: a name under /run/netns, a path such as
    /// /proc/PID/ns/net, or `all` for every namespace on the host. Repeat
    /// for several. Default: the agent's own.
    #[arg(long, value_name = "NAME|PATH|all")]
    netns: Vec<NetnsSpec>,
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    #[command(flatten)]
    netns: NetnsArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Show both ends of a connection on one row where both are visible
    /// (loopback, or two namespaces with --netns all).
    #[arg(long)]
    pair: bool,
    /// Every fact of a connection in a column of one long row (for
    /// scripts that read columns), instead of a row within 100 columns
    /// with its details on a line under it.
    #[arg(long)]
    wide: bool,
    /// Only connections in this state (ss or kernel names: estab,
    /// established, syn-sent, fin-wait-1, close-wait, time-wait, ...).
    #[arg(short, long, value_name = "STATE", value_parser = parse_state)]
    state: Vec<TcpState>,
    /// Only connections with this port at either end.
    #[arg(long)]
    port: Vec<u16>,
    /// Only connections with this local port.
    #[arg(long)]
    sport: Vec<u16>,
    /// Only connections with this remote port.
    #[arg(long)]
    dport: Vec<u16>,
    /// Only connections with an address in this prefix at either end.
    #[arg(long, value_name = "ADDR[/LEN]")]
    addr: Vec<Prefix>,
    /// Only connections with a local address in this prefix.
    #[arg(long, value_name = "ADDR[/LEN]")]
    src: Vec<Prefix>,
    /// Only connections with a remote address in this prefix.
    #[arg(long, value_name = "ADDR[/LEN]")]
    dst: Vec<Prefix>,
    /// Only connections with bytes in the send queue.
    #[arg(long)]
    queued: bool,
    /// sock_diag only: do not try the deeper probes (the BPF iter/tcp
    /// program, which needs CAP_BPF and CAP_PERFMON). Without them the
    /// JSON's cork, nodelay and bpf fields say unknown (null or absent).
    /// The table shows none of their facts and never tries them.
    #[arg(long)]
    no_probes: bool,
    /// Name the process that owns each connection shown (pid, command
    /// line, systemd unit or cgroup; another user's processes need
    /// CAP_SYS_PTRACE, else "unknown (no permission)"). Where the BPF probe
    /// did not give the cork of a connection with bytes queued, read its
    /// cork and nodelay through a duplicate of the owner's descriptor
    /// (pidfd_getfd, CAP_SYS_PTRACE), closed at once.
    #[arg(long)]
    owners: bool,
    /// With --owners, how much of each command line to print, as `run`
    /// sends it: scrubbed, none or full [default: scrubbed].
    #[arg(long, value_name = "scrubbed|none|full", value_parser = OwnerArgs::parse, default_value = "scrubbed")]
    owner_args: OwnerArgs,
    /// With --owners, a word that makes an argument's value a secret,
    /// besides the built-in ones. Repeat for several.
    #[arg(long = "owner-scrub-word", value_name = "WORD")]
    owner_scrub_words: Vec<String>,
}

#[derive(Debug, Args)]
struct CaptureArgs {
    #[command(flatten)]
    netns: NetnsArgs,
    /// File to write the replies to (netlink messages back to back: the
    /// IPv4 dump, then the IPv6 dump, of one namespace).
    #[arg(short, long)]
    output: PathBuf,
}

fn parse_state(s: &str) -> Result<TcpState, String> {
    TcpState::parse(s).ok_or_else(|| {
        let names: Vec<&str> = TcpState::ALL.iter().map(|s| s.name()).collect();
        format!("unknown TCP state `{s}`; one of: {}", names.join(", "))
    })
}

/// Parses the command line and runs what it names.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tcpstall-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(len) = std::env::var_os(crate::diag::TCP_INFO_LEN_ENV) {
        crate::diag::read_tcp_info_as(&len)?;
    }
    match cli.command {
        Command::Snapshot(args) => snapshot(args),
        Command::Capture(args) => capture(args),
        Command::Run(flags) => run_agent(&flags),
        Command::PrintConfig(flags) => {
            let config = Config::load(&flags)?;
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_agent(flags: &config::Flags) -> anyhow::Result<ExitCode> {
    let config = Config::load(flags)?;
    let collectors = config.require_collectors()?.to_vec();
    let host = match &config.host {
        Some(host) => host.clone(),
        None => {
            let host = crate::hello::hostname().context("reading the hostname")?;
            config::check_host(&host).context("the hostname cannot name this host; give --host")?;
            host
        }
    };
    let machine_paths = crate::hello::MACHINE_ID_FILES.map(std::path::Path::new);
    let machine_id = crate::hello::machine_id(config.configured_machine_id()?, &machine_paths);
    let namespaces = netns::resolve(&config.netns_specs()?)?;
    let host_netns = netns::host_from(config.host_netns_spec()?.as_ref())?;
    let tls = config.client_tls()?;
    for collector in &collectors {
        if tls.is_none() && !tcpstall_client::tls::is_loopback_url(collector) {
            tracing::warn!(%collector, "streaming plaintext (--plaintext): this host's connections cross the network unencrypted");
        }
    }
    let settings = crate::run::RunSettings {
        collectors,
        tls,
        host,
        machine_id,
        interval: config.interval,
        namespaces,
        host_netns,
        buffer: config.buffer,
        batch_max: config.batch_max,
        backoff_max: config.backoff_max,
        metrics_listen: config.metrics_listen,
        follow: config.follow_every(),
        follow_max: config.follow_max,
        scrubber: config.scrubber(),
        kernel_filter: !config.no_kernel_filter,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
            }
        };
        crate::run::run(settings, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn snapshot(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let namespaces = netns::resolve(&args.netns.netns)?;
    let show_ns = namespaces.len() > 1;
    // The sockets first: a namespace may go between listing and opening,
    // and loading the BPF program takes a while.
    let mut poller = Poller::new(namespaces.clone())?;
    // The probes only for what the view shows: the table has none of their
    // facts (JSON has cork, nodelay, the BPF record and owners), and
    // loading the BPF program is most of a one-shot view's cost.
    let mut probes = Probes::start(args.json && !args.no_probes);
    for (name, status) in probes.announce() {
        if !matches!(status, ProbeStatus::Available | ProbeStatus::Off) {
            eprintln!("tcpstall-agent: probe {name}: {status}");
        }
    }
    let filter = Filter {
        states: args.state,
        ports: args.port,
        sports: args.sport,
        dports: args.dport,
        addrs: args.addr,
        srcs: args.src,
        dsts: args.dst,
        queued: args.queued,
    };
    let (samples, failures) = {
        let (samples, failures) = poller.poll();
        (samples.to_vec(), failures)
    };
    for f in &failures {
        eprintln!("tcpstall-agent: {f:#}");
    }
    for (label, e) in probes.pass(&namespaces) {
        eprintln!("tcpstall-agent: probe bpf in network namespace {label}: {e:#}");
    }
    let stats = poller.stats();
    if stats.parse != Default::default() {
        tracing::warn!(stats = ?stats.parse, "parts of the kernel's reply were skipped");
    }
    let scrubber = Scrubber::new(args.owner_args, &args.owner_scrub_words);
    let mut owners = args
        .owners
        .then(|| OwnerIndex::new(std::time::Duration::from_secs(30)).scrubbed_by(scrubber));
    let mut row = |s| json_row(s, poller.label(s.netns), &probes, owners.as_mut());
    let label = |inode: u64| poller.label(inode).to_string();
    let shown: Vec<&SocketSample> = samples.iter().filter(|s| filter.matches(s)).collect();

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.pair {
        // Pair among all connections, then keep pairs with either end shown.
        let all: Vec<&SocketSample> = samples.iter().collect();
        let pairs: Vec<(usize, Option<usize>)> = view::pair_up(&all)
            .into_iter()
            .filter(|(a, b)| filter.matches(all[*a]) || b.is_some_and(|b| filter.matches(all[b])))
            .collect();
        if args.json {
            for (a, b) in &pairs {
                let pair = PairJson {
                    a: row(all[*a]),
                    b: b.map(|b| row(all[b])),
                };
                serde_json::to_writer(&mut out, &pair)?;
                writeln!(out)?;
            }
        } else {
            view::pairs_table(&all, &pairs, &label, show_ns, args.wide)
                .write_within(&mut out, table::width(args.wide))?;
        }
    } else if args.json {
        for s in &shown {
            serde_json::to_writer(&mut out, &row(s))?;
            writeln!(out)?;
        }
    } else {
        view::connections_table(&shown, &label, show_ns, args.wide)
            .write_within(&mut out, table::width(args.wide))?;
    }
    out.flush()?;
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One JSON row with the deeper probes' facts.
fn json_row<'a>(
    s: &'a SocketSample,
    netns: &'a str,
    probes: &Probes,
    owners: Option<&mut OwnerIndex>,
) -> ConnectionJson<'a> {
    let mut row = ConnectionJson::new(s, netns).with_bpf(probes.bpf(s.cookie));
    if let Some(index) = owners {
        if let Some(e) = row.with_owner(index, s.wqueue) {
            eprintln!(
                "tcpstall-agent: cork of {} -> {} unknown: {e}",
                s.local, s.remote
            );
        }
    }
    row
}

fn capture(args: CaptureArgs) -> anyhow::Result<ExitCode> {
    let namespaces = netns::resolve(&args.netns.netns)?;
    if namespaces.len() != 1 {
        anyhow::bail!(
            "--netns: capture reads one namespace per file ({} given); run it once per namespace",
            namespaces.len()
        );
    }
    let mut file = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let mut bytes = 0usize;
    for ns in &namespaces {
        let mut sock = netns::open_diag(ns)?;
        for family in Family::BOTH {
            let mut write_err = None;
            sock.dump_chunks(family, |chunk, seq| {
                bytes += chunk.len();
                if let Err(e) = file.write_all(chunk) {
                    write_err.get_or_insert(e);
                }
                parse::chunk_end(chunk, seq)
            })
            .with_context(|| format!("dumping namespace {}", ns.label))?;
            if let Some(e) = write_err {
                return Err(e).with_context(|| format!("writing {}", args.output.display()));
            }
        }
    }
    eprintln!(
        "wrote {bytes} bytes of sock_diag replies to {}",
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
