//! `tcpstall`: the operator's CLI over the collector's query service.
#![forbid(unsafe_code)]

#[cfg(feature = "demo")]
mod demo;
mod export;
mod model;
mod plotting;
mod render;
mod stalls;

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tcpstall_client::tls::ClientFiles;
use tcpstall_client::{Client, ConnectError, Target};
use tcpstall_common::record::{EpisodeDetail, EpisodeQuery, FlowEnd, HeldQuery};
use tcpstall_common::{error_chain, FlowTuple};
use tcpstall_proto::convert::{self, ConvertError};

use crate::model::{episode_view, EndView, EpisodeView};
use crate::render::Style;

/// Exit codes a script can use.
pub mod exit {
    /// Done; for `report`, no stuck pair.
    pub const OK: u8 = 0;
    /// Something failed (said on stderr).
    pub const FAILED: u8 = 1;
    /// A bad flag or argument (clap's own code, and ours for what clap
    /// cannot check, like an unreadable --token-file).
    pub const USAGE: u8 = 2;
    /// The collector could not be reached.
    pub const UNREACHABLE: u8 = 3;
    /// The episode or flow asked for does not exist.
    pub const NOT_FOUND: u8 = 4;
    /// `report` found stuck pairs.
    pub const STUCK: u8 = 5;
}

/// Which TCP connections are stuck, who is at fault, and the numbers that
/// prove it, from the tcpstall collector.
#[derive(Debug, Parser)]
#[command(name = "tcpstall", version, about)]
struct Cli {
    /// The collector's query address.
    #[arg(
        long,
        global = true,
        env = "TCPSTALL_COLLECTOR",
        default_value = "http://127.0.0.1:7786"
    )]
    collector: String,
    /// A file holding the collector's query token, when it asks for one.
    #[arg(long, global = true, env = "TCPSTALL_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) to trust for an https:// collector [default:
    /// the system's roots].
    #[arg(long, global = true, env = "TCPSTALL_TLS_CA", value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate chain (PEM) to present, when the collector
    /// wants one.
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The name to check on the collector's certificate [default: the
    /// URL's host].
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Allow an http:// (plaintext) collector on another host; loopback
    /// needs no flag.
    #[arg(long, global = true)]
    plaintext: bool,
    /// One JSON document per answer instead of text (schema: docs/cli-json.md).
    #[arg(long, global = true)]
    json: bool,
    /// Tables whole: long cells (command lines, unit paths, hosts) are not
    /// cut with `…` to fit 100 columns.
    #[arg(long, global = true)]
    wide: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
