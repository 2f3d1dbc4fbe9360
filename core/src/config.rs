//! Node configuration: replication parameters, timings and bounds.

use alloc::vec::Vec;

use crate::context::ContextKey;
use crate::types::{Duration, NodeId};
use crate::version::ReleaseId;

/// Replication factor and quorums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    pub n: u8,
    pub r: u8,
    pub w: u8,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum { n: 3, r: 2, w: 2 }
    }
}

impl Quorum {
    /// Strict quorums: every read quorum meets every write quorum.
    pub fn is_strict(&self) -> bool {
        self.r as u16 + self.w as u16 > self.n as u16
    }
}

/// Every timer a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The resolution of periodic work.
    pub tick: Duration,
    /// A client request not answered by then fails (indeterminate for writes).
    pub request_timeout: Duration,
    /// A replica that has not acknowledged a write by then gets a hint.
    pub hint_after: Duration,
    /// How often stored hints are offered to their targets.
    pub hint_retry: Duration,
    /// How long a coordinator keeps collecting replies after answering a read,
    /// for read repair.
    pub read_repair_window: Duration,
    /// A read asks R replicas first; the other replicas are asked only if the
    /// read has no quorum after this long (a slow, partitioned or crashed
    /// replica not yet known to be down).
    pub read_hedge_after: Duration,
    pub gossip_interval: Duration,
    /// A peer whose heartbeat has not advanced for this long is judged down.
    pub peer_down_after: Duration,
    /// How often a node starts an anti-entropy exchange.
    pub anti_entropy_interval: Duration,
    /// A tombstone is reaped only this long after every replica holds it.
    pub tombstone_grace: Duration,
    /// How often the node looks for tombstones to reap.
    pub reap_interval: Duration,
    /// How often an unanswered handshake is retried.
    pub handshake_retry: Duration,
    /// How long a node with an empty disk waits for every peer to say
    /// whether it ran before; after that the answers of a majority of the
    /// members suffice (see `node::recovery`).
    pub probe_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            tick: Duration::from_millis(10),
            request_timeout: Duration::from_millis(1500),
            hint_after: Duration::from_millis(400),
            hint_retry: Duration::from_millis(500),
            read_repair_window: Duration::from_millis(300),
            read_hedge_after: Duration::from_millis(10),
            gossip_interval: Duration::from_millis(200),
            peer_down_after: Duration::from_millis(1500),
            anti_entropy_interval: Duration::from_millis(500),
            tombstone_grace: Duration::from_secs(10),
            reap_interval: Duration::from_secs(2),
            handshake_retry: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(10),
        }
    }
}

/// Every bound a node enforces; inputs beyond them are refused or dropped and
/// counted, never buffered without limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_key_len: usize,
    pub max_value_len: usize,
    /// Client requests in flight on this node (coordinated or forwarded).
    pub max_inflight: usize,
    /// Siblings a key may hold; a write that would exceed it is refused.
    pub max_siblings: usize,
    /// Hints stored on this node across all targets.
    pub max_hints: usize,
    /// Messages queued for a peer while its handshake is pending.
    pub max_peer_queue: usize,
    /// Largest envelope accepted from a peer.
    pub max_message_len: usize,
    /// Keys exchanged in one anti-entropy round.
    pub max_ae_keys: usize,
    /// Outputs buffered before a drain (a bug if exceeded).
    pub max_outputs: usize,
    /// Entries (actors) a client's context may name. A key's true context
    /// names one entry per node incarnation that wrote it; a context with
    /// more is refused (and so is a read's context beyond it, when written
    /// back: raise the limit if a cluster's history outgrows it).
    pub max_context_entries: usize,
    /// Bytes a client's context token may take; at least what
    /// `max_context_entries` entries can need
    /// ([`crate::context::max_token_len`]).
    pub max_context_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 1024,
            max_value_len: 1 << 20,
            max_inflight: 4096,
            max_siblings: 64,
            max_hints: 100_000,
            max_peer_queue: 1024,
            max_message_len: 16 << 20,
            max_ae_keys: 256,
            max_outputs: 1 << 20,
            max_context_entries: 1024,
            max_context_len: 32 << 10,
        }
    }
}

