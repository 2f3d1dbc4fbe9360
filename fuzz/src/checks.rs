//! Checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the
//! ordinary test `core/tests/fuzz_corpus.rs`, which feeds every seed under
//! `fuzz/seeds/<target>/` through the same function on stable Rust.
//!
//! Each `check_*` function accepts arbitrary bytes. It panics only when
//! cairn-core breaks one of its contracts: a decoder that panics, accepts
//! something it must refuse, or returns a value that does not re-encode to
//! itself; or a causality law of the dotted version vectors that fails against
//! a reference model of the true causal history. Input that the code under
//! test rejects cleanly is fine.
//!
//! This file is compiled both as a module of the `cairn-fuzz` crate and, via
//! `#[path]`, as a module of cairn-core's integration tests, so it may only
//! name `cairn_core`, `bytes` and `crc32c`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use cairn_core::api::{decode_context, encode_context};
use cairn_core::dvv::{Actor, Dot, KeyState, Sibling, VersionVector};
use cairn_core::storage::{self, Record};
use cairn_core::version::{ProtocolRange, RELEASES};
use cairn_core::wire::{self, Decoded, MESSAGE_TYPES};
use cairn_core::NodeId;

/// Body limit used when decoding envelopes.
pub const MAX_BODY: usize = 1 << 20;

/// A message type code no release uses.
pub const UNKNOWN_TYPE: u16 = 999;

// ---------------------------------------------------------------------------
// Wire envelopes
// ---------------------------------------------------------------------------

/// Every protocol range of the release table, plus their union (a release
/// that would speak everything) and a range no release speaks.
pub fn protocol_ranges() -> Vec<ProtocolRange> {
    let mut out: Vec<ProtocolRange> = RELEASES.iter().map(|r| r.protocols).collect();
    let lo = out.iter().map(|r| r.min).min().unwrap_or(1);
    let hi = out.iter().map(|r| r.max).max().unwrap_or(1);
    out.push(ProtocolRange::new(lo, hi));
    out.push(ProtocolRange::new(hi + 1, hi + 1));
    out
}

/// The lowest protocol that carries message type `t`, if any release knows it.
pub fn min_protocol_of(t: u16) -> Option<u16> {
    MESSAGE_TYPES
        .iter()
        .find(|&&(code, _, _)| code == t)
        .map(|&(_, _, min)| min)
}

/// Decodes `bytes` as received by a node that speaks `speaks` and checks that
/// whatever comes back is consistent with the envelope and re-encodes.
pub fn check_envelope(bytes: &[u8], speaks: ProtocolRange) {
    let decoded = match wire::decode(bytes, speaks, MAX_BODY) {
        Err(_) => return,
        Ok(d) => d,
    };
    let (header, _) = wire::open(bytes, MAX_BODY).expect("a decoded envelope opens");
    match decoded {
        Decoded::Unknown { protocol, msg_type } => {
            // A type is unknown to a release when no protocol it speaks
            // carries it.
            assert!(
                match min_protocol_of(msg_type) {
                    None => true,
                    Some(min) => min > speaks.max,
                },
                "type {msg_type}, known at {speaks}, decoded as unknown"
            );
            assert_eq!((protocol, msg_type), (header.protocol, header.msg_type));
            assert!(
                speaks.contains(protocol),
                "unknown type {msg_type} accepted at protocol {protocol} outside {speaks}"
            );
        }
        Decoded::Known { protocol, message } => {
            assert_eq!(protocol, header.protocol);
            assert_eq!(message.msg_type(), header.msg_type);
            if !wire::is_handshake_type(header.msg_type) {
                assert!(
                    speaks.contains(protocol),
                    "{} accepted at protocol {protocol} outside {speaks}",
                    message.name()
                );
                assert!(
                    protocol >= message.min_protocol(),
                    "{} accepted at protocol {protocol}, below its minimum {}",
                    message.name(),
                    message.min_protocol()
                );
            }
            let again = wire::encode(protocol, &message);
            assert_eq!(
                wire::decode(&again, speaks, MAX_BODY),
                Ok(Decoded::Known { protocol, message }),
                "a decoded message does not survive re-encoding"
            );
        }
    }
}

