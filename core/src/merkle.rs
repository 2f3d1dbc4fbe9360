//! Per-partition hash trees for anti-entropy.
//!
//! A partition's tree has a fixed fan-out: keys fall into [`BUCKETS`] leaf
//! buckets by hash; a bucket's hash is the XOR of its keys' digests (so it is
//! updated incrementally on every change, in O(1)); the root hashes the
//! buckets in order. Two replicas compare roots, then buckets, then the keys
//! of the buckets that differ.

use alloc::vec;
use alloc::vec::Vec;

/// Leaf buckets per partition.
pub const BUCKETS: usize = 64;

/// The bucket a key falls into.
pub fn bucket_of(key: &[u8]) -> u16 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(key, 0x6275_636b) % BUCKETS as u64) as u16
}

/// The digest a key contributes to its bucket: binds the key to its state.
pub fn leaf(key: &[u8], state_digest: u64) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, state_digest)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    buckets: Vec<u64>,
    /// Keys in the tree: an empty partition has nothing to offer a peer.
    keys: usize,
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree {
            buckets: vec![0; BUCKETS],
            keys: 0,
        }
    }
}

impl MerkleTree {
    /// Replaces a key's contribution: `old`/`new` are its previous and new
    /// state digests (`None` when absent).
    pub fn update(&mut self, key: &[u8], old: Option<u64>, new: Option<u64>) {
        let b = bucket_of(key) as usize;
        if let Some(o) = old {
            self.buckets[b] ^= leaf(key, o);
        }
        if let Some(n) = new {
            self.buckets[b] ^= leaf(key, n);
        }
        match (old, new) {
            (None, Some(_)) => self.keys += 1,
            (Some(_), None) => self.keys = self.keys.saturating_sub(1),
            _ => {}
        }
    }

    /// Whether no key is in the tree.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    pub fn root(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for b in &self.buckets {
            h.update(&b.to_le_bytes());
        }
        h.digest()
    }

    /// The buckets whose hashes differ from `other` (a peer's bucket list).
    /// A list of the wrong length differs everywhere.
    pub fn differing(&self, other: &[u64]) -> Vec<u16> {
        if other.len() != BUCKETS {
            return (0..BUCKETS as u16).collect();
        }
        (0..BUCKETS)
            .filter(|&i| self.buckets[i] != other[i])
            .map(|i| i as u16)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn incremental_updates_match_rebuild() {
        let mut a = MerkleTree::default();
        a.update(b"k1", None, Some(1));
        a.update(b"k2", None, Some(2));
        a.update(b"k1", Some(1), Some(3));
        let mut b = MerkleTree::default();
        b.update(b"k2", None, Some(2));
        b.update(b"k1", None, Some(3));
        assert_eq!(a.root(), b.root());
        a.update(b"k2", Some(2), None);
        assert_ne!(a.root(), b.root());
        assert_eq!(a.differing(b.buckets()), vec![bucket_of(b"k2")]);
        let empty = MerkleTree::default();
        let mut c = MerkleTree::default();
        c.update(b"x", None, Some(9));
        assert!(!c.is_empty());
        c.update(b"x", Some(9), None);
        assert_eq!(c, empty);
        assert!(c.is_empty() && empty.is_empty());
    }
}
