//! Prometheus metrics.
//!
//! HTTP request counters and latency histograms are recorded as requests are
//! served. The core's own counters (quorum failures, hints, anti-entropy,
//! storage writes and syncs, ...) live in the core and are copied in at scrape
//! time from a driver snapshot, together with storage and transport counters.
//!
//! `/metrics` answers OpenMetrics to a scraper that asks for
//! `application/openmetrics-text`, and the Prometheus text format 0.0.4
//! otherwise ([`Format::negotiate`]). Names follow the Prometheus guide: base
//! units (`_seconds`, `_bytes`), `_total` on counters. On Linux the usual
//! `process_*` metrics are read from `/proc`; elsewhere they are absent.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_core::node::Metrics as CoreMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::driver::Snapshot;
use crate::peers::TransportStats;
use crate::storage::StorageStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterVersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// The states of a schema migration, as `/v1/status` names them.
const MIGRATION_STATES: [&str; 4] = ["none", "running", "finished", "failed"];

/// The exposition format of a scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format, version 0.0.4.
    Text004,
}

impl Format {
    /// OpenMetrics if the `Accept` header asks for it at least as much as
    /// for plain text; the 0.0.4 text format otherwise (no header, `*/*`,
    /// `text/plain`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text004;
        };
        let (mut om, mut text) = (0.0f64, 0.0f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.strip_prefix("q="))
                .and_then(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text004
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites an OpenMetrics exposition as Prometheus text 0.0.4: a counter
/// family is named after its `_total` samples, an info family becomes a
/// gauge named `_info`, `unknown` becomes `untyped`, and `# UNIT` and
/// `# EOF` lines are dropped. Histograms and gauges read the same in both.
pub fn to_text_004(openmetrics: &str) -> String {
    use std::collections::HashMap;
    // Family renames, decided by the TYPE line (which precedes the samples
    // but may follow the HELP line).
    let mut renames: HashMap<&str, (String, &str)> = HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                let renamed = match kind {
                    "counter" => (format!("{name}_total"), "counter"),
                    "info" => (format!("{name}_info"), "gauge"),
                    "unknown" => (name.to_string(), "untyped"),
                    other => (name.to_string(), other),
                };
                renames.insert(name, renamed);
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let (new_name, kind) = renames
                    .get(name)
                    .map_or((name, None), |(n, k)| (n.as_str(), Some(*k)));
                if prefix == "# TYPE " {
                    out.push_str(&format!("# TYPE {new_name} {}", kind.unwrap_or(tail)));
                } else {
                    out.push_str(&format!("# HELP {new_name} {tail}"));
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    release: String,
    protocols: String,
    schema: String,
}

type CoreField = fn(&CoreMetrics) -> u64;

/// Every counter the core keeps, with its exported name and help.
const CORE_COUNTERS: &[(&str, &str, CoreField)] = &[
    (
        "client_requests",
        "Client requests handled by the core",
        |m| m.client_requests,
    ),
    (
        "client_errors",
        "Client requests answered with an error",
        |m| m.client_errors,
    ),
    (
        "bad_contexts",
        "Client writes refused for their context (forged, of another key, unknown format, truncated or oversized)",
        |m| m.bad_contexts,
    ),
    ("gets", "Reads coordinated", |m| m.gets),
    ("puts", "Writes (puts and deletes) coordinated", |m| m.puts),
    (
        "forwarded",
        "Requests forwarded to another coordinator",
        |m| m.forwarded,
    ),
    (
        "quorum_timeouts",
        "Requests that did not reach their quorum in time",
        |m| m.quorum_timeouts,
    ),
    (
        "undecodable_messages",
        "Peer messages that could not be decoded",
        |m| m.undecodable,
    ),
    (
        "unknown_messages",
        "Peer messages of an unknown type",
        |m| m.unknown_messages,
    ),
    (
        "dropped_before_handshake",
        "Peer messages dropped before a handshake",
        |m| m.dropped_before_handshake,
    ),
    (
        "peer_queue_drops",
        "Messages dropped from the core's per-peer handshake queue",
        |m| m.peer_queue_drops,
    ),
    (
        "corrupt_records",
        "Stored records that failed their checksum on load",
        |m| m.corrupt_records,
    ),
    (
        "forgotten_disks",
        "Starts with an empty disk that peers knew had run before (a lost journal)",
        |m| m.forgotten_disks,
    ),
    (
        "restored_keys_dropped",
        "Restored keys no replica held when the re-sync completed (deleted since the backup)",
        |m| m.restored_keys_dropped,
    ),
    (
        "hints_stored",
        "Hints stored for unreachable replicas",
        |m| m.hints_stored,
    ),
    ("hints_delivered", "Hints delivered to their replica", |m| {
        m.hints_delivered
    }),
    (
        "hints_dropped",
        "Hints refused because the hint store was full",
        |m| m.hints_dropped,
    ),
    ("read_repairs", "Read repairs sent", |m| m.read_repairs),
    (
        "read_hedges",
        "Reads that asked their spare replicas after the first R were slow",
        |m| m.read_hedges,
    ),
    (
        "anti_entropy_rounds",
        "Anti-entropy exchanges started",
        |m| m.anti_entropy_rounds,
    ),
    ("anti_entropy_keys", "Keys repaired by anti-entropy", |m| {
        m.anti_entropy_keys
    }),
    ("tombstones_reaped", "Tombstones reaped", |m| {
        m.tombstones_reaped
    }),
    ("storage_writes", "Storage writes issued by the core", |m| {
        m.writes
    }),
    ("storage_syncs", "Storage syncs completed", |m| m.syncs),
];

/// Values copied in at scrape time, and what was copied last.
#[derive(Debug, Default)]
struct Mirrored {
    core: CoreMetrics,
    storage: [u64; 2],
    /// Process CPU seconds last copied in.
    cpu_seconds: f64,
    transport: [u64; 5],
}

pub struct NodeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram>,
    core: Vec<(CoreField, Counter)>,
    storage: [Counter; 2],
    cluster_version: Family<ClusterVersionLabels, Gauge>,
    live_schema: Gauge,
    migration: Family<StateLabels, Gauge>,
    last_backup: Gauge<f64, AtomicU64>,
    data_dir_bytes: Gauge,
    process: Option<Process>,
    process_registry: Registry,
    transport: [Counter; 5],
    peer_up: Family<PeerLabels, Gauge>,
    peer_protocol: Family<PeerLabels, Gauge>,
    hints: Gauge,
    keys: Gauge,
    epoch: Gauge,
    serving: Gauge,
    pending_ops: Gauge,
    last: Mutex<Mirrored>,
    storage_stats: Arc<StorageStats>,
    transport_stats: Arc<TransportStats>,
}

impl NodeMetrics {
    pub fn new(
        release: &cairn_core::version::Release,
        storage_stats: Arc<StorageStats>,
        transport_stats: Arc<TransportStats>,
    ) -> NodeMetrics {
        let mut registry = Registry::with_prefix("cairn");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Client HTTP requests by operation and outcome",
            requests.clone(),
        );
        let latency = Family::<OpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Client HTTP request latency by operation",
            latency.clone(),
        );
        let core: Vec<(CoreField, Counter)> = CORE_COUNTERS
            .iter()
            .map(|&(name, help, f)| {
                let c = Counter::default();
                registry.register(format!("core_{name}"), help, c.clone());
                (f, c)
            })
            .collect();
        // Core syncs answered are `core_storage_syncs`: the driver's own
        // count of them was the same number and is not exported twice.
        let storage: [Counter; 2] = Default::default();
        for (c, (name, help)) in storage.iter().zip([
            (
                "storage_batches",
                "fjall batches committed and persisted (group commits)",
            ),
            ("storage_records", "Records written or deleted in fjall"),
        ]) {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "storage_persist_seconds",
            "Time to commit and persist (fsync) one fjall batch",
            storage_stats.persist_seconds.clone(),
        );
        let transport: [Counter; 5] = Default::default();
        for (c, (name, help)) in transport.iter().zip([
            ("peer_frames_sent", "Envelopes written to peer connections"),
            (
                "peer_frames_received",
                "Envelopes received from authenticated peers",
            ),
            (
                "peer_send_dropped",
                "Envelopes dropped because a peer's send queue was full",
            ),
            (
                "peer_auth_failures",
                "Peer connections refused by authentication",
            ),
            ("peer_connects", "Outbound peer connections established"),
        ]) {
            registry.register(name, help, c.clone());
        }
        let peer_up = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_up",
            "1 if the failure detector judges the peer up",
            peer_up.clone(),
        );
        let peer_protocol = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "peer_protocol",
            "Wire protocol agreed with the peer (0 before the handshake)",
            peer_protocol.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let hints = gauge(&mut registry, "hints", "Hints currently stored");
        let keys = gauge(
            &mut registry,
            "keys",
            "Keys held by this node (tombstones included)",
        );
        let epoch = gauge(&mut registry, "epoch", "The node's current epoch");
        let serving = gauge(&mut registry, "serving", "1 while the node serves requests");
        let pending_ops = gauge(
            &mut registry,
            "pending_ops",
            "Operations in flight in the core",
        );
        registry.register(
            "version",
            "The release this node runs",
            Info::new(VersionLabels {
                release: release.version.to_string(),
                protocols: release.protocols.to_string(),
                schema: release.schema.to_string(),
            }),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                release: release.version.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "1, labelled with the binary's version and the release it runs as",
            build_info,
        );
        let cluster_version = Family::<ClusterVersionLabels, Gauge>::default();
        registry.register(
            "cluster_version",
            "1, labelled with the active cluster version this node acts on",
            cluster_version.clone(),
        );
        let live_schema = gauge(
            &mut registry,
            "live_schema",
            "Schema version of the live records",
        );
        let migration = Family::<StateLabels, Gauge>::default();
        registry.register(
            "migration_state",
            "1 for the state of the last schema migration this process saw (none, running, finished, failed), 0 for the others",
            migration.clone(),
        );
        let last_backup = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_backup_timestamp_seconds",
            "When the newest backup in the data directory was taken (Unix time; 0 if there is none)",
            last_backup.clone(),
        );
        let data_dir_bytes = gauge(
            &mut registry,
            "data_dir_bytes",
            "Disk space used by the data directory, backups included",
        );
        // Unprefixed, as every Prometheus exporter names them.
        let mut process_registry = Registry::default();
        let process = Process::register(&mut process_registry);
        NodeMetrics {
            registry,
            requests,
            latency,
            core,
            storage,
            transport,
            peer_up,
            peer_protocol,
            hints,
            keys,
            epoch,
            serving,
            pending_ops,
            cluster_version,
            live_schema,
            migration,
            last_backup,
            data_dir_bytes,
            process,
            process_registry,
            last: Mutex::new(Mirrored::default()),
            storage_stats,
            transport_stats,
        }
    }

    /// Records one finished HTTP request.
    pub fn observe(&self, op: &'static str, outcome: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { op, outcome })
            .inc();
        self.latency
            .get_or_create(&OpLabels { op })
            .observe(seconds);
    }

    /// Renders the exposition in `format`, copying in the latest snapshot
    /// first. Reads the disk (backups, data directory size, `/proc`): call it
    /// off the async workers.
    pub fn render(&self, snap: Option<&Snapshot>, backups_dir: &Path, format: Format) -> String {
        let backups = crate::backup::list(backups_dir);
        self.last_backup.set(
            backups
                .iter()
                .map(|m| m.created_unix_ms)
                .max()
                .map_or(0.0, |ms| ms as f64 / 1000.0),
        );
        // The backups directory is `<data_dir>/backups`.
        if let Some(data_dir) = backups_dir.parent() {
            self.data_dir_bytes.set(disk_usage(data_dir) as i64);
        }
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = snap {
                for (f, c) in &self.core {
                    c.inc_by(f(&s.metrics).saturating_sub(f(&last.core)));
                }
                last.core = s.metrics.clone();
                self.hints.set(s.hints as i64);
                self.keys.set(s.keys as i64);
                self.epoch.set(s.epoch as i64);
                self.serving
                    .set((s.phase == cairn_core::node::Phase::Serving) as i64);
                self.pending_ops.set(s.pending_ops as i64);
                let cv = ClusterVersionLabels {
                    version: s.cluster_version.to_string(),
                };
                if self.cluster_version.get(&cv).is_none() {
                    self.cluster_version.clear();
                }
                self.cluster_version.get_or_create(&cv).set(1);
                self.live_schema.set(s.schema as i64);
                for state in MIGRATION_STATES {
                    self.migration
                        .get_or_create(&StateLabels { state })
                        .set((s.migration.state == state) as i64);
                }
                for p in &s.peers {
                    let l = PeerLabels {
                        peer: p.id.to_string(),
                    };
                    self.peer_up.get_or_create(&l).set(p.up as i64);
                    self.peer_protocol
                        .get_or_create(&l)
                        .set(p.protocol.unwrap_or(0) as i64);
                }
            }
            let st = &self.storage_stats;
            let now = [
                st.batches.load(Ordering::Relaxed),
                st.records.load(Ordering::Relaxed),
            ];
            for (i, c) in self.storage.iter().enumerate() {
                c.inc_by(now[i].saturating_sub(last.storage[i]));
            }
            last.storage = now;
            let t = &self.transport_stats;
            let now = [
                t.sent.load(Ordering::Relaxed),
                t.received.load(Ordering::Relaxed),
                t.dropped_queue_full.load(Ordering::Relaxed),
                t.auth_failures.load(Ordering::Relaxed),
                t.connects.load(Ordering::Relaxed),
            ];
            for (i, c) in self.transport.iter().enumerate() {
                c.inc_by(now[i].saturating_sub(last.transport[i]));
            }
            last.transport = now;
            if let Some(p) = &self.process {
                p.update(&mut last.cpu_seconds);
            }
        }
        let mut out = String::new();
        let mut process = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err()
            || prometheus_client::encoding::text::encode(&mut process, &self.process_registry)
                .is_err()
        {
            out.clear();
        } else {
            // One exposition: a single `# EOF`, at the end.
            if let Some(body) = out.strip_suffix("# EOF\n") {
                out.truncate(body.len());
            }
            out.push_str(&process);
        }
        match format {
            Format::OpenMetrics => out,
            Format::Text004 => to_text_004(&out),
        }
    }
}