/// Fuzz target `wire_decode`.
///
/// The input is decoded as a whole envelope at every protocol range of the
/// release table. It is also sealed, as a body, into a valid envelope of every
/// known type (and an unknown one), so the body decoders are reached without
/// the fuzzer having to forge a checksum.
pub fn check_wire_decode(data: &[u8]) {
    let ranges = protocol_ranges();
    for &range in &ranges {
        check_envelope(data, range);
    }
    // A limit below the body length must refuse the envelope.
    if let Ok((h, _)) = wire::open(data, MAX_BODY) {
        if h.len > 0 {
            let limit = h.len as usize - 1;
            for &range in &ranges {
                assert!(
                    wire::decode(data, range, limit).is_err(),
                    "body limit ignored"
                );
            }
        }
    }
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let range = ranges[selector as usize % ranges.len()];
    // Any protocol a sender might put on the envelope, in range or not.
    let protocol = match selector >> 6 {
        0 => range.min,
        1 => range.max,
        2 => range.max.saturating_add(1),
        _ => range.min.saturating_sub(1),
    };
    for &(code, _, _) in MESSAGE_TYPES {
        check_envelope(&wire::seal(protocol, code, body), range);
    }
    check_envelope(&wire::seal(protocol, UNKNOWN_TYPE, body), range);
}

// ---------------------------------------------------------------------------
// Storage records
// ---------------------------------------------------------------------------

/// Frames `rest` as a stored value of `schema` with a correct checksum. For
/// schema 1, `rest` is the postcard body; for later schemas it is a codec byte
/// followed by the payload.
pub fn seal_value(schema: u16, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + rest.len());
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(rest).to_le_bytes());
    out.extend_from_slice(rest);
    out
}

/// Splits a `storage_decode` input: one byte of key length, the key, then the
/// stored value.
pub fn split_record(data: &[u8]) -> (&[u8], &[u8]) {
    match data.split_first() {
        None => (&[], &[]),
        Some((&n, rest)) => rest.split_at((n as usize).min(rest.len())),
    }
}

/// Joins a record key and value into a `storage_decode` input.
pub fn join_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    assert!(key.len() <= 255, "record key too long for a seed");
    let mut out = Vec::with_capacity(1 + key.len() + value.len());
    out.push(key.len() as u8);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

/// Decodes one record and checks what comes back.
pub fn check_record(key: &[u8], value: &[u8]) {
    match storage::decode_record(key, value) {
        Err(_) => {}
        Ok(Record::Meta(meta)) => {
            assert_eq!(key, storage::META_KEY);
            let again = storage::encode_meta(&meta);
            assert_eq!(storage::decode_record(key, &again), Ok(Record::Meta(meta)));
        }
        Ok(Record::Progress(progress)) => {
            assert_eq!(key, storage::PROGRESS_KEY);
            let again = storage::encode_progress(&progress);
            assert_eq!(
                storage::decode_record(key, &again),
                Ok(Record::Progress(progress))
            );
        }
        Ok(Record::Restored) => assert_eq!(key, storage::RESTORED_KEY),
        Ok(Record::Data {
            schema,
            key: user,
            state,
        }) => {
            assert_eq!(storage::key_schema(key), Some(schema));
            let partition = match key {
                [_, _, a, b, ..] if schema >= 3 => u16::from_be_bytes([*a, *b]),
                _ => 0,
            };
            assert_eq!(&storage::data_key(schema, partition, &user)[..], key);
            check_stored_state(&state);
        }
        Ok(Record::Hint {
            schema,
            target,
            key: user,
            state,
        }) => {
            assert_eq!(storage::key_schema(key), Some(schema));
            assert_eq!(&storage::hint_key(schema, target, &user)[..], key);
            check_stored_state(&state);
        }
    }
    if let Ok(state) = storage::decode_state(key, value) {
        check_stored_state(&state);
    }
}

