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

/// Descriptors kept for storage (fjall caches up to 900 open files, plus
/// its journals), peer connections and the process itself, when the
/// open-file limit allows; else half of the limit.
const RESERVED_FILES: u64 = 1024;

/// Raises the soft limit on open files to the hard limit (a new process
/// often starts with a soft limit of 1024, far below what the hard limit
/// allows) and returns the limit now in force, if known.
fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = lim.rlim_cur,
                to = lim.rlim_max,
                "raised the open-file limit"
            );
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(
                limit = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the open-file limit"
            );
        }
    }
    Some(lim.rlim_cur)
}

/// The client connections served at once: the configured cap, lowered if
/// the open-file limit would not leave [`RESERVED_FILES`] (or half of the
/// limit) to everything else.
pub fn client_connection_cap(configured: usize, open_files: Option<u64>) -> usize {
    let Some(limit) = open_files else {
        return configured;
    };
    let reserve = RESERVED_FILES.min(limit / 2);
    let room = limit.saturating_sub(reserve).max(1);
    configured.min(usize::try_from(room).unwrap_or(usize::MAX))
}

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
    let open_files = raise_open_files_limit();
    let max_connections = client_connection_cap(cfg.max_client_connections, open_files);
    if max_connections < cfg.max_client_connections {
        tracing::warn!(
            max_client_connections = cfg.max_client_connections,
            open_file_limit = open_files,
            serving = max_connections,
            "the open-file limit lowers max_client_connections, to keep descriptors for storage"
        );
    }
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
    let limits = http::ConnectionLimits {
        max_connections,
        header_timeout: cfg.http_header_timeout,
        idle_timeout: cfg.http_idle_timeout,
    };
    let http_task = tokio::spawn(http::serve(http_listener, app, limits));

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_storage() {
        assert_eq!(client_connection_cap(4096, None), 4096);
        assert_eq!(client_connection_cap(4096, Some(1_048_576)), 4096);
        assert_eq!(client_connection_cap(4096, Some(4096)), 3072);
        assert_eq!(client_connection_cap(4096, Some(1024)), 512);
        assert_eq!(client_connection_cap(100, Some(1024)), 100);
        assert_eq!(client_connection_cap(100, Some(1)), 1);
    }
}
