//! `tcpstall demo`: the whole product on one machine, no root needed. A
//! collector (embedded SQLite in a temporary directory) and an agent run
//! inside this process; two loopback connections are made, one whose
//! reader stops reading and one healthy; after the (shortened) threshold
//! the report and the diff of the stuck pair are printed. Everything it
//! started stops, and the temporary directory goes, when it ends.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tcpstall_agent::netns;
use tcpstall_agent::run::RunSettings;
use tcpstall_collector::config::Config;
use tcpstall_common::record::{EpisodeDetail, EpisodeQuery};
use tcpstall_common::Side;
use tcpstall_proto::convert;
use tcpstall_proto::v1::query_client::QueryClient;
use tokio::sync::oneshot;

use crate::render::{self, Style};
use crate::{exit, model, plotting, Failure};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stuck time that makes an episode (the real default is 10s).
    #[arg(long, default_value = "3s", value_parser = tcpstall_common::duration::parse)]
    threshold: Duration,
    /// The agent's poll interval (the real default is 2s).
    #[arg(long, default_value = "500ms", value_parser = tcpstall_common::duration::parse)]
    interval: Duration,
    /// Where to write the plot of the stuck pair's episode (.svg or .png).
    #[arg(long, value_name = "FILE", default_value = "tcpstall-demo.svg")]
    plot: std::path::PathBuf,
    /// Give up when nothing was found within this long.
    #[arg(long, default_value = "60s", value_parser = tcpstall_common::duration::parse)]
    timeout: Duration,
    /// Then keep everything running, the stuck pair stuck, with the web
    /// page, until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Where --serve serves the web page (loopback: only this host).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:7788",
        requires = "serve"
    )]
    web_listen: SocketAddr,
}

/// A connection whose reading side stopped: the server's response sticks
/// in its send queue, as in the question's RPC timeouts.
struct Stuck {
    _server: TcpStream,
    _client: TcpStream,
    server_addr: SocketAddr,
    client_addr: SocketAddr,
}

fn stuck() -> std::io::Result<Stuck> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(l.local_addr()?)?;
    let (mut server, _) = l.accept()?;
    // The "response": more than the client's receive window takes.
    server.set_nonblocking(true)?;
    let chunk = vec![b'r'; 64 * 1024];
    loop {
        match server.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Stuck {
        server_addr: server.local_addr()?,
        client_addr: client.local_addr()?,
        _server: server,
        _client: client,
    })
}

/// A healthy request/response connection, until dropped.
struct Healthy {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn healthy() -> std::io::Result<Healthy> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(l.local_addr()?)?;
    let (mut server, _) = l.accept()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut req = [0u8; 64];
        let mut resp = vec![0u8; 8192];
        while !flag.load(Ordering::Relaxed) {
            let ok = client.write_all(&req).is_ok()
                && server.read_exact(&mut req).is_ok()
                && server.write_all(&resp).is_ok()
                && client.read_exact(&mut resp).is_ok();
            if !ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Ok(Healthy {
        stop,
        thread: Some(thread),
    })
}

impl Drop for Healthy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure {
        code: exit::FAILED,
        message: format!("demo: {what}: {e}"),
    }
}

