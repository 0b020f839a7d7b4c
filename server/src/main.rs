//! `quiver`: the Quiver feature store server.

// The handler's futures nest the session's, which nest DataFusion's and both Raft groups': rustc
// computing their layouts has been seen to pass the default query depth of 128.
#![recursion_limit = "256"]

mod cancel;
mod connection;
mod errors;
mod found_rows;
mod handler;
mod scram;
mod startup;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use handler::QuiverHandlers;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (its v2 and v3 alike); the mimalloc crate's bindings
/// name no constant for it.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// How long freed memory stays with the process before it goes back to the OS.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// mimalloc gives freed memory back to the OS a second after it is freed. A query that sorts or
/// writes gigabytes then takes fresh pages from the kernel again and again, and the kernel zeroes
/// each one (a fifth of a feature-store ASOF join's time on the project machine, a virtual machine
/// that hands free pages back to its host). Kept for 10 s, freed memory is reused by the next
/// batch or query, and an idle server still returns it. `MIMALLOC_PURGE_DELAY` in the environment, which
/// mimalloc reads itself, takes precedence.
fn keep_freed_memory_for_reuse() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set stores an integer option of the allocator linked in as the global
        // allocator; the option index is the one mimalloc.h declares for the purge delay.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
    }
}

/// How long a shutdown waits for open connections to finish their statements.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "Quiver: a SQL-first feature store on the PostgreSQL wire protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the PostgreSQL protocol.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5433", env = "QUIVER_LISTEN")]
        listen: SocketAddr,
        /// Directory that holds the catalog and, unless --offline-store says otherwise, the
        /// offline store.
        #[arg(long, default_value = "./quiver-data", env = "QUIVER_DATA_DIR")]
        data_dir: PathBuf,
        /// Where the offline store's Delta tables live: a directory, a file:// URL, or
        /// s3://bucket/prefix (credentials, region and endpoint from the AWS_* environment
        /// variables). Default: <data-dir>/offline.
        #[arg(long, env = "QUIVER_OFFLINE_STORE")]
        offline_store: Option<String>,
        /// Memory for the online store's block cache, in MiB.
        #[arg(long, default_value_t = 256, env = "QUIVER_ONLINE_CACHE_MB")]
        online_cache_mb: usize,
        /// Memory for the online store's row cache, in MiB (0: none). Rows found by key lookups
        /// are kept here, and a lookup that finds its row here skips the block search.
        #[arg(long, default_value_t = 0, env = "QUIVER_ONLINE_ROW_CACHE_MB")]
        online_row_cache_mb: usize,
        /// Threads that serve client connections. Default: the number of cores.
        #[arg(long, env = "QUIVER_CONNECTION_THREADS")]
        connection_threads: Option<usize>,
        /// Memory that running queries' sorts, joins and aggregations share, in MiB; beyond it
        /// they spill to <data-dir>/spill.
        #[arg(long, default_value_t = 4096, env = "QUIVER_QUERY_MEMORY_MB")]
        query_memory_mb: usize,
        /// PEM certificate chain for TLS (with --tls-key).
        #[arg(long, env = "QUIVER_TLS_CERT")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for TLS.
        #[arg(long, env = "QUIVER_TLS_KEY")]
        tls_key: Option<PathBuf>,
        /// Refuse connections that do not use TLS.
        #[arg(long, env = "QUIVER_TLS_REQUIRED")]
        tls_required: bool,
        /// This node's id in the cluster (with --peers and --raft-listen).
        #[arg(long, env = "QUIVER_NODE_ID")]
        node_id: Option<u64>,
        /// Where this node serves its cluster peers (Raft over gRPC).
        #[arg(long, env = "QUIVER_RAFT_LISTEN")]
        raft_listen: Option<SocketAddr>,
        /// Every initial cluster member's Raft address, this node's included: `1=host:port,2=...`.
        /// Nodes started with the same peers form the cluster; without it, a single node.
        #[arg(long, env = "QUIVER_PEERS")]
        peers: Option<String>,
        /// In a cluster, each Raft group snapshots its state machine after this many log entries
        /// and purges the log before it; a node further behind catches up by snapshot.
        #[arg(long, default_value_t = 5000, env = "QUIVER_RAFT_SNAPSHOT_EVERY", value_parser = clap::value_parser!(u64).range(1..))]
        raft_snapshot_every: u64,
        /// PEM certificate chain this node presents to its cluster peers, as a server and as a
        /// client (with --raft-tls-key and --raft-tls-ca: mutual TLS between nodes).
        #[arg(long, env = "QUIVER_RAFT_TLS_CERT")]
        raft_tls_cert: Option<PathBuf>,
        /// PEM private key of --raft-tls-cert.
        #[arg(long, env = "QUIVER_RAFT_TLS_KEY")]
        raft_tls_key: Option<PathBuf>,
        /// PEM certificate of the CA that signs every node's certificate: only its nodes get in.
        #[arg(long, env = "QUIVER_RAFT_TLS_CA")]
        raft_tls_ca: Option<PathBuf>,
        /// Sessions open at once, all users together; more are refused with 53300 (each
        /// user's CONNECTION LIMIT applies too).
        #[arg(long, default_value_t = 100, env = "QUIVER_MAX_CONNECTIONS")]
        max_connections: usize,
        /// A file whose first line is the superuser quiver's password (as QUIVER_PASSWORD).
        /// With a password configured, every client authenticates with SCRAM-SHA-256.
        #[arg(long, env = "QUIVER_PASSWORD_FILE")]
        password_file: Option<PathBuf>,
    },
}

