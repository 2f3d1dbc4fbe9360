//! Group commit and "hold until durable".
//!
//! Writes are buffered outputs; one `Sync` at a time makes everything written
//! before it durable. Anything that must not happen before a write is durable
//! (acknowledging a replica write, counting the coordinator's own copy,
//! serving after recovery, finishing a shutdown) is parked with the sequence
//! number of the last write it depends on and released when a sync covering
//! that sequence completes, as raft-rs does with `persisted_messages`.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use bytes::Bytes;

use crate::types::{IoId, NodeId};

/// Work parked until the writes before it are durable.
#[derive(Clone, Debug)]
pub(crate) enum Deferred {
    /// Acknowledge a replica write to its coordinator.
    AckReplicaPut { to: NodeId, req: u64, key: Bytes },
    /// Acknowledge a batch of hints.
    AckHintBatch {
        to: NodeId,
        batch: u64,
        keys: Vec<Bytes>,
    },
    /// The coordinator's own copy of a write is durable.
    LocalPut { op: u64 },
    /// Recovery persisted the new metadata: start serving.
    Serve,
    /// A clean shutdown persisted its metadata.
    ShutdownDone,
    /// The last migration step is durable: take the next.
    Migrate,
    /// Restored data was reconciled: start a migration that waited for it.
    MigrateIfDue,
    /// Take a backup for this admin request.
    Backup(crate::types::RequestId),
    /// A higher cluster version is durable: act on it.
    ActivateClusterVersion {
        version: crate::version::ReleaseId,
        reply: Option<crate::types::RequestId>,
    },
}

#[derive(Default)]
pub(crate) struct Durability {
    /// Writes issued so far.
    pub written: u64,
    /// Writes known durable.
    pub synced: u64,
    /// The sync in flight and the write sequence it covers.
    pub in_flight: Option<(IoId, u64)>,
    /// Parked work, in sequence order.
    pub waiting: VecDeque<(u64, Deferred)>,
}

impl Durability {
    /// Parks `d` behind every write issued so far; returns it back when there
    /// is nothing to wait for.
    pub fn park(&mut self, d: Deferred) -> Option<Deferred> {
        if self.written == self.synced {
            Some(d)
        } else {
            self.waiting.push_back((self.written, d));
            None
        }
    }

    /// A sync should be issued now: writes are pending and none is in flight.
    pub fn needs_sync(&self) -> bool {
        self.in_flight.is_none() && self.written > self.synced
    }

    /// A sync completed; returns the work it releases.
    pub fn synced(&mut self, io: IoId) -> Vec<Deferred> {
        let mut released = Vec::new();
        if let Some((id, seq)) = self.in_flight {
            if id == io {
                self.in_flight = None;
                self.synced = self.synced.max(seq);
                while let Some((s, _)) = self.waiting.front() {
                    if *s > self.synced {
                        break;
                    }
                    if let Some((_, d)) = self.waiting.pop_front() {
                        released.push(d);
                    }
                }
            }
        }
        released
    }
}