/// Bytes of disk allocated to the files under `dir` (as `du` counts them).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else {
                continue;
            };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// The standard `process_*` metrics, read from `/proc/self` (Linux).
struct Process {
    cpu: Counter<f64, AtomicU64>,
    rss: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, AtomicU64>,
}

impl Process {
    /// Registers the process metrics where `/proc/self/stat` is readable;
    /// `None` elsewhere (they are then absent).
    fn register(registry: &mut Registry) -> Option<Process> {
        if !cfg!(target_os = "linux") || proc_stat().is_none() {
            return None;
        }
        let p = Process {
            cpu: Default::default(),
            rss: Default::default(),
            virtual_memory: Default::default(),
            open_fds: Default::default(),
            max_fds: Default::default(),
            start_time: Default::default(),
        };
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            p.cpu.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.rss.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            p.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            p.start_time.clone(),
        );
        Some(p)
    }

    fn update(&self, last_cpu: &mut f64) {
        let Some(st) = proc_stat() else {
            return;
        };
        // SAFETY: sysconf only reads a system constant.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1) as i64,
            )
        };
        let cpu = (st.utime + st.stime) as f64 / ticks;
        self.cpu.inc_by((cpu - *last_cpu).max(0.0));
        *last_cpu = cpu.max(*last_cpu);
        self.rss.set(st.rss_pages * page);
        self.virtual_memory.set(st.vsize as i64);
        if let Some(boot) = boot_time() {
            self.start_time.set(boot + st.start_ticks as f64 / ticks);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        // SAFETY: getrlimit writes into the struct we pass.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            self.max_fds.set(lim.rlim_cur.min(i64::MAX as u64) as i64);
        }
    }
}

