//! Message bodies and their type codes.

use super::Label;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::api::{BackupInfo, ClientError, Request, Response};
use crate::dvv::{KeyState, Sibling, VersionVector};
use crate::types::{NodeId, RequestId};
use crate::version::ProtocolRange;
use crate::Error;

/// Message types 1..=3 form the handshake; their bodies never change.
pub fn is_handshake_type(t: u16) -> bool {
    (1..=3).contains(&t)
}

/// First message to a peer, and again whenever the peer seems to have
/// forgotten us (it restarted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: NodeId,
    pub release: String,
    pub protocols: ProtocolRange,
    pub epoch: u32,
    /// The highest epoch of the receiver this node has seen: a node restored
    /// from backup learns from these which epochs it must never reuse.
    pub your_epoch: u32,
}

/// Accepts a [`Hello`] with the protocol both sides will use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    pub node: NodeId,
    pub release: String,
    pub protocols: ProtocolRange,
    pub epoch: u32,
    pub protocol: u16,
    /// As in [`Hello`].
    pub your_epoch: u32,
}

/// Refuses a [`Hello`]; the reason names both protocol ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    pub node: NodeId,
    pub reason: String,
}

/// Health of a member as it reports itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Starting,
    Serving,
    /// Not serving while a schema migration runs.
    Migrating,
    /// Refusing to serve; the reason is on the node's status.
    Refusing,
    Draining,
    Halted,
}

/// What gossip says about one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub node: NodeId,
    pub epoch: u32,
    /// Increases with every start of the member, clean or not.
    pub generation: u64,
    /// Incremented by the member itself; failure detection watches it advance.
    pub heartbeat: u64,
    pub release: Label,
    pub protocols: ProtocolRange,
    pub schema: u16,
    pub cluster_version: Label,
    pub health: Health,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gossip {
    pub members: Vec<MemberInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaGet {
    pub req: u64,
    pub key: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaGetReply {
    pub req: u64,
    pub key: Bytes,
    pub state: KeyState,
}

/// Store (merge) this state durably, then acknowledge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPut {
    pub req: u64,
    pub key: Bytes,
    pub state: KeyState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPutAck {
    pub req: u64,
    pub key: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRepair {
    pub key: Bytes,
    pub state: KeyState,
}

/// A write sent by a non-replica to a replica that will coordinate it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub fwd: u64,
    pub origin: RequestId,
    pub request: ForwardedRequest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardReply {
    pub fwd: u64,
    pub response: ForwardedResponse,
}

/// A client request as coordinators pass it on: its context already
/// checked where it entered the cluster, and carried as the version vector
/// the token stood for. Encoded exactly as client requests were before
/// contexts were authenticated, so releases before and after forward to
/// each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedRequest {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
        context: VersionVector,
    },
    Delete {
        key: Bytes,
        context: VersionVector,
    },
}

impl ForwardedRequest {
    pub fn key(&self) -> &Bytes {
        match self {
            ForwardedRequest::Get { key }
            | ForwardedRequest::Put { key, .. }
            | ForwardedRequest::Delete { key, .. } => key,
        }
    }

    /// The request with its context checked into `context` (a Get has none).
    pub fn checked(request: Request, context: VersionVector) -> ForwardedRequest {
        match request {
            Request::Get { key } => ForwardedRequest::Get { key },
            Request::Put { key, value, .. } => ForwardedRequest::Put {
                key,
                value,
                context,
            },
            Request::Delete { key, .. } => ForwardedRequest::Delete { key, context },
        }
    }
}

/// The answer to a [`Forward`], encoded exactly as client responses were
/// before contexts were authenticated (a read's context is the bare
/// version vector; the forwarding node turns it into a token for its
/// client). Only writes are forwarded, so in practice it is `Written` or
/// `Error`; [`ClientError::BadContext`] never travels (contexts are checked
/// before forwarding, and an older peer could not decode it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedResponse {
    Read {
        siblings: Vec<Sibling>,
        context: VersionVector,
    },
    Written,
    Finalized {
        cluster_version: String,
    },
    BackedUp {
        info: BackupInfo,
    },
    Error(ClientError),
}

impl ForwardedResponse {
    /// The answer to send back for a response that is not a read (a read's
    /// is built from its version vector). A `BadContext` error goes as
    /// `Invalid`, which every release decodes.
    pub fn from_response(response: Response) -> ForwardedResponse {
        match response {
            Response::Read { .. } => {
                debug_assert!(false, "a read answered with a token instead of its context");
                ForwardedResponse::Error(ClientError::Invalid(
                    "a read's context cannot be forwarded".into(),
                ))
            }
            Response::Written => ForwardedResponse::Written,
            Response::Finalized { cluster_version } => {
                ForwardedResponse::Finalized { cluster_version }
            }
            Response::BackedUp { info } => ForwardedResponse::BackedUp { info },
            Response::Error(ClientError::BadContext(why)) => {
                ForwardedResponse::Error(ClientError::Invalid(format!("bad context: {why}")))
            }
            Response::Error(e) => ForwardedResponse::Error(e),
        }
    }
}

/// Anti-entropy step 1: the initiator's bucket hashes for a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeBuckets {
    pub partition: u16,
    pub buckets: Vec<u64>,
}

/// Anti-entropy step 2: the responder's key digests in the differing buckets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeKeys {
    pub partition: u16,
    pub buckets: Vec<u16>,
    pub keys: Vec<(Bytes, u64)>,
}