/// A decoded state is well formed and round-trips through every schema.
pub fn check_stored_state(state: &KeyState) {
    assert!(
        state.is_well_formed(),
        "storage decoder returned a malformed state: {state:?}"
    );
    for schema in storage::SCHEMAS {
        assert_eq!(
            storage::decode_state(b"check", &storage::encode_state(schema, b"check", state))
                .as_ref(),
            Ok(state),
            "a decoded state does not survive re-encoding in schema {schema}"
        );
    }
}

/// Record keys of every kind, in every schema.
pub fn sample_record_keys() -> Vec<Bytes> {
    let mut keys = vec![
        Bytes::from_static(storage::META_KEY),
        Bytes::from_static(storage::PROGRESS_KEY),
        Bytes::from_static(storage::RESTORED_KEY),
    ];
    for schema in storage::SCHEMAS {
        keys.push(storage::data_key(schema, 7, b"k"));
        keys.push(storage::hint_key(schema, NodeId(7), b"k"));
    }
    keys
}

/// Fuzz target `storage_decode`.
///
/// The input is split into a record key and a stored value (see
/// [`split_record`]) and decoded. The value is also framed with a correct
/// checksum in every schema and codec, so the body decoders (postcard and
/// zstd) are reached, and decoded under a key of every kind.
pub fn check_storage_decode(data: &[u8]) {
    let (key, value) = split_record(data);
    check_record(key, value);
    let mut values = vec![value.to_vec()];
    for schema in storage::SCHEMAS {
        if schema == 1 {
            values.push(seal_value(schema, value));
        } else {
            for codec in [0u8, 1] {
                let mut rest = vec![codec];
                rest.extend_from_slice(value);
                values.push(seal_value(schema, &rest));
            }
        }
    }
    for k in sample_record_keys() {
        for v in &values {
            check_record(&k, v);
        }
    }
    for v in &values[1..] {
        check_record(key, v);
    }
}

// ---------------------------------------------------------------------------
// Client causal contexts
// ---------------------------------------------------------------------------

/// Fuzz target `context_decode`.
pub fn check_context_decode(data: &[u8]) {
    if let Ok(ctx) = decode_context(data) {
        assert!(ctx.is_well_formed(), "accepted a malformed context {ctx:?}");
        let bytes = encode_context(&ctx);
        assert_eq!(decode_context(&bytes).as_ref(), Ok(&ctx));
    }
}

// ---------------------------------------------------------------------------
// Dotted version vectors against a reference model
// ---------------------------------------------------------------------------

/// One step of a generated history of a single key.
///
/// Indices are reduced modulo the number of replicas (or of remembered reads)
/// when the step runs, so every sequence of steps is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Replica `replica` coordinates a client write (a delete when `delete`)
    /// under a fresh dot of its own actor. The client's context is that of
    /// remembered read number `read`, or empty (a blind write) when `None`.
    /// `skip` counter values first go to writes of other keys: the counter is
    /// one sequence per actor, shared by every key.
    Write {
        replica: u8,
        read: Option<u8>,
        delete: bool,
        skip: u8,
    },
    /// A client reads `replica`, merged with `also` when set (a quorum
    /// read); the result is remembered for later writes.
    Read { replica: u8, also: Option<u8> },
    /// `into` merges the state of `from`: replication, read repair, hinted
    /// handoff and anti-entropy all come down to this.
    Merge { into: u8, from: u8 },
    /// `replica` loses its state and comes back empty, or from remembered
    /// read `restore` (a restore from backup), under a new epoch.
    Crash { replica: u8, restore: Option<u8> },
}

