//! Wiring: the store thread, the gateway's and the matcher's tasks and the
//! gRPC services, started together and stopped in order (stop accepting,
//! let the gateway and the matcher finish, flush the store).

use std::future::Future;

use anyhow::Context;
use tcpstall_common::Clock;
use tcpstall_proto::server::query_server::QueryServer;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::fleet;
use crate::gateway::{self, Gateway, IngestService};
use crate::matcher::{self, Matcher, Question};
use crate::metrics;
use crate::query::{QueryService, TokenCheck as QueryTokenCheck};
use crate::store::{PgConfig, PgStore, SharedStore, SqliteStore, StoreConfig, StoreUrl};
use crate::tls;
use crate::web;

/// Messages queued for the matcher before streams wait. A message is at
/// most one agent's batch (a few hundred KB decoded): this bounds what
/// waits here; beyond it each agent's stream waits, then its own buffer.
const MATCHER_QUEUE: usize = 256;
/// Questions (queries, scrapes, reloads) queued for the matcher.
const QUESTIONS_QUEUE: usize = 64;
/// The gateway's inputs (hellos, heartbeats, streams gone, scrapes).
const GATEWAY_QUEUE: usize = 256;
/// Watch requests of the matcher's queued for the gateway before more are
/// dropped (and asked again): a burst of one batch's suspects fits.
const REQUESTS_QUEUE: usize = 16 * 1024;

/// HTTP/2 flow-control windows: what one agent may have in flight that the
/// collector has not yet read (a batch of 500 samples is about 80 KB; a
/// message larger than the window still flows, the window reopening as it
/// is read). They bound what a collector that falls behind holds per agent:
/// at 1,000 agents behind, 512 KB windows held about a gigabyte of the
/// 1.4 GiB heap (BENCHMARKS.md). 128 KB per agent still carries a batch per
/// round trip, megabytes a second at WAN round trips.
const STREAM_WINDOW: Option<u32> = Some(128 * 1024);
const CONNECTION_WINDOW: Option<u32> = Some(128 * 1024);

/// How long requests in flight may finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Who judges the flows.
enum Judge {
    Local {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    },
    Fleet(fleet::Node),
}

/// Fleet mode's settings, when the config names NATS servers.
fn fleet_settings(config: &Config) -> Option<fleet::Settings> {
    if config.nats.is_empty() {
        return None;
    }
    let node = config.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "collector".into())
    });
    Some(fleet::Settings {
        nats: config.nats.clone(),
        node,
        partitions: config.partitions,
        replicas: config.nats_replicas,
        lease: config.lease,
        replay: config.replay,
        tls_ca: config.nats_tls_ca.clone(),
        token_file: config.nats_token_file.clone(),
    })
}

/// Runs the collector on `config.listen` until `shutdown` completes.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_reloading(config, shutdown, mpsc::channel(1).1).await
}

/// As [`serve`], applying each config that comes on `reloads` (SIGHUP)
/// where that is safe while running.
pub async fn serve_reloading(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    reloads: mpsc::Receiver<Config>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    serve_on_reloading(listener, config, shutdown, reloads).await
}

/// Runs the collector on a bound listener (its `listen` setting unused)
/// until `shutdown` completes; for embedding, as `tcpstall demo` does.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    serve_on_reloading(listener, config, shutdown, mpsc::channel(1).1).await
}

