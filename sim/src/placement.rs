//! A reference model of where keys live, written from the ring's
//! specification rather than taken from core: the key space (xxh3 of the
//! key, seeded) is cut into `partitions` equal ranges; each member places
//! `vnodes` tokens (xxh3 of its id and token index); a partition's replicas
//! are the first N distinct members met walking clockwise from the start of
//! its range.
//!
//! Placement is part of the contract between releases: two releases that
//! place a key differently cannot share a cluster. Oracle `placement` checks
//! at the start of every run that core's ring puts every workload key, and
//! every partition, where this model does.

use cairn_core::ring::Ring;
use cairn_core::NodeId;

use crate::oracle::Violation;

const KEY_SEED: u64 = 0x6361_6972_6e00_0001;
const TOKEN_SEED: u64 = 0x0074_6f6b_656e;

/// The reference ring: the replicas of each partition.
pub struct Placement {
    partitions: u64,
    prefs: Vec<Vec<NodeId>>,
}

impl Placement {
    pub fn new(members: &[NodeId], partitions: u16, vnodes: u16, n: u8) -> Placement {
        let mut tokens = Vec::new();
        for m in members {
            for v in 0..vnodes {
                let mut id = m.0.to_le_bytes().to_vec();
                id.extend_from_slice(&v.to_le_bytes());
                tokens.push((xxhash_rust::xxh3::xxh3_64_with_seed(&id, TOKEN_SEED), *m));
            }
        }
        tokens.sort();
        let mut distinct = members.to_vec();
        distinct.sort();
        distinct.dedup();
        let want = distinct.len().min(n as usize);
        let prefs = (0..partitions as u64)
            .map(|p| {
                let start = range_start(p, partitions as u64);
                let first = tokens.iter().position(|&(t, _)| t >= start).unwrap_or(0);
                let mut list = Vec::new();
                for k in 0..tokens.len() {
                    if list.len() == want {
                        break;
                    }
                    let node = tokens[(first + k) % tokens.len()].1;
                    if !list.contains(&node) {
                        list.push(node);
                    }
                }
                list
            })
            .collect();
        Placement {
            partitions: partitions as u64,
            prefs,
        }
    }

    /// The partition whose range holds the key's hash: ranges are
    /// `ceil(2^64 / partitions)` wide, so the last one ends early.
    pub fn partition_of(&self, key: &[u8]) -> u16 {
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, KEY_SEED);
        (h as u128 / width(self.partitions)).min(self.partitions as u128 - 1) as u16
    }

    pub fn replicas_of(&self, key: &[u8]) -> &[NodeId] {
        &self.prefs[self.partition_of(key) as usize]
    }

    /// Core's ring against this model, for `keys` and every partition.
    pub fn check(&self, ring: &Ring, keys: &[bytes::Bytes]) -> Result<(), Violation> {
        let bad = |what: String| Err(Violation::new("placement", what));
        if ring.partitions() as u64 != self.partitions {
            return bad(format!(
                "the ring has {} partitions, not {}",
                ring.partitions(),
                self.partitions
            ));
        }
        for key in keys {
            let (p, want) = (self.partition_of(key), self.replicas_of(key));
            if ring.partition_of(key) != p || ring.replicas_of(key) != want {
                return bad(format!(
                    "key {:?} is placed in partition {} on {:?}, not partition {p} on {want:?}",
                    String::from_utf8_lossy(key),
                    ring.partition_of(key),
                    ring.replicas_of(key)
                ));
            }
        }
        for (p, want) in self.prefs.iter().enumerate() {
            if ring.preference(p as u16) != want.as_slice() {
                return bad(format!(
                    "partition {p} is replicated on {:?}, not {want:?}",
                    ring.preference(p as u16)
                ));
            }
            for node in want {
                if !ring.partitions_of(*node).any(|q| q as usize == p) {
                    return bad(format!("{node} does not list partition {p} as its own"));
                }
            }
        }
        Ok(())
    }
}

/// The width of each partition's range of the u64 hash space.
fn width(partitions: u64) -> u128 {
    (1u128 << 64).div_ceil(partitions as u128)
}

/// Where partition `p` starts.
fn range_start(p: u64, partitions: u64) -> u64 {
    (p as u128 * width(partitions)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_agrees_with_core_on_many_shapes() {
        for (nodes, partitions, vnodes, n) in
            [(3, 64, 16, 3), (5, 16, 4, 3), (1, 1, 1, 1), (7, 100, 3, 2)]
        {
            let members: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
            let ring = Ring::new(&members, partitions, vnodes, n);
            let model = Placement::new(&members, partitions, vnodes, n);
            let keys: Vec<bytes::Bytes> = (0..500)
                .map(|i| bytes::Bytes::from(format!("key-{i}")))
                .collect();
            model.check(&ring, &keys).unwrap();
        }
    }

    #[test]
    fn a_ring_that_places_differently_is_reported() {
        let members: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let model = Placement::new(&members, 64, 16, 3);
        let other = Ring::new(&members, 64, 8, 3);
        let keys: Vec<bytes::Bytes> = (0..50)
            .map(|i| bytes::Bytes::from(format!("k{i}")))
            .collect();
        assert_eq!(model.check(&other, &keys).unwrap_err().oracle, "placement");
    }
}
