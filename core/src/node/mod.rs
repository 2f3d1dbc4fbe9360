//! The node state machine.
//!
//! One [`Node`] is one cluster member. Methods are sorted as in quinn-proto:
//! getters, `handle_*` for inputs, commands, and [`Node::poll_output`].
//! The pieces live in submodules:
//! - [`coordinator`]: client requests, quorum reads and writes, forwarding.
//! - [`replica`]: serving reads and writes for coordinators, read repair.
//! - [`hints`]: durable hinted handoff.
//! - [`anti_entropy`]: Merkle exchanges and tombstone reaping.
//! - [`peers`]: handshake, gossip and failure detection.
//! - [`durability`]: group commit and work held until durable.
//! - [`store`]: in-memory key states and Merkle trees.
//! - [`recovery`]: start-up, epochs, restores and clean shutdown.
//! - [`versions`]: cluster version, finalization, migrations and backups.

mod anti_entropy;
mod coordinator;
mod durability;
mod hints;
mod peers;
mod recovery;
mod replica;
mod store;
mod versions;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::api::{ClientError, Event, Input, IoResult, Output, Response};
use crate::config::NodeConfig;
use crate::context::ContextMac;
use crate::dvv::KeyState;
use crate::ring::Ring;
use crate::storage;
use crate::types::{Duration, IoId, NodeId, Time};
use crate::version::{Release, ReleaseId};
use crate::wire::{self, Decoded, Message};

use coordinator::Op;
use durability::{Deferred, Durability};
use peers::Peer;
use store::Store;

pub use crate::wire::Health;
pub use peers::PeerView;
pub use versions::MAX_ATTEMPTS as MAX_MIGRATION_ATTEMPTS;

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for storage to be read.
    Loading,
    /// Storage read; waiting for the new metadata to be durable.
    Recovering,
    /// Restored from backup: learning from peers which epochs were used since.
    Rejoining,
    /// Rewriting the data in a new schema; not serving.
    Migrating,
    Serving,
    /// Will not serve: too old for the cluster, data it cannot open, or a
    /// migration that keeps failing. [`Node::refusal`] says why.
    Refusing,
    /// A clean shutdown is persisting its metadata.
    Draining,
    /// Clean shutdown complete; the node does nothing more.
    Stopped,
    /// A fatal storage error; the node does nothing more and must restart.
    Halted,
}

/// Counters, for metrics and for the simulator's summary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub client_requests: u64,
    pub client_errors: u64,
    /// Client writes refused for their context (forged, of another key, of
    /// an unknown format, truncated or oversized).
    pub bad_contexts: u64,
    pub gets: u64,
    pub puts: u64,
    pub forwarded: u64,
    /// Forwarded writes delivered more than once and dropped.
    pub duplicate_forwards: u64,
    pub quorum_timeouts: u64,
    pub undecodable: u64,
    pub unknown_messages: u64,
    pub dropped_before_handshake: u64,
    pub peer_queue_drops: u64,
    /// Messages received at a protocol above ours, from a peer that has not
    /// yet agreed again with this incarnation.
    pub stale_protocol: u64,
    /// Messages not sent because the agreed protocol cannot carry them.
    pub protocol_mismatch_drops: u64,
    pub corrupt_records: u64,
    /// Starts with an empty disk that the peers knew had run before (its
    /// journal was lost): the node took a new epoch and re-synced.
    pub forgotten_disks: u64,
    /// Restored keys no replica held when the re-sync completed: deleted
    /// (and reaped) since the backup, or never acknowledged.
    pub restored_keys_dropped: u64,
    pub hints_stored: u64,
    pub hints_delivered: u64,
    pub hints_dropped: u64,
    pub read_repairs: u64,
    /// Reads that asked their spare replicas after the first R were slow.
    pub read_hedges: u64,
    pub anti_entropy_rounds: u64,
    pub anti_entropy_keys: u64,
    pub tombstones_reaped: u64,
    pub writes: u64,
    pub syncs: u64,
}

/// The wire type code of gossip, accepted in every phase that talks to peers.
const GOSSIP_TYPE: u16 = 4;

