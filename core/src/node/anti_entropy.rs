//! Merkle-tree anti-entropy and tombstone reaping.
//!
//! Every `anti_entropy_interval` a node takes the next few partitions it
//! replicates and compares, for each it holds keys in, its tree with every
//! other live replica of it. A partition it holds nothing in is left to the
//! replicas that do (an exchange syncs both sides), so a replica that lost
//! its data hears from every replica that has some within one cycle, and a
//! partition nobody holds keys in costs no messages. An exchange:
//! 1. initiator -> peer: bucket hashes ([`wire::AeBuckets`]);
//! 2. peer -> initiator: its keys and digests in the buckets that differ
//!    ([`wire::AeKeys`]);
//! 3. initiator -> peer: its states of the keys that differ, `None` for keys
//!    it lacks ([`wire::AeSync`] with `reply`);
//! 4. peer merges them and answers with its merged states; the initiator
//!    merges those. Both sides then hold the same states for those keys.
//!
//! Reaping: a tombstone-only key is dropped only when its first replica has
//! seen it unchanged for `tombstone_grace`, every replica confirms it holds the
//! identical state (for as long) and no replica holds a hint for the key.
//! Otherwise a replica that missed the delete could resurrect the value.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use bytes::Bytes;

use crate::api::Event;
use crate::dvv::KeyState;
use crate::types::NodeId;
use crate::wire::{self, Message};

use super::coordinator::Op;
use super::Node;

pub(crate) struct ReapOp {
    key: Bytes,
    digest: u64,
    waiting: BTreeSet<NodeId>,
}

/// Partitions compared per anti-entropy round.
const AE_PARTITIONS_PER_ROUND: usize = 4;

/// Keys whose reaping is checked per round.
const REAP_PER_ROUND: usize = 32;

impl Node {
    /// Starts exchanges for the next few partitions this node replicates,
    /// round-robin: for each it holds keys in, one with every other live
    /// replica.
    pub(super) fn anti_entropy_round(&mut self) {
        let me = self.cfg.id;
        let mine: Vec<u16> = self.ring.partitions_of(me).collect();
        if mine.is_empty() {
            return;
        }
        if let Some(pending) = &self.resync {
            // Re-syncing after a restore: compare with every replica.
            let pairs: Vec<(u16, NodeId)> = pending
                .iter()
                .copied()
                .filter(|&(_, p)| self.peer_usable(p))
                .take(AE_PARTITIONS_PER_ROUND * 4)
                .collect();
            for (partition, peer) in pairs {
                self.metrics.anti_entropy_rounds += 1;
                let buckets = self.store.trees[partition as usize].buckets().to_vec();
                self.send(
                    peer,
                    Message::AeBuckets(wire::AeBuckets { partition, buckets }),
                );
            }
            return;
        }
        for _ in 0..AE_PARTITIONS_PER_ROUND.min(mine.len()) {
            let partition = mine[self.ae_cursor % mine.len()];
            self.ae_cursor = self.ae_cursor.wrapping_add(1);
            let tree = &self.store.trees[partition as usize];
            if tree.is_empty() {
                // Nothing to offer: every replica holding keys here starts
                // exchanges from its side, and an exchange syncs both ways.
                continue;
            }
            let buckets = tree.buckets().to_vec();
            let peers: Vec<NodeId> = self
                .ring
                .preference(partition)
                .iter()
                .copied()
                .filter(|&p| p != me && self.peer_usable(p))
                .collect();
            self.metrics.anti_entropy_rounds += peers.len() as u64;
            self.send_each(
                &peers,
                Message::AeBuckets(wire::AeBuckets { partition, buckets }),
            );
        }
    }

    fn replicates(&self, partition: u16) -> bool {
        partition < self.ring.partitions() && self.ring.is_replica(self.cfg.id, partition)
    }

