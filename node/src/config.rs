//! Node configuration: a TOML file, overridden by `CAIRN_*` environment
//! variables, validated before anything starts.
//!
//! ```toml
//! id = 1
//! peer_addr = "127.0.0.1:7101"
//! http_addr = "127.0.0.1:8101"
//! data_dir = "/var/lib/cairn"
//! members = ["1=127.0.0.1:7101", "2=127.0.0.1:7102", "3=127.0.0.1:7103"]
//! secret = "a long random string shared by every member"   (authenticates peers and clients' contexts)
//! # token = "bearer token for /v1/kv and /v1/admin"   (optional)
//! # log_format = "text"                         (text | json)
//! # release = "0.2.0"                           (a row of the release table)
//! # initial_cluster_version = "0.2.0"           (only for an empty data directory)
//! # initial_cluster_state = "new"               (new | existing: only for an empty data directory)
//! # backup_retention = 5                        (backups kept in data_dir/backups)
//! # max_client_connections = 4096               (HTTP connections served at once)
//! # http_header_timeout_ms = 10000              (first byte of a request to the end of its headers)
//! # http_idle_timeout_ms = 60000                (an idle connection, or a stalled body)
//!
//! [quorum]
//! n = 3
//! r = 2
//! w = 2
//!
//! [timing]                 # optional, milliseconds
//! request_timeout_ms = 1500
//! anti_entropy_interval_ms = 500
//! ```
//!
//! Every validation error names the field at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cairn_core::config::{InitialClusterState, NodeConfig, Quorum, Timing};
use cairn_core::version::{ReleaseId, RELEASES};
use cairn_core::{ContextKey, Duration, NodeId};
use serde::{Deserialize, Serialize};

/// The smallest cluster secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// A configuration problem, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Quorum settings as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumFile {
    pub n: u8,
    pub r: u8,
    pub w: u8,
}

impl Default for QuorumFile {
    fn default() -> Self {
        let q = Quorum::default();
        QuorumFile {
            n: q.n,
            r: q.r,
            w: q.w,
        }
    }
}

/// Optional timer overrides, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingFile {
    pub tick_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub hint_after_ms: Option<u64>,
    pub hint_retry_ms: Option<u64>,
    pub gossip_interval_ms: Option<u64>,
    pub peer_down_after_ms: Option<u64>,
    pub anti_entropy_interval_ms: Option<u64>,
    pub handshake_retry_ms: Option<u64>,
}

/// The configuration file as written by an operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<u32>,
    pub peer_addr: Option<String>,
    pub http_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// `"id=host:port"` for every member, this node included.
    #[serde(default)]
    pub members: Vec<String>,
    /// The cluster secret: required, at least [`MIN_SECRET_LEN`] bytes. It
    /// authenticates peers and, through a key derived from it, the causal
    /// contexts handed to clients.
    pub secret: Option<String>,
    pub token: Option<String>,
    pub log_format: Option<LogFormat>,
    pub release: Option<String>,
    /// The cluster version a node with an empty data directory starts at
    /// (default: the oldest its release can serve in, so a new node never
    /// runs ahead of the cluster it joins). Set it to the release when
    /// bootstrapping a new cluster.
    pub initial_cluster_version: Option<String>,
    /// What an empty data directory means: `"new"` (the default) for a
    /// node that has never run, `"existing"` for a node that has run before
    /// and lost or replaced its disk. An existing node learns from every
    /// peer the last epoch it used and re-syncs before serving reads; started
    /// as new it would issue dots it had issued before.
    pub initial_cluster_state: Option<String>,
    /// Backups kept in `data_dir/backups`; older ones are pruned after each
    /// backup (default 5).
    pub backup_retention: Option<usize>,
    #[serde(default)]
    pub quorum: QuorumFile,
    #[serde(default)]
    pub timing: TimingFile,
    /// Messages queued per peer connection before new ones are dropped.
    pub peer_queue: Option<usize>,
    /// Threads of the async runtime; 1 runs everything but storage on one
    /// thread (default: the number of CPUs).
    pub worker_threads: Option<usize>,
    /// Client (HTTP) connections served at once; more are refused as they
    /// arrive (default [`DEFAULT_MAX_CLIENT_CONNECTIONS`]). Lowered at start
    /// if the open-file limit cannot leave descriptors for storage.
    pub max_client_connections: Option<usize>,
    /// Milliseconds from the first byte of a request to the end of its
    /// headers before the connection is closed (default 10 s).
    pub http_header_timeout_ms: Option<u64>,
    /// Milliseconds a client connection may stay idle between requests, and
    /// a request body may stall, before it is closed (default 60 s).
    pub http_idle_timeout_ms: Option<u64>,
}

