//! Dotted version vectors: the causality of one key.
//!
//! Every stored value (sibling) carries the dot that created it. A key's state
//! is its set of siblings plus a causal context: the version vector of every dot
//! this state has seen. A write with a client context removes exactly the
//! siblings that context covers; concurrent siblings survive. Merging two
//! states keeps a sibling unless the other side has seen its dot and dropped it.
//!
//! Actors are `(node, epoch)`: a node that lost state restarts under a new epoch
//! and so can never reissue a dot (the Riak kv679 bug class). Counters come from
//! one monotone per-actor sequence shared by all keys, so a reaped key never
//! restarts its counters either.

use alloc::vec::Vec;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::NodeId;
use crate::wire::{bytes_len, varint_len};

/// The issuer of dots: one incarnation of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub node: NodeId,
    pub epoch: u32,
}

/// One event in the causal history of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub actor: Actor,
    pub counter: u64,
}

impl core::fmt::Display for Dot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{}.e{}:{}",
            self.actor.node, self.actor.epoch, self.counter
        )
    }
}

/// A version vector: for each actor, the highest counter seen. Sorted by actor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector {
    entries: Vec<(Actor, u64)>,
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a vector from arbitrary entries (duplicates keep the maximum).
    pub fn from_entries(entries: impl IntoIterator<Item = (Actor, u64)>) -> Self {
        let mut vv = VersionVector::new();
        for (a, c) in entries {
            vv.observe(Dot {
                actor: a,
                counter: c,
            });
        }
        vv
    }

    pub fn entries(&self) -> &[(Actor, u64)] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, actor: Actor) -> u64 {
        match self.entries.binary_search_by(|(a, _)| a.cmp(&actor)) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// True when this vector has seen `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.actor)
    }

    /// Records that `dot` (and so every earlier dot of its actor) has been seen.
    pub fn observe(&mut self, dot: Dot) {
        match self.entries.binary_search_by(|(a, _)| a.cmp(&dot.actor)) {
            Ok(i) => {
                let c = &mut self.entries[i].1;
                if *c < dot.counter {
                    *c = dot.counter;
                }
            }
            Err(i) => self.entries.insert(i, (dot.actor, dot.counter)),
        }
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        if other.entries.is_empty() {
            return;
        }
        if self.entries.is_empty() {
            self.entries.clone_from(&other.entries);
            return;
        }
        let mut out = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.entries, &other.entries);
        while i < a.len() && j < b.len() {
            match a[i].0.cmp(&b[j].0) {
                core::cmp::Ordering::Less => {
                    out.push(a[i]);
                    i += 1;
                }
                core::cmp::Ordering::Greater => {
                    out.push(b[j]);
                    j += 1;
                }
                core::cmp::Ordering::Equal => {
                    out.push((a[i].0, a[i].1.max(b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        self.entries = out;
    }

    /// True when every entry of `other` is covered by `self`.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|&(a, c)| self.get(a) >= c)
    }

    /// Checks the invariants of the representation (sorted, no zero counters).
    pub fn is_well_formed(&self) -> bool {
        self.entries.windows(2).all(|w| w[0].0 < w[1].0) && self.entries.iter().all(|e| e.1 > 0)
    }
}

impl Actor {
    #[inline]
    fn encoded_len(&self) -> usize {
        varint_len(self.node.0 as u64) + varint_len(self.epoch as u64)
    }
}

impl VersionVector {
    /// Bytes of this vector's postcard encoding, computed without encoding
    /// (the encoders size their buffers with it).
    pub fn encoded_len(&self) -> usize {
        varint_len(self.entries.len() as u64)
            + self
                .entries
                .iter()
                .map(|(a, c)| a.encoded_len() + varint_len(*c))
                .sum::<usize>()
    }
}

/// One stored version of a key. `value == None` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sibling {
    pub dot: Dot,
    pub value: Option<Bytes>,
}

impl Sibling {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// The replicated state of one key: concurrent siblings and the causal context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyState {
    /// Sorted by dot, dots unique.
    siblings: Vec<Sibling>,
    context: VersionVector,
}

impl KeyState {
    /// Bytes of this state's postcard encoding, computed without encoding
    /// (the wire and storage encoders size their buffers with it).
    pub fn encoded_len(&self) -> usize {
        let siblings: usize = self
            .siblings
            .iter()
            .map(|s| {
                s.dot.actor.encoded_len()
                    + varint_len(s.dot.counter)
                    + 1
                    + s.value.as_ref().map_or(0, |v| bytes_len(v.len()))
            })
            .sum();
        varint_len(self.siblings.len() as u64) + siblings + self.context.encoded_len()
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// Every sibling is a tombstone (and there is at least one).
    pub fn is_tombstone_only(&self) -> bool {
        !self.siblings.is_empty() && self.siblings.iter().all(Sibling::is_tombstone)
    }

    /// Live (non-tombstone) values.
    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.siblings.iter().filter_map(|s| s.value.as_ref())
    }

    /// Applies a client write: removes exactly the siblings `seen` covers, adds a
    /// new sibling under `dot`, and folds `seen` and `dot` into the context.
    pub fn apply_write(&mut self, seen: &VersionVector, dot: Dot, value: Option<Bytes>) {
        self.siblings
            .retain(|s| !seen.covers(s.dot) && s.dot != dot);
        self.context.merge(seen);
        self.context.observe(dot);
        let at = self
            .siblings
            .binary_search_by(|s| s.dot.cmp(&dot))
            .unwrap_or_else(|i| i);
        self.siblings.insert(at, Sibling { dot, value });
    }

    /// [`KeyState::merge`] of a state this one may take as is when it is
    /// still empty (no copy).
    pub fn merge_owned(&mut self, other: KeyState) -> bool {
        if self.is_blank() {
            let changed = !other.is_blank();
            *self = other;
            return changed;
        }
        self.merge(&other)
    }

    /// No sibling and an empty context: what a key never written holds.
    fn is_blank(&self) -> bool {
        self.siblings.is_empty() && self.context.is_empty()
    }

    /// Merges another replica's state into this one. Returns true when this
    /// state changed.
    pub fn merge(&mut self, other: &KeyState) -> bool {
        if self.is_blank() {
            // Nothing here yet (a key new to this replica): the merge is `other`.
            if other.is_blank() {
                return false;
            }
            self.clone_from(other);
            return true;
        }
        if other == self {
            return false;
        }
        let mut out: Vec<Sibling> = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        let (a, b) = (&self.siblings, &other.siblings);
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let ord = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.dot.cmp(&y.dot),
                (Some(_), None) => core::cmp::Ordering::Less,
                (None, _) => core::cmp::Ordering::Greater,
            };
            match ord {
                core::cmp::Ordering::Equal => {
                    out.push(a[i].clone());
                    i += 1;
                    j += 1;
                }
                core::cmp::Ordering::Less => {
                    if !other.context.covers(a[i].dot) {
                        out.push(a[i].clone());
                    }
                    i += 1;
                }
                core::cmp::Ordering::Greater => {
                    if !self.context.covers(b[j].dot) {
                        out.push(b[j].clone());
                    }
                    j += 1;
                }
            }
        }
        let context_grows = !self.context.dominates(&other.context);
        if context_grows {
            self.context.merge(&other.context);
        }
        let changed = context_grows || out != self.siblings;
        self.siblings = out;
        changed
    }

    /// Replaces this state with `other` outright, discarding concurrent
    /// siblings. Only a planted bug does this.
    #[cfg(feature = "planted-bugs")]
    pub fn overwrite_with(&mut self, other: &KeyState) -> bool {
        let changed = self != other;
        *self = other.clone();
        changed
    }

    /// A stable digest of the whole state, for Merkle trees and comparisons.
    pub fn digest(&self) -> u64 {
        let mut h = DigestBuf::new();
        h.put((self.siblings.len() as u64).to_le_bytes());
        for s in &self.siblings {
            h.dot(s.dot);
            match &s.value {
                Some(v) => {
                    h.put([1]);
                    h.put((v.len() as u64).to_le_bytes());
                    h.update(v);
                }
                None => h.put([0]),
            }
        }
        h.put((self.context.entries.len() as u64).to_le_bytes());
        for &(a, c) in &self.context.entries {
            h.dot(Dot {
                actor: a,
                counter: c,
            });
        }
        h.finish()
    }

    /// Checks the representation invariants: siblings sorted with unique dots,
    /// every sibling's dot covered by the context, the context well formed.
    pub fn is_well_formed(&self) -> bool {
        well_formed_parts(self.siblings.iter().map(|s| s.dot), &self.context)
    }

    /// Builds a state from parts, normalising order. Used by decoders; callers
    /// should check [`KeyState::is_well_formed`] on untrusted input.
    pub fn from_parts(mut siblings: Vec<Sibling>, context: VersionVector) -> Self {
        siblings.sort_by_key(|s| s.dot);
        KeyState { siblings, context }
    }
}

