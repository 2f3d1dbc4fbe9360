//! The driver: the one task that owns the core [`Node`].
//!
//! It turns real events (peer frames, HTTP requests, storage completions,
//! the clock) into core inputs, and after every input drains
//! [`Node::poll_output`] until `Output::Timeout`, carrying out each output:
//! envelopes go to the peer transport, the writes go to the storage thread
//! (it makes them durable without waiting to be asked), a sync completes once the storage thread reports every write
//! before it durable, replies go back to the waiting HTTP handler, events are
//! logged, and the timeout becomes the next deadline. Inputs already waiting
//! when the driver wakes are handled in one round (up to [`MAX_ROUND`]), and
//! the writes of the whole round go to the storage thread together.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_core::api::{AdminCommand, ReadRequest};
use cairn_core::node::{Metrics, Phase};
use cairn_core::version::Release;
use cairn_core::wire::MemberInfo;
use cairn_core::{
    ClientError, Event, Input, IoId, IoResult, Node, NodeId, Output, Request, RequestId, Response,
    Time,
};
use tokio::sync::{mpsc, oneshot};

use crate::peers::PeerSender;
use crate::storage::{Done, Job, StorageStats, WriteOp};

/// What other tasks ask of the driver.
pub enum DriverMsg {
    /// One envelope from an authenticated peer.
    Peer { from: NodeId, bytes: Bytes },
    /// A client request; the answer goes to `reply`.
    Client {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    /// An operator command; the answer goes to `reply`.
    Admin {
        command: AdminCommand,
        reply: oneshot::Sender<Response>,
    },
    /// A copy of the node's state for status and metrics pages.
    Snapshot { reply: oneshot::Sender<Snapshot> },
    /// Begin a clean shutdown.
    Shutdown,
}

/// A peer as the core sees it.
#[derive(Clone, Debug)]
pub struct PeerSnapshot {
    pub id: NodeId,
    pub protocol: Option<u16>,
    pub up: bool,
    pub refused: Option<String>,
    pub info: Option<MemberInfo>,
}

/// The node's state at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub id: NodeId,
    pub epoch: u32,
    pub phase: Phase,
    pub release: &'static Release,
    pub self_info: MemberInfo,
    pub peers: Vec<PeerSnapshot>,
    pub metrics: Metrics,
    pub hints: usize,
    pub keys: usize,
    pub pending_ops: usize,
    pub halt_reason: Option<String>,
    /// The active cluster version this node acts on.
    pub cluster_version: &'static str,
    /// The schema of the live records.
    pub schema: u16,
    /// Why the node refuses to serve, if it does.
    pub refusal: Option<String>,
    /// Why the node is not ready, if it is not.
    pub not_ready: Option<String>,
    pub migration: MigrationState,
}

/// The last schema migration this process saw, from the core's events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationState {
    /// `none`, `running`, `finished` or `failed`.
    pub state: &'static str,
    pub from: u16,
    pub to: u16,
    pub error: Option<String>,
}

/// How the driver stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverExit {
    /// A clean shutdown completed.
    Stopped,
    /// A fatal storage error: the process must exit non-zero and be restarted.
    Halted(String),
    /// Every handle was dropped.
    Closed,
}

/// A cheap handle for HTTP handlers.
#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<DriverMsg>,
    ready: Arc<AtomicBool>,
}

impl DriverHandle {
    /// Sends a client request and waits for the core's answer.
    pub async fn request(&self, request: Request) -> Response {
        let (reply, rx) = oneshot::channel();
        self.ask(DriverMsg::Client { request, reply }, rx).await
    }

    /// Sends an operator command and waits for the core's answer.
    pub async fn admin(&self, command: AdminCommand) -> Response {
        let (reply, rx) = oneshot::channel();
        self.ask(DriverMsg::Admin { command, reply }, rx).await
    }