/// What a reload cannot change while running: they name sockets, files
/// and buffers already in use.
fn fixed_while_running(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fixed = Vec::new();
    if old.listen != new.listen {
        fixed.push("listen");
    }
    if old.db != new.db {
        fixed.push("db");
    }
    if old.store != new.store || old.store_password_file != new.store_password_file {
        fixed.push("store, store_password_file");
    }
    if old.metrics_listen != new.metrics_listen {
        fixed.push("metrics_listen");
    }
    if old.web_listen != new.web_listen {
        fixed.push("web_listen");
    }
    if old.workers != new.workers {
        fixed.push("workers");
    }
    if old.nats != new.nats
        || old.node_name != new.node_name
        || old.partitions != new.partitions
        || old.nats_replicas != new.nats_replicas
        || old.lease != new.lease
        || old.replay != new.replay
        || old.nats_tls_ca != new.nats_tls_ca
        || old.nats_token_file != new.nats_token_file
    {
        fixed.push("nats, node_name, partitions, nats_replicas, lease, replay, nats_tls_ca, nats_token_file");
    }
    if old.max_message_bytes != new.max_message_bytes {
        fixed.push("max_message_bytes");
    }
    if old.query_token_file != new.query_token_file {
        fixed.push("query_token_file");
    }
    if old.tls_cert != new.tls_cert
        || old.tls_key != new.tls_key
        || old.tls_client_ca != new.tls_client_ca
        || old.plaintext != new.plaintext
    {
        fixed.push("tls_cert, tls_key, tls_client_ca, plaintext");
    }
    fixed
}

/// Applies reloaded configs until `reloads` closes.
async fn reload(
    mut current: Config,
    mut reloads: mpsc::Receiver<Config>,
    matcher: mpsc::Sender<Question>,
    gateway: mpsc::Sender<gateway::Input>,
    store: SharedStore,
    max_batch_samples: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    while let Some(new) = reloads.recv().await {
        let fixed = fixed_while_running(&current, &new);
        if !fixed.is_empty() {
            tracing::warn!(settings = ?fixed, "these settings change only with a restart; kept as they were");
        }
        let question = Question::Reload {
            threshold: new.threshold,
            watch_peer_after: new.watch_peer_after,
            max_samples: new.max_samples_per_episode,
        };
        if matcher.send(question).await.is_err() {
            return;
        }
        let limit = gateway::Input::Reload {
            max_agents: new.max_agents,
        };
        if gateway.send(limit).await.is_err() {
            return;
        }
        let bound = (new.max_db_bytes > 0).then_some(new.max_db_bytes);
        if !store.set_limits(new.retention, bound).await {
            return;
        }
        max_batch_samples.store(new.max_batch_samples, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            threshold = ?new.threshold,
            watch_peer_after = ?new.watch_peer_after,
            retention = ?new.retention,
            max_db_bytes = new.max_db_bytes,
            max_agents = new.max_agents,
            max_batch_samples = new.max_batch_samples,
            max_samples_per_episode = new.max_samples_per_episode,
            "config reloaded"
        );
        current = Config {
            listen: current.listen,
            db: current.db,
            store: current.store,
            store_password_file: current.store_password_file,
            metrics_listen: current.metrics_listen,
            web_listen: current.web_listen,
            max_message_bytes: current.max_message_bytes,
            query_token_file: current.query_token_file,
            tls_cert: current.tls_cert,
            tls_key: current.tls_key,
            tls_client_ca: current.tls_client_ca,
            plaintext: current.plaintext,
            ..new
        };
    }
}