/// Periodic work and when it next runs.
#[derive(Clone, Copy, Debug)]
struct Timers {
    gossip: Time,
    anti_entropy: Time,
    hints: Time,
    reap: Time,
    handshake: Time,
}

pub struct Node {
    cfg: NodeConfig,
    release: &'static Release,
    ring: Ring,
    rng: ChaCha8Rng,
    /// Issues and verifies clients' context tokens.
    context_mac: ContextMac,
    now: Time,
    /// The driver's clock at the last input (see [`Node::advance`]).
    driver_now: Time,
    phase: Phase,
    halt_reason: Option<String>,
    epoch: u32,
    next_counter: u64,
    next_io: u64,
    next_req: u64,
    load_io: Option<IoId>,
    store: Store,
    durability: Durability,
    ops: BTreeMap<u64, Op>,
    /// Forwarded writes seen recently, to drop duplicates.
    forward_ids: BTreeSet<(NodeId, u64)>,
    forwards_seen: VecDeque<(Time, (NodeId, u64))>,
    /// Next deadline of each op that has one.
    deadlines: BTreeSet<(Time, u64)>,
    /// Each op's entry in `deadlines`, so cancelling one is a lookup.
    deadline_of: BTreeMap<u64, Time>,
    hints: BTreeMap<(NodeId, Bytes), KeyState>,
    peers: BTreeMap<NodeId, Peer>,
    /// The schema of the live records.
    schema: u16,
    /// The active cluster version (persisted before it was set).
    cluster_version: ReleaseId,
    /// A higher cluster version being persisted.
    pending_cluster_version: Option<ReleaseId>,
    refusal: Option<String>,
    migration: Option<versions::Migration>,
    migration_attempts: u32,
    migration_error: Option<String>,
    /// Records already written in the target schema by an interrupted
    /// migration: key -> state digest.
    resume: BTreeMap<Bytes, u64>,
    backups: BTreeMap<IoId, (crate::api::BackupInfo, versions::BackupFor)>,
    /// Restored from backup and not yet past rejoining.
    restored: bool,
    /// Started with an empty disk: asking the peers whether it ran before.
    probing: bool,
    /// When it started asking.
    probe_since: Time,
    /// Added to the epoch it takes when some peers never answered.
    epoch_jump: u32,
    /// Keys of restored data held aside until the re-sync completes: never
    /// served, never sent to a peer (see `recovery`).
    quarantine: BTreeSet<Bytes>,
    rejoin_waiting: BTreeSet<NodeId>,
    learned_epoch: u32,
    /// After a restore: (partition, peer) pairs not yet found equal by
    /// anti-entropy. Until they all are, the node answers no reads: its data
    /// may lack writes it acknowledged before the restore.
    resync: Option<BTreeSet<(u16, NodeId)>>,
    /// The highest epoch seen of every node, from gossip and data.
    epochs_seen: BTreeMap<NodeId, u32>,
    heartbeat: u64,
    /// Starts of this node so far, this one included.
    generation: u64,
    /// The next partition anti-entropy looks at.
    ae_cursor: usize,
    timers: Timers,
    /// Why the last `Timeout` was chosen, for traces.
    timeout_reason: &'static str,
    out: VecDeque<Output>,
    metrics: Metrics,
}