/// Gives the superuser `quiver` the configured password, unless its verifier already is for
/// that password (a restart with the same password changes nothing in the catalog).
async fn set_superuser_password(engine: &quiver_sql::Engine, password: &str) -> Result<(), String> {
    let catalog = engine.catalog.snapshot();
    let current = catalog
        .user(quiver_catalog::BOOTSTRAP_NAME)
        .and_then(|user| user.password.as_ref());
    if current.is_some_and(|verifier| scram::verifier_matches(verifier, password)) {
        return Ok(());
    }
    let verifier = quiver_catalog::ScramVerifier::parse(
        &postgres_protocol::password::scram_sha_256(password.as_bytes()),
    )
    .ok_or("cannot make a SCRAM verifier for the configured password")?;
    engine
        .change_catalog(quiver_catalog::CatalogCommand::AlterUser {
            name: quiver_catalog::BOOTSTRAP_NAME.into(),
            change: quiver_catalog::UserChange {
                password: Some(Some(verifier)),
                ..Default::default()
            },
        })
        .await
        .map_err(|e| format!("cannot set the superuser's password: {e}"))?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    keep_freed_memory_for_reuse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QUIVER_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,buoyant_kernel=warn,deltalake_core=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // Two rustls providers are built (ring, and aws-lc-rs for the S3 client): TLS set up without
    // naming one (tonic's, between cluster nodes) needs the process default. A second install
    // cannot happen here, the first statement of the process.
    let _ = pgwire::tokio::tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("quiver: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Queries run on their own runtime so that a CPU-heavy query never starves the connections.
    let executor = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("quiver-query")
        .enable_all()
        .build()
    {
        Ok(executor) => executor,
        Err(e) => {
            eprintln!("quiver: cannot start the query runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let background = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("quiver-background")
        .on_thread_start(lower_thread_priority)
        .enable_all()
        .build()
    {
        Ok(background) => background,
        Err(e) => {
            eprintln!("quiver: cannot start the background runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtimes = quiver_sql::Runtimes {
        executor: executor.handle().clone(),
        background: background.handle().clone(),
    };
    let result = match cli.command {
        Command::Serve {
            listen,
            data_dir,
            offline_store,
            online_cache_mb,
            online_row_cache_mb,
            connection_threads,
            query_memory_mb,
            tls_cert,
            tls_key,
            tls_required,
            max_connections,
            password_file,
            node_id,
            raft_listen,
            peers,
            raft_snapshot_every,
            raft_tls_cert,
            raft_tls_key,
            raft_tls_ca,
        } => runtime.block_on(serve(
            ServeOptions {
                listen,
                data_dir,
                offline_store,
                online_cache_mb,
                online_row_cache_mb,
                query_memory_mb,
                connection_threads,
                tls: tls::TlsOptions {
                    cert: tls_cert,
                    key: tls_key,
                    required: tls_required,
                },
                password_file,
                max_connections,
                cluster: ClusterOptions {
                    node_id,
                    raft_listen,
                    peers,
                    snapshot_every: raft_snapshot_every,
                    tls: tls::ClusterTlsOptions {
                        cert: raft_tls_cert,
                        key: raft_tls_key,
                        ca: raft_tls_ca,
                    },
                },
            },
            runtimes,
        )),
    };
    executor.shutdown_timeout(SHUTDOWN_GRACE);
    background.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("quiver: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Puts the calling thread in the idle scheduling class: it runs when a CPU has nothing else to
/// run, and a waking thread of the default class takes its CPU at once. Served rows were written
/// to the prediction log in bursts (a second's rows at once, and a compaction of the log's files
/// every half minute) that took a core from serving: p99 at 8 connections was 3-6 ms; at nice 10
/// 1-3 ms (the scheduler still gives such a thread its slice of a few ms before serving gets the
/// CPU back); in the idle class 0.4-0.7 ms. Linux keeps the class per thread, and threads
/// inherit their creator's. Other systems leave the thread as it is.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        let idle = libc::sched_param { sched_priority: 0 };
        // SAFETY: sched_setscheduler reads the parameters it is given; pid 0 is the calling
        // thread.
        let lowered = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) };
        if lowered != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "background work runs at the priority of serving"
            );
        }
    }
}

/// `quiver serve`'s options.
struct ServeOptions {
    listen: SocketAddr,
    data_dir: PathBuf,
    offline_store: Option<String>,
    online_cache_mb: usize,
    online_row_cache_mb: usize,
    query_memory_mb: usize,
    connection_threads: Option<usize>,
    tls: tls::TlsOptions,
    password_file: Option<PathBuf>,
    max_connections: usize,
    cluster: ClusterOptions,
}

/// `--node-id`, `--raft-listen`, `--peers`, `--raft-snapshot-every`, `--raft-tls-*` as given.
struct ClusterOptions {
    node_id: Option<u64>,
    raft_listen: Option<SocketAddr>,
    peers: Option<String>,
    snapshot_every: u64,
    tls: tls::ClusterTlsOptions,
}

impl ClusterOptions {
    /// The catalog group this node joins, or `None` for a single node; all three flags or none.
    fn node_config(
        &self,
        sql_listen: SocketAddr,
    ) -> Result<Option<quiver_catalog::raft::NodeConfig>, String> {
        let tls = self.tls.configure()?;
        let (node_id, raft_listen, peers) = match (self.node_id, self.raft_listen, &self.peers) {
            (None, None, None) if tls.is_some() => {
                return Err("--raft-tls-* configure a cluster node: add --node-id, --raft-listen and --peers".into());
            }
            (None, None, None) => return Ok(None),
            (Some(id), Some(listen), Some(peers)) => (id, listen, peers),
            _ => {
                return Err(
                    "a cluster node needs --node-id, --raft-listen and --peers together".into(),
                );
            }
        };
        let mut members = std::collections::BTreeMap::new();
        for peer in peers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = peer
                .split_once('=')
                .ok_or_else(|| format!("--peers: \"{peer}\" is not id=host:port"))?;
            let id: u64 = id
                .trim()
                .parse()
                .map_err(|_| format!("--peers: \"{id}\" is not a node id"))?;
            let addr = addr.trim().to_string();
            quiver_catalog::raft::check_raft_addr(&addr)
                .map_err(|e| format!("--peers: node {id}: {e}"))?;
            let sql_addr = if id == node_id {
                sql_listen.to_string()
            } else {
                String::new()
            };
            if members
                .insert(
                    id,
                    quiver_catalog::raft::ClusterNode {
                        raft_addr: addr,
                        sql_addr,
                    },
                )
                .is_some()
            {
                return Err(format!("--peers names node {id} twice"));
            }
        }
        if !members.contains_key(&node_id) {
            return Err(format!(
                "--peers does not name this node (--node-id {node_id})"
            ));
        }
        Ok(Some(quiver_catalog::raft::NodeConfig {
            node_id,
            raft_listen,
            peers: members,
            settings: quiver_catalog::raft::GroupSettings {
                snapshot_every: self.snapshot_every,
            },
            tls,
        }))
    }
}

/// The superuser's password from `--password-file` or `QUIVER_PASSWORD`, if one is configured.
fn configured_password(password_file: Option<&std::path::Path>) -> Result<Option<String>, String> {
    let password = match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--password-file {}: {e}", path.display()))?;
            Some(text.lines().next().unwrap_or_default().to_string())
        }
        None => std::env::var("QUIVER_PASSWORD").ok(),
    };
    match password {
        Some(password) if password.is_empty() => {
            Err("the configured password is empty; unset QUIVER_PASSWORD (or --password-file) for loopback trust".into())
        }
        other => Ok(other),
    }
}