/// As [`serve_on`], applying reloaded configs.
pub async fn serve_on_reloading(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    reloads: mpsc::Receiver<Config>,
) -> anyhow::Result<()> {
    // Files first: a bad certificate stops the start before anything opens.
    let tls = tls::server_config(&config)?;
    // One wall clock for every record, query and retention: the wall clock
    // at start advanced by a monotonic one, so that differences of it (how
    // long an agent was silent) never go backwards.
    let clock = Clock::monotonic();
    let (store, store_task, next_episode) = open_store(&config, clock.clone()).await?;

    let (matcher_tx, matcher_rx) = mpsc::channel(MATCHER_QUEUE);
    let (gateway_tx, gateway_rx) = mpsc::channel(GATEWAY_QUEUE);
    let (requests_tx, requests_rx) = mpsc::channel(REQUESTS_QUEUE);
    // The judging role: this process's matcher, or in fleet mode the
    // matchers of the partitions this node holds, fed over NATS.
    let mut gateway = Gateway::new(store.clone(), config.max_agents);
    let (questions_tx, judge, fleet_stats) = match fleet_settings(&config) {
        None => {
            let (questions_tx, questions_rx) = mpsc::channel(QUESTIONS_QUEUE);
            let state = Matcher::new(
                store.clone(),
                requests_tx,
                config.threshold,
                next_episode,
                config.max_samples_per_episode,
            )
            .watch_peer_after(config.watch_peer_after);
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(matcher::run(
                state,
                matcher_rx,
                questions_rx,
                stopped,
                clock.clone(),
            ));
            (questions_tx, Judge::Local { stop, task }, None)
        }
        Some(settings) => {
            if matches!(config.store_url()?, crate::store::StoreUrl::Sqlite(_)) {
                tracing::warn!(
                    "fleet mode on a SQLite store: this node stores only what it judges, and \
                     queries to it see only that; give every node one --store postgres://..."
                );
            }
            let bus = fleet::connect(&settings).await?;
            tracing::info!(node = %settings.node, nats = ?settings.nats, partitions = settings.partitions, "fleet mode: joined");
            let judging = fleet::Judging {
                threshold: config.threshold,
                watch_peer_after: config.watch_peer_after,
                max_samples: config.max_samples_per_episode,
                max_entries: config.max_batch_samples,
            };
            let node = fleet::Node::start(
                bus,
                &settings,
                judging,
                store.clone(),
                clock.clone(),
                matcher_rx,
                requests_tx,
            );
            let stats = node.stats.clone();
            gateway = gateway.with_elsewhere(node.elsewhere());
            (node.questions.clone(), Judge::Fleet(node), Some(stats))
        }
    };
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel();
    let gateway_task = tokio::spawn(gateway::run(
        gateway,
        gateway_rx,
        requests_rx,
        matcher_tx.clone(),
        gateway_stopped,
        clock.clone(),
    ));

    let local = listener.local_addr().context("local address")?;
    // Tests and scripts read this line to learn the port of --listen :0.
    eprintln!("tcpstall-collector listening on {local}");
    tracing::info!(%local, store = %config.store_url()?, threshold = ?config.threshold, tls = tls.is_some(), mtls = config.tls_client_ca.is_some(), "collector started");
    if tls.is_none() {
        if local.ip().is_loopback() {
            tracing::warn!(%local, "serving plaintext on loopback: only this host can reach it; give --tls-cert and --tls-key for other hosts");
        } else {
            tracing::warn!(%local, "serving plaintext (--plaintext): agents' data and query tokens cross the network unencrypted");
        }
    }

    let token = match &config.query_token_file {
        Some(path) => QueryTokenCheck::from_file(path)?,
        None => QueryTokenCheck::new(None),
    };
    let tls_refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ingest = IngestService::new(
        gateway_tx.clone(),
        matcher_tx.clone(),
        clock.clone(),
        config.max_batch_samples,
        config.max_message_bytes,
    );
    let ingest = if config.tls_client_ca.is_some() {
        ingest.require_client_certs()
    } else {
        ingest
    };
    let ingest = if fleet_stats.is_some() {
        ingest.keep_every_encoding()
    } else {
        ingest
    };
    let query = QueryService::new(store.clone(), questions_tx.clone(), clock);
    let reloading = tokio::spawn(reload(
        config.clone(),
        reloads,
        questions_tx.clone(),
        gateway_tx.clone(),
        store.clone(),
        ingest.max_batch_samples.clone(),
    ));
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics: listening on {addr}"))?;
            let local = listener.local_addr().context("metrics: local address")?;
            // Tests read this line to learn the port of --metrics-listen :0.
            eprintln!("tcpstall-collector metrics on http://{local}/metrics");
            let sources = metrics::Sources {
                matcher: questions_tx.clone(),
                gateway: gateway_tx.clone(),
                store: store.clone(),
                refused: ingest.refused.clone(),
                tls_refused: tls_refused.clone(),
                fleet: fleet_stats.clone(),
            };
            Some(tokio::spawn(metrics::serve(
                listener,
                sources,
                std::future::pending(),
            )))
        }
        None => None,
    };
    let web = match config.web_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("web page: listening on {addr}"))?;
            let local = listener.local_addr().context("web page: local address")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            // Tests read this line to learn the port of --web-listen :0.
            eprintln!("tcpstall-collector web page on {scheme}://{local}/");
            let token = config
                .query_token_file
                .as_deref()
                .map(crate::query::read_token)
                .transpose()?;
            let page = std::sync::Arc::new(
                web::Web::new(store.clone(), token, tls.is_some())
                    .with_collector(questions_tx.clone(), gateway_tx.clone()),
            );
            Some(match &tls {
                Some(t) => tokio::spawn(web::serve_tls(
                    listener,
                    t.clone(),
                    tls_refused.clone(),
                    page,
                )),
                None => tokio::spawn(web::serve(listener, page, std::future::pending())),
            })
        }
        None => None,
    };
    drop((matcher_tx, questions_tx, gateway_tx));
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(ingest.into_server())
        .add_service(tonic::service::interceptor::InterceptedService::new(
            QueryServer::new(query).max_decoding_message_size(64 * 1024),
            token,
        ));
    let node_stopping = match &judge {
        Judge::Fleet(node) => Some(node.stopping.clone()),
        Judge::Local { .. } => None,
    };
    let shutdown = async move {
        shutdown.await;
        // A fleet node's hosts outlive its streams: they move to another.
        if let Some(s) = node_stopping {
            s.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        notify.notify_one();
    };
    let server: std::pin::Pin<
        Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
    > = match tls {
        Some(tls) => {
            let accepted = tls::accept(listener, tls, tls_refused);
            Box::pin(router.serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(accepted),
                shutdown,
            ))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )),
    };
    // Agents' streams never end by themselves: after the signal, give
    // requests in flight a grace period, then stop waiting for them.
    tokio::select! {
        res = server => res.context("gRPC server")?,
        _ = async {
            stopping.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::info!("closing the agents' streams"),
    }

    // Then the gateway and the matcher (metrics first: they ask them),
    // then the store,
    // which commits what it holds.
    if let Some(m) = metrics {
        m.abort();
    }
    if let Some(w) = web {
        w.abort();
    }
    reloading.abort();
    let _ = stop_gateway.send(());
    if let Err(e) = gateway_task.await {
        tracing::error!(error = %e, "gateway task failed");
    }
    match judge {
        Judge::Local { stop, task } => {
            let _ = stop.send(());
            if let Err(e) = task.await {
                tracing::error!(error = %e, "matcher task failed");
            }
        }
        // Partitions released: the other nodes take them at once.
        Judge::Fleet(node) => node.stop().await,
    }
    store.shutdown().await;
    match store_task {
        StoreTask::Thread(thread) => {
            if thread.join().is_err() {
                tracing::error!("store thread panicked");
            }
        }
        StoreTask::Task(task) => {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "store writer task failed");
            }
        }
    }
    Ok(())
}

/// What runs a store: SQLite's thread, or PostgreSQL's writer task.
enum StoreTask {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

/// Opens the store the `store` setting names (SQLite at `db` by default);
/// returns it, what runs it, and the next free episode id.
async fn open_store(
    config: &Config,
    clock: Clock,
) -> anyhow::Result<(SharedStore, StoreTask, i64)> {
    match config.store_url()? {
        StoreUrl::Sqlite(path) => {
            let (store, thread, next) = SqliteStore::open(StoreConfig {
                retention: config.retention,
                max_bytes: (config.max_db_bytes > 0).then_some(config.max_db_bytes),
                clock,
                ..StoreConfig::new(path.clone())
            })
            .with_context(|| format!("opening the database {}", path.display()))?;
            Ok((std::sync::Arc::new(store), StoreTask::Thread(thread), next))
        }
        StoreUrl::Postgres {
            config: target,
            shown,
        } => {
            let (store, task, next) = PgStore::open(PgConfig {
                retention: config.retention,
                clock,
                ..PgConfig::new(*target, shown.clone())
            })
            .await
            .with_context(|| format!("opening the store {shown}"))?;
            Ok((std::sync::Arc::new(store), StoreTask::Task(task), next))
        }
    }
}