/// [`KeyState::is_well_formed`] of a state with siblings of `dots` (in
/// their order) and `context`; decoders that do not build the state check
/// its parts with it.
pub(crate) fn well_formed_parts(
    dots: impl Iterator<Item = Dot> + Clone,
    context: &VersionVector,
) -> bool {
    let mut next = dots.clone().skip(1);
    dots.clone().all(|d| next.next().is_none_or(|n| d < n))
        && dots.clone().all(|d| context.covers(d))
        && context.is_well_formed()
}

/// Feeds XXH3 through a stack buffer: small states (nearly all) hash in one
/// shot, larger ones stream. Both give the same digest for the same bytes.
struct DigestBuf {
    buf: [u8; 512],
    len: usize,
    stream: Option<xxhash_rust::xxh3::Xxh3>,
}

impl DigestBuf {
    fn new() -> Self {
        DigestBuf {
            buf: [0; 512],
            len: 0,
            stream: None,
        }
    }

    #[inline]
    fn update(&mut self, data: &[u8]) {
        if self.len + data.len() <= self.buf.len() {
            self.buf[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
            return;
        }
        self.spill(data);
    }

    /// [`DigestBuf::update`] for a few bytes known at compile time: a fixed
    /// size copy (a register store) instead of a call to `memcpy`.
    #[inline(always)]
    fn put<const N: usize>(&mut self, data: [u8; N]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + N) {
            dst.copy_from_slice(&data);
            self.len += N;
            return;
        }
        self.spill(&data);
    }