/// Anti-entropy step 3 (and 4, with `reply: false`): states of the keys that
/// differ; `None` asks for the peer's copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AeSync {
    pub partition: u16,
    pub reply: bool,
    pub states: Vec<(Bytes, Option<KeyState>)>,
}

/// May this tombstone-only state be reaped? Asked of every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapQuery {
    pub key: Bytes,
    pub digest: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapVote {
    pub key: Bytes,
    pub digest: u64,
    pub yes: bool,
}

/// Every replica agreed: drop the key if it still has this digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReapCommit {
    pub key: Bytes,
    pub digest: u64,
}

/// Asks for the digest of a key's state only (protocol 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDigest {
    pub req: u64,
    pub key: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDigestReply {
    pub req: u64,
    pub key: Bytes,
    pub digest: u64,
}

/// Many hints to one target in a message (protocol 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintBatch {
    pub batch: u64,
    pub items: Vec<(Bytes, KeyState)>,
}

/// Acknowledges a durable [`HintBatch`] (protocol 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HintBatchAck {
    pub batch: u64,
    pub keys: Vec<Bytes>,
}

impl Message {
    /// The body size of the most frequent messages, computed from their
    /// fields instead of by a serialisation pass (see [`Message::body_size`]).
    fn body_size_fast(&self) -> Option<usize> {
        use super::{bytes_len, varint_len};
        Some(match self {
            Message::ReplicaGet(ReplicaGet { req, key })
            | Message::ReplicaPutAck(ReplicaPutAck { req, key })
            | Message::ReplicaDigest(ReplicaDigest { req, key }) => {
                varint_len(*req) + bytes_len(key.len())
            }
            Message::ReplicaGetReply(ReplicaGetReply { req, key, state })
            | Message::ReplicaPut(ReplicaPut { req, key, state }) => {
                varint_len(*req) + bytes_len(key.len()) + state.encoded_len()
            }
            Message::ReadRepair(m) => bytes_len(m.key.len()) + m.state.encoded_len(),
            Message::ReplicaDigestReply(m) => {
                varint_len(m.req) + bytes_len(m.key.len()) + varint_len(m.digest)
            }
            Message::AeBuckets(m) => {
                varint_len(m.partition as u64)
                    + varint_len(m.buckets.len() as u64)
                    + m.buckets.iter().map(|&b| varint_len(b)).sum::<usize>()
            }
            _ => return None,
        })
    }
}

macro_rules! messages {
    ($( $code:literal => $name:ident (proto $min:literal) ),* $(,)?) => {
        /// Every message this release knows.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Message {
            $( $name($name), )*
        }

        impl Message {
            pub fn msg_type(&self) -> u16 {
                match self { $( Message::$name(_) => $code, )* }
            }

            /// The lowest protocol version that carries this message.
            pub fn min_protocol(&self) -> u16 {
                match self { $( Message::$name(_) => $min, )* }
            }

            pub fn name(&self) -> &'static str {
                match self { $( Message::$name(_) => stringify!($name), )* }
            }

            pub fn encode_body(&self) -> Vec<u8> {
                self.encode_body_into(Vec::with_capacity(self.body_size()))
            }

            /// Appends the body to `out` (reserve [`Self::body_size`] first).
            pub fn encode_body_into(&self, out: Vec<u8>) -> Vec<u8> {
                match self { $( Message::$name(m) => super::postcard_append(m, out), )* }
            }

            /// The body's exact encoded size.
            pub fn body_size(&self) -> usize {
                if let Some(n) = self.body_size_fast() {
                    return n;
                }
                let r = match self { $( Message::$name(m) => postcard::experimental::serialized_size(m), )* };
                r.unwrap_or(0)
            }

            /// Decodes a body of a known type; `Ok(None)` for an unknown type.
            pub fn decode_body(msg_type: u16, body: &[u8]) -> Result<Option<Message>, Error> {
                match msg_type {
                    $( $code => postcard::from_bytes::<$name>(body)
                        .map(|m| Some(Message::$name(m)))
                        .map_err(|e| Error::Body(format!("{}: {e}", stringify!($name)))), )*
                    _ => Ok(None),
                }
            }
        }

        /// Every known message type code with its name and minimum protocol.
        pub const MESSAGE_TYPES: &[(u16, &str, u16)] = &[ $( ($code, stringify!($name), $min), )* ];
    };
}

messages! {
    1 => Hello (proto 1),
    2 => HelloAck (proto 1),
    3 => Refuse (proto 1),
    4 => Gossip (proto 1),
    10 => ReplicaGet (proto 1),
    11 => ReplicaGetReply (proto 1),
    12 => ReplicaPut (proto 1),
    13 => ReplicaPutAck (proto 1),
    14 => ReadRepair (proto 1),
    15 => Forward (proto 1),
    16 => ForwardReply (proto 1),
    20 => AeBuckets (proto 1),
    21 => AeKeys (proto 1),
    22 => AeSync (proto 1),
    30 => ReapQuery (proto 1),
    31 => ReapVote (proto 1),
    32 => ReapCommit (proto 1),
    40 => HintBatch (proto 2),
    41 => HintBatchAck (proto 2),
    50 => ReplicaDigest (proto 3),
    51 => ReplicaDigestReply (proto 3),
}
