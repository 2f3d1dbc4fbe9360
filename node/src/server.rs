//! `cairn serve`: wires storage, the peer transport, the driver and the HTTP
//! API together, and turns signals into a clean shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::driver::{self, Driver, DriverExit};
use crate::http::{self, AppState};
use crate::metrics::NodeMetrics;
use crate::peers::{self, TransportConfig, TransportStats};
use crate::storage::{self, Storage, StorageStats};

/// How long a clean shutdown may take before the process exits anyway.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// Runs a node until it is stopped; returns the process exit code.
pub async fn serve(cfg: Config) -> i32 {
    match run(cfg).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot start");
            1
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<i32> {
    let release = cfg.release.release();
    tracing::info!(
        node = %cfg.id,
        release = release.version,
        protocols = %release.protocols,
        schema = release.schema,
        peer_addr = %cfg.peer_addr,
        http_addr = %cfg.http_addr,
        data_dir = %cfg.data_dir.display(),
        initial_cluster_version = cfg.initial_cluster_version.map(|v| v.version()),
        "starting"
    );
    let store = {
        let dir = cfg.data_dir.clone();
        tokio::task::spawn_blocking(move || Storage::open(&dir)).await??
    };
    let peer_listener = TcpListener::bind(cfg.peer_addr)
        .await
        .with_context(|| format!("peer_addr: cannot listen on {}", cfg.peer_addr))?;
    let http_listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("http_addr: cannot listen on {}", cfg.http_addr))?;

    let node_cfg = cfg.node_config(rand::rngs::OsRng.next_u64());
    let limits = node_cfg.limits;
    let (handle, inbox) = driver::channel(65_536);
    let transport_stats = Arc::new(TransportStats::default());
    let sender = peers::start(
        TransportConfig {
            id: cfg.id,
            secret: Arc::from(cfg.secret.as_bytes()),
            members: cfg.members.clone(),
            queue: cfg.peer_queue,
            max_frame: limits.max_message_len + cairn_core::wire::HEADER_LEN,
        },
        peer_listener,
        handle.sender(),
        transport_stats.clone(),
    );
    let storage_stats = Arc::new(StorageStats::default());
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let backup_policy = storage::BackupPolicy {
        node: cfg.id,
        dir: cfg.backups_dir(),
        retention: cfg.backup_retention,
    };
    let driver = Driver::new(node_cfg, &handle, sender, jobs_tx, storage_stats.clone())?;
    let storage_task = tokio::spawn(storage::run(
        store,
        jobs_rx,
        done_tx,
        storage_stats.clone(),
        backup_policy,
    ));
    let mut driver_task = tokio::spawn(driver.run(inbox, done_rx));

    let metrics = Arc::new(NodeMetrics::new(
        release,
        storage_stats,
        transport_stats.clone(),
    ));
    let app = AppState {
        driver: handle.clone(),
        metrics,
        transport: transport_stats,
        token: cfg.token.as_deref().map(Arc::from),
        members: Arc::new(cfg.members.clone()),
        max_key_len: limits.max_key_len,
        max_value_len: limits.max_value_len,
        max_context_len: limits.max_context_len,
        backups_dir: Arc::new(cfg.backups_dir()),
    };
    let http_task = tokio::spawn(http::serve(http_listener, app));

    let exit = tokio::select! {
        r = &mut driver_task => r.unwrap_or(DriverExit::Closed),
        sig = shutdown_signal() => {
            tracing::info!(signal = sig, "stopping");
            handle.shutdown().await;
            match tokio::time::timeout(SHUTDOWN_WAIT, &mut driver_task).await {
                Ok(r) => r.unwrap_or(DriverExit::Closed),
                Err(_) => {
                    tracing::warn!("clean shutdown did not finish in time; the next start will recover");
                    DriverExit::Stopped
                }
            }
        }
    };
    http_task.abort();
    driver_task.abort();
    // The driver held the only job sender; the storage task ends and closes
    // fjall once it has answered what was queued.
    let _ = tokio::time::timeout(Duration::from_secs(5), storage_task).await;
    Ok(match exit {
        DriverExit::Stopped => {
            tracing::info!("stopped");
            0
        }
        DriverExit::Halted(reason) => {
            tracing::error!(%reason, "exiting after a fatal error; restart the node");
            1
        }
        DriverExit::Closed => {
            tracing::error!("driver stopped unexpectedly");
            1
        }
    })
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