    /// Moves the buffer and `data` into the streaming hasher.
    #[inline(never)]
    fn spill(&mut self, data: &[u8]) {
        let stream = self.stream.get_or_insert_with(xxhash_rust::xxh3::Xxh3::new);
        stream.update(&self.buf[..self.len]);
        self.len = 0;
        stream.update(data);
    }

    /// The same 16 bytes as feeding the node, the epoch and the counter one
    /// after the other.
    #[inline(always)]
    fn dot(&mut self, d: Dot) {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&d.actor.node.0.to_le_bytes());
        b[4..8].copy_from_slice(&d.actor.epoch.to_le_bytes());
        b[8..].copy_from_slice(&d.counter.to_le_bytes());
        self.put(b);
    }

    fn finish(self) -> u64 {
        match self.stream {
            None => xxhash_rust::xxh3::xxh3_64(&self.buf[..self.len]),
            Some(mut s) => {
                s.update(&self.buf[..self.len]);
                s.digest()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn actor(n: u32) -> Actor {
        Actor {
            node: NodeId(n),
            epoch: 1,
        }
    }
    fn dot(n: u32, c: u64) -> Dot {
        Dot {
            actor: actor(n),
            counter: c,
        }
    }
    fn val(s: &str) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn write_with_context_supersedes_exactly_what_it_saw() {
        let mut s = KeyState::new();
        s.apply_write(&VersionVector::new(), dot(1, 1), val("a"));
        let seen_a = s.context().clone();
        s.apply_write(&VersionVector::new(), dot(2, 1), val("b"));
        assert_eq!(s.siblings().len(), 2, "blind writes are concurrent");
        s.apply_write(&seen_a, dot(1, 2), val("c"));
        let vals: Vec<_> = s.values().cloned().collect();
        // Siblings are ordered by dot: n1's "c" before n2's "b"; "a" is gone.
        assert_eq!(vals, vec![val("c").unwrap(), val("b").unwrap()]);
        assert!(s.is_well_formed());
    }

    #[test]
    fn merge_keeps_concurrent_and_drops_superseded() {
        let mut a = KeyState::new();
        a.apply_write(&VersionVector::new(), dot(1, 1), val("a"));
        let mut b = a.clone();
        b.apply_write(&a.context().clone(), dot(2, 1), val("b"));
        let mut c = a.clone();
        c.apply_write(&VersionVector::new(), dot(3, 1), val("c"));
        let mut m = c.clone();
        assert!(m.merge(&b));
        let dots: Vec<_> = m.siblings().iter().map(|s| s.dot).collect();
        assert_eq!(dots, vec![dot(2, 1), dot(3, 1)]);
        let mut m2 = b.clone();
        m2.merge(&c);
        assert_eq!(m, m2);
        assert!(!m.merge(&b), "merge is idempotent");
    }

    #[test]
    fn tombstones_are_siblings() {
        let mut s = KeyState::new();
        s.apply_write(&VersionVector::new(), dot(1, 1), val("a"));
        let ctx = s.context().clone();
        s.apply_write(&ctx, dot(1, 2), None);
        assert!(s.is_tombstone_only());
        assert_eq!(s.values().count(), 0);
    }

    #[test]
    fn digest_tracks_content() {
        let mut a = KeyState::new();
        a.apply_write(&VersionVector::new(), dot(1, 1), val("a"));
        let mut b = KeyState::new();
        b.apply_write(&VersionVector::new(), dot(1, 1), val("b"));
        assert_ne!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.clone().digest());
    }

    #[test]
    fn digest_is_the_same_buffered_or_streamed() {
        // States small enough for the stack buffer and larger ones must hash
        // exactly like feeding XXH3 piece by piece.
        for len in [0usize, 10, 400, 600, 5000] {
            let mut s = KeyState::new();
            s.apply_write(
                &VersionVector::new(),
                Dot {
                    actor: actor(1),
                    counter: 1,
                },
                Some(Bytes::from(vec![7u8; len])),
            );
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&1u64.to_le_bytes());
            let d = s.siblings[0].dot;
            h.update(&d.actor.node.0.to_le_bytes());
            h.update(&d.actor.epoch.to_le_bytes());
            h.update(&d.counter.to_le_bytes());
            h.update(&[1]);
            h.update(&(len as u64).to_le_bytes());
            h.update(&vec![7u8; len]);
            h.update(&1u64.to_le_bytes());
            h.update(&d.actor.node.0.to_le_bytes());
            h.update(&d.actor.epoch.to_le_bytes());
            h.update(&d.counter.to_le_bytes());
            assert_eq!(s.digest(), h.digest(), "value of {len} bytes");
        }
    }

    #[test]
    fn digest_of_a_long_context_streams_like_piecewise_feeding() {
        // 40 entries take 640 bytes: the fixed-size writes cross the stack
        // buffer's end.
        let mut s = KeyState::new();
        for n in 1..=40u32 {
            s.context.entries.push((actor(n), u64::from(n) * 3));
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&0u64.to_le_bytes());
        h.update(&40u64.to_le_bytes());
        for &(a, c) in &s.context.entries {
            h.update(&a.node.0.to_le_bytes());
            h.update(&a.epoch.to_le_bytes());
            h.update(&c.to_le_bytes());
        }
        assert_eq!(s.digest(), h.digest());
    }
}