/// A validated configuration, ready to start a node.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    pub peer_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Every member and its peer address, this node included.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// See [`FileConfig::secret`].
    pub secret: String,
    pub token: Option<String>,
    pub log_format: LogFormat,
    pub release: ReleaseId,
    pub initial_cluster_version: Option<ReleaseId>,
    pub initial_cluster_state: InitialClusterState,
    pub backup_retention: usize,
    pub quorum: Quorum,
    pub timing: Timing,
    pub peer_queue: usize,
    pub worker_threads: Option<usize>,
    pub max_client_connections: usize,
    pub http_header_timeout: std::time::Duration,
    pub http_idle_timeout: std::time::Duration,
}

/// Backups kept when `backup_retention` is not set.
pub const DEFAULT_BACKUP_RETENTION: usize = 5;

/// Client connections served at once when `max_client_connections` is not set.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 4096;

/// `http_header_timeout_ms` when not set.
pub const DEFAULT_HTTP_HEADER_TIMEOUT_MS: u64 = 10_000;

/// `http_idle_timeout_ms` when not set.
pub const DEFAULT_HTTP_IDLE_TIMEOUT_MS: u64 = 60_000;

impl std::fmt::Display for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match toml::to_string_pretty(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(std::fmt::Error),
        }
    }
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Applies `CAIRN_*` overrides from an environment.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("CAIRN_ID") {
            self.id = Some(
                v.trim()
                    .parse()
                    .map_err(|_| invalid("id (CAIRN_ID)", format!("{v:?} is not a number")))?,
            );
        }
        if let Some(v) = env("CAIRN_PEER_ADDR") {
            self.peer_addr = Some(v);
        }
        if let Some(v) = env("CAIRN_HTTP_ADDR") {
            self.http_addr = Some(v);
        }
        if let Some(v) = env("CAIRN_DATA_DIR") {
            self.data_dir = Some(v.into());
        }
        if let Some(v) = env("CAIRN_MEMBERS") {
            self.members = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = env("CAIRN_SECRET") {
            self.secret = Some(v);
        }
        if let Some(v) = env("CAIRN_TOKEN") {
            self.token = Some(v);
        }
        if let Some(v) = env("CAIRN_LOG_FORMAT") {
            self.log_format = Some(match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(invalid(
                        "log_format (CAIRN_LOG_FORMAT)",
                        format!("{other:?} is neither \"text\" nor \"json\""),
                    ))
                }
            });
        }
        if let Some(v) = env("CAIRN_RELEASE") {
            self.release = Some(v);
        }
        if let Some(v) = env("CAIRN_WORKER_THREADS") {
            self.worker_threads = Some(v.trim().parse().map_err(|_| {
                invalid(
                    "worker_threads (CAIRN_WORKER_THREADS)",
                    format!("{v:?} is not a number"),
                )
            })?);
        }
        if let Some(v) = env("CAIRN_INITIAL_CLUSTER_VERSION") {
            self.initial_cluster_version = Some(v);
        }
        if let Some(v) = env("CAIRN_INITIAL_CLUSTER_STATE") {
            self.initial_cluster_state = Some(v);
        }
        let number = |field: &str, var: &str| -> Result<Option<u64>, ConfigError> {
            match env(var) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    invalid(
                        &format!("{field} ({var})"),
                        format!("{v:?} is not a number"),
                    )
                }),
            }
        };
        if let Some(n) = number("max_client_connections", "CAIRN_MAX_CLIENT_CONNECTIONS")? {
            self.max_client_connections = Some(n as usize);
        }
        if let Some(n) = number("http_header_timeout_ms", "CAIRN_HTTP_HEADER_TIMEOUT_MS")? {
            self.http_header_timeout_ms = Some(n);
        }
        if let Some(n) = number("http_idle_timeout_ms", "CAIRN_HTTP_IDLE_TIMEOUT_MS")? {
            self.http_idle_timeout_ms = Some(n);
        }
        if let Some(v) = env("CAIRN_BACKUP_RETENTION") {
            self.backup_retention = Some(v.trim().parse().map_err(|_| {
                invalid(
                    "backup_retention (CAIRN_BACKUP_RETENTION)",
                    format!("{v:?} is not a number"),
                )
            })?);
        }
        Ok(())
    }

    /// Checks every field and builds the runtime configuration.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let id = NodeId(self.id.ok_or_else(|| invalid("id", "missing"))?);
        let addr = |field: &str, v: &Option<String>| -> Result<SocketAddr, ConfigError> {
            let v = v.as_deref().ok_or_else(|| invalid(field, "missing"))?;
            v.parse()
                .map_err(|_| invalid(field, format!("{v:?} is not an ip:port address")))
        };
        let peer_addr = addr("peer_addr", &self.peer_addr)?;
        let http_addr = addr("http_addr", &self.http_addr)?;
        let data_dir = self
            .data_dir
            .clone()
            .ok_or_else(|| invalid("data_dir", "missing"))?;
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "empty path"));
        }
        let mut members = BTreeMap::new();
        for m in &self.members {
            let (mid, maddr) = parse_member(m)?;
            if members.insert(mid, maddr).is_some() {
                return Err(invalid(
                    "members",
                    format!("node id {} listed twice", mid.0),
                ));
            }
        }
        if members.is_empty() {
            return Err(invalid(
                "members",
                "missing (\"id=host:port\" for every member)",
            ));
        }
        let secret = self
            .secret
            .clone()
            .ok_or_else(|| invalid("secret", "missing (the cluster secret peers share)"))?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(invalid(
                "secret",
                format!("must be at least {MIN_SECRET_LEN} bytes long"),
            ));
        }
        let token = match &self.token {
            Some(t) if t.trim().is_empty() => return Err(invalid("token", "empty")),
            Some(t) if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(invalid("token", "must not contain whitespace"))
            }
            other => other.clone(),
        };
        let known = || -> Vec<&str> { RELEASES.iter().map(|r| r.version).collect() };
        let release = match &self.release {
            None => ReleaseId::current(),
            Some(v) => ReleaseId::by_version(v).ok_or_else(|| {
                invalid(
                    "release",
                    format!(
                        "unknown release {v:?} (this binary can act as {:?})",
                        known()
                    ),
                )
            })?,
        };
        let initial_cluster_version = match &self.initial_cluster_version {
            None => None,
            Some(v) => {
                let cv = ReleaseId::by_version(v).ok_or_else(|| {
                    invalid(
                        "initial_cluster_version",
                        format!("unknown release {v:?} (known: {:?})", known()),
                    )
                })?;
                if cv > release || cv < release.min_cluster_version() {
                    return Err(invalid(
                        "initial_cluster_version",
                        format!(
                            "release {} can serve at cluster versions {} to {}, not {v}",
                            release.version(),
                            release.min_cluster_version().version(),
                            release.version()
                        ),
                    ));
                }
                Some(cv)
            }
        };
        let initial_cluster_state = match self.initial_cluster_state.as_deref() {
            None | Some("new") => InitialClusterState::New,
            Some("existing") => InitialClusterState::Existing,
            Some(v) => {
                return Err(invalid(
                    "initial_cluster_state",
                    format!("{v:?} is neither \"new\" nor \"existing\""),
                ))
            }
        };
        let backup_retention = self.backup_retention.unwrap_or(DEFAULT_BACKUP_RETENTION);
        if backup_retention == 0 {
            return Err(invalid("backup_retention", "must be at least 1"));
        }
        let q = self.quorum;
        let quorum = Quorum {
            n: q.n,
            r: q.r,
            w: q.w,
        };
        let mut timing = Timing::default();
        let t = self.timing;
        let set = |field: &str, v: Option<u64>, slot: &mut Duration| -> Result<(), ConfigError> {
            if let Some(ms) = v {
                if ms == 0 {
                    return Err(invalid(&format!("timing.{field}"), "must be at least 1"));
                }
                *slot = Duration::from_millis(ms);
            }
            Ok(())
        };
        set("tick_ms", t.tick_ms, &mut timing.tick)?;
        set(
            "request_timeout_ms",
            t.request_timeout_ms,
            &mut timing.request_timeout,
        )?;
        set("hint_after_ms", t.hint_after_ms, &mut timing.hint_after)?;
        set("hint_retry_ms", t.hint_retry_ms, &mut timing.hint_retry)?;
        set(
            "gossip_interval_ms",
            t.gossip_interval_ms,
            &mut timing.gossip_interval,
        )?;
        set(
            "peer_down_after_ms",
            t.peer_down_after_ms,
            &mut timing.peer_down_after,
        )?;
        set(
            "anti_entropy_interval_ms",
            t.anti_entropy_interval_ms,
            &mut timing.anti_entropy_interval,
        )?;
        set(
            "handshake_retry_ms",
            t.handshake_retry_ms,
            &mut timing.handshake_retry,
        )?;
        if self.worker_threads == Some(0) {
            return Err(invalid("worker_threads", "must be at least 1"));
        }
        let peer_queue = self.peer_queue.unwrap_or(8192);
        if peer_queue == 0 {
            return Err(invalid("peer_queue", "must be at least 1"));
        }
        let max_client_connections = self
            .max_client_connections
            .unwrap_or(DEFAULT_MAX_CLIENT_CONNECTIONS);
        if max_client_connections == 0 {
            return Err(invalid("max_client_connections", "must be at least 1"));
        }
        // Tokio's semaphore holds at most usize::MAX >> 3 permits.
        if max_client_connections > 1 << 30 {
            return Err(invalid("max_client_connections", "must be at most 2^30"));
        }
        let millis = |field: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
            0 => Err(invalid(field, "must be at least 1")),
            ms if ms > 86_400_000 => Err(invalid(field, "must be at most a day (86400000)")),
            ms => Ok(std::time::Duration::from_millis(ms)),
        };
        let http_header_timeout = millis(
            "http_header_timeout_ms",
            self.http_header_timeout_ms,
            DEFAULT_HTTP_HEADER_TIMEOUT_MS,
        )?;
        let http_idle_timeout = millis(
            "http_idle_timeout_ms",
            self.http_idle_timeout_ms,
            DEFAULT_HTTP_IDLE_TIMEOUT_MS,
        )?;
        let cfg = Config {
            id,
            peer_addr,
            http_addr,
            data_dir,
            members,
            secret,
            token,
            log_format: self.log_format.unwrap_or_default(),
            release,
            initial_cluster_version,
            initial_cluster_state,
            backup_retention,
            quorum,
            timing,
            peer_queue,
            worker_threads: self.worker_threads,
            max_client_connections,
            http_header_timeout,
            http_idle_timeout,
        };
        // The core's own checks (quorum, membership, release) name their field.
        cfg.node_config(0).validate().map_err(|e| {
            let msg = e.to_string();
            let msg = msg
                .strip_prefix("invalid configuration: ")
                .unwrap_or(&msg)
                .to_string();
            match msg.split_once(": ") {
                Some((field, why)) => invalid(field, why),
                None => invalid("config", msg),
            }
        })?;
        Ok(cfg)
    }
}