impl Node {
    /// Creates a node and asks its driver to read storage. A configuration
    /// that [`NodeConfig::validate`] refuses is refused here too, with the
    /// same message: no node runs on it, and nothing is read or written.
    pub fn new(cfg: NodeConfig, now: Time) -> Result<Node, crate::Error> {
        cfg.validate()?;
        let release = cfg.release.release();
        let ring = Ring::new(&cfg.members, cfg.partitions, cfg.vnodes, cfg.quorum.n);
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let store = Store::new(cfg.partitions);
        let peers = cfg
            .members
            .iter()
            .filter(|&&m| m != cfg.id)
            .map(|&m| (m, Peer::new(m)))
            .collect();
        let mut node = Node {
            release,
            ring,
            rng,
            context_mac: ContextMac::new(&cfg.context_key),
            now,
            driver_now: now,
            phase: Phase::Loading,
            halt_reason: None,
            epoch: 0,
            next_counter: 1,
            next_io: 1,
            next_req: 1,
            forward_ids: BTreeSet::new(),
            forwards_seen: VecDeque::new(),
            load_io: None,
            store,
            durability: Durability::default(),
            ops: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            deadline_of: BTreeMap::new(),
            hints: BTreeMap::new(),
            peers,
            schema: cfg.release.release().schema,
            cluster_version: cfg.release,
            pending_cluster_version: None,
            refusal: None,
            migration: None,
            migration_attempts: 0,
            migration_error: None,
            resume: BTreeMap::new(),
            backups: BTreeMap::new(),
            restored: false,
            probing: false,
            probe_since: now,
            epoch_jump: 0,
            quarantine: BTreeSet::new(),
            rejoin_waiting: BTreeSet::new(),
            learned_epoch: 0,
            resync: None,
            epochs_seen: BTreeMap::new(),
            heartbeat: 0,
            generation: 0,
            ae_cursor: 0,
            timers: Timers {
                gossip: now,
                anti_entropy: now,
                hints: now,
                reap: now,
                handshake: now,
            },
            timeout_reason: "start",
            out: VecDeque::new(),
            metrics: Metrics::default(),
            cfg,
        };
        node.start_loading();
        Ok(node)
    }