    async fn ask(&self, msg: DriverMsg, rx: oneshot::Receiver<Response>) -> Response {
        if self.tx.send(msg).await.is_err() {
            return Response::Error(ClientError::Unavailable("node is stopping".into()));
        }
        rx.await.unwrap_or_else(|_| {
            Response::Error(ClientError::Unavailable("node is stopping".into()))
        })
    }

    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(DriverMsg::Snapshot { reply }).await.ok()?;
        rx.await.ok()
    }

    pub async fn shutdown(&self) {
        let _ = self.tx.send(DriverMsg::Shutdown).await;
    }

    /// True while the core serves requests, reads included.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn sender(&self) -> mpsc::Sender<DriverMsg> {
        self.tx.clone()
    }
}

/// Creates the driver's inbox. Start the driver with [`Driver::run`].
pub fn channel(capacity: usize) -> (DriverHandle, mpsc::Receiver<DriverMsg>) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        DriverHandle {
            tx,
            ready: Arc::new(AtomicBool::new(false)),
        },
        rx,
    )
}

pub struct Driver {
    node: Node,
    origin: Instant,
    peers: PeerSender,
    storage: mpsc::UnboundedSender<Job>,
    storage_stats: Arc<StorageStats>,
    /// Writes of the current drain, not yet handed to the storage thread.
    pending_writes: Vec<WriteOp>,
    /// Writes handed to the storage thread so far.
    writes_sent: u64,
    /// Writes the storage thread reported durable.
    durable: u64,
    /// Core syncs waiting for `durable` to reach the write count they cover.
    syncs: VecDeque<(IoId, u64)>,
    /// Set once storage failed: no sync completes after it.
    storage_failed: Option<String>,
    /// Completions the driver answers itself, fed back after the drain.
    deferred_io: Vec<(IoId, IoResult)>,
    replies: HashMap<RequestId, oneshot::Sender<Response>>,
    next_request: u64,
    deadline: Time,
    ready: Arc<AtomicBool>,
    stopped: bool,
    halted: Option<String>,
    migration: MigrationState,
}

/// Microseconds added to the monotonic clock so time never starts at zero.
const TIME_BASE: u64 = 1_000_000;

/// Most inputs handled in one round before the driver yields to the tasks
/// that carry out its outputs (HTTP replies, peer writers).
const MAX_ROUND: usize = 64;

impl Driver {
    /// Builds the driver around a fresh node. The node's first outputs (the
    /// storage read) are carried out when `run` starts. A configuration the
    /// core refuses is an error (the node binary checks it earlier, with
    /// the same words).
    pub fn new(
        cfg: cairn_core::NodeConfig,
        handle: &DriverHandle,
        peers: PeerSender,
        storage: mpsc::UnboundedSender<Job>,
        storage_stats: Arc<StorageStats>,
    ) -> Result<Driver, cairn_core::Error> {
        let origin = Instant::now();
        let node = Node::new(cfg, Time(TIME_BASE))?;
        Ok(Driver {
            node,
            origin,
            peers,
            storage,
            storage_stats,
            pending_writes: Vec::new(),
            writes_sent: 0,
            durable: 0,
            syncs: VecDeque::new(),
            storage_failed: None,
            deferred_io: Vec::new(),
            replies: HashMap::new(),
            next_request: 1,
            deadline: Time::MAX,
            ready: handle.ready.clone(),
            stopped: false,
            halted: None,
            migration: MigrationState {
                state: "none",
                ..MigrationState::default()
            },
        })
    }

    fn now(&self) -> Time {
        Time(TIME_BASE + self.origin.elapsed().as_micros() as u64)
    }

