//! cairn-core: the sans-IO heart of Cairn.
//!
//! Storage, replication, causality and versioning logic as deterministic state
//! machines. Time and randomness are inputs; every side effect is an output.
//! No async runtime, no files, no sockets, no threads, no clock reads.
//!
//! Map of the crate:
//! - [`api`]: the input/output surface a driver speaks.
//! - [`node`]: the node state machine (coordinator, replica, hints,
//!   anti-entropy, gossip, durability).
//! - [`dvv`]: dotted version vectors, the causality of a key.
//! - [`context`]: the authenticated, key-bound causal contexts clients hold.
//! - [`ring`]: partitions and preference lists.
//! - [`merkle`]: per-partition hash trees for anti-entropy.
//! - [`wire`]: the versioned envelope, handshake and message codecs.
//! - [`storage`]: on-disk record layout and codecs.
//! - [`version`]: the release table and protocol negotiation.
//! - [`config`]: configuration, timings and bounds.

#![forbid(unsafe_code)]
#![no_std]

extern crate alloc;

pub mod api;
pub mod config;
pub mod context;
pub mod dvv;
pub mod merkle;
pub mod node;
pub mod ring;
pub mod storage;
pub mod types;
pub mod version;
pub mod wire;

pub use api::{
    AdminCommand, BackupInfo, ClientError, Context, Event, Input, IoResult, Output, ReadRequest,
    Request, Response,
};
pub use config::{InitialClusterState, Limits, NodeConfig, Quorum, Timing};
pub use context::ContextKey;
pub use dvv::{Actor, Dot, KeyState, Sibling, VersionVector};
pub use node::Node;
pub use types::{Duration, IoId, NodeId, RequestId, Time};

/// Errors from decoding untrusted input or validating configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("malformed envelope: {0}")]
    Envelope(alloc::string::String),
    #[error("malformed message body: {0}")]
    Body(alloc::string::String),
    #[error("corrupt storage record: {0}")]
    Storage(alloc::string::String),
    #[error("invalid configuration: {0}")]
    Config(alloc::string::String),
}