    // ---- getters -------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }
    pub fn release(&self) -> &'static Release {
        self.release
    }
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn is_serving(&self) -> bool {
        self.phase == Phase::Serving
    }
    /// After a restore (or a lost disk): how many (partition, replica)
    /// pairs anti-entropy has yet to find equal before the node answers
    /// reads again; None when it is not re-syncing.
    pub fn resync_pending(&self) -> Option<usize> {
        self.resync.as_ref().map(|p| p.len())
    }
    pub fn is_halted(&self) -> bool {
        self.phase == Phase::Halted
    }
    pub fn halt_reason(&self) -> Option<&str> {
        self.halt_reason.as_deref()
    }
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn key_state(&self, key: &[u8]) -> Option<&KeyState> {
        self.store.get(key)
    }
    pub fn keys(&self) -> impl Iterator<Item = (&Bytes, &KeyState)> {
        self.store.keys.iter().map(|(k, e)| (k, &e.state))
    }
    pub fn merkle_root(&self, partition: u16) -> u64 {
        self.store
            .trees
            .get(partition as usize)
            .map_or(0, |t| t.root())
    }
    pub fn hint_count(&self) -> usize {
        self.hints.len()
    }
    /// Requests and internal operations in flight.
    pub fn pending_ops(&self) -> usize {
        self.ops.len()
    }
    /// Why the last `Timeout` output was chosen.
    pub fn timeout_reason(&self) -> &'static str {
        self.timeout_reason
    }
    pub fn health(&self) -> Health {
        match self.phase {
            Phase::Loading | Phase::Recovering | Phase::Rejoining => Health::Starting,
            Phase::Serving => Health::Serving,
            Phase::Migrating => Health::Migrating,
            Phase::Refusing => Health::Refusing,
            Phase::Draining | Phase::Stopped => Health::Draining,
            Phase::Halted => Health::Halted,
        }
    }

    // ---- inputs ----------------------------------------------------------

    /// Feeds one input. Drain [`Node::poll_output`] afterwards.
    pub fn handle_input(&mut self, input: Input) {
        if matches!(self.phase, Phase::Halted | Phase::Stopped) {
            return;
        }
        match input {
            Input::Message { now, from, bytes } => {
                self.advance(now);
                self.handle_message(from, &bytes);
            }
            Input::Client { now, id, request } => {
                self.advance(now);
                self.handle_client(id, request);
            }
            Input::IoDone { now, io, result } => {
                self.advance(now);
                self.handle_io(io, result);
            }
            Input::Timeout(now) => {
                self.advance(now);
                self.handle_timeout();
            }
            Input::Shutdown { now } => {
                self.advance(now);
                self.begin_shutdown();
            }
            Input::Admin { now, id, command } => {
                self.advance(now);
                self.handle_admin(id, command);
            }
        }
        self.flush();
    }

    /// Moves the node's time on by how far the driver's clock moved since
    /// the last input, when it moved forward. Time never runs backwards,
    /// and a backward step of the driver's clock does not stop it either:
    /// it keeps advancing at the clock's rate from there. (Following the
    /// highest time seen instead would freeze the node's timers until the
    /// clock caught up: a read held open for repair, say, could then send
    /// its long superseded state after the delete that superseded it had
    /// been reaped.) Deadlines are handed back in the driver's time.
    fn advance(&mut self, now: Time) {
        if now > self.driver_now {
            self.now = self.now + now.saturating_since(self.driver_now);
        }
        self.driver_now = now;
    }

    /// A time of the node's in the driver's clock.
    fn to_driver_time(&self, at: Time) -> Time {
        if at == Time::MAX {
            return at;
        }
        let ahead = self.now.saturating_since(self.driver_now);
        Time(at.as_micros().saturating_sub(ahead.0))
    }

    fn handle_message(&mut self, from: NodeId, bytes: &Bytes) {
        if from == self.cfg.id || !self.peers.contains_key(&from) {
            self.metrics.undecodable += 1;
            self.emit(Event::Undecodable {
                from,
                reason: alloc::format!("message from {from}, which is not a peer"),
            });
            return;
        }
        let (header, body) = match wire::open(bytes, self.cfg.limits.max_message_len) {
            Ok(opened) => opened,
            Err(e) => return self.undecodable(from, e),
        };
        let handshake = wire::is_handshake_type(header.msg_type);
        if handshake && !self.talks_to_peers() {
            return;
        }
        if !handshake && header.protocol > self.release.protocols.max {
            // A peer still using a protocol agreed with an earlier
            // incarnation of this node (it has not seen our new hello yet,
            // as after a reconnect): stale, not malformed. Drop it and say
            // hello so it agrees again.
            self.metrics.stale_protocol += 1;
            self.maybe_hello(from);
            return;
        }
        if !handshake {
            if !self.peer_ready(from) {
                // A peer we have no agreed protocol with (it restarted, or we
                // did): drop rather than guess, and say hello.
                self.metrics.dropped_before_handshake += 1;
                self.maybe_hello(from);
                return;
            }
            let gossip = header.msg_type == GOSSIP_TYPE;
            if self.phase != Phase::Serving && !(gossip && self.talks_to_peers()) {
                self.metrics.dropped_before_handshake += 1;
                return;
            }
        }
        match wire::decode_opened(header, body, self.release.protocols) {
            Err(e) => self.undecodable(from, e),
            Ok(Decoded::Unknown { msg_type, .. }) => {
                self.metrics.unknown_messages += 1;
                self.emit(Event::UnknownMessage { from, msg_type });
            }
            Ok(Decoded::Known { message, protocol }) => {
                self.note_alive(from);
                if !handshake && self.peer_protocol(from) != Some(protocol) {
                    // The peer believes in another protocol than we do:
                    // agree again.
                    self.maybe_hello(from);
                }
                self.dispatch(from, message);
            }
        }
    }

    fn undecodable(&mut self, from: NodeId, e: crate::Error) {
        self.metrics.undecodable += 1;
        self.emit(Event::Undecodable {
            from,
            reason: alloc::format!("{e}"),
        });
    }

    fn dispatch(&mut self, from: NodeId, message: Message) {
        match message {
            Message::Hello(m) => self.handle_hello(from, m),
            Message::HelloAck(m) => self.handle_hello_ack(from, m),
            Message::Refuse(m) => self.handle_refuse(from, m),
            Message::Gossip(m) => self.handle_gossip(from, m),
            Message::ReplicaGet(m) => self.handle_replica_get(from, m),
            Message::ReplicaGetReply(m) => self.handle_replica_get_reply(from, m),
            Message::ReplicaPut(m) => self.handle_replica_put(from, m),
            Message::ReplicaPutAck(m) => self.handle_replica_put_ack(from, m),
            Message::ReadRepair(m) => self.handle_read_repair(from, m),
            Message::Forward(m) => self.handle_forward(from, m),
            Message::ForwardReply(m) => self.handle_forward_reply(from, m),
            Message::AeBuckets(m) => self.handle_ae_buckets(from, m),
            Message::AeKeys(m) => self.handle_ae_keys(from, m),
            Message::AeSync(m) => self.handle_ae_sync(from, m),
            Message::ReapQuery(m) => self.handle_reap_query(from, m),
            Message::ReapVote(m) => self.handle_reap_vote(from, m),
            Message::ReapCommit(m) => self.handle_reap_commit(from, m),
            Message::HintBatch(m) => self.handle_hint_batch(from, m),
            Message::HintBatchAck(m) => self.handle_hint_batch_ack(from, m),
            Message::ReplicaDigest(m) => self.handle_replica_digest(from, m),
            Message::ReplicaDigestReply(m) => self.handle_replica_digest_reply(from, m),
        }
    }

    fn handle_io(&mut self, io: IoId, result: IoResult) {
        match result {
            IoResult::Failed(reason) if self.backups.contains_key(&io) => {
                self.backup_done(io, Err(reason));
            }
            IoResult::Synced if self.backups.contains_key(&io) => self.backup_done(io, Ok(())),
            IoResult::Failed(reason) => {
                // A failed sync leaves durability unknown: stop, and let the
                // restart (which bumps the epoch) sort it out.
                self.halt(alloc::format!(
                    "storage operation {} failed: {reason}",
                    io.0
                ));
            }
            IoResult::Loaded(records) => {
                if self.load_io == Some(io) {
                    self.load_io = None;
                    self.recover(records);
                }
            }
            IoResult::Synced => {
                self.metrics.syncs += 1;
                for d in self.durability.synced(io) {
                    self.run_deferred(d);
                }
            }
        }
    }

    fn handle_timeout(&mut self) {
        let now = self.now;
        // Op deadlines first: they answer clients.
        while let Some(&(at, op)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            self.deadline_of.remove(&op);
            self.op_deadline(op);
        }
        if !self.talks_to_peers() {
            return;
        }
        if now >= self.timers.handshake {
            self.timers.handshake = now + self.cfg.timing.handshake_retry;
            self.retry_handshakes();
            self.probe_deadline();
        }
        if now >= self.timers.gossip {
            let d = self.jitter(self.cfg.timing.gossip_interval);
            self.timers.gossip = now + d;
            self.gossip_round();
        }
        if self.phase != Phase::Serving {
            return;
        }
        if now >= self.timers.hints {
            self.timers.hints = now + self.cfg.timing.hint_retry;
            self.deliver_hints();
        }
        if now >= self.timers.anti_entropy {
            let d = self.jitter(self.cfg.timing.anti_entropy_interval);
            self.timers.anti_entropy = now + d;
            self.anti_entropy_round();
        }
        if now >= self.timers.reap {
            self.timers.reap = now + self.cfg.timing.reap_interval;
            self.reap_round();
        }
    }

    // ---- outputs -------------------------------------------------------

    /// The next output. [`Output::Timeout`] is always last and means the node
    /// has nothing more to do until that time or the next input.
    pub fn poll_output(&mut self) -> Output {
        if let Some(o) = self.out.pop_front() {
            return o;
        }
        let at = self.next_deadline();
        Output::Timeout(self.to_driver_time(at))
    }

    fn next_deadline(&mut self) -> Time {
        let mut at = Time::MAX;
        let mut why = "idle";
        if let Some(&(t, _)) = self.deadlines.first() {
            at = t;
            why = "request deadline";
        }
        if self.talks_to_peers() {
            let serving = self.phase == Phase::Serving;
            for (t, w, needs_serving) in [
                (self.timers.handshake, "handshake retry", false),
                (self.timers.gossip, "gossip", false),
                (self.timers.hints, "hint delivery", true),
                (self.timers.anti_entropy, "anti-entropy", true),
                (self.timers.reap, "tombstone reaping", true),
            ] {
                if t < at && (serving || !needs_serving) {
                    at = t;
                    why = w;
                }
            }
        }
        self.timeout_reason = why;
        at.max(self.now)
    }

    fn emit(&mut self, e: Event) {
        self.push(Output::Event(e));
    }

    fn push(&mut self, o: Output) {
        debug_assert!(
            self.out.len() < self.cfg.limits.max_outputs,
            "output queue not drained"
        );
        self.out.push_back(o);
    }

    fn reply(&mut self, id: crate::types::RequestId, response: Response) {
        if matches!(response, Response::Error(_)) {
            self.metrics.client_errors += 1;
        }
        self.push(Output::Reply { id, response });
    }

    // ---- storage -------------------------------------------------------

    fn io_id(&mut self) -> IoId {
        let id = IoId(self.next_io);
        self.next_io += 1;
        id
    }

    fn write_record(&mut self, key: Bytes, value: Option<Bytes>) {
        let io = self.io_id();
        self.durability.written += 1;
        self.metrics.writes += 1;
        self.push(Output::Write { io, key, value });
    }

    /// Stores a key's new state in memory and writes it out.
    fn put_local(&mut self, key: &Bytes, state: Option<KeyState>) {
        let schema = self.schema;
        let partition = self.ring.partition_of(key);
        let record_key = storage::data_key(schema, partition, key);
        let bytes = state
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| storage::encode_state(schema, &record_key, s));
        if let Some(s) = &state {
            self.note_epochs(s);
        }
        self.store.set(&self.ring, key, state, self.now);
        self.write_record(record_key, bytes);
    }

    /// Whether a state a peer sent is well formed (see
    /// [`KeyState::is_well_formed`]). One that is not is counted and
    /// reported like any message that does not decode, and must be dropped:
    /// every handler that takes a state from the network asks here first.
    fn well_formed_from(&mut self, from: NodeId, what: &str, state: &KeyState) -> bool {
        if state.is_well_formed() {
            return true;
        }
        self.metrics.undecodable += 1;
        self.emit(Event::Undecodable {
            from,
            reason: alloc::format!("{what} carries an ill-formed state"),
        });
        false
    }

    /// Merges a well-formed state (a peer's, checked by
    /// [`Node::well_formed_from`]) into the local copy, persisting it if it
    /// changed. Returns true when it changed.
    fn merge_local(&mut self, key: &Bytes, incoming: &KeyState) -> bool {
        let schema = self.schema;
        let partition = self.ring.partition_of(key);
        if !self.store.merge(&self.ring, key, incoming, self.now) {
            return false;
        }
        let record_key = storage::data_key(schema, partition, key);
        let bytes = self
            .store
            .get(key)
            .map(|state| storage::encode_state(schema, &record_key, state));
        // Every actor of the merged state is in the old state (noted when it
        // was stored or loaded) or in `incoming`.
        self.note_epochs(incoming);
        self.write_record(record_key, bytes);
        true
    }

    /// Runs `d` once every write issued so far is durable.
    fn after_durable(&mut self, d: Deferred) {
        if let Some(d) = self.durability.park(d) {
            self.run_deferred(d);
        }
    }

    fn run_deferred(&mut self, d: Deferred) {
        match d {
            Deferred::AckReplicaPut { to, req, key } => {
                self.send(to, Message::ReplicaPutAck(wire::ReplicaPutAck { req, key }));
            }
            Deferred::AckHintBatch { to, batch, keys } => {
                self.send(
                    to,
                    Message::HintBatchAck(wire::HintBatchAck { batch, keys }),
                );
            }
            Deferred::LocalPut { op } => self.local_put_durable(op),
            Deferred::Serve => self.recovered(),
            Deferred::Migrate => self.migrate_step(),
            Deferred::MigrateIfDue => self.migrate_if_due(),
            Deferred::Backup(id) => {
                self.start_backup(versions::BackupFor::Admin(id), "manual".into());
            }
            Deferred::ActivateClusterVersion { version, reply } => {
                self.activate_cluster_version(version, reply)
            }
            Deferred::ShutdownDone => {
                self.phase = Phase::Stopped;
                self.emit(Event::ShutdownComplete);
            }
        }
    }

    /// Issues a sync when writes are waiting and none is in flight: one sync
    /// covers every write of the batch (group commit).
    fn flush(&mut self) {
        if self.durability.needs_sync() && !matches!(self.phase, Phase::Halted) {
            let io = self.io_id();
            self.durability.in_flight = Some((io, self.durability.written));
            self.push(Output::Sync { io });
        }
    }

    fn halt(&mut self, reason: String) {
        if self.phase == Phase::Halted {
            return;
        }
        self.phase = Phase::Halted;
        self.halt_reason = Some(reason.clone());
        self.durability = Durability::default();
        self.ops.clear();
        self.deadlines.clear();
        self.deadline_of.clear();
        self.emit(Event::Halted { reason });
    }

    // ---- helpers -------------------------------------------------------

    fn fresh_req(&mut self) -> u64 {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    /// Sets (or moves) an op's deadline: one per op.
    fn set_deadline(&mut self, op: u64, at: Time) {
        if let Some(old) = self.deadline_of.insert(op, at) {
            self.deadlines.remove(&(old, op));
        }
        self.deadlines.insert((at, op));
    }

    fn cancel_deadline(&mut self, op: u64) {
        if let Some(at) = self.deadline_of.remove(&op) {
            self.deadlines.remove(&(at, op));
        }
    }

    /// `d` scaled by a random factor in [0.75, 1.25).
    fn jitter(&mut self, d: Duration) -> Duration {
        let f = 750 + (self.rng.next_u32() % 500) as u64;
        Duration(d.0 * f / 1000)
    }

    fn random_index(&mut self, len: usize) -> usize {
        debug_assert!(len > 0);
        (self.rng.next_u64() % len as u64) as usize
    }

    /// The planted bugs switched on (always none without the feature).
    fn bugs(&self) -> crate::config::PlantedBugs {
        #[cfg(feature = "planted-bugs")]
        return self.cfg.bugs;
        #[cfg(not(feature = "planted-bugs"))]
        crate::config::PlantedBugs::default()
    }

    /// The epoch this node tells its peers. While it learns its epoch from
    /// them it announces none, so their answers are about earlier lives.
    fn announced_epoch(&self) -> u32 {
        match self.phase {
            Phase::Rejoining => 0,
            _ => self.epoch,
        }
    }

    /// Whether the node handshakes and gossips in its current phase.
    fn talks_to_peers(&self) -> bool {
        matches!(
            self.phase,
            Phase::Serving | Phase::Rejoining | Phase::Migrating | Phase::Refusing
        )
    }

    fn start_timers(&mut self) {
        let now = self.now;
        self.timers.gossip = now;
        self.timers.handshake = now;
        self.timers.hints = now + self.cfg.timing.hint_retry;
        self.timers.anti_entropy = now + self.cfg.timing.anti_entropy_interval;
        self.timers.reap = now + self.cfg.timing.reap_interval;
    }

    fn unavailable_reason(&self) -> String {
        match self.phase {
            Phase::Loading | Phase::Recovering => "starting up".into(),
            Phase::Rejoining if self.probing => alloc::format!(
                "started with an empty disk; waiting for {:?} to report whether this node ran before",
                self.rejoin_waiting
            ),
            Phase::Rejoining => alloc::format!(
                "restored from backup; waiting for {:?} to report this node's last epoch",
                self.rejoin_waiting
            ),
            Phase::Migrating => match self.migration_in_progress() {
                Some((from, to)) => alloc::format!("migrating schema {from} to {to}"),
                None => "migrating".into(),
            },
            Phase::Refusing => alloc::format!(
                "refusing to serve: {}",
                self.refusal.as_deref().unwrap_or("unknown reason")
            ),
            Phase::Draining | Phase::Stopped => "shutting down".into(),
            Phase::Halted => alloc::format!(
                "halted: {}",
                self.halt_reason.as_deref().unwrap_or("storage failure")
            ),
            Phase::Serving => "serving".into(),
        }
    }

    fn fail_client(&mut self, client: coordinator::Client, err: ClientError) {
        self.answer(client, Response::Error(err));
    }
}
