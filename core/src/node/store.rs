//! The node's in-memory view of its storage: every key's state, the Merkle
//! tree of every partition, and the bookkeeping the reaper needs.
//!
//! Storage proper is outside the core: every change here is mirrored by a
//! `Write` output, and durability is tracked by [`super::durability`].

use alloc::collections::{btree_map, BTreeMap};
use alloc::vec::Vec;
use bytes::Bytes;

use crate::dvv::KeyState;
use crate::merkle::MerkleTree;
use crate::ring::Ring;
use crate::types::Time;

pub(crate) struct Entry {
    pub state: KeyState,
    pub digest: u64,
    pub partition: u16,
}

pub(crate) struct Store {
    pub keys: BTreeMap<Bytes, Entry>,
    pub trees: Vec<MerkleTree>,
    /// When each tombstone-only key was first seen in that state.
    pub tombstones: BTreeMap<Bytes, Time>,
}

impl Store {
    pub fn new(partitions: u16) -> Store {
        Store {
            keys: BTreeMap::new(),
            trees: (0..partitions).map(|_| MerkleTree::default()).collect(),
            tombstones: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyState> {
        self.keys.get(key).map(|e| &e.state)
    }

    pub fn digest(&self, key: &[u8]) -> Option<u64> {
        self.keys.get(key).map(|e| e.digest)
    }

    /// A key's digest; an absent key's is the empty state's.
    pub fn digest_or_empty(&self, key: &[u8]) -> u64 {
        self.digest(key).unwrap_or_else(|| KeyState::new().digest())
    }

    /// A key's state (the empty one when absent) and its digest.
    pub fn state_and_digest(&self, key: &[u8]) -> (KeyState, u64) {
        match self.keys.get(key) {
            Some(e) => (e.state.clone(), e.digest),
            None => (KeyState::new(), self.digest_or_empty(key)),
        }
    }

    /// Replaces (or with `None`, removes) a key's state, keeping the Merkle
    /// tree and tombstone bookkeeping in step. One search of the key map.
    pub fn set(&mut self, ring: &Ring, key: &Bytes, state: Option<KeyState>, now: Time) {
        let partition = ring.partition_of(key);
        match state {
            Some(state) if !state.is_empty() => {
                let digest = state.digest();
                let tombstone_only = state.is_tombstone_only();
                let entry = Entry {
                    state,
                    digest,
                    partition,
                };
                let old = match self.keys.entry(key.clone()) {
                    btree_map::Entry::Occupied(mut o) => {
                        Some(core::mem::replace(o.get_mut(), entry).digest)
                    }
                    btree_map::Entry::Vacant(v) => {
                        v.insert(entry);
                        None
                    }
                };
                self.trees[partition as usize].update(key, old, Some(digest));
                self.note_tombstone(key, tombstone_only, now);
            }
            _ => {
                let old = self.keys.remove(key).map(|e| e.digest);
                self.trees[partition as usize].update(key, old, None);
                self.note_tombstone(key, false, now);
            }
        }
    }

    /// Tombstone-only states age from their last change (a newer tombstone
    /// restarts the grace period); other keys are not tracked.
    fn note_tombstone(&mut self, key: &Bytes, tombstone_only: bool, now: Time) {
        if tombstone_only {
            self.tombstones.insert(key.clone(), now);
        } else if !self.tombstones.is_empty() {
            self.tombstones.remove(key);
        }
    }

    /// Merges `incoming` into a key's state in place (no copy of the stored
    /// state); returns true when the state changed. A merge that leaves no
    /// sibling (only possible from malformed histories) removes the key.
    pub fn merge(&mut self, ring: &Ring, key: &Bytes, incoming: &KeyState, now: Time) -> bool {
        let Some(entry) = self.keys.get_mut(key) else {
            let mut state = KeyState::new();
            if !state.merge(incoming) || state.is_empty() {
                return false;
            }
            self.set(ring, key, Some(state), now);
            return true;
        };
        if !entry.state.merge(incoming) {
            return false;
        }
        if entry.state.is_empty() {
            self.set(ring, key, None, now);
            return true;
        }
        let digest = entry.state.digest();
        let partition = entry.partition;
        let tombstone_only = entry.state.is_tombstone_only();
        self.trees[partition as usize].update(key, Some(entry.digest), Some(digest));
        entry.digest = digest;
        self.note_tombstone(key, tombstone_only, now);
        true
    }

    /// Keys of a partition in the given Merkle buckets, with their digests.
    pub fn keys_in_buckets(
        &self,
        partition: u16,
        buckets: &[u16],
        limit: usize,
    ) -> Vec<(Bytes, u64)> {
        self.keys
            .iter()
            .filter(|(k, e)| {
                e.partition == partition && buckets.contains(&crate::merkle::bucket_of(k))
            })
            .take(limit)
            .map(|(k, e)| (k.clone(), e.digest))
            .collect()
    }
}