async fn serve(options: ServeOptions, runtimes: quiver_sql::Runtimes) -> Result<(), String> {
    let ServeOptions {
        listen,
        data_dir,
        offline_store,
        online_cache_mb,
        online_row_cache_mb,
        query_memory_mb,
        connection_threads,
        tls,
        password_file,
        max_connections,
        cluster,
    } = options;
    // Everything that can be wrong with the configuration is found before the data directory
    // is opened: a server asked for TLS or passwords never starts without them.
    let tls = tls::Tls::configure(&tls)?;
    let password = configured_password(password_file.as_deref())?;
    let cluster = cluster.node_config(listen)?;
    let offline_location = offline_store
        .map(|text| quiver_sql::StoreLocation::parse(&text))
        .transpose()
        .map_err(|e| format!("--offline-store: {e}"))?;
    let options = quiver_sql::EngineOptions {
        offline_location,
        online_cache_bytes: online_cache_mb.saturating_mul(1 << 20),
        online_row_cache_bytes: online_row_cache_mb.saturating_mul(1 << 20),
        query_memory_bytes: query_memory_mb.saturating_mul(1 << 20),
        cluster,
    };
    let engine = quiver_sql::Engine::open(&data_dir, &options, runtimes)
        .await
        .map_err(|e| format!("cannot open data directory {}: {e}", data_dir.display()))?;
    let authentication = match &password {
        Some(password) => {
            set_superuser_password(&engine, password).await?;
            startup::AuthMethod::Scram
        }
        None => startup::AuthMethod::TrustLoopback,
    };
    let policy = startup::AccessPolicy {
        authentication,
        tls_required: tls.required,
        max_connections,
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, data_dir = %data_dir.display(), offline_store = %engine.offline.location(), tls = tls.acceptor.is_some(), ?authentication, "quiver is ready to accept connections");
    let handlers = Arc::new(QuiverHandlers::new(engine.clone(), policy)?);
    let connection_threads = connection_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let connection_threads = connection::ConnectionThreads::start(connection_threads)
        .map_err(|e| format!("cannot start the connection threads: {e}"))?;
    let mut connections = JoinSet::new();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch for SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let handlers = handlers.clone();
                    let tls_acceptor = tls.acceptor.clone();
                    // The socket moves to the reactor of the connection thread it is served on.
                    let socket = match socket.into_std() {
                        Ok(socket) => socket,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "cannot hand the connection over");
                            continue;
                        }
                    };
                    // Each connection is its own task: a panic in one ends that connection only.
                    connections.spawn_on(async move {
                        let served = match tokio::net::TcpStream::from_std(socket) {
                            Ok(socket) => connection::serve(socket, handlers, tls_acceptor).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = served {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    }, connection_threads.next());
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = finished && e.is_panic() {
                    tracing::error!(error = %e, "a connection panicked; the server goes on");
                }
            }
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!(open_connections = connections.len(), "shutting down");
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.abort_all();
    }
    engine.write_pending().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The option index is mimalloc's purge delay: its default (1000 ms in mimalloc v3) until
    /// the server sets it.
    #[test]
    fn the_purge_delay_is_the_option_set() {
        // SAFETY: reads and writes an integer option of the linked allocator.
        let before = unsafe { super::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(before, 1000);
        super::keep_freed_memory_for_reuse();
        let after = unsafe { super::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(after, super::PURGE_DELAY_MS);
    }
}