/// Writes a model tracks at most; later writes are ignored.
pub const MAX_WRITES: usize = 128;
/// Steps decoded from one fuzz input at most.
pub const MAX_OPS: usize = 256;
/// Reads remembered at most (the oldest is forgotten first).
pub const MAX_READS: usize = 32;
/// Distinct reachable states kept for the merge and digest laws.
pub const MAX_REACHABLE: usize = 64;

/// A set of writes, by index into [`Model::writes`].
pub type WriteSet = u128;

fn bit(id: usize) -> WriteSet {
    1u128 << id
}

fn members(set: WriteSet) -> impl Iterator<Item = usize> {
    (0..MAX_WRITES).filter(move |&i| set & bit(i) != 0)
}

/// A write in the true causal history.
#[derive(Clone, Debug)]
pub struct WriteRec {
    pub dot: Dot,
    pub value: Option<Bytes>,
    /// Its causal past: the history of the read whose context it carried.
    pub seen: WriteSet,
}

/// A replica: its real state and the true history the model says it has.
#[derive(Clone, Debug)]
pub struct Replica {
    pub node: NodeId,
    pub epoch: u32,
    pub state: KeyState,
    pub history: WriteSet,
}

/// A state with the true history behind it (a client read).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub state: KeyState,
    pub history: WriteSet,
}

/// A reference model of one key replicated on a few nodes.
#[derive(Clone, Debug)]
pub struct Model {
    pub writes: Vec<WriteRec>,
    pub replicas: Vec<Replica>,
    pub reads: Vec<Snapshot>,
    /// True once a replica lost state (some writes may then be gone).
    pub lost_state: bool,
    /// Distinct states seen so far (replicas and reads, after every step).
    pub reachable: Vec<KeyState>,
    counters: BTreeMap<Actor, u64>,
}

/// Pointwise maximum of version vectors, computed without
/// [`VersionVector::merge`].
pub fn pointwise_max<'a>(vvs: impl IntoIterator<Item = &'a VersionVector>) -> VersionVector {
    let mut max: BTreeMap<Actor, u64> = BTreeMap::new();
    for vv in vvs {
        for &(a, c) in vv.entries() {
            let e = max.entry(a).or_insert(0);
            *e = (*e).max(c);
        }
    }
    VersionVector::from_entries(max.into_iter().filter(|&(_, c)| c > 0))
}

impl Model {
    pub fn new(replicas: usize) -> Model {
        assert!(replicas > 0);
        Model {
            writes: Vec::new(),
            replicas: (0..replicas)
                .map(|i| Replica {
                    node: NodeId(i as u32 + 1),
                    epoch: 1,
                    state: KeyState::new(),
                    history: 0,
                })
                .collect(),
            reads: Vec::new(),
            lost_state: false,
            reachable: vec![KeyState::new()],
            counters: BTreeMap::new(),
        }
    }

    /// Runs `ops` on a fresh model of `replicas` replicas, checking every
    /// step.
    pub fn run(replicas: usize, ops: &[Op]) -> Model {
        let mut m = Model::new(replicas);
        for &op in ops {
            m.step(op);
        }
        m
    }

    fn replica_index(&self, i: u8) -> usize {
        i as usize % self.replicas.len()
    }

    fn read(&self, i: Option<u8>) -> Snapshot {
        match i {
            Some(i) if !self.reads.is_empty() => self.reads[i as usize % self.reads.len()].clone(),
            _ => Snapshot::default(),
        }
    }

