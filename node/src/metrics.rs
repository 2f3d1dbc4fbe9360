//! Prometheus metrics.
//!
//! HTTP request counters and latency histograms are recorded as requests are
//! served. The core's own counters (quorum failures, hints, anti-entropy,
//! storage writes and syncs, ...) live in the core and are copied in at scrape
//! time from a driver snapshot, together with storage and transport counters.

use std::sync::atomic::Ordering;
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
    storage: [u64; 4],
    transport: [u64; 5],
}

pub struct NodeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OpLabels, Histogram>,
    core: Vec<(CoreField, Counter)>,
    storage: [Counter; 4],
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
        let storage: [Counter; 4] = Default::default();
        for (c, (name, help)) in storage.iter().zip([
            (
                "storage_batches",
                "fjall batches committed and persisted (group commits)",
            ),
            ("storage_records", "Records written or deleted in fjall"),
            ("storage_synced", "Core syncs answered by a persisted batch"),
            (
                "storage_persist_microseconds",
                "Time spent committing and persisting batches",
            ),
        ]) {
            registry.register(name, help, c.clone());
        }
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

    /// Renders the text exposition, copying in the latest snapshot first.
    pub fn render(&self, snap: Option<&Snapshot>) -> String {
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
                st.syncs.load(Ordering::Relaxed),
                st.persist_micros.load(Ordering::Relaxed),
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
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