    pub(super) fn handle_ae_buckets(&mut self, from: NodeId, m: wire::AeBuckets) {
        if !self.replicates(m.partition) {
            return;
        }
        if !self.quarantine.is_empty() {
            // Restored and not yet re-synced: this node pulls from its
            // replicas, it does not answer as one. (Two replicas restored at
            // once would otherwise find each other equal with nothing pulled
            // and drop their restored data: they wait instead.)
            return;
        }
        let differing = self.store.trees[m.partition as usize].differing(&m.buckets);
        if differing.is_empty() {
            // Say so: a node re-syncing after a restore counts these.
            self.send(
                from,
                Message::AeKeys(wire::AeKeys {
                    partition: m.partition,
                    buckets: Vec::new(),
                    keys: Vec::new(),
                }),
            );
            return;
        }
        let mut keys =
            self.store
                .keys_in_buckets(m.partition, &differing, self.cfg.limits.max_ae_keys);
        if self.bugs().anti_entropy_skips_bucket {
            keys.retain(|(k, _)| {
                crate::merkle::bucket_of(k) as usize != crate::merkle::BUCKETS - 1
            });
        }
        self.send(
            from,
            Message::AeKeys(wire::AeKeys {
                partition: m.partition,
                buckets: differing,
                keys,
            }),
        );
    }

    pub(super) fn handle_ae_keys(&mut self, from: NodeId, m: wire::AeKeys) {
        if !self.replicates(m.partition) {
            return;
        }
        if m.buckets.is_empty() {
            // The peer's tree equals ours.
            if let Some(pending) = self.resync.as_mut() {
                pending.remove(&(m.partition, from));
                self.resync_progress();
            }
            return;
        }
        let limit = self.cfg.limits.max_ae_keys;
        let buckets: Vec<u16> = m
            .buckets
            .into_iter()
            .filter(|&b| (b as usize) < crate::merkle::BUCKETS)
            .collect();
        let mut states: Vec<(Bytes, Option<KeyState>)> = Vec::new();
        // Keys the peer listed whose digest differs from ours (or we lack).
        for (key, digest) in &m.keys {
            if states.len() >= limit {
                break;
            }
            if self.ring.partition_of(key) != m.partition {
                continue;
            }
            if self.store.digest(key) != Some(*digest) {
                states.push((key.clone(), self.store.get(key).cloned()));
            }
        }
        // Keys we hold in those buckets that the peer did not list.
        let mut ours = self.store.keys_in_buckets(m.partition, &buckets, limit);
        if self.bugs().anti_entropy_skips_bucket {
            ours.retain(|(k, _)| {
                crate::merkle::bucket_of(k) as usize != crate::merkle::BUCKETS - 1
            });
            states.retain(|(k, _)| {
                crate::merkle::bucket_of(k) as usize != crate::merkle::BUCKETS - 1
            });
        }
        for (key, _) in ours {
            if states.len() >= limit {
                break;
            }
            if !m.keys.iter().any(|(k, _)| *k == key) {
                let s = self.store.get(&key).cloned();
                states.push((key, s));
            }
        }
        if states.is_empty() {
            return;
        }
        self.send(
            from,
            Message::AeSync(wire::AeSync {
                partition: m.partition,
                reply: true,
                states,
            }),
        );
    }

    pub(super) fn handle_ae_sync(&mut self, from: NodeId, m: wire::AeSync) {
        if !self.replicates(m.partition) {
            return;
        }
        let mut repaired = 0usize;
        let mut keys = Vec::with_capacity(m.states.len());
        for (key, state) in m.states.into_iter().take(self.cfg.limits.max_ae_keys) {
            if self.ring.partition_of(&key) != m.partition {
                continue;
            }
            if let Some(state) = state {
                if !self.well_formed_from(from, "an anti-entropy sync", &state) {
                    continue;
                }
                if self.merge_local(&key, &state) {
                    repaired += 1;
                }
            }
            keys.push(key);
        }
        self.metrics.anti_entropy_keys += repaired as u64;
        if repaired > 0 {
            self.emit(Event::AntiEntropy {
                partition: m.partition,
                peer: from,
                keys: repaired,
            });
        }
        if m.reply {
            let states = keys
                .into_iter()
                .map(|k| {
                    let s = self.store.get(&k).cloned();
                    (k, s)
                })
                .collect();
            self.send(
                from,
                Message::AeSync(wire::AeSync {
                    partition: m.partition,
                    reply: false,
                    states,
                }),
            );
        }
    }