    /// Applies one step and checks the laws that concern it, then the
    /// invariants of the replica it touched.
    pub fn step(&mut self, op: Op) {
        match op {
            Op::Write {
                replica,
                read,
                delete,
                skip,
            } => {
                if self.writes.len() >= MAX_WRITES {
                    return;
                }
                let r = self.replica_index(replica);
                let seen = self.read(read);
                let ctx = seen.state.context();
                let actor = Actor {
                    node: self.replicas[r].node,
                    epoch: self.replicas[r].epoch,
                };
                let counter = self.counters.entry(actor).or_insert(0);
                *counter += 1 + skip as u64;
                let dot = Dot {
                    actor,
                    counter: *counter,
                };
                let id = self.writes.len();
                let value = (!delete).then(|| Bytes::from(format!("v{id}")));

                let before = self.replicas[r].state.clone();
                let state = &mut self.replicas[r].state;
                state.apply_write(ctx, dot, value.clone());

                let mut expected: Vec<Sibling> = before
                    .siblings()
                    .iter()
                    .filter(|s| !ctx.covers(s.dot))
                    .cloned()
                    .collect();
                expected.push(Sibling {
                    dot,
                    value: value.clone(),
                });
                expected.sort_by_key(|s| s.dot);
                assert_eq!(
                    state.siblings(),
                    &expected[..],
                    "apply_write({ctx:?}, {dot}) on {before:?} must remove exactly the covered siblings"
                );
                let own = VersionVector::from_entries([(actor, dot.counter)]);
                assert_eq!(
                    state.context(),
                    &pointwise_max([before.context(), ctx, &own]),
                    "apply_write({ctx:?}, {dot}) on {before:?}: wrong context"
                );

                self.writes.push(WriteRec {
                    dot,
                    value,
                    seen: seen.history,
                });
                self.replicas[r].history |= seen.history | bit(id);
            }
            Op::Read { replica, also } => {
                let r = self.replica_index(replica);
                let mut snap = Snapshot {
                    state: self.replicas[r].state.clone(),
                    history: self.replicas[r].history,
                };
                if let Some(j) = also {
                    let j = self.replica_index(j);
                    snap.state.merge(&self.replicas[j].state);
                    snap.history |= self.replicas[j].history;
                }
                self.check_state(&snap.state, snap.history, "a read");
                if self.reads.len() == MAX_READS {
                    self.reads.remove(0);
                }
                self.note_reachable(&snap.state);
                self.reads.push(snap);
            }
            Op::Merge { into, from } => {
                let (i, j) = (self.replica_index(into), self.replica_index(from));
                let before = self.replicas[i].state.clone();
                let other = self.replicas[j].state.clone();
                let mut merged = before.clone();
                let changed = merged.merge(&other);
                assert_eq!(
                    changed,
                    merged != before,
                    "merge of {other:?} into {before:?} reports changed={changed}"
                );
                let mut flipped = other.clone();
                flipped.merge(&before);
                assert_eq!(
                    flipped, merged,
                    "merge is not commutative on {before:?} and {other:?}"
                );
                self.replicas[i].state = merged;
                self.replicas[i].history |= self.replicas[j].history;
            }
            Op::Crash { replica, restore } => {
                let r = self.replica_index(replica);
                let snap = self.read(restore);
                let rep = &mut self.replicas[r];
                rep.epoch += 1;
                rep.state = snap.state;
                rep.history = snap.history;
                self.lost_state = true;
            }
        }
        // Only the replica a step names can have changed.
        let i = match op {
            Op::Write { replica, .. } | Op::Read { replica, .. } | Op::Crash { replica, .. } => {
                self.replica_index(replica)
            }
            Op::Merge { into, .. } => self.replica_index(into),
        };
        let rep = &self.replicas[i];
        self.check_state(&rep.state, rep.history, &format!("replica {i}"));
        let state = rep.state.clone();
        self.note_reachable(&state);
    }

    fn note_reachable(&mut self, state: &KeyState) {
        if self.reachable.len() < MAX_REACHABLE && !self.reachable.contains(state) {
            self.reachable.push(state.clone());
        }
    }

    /// The writes of `history` that no other write of it has in its past.
    pub fn maximal(&self, history: WriteSet) -> WriteSet {
        let dominated = members(history).fold(0, |acc, id| acc | self.writes[id].seen);
        history & !dominated
    }