struct Filters {
    /// Only episodes that started within this long (e.g. 30m, 2h, 7days).
    #[arg(long, value_name = "DURATION", value_parser = tcpstall_common::duration::parse)]
    since: Option<Duration>,
    /// Only episodes with this host at either end.
    #[arg(long)]
    host: Option<String>,
    /// Only this diagnosis (peer_not_reading, data_lost, ...).
    #[arg(long, value_parser = parse_diagnosis)]
    diagnosis: Option<String>,
    /// Only episodes still open.
    #[arg(long)]
    open: bool,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stuck pairs grouped into incidents (the pairs of one diagnosis
    /// around one host, overlapping in time), each pair beneath its
    /// incident: both ends, bytes stuck, age, diagnosis and the key
    /// evidence. Exits 5 when there is any.
    Report {
        #[command(flatten)]
        filters: Filters,
        /// One line per pair, without incidents.
        #[arg(long)]
        flat: bool,
    },
    /// Incidents: the stuck pairs of one diagnosis around one host,
    /// overlapping in time ("db-7 not reading from 12 hosts"), named by
    /// their first episode. Exits 5 when any is open.
    Incidents(Filters),
    /// Episode history.
    Episodes(Filters),
    /// Every held send queue that ended, short or long, counted by host
    /// pair: how many, how long, how they ended (the stalls that timed out
    /// an RPC without becoming an episode are here).
    Stalls {
        /// Only holds that ended within this long [default: 1h].
        #[arg(long, value_name = "DURATION", value_parser = tcpstall_common::duration::parse)]
        since: Option<Duration>,
        /// Only pairs with this host at either end.
        #[arg(long)]
        host: Option<String>,
    },
    /// One episode with its evidence and both ends.
    Show {
        /// Episode id.
        id: i64,
    },
    /// Both ends of a flow side by side: an episode id, or `ADDR:PORT
    /// ADDR:PORT` in either order (live, asks both agents to watch it).
    Diff {
        #[arg(num_args = 1..=2, value_name = "ID | ADDR:PORT ADDR:PORT")]
        flow: Vec<String>,
        /// Refresh in place every interval (live flows).
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value = "2s", value_parser = tcpstall_common::duration::parse)]
        interval: Duration,
    },
    /// The time–sequence graph of an episode: A's snd_una, snd_nxt,
    /// write_seq and window edge, B's rcv_nxt and copied, the stall shaded.
    Plot {
        /// Episode id.
        id: i64,
        /// Output file: .svg or .png.
        #[arg(short, long, value_name = "FILE")]
        output: std::path::PathBuf,
    },
    /// A self-contained demonstration: a collector on an embedded SQLite
    /// in a temporary directory, a local agent, one loopback connection
    /// whose reader stops and one healthy; then the report and the diff.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Every stored episode since a time, open and ended, as JSON lines
    /// (the fields of `episodes --json`) or CSV, on stdout or --output.
    Export(export::ExportArgs),
}

fn parse_diagnosis(s: &str) -> Result<String, String> {
    use tcpstall_common::Diagnosis;
    Diagnosis::from_id(s)
        .map(|d| d.id().to_string())
        .ok_or_else(|| {
            let ids: Vec<&str> = Diagnosis::ALL.iter().map(|d| d.id()).collect();
            format!("unknown diagnosis `{s}`; one of: {}", ids.join(", "))
        })
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        let code = match &e {
            ConnectError::Usage(_) => exit::USAGE,
            ConnectError::Unreachable(_) => exit::UNREACHABLE,
            ConnectError::Failed(_) => exit::FAILED,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(exit::FAILED, format!("{e:#}"))
    }
}

fn status_failure(what: &str, s: tonic::Status) -> Failure {
    // A status the client made from a broken transport (a plaintext
    // request to a TLS port ends so) has a source; one the collector sent
    // has none. Then the collector was not reached.
    if let Some(source) = std::error::Error::source(&s) {
        return Failure::new(
            exit::UNREACHABLE,
            format!("{what}: {}: {}", s.message(), error_chain(source)),
        );
    }
    let code = match s.code() {
        tonic::Code::NotFound => exit::NOT_FOUND,
        tonic::Code::Unavailable => exit::UNREACHABLE,
        tonic::Code::Unauthenticated => {
            return Failure::new(
                exit::FAILED,
                format!("{what}: {} (give it with --token-file)", s.message()),
            )
        }
        _ => exit::FAILED,
    };
    Failure::new(code, format!("{what}: {}", s.message()))
}