pub async fn run(args: DemoArgs, style: Style, width: Option<usize>) -> Result<u8, Failure> {
    let dir = tempfile::Builder::new()
        .prefix("tcpstall-demo-")
        .tempdir()
        .map_err(|e| fail("creating a temporary directory", e))?;
    let db = dir.path().join("tcpstall.db");
    println!(
        "tcpstall demo: collector and agent in this process, database {}",
        db.display()
    );
    println!(
        "  threshold {} (shortened for the demo; the default is 10s), agent polls every {}",
        tcpstall_common::duration::format(args.threshold),
        tcpstall_common::duration::format(args.interval)
    );

    // The web page's address, taken or not, said now rather than after
    // the wait for the stall.
    if args.serve {
        drop(
            std::net::TcpListener::bind(args.web_listen)
                .map_err(|e| fail(&format!("the web page's address {}", args.web_listen), e))?,
        );
    }

    // The collector.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail("binding the collector", e))?;
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| fail("collector address", e))?
    );
    let config = Config {
        db: db.clone(),
        threshold: args.threshold,
        web_listen: args.serve.then_some(args.web_listen),
        ..Config::default()
    };
    let (stop_collector, collector_stopped) = oneshot::channel::<()>();
    let mut collector = tokio::spawn(tcpstall_collector::server::serve_on(
        listener,
        config,
        async {
            let _ = collector_stopped.await;
        },
    ));

    // The agent, on this host's namespace.
    let ns = netns::current().map_err(|e| fail("reading this network namespace", e))?;
    let settings = RunSettings {
        tls: None,
        collectors: vec![url.clone()],
        host: "demo-host".into(),
        // The demo's collector is its own: one machine, whatever its id.
        machine_id: tcpstall_common::MachineId::new("tcpstall-demo").ok(),
        interval: args.interval,
        namespaces: vec![ns.clone()],
        host_netns: ns,
        buffer: 16,
        batch_max: tcpstall_agent::run::DEFAULT_BATCH_MAX,
        backoff_max: Duration::from_millis(500),
        metrics_listen: None,
        follow: tcpstall_agent::config::auto_follow(args.interval),
        follow_max: 1000,
        scrubber: Default::default(),
        // Where the demo runs as root with BPF, its first phase too.
        kernel_filter: true,
    };
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(tcpstall_agent::run::run(settings, async {
        let _ = agent_stopped.await;
    }));

    // The connections.
    let s = stuck().map_err(|e| fail("opening the stuck connection", e))?;
    let h = healthy().map_err(|e| fail("opening the healthy connection", e))?;
    println!(
        "  stuck:   server {} -> client {} (the client stopped reading its response)",
        s.server_addr, s.client_addr
    );
    println!("  healthy: a request/response loop on another connection\n");

    let found = wait_for_episode(&url, &s, args.timeout).await;
    let code = match found {
        Ok(EpisodeDetail {
            episode, samples, ..
        }) => {
            let mut views = vec![model::episode_view(&episode, &samples)];
            let incidents = model::incidents(&mut views);
            let view = &views[0];
            println!("$ tcpstall report");
            print!(
                "{}",
                render::report_incidents(&views, &incidents, style, width)
            );
            println!("\n$ tcpstall diff {}", view.id);
            print!(
                "{}",
                render::diff(&view.peer.a, view.peer.b.as_ref(), width)
            );
            println!("\n$ tcpstall plot {} -o {}", view.id, args.plot.display());
            match plotting::write(&plotting::input(&episode, &samples), &args.plot) {
                Ok(()) => {
                    println!("plot written to {}", args.plot.display());
                    exit::OK
                }
                Err(e) => {
                    eprintln!("tcpstall demo: plot: {e}");
                    exit::FAILED
                }
            }
        }
        Err(e) => {
            eprintln!("tcpstall demo: {e}");
            exit::FAILED
        }
    };

    let mut collector_done = false;
    if args.serve && code == exit::OK {
        println!(
            "\nweb page: http://{}/ (the stuck pair stays stuck; Ctrl-C ends the demo)",
            args.web_listen
        );
        // The page is the collector's: it fails to start only with it.
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                if let Err(e) = r {
                    eprintln!("tcpstall demo: waiting for Ctrl-C: {e}");
                }
            }
            _ = &mut collector => {
                collector_done = true;
                eprintln!("tcpstall demo: the collector stopped");
            }
        }
    }

    // Stop everything we started, in order, and wait for it.
    drop(h);
    drop(s);
    let _ = stop_agent.send(());
    let _ = stop_collector.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), agent).await;
    if !collector_done {
        let _ = tokio::time::timeout(Duration::from_secs(10), collector).await;
    }
    drop(dir);
    println!("\ndemo over: collector and agent stopped, temporary directory removed");
    Ok(code)
}

/// Waits until the stuck flow's episode is stored with a settled diagnosis.
async fn wait_for_episode(
    url: &str,
    s: &Stuck,
    timeout: Duration,
) -> Result<EpisodeDetail, String> {
    let start = Instant::now();
    let mut last = String::from("nothing yet");
    while start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(mut q) = QueryClient::connect(url.to_string()).await else {
            last = "the collector is not answering yet".into();
            continue;
        };
        let list = q
            .list_episodes(convert::episode_query_to_wire(&EpisodeQuery::default()))
            .await;
        let eps = match list {
            Ok(r) => {
                convert::episode_page_from_wire(r.into_inner())
                    .map_err(|e| e.to_string())?
                    .episodes
            }
            Err(e) => {
                last = e.message().to_string();
                continue;
            }
        };
        let ours = eps
            .into_iter()
            .find(|e| e.a_flow.local == s.server_addr && e.a_flow.remote == s.client_addr);
        let Some(e) = ours else { continue };
        if e.diagnosis == "undetermined" {
            last = format!("episode {} waits for the peer end", e.id);
            continue;
        }
        let answer = q
            .get_episode(convert::episode_request_to_wire(e.id))
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let detail = convert::episode_detail_from_wire(answer).map_err(|e| e.to_string())?;
        if !detail.samples.iter().any(|x| x.side == Side::B) {
            last = format!("episode {} has no sample of the peer yet", e.id);
            continue;
        }
        println!(
            "episode {} stored after {:.1}s: {}\n",
            e.id,
            start.elapsed().as_secs_f64(),
            e.diagnosis
        );
        return Ok(detail);
    }
    Err(format!(
        "no episode for the stuck connection within {timeout:?} ({last})"
    ))
}