    /// Checks a state against the true history behind it: well formed; its
    /// context covers exactly the writes of the history; its siblings are
    /// exactly the maximal writes of the history, tombstones included.
    pub fn check_state(&self, state: &KeyState, history: WriteSet, what: &str) {
        assert!(state.is_well_formed(), "{what}: malformed state {state:?}");
        for id in members(history) {
            assert_eq!(
                self.writes[id].seen & !history,
                0,
                "model bug: history is not causally closed"
            );
        }
        for (id, w) in self.writes.iter().enumerate() {
            let covered = state.context().covers(w.dot);
            let known = history & bit(id) != 0;
            assert_eq!(
                covered,
                known,
                "{what}: context {:?} {} {} but the true history {} it",
                state.context(),
                if covered { "covers" } else { "does not cover" },
                w.dot,
                if known { "holds" } else { "does not hold" },
            );
        }
        let mut expected: Vec<Sibling> = members(self.maximal(history))
            .map(|id| Sibling {
                dot: self.writes[id].dot,
                value: self.writes[id].value.clone(),
            })
            .collect();
        expected.sort_by_key(|s| s.dot);
        assert_eq!(
            state.siblings(),
            &expected[..],
            "{what}: siblings are not the maximal antichain of the true history"
        );
    }

    /// All replicas merged, in order and in reverse, agree and hold exactly the
    /// maximal antichain of every write that survived (every write, unless a
    /// replica lost state); each replica is below the merge.
    pub fn check_convergence(&self) {
        let all = self.replicas.iter().fold(0, |acc, r| acc | r.history);
        if !self.lost_state {
            let every: WriteSet = (0..self.writes.len()).fold(0, |acc, id| acc | bit(id));
            assert_eq!(all, every, "model bug: a write vanished without a crash");
        }
        for (i, r) in self.replicas.iter().enumerate() {
            self.check_state(&r.state, r.history, &format!("replica {i} at the end"));
        }
        let mut forward = KeyState::new();
        for r in &self.replicas {
            forward.merge(&r.state);
        }
        let mut backward = KeyState::new();
        for r in self.replicas.iter().rev() {
            backward.merge(&r.state);
        }
        assert_eq!(forward, backward, "merge order changes the result");
        self.check_state(&forward, all, "all replicas merged");
        for r in &self.replicas {
            let mut s = r.state.clone();
            s.merge(&forward);
            assert_eq!(s, forward, "a replica is not below the merge of all");
        }
    }

    /// A few reachable states: every replica, the latest reads, and a spread
    /// of earlier states.
    pub fn sample(&self, n: usize) -> Vec<KeyState> {
        let mut out: Vec<KeyState> = Vec::new();
        let mut add = |s: &KeyState| {
            if out.len() < n && !out.contains(s) {
                out.push(s.clone());
            }
        };
        for r in &self.replicas {
            add(&r.state);
        }
        for s in self.reads.iter().rev().take(2) {
            add(&s.state);
        }
        let step = (self.reachable.len() / n.max(1)).max(1);
        for s in self.reachable.iter().rev().step_by(step) {
            add(s);
        }
        out
    }

    /// Merge is idempotent, commutative and associative on up to `n`
    /// reachable states, and a join absorbs its operands.
    pub fn check_semilattice(&self, n: usize) {
        let states = self.sample(n);
        let join = |a: &KeyState, b: &KeyState| {
            let mut m = a.clone();
            m.merge(b);
            assert!(m.is_well_formed(), "merge produced a malformed state");
            m
        };
        for a in &states {
            let mut m = a.clone();
            assert!(!m.merge(a), "merging a state into itself reports a change");
            assert_eq!(&m, a, "merge is not idempotent");
        }
        let joins: Vec<Vec<KeyState>> = states
            .iter()
            .map(|a| states.iter().map(|b| join(a, b)).collect())
            .collect();
        for (i, a) in states.iter().enumerate() {
            for (j, b) in states.iter().enumerate() {
                let ab = &joins[i][j];
                assert_eq!(
                    ab, &joins[j][i],
                    "merge is not commutative on {a:?} and {b:?}"
                );
                assert_eq!(&join(ab, a), ab, "merge does not absorb its operand");
                for (k, c) in states.iter().enumerate() {
                    assert_eq!(
                        join(ab, c),
                        join(a, &joins[j][k]),
                        "merge is not associative on {a:?}, {b:?}, {c:?}"
                    );
                }
            }
        }
    }