    /// Runs until a clean shutdown completes, the node halts, or every input
    /// source is gone.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<DriverMsg>,
        mut io_done: mpsc::UnboundedReceiver<Done>,
    ) -> DriverExit {
        self.drain();
        self.send_writes();
        loop {
            if self.stopped {
                return DriverExit::Stopped;
            }
            if let Some(reason) = self.halted.take() {
                self.fail_waiting(&format!("node halted: {reason}"));
                return DriverExit::Halted(reason);
            }
            let sleep_for = self
                .deadline
                .0
                .saturating_sub(self.now().0)
                .min(3_600_000_000);
            let sleep = tokio::time::sleep(std::time::Duration::from_micros(sleep_for));
            tokio::select! {
                biased;
                done = io_done.recv() => {
                    let Some(done) = done else { return DriverExit::Closed };
                    self.storage_done(done);
                }
                msg = inbox.recv() => {
                    let Some(msg) = msg else { return DriverExit::Closed };
                    self.handle_msg(msg);
                }
                _ = sleep => {
                    let now = self.now();
                    self.deadline = Time::MAX;
                    self.input(Input::Timeout(now));
                }
            }
            // Whatever else is already waiting joins this round: its writes
            // go to the storage thread together, and its envelopes reach the
            // peer queues before their writers run.
            for _ in 0..MAX_ROUND {
                if self.stopped || self.halted.is_some() {
                    break;
                }
                if let Ok(done) = io_done.try_recv() {
                    self.storage_done(done);
                } else if let Ok(msg) = inbox.try_recv() {
                    self.handle_msg(msg);
                } else {
                    break;
                }
            }
            self.send_writes();
        }
    }

    fn handle_msg(&mut self, msg: DriverMsg) {
        let now = self.now();
        match msg {
            DriverMsg::Peer { from, bytes } => self.input(Input::Message { now, from, bytes }),
            DriverMsg::Client { request, reply } => {
                let id = RequestId(self.next_request);
                self.next_request += 1;
                self.replies.insert(id, reply);
                self.input(Input::Client { now, id, request });
            }
            DriverMsg::Admin { command, reply } => {
                let id = RequestId(self.next_request);
                self.next_request += 1;
                self.replies.insert(id, reply);
                tracing::info!(?command, "admin command");
                self.input(Input::Admin { now, id, command });
            }
            DriverMsg::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            DriverMsg::Shutdown => {
                tracing::info!("clean shutdown requested");
                self.input(Input::Shutdown { now });
            }
        }
    }

    fn storage_done(&mut self, done: Done) {
        match done {
            Done::Io(io, result) => {
                let now = self.now();
                self.input(Input::IoDone { now, io, result });
            }
            Done::Durable(upto) => {
                self.durable = self.durable.max(upto);
                while let Some(&(io, covers)) = self.syncs.front() {
                    if covers > self.durable || self.storage_failed.is_some() {
                        break;
                    }
                    self.syncs.pop_front();
                    self.storage_stats.syncs.fetch_add(1, Ordering::Relaxed);
                    let now = self.now();
                    self.input(Input::IoDone {
                        now,
                        io,
                        result: IoResult::Synced,
                    });
                }
            }
            Done::Failed(reason) => {
                if self.storage_failed.is_none() {
                    self.storage_failed = Some(reason.clone());
                }
                while let Some((io, _)) = self.syncs.pop_front() {
                    let now = self.now();
                    let result = IoResult::Failed(reason.clone());
                    self.input(Input::IoDone { now, io, result });
                }
            }
        }
    }

    /// Writes issued so far, handed to the storage thread or not.
    fn issued(&self) -> u64 {
        self.writes_sent + self.pending_writes.len() as u64
    }

    /// Hands the writes of this round to the storage thread, numbered on.
    fn send_writes(&mut self) {
        if self.pending_writes.is_empty() {
            return;
        }
        let writes = std::mem::take(&mut self.pending_writes);
        self.writes_sent += writes.len() as u64;
        let upto = self.writes_sent;
        if self.storage.send(Job::Write { writes, upto }).is_err() {
            self.halted = Some("storage task is gone".into());
        }
    }

    fn input(&mut self, input: Input) {
        self.node.handle_input(input);
        self.drain();
        while !self.deferred_io.is_empty() {
            for (io, result) in std::mem::take(&mut self.deferred_io) {
                let now = self.now();
                self.node.handle_input(Input::IoDone { now, io, result });
                self.drain();
            }
        }
    }

    /// Carries out every output up to and including the next timeout.
    fn drain(&mut self) {
        loop {
            match self.node.poll_output() {
                Output::Timeout(at) => {
                    self.deadline = at;
                    break;
                }
                Output::Send { to, bytes } => self.peers.send(to, bytes),
                Output::Write { key, value, .. } => self.pending_writes.push((key, value)),
                Output::Sync { io } => {
                    // Covers every write issued before it; the writes still
                    // pending go to the storage thread at the end of the round.
                    let issued = self.issued();
                    if let Some(reason) = &self.storage_failed {
                        self.deferred_io
                            .push((io, IoResult::Failed(reason.clone())));
                    } else if self.durable >= issued {
                        self.storage_stats.syncs.fetch_add(1, Ordering::Relaxed);
                        self.deferred_io.push((io, IoResult::Synced));
                    } else {
                        self.syncs.push_back((io, issued));
                    }
                }
                Output::Read {
                    io,
                    request: ReadRequest::All,
                } => {
                    self.send_writes();
                    if self.storage.send(Job::ReadAll { io }).is_err() {
                        self.halted = Some("storage task is gone".into());
                    }
                }
                Output::Backup { io, info } => {
                    // Queued behind every earlier write: the snapshot holds
                    // every write issued before it (made durable first) and
                    // nothing issued later.
                    tracing::info!(label = %info.label, reason = %info.reason, "taking a backup");
                    self.send_writes();
                    if self.storage.send(Job::Backup { io, info }).is_err() {
                        self.halted = Some("storage task is gone".into());
                    }
                }
                Output::Reply { id, response } => {
                    if let Some(tx) = self.replies.remove(&id) {
                        let _ = tx.send(response);
                    }
                }
                Output::Event(e) => self.event(e),
            }
        }
        // Ready as `not_ready` says, without formatting a reason each round.
        let ready = self.node.is_serving() && self.node.resync_pending().is_none();
        self.ready.store(ready, Ordering::Relaxed);
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Recovered {
                epoch,
                clean,
                records,
                corrupt,
            } => {
                if corrupt > 0 {
                    tracing::error!(
                        epoch,
                        clean,
                        records,
                        corrupt,
                        "storage loaded with corrupt records; they will be repaired from replicas"
                    );
                } else {
                    tracing::info!(epoch, clean, records, "storage loaded");
                }
            }
            Event::Serving => tracing::info!(epoch = self.node.epoch(), "serving"),
            Event::ShutdownComplete => {
                tracing::info!("clean shutdown complete");
                self.stopped = true;
            }
            Event::Halted { reason } => {
                tracing::error!(%reason, "node halted");
                self.halted = Some(reason);
            }
            Event::PeerRefused { peer, reason } => {
                tracing::error!(%peer, %reason, "peer handshake refused");
            }
            Event::PeerConnected { peer, protocol } => {
                tracing::info!(%peer, protocol, "peer handshake complete");
            }
            Event::PeerLiveness { peer, up } => {
                tracing::info!(%peer, up, "peer liveness changed");
            }
            Event::Undecodable { from, reason } => {
                tracing::warn!(peer = %from, %reason, "undecodable message dropped");
            }
            Event::UnknownMessage { from, msg_type } => {
                tracing::debug!(peer = %from, msg_type, "unknown message type dropped");
            }
            Event::CorruptRecord { key } => {
                tracing::error!(key = %escape(&key), "corrupt record detected; not served, will be repaired");
            }
            Event::HintStored { target, key } => {
                tracing::debug!(%target, key = %escape(&key), "hint stored");
            }
            Event::HintDelivered { target, key } => {
                tracing::debug!(%target, key = %escape(&key), "hint delivered");
            }
            Event::HintDropped { target, key } => {
                tracing::warn!(%target, key = %escape(&key), "hint store full; hint dropped");
            }
            Event::ReadRepair { key, target } => {
                tracing::debug!(%target, key = %escape(&key), "read repair");
            }
            Event::AntiEntropy {
                partition,
                peer,
                keys,
            } => {
                tracing::debug!(partition, %peer, keys, "anti-entropy exchange repaired keys");
            }
            Event::TombstoneReaped { key } => {
                tracing::trace!(key = %escape(&key), "tombstone reaped");
            }
            Event::WriteIssued { .. } => {}
            Event::Refusing { reason } => {
                tracing::error!(%reason, "refusing to serve");
            }
            Event::ClusterVersion { version } => {
                tracing::info!(%version, "active cluster version raised");
            }
            Event::MigrationStarted { from, to } => {
                tracing::warn!(
                    from,
                    to,
                    "schema migration started; not serving until it finishes"
                );
                self.migration = MigrationState {
                    state: "running",
                    from,
                    to,
                    error: None,
                };
            }
            Event::MigrationFinished { from, to } => {
                tracing::info!(from, to, "schema migration finished");
                self.migration = MigrationState {
                    state: "finished",
                    from,
                    to,
                    error: None,
                };
            }
            Event::MigrationFailed { from, to, reason } => {
                tracing::error!(from, to, %reason, "schema migration failed");
                self.migration = MigrationState {
                    state: "failed",
                    from,
                    to,
                    error: Some(reason),
                };
            }
            Event::BackupTaken { info } => {
                tracing::info!(label = %info.label, reason = %info.reason, schema = info.schema, "backup taken");
            }
            Event::EpochLearned { epoch } => {
                tracing::info!(epoch, "restored node learned its epochs from its peers");
            }
        }
    }

    fn fail_waiting(&mut self, why: &str) {
        for (_, tx) in self.replies.drain() {
            let _ = tx.send(Response::Error(ClientError::Unavailable(why.to_string())));
        }
        self.ready.store(false, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Snapshot {
        let n = &self.node;
        Snapshot {
            id: n.id(),
            epoch: n.epoch(),
            phase: n.phase(),
            release: n.release(),
            self_info: n.self_info(),
            peers: n
                .peers()
                .into_iter()
                .map(|p| PeerSnapshot {
                    id: p.id,
                    protocol: p.protocol,
                    up: p.up,
                    refused: p.refused,
                    info: p.info,
                })
                .collect(),
            metrics: n.metrics().clone(),
            hints: n.hint_count(),
            keys: n.keys().count(),
            pending_ops: n.pending_ops(),
            halt_reason: n.halt_reason().map(str::to_string),
            cluster_version: n.cluster_version().version(),
            schema: n.schema(),
            refusal: n.refusal().map(str::to_string),
            not_ready: self.not_ready(),
            migration: self.migration.clone(),
        }
    }

    /// Why the node does not serve, or None while it does.
    fn not_ready(&self) -> Option<String> {
        let n = &self.node;
        Some(match n.phase() {
            // Writes are served, reads are not until the re-sync completes:
            // a client routed here would be refused its reads.
            Phase::Serving => match n.resync_pending() {
                None => return None,
                Some(left) => format!(
                    "re-syncing from replicas after a restore ({left} partition replicas left to compare)"
                ),
            },
            Phase::Loading | Phase::Recovering => "starting up".into(),
            Phase::Rejoining => {
                let waiting: Vec<String> =
                    n.rejoin_waiting().iter().map(|p| p.to_string()).collect();
                format!(
                    "restored from backup: waiting for {} to report this node's last epoch",
                    waiting.join(", ")
                )
            }
            Phase::Migrating => {
                let m = &self.migration;
                if m.state == "running" {
                    format!("migrating schema {} to {}", m.from, m.to)
                } else {
                    "migrating".into()
                }
            }
            Phase::Refusing => format!(
                "refusing to serve: {}",
                n.refusal().unwrap_or("unknown reason")
            ),
            Phase::Draining | Phase::Stopped => "shutting down".into(),
            Phase::Halted => format!("halted: {}", n.halt_reason().unwrap_or("storage failure")),
        })
    }
}

/// A key as printable text: UTF-8 as is, other bytes escaped.
pub fn escape(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}
