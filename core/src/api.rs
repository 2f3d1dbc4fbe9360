//! The sans-IO surface of a node: what goes in, what comes out.
//!
//! A driver (the simulator or the production binary) feeds [`Input`]s to
//! [`crate::Node::handle_input`] and then drains [`crate::Node::poll_output`]
//! until it returns [`Output::Timeout`], which is always last. Time is an
//! input; every side effect is an output; nothing here touches a clock, a
//! socket or a file.

use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::dvv::{Dot, Sibling};
use crate::types::{IoId, NodeId, RequestId, Time};

/// An opaque causal context as clients hold it: what a read returns and a
/// following write of the same key passes back. It is a token the cluster
/// authenticated and bound to its key (see [`crate::context`]); clients
/// store and return its bytes unchanged. The empty context means "saw
/// nothing" (a blind write).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context(Bytes);

impl Context {
    /// The empty context.
    pub fn new() -> Context {
        Context(Bytes::new())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Bytes> for Context {
    fn from(bytes: Bytes) -> Context {
        Context(bytes)
    }
}

impl From<Vec<u8>> for Context {
    fn from(bytes: Vec<u8>) -> Context {
        Context(Bytes::from(bytes))
    }
}

impl From<&[u8]> for Context {
    fn from(bytes: &[u8]) -> Context {
        Context(Bytes::copy_from_slice(bytes))
    }
}

/// Everything a node reacts to.
#[derive(Clone, Debug)]
pub enum Input {
    /// Bytes received from a peer (one whole envelope).
    Message {
        now: Time,
        from: NodeId,
        bytes: Bytes,
    },
    /// A client request. `id` is chosen by the driver and echoed in the reply.
    Client {
        now: Time,
        id: RequestId,
        request: Request,
    },
    /// Completion of a [`Output::Sync`] or [`Output::Read`].
    IoDone {
        now: Time,
        io: IoId,
        result: IoResult,
    },
    /// The deadline of the last [`Output::Timeout`] (or later) has passed.
    Timeout(Time),
    /// Begin a clean shutdown: stop taking requests, persist what is needed to
    /// restart under the same epoch, then emit [`Event::ShutdownComplete`].
    Shutdown { now: Time },
    /// An operator (or orchestrator) command; answered like a client request.
    Admin {
        now: Time,
        id: RequestId,
        command: AdminCommand,
    },
}

/// Operator commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Raise the active cluster version to `target` (default: this node's
    /// release). Refused, naming the node that blocks it, unless every member
    /// runs a release that supports the target and is healthy.
    Finalize { target: Option<String> },
    /// Take a backup of this node's data now.
    Backup,
}

/// What a backup is, for listings. The driver keeps the backups and prunes
/// old ones to its retention count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Unique per node: `epoch-<e>-io-<n>`.
    pub label: String,
    pub time: Time,
    pub release: String,
    pub schema: u16,
    pub epoch: u32,
    /// Why it was taken: `manual` or `before migration to schema N`.
    pub reason: String,
}

/// Everything a node asks its driver to do, or tells its observers.
#[derive(Clone, Debug)]
pub enum Output {
    /// Send one envelope to a peer. Delivery is best effort.
    Send { to: NodeId, bytes: Bytes },
    /// Buffer a storage write (`value: None` deletes). A write is not durable,
    /// and has no completion of its own, until a later [`Output::Sync`]
    /// completes: that completion reports the fate of every write before it.
    Write {
        io: IoId,
        key: Bytes,
        value: Option<Bytes>,
    },
    /// Make every earlier write durable; answer with [`Input::IoDone`].
    Sync { io: IoId },
    /// Read from storage; answer with [`Input::IoDone`] carrying
    /// [`IoResult::Loaded`].
    Read { io: IoId, request: ReadRequest },
    /// Copy every durable record to a new backup, atomically (a snapshot);
    /// answer with [`Input::IoDone`]. Writes issued after this output are not
    /// part of the backup.
    Backup { io: IoId, info: BackupInfo },
    /// Answer a client request.
    Reply { id: RequestId, response: Response },
    /// An observation for checkers, metrics and traces.
    Event(Event),
    /// Nothing more to do until this time (or until another input). Always
    /// the last output of a drain.
    Timeout(Time),
}

/// What a storage read asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadRequest {
    /// Every record, at start-up.
    All,
}

/// The outcome of a storage operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoResult {
    /// A sync completed: every write issued before it is durable.
    Synced,
    /// A read completed with these records (storage key, stored bytes).
    Loaded(Vec<(Bytes, Bytes)>),
    /// The operation failed; for a sync, durability of earlier writes is
    /// unknown and the node halts.
    Failed(String),
}