/// Parses `"id=host:port"`.
pub fn parse_member(s: &str) -> Result<(NodeId, SocketAddr), ConfigError> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| invalid("members", format!("{s:?} is not of the form id=host:port")))?;
    let id: u32 = id
        .trim()
        .parse()
        .map_err(|_| invalid("members", format!("{s:?}: node id {id:?} is not a number")))?;
    let addr: SocketAddr = addr.trim().parse().map_err(|_| {
        invalid(
            "members",
            format!("{s:?}: {addr:?} is not an ip:port address"),
        )
    })?;
    Ok((NodeId(id), addr))
}

impl Config {
    /// Loads a file, applies the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut file = FileConfig::read(path)?;
        file.apply_env(|k| std::env::var(k).ok())?;
        file.validate()
    }

    /// Where backups are kept.
    pub fn backups_dir(&self) -> PathBuf {
        self.data_dir.join("backups")
    }

    /// The core's configuration for this node. Its context key (which
    /// authenticates the causal contexts handed to clients) is derived from
    /// the cluster secret, so every member issues and accepts the same
    /// contexts; changing the secret makes every context handed out before
    /// refused (clients read again).
    pub fn node_config(&self, seed: u64) -> NodeConfig {
        let mut nc = NodeConfig::new(self.id, self.members.keys().copied().collect(), seed);
        nc.context_key = ContextKey::derive(self.secret.as_bytes());
        nc.release = self.release;
        nc.initial_cluster_version = self.initial_cluster_version;
        nc.initial_cluster_state = self.initial_cluster_state;
        nc.quorum = self.quorum;
        nc.timing = self.timing;
        nc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FileConfig {
        FileConfig {
            id: Some(1),
            peer_addr: Some("127.0.0.1:7101".into()),
            http_addr: Some("127.0.0.1:8101".into()),
            data_dir: Some("/tmp/x".into()),
            members: vec![
                "1=127.0.0.1:7101".into(),
                "2=127.0.0.1:7102".into(),
                "3=127.0.0.1:7103".into(),
            ],
            secret: Some("0123456789abcdef0123".into()),
            ..FileConfig::default()
        }
    }

    fn field_of(e: ConfigError) -> String {
        match e {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn valid_config_builds() {
        let cfg = base().validate().unwrap();
        assert_eq!(cfg.members.len(), 3);
        assert_eq!(cfg.release, ReleaseId::current());
    }

    #[test]
    fn errors_name_the_field() {
        let mut c = base();
        c.http_addr = Some("nope".into());
        assert_eq!(field_of(c.validate().unwrap_err()), "http_addr");
        let mut c = base();
        c.quorum = QuorumFile { n: 3, r: 1, w: 1 };
        assert_eq!(field_of(c.validate().unwrap_err()), "quorum");
        let mut c = base();
        c.id = Some(9);
        assert_eq!(field_of(c.validate().unwrap_err()), "members");
        let mut c = base();
        c.secret = Some("short".into());
        assert_eq!(field_of(c.validate().unwrap_err()), "secret");
        let mut c = base();
        c.release = Some("9.9.9".into());
        assert_eq!(field_of(c.validate().unwrap_err()), "release");
        let mut c = base();
        c.members.push("1=127.0.0.1:1".into());
        assert_eq!(field_of(c.validate().unwrap_err()), "members");
        let mut c = base();
        c.release = Some("0.1.0".into());
        c.initial_cluster_version = Some("0.3.0".into());
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "initial_cluster_version"
        );
        let mut c = base();
        c.initial_cluster_state = Some("rejoin".into());
        assert_eq!(field_of(c.validate().unwrap_err()), "initial_cluster_state");
        let mut c = base();
        c.initial_cluster_state = Some("existing".into());
        assert_eq!(
            c.validate().unwrap().node_config(0).initial_cluster_state,
            InitialClusterState::Existing
        );
        let mut c = base();
        c.backup_retention = Some(0);
        assert_eq!(field_of(c.validate().unwrap_err()), "backup_retention");
        let mut c = base();
        c.max_client_connections = Some(0);
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "max_client_connections"
        );
        let mut c = base();
        c.http_header_timeout_ms = Some(0);
        assert_eq!(
            field_of(c.validate().unwrap_err()),
            "http_header_timeout_ms"
        );
        let mut c = base();
        c.http_idle_timeout_ms = Some(0);
        assert_eq!(field_of(c.validate().unwrap_err()), "http_idle_timeout_ms");
    }

    #[test]
    fn client_connection_limits_have_defaults_and_env_overrides() {
        let cfg = base().validate().unwrap();
        assert_eq!(cfg.max_client_connections, DEFAULT_MAX_CLIENT_CONNECTIONS);
        assert_eq!(cfg.http_header_timeout.as_millis(), 10_000);
        assert_eq!(cfg.http_idle_timeout.as_millis(), 60_000);
        let mut c = base();
        c.apply_env(|k| match k {
            "CAIRN_MAX_CLIENT_CONNECTIONS" => Some("100".into()),
            "CAIRN_HTTP_HEADER_TIMEOUT_MS" => Some("1000".into()),
            "CAIRN_HTTP_IDLE_TIMEOUT_MS" => Some(" 2000 ".into()),
            _ => None,
        })
        .unwrap();
        let cfg = c.validate().unwrap();
        assert_eq!(cfg.max_client_connections, 100);
        assert_eq!(cfg.http_header_timeout.as_millis(), 1000);
        assert_eq!(cfg.http_idle_timeout.as_millis(), 2000);
        let e = base()
            .apply_env(|k| (k == "CAIRN_MAX_CLIENT_CONNECTIONS").then(|| "lots".into()))
            .unwrap_err();
        assert!(field_of(e).starts_with("max_client_connections"));
    }

    #[test]
    fn the_context_key_comes_from_the_secret() {
        let a = base().validate().unwrap().node_config(1);
        let b = base().validate().unwrap().node_config(2);
        assert_eq!(a.context_key, b.context_key, "the seed must not matter");
        let mut c = base();
        c.secret = Some("another secret, long enough".into());
        assert_ne!(
            c.validate().unwrap().node_config(1).context_key,
            a.context_key
        );
        let mut c = base();
        c.secret = None;
        assert_eq!(field_of(c.validate().unwrap_err()), "secret");
    }

    #[test]
    fn env_overrides_win() {
        let mut c = base();
        c.apply_env(|k| match k {
            "CAIRN_HTTP_ADDR" => Some("127.0.0.1:9999".into()),
            "CAIRN_LOG_FORMAT" => Some("json".into()),
            _ => None,
        })
        .unwrap();
        let cfg = c.validate().unwrap();
        assert_eq!(cfg.http_addr.port(), 9999);
        assert_eq!(cfg.log_format, LogFormat::Json);
        let mut c = base();
        let e = c
            .apply_env(|k| (k == "CAIRN_LOG_FORMAT").then(|| "xml".into()))
            .unwrap_err();
        assert!(field_of(e).starts_with("log_format"));
    }

    #[test]
    fn file_round_trips() {
        let text = base().to_string();
        let back: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, base());
    }
}
