//! The consistent-hashing ring.
//!
//! The key space is cut into a fixed number of equal partitions; each member
//! places `vnodes` tokens on the ring. A partition's preference list is the
//! first N distinct members met walking clockwise from the partition's start.
//! Partitions are the unit of anti-entropy: every replica of a partition holds
//! the same key range, so their Merkle trees are comparable.

use alloc::vec::Vec;

use crate::types::NodeId;

/// Hashes a user key onto the ring.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, 0x6361_6972_6e00_0001)
}

#[derive(Clone, Debug)]
pub struct Ring {
    partitions: u16,
    n: u8,
    /// Preference list of each partition, primaries first.
    prefs: Vec<Vec<NodeId>>,
}

impl Ring {
    /// Builds the ring for a static member list. Deterministic: every node
    /// computes the same ring from the same list, in any order.
    pub fn new(members: &[NodeId], partitions: u16, vnodes: u16, n: u8) -> Ring {
        assert!(partitions > 0 && vnodes > 0);
        let mut tokens: Vec<(u64, NodeId)> = Vec::with_capacity(members.len() * vnodes as usize);
        for &m in members {
            for v in 0..vnodes {
                let mut buf = [0u8; 6];
                buf[..4].copy_from_slice(&m.0.to_le_bytes());
                buf[4..].copy_from_slice(&v.to_le_bytes());
                tokens.push((
                    xxhash_rust::xxh3::xxh3_64_with_seed(&buf, 0x0074_6f6b_656e),
                    m,
                ));
            }
        }
        tokens.sort();
        let mut distinct = members.to_vec();
        distinct.sort();
        distinct.dedup();
        let want = (n as usize).min(distinct.len());
        let width = partition_width(partitions);
        let mut prefs = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let start = (p as u64) * width;
            let first = tokens.partition_point(|&(t, _)| t < start);
            let mut list: Vec<NodeId> = Vec::with_capacity(want);
            let mut i = first;
            let mut steps = 0;
            while list.len() < want && steps < tokens.len() {
                let node = tokens[i % tokens.len()].1;
                if !list.contains(&node) {
                    list.push(node);
                }
                i += 1;
                steps += 1;
            }
            prefs.push(list);
        }
        Ring {
            partitions,
            n,
            prefs,
        }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    pub fn n(&self) -> u8 {
        self.n
    }

    pub fn partition_of(&self, key: &[u8]) -> u16 {
        let width = partition_width(self.partitions);
        (key_hash(key) / width).min(self.partitions as u64 - 1) as u16
    }

    /// The replicas of a partition, primaries in preference order.
    pub fn preference(&self, partition: u16) -> &[NodeId] {
        &self.prefs[partition as usize]
    }

    pub fn replicas_of(&self, key: &[u8]) -> &[NodeId] {
        self.preference(self.partition_of(key))
    }

    pub fn is_replica(&self, node: NodeId, partition: u16) -> bool {
        self.preference(partition).contains(&node)
    }

    /// The partitions a node replicates.
    pub fn partitions_of(&self, node: NodeId) -> impl Iterator<Item = u16> + '_ {
        (0..self.partitions).filter(move |&p| self.is_replica(node, p))
    }
}

/// The width of each partition's range of the hash space (the last one
/// ends early). One partition holds every hash: its width, 2^64, does not
/// fit a u64, and `u64::MAX` places the same keys.
fn partition_width(partitions: u16) -> u64 {
    (u64::MAX / partitions as u64).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(k: u32) -> Vec<NodeId> {
        (1..=k).map(NodeId).collect()
    }

    #[test]
    fn preference_lists_have_n_distinct_members() {
        let ring = Ring::new(&members(5), 64, 16, 3);
        for p in 0..64 {
            let pref = ring.preference(p);
            assert_eq!(pref.len(), 3);
            let mut d = pref.to_vec();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
    }

    #[test]
    fn ring_is_order_independent_and_balanced() {
        let a = Ring::new(&members(5), 64, 16, 3);
        let mut rev = members(5);
        rev.reverse();
        let b = Ring::new(&rev, 64, 16, 3);
        for p in 0..64 {
            assert_eq!(a.preference(p), b.preference(p));
        }
        for m in members(5) {
            let owned = a.partitions_of(m).count();
            assert!(owned > 64 * 3 / 5 / 3, "{m} owns only {owned}");
        }
    }

    #[test]
    fn keys_map_to_valid_partitions() {
        let ring = Ring::new(&members(3), 7, 4, 3);
        for i in 0..1000u32 {
            assert!(ring.partition_of(&i.to_le_bytes()) < 7);
        }
        assert!(ring.partition_of(&[]) < 7);
    }
}