/// Switchable bugs, used only to prove that the simulator finds them. They
/// can be switched on only in builds with the `planted-bugs` feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// A replica acknowledges a write before it is durable.
    pub ack_before_durable: bool,
    /// A node restarting after a crash keeps its epoch and reuses dot counters.
    pub reuse_dots_after_crash: bool,
    /// Read repair replaces a replica's state instead of merging into it.
    pub read_repair_overwrites: bool,
    /// A tombstone is reaped without asking the other replicas.
    pub reap_without_quorum: bool,
    /// Hints for a target that is down are given up.
    pub drop_hints_for_down_targets: bool,
    /// Anti-entropy leaves out the keys of the last Merkle bucket.
    pub anti_entropy_skips_bucket: bool,
    /// A new wire message is sent before the cluster is finalized at a
    /// release that has it.
    pub new_message_before_finalization: bool,
    /// Data is migrated to this release's schema before finalization.
    pub migrate_before_finalization: bool,
    /// Migration rewrites records in place instead of switching atomically.
    pub non_atomic_migration: bool,
    /// A cluster version learned from gossip is acted on before it is
    /// persisted.
    pub cluster_version_before_persisting: bool,
    /// A client's context is taken as it claims to be: its tag, key
    /// binding and bounds go unchecked, and the format of releases before
    /// authentication is accepted.
    pub trust_client_contexts: bool,
}

impl PlantedBugs {
    /// Every planted bug by name, for command lines.
    pub const NAMES: &'static [&'static str] = &[
        "ack-before-durable",
        "reuse-dots-after-crash",
        "read-repair-overwrites",
        "reap-without-quorum",
        "drop-hints-for-down-targets",
        "anti-entropy-skips-bucket",
        "new-message-before-finalization",
        "migrate-before-finalization",
        "non-atomic-migration",
        "cluster-version-before-persisting",
        "trust-client-contexts",
    ];

    /// Switches on the bug called `name`; false when there is no such bug.
    pub fn enable(&mut self, name: &str) -> bool {
        let flag = match name {
            "ack-before-durable" => &mut self.ack_before_durable,
            "reuse-dots-after-crash" => &mut self.reuse_dots_after_crash,
            "read-repair-overwrites" => &mut self.read_repair_overwrites,
            "reap-without-quorum" => &mut self.reap_without_quorum,
            "drop-hints-for-down-targets" => &mut self.drop_hints_for_down_targets,
            "anti-entropy-skips-bucket" => &mut self.anti_entropy_skips_bucket,
            "new-message-before-finalization" => &mut self.new_message_before_finalization,
            "migrate-before-finalization" => &mut self.migrate_before_finalization,
            "non-atomic-migration" => &mut self.non_atomic_migration,
            "cluster-version-before-persisting" => &mut self.cluster_version_before_persisting,
            "trust-client-contexts" => &mut self.trust_client_contexts,
            _ => return false,
        };
        *flag = true;
        true
    }
}

/// What a node starting on an empty data directory may assume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialClusterState {
    /// The node may be new: it asks every peer for the highest epoch of its
    /// own they have seen before writing anything. If none has seen it, it
    /// starts at epoch 1; otherwise its disk forgot (a lost journal) and it
    /// proceeds as [`InitialClusterState::Existing`].
    #[default]
    New,
    /// The node has run before and its disk was lost or replaced: it may
    /// have issued dots its peers and clients still hold. Like a node
    /// restored from backup, it learns from every peer the highest epoch of
    /// its own they have seen before issuing a dot, and re-syncs with every
    /// replica before it answers reads.
    Existing,
}