/// The fields of `/proc/self/stat` the process metrics use.
struct ProcStat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: i64,
}

fn proc_stat() -> Option<ProcStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_proc_stat(&text)
}

/// Parses `/proc/<pid>/stat`; the command name (field 2) may hold spaces
/// and parentheses, so fields are counted after its last `)`.
fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Fields from 3 (state) on; field N is at index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        utime: num(14)?,
        stime: num(15)?,
        start_ticks: num(22)?,
        vsize: num(23)?,
        rss_pages: f.get(24 - 3)?.parse().ok()?,
    })
}

/// System boot time (Unix seconds), from `/proc/stat`.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        assert_eq!(Format::negotiate(None), Format::Text004);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text004
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text004);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        // What Prometheus sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;q=0.3,text/plain;version=0.0.4"
            )),
            Format::Text004
        );
    }

    #[test]
    fn openmetrics_becomes_text_004() {
        let om = "# HELP cairn_puts Writes.\n# TYPE cairn_puts counter\ncairn_puts_total 3\n# HELP cairn_version The release.\n# TYPE cairn_version info\ncairn_version_info{release=\"0.2.0\"} 1\n# HELP cairn_keys Keys.\n# TYPE cairn_keys gauge\ncairn_keys 4\n# TYPE cairn_x_seconds histogram\n# UNIT cairn_x_seconds seconds\ncairn_x_seconds_sum 0.5\ncairn_x_seconds_count 1\ncairn_x_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP cairn_puts_total Writes.\n# TYPE cairn_puts_total counter\ncairn_puts_total 3\n# HELP cairn_version_info The release.\n# TYPE cairn_version_info gauge\ncairn_version_info{release=\"0.2.0\"} 1\n# HELP cairn_keys Keys.\n# TYPE cairn_keys gauge\ncairn_keys 4\n# TYPE cairn_x_seconds histogram\ncairn_x_seconds_sum 0.5\ncairn_x_seconds_count 1\ncairn_x_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }

    #[test]
    fn proc_stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let st = parse_proc_stat(line).unwrap();
        assert_eq!((st.utime, st.stime), (250, 50));
        assert_eq!(st.start_ticks, 12345);
        assert_eq!(st.vsize, 104_857_600);
        assert_eq!(st.rss_pages, 2560);
    }
}