    // ---- reaping ---------------------------------------------------------

    /// Whether this node, as a replica, agrees that `key` may be reaped.
    fn may_reap(&self, key: &[u8], digest: u64) -> bool {
        let grace = self.cfg.timing.tombstone_grace;
        let old_enough = self
            .store
            .tombstones
            .get(key)
            .is_some_and(|&since| self.now.saturating_since(since) >= grace);
        old_enough && self.store.digest(key) == Some(digest) && !self.holds_hint_for(key)
    }

    pub(super) fn reap_round(&mut self) {
        let me = self.cfg.id;
        let grace = self.cfg.timing.tombstone_grace;
        let candidates: Vec<Bytes> = self
            .store
            .tombstones
            .iter()
            .filter(|(k, &since)| {
                self.now.saturating_since(since) >= grace
                    && self.ring.replicas_of(k).first() == Some(&me)
            })
            .map(|(k, _)| k.clone())
            .take(REAP_PER_ROUND)
            .collect();
        for key in candidates {
            let Some(digest) = self.store.digest(&key) else {
                continue;
            };
            if !self.may_reap(&key, digest) {
                continue;
            }
            let others: BTreeSet<NodeId> = self
                .ring
                .replicas_of(&key)
                .iter()
                .copied()
                .filter(|&r| r != me)
                .collect();
            if self.bugs().reap_without_quorum {
                for &r in &others {
                    self.send(
                        r,
                        Message::ReapCommit(wire::ReapCommit {
                            key: key.clone(),
                            digest,
                        }),
                    );
                }
                self.reap(&key);
                continue;
            }
            if others.iter().any(|&r| !self.peer_usable(r)) {
                continue;
            }
            let op = self.fresh_req();
            for &r in &others {
                self.send(
                    r,
                    Message::ReapQuery(wire::ReapQuery {
                        key: key.clone(),
                        digest,
                    }),
                );
            }
            self.ops.insert(
                op,
                Op::Reap(ReapOp {
                    key,
                    digest,
                    waiting: others,
                }),
            );
            self.set_deadline(op, self.now + self.cfg.timing.request_timeout);
        }
    }

    pub(super) fn handle_reap_query(&mut self, from: NodeId, m: wire::ReapQuery) {
        let yes = self.may_reap(&m.key, m.digest);
        self.send(
            from,
            Message::ReapVote(wire::ReapVote {
                key: m.key,
                digest: m.digest,
                yes,
            }),
        );
    }

    pub(super) fn handle_reap_vote(&mut self, from: NodeId, m: wire::ReapVote) {
        let found = self.ops.iter().find_map(|(&id, op)| match op {
            Op::Reap(r) if r.key == m.key && r.digest == m.digest => Some(id),
            _ => None,
        });
        let Some(id) = found else {
            return;
        };
        let Some(Op::Reap(r)) = self.ops.get_mut(&id) else {
            return;
        };
        if !m.yes {
            self.ops.remove(&id);
            return;
        }
        r.waiting.remove(&from);
        if !r.waiting.is_empty() {
            return;
        }
        self.ops.remove(&id);
        if !self.may_reap(&m.key, m.digest) {
            return;
        }
        let others: Vec<NodeId> = self
            .ring
            .replicas_of(&m.key)
            .iter()
            .copied()
            .filter(|&r| r != self.cfg.id)
            .collect();
        for r in others {
            self.send(
                r,
                Message::ReapCommit(wire::ReapCommit {
                    key: m.key.clone(),
                    digest: m.digest,
                }),
            );
        }
        self.reap(&m.key);
    }

    pub(super) fn handle_reap_commit(&mut self, _from: NodeId, m: wire::ReapCommit) {
        if self.store.digest(&m.key) == Some(m.digest) && !self.holds_hint_for(&m.key) {
            self.reap(&m.key);
        }
    }

    fn reap(&mut self, key: &Bytes) {
        self.put_local(key, None);
        self.metrics.tombstones_reaped += 1;
        self.emit(Event::TombstoneReaped { key: key.clone() });
    }
}