/// Everything that configures one node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The static seed list: every member, this node included.
    pub members: Vec<NodeId>,
    pub release: ReleaseId,
    /// The cluster version a node with an empty data directory starts at.
    /// `None`: the oldest this release supports, so a new node never runs
    /// ahead of a cluster it joins; set it to the release when bootstrapping
    /// a new cluster.
    pub initial_cluster_version: Option<ReleaseId>,
    /// What an empty data directory means; see [`InitialClusterState`].
    pub initial_cluster_state: InitialClusterState,
    pub quorum: Quorum,
    /// Fixed ring partitions (anti-entropy ranges).
    pub partitions: u16,
    /// Virtual nodes per member on the ring.
    pub vnodes: u16,
    pub timing: Timing,
    pub limits: Limits,
    /// Seeds every random choice of this node (gossip peers, jitter).
    pub seed: u64,
    /// Authenticates the causal contexts handed to clients. Every member
    /// of a cluster must have the same one, or a context read through one
    /// node is refused by another; the production node derives it from the
    /// cluster secret ([`ContextKey::derive`]). [`NodeConfig::new`] derives
    /// a key from the seed alone, which fails closed: contexts verify only
    /// on nodes with that same seed.
    pub context_key: ContextKey,
    #[cfg(feature = "planted-bugs")]
    pub bugs: PlantedBugs,
}

impl NodeConfig {
    pub fn new(id: NodeId, members: Vec<NodeId>, seed: u64) -> Self {
        NodeConfig {
            id,
            members,
            release: ReleaseId::current(),
            initial_cluster_version: None,
            initial_cluster_state: InitialClusterState::New,
            quorum: Quorum::default(),
            partitions: 64,
            vnodes: 16,
            timing: Timing::default(),
            limits: Limits::default(),
            seed,
            context_key: ContextKey::derive(&seed.to_le_bytes()),
            #[cfg(feature = "planted-bugs")]
            bugs: PlantedBugs::default(),
        }
    }

    /// Checks the configuration; the message names the offending field.
    pub fn validate(&self) -> Result<(), crate::Error> {
        use alloc::format;
        let bad = |field: &str, why: alloc::string::String| {
            Err(crate::Error::Config(format!("{field}: {why}")))
        };
        let q = self.quorum;
        if q.n == 0 || q.r == 0 || q.w == 0 {
            return bad("quorum", "n, r and w must be at least 1".into());
        }
        if q.r > q.n || q.w > q.n {
            return bad(
                "quorum",
                format!("r={} and w={} must not exceed n={}", q.r, q.w, q.n),
            );
        }
        if !q.is_strict() {
            return bad(
                "quorum",
                format!(
                    "r+w must exceed n for strict quorums (r={} w={} n={})",
                    q.r, q.w, q.n
                ),
            );
        }
        if self.members.len() < q.n as usize {
            return bad(
                "members",
                format!(
                    "{} members cannot hold n={} replicas",
                    self.members.len(),
                    q.n
                ),
            );
        }
        if !self.members.contains(&self.id) {
            return bad(
                "members",
                format!("the list does not contain this node ({})", self.id),
            );
        }
        let mut sorted = self.members.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.members.len() {
            return bad("members", "duplicate node ids".into());
        }
        let t = &self.timing;
        if t.tombstone_grace.0 < t.request_timeout.0 + t.read_repair_window.0 {
            return bad(
                "timing.tombstone_grace",
                format!(
                    "{} ms is too short: it must outlast any request in flight (at least request_timeout + read_repair_window = {} ms)",
                    t.tombstone_grace.0 / 1000,
                    (t.request_timeout.0 + t.read_repair_window.0) / 1000
                ),
            );
        }
        if self.partitions == 0 || self.vnodes == 0 {
            return bad(
                "partitions",
                "partitions and vnodes must be at least 1".into(),
            );
        }
        let l = &self.limits;
        if l.max_context_entries == 0 {
            return bad("limits.max_context_entries", "must be at least 1".into());
        }
        let needed = crate::context::max_token_len(l.max_context_entries);
        if l.max_context_len < needed {
            return bad(
                "limits.max_context_len",
                format!(
                    "{} bytes cannot hold a context of max_context_entries = {} entries (needs {needed})",
                    l.max_context_len, l.max_context_entries
                ),
            );
        }
        if self.release.get().is_none() {
            return bad(
                "release",
                format!("unknown release index {}", self.release.0),
            );
        }
        Ok(())
    }
}
