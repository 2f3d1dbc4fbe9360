//! Durable hinted handoff.
//!
//! When a replica does not acknowledge a write in time, its coordinator keeps
//! the state it meant to deliver as a durable hint and offers it again every
//! `hint_retry` while the target is reachable. A hint is removed only when the
//! target acknowledges it durable, and only if it did not change meanwhile.
//! Under strict quorums hints never count towards W; they shorten the time a
//! replica stays stale, and anti-entropy repairs whatever they miss.

use alloc::vec::Vec;
use bytes::Bytes;

use crate::api::Event;
use crate::dvv::KeyState;
use crate::storage;
use crate::types::NodeId;
use crate::version::Feature;
use crate::wire::{self, Message};

use super::coordinator::{HintOp, Op};
use super::durability::Deferred;
use super::Node;

/// Hints offered to one target per round.
const HINTS_PER_ROUND: usize = 64;

impl Node {
    pub(super) fn store_hint(&mut self, target: NodeId, key: &Bytes, state: &KeyState) {
        let slot = (target, key.clone());
        let mut hint = match self.hints.get(&slot) {
            Some(h) => h.clone(),
            None if self.hints.len() >= self.cfg.limits.max_hints => {
                self.metrics.hints_dropped += 1;
                self.emit(Event::HintDropped {
                    target,
                    key: key.clone(),
                });
                return;
            }
            None => KeyState::new(),
        };
        hint.merge(state);
        let record_key = storage::hint_key(self.schema, target, key);
        let bytes = storage::encode_state(self.schema, &record_key, &hint);
        self.hints.insert(slot, hint);
        self.write_record(record_key, Some(bytes));
        self.metrics.hints_stored += 1;
        self.emit(Event::HintStored {
            target,
            key: key.clone(),
        });
    }

    /// True when this node holds a hint for `key`, for any target.
    pub(super) fn holds_hint_for(&self, key: &[u8]) -> bool {
        self.hints.keys().any(|(_, k)| k.as_ref() == key)
    }

    pub(super) fn deliver_hints(&mut self) {
        if self.hints.is_empty() {
            return;
        }
        let mut targets: Vec<NodeId> = self.hints.keys().map(|(t, _)| *t).collect();
        targets.dedup();
        for target in targets {
            if !self.peer_usable(target) {
                if self.bugs().drop_hints_for_down_targets {
                    self.give_up_hints(target);
                }
                continue;
            }
            let items: Vec<(Bytes, KeyState)> = self
                .hints
                .range((target, Bytes::new())..)
                .take_while(|((t, _), _)| *t == target)
                .take(HINTS_PER_ROUND)
                .map(|((_, k), s)| (k.clone(), s.clone()))
                .collect();
            let op = self.fresh_req();
            let digests = items.iter().map(|(k, s)| (k.clone(), s.digest())).collect();
            self.ops.insert(
                op,
                Op::Hint(HintOp {
                    target,
                    items: digests,
                }),
            );
            self.set_deadline(op, self.now + self.cfg.timing.request_timeout);
            let batch = if self.bugs().new_message_before_finalization {
                // Planted bug: trust our own release, not the cluster's.
                self.release.has(Feature::HintBatch)
            } else {
                self.feature_active(Feature::HintBatch)
                    && self.peer_protocol(target) >= Feature::HintBatch.min_protocol()
            };
            if batch {
                self.send(
                    target,
                    Message::HintBatch(wire::HintBatch { batch: op, items }),
                );
            } else {
                for (key, state) in items {
                    self.send(
                        target,
                        Message::ReplicaPut(wire::ReplicaPut {
                            req: op,
                            key,
                            state,
                        }),
                    );
                }
            }
        }
    }

    /// Planted bug: forget every hint for a target.
    fn give_up_hints(&mut self, target: NodeId) {
        let keys: Vec<Bytes> = self
            .hints
            .range((target, Bytes::new())..)
            .take_while(|((t, _), _)| *t == target)
            .map(|((_, k), _)| k.clone())
            .collect();
        for key in keys {
            self.hints.remove(&(target, key.clone()));
            self.write_record(storage::hint_key(self.schema, target, &key), None);
        }
    }

    pub(super) fn hint_acked(&mut self, op: u64, from: NodeId, keys: &[Bytes]) {
        let Some(Op::Hint(h)) = self.ops.get_mut(&op) else {
            return;
        };
        if h.target != from {
            return;
        }
        let mut delivered = Vec::new();
        for key in keys {
            if let Some(i) = h.items.iter().position(|(k, _)| k == key) {
                delivered.push(h.items.swap_remove(i));
            }
        }
        if h.items.is_empty() {
            self.ops.remove(&op);
        }
        for (key, digest) in delivered {
            let slot = (from, key);
            if self.hints.get(&slot).map(KeyState::digest) == Some(digest) {
                self.hints.remove(&slot);
                self.write_record(storage::hint_key(self.schema, from, &slot.1), None);
                self.metrics.hints_delivered += 1;
                self.emit(Event::HintDelivered {
                    target: from,
                    key: slot.1,
                });
            }
        }
    }

    pub(super) fn handle_hint_batch(&mut self, from: NodeId, m: wire::HintBatch) {
        let mut keys = Vec::with_capacity(m.items.len());
        for (key, state) in m.items {
            if self.well_formed_from(from, "a hint", &state) {
                self.merge_local(&key, &state);
                keys.push(key);
            }
        }
        if keys.is_empty() {
            // Nothing taken (no honest peer sends an empty batch, or one of
            // ill-formed states): nothing to acknowledge.
            return;
        }
        self.after_durable(Deferred::AckHintBatch {
            to: from,
            batch: m.batch,
            keys,
        });
    }

    pub(super) fn handle_hint_batch_ack(&mut self, from: NodeId, m: wire::HintBatchAck) {
        self.hint_acked(m.batch, from, &m.keys);
    }
}