    /// Digests are equal exactly when states are.
    pub fn check_digests(&self) {
        let digests: Vec<u64> = self.reachable.iter().map(KeyState::digest).collect();
        for (i, a) in self.reachable.iter().enumerate() {
            assert_eq!(a.digest(), a.clone().digest(), "digest is not stable");
            for (j, b) in self.reachable.iter().enumerate().skip(i + 1) {
                assert_eq!(
                    a == b,
                    digests[i] == digests[j],
                    "digest disagrees with equality on {a:?} and {b:?}"
                );
            }
        }
    }
}

/// Decodes a `dvv_ops` fuzz input: the first byte picks 2 to 4 replicas, then
/// every two bytes are one [`Op`].
pub fn decode_ops(data: &[u8]) -> (usize, Vec<Op>) {
    let Some((&first, rest)) = data.split_first() else {
        return (3, Vec::new());
    };
    let replicas = 2 + first as usize % 3;
    let ops = rest
        .chunks_exact(2)
        .take(MAX_OPS)
        .map(|c| {
            let (a, b) = (c[0], c[1]);
            let replica = a >> 4;
            match a & 0x0f {
                0..=5 => Op::Write {
                    replica,
                    read: (b & 0x80 == 0).then_some(b & 0x1f),
                    delete: b & 0x40 != 0,
                    skip: (b >> 5) & 1,
                },
                6..=9 => Op::Merge {
                    into: replica,
                    from: b,
                },
                10..=14 => Op::Read {
                    replica,
                    also: (b & 0x80 != 0).then_some(b & 0x7f),
                },
                _ => Op::Crash {
                    replica,
                    restore: (b & 0x80 != 0).then_some(b & 0x7f),
                },
            }
        })
        .collect();
    (replicas, ops)
}

/// Encodes steps as a `dvv_ops` fuzz input; the inverse of [`decode_ops`] for
/// steps whose fields are in range (replica < 16, read < 32, skip < 2,
/// `also`/`restore` < 128).
pub fn encode_ops(replicas: usize, ops: &[Op]) -> Vec<u8> {
    assert!((2..=4).contains(&replicas));
    let mut out = vec![(replicas - 2) as u8];
    for &op in ops {
        let (a, b) = match op {
            Op::Write {
                replica,
                read,
                delete,
                skip,
            } => {
                assert!(replica < 16 && read.unwrap_or(0) < 32 && skip < 2);
                let read_bits = read.unwrap_or(0x80);
                let delete_bit = if delete { 0x40 } else { 0 };
                (replica << 4, read_bits | delete_bit | skip << 5)
            }
            Op::Merge { into, from } => {
                assert!(into < 16);
                (into << 4 | 6, from)
            }
            Op::Read { replica, also } => {
                assert!(replica < 16 && also.unwrap_or(0) < 128);
                (replica << 4 | 10, also.map_or(0, |j| 0x80 | j))
            }
            Op::Crash { replica, restore } => {
                assert!(replica < 16 && restore.unwrap_or(0) < 128);
                (replica << 4 | 15, restore.map_or(0, |j| 0x80 | j))
            }
        };
        out.push(a);
        out.push(b);
    }
    out
}

/// Fuzz target `dvv_ops`: runs the steps against the model, then checks
/// convergence, the merge laws and the digests.
pub fn check_dvv_ops(data: &[u8]) {
    let (replicas, ops) = decode_ops(data);
    let model = Model::run(replicas, &ops);
    model.check_convergence();
    model.check_semilattice(4);
    model.check_digests();
}

/// Renders bytes as lowercase hex, for failure messages.
pub fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}