/// An answer `convert` refused: the collector sent what this CLI cannot
/// read.
fn answer_failure(what: &str, e: ConvertError) -> Failure {
    Failure::new(exit::FAILED, format!("{what}: the collector's answer: {e}"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tcpstall: starting the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("tcpstall: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Where the collector is and how to reach it, from the global flags.
fn target(cli: &Cli) -> Target {
    Target {
        url: cli.collector.clone(),
        token_file: cli.token_file.clone(),
        tls: ClientFiles {
            ca: cli.tls_ca.clone(),
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
            server_name: cli.tls_server_name.clone(),
        },
        plaintext: cli.plaintext,
    }
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    let json = cli.json;
    let width = tcpstall_client::table::width(cli.wide);
    let target = target(&cli);
    let style = Style {
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo(args) => demo::run(args, style, width).await,
        Command::Export(args) => {
            export::check(&args)?;
            let mut q = target.connect().await?;
            export::run(&mut q, &args).await
        }
        Command::Report { filters, flat } => {
            let f = about_now(filters);
            let mut q = target.connect().await?;
            let mut eps = list(&mut q, &f).await?;
            let incidents = model::incidents(&mut eps);
            // The stalls that ended short of the threshold, in the text
            // (the JSON stays the array of episodes it has always been).
            let held = if json {
                None
            } else {
                held_spans_if_known(&mut q, f.since, f.host.clone()).await?
            };
            print(json, &eps, || {
                let mut text = if flat {
                    render::report(&eps, style, width)
                } else {
                    render::report_incidents(&eps, &incidents, style, width)
                };
                if let Some(h) = &held {
                    text.push_str(&stalls::report_section(h));
                }
                text
            })?;
            Ok(if eps.iter().any(|e| e.open) {
                exit::STUCK
            } else {
                exit::OK
            })
        }
        Command::Stalls { since, host } => {
            let mut q = target.connect().await?;
            let since = since.unwrap_or(Duration::from_secs(3600));
            let s = held_spans(&mut q, Some(since), host).await?;
            print(json, &s, || stalls::render(&s, width))?;
            Ok(exit::OK)
        }
        Command::Incidents(f) => {
            let f = about_now(f);
            let mut q = target.connect().await?;
            let mut eps = list(&mut q, &f).await?;
            let incidents = model::incidents(&mut eps);
            print(json, &incidents, || render::incidents(&incidents, width))?;
            Ok(if incidents.iter().any(|i| i.open) {
                exit::STUCK
            } else {
                exit::OK
            })
        }
        Command::Episodes(f) => {
            let mut q = target.connect().await?;
            let mut eps = list(&mut q, &f).await?;
            model::incidents(&mut eps);
            print(json, &eps, || render::episodes(&eps, width))?;
            Ok(exit::OK)
        }
        Command::Plot { id, output } => {
            let mut q = target.connect().await?;
            let d = episode_detail(&mut q, id).await?;
            plotting::write(&plotting::input(&d.episode, &d.samples), &output)
                .map_err(|m| Failure::new(exit::FAILED, format!("plot of episode {id}: {m}")))?;
            if json {
                println!("{}", serde_json::json!({ "id": id, "plot": output }));
            } else {
                println!("{}", output.display());
            }
            Ok(exit::OK)
        }
        Command::Show { id } => {
            let mut q = target.connect().await?;
            let (mut e, n) = episode(&mut q, id).await?;
            let incident = incident_of(&mut q, &e).await?;
            e.incident = Some(incident.as_ref().map_or(e.id, |i| i.0));
            print(json, &e, || {
                let mut text = render::show(&e, n, width);
                // Alone, an episode is its own incident: nothing to add.
                if let Some((id, pairs, title)) = incident.filter(|i| i.1 > 1) {
                    let _ = writeln!(text, "\nPart of incident #{id} ({pairs} pairs): {title}");
                }
                text
            })?;
            Ok(exit::OK)
        }
        Command::Diff {
            flow,
            watch,
            interval,
        } => {
            let mut q = target.connect().await?;
            diff(json, width, &mut q, &flow, watch, interval).await
        }
    }
}

fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    let res = if json {
        serde_json::to_writer_pretty(&mut out, value)
            .map_err(|e| e.to_string())
            .and_then(|_| writeln!(out).map_err(|e| e.to_string()))
    } else {
        out.write_all(text().as_bytes()).map_err(|e| e.to_string())
    };
    res.map_err(|e| Failure::new(exit::FAILED, format!("writing the answer: {e}")))
}

/// [`held_spans`], or `None` from a collector that predates them.
async fn held_spans_if_known(
    q: &mut Client,
    since: Option<Duration>,
    host: Option<String>,
) -> Result<Option<stalls::Stalls>, Failure> {
    match held_spans_raw(q, since, host).await {
        Ok(r) => Ok(Some(r)),
        Err(s) if s.code() == tonic::Code::Unimplemented => Ok(None),
        Err(s) => Err(status_failure("listing held send queues", s)),
    }
}

/// The collector's held-span counts over `since`, by pair.
async fn held_spans(
    q: &mut Client,
    since: Option<Duration>,
    host: Option<String>,
) -> Result<stalls::Stalls, Failure> {
    held_spans_raw(q, since, host)
        .await
        .map_err(|s| status_failure("listing held send queues", s))
}

async fn held_spans_raw(
    q: &mut Client,
    since: Option<Duration>,
    host: Option<String>,
) -> Result<stalls::Stalls, tonic::Status> {
    let query = HeldQuery { since, host };
    let r = q
        .list_held_spans(convert::held_query_to_wire(&query))
        .await?
        .into_inner();
    // The window as asked, in the seconds the request carries it.
    let since_s = since.map(|d| d.as_secs().max(1));
    Ok(stalls::gather(&convert::held_spans_from_wire(r), since_s))
}

async fn list(q: &mut Client, f: &Filters) -> Result<Vec<EpisodeView>, Failure> {
    let query = EpisodeQuery {
        since: f.since,
        host: f.host.clone(),
        diagnosis: f.diagnosis.clone(),
        open_only: f.open,
        limit: f.limit,
        page_token: None,
    };
    let r = q
        .list_episodes(convert::episode_query_to_wire(&query))
        .await
        .map_err(|s| status_failure("listing episodes", s))?
        .into_inner();
    let eps = convert::episode_page_from_wire(r)
        .map_err(|e| answer_failure("listing episodes", e))?
        .episodes;
    let mut out = Vec::with_capacity(eps.len());
    for e in eps {
        let (view, _) = episode(q, e.id).await?;
        out.push(view);
    }
    Ok(out)
}

/// A report's and the incidents' filters: about now unless told
/// otherwise, open pairs and the last hour's.
fn about_now(mut f: Filters) -> Filters {
    if f.since.is_none() && !f.open {
        f.since = Some(Duration::from_secs(3600));
    }
    f
}

/// How far before an episode's start [`incident_of`] looks for the
/// episodes it overlaps.
const INCIDENT_LOOKBACK: Duration = Duration::from_secs(3600);

/// The incident episode `e` is part of (its id, episodes and title):
/// grouped among the episodes of its diagnosis stored with either of its
/// hosts, started from an hour before it on.
async fn incident_of(
    q: &mut Client,
    e: &EpisodeView,
) -> Result<Option<(i64, usize, String)>, Failure> {
    let back = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(Duration::ZERO, |now| {
            now.saturating_sub(Duration::from_millis(
                u64::try_from(e.started_at_ms).unwrap_or(0),
            ))
        })
        + INCIDENT_LOOKBACK;
    let mut around: Vec<tcpstall_common::record::Episode> = Vec::new();
    let hosts = std::iter::once(&e.peer.a.host).chain(e.peer.b.as_ref().map(|b| &b.host));
    for host in hosts {
        let query = EpisodeQuery {
            since: Some(back),
            host: Some(host.clone()),
            diagnosis: Some(e.diagnosis.clone()),
            open_only: false,
            limit: 1000,
            page_token: None,
        };
        let r = q
            .list_episodes(convert::episode_query_to_wire(&query))
            .await
            .map_err(|s| status_failure("listing the episodes around it", s))?
            .into_inner();
        let page = convert::episode_page_from_wire(r)
            .map_err(|e| answer_failure("listing the episodes around it", e))?;
        for ep in page.episodes {
            if !around.iter().any(|x| x.id == ep.id) {
                around.push(ep);
            }
        }
    }
    Ok(model::incident_around(e.id, &around))
}

/// An episode's view and how many samples were stored with it.
async fn episode(q: &mut Client, id: i64) -> Result<(EpisodeView, usize), Failure> {
    let (view, d) = episode_samples(q, id).await?;
    Ok((view, d.samples.len() + d.unreadable))
}

/// An episode and every sample stored with it, as the collector answers.
async fn episode_detail(q: &mut Client, id: i64) -> Result<EpisodeDetail, Failure> {
    let what = format!("episode {id}");
    let r = q
        .get_episode(convert::episode_request_to_wire(id))
        .await
        .map_err(|s| status_failure(&what, s))?
        .into_inner();
    convert::episode_detail_from_wire(r).map_err(|e| match e {
        ConvertError::Missing("episode") => Failure::new(
            exit::FAILED,
            format!("{what}: the collector sent no episode"),
        ),
        e => answer_failure(&what, e),
    })
}

/// An episode's view, and the episode with every sample stored with it.
async fn episode_samples(q: &mut Client, id: i64) -> Result<(EpisodeView, EpisodeDetail), Failure> {
    let d = episode_detail(q, id).await?;
    Ok((episode_view(&d.episode, &d.samples), d))
}

/// Parses `ADDR:PORT ADDR:PORT` or an episode id.
enum DiffTarget {
    Episode(i64),
    Flow(FlowTuple),
}

fn diff_target(args: &[String]) -> Result<DiffTarget, Failure> {
    let usage = |m: String| {
        Failure::new(
            2,
            format!("diff: {m} (give an episode id, or ADDR:PORT ADDR:PORT)"),
        )
    };
    match args {
        [id] => id
            .parse()
            .map(DiffTarget::Episode)
            .map_err(|_| usage(format!("`{id}` is not an episode id"))),
        [x, y] => {
            let a: SocketAddr = x
                .parse()
                .map_err(|_| usage(format!("`{x}` is not ADDR:PORT")))?;
            let b: SocketAddr = y
                .parse()
                .map_err(|_| usage(format!("`{y}` is not ADDR:PORT")))?;
            Ok(DiffTarget::Flow(FlowTuple::new(a, b)))
        }
        _ => Err(usage("one or two arguments".into())),
    }
}

async fn diff(
    json: bool,
    width: Option<usize>,
    q: &mut Client,
    args: &[String],
    watch: bool,
    interval: Duration,
) -> Result<u8, Failure> {
    match diff_target(args)? {
        DiffTarget::Episode(id) => {
            let (e, _) = episode(q, id).await?;
            print(json, &e.peer, || {
                render::diff(&e.peer.a, e.peer.b.as_ref(), width)
            })?;
            Ok(exit::OK)
        }
        DiffTarget::Flow(flow) => loop {
            let r = q
                .get_flow(convert::flow_request_to_wire(flow))
                .await
                .map_err(|s| status_failure("flow", s))?
                .into_inner();
            let ends = convert::flow_ends_from_wire(r).map_err(|e| answer_failure("flow", e))?;
            let end = |e: Option<FlowEnd>, tuple: FlowTuple| {
                e.map(|e| EndView::new(&e.host, tuple, Some(&e.sample)))
            };
            let a = end(ends.a, flow);
            let b = end(ends.b, flow.reversed());
            let (a, b) = match (a, b) {
                (Some(a), b) => (a, b),
                (None, Some(b)) => (b, None),
                (None, None) if watch => {
                    tokio::time::sleep(interval).await;
                    continue;
                }
                (None, None) => {
                    return Err(Failure::new(
                        exit::NOT_FOUND,
                        format!("no agent reports {flow} yet (asked both ends to watch it; try again in a poll, or --watch)"),
                    ))
                }
            };
            let ends = model::Ends { a, b };
            if watch && !json {
                print!("\x1b[2J\x1b[H");
            }
            print(json, &ends, || {
                render::diff(&ends.a, ends.b.as_ref(), width)
            })?;
            if !watch {
                return Ok(exit::OK);
            }
            tokio::time::sleep(interval).await;
        },
    }
}
