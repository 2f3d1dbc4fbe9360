//! The truth model: what clients did and what the system owes them.
//!
//! Every put or delete a client sends is a *write* with a run-wide id
//! (increasing in send order). Its causal predecessors are exactly the
//! writes the client saw in the read whose context it passes (tombstones
//! included); happened-before is the transitive closure, kept per key as an
//! ancestor bitset over the key's writes. Coordinators report the dot they
//! create for each write (`Event::WriteIssued`), which maps dots back to
//! writes; put values carry their write id so the mapping can be
//! cross-checked on every read.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_core::{Dot, RequestId, Sibling, Time};

use crate::oracle::Violation;

/// A run-wide write id; 0 is never used.
pub type WriteId = u64;

/// The value of a put: the write id (8 bytes LE), then filler.
pub fn encode_value(write: WriteId, len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len.max(8));
    v.extend_from_slice(&write.to_le_bytes());
    let fill = (write as u8) | 0x80;
    v.resize(len.max(8), fill);
    Bytes::from(v)
}

/// The write id a value claims to come from.
pub fn decode_value(value: &[u8]) -> Option<WriteId> {
    let head: [u8; 8] = value.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

#[derive(Clone, Debug)]
pub struct Write {
    pub id: WriteId,
    pub key: u32,
    /// Index of this write among its key's writes.
    pub local: u32,
    pub tombstone: bool,
    pub request: RequestId,
    pub sent_at: Time,
    pub acked_at: Option<Time>,
    /// Dots coordinators issued for this write (normally one).
    pub dots: Vec<Dot>,
    pub preds: Vec<WriteId>,
}

struct KeyHistory {
    name: Bytes,
    writes: Vec<WriteId>,
    /// Ancestors of each write, as a bitset over local indices.
    ancestors: Vec<Vec<u64>>,
    /// The maximal acknowledged writes: every acknowledged write is <= one.
    frontier: Vec<WriteId>,
    /// Deletes that a coordinator issued a dot for.
    deletes: Vec<WriteId>,
}

#[derive(Default)]
pub struct History {
    keys: Vec<KeyHistory>,
    key_index: BTreeMap<Bytes, u32>,
    writes: Vec<Write>,
    by_request: BTreeMap<RequestId, WriteId>,
    dots: BTreeMap<Dot, WriteId>,
    acked: u64,
}

fn bit(set: &[u64], i: u32) -> bool {
    set.get(i as usize / 64)
        .is_some_and(|w| w & (1u64 << (i % 64)) != 0)
}

fn set_bit(set: &mut Vec<u64>, i: u32) {
    let word = i as usize / 64;
    if set.len() <= word {
        set.resize(word + 1, 0);
    }
    set[word] |= 1u64 << (i % 64);
}

impl History {
    pub fn new(keys: &[Bytes]) -> History {
        let mut h = History::default();
        for (i, k) in keys.iter().enumerate() {
            h.key_index.insert(k.clone(), i as u32);
            h.keys.push(KeyHistory {
                name: k.clone(),
                writes: Vec::new(),
                ancestors: Vec::new(),
                frontier: Vec::new(),
                deletes: Vec::new(),
            });
        }
        h
    }

    pub fn key_count(&self) -> u32 {
        self.keys.len() as u32
    }

    pub fn key_index(&self, key: &[u8]) -> Option<u32> {
        self.key_index.get(key).copied()
    }

    pub fn key_name(&self, key: u32) -> &Bytes {
        &self.keys[key as usize].name
    }

    /// The key for messages: printable keys as text, others as hex.
    pub fn key_label(&self, key: u32) -> String {
        label(self.key_name(key))
    }

    pub fn write(&self, id: WriteId) -> &Write {
        &self.writes[(id - 1) as usize]
    }

    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// The key of the write `dot` was first issued for, if it was.
    pub fn first_issue_key(&self, dot: Dot) -> Option<&Bytes> {
        let id = *self.dots.get(&dot)?;
        Some(&self.keys[self.writes[(id - 1) as usize].key as usize].name)
    }

    pub fn write_of_request(&self, request: RequestId) -> Option<WriteId> {
        self.by_request.get(&request).copied()
    }

    pub fn acked_count(&self) -> u64 {
        self.acked
    }

    /// Records a write as the client sends it.
    pub fn begin_write(
        &mut self,
        key: u32,
        request: RequestId,
        preds: &[WriteId],
        tombstone: bool,
        at: Time,
    ) -> WriteId {
        let id = self.writes.len() as WriteId + 1;
        let kh = &mut self.keys[key as usize];
        let local = kh.writes.len() as u32;
        let mut anc: Vec<u64> = Vec::new();
        let mut sorted: Vec<WriteId> = preds.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for &p in &sorted {
            let pw = &self.writes[(p - 1) as usize];
            assert_eq!(pw.key, key, "a predecessor of a write is on another key");
            let pa = &kh.ancestors[pw.local as usize];
            if anc.len() < pa.len() {
                anc.resize(pa.len(), 0);
            }
            for (a, b) in anc.iter_mut().zip(pa) {
                *a |= *b;
            }
            set_bit(&mut anc, pw.local);
        }
        kh.writes.push(id);
        kh.ancestors.push(anc);
        self.by_request.insert(request, id);
        self.writes.push(Write {
            id,
            key,
            local,
            tombstone,
            request,
            sent_at: at,
            acked_at: None,
            dots: Vec::new(),
            preds: sorted,
        });
        id
    }

    /// A coordinator created `dot` for client request `request` on `key`.
    /// Oracle "dot-unique": a dot is never issued twice for different writes.
    ///
    /// `forgotten` says that no copy of the dot's first issue survives
    /// anywhere (see [`History::first_issue_key`]).
    pub fn write_issued(
        &mut self,
        request: RequestId,
        key: &[u8],
        dot: Dot,
        tombstone: bool,
        node: u32,
        forgotten: bool,
    ) -> Result<WriteId, Violation> {
        let Some(id) = self.write_of_request(request) else {
            return Err(Violation::new(
                "dot-unique",
                format!(
                    "n{node} issued dot {dot} on key {} for request {} which is not a client write",
                    label(key),
                    request.0
                ),
            ));
        };
        let w = &self.writes[(id - 1) as usize];
        if self.keys[w.key as usize].name != key || w.tombstone != tombstone {
            return Err(Violation::new(
                "dot-unique",
                format!(
                    "n{node} issued dot {dot} for write {id} (request {}) on key {} (tombstone {tombstone}), but the client wrote key {} (tombstone {})",
                    request.0,
                    label(key),
                    label(&self.keys[w.key as usize].name),
                    w.tombstone
                ),
            ));
        }
        if let Some(&prev) = self.dots.get(&dot) {
            if prev != id && forgotten {
                // The first issue left no copy anywhere (its node's disk
                // forgot it before it reached a peer): nothing can confuse
                // the two writes. The dot now names the new one.
                self.writes[(prev - 1) as usize].dots.retain(|d| *d != dot);
                self.dots.remove(&dot);
            } else if prev == id {
                return Ok(id);
            } else {
                let p = &self.writes[(prev - 1) as usize];
                return Err(Violation::new(
                    "dot-unique",
                    format!(
                        "n{node} issued dot {dot} for write {id} on key {}, but it was already issued for write {prev} on key {} (sent at {})",
                        label(key),
                        label(&self.keys[p.key as usize].name),
                        p.sent_at
                    ),
                ));
            }
        }
        self.dots.insert(dot, id);
        let w = &mut self.writes[(id - 1) as usize];
        w.dots.push(dot);
        if tombstone && w.dots.len() == 1 {
            self.keys[w.key as usize].deletes.push(id);
        }
        Ok(id)
    }

    /// The client received `Written` for this write.
    pub fn acked(&mut self, id: WriteId, at: Time) {
        if self.write(id).acked_at.is_some() {
            return;
        }
        self.acked += 1;
        self.writes[(id - 1) as usize].acked_at = Some(at);
        let key = self.write(id).key;
        let frontier = self.keys[key as usize].frontier.clone();
        if frontier.iter().any(|&f| self.leq(id, f)) {
            return;
        }
        let mut next: Vec<WriteId> = frontier.into_iter().filter(|&f| !self.lt(f, id)).collect();
        next.push(id);
        self.keys[key as usize].frontier = next;
    }

    /// The maximal acknowledged writes of a key (a snapshot is taken when a
    /// read is sent: "acknowledged before the read").
    pub fn frontier(&self, key: u32) -> &[WriteId] {
        &self.keys[key as usize].frontier
    }

    /// `a` happened before `b` (strictly).
    pub fn lt(&self, a: WriteId, b: WriteId) -> bool {
        let (wa, wb) = (self.write(a), self.write(b));
        wa.key == wb.key
            && wa.local < wb.local
            && bit(
                &self.keys[wb.key as usize].ancestors[wb.local as usize],
                wa.local,
            )
    }

    pub fn leq(&self, a: WriteId, b: WriteId) -> bool {
        a == b || self.lt(a, b)
    }

    /// A delete that a coordinator issued and that supersedes `w` (so `w`
    /// may legitimately be gone once the tombstone is reaped).
    pub fn deleted_by(&self, w: WriteId) -> Option<WriteId> {
        let key = self.write(w).key;
        self.keys[key as usize]
            .deletes
            .iter()
            .copied()
            .find(|&d| self.leq(w, d))
    }

    /// Maps the siblings of a read (or a stored state) back to writes,
    /// checking that each dot was issued for a write of this key and that a
    /// value carries the id of the write its dot was issued for.
    pub fn resolve(
        &self,
        key: u32,
        siblings: &[Sibling],
        what: &(impl std::fmt::Display + ?Sized),
    ) -> Result<Vec<WriteId>, Violation> {
        let mut out = Vec::with_capacity(siblings.len());
        for s in siblings {
            let Some(&id) = self.dots.get(&s.dot) else {
                return Err(Violation::new(
                    "dot-mapping",
                    format!(
                        "{what} on key {} returned a sibling with dot {} that no coordinator issued for a client write",
                        self.key_label(key),
                        s.dot
                    ),
                ));
            };
            let w = self.write(id);
            if w.key != key {
                return Err(Violation::new(
                    "dot-mapping",
                    format!(
                        "{what} on key {} returned dot {} of write {id}, which wrote key {}",
                        self.key_label(key),
                        s.dot,
                        self.key_label(w.key)
                    ),
                ));
            }
            match &s.value {
                None if !w.tombstone => {
                    return Err(Violation::new(
                        "dot-mapping",
                        format!(
                            "{what} on key {} returned a tombstone under dot {} of write {id}, which was a put",
                            self.key_label(key),
                            s.dot
                        ),
                    ))
                }
                Some(v) if w.tombstone || decode_value(v) != Some(id) => {
                    return Err(Violation::new(
                        "dot-mapping",
                        format!(
                            "{what} on key {} returned value of write {:?} under dot {} issued for write {id} ({})",
                            self.key_label(key),
                            decode_value(v),
                            s.dot,
                            if w.tombstone { "a delete" } else { "a put" }
                        ),
                    ))
                }
                _ => {}
            }
            out.push(id);
        }
        Ok(out)
    }
}

/// Printable form of a key.
pub fn label(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(key).into_owned()
    } else {
        key.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{Actor, NodeId};

    fn dot(n: u32, c: u64) -> Dot {
        Dot {
            actor: Actor {
                node: NodeId(n),
                epoch: 1,
            },
            counter: c,
        }
    }

    #[test]
    fn values_carry_write_ids() {
        let v = encode_value(0x0102_0304, 20);
        assert_eq!(v.len(), 20);
        assert_eq!(decode_value(&v), Some(0x0102_0304));
        assert_eq!(decode_value(b"short"), None);
    }

    #[test]
    fn happened_before_is_transitive_and_per_key() {
        let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        let mut h = History::new(&keys);
        let w1 = h.begin_write(0, RequestId(1), &[], false, Time(1));
        let w2 = h.begin_write(0, RequestId(2), &[w1], false, Time(2));
        let w3 = h.begin_write(0, RequestId(3), &[w2], false, Time(3));
        let w4 = h.begin_write(0, RequestId(4), &[], false, Time(4));
        let x = h.begin_write(1, RequestId(5), &[], false, Time(5));
        assert!(h.lt(w1, w3) && h.lt(w2, w3) && !h.lt(w3, w1));
        assert!(!h.lt(w1, w4) && !h.lt(w4, w3));
        assert!(!h.lt(w1, x) && h.leq(x, x));
    }

    #[test]
    fn frontier_keeps_the_maximal_acked_writes() {
        let mut h = History::new(&[Bytes::from_static(b"a")]);
        let w1 = h.begin_write(0, RequestId(1), &[], false, Time(1));
        let w2 = h.begin_write(0, RequestId(2), &[w1], false, Time(2));
        let w3 = h.begin_write(0, RequestId(3), &[], false, Time(3));
        h.acked(w2, Time(5));
        h.acked(w1, Time(6));
        assert_eq!(h.frontier(0), &[w2]);
        h.acked(w3, Time(7));
        assert_eq!(h.frontier(0), &[w2, w3]);
    }

    #[test]
    fn dots_must_be_unique_and_match_values() {
        let mut h = History::new(&[Bytes::from_static(b"a")]);
        let w1 = h.begin_write(0, RequestId(10), &[], false, Time(1));
        let w2 = h.begin_write(0, RequestId(11), &[], true, Time(2));
        assert_eq!(
            h.write_issued(RequestId(10), b"a", dot(1, 1), false, 1, false),
            Ok(w1)
        );
        // The same dot again for the same write is a retry, not a reuse.
        assert_eq!(
            h.write_issued(RequestId(10), b"a", dot(1, 1), false, 1, false),
            Ok(w1)
        );
        let e = h
            .write_issued(RequestId(11), b"a", dot(1, 1), true, 1, false)
            .unwrap_err();
        assert_eq!(e.oracle, "dot-unique");
        assert!(e.message.contains("write 1"), "{}", e.message);
        assert!(h
            .write_issued(RequestId(99), b"a", dot(1, 9), false, 1, false)
            .is_err());
        h.write_issued(RequestId(11), b"a", dot(2, 1), true, 2, false)
            .unwrap();
        assert_eq!(h.deleted_by(w2), Some(w2));
        let good = [
            Sibling {
                dot: dot(1, 1),
                value: Some(encode_value(w1, 8)),
            },
            Sibling {
                dot: dot(2, 1),
                value: None,
            },
        ];
        assert_eq!(h.resolve(0, &good, "read").unwrap(), vec![w1, w2]);
        let wrong_value = [Sibling {
            dot: dot(1, 1),
            value: Some(encode_value(w2, 8)),
        }];
        assert_eq!(
            h.resolve(0, &wrong_value, "read").unwrap_err().oracle,
            "dot-mapping"
        );
        let phantom = [Sibling {
            dot: dot(3, 3),
            value: None,
        }];
        assert!(h.resolve(0, &phantom, "read").is_err());
    }
}