/// A client request. A write's context is checked where the request enters
/// the cluster (refused with [`ClientError::BadContext`] unless it is a
/// token this cluster issued for the same key); only the checked version
/// vector travels on to replicas (see [`crate::wire::ForwardedRequest`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
        context: Context,
    },
    Delete {
        key: Bytes,
        context: Context,
    },
}

impl Request {
    pub fn key(&self) -> &Bytes {
        match self {
            Request::Get { key } | Request::Put { key, .. } | Request::Delete { key, .. } => key,
        }
    }
}

/// The answer to a client request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A read: the causally maximal siblings (tombstones included, marked by
    /// `value == None`) and the context to pass to a following write.
    Read {
        siblings: Vec<Sibling>,
        context: Context,
    },
    /// A put or delete was made durable on at least W replicas.
    Written,
    /// The active cluster version is now at least this.
    Finalized { cluster_version: String },
    /// A backup was taken.
    BackedUp { info: BackupInfo },
    /// The request failed. For writes, `Timeout` is indeterminate: the write
    /// may or may not take effect.
    Error(ClientError),
}

impl Response {
    /// Live values of a read (tombstones left out).
    pub fn values(&self) -> Vec<&Bytes> {
        match self {
            Response::Read { siblings, .. } => {
                siblings.iter().filter_map(|s| s.value.as_ref()).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Why a client request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClientError {
    #[error("node unavailable: {0}")]
    Unavailable(String),
    #[error("quorum not reached: {acks} of {needed} replicas answered in time")]
    Timeout { acks: u8, needed: u8 },
    #[error("too many requests in flight")]
    Overloaded,
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An admin command was refused; the reason says what blocks it.
    #[error("refused: {0}")]
    Refused(String),
    /// A write's context was refused (forged, read from another key, of an
    /// unknown format, truncated or oversized); the write changed nothing.
    /// Never sent to a peer: contexts are checked where requests enter.
    #[error("bad context: {0}")]
    BadContext(String),
}

/// Observations: for oracles, metrics and traces. Never needed for correctness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start-up finished loading storage.
    Recovered {
        epoch: u32,
        clean: bool,
        records: usize,
        corrupt: usize,
    },
    /// The node serves requests from now on.
    Serving,
    /// A coordinator created a new dot for a client write.
    WriteIssued {
        request: RequestId,
        key: Bytes,
        dot: Dot,
        tombstone: bool,
    },
    /// A clean shutdown persisted everything; the driver may stop the node.
    ShutdownComplete,
    /// The node stopped after a fatal storage error and must be restarted.
    Halted {
        reason: String,
    },
    /// A peer's handshake was refused.
    PeerRefused {
        peer: NodeId,
        reason: String,
    },
    /// A peer's handshake succeeded with this protocol.
    PeerConnected {
        peer: NodeId,
        protocol: u16,
    },
    /// A peer was judged up or down by the failure detector.
    PeerLiveness {
        peer: NodeId,
        up: bool,
    },
    /// Bytes from a peer could not be decoded (counted, then dropped).
    Undecodable {
        from: NodeId,
        reason: String,
    },
    /// A well-formed message of an unknown type (counted, then dropped).
    UnknownMessage {
        from: NodeId,
        msg_type: u16,
    },
    /// A stored record failed its checksum or could not be decoded; it is
    /// treated as lost and repaired from replicas.
    CorruptRecord {
        key: Bytes,
    },
    HintStored {
        target: NodeId,
        key: Bytes,
    },
    HintDelivered {
        target: NodeId,
        key: Bytes,
    },
    /// A hint was refused because the hint store is full; anti-entropy will
    /// repair the replica instead.
    HintDropped {
        target: NodeId,
        key: Bytes,
    },
    ReadRepair {
        key: Bytes,
        target: NodeId,
    },
    AntiEntropy {
        partition: u16,
        peer: NodeId,
        keys: usize,
    },
    TombstoneReaped {
        key: Bytes,
    },
    /// The node stopped serving (or will not start); the reason says why.
    Refusing {
        reason: String,
    },
    /// A higher cluster version was persisted and is now acted upon.
    ClusterVersion {
        version: String,
    },
    MigrationStarted {
        from: u16,
        to: u16,
    },
    /// The switch to the new schema is durable and the old records are gone.
    MigrationFinished {
        from: u16,
        to: u16,
    },
    MigrationFailed {
        from: u16,
        to: u16,
        reason: String,
    },
    BackupTaken {
        info: BackupInfo,
    },
    /// After a restore, the node learned from its peers the epochs it used
    /// since the backup and took a new one above them.
    EpochLearned {
        epoch: u32,
    },
}
