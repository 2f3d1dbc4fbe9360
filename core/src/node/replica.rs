//! Serving coordinators: reads, durable writes, read repair.

use bytes::Bytes;

use crate::dvv::KeyState;
use crate::types::NodeId;
use crate::wire::{self, Message};

use super::durability::Deferred;
use super::Node;

impl Node {
    pub(super) fn handle_replica_get(&mut self, from: NodeId, m: wire::ReplicaGet) {
        if self.resync.is_some() {
            // Restored and not yet re-synced: our copy may lack acknowledged
            // writes, so it must not count towards a read quorum.
            return;
        }
        let state = self.store.get(&m.key).cloned().unwrap_or_default();
        self.send(
            from,
            Message::ReplicaGetReply(wire::ReplicaGetReply {
                req: m.req,
                key: m.key,
                state,
            }),
        );
    }

    /// Merges the coordinator's state and acknowledges once it is durable.
    /// Even when nothing changed, the state may still be waiting for a sync,
    /// so the acknowledgement always goes behind the writes issued so far.
    pub(super) fn handle_replica_put(&mut self, from: NodeId, m: wire::ReplicaPut) {
        if !self.well_formed_from(from, "a replica write", &m.state) {
            return;
        }
        self.merge_local(&m.key, &m.state);
        let ack = Deferred::AckReplicaPut {
            to: from,
            req: m.req,
            key: m.key,
        };
        if self.bugs().ack_before_durable {
            self.run_deferred(ack);
        } else {
            self.after_durable(ack);
        }
    }

    pub(super) fn handle_read_repair(&mut self, from: NodeId, m: wire::ReadRepair) {
        if self.well_formed_from(from, "a read repair", &m.state) {
            self.repair_local(&m.key, &m.state);
        }
    }

    /// Applies a repair: always a merge, so concurrent siblings survive.
    pub(super) fn repair_local(&mut self, key: &Bytes, state: &KeyState) {
        #[cfg(feature = "planted-bugs")]
        if self.bugs().read_repair_overwrites {
            if self.store.get(key) != Some(state) {
                let mut s = self.store.get(key).cloned().unwrap_or_default();
                s.overwrite_with(state);
                self.put_local(key, Some(s));
            }
            return;
        }
        self.merge_local(key, state);
    }
}
