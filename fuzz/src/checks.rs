//! Checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the
//! ordinary test `core/tests/fuzz_corpus.rs`, which feeds every seed under
//! `fuzz/seeds/<target>/` through the same function on stable Rust.
//!
//! Each `check_*` function accepts arbitrary bytes. It panics only when
//! cairn-core breaks one of its contracts: a decoder that panics, accepts
//! something it must refuse, or returns a value that does not re-encode to
//! itself; a causality law of the dotted version vectors that fails against
//! a reference model of the true causal history; or a schema migration that
//! loses, changes or mixes stored records, or gets stuck. Input that the
//! code under test rejects cleanly is fine.
//!
//! (The `simulate` target's check needs the simulator and lives in
//! `cairn_sim::fuzzing`.)
//!
//! This file is compiled both as a module of the `cairn-fuzz` crate and, via
//! `#[path]`, as a module of cairn-core's integration tests, so it may only
//! name `cairn_core`, `bytes` and `crc32c`.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use cairn_core::config::Limits;
use cairn_core::context::{self, ContextError, ContextKey, ContextMac, FORMAT, TAG_LEN};
use cairn_core::dvv::{Actor, Dot, KeyState, Sibling, VersionVector};
use cairn_core::node::Phase;
use cairn_core::ring::Ring;
use cairn_core::storage::{self, Record};
use cairn_core::version::{ProtocolRange, ReleaseId, RELEASES};
use cairn_core::wire::{self, Decoded, MESSAGE_TYPES};
use cairn_core::{
    AdminCommand, Duration, Input, IoResult, Node, NodeConfig, NodeId, Output, Quorum, RequestId,
    Response, Time,
};

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

/// The user key the `context_decode` inputs are checked against.
pub const CONTEXT_USER_KEY: &[u8] = b"k";

/// The context key of the `context_decode` checks (and their seeds).
pub fn context_mac() -> ContextMac {
    ContextMac::new(&ContextKey::from_bytes([0x5A; 32]))
}

/// Fuzz target `context_decode`: the input is a client's context token
/// for [`CONTEXT_USER_KEY`]. Verifying it never panics. Almost no input
/// carries a valid tag, so the input is also checked resealed: with a
/// valid tag in place of its last [`TAG_LEN`] bytes, its structure alone
/// decides, and it must be accepted exactly when [`context::inspect`]
/// accepts it, as a well-formed version vector within the limits that
/// round-trips; it must still be refused on any other key.
pub fn check_context_decode(data: &[u8]) {
    let mac = context_mac();
    let limits = Limits::default();
    let key = CONTEXT_USER_KEY;
    let as_given = mac.verify(key, data, &limits);
    if let Ok(vv) = &as_given {
        check_accepted_context(&mac, &limits, vv);
    }
    let inspected = context::inspect(data, &limits);
    if let (Ok(a), Ok(b)) = (&as_given, &inspected) {
        assert_eq!(a, b, "verify and inspect disagree on {}", hex(data));
    }
    let resealed = if data.len() > TAG_LEN && data[0] == FORMAT {
        mac.seal(key, &data[1..data.len() - TAG_LEN])
    } else {
        data.to_vec()
    };
    let verified = mac.verify(key, &resealed, &limits);
    assert_eq!(
        verified.is_ok(),
        inspected.is_ok(),
        "resealed {}: verify says {verified:?}, inspect {inspected:?}",
        hex(data)
    );
    match verified {
        Ok(vv) => {
            assert_eq!(Ok(&vv), inspected.as_ref());
            check_accepted_context(&mac, &limits, &vv);
            if !data.is_empty() {
                assert_eq!(
                    mac.verify(b"another key", &resealed, &limits),
                    Err(ContextError::Forged),
                    "a token of {} verified on another key",
                    hex(&resealed)
                );
            }
        }
        Err(e) => assert_ne!(e, ContextError::Forged, "a resealed token failed its tag"),
    }
}

fn check_accepted_context(mac: &ContextMac, limits: &Limits, vv: &VersionVector) {
    assert!(vv.is_well_formed(), "accepted a malformed context {vv:?}");
    assert!(vv.entries().len() <= limits.max_context_entries);
    let again = mac.issue(CONTEXT_USER_KEY, vv);
    assert_eq!(
        mac.verify(CONTEXT_USER_KEY, again.as_bytes(), limits)
            .as_ref(),
        Ok(vv)
    );
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

// ---------------------------------------------------------------------------
// Schema migrations of arbitrary records
// ---------------------------------------------------------------------------

/// Reads a fuzz input front to back. Past the end every byte reads as zero,
/// so every input, the empty one included, decodes to something.
pub struct ByteReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    pub fn new(data: &'a [u8]) -> ByteReader<'a> {
        ByteReader { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
}

/// The node whose storage is migrated.
pub const MIG_NODE: NodeId = NodeId(1);
/// Its peers when it is one of three members (hints go to them).
pub const MIG_PEERS: [NodeId; 2] = [NodeId(2), NodeId(3)];
/// Records (copies included) one input creates at most: enough for a
/// migration of several chunks (core rewrites 256 keys per durable chunk).
pub const MIG_MAX_RECORDS: usize = 600;
/// Bytes of stored records one input creates at most (keeps runs fast).
pub const MIG_MAX_BYTES: usize = 64 << 10;
/// Simulated time between two idle timeouts of the harness.
const MIG_TICK: Duration = Duration::from_millis(50);
/// Idle timeouts before the harness judges the node idle.
const MIG_IDLE_TICKS: usize = 4;
/// Starts of the node one input may take (crashes, refusals, steps).
const MIG_MAX_STARTS: usize = 24;

/// How an injected failure interrupts the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigFault {
    /// The process dies after output number `at` of the incarnation.
    Crash,
    /// The first sync at or after output number `at` fails (the node halts).
    FailSync,
}

/// One injected failure. After it, the first `survivors` unsynced writes
/// (modulo their number plus one) reached the disk and the rest are lost,
/// as with a journal; then the node is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigCrash {
    pub at: usize,
    pub fault: MigFault,
    pub survivors: u8,
}

/// A decoded `migrate_records` input.
#[derive(Clone, Debug)]
pub struct MigPlan {
    /// One of three members (hints to the peers are kept; every migration
    /// starts at start-up from a cluster version raised in the metadata, as
    /// after learning it from gossip and crashing before migrating). Else a
    /// single-node cluster finalized by admin commands (online migrations).
    pub multi: bool,
    /// The schema of the records, and the schema to end at.
    pub from: u16,
    pub to: u16,
    /// Single node: the metadata already names the first target (the
    /// migration runs at start-up instead of after a finalization).
    pub prefinalized: bool,
    /// Backups that fail before the first success (each fails a migration).
    pub backup_failures: u8,
    /// Injected failures, one per incarnation, in order.
    pub crashes: Vec<MigCrash>,
    /// The durable image the node starts from.
    pub disk: BTreeMap<Bytes, Bytes>,
}

/// The release that migrates data from `schema` to `schema + 1`.
pub fn migrating_release(schema: u16) -> ReleaseId {
    ReleaseId(schema as u8)
}

/// The release that wrote data of `schema` (its cluster version).
pub fn writing_release(schema: u16) -> ReleaseId {
    ReleaseId(schema as u8 - 1)
}

pub fn mig_members(multi: bool) -> Vec<NodeId> {
    if multi {
        vec![MIG_NODE, MIG_PEERS[0], MIG_PEERS[1]]
    } else {
        vec![MIG_NODE]
    }
}

pub fn mig_config(multi: bool, release: ReleaseId) -> NodeConfig {
    let members = mig_members(multi);
    let mut cfg = NodeConfig::new(MIG_NODE, members.clone(), 7);
    let n = members.len() as u8;
    cfg.quorum = Quorum {
        n,
        r: n / 2 + 1,
        w: n / 2 + 1,
    };
    cfg.release = release;
    // Never reap a tombstone while the harness runs: reaping is not a
    // migration, and the laws compare every record.
    cfg.timing.tombstone_grace = Duration::from_secs(3600);
    cfg
}

fn mig_ring(multi: bool) -> Ring {
    let cfg = mig_config(multi, ReleaseId::current());
    Ring::new(&cfg.members, cfg.partitions, cfg.vnodes, cfg.quorum.n)
}

/// A user key: one byte of length (mod 16), then the key.
fn mig_key(r: &mut ByteReader) -> Bytes {
    let n = r.u8() as usize % 16;
    Bytes::copy_from_slice(r.bytes(n))
}

/// A value: none (a tombstone), a short one from the input, or a long one
/// (80 B to 5 KiB) that compresses well or not at all.
fn mig_value(r: &mut ByteReader) -> Option<Bytes> {
    match r.u8() {
        0 => None,
        v @ 1..=191 => Some(Bytes::copy_from_slice(r.bytes(v as usize % 24))),
        v => {
            let len = (v as usize - 191) * 80;
            let s = r.u8();
            let mut x = s as u32 | 1;
            let out: Vec<u8> = (0..len)
                .map(|i| {
                    if s & 1 == 0 {
                        b'a' + (i % 7) as u8
                    } else {
                        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (x >> 24) as u8
                    }
                })
                .collect();
            Some(Bytes::from(out))
        }
    }
}

fn mig_actor(a: u8) -> Actor {
    Actor {
        node: NodeId(1 + a as u32 % 3),
        epoch: 1 + (a as u32 >> 2) % 3,
    }
}

/// A well-formed key state with 1-4 siblings (values or tombstones) of up
/// to nine actors and a context that covers them and maybe more.
fn mig_state(r: &mut ByteReader) -> KeyState {
    let n = 1 + r.u8() as usize % 4;
    let mut siblings: Vec<Sibling> = Vec::new();
    let mut seen: Vec<(Actor, u64)> = Vec::new();
    for _ in 0..n {
        let a = r.u8();
        let mut counter = 1 + r.u8() as u64;
        if a & 0x80 != 0 {
            counter <<= 24;
        }
        let dot = Dot {
            actor: mig_actor(a),
            counter,
        };
        let value = mig_value(r);
        if siblings.iter().all(|s| s.dot != dot) {
            siblings.push(Sibling { dot, value });
            seen.push((dot.actor, dot.counter));
        }
    }
    for _ in 0..r.u8() % 4 {
        let a = mig_actor(r.u8());
        seen.push((a, 1 + r.u8() as u64));
    }
    let state = KeyState::from_parts(siblings, VersionVector::from_entries(seen));
    assert!(state.is_well_formed(), "harness bug: {state:?}");
    state
}

/// Frames `body` as a stored value of `schema` under `record_key` with a
/// correct checksum (for schemas 2 and 3 the body starts with the codec).
pub fn seal_state_value(schema: u16, record_key: &[u8], body: &[u8]) -> Vec<u8> {
    let crc = if schema <= 1 {
        crc32c::crc32c_append(crc32c::crc32c(record_key), body)
    } else {
        let c = crc32c::crc32c_append(crc32c::crc32c(record_key), &schema.to_le_bytes());
        crc32c::crc32c_append(c, body)
    };
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether a record is one the node itself could have written: data and
/// hints with at least one sibling, hints only for a peer. (A record with
/// an empty state, or a hint for a non-member, is neither loaded nor
/// deleted at start-up, so it lingers in its namespace; core never writes
/// one, so the generator leaves them out.)
fn mig_writable(multi: bool, key: &[u8], value: &[u8]) -> bool {
    match storage::decode_record(key, value) {
        Ok(Record::Data { state, .. }) => !state.is_empty(),
        Ok(Record::Hint { target, state, .. }) => {
            multi && MIG_PEERS.contains(&target) && !state.is_empty()
        }
        _ => true,
    }
}

/// Decodes a `migrate_records` input.
///
/// - byte 0: bit 0 three members (else one); bit 1 records in schema 2
///   (else 1); bit 2 from schema 1 stop at schema 2 (else go on to 3); bit
///   3 the first migration is already finalized in the metadata; bit 4 the
///   metadata says the last stop was clean; bits 5-7 a progress record: 4
///   an interrupted migration to the next schema, 5 a finished one whose
///   clean-up was interrupted, 6 a migration to a schema the node does not
///   target, 7 a damaged record (value from the input), else none.
/// - byte 1: the metadata's epoch (1-4) and generation.
/// - byte 2: bit 0 the progress record's attempts (0-1); bits 1-2 backups
///   that fail (0-2); bit 3 the progress record carries an error.
/// - three failures of 3 bytes each: the output number (u16 LE, 0: none)
///   and a byte: bit 0 a failed sync instead of a crash, the rest the
///   unsynced writes that survive.
/// - then records until the end, each a kind byte (`k`) and its fields:
///   `k % 8` 0-3 a data record (a key, a state; with `k & 0x80` a byte of
///   copies, 1 + 2b records under the key with two bytes appended), 4 a hint
///   for peer `(k >> 3) & 1` (three members only), 5 a record left in the
///   next schema by an interrupted migration (a u16 picks an earlier data
///   record; with `k & 0x80` the same state, else a state from the input),
///   6 a damaged record (a selector byte, a key, a length byte and the
///   value), 7 a data record with 1 + 2b copies. Records stop at
///   [`MIG_MAX_RECORDS`] or [`MIG_MAX_BYTES`].
///
/// A key is a length byte (mod 16) and the key; a state a byte of siblings
/// (1-4), each an actor byte, a counter byte and a value (0: a tombstone,
/// 1-191: that many bytes mod 24 from the input, above: (b - 191) * 80
/// generated bytes, after a byte saying compressible or not), then a byte of
/// extra context entries (mod 4), each an actor byte and a counter byte.
pub fn decode_migration(data: &[u8]) -> MigPlan {
    let mut r = ByteReader::new(data);
    let mode = r.u8();
    let multi = mode & 1 != 0;
    let from: u16 = if mode & 2 != 0 { 2 } else { 1 };
    let to: u16 = if from == 1 && mode & 4 != 0 { 2 } else { 3 };
    let prefinalized = mode & 8 != 0;
    let clean = mode & 16 != 0;
    let progress_kind = mode >> 5;
    let m = r.u8();
    let flags = r.u8();
    let crashes: Vec<MigCrash> = (0..3)
        .filter_map(|_| {
            let at = r.u16() as usize;
            let b = r.u8();
            (at > 0).then_some(MigCrash {
                at,
                fault: if b & 1 != 0 {
                    MigFault::FailSync
                } else {
                    MigFault::Crash
                },
                survivors: b >> 1,
            })
        })
        .collect();
    let meta = storage::Meta {
        epoch: 1 + (m & 3) as u32,
        next_counter: 1 + (m >> 2) as u64,
        clean,
        schema: from,
        cluster_version: writing_release(from).version().into(),
        generation: (m >> 4) as u64,
    };
    let mut disk: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    disk.insert(
        Bytes::from_static(storage::META_KEY),
        storage::encode_meta(&meta),
    );
    let progress = |from: u16, to: u16| storage::Progress {
        from,
        to,
        attempts: (flags & 1) as u32,
        last_error: (flags & 8 != 0).then(|| "an earlier attempt failed".into()),
    };
    let progress_value = match progress_kind {
        4 => Some(storage::encode_progress(&progress(from, from + 1))),
        5 => Some(storage::encode_progress(&progress(from - 1, from))),
        6 => Some(storage::encode_progress(&progress(from, from + 2))),
        7 => {
            let n = r.u8() as usize % 32;
            Some(Bytes::copy_from_slice(r.bytes(n)))
        }
        _ => None,
    };
    if let Some(v) = progress_value {
        disk.insert(Bytes::from_static(storage::PROGRESS_KEY), v);
    }
    let ring = mig_ring(multi);
    let next = from + 1;
    let mut live: Vec<Bytes> = Vec::new();
    let mut states: BTreeMap<Bytes, KeyState> = BTreeMap::new();
    // Records and bytes stored so far (a replaced record still counts).
    let (mut records, mut stored) = (0usize, 0usize);
    let full = |records: usize, stored: usize| records >= MIG_MAX_RECORDS || stored > MIG_MAX_BYTES;
    while !r.is_empty() && !full(records, stored) {
        let k = r.u8();
        match k % 8 {
            kind @ (0..=3 | 7) => {
                let key = mig_key(&mut r);
                let state = mig_state(&mut r);
                let copies = if k & 0x80 != 0 || kind == 7 {
                    1 + 2 * r.u8() as usize
                } else {
                    1
                };
                for i in 0..copies {
                    if full(records, stored) {
                        break;
                    }
                    let user = if copies == 1 {
                        key.clone()
                    } else {
                        let mut u = key.to_vec();
                        u.extend_from_slice(&(i as u16).to_be_bytes());
                        Bytes::from(u)
                    };
                    let rk = storage::data_key(from, 0, &user);
                    let v = storage::encode_state(from, &rk, &state);
                    stored += v.len();
                    disk.insert(rk, v);
                    if !states.contains_key(&user) {
                        live.push(user.clone());
                    }
                    states.insert(user, state.clone());
                    records += 1;
                }
            }
            4 => {
                let target = MIG_PEERS[(k as usize >> 3) & 1];
                let key = mig_key(&mut r);
                let state = mig_state(&mut r);
                if multi {
                    let rk = storage::hint_key(from, target, &key);
                    let v = storage::encode_state(from, &rk, &state);
                    stored += v.len();
                    disk.insert(rk, v);
                    records += 1;
                }
            }
            5 => {
                let pick = r.u16() as usize;
                let same = k & 0x80 != 0;
                let other = (!same).then(|| mig_state(&mut r));
                if live.is_empty() {
                    continue;
                }
                let user = live[pick % live.len()].clone();
                let state = other.unwrap_or_else(|| states[&user].clone());
                let rk = storage::data_key(next, ring.partition_of(&user), &user);
                let v = storage::encode_state(next, &rk, &state);
                stored += v.len();
                disk.insert(rk, v);
                records += 1;
            }
            _ => {
                let sel = r.u8();
                let user = mig_key(&mut r);
                let n = r.u8() as usize;
                let raw = r.bytes(n).to_vec();
                let peer = MIG_PEERS[(sel as usize >> 3) & 1];
                let (rk, value) = match sel % 6 {
                    0 => (storage::data_key(from, 0, &user), raw),
                    1 => {
                        let rk = storage::data_key(from, 0, &user);
                        let v = seal_state_value(from, &rk, &raw);
                        (rk, v)
                    }
                    2 => {
                        let rk = storage::data_key(next, ring.partition_of(&user), &user);
                        let v = seal_state_value(next, &rk, &raw);
                        (rk, v)
                    }
                    3 => {
                        let rk = storage::hint_key(from, peer, &user);
                        let v = seal_state_value(from, &rk, &raw);
                        (rk, v)
                    }
                    4 => {
                        let mut rk = vec![b'd', sel >> 3];
                        rk.extend_from_slice(&user);
                        (Bytes::from(rk), raw)
                    }
                    _ => {
                        let mut rk = vec![if sel & 8 != 0 { b'h' } else { b'd' }];
                        rk.extend_from_slice(&user);
                        (Bytes::from(rk), raw)
                    }
                };
                if mig_writable(multi, &rk, &value) {
                    // A damaged record may replace a good one: then that
                    // record is lost, which the expected contents reflect.
                    stored += value.len();
                    disk.insert(rk, Bytes::from(value));
                    records += 1;
                }
            }
        }
    }
    MigPlan {
        multi,
        from,
        to,
        prefinalized,
        backup_failures: (flags >> 1) & 3,
        crashes,
        disk,
    }
}

/// The logical contents of a durable image in one schema namespace: every
/// data record by user key and every hint by (target, user key) that
/// decodes.
pub type Contents = (
    BTreeMap<Bytes, KeyState>,
    BTreeMap<(NodeId, Bytes), KeyState>,
);

pub fn image_contents(image: &BTreeMap<Bytes, Bytes>, schema: u16) -> Contents {
    let mut data = BTreeMap::new();
    let mut hints = BTreeMap::new();
    for (k, v) in image {
        if storage::key_schema(k) != Some(schema) {
            continue;
        }
        match storage::decode_record(k, v) {
            Ok(Record::Data { key, state, .. }) => {
                data.insert(key, state);
            }
            Ok(Record::Hint {
                target, key, state, ..
            }) => {
                hints.insert((target, key), state);
            }
            _ => {}
        }
    }
    (data, hints)
}

/// The schema namespaces that hold data or hint records in an image.
pub fn image_namespaces(image: &BTreeMap<Bytes, Bytes>) -> Vec<u16> {
    let mut s: Vec<u16> = image
        .keys()
        .filter(|k| matches!(k.first(), Some(b'd' | b'h')))
        .filter_map(|k| storage::key_schema(k))
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

fn image_meta(image: &BTreeMap<Bytes, Bytes>) -> storage::Meta {
    let v = image
        .get(storage::META_KEY)
        .expect("the metadata record is missing");
    match storage::decode_record(storage::META_KEY, v) {
        Ok(Record::Meta(m)) => m,
        other => panic!("the metadata record does not decode: {other:?}"),
    }
}

/// Sets the cluster version in an image's metadata, marked unclean: what a
/// node persists when it learns a finalization, before it acts on it.
fn raise_cluster_version(image: &mut BTreeMap<Bytes, Bytes>, v: ReleaseId) {
    let mut meta = image_meta(image);
    meta.cluster_version = v.version().into();
    meta.clean = false;
    image.insert(
        Bytes::from_static(storage::META_KEY),
        storage::encode_meta(&meta),
    );
}

/// A disk: the durable image and the writes not yet synced.
#[derive(Clone, Debug, Default)]
pub struct MigDisk {
    pub durable: BTreeMap<Bytes, Bytes>,
    pub pending: Vec<(Bytes, Option<Bytes>)>,
}

impl MigDisk {
    fn apply(&mut self, n: usize) {
        for (k, v) in self.pending.drain(..n) {
            match v {
                Some(v) => self.durable.insert(k, v),
                None => self.durable.remove(&k),
            };
        }
    }

    fn sync(&mut self) {
        self.apply(self.pending.len());
    }

    /// The process died: a prefix of the unsynced writes reached the disk.
    fn crash(&mut self, survivors: u8) {
        let n = survivors as usize % (self.pending.len() + 1);
        self.apply(n);
        self.pending.clear();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MigEnd {
    Idle,
    Crashed,
}

/// One incarnation of the node on its disk, driven through its sans-IO API.
struct MigNode {
    node: Node,
    disk: MigDisk,
    now: Time,
    queue: VecDeque<Input>,
    replies: BTreeMap<RequestId, Response>,
    outputs: usize,
    fault: Option<MigCrash>,
    /// Survivors of a failed sync, once one was injected.
    failed_sync: Option<u8>,
    /// The node's phase when the injected failure struck.
    struck_in: Option<Phase>,
}

impl MigNode {
    fn start(
        multi: bool,
        release: ReleaseId,
        durable: BTreeMap<Bytes, Bytes>,
        now: Time,
        fault: Option<MigCrash>,
    ) -> MigNode {
        MigNode {
            node: Node::new(mig_config(multi, release), now).expect("a valid configuration"),
            disk: MigDisk {
                durable,
                pending: Vec::new(),
            },
            now,
            queue: VecDeque::new(),
            replies: BTreeMap::new(),
            outputs: 0,
            fault,
            failed_sync: None,
            struck_in: None,
        }
    }

    /// Runs until the node is idle, or until the injected failure strikes
    /// (the unsynced writes are then settled as after a crash).
    fn run(&mut self, backups: &mut Vec<BTreeMap<Bytes, Bytes>>, fail_backups: &mut u8) -> MigEnd {
        let mut idle = 0;
        for _ in 0..1_000_000 {
            loop {
                let out = self.node.poll_output();
                self.outputs += 1;
                if let Some(c) = self.fault {
                    if c.fault == MigFault::Crash && self.outputs >= c.at {
                        self.fault = None;
                        self.struck_in = Some(self.node.phase());
                        self.disk.crash(c.survivors);
                        return MigEnd::Crashed;
                    }
                }
                match out {
                    Output::Timeout(_) => break,
                    Output::Write { key, value, .. } => self.disk.pending.push((key, value)),
                    Output::Sync { io } => {
                        let result = match self.fault {
                            Some(c) if c.fault == MigFault::FailSync && self.outputs >= c.at => {
                                self.fault = None;
                                self.struck_in = Some(self.node.phase());
                                self.failed_sync = Some(c.survivors);
                                IoResult::Failed("injected I/O error".into())
                            }
                            _ => {
                                self.disk.sync();
                                IoResult::Synced
                            }
                        };
                        self.queue.push_back(Input::IoDone {
                            now: self.now,
                            io,
                            result,
                        });
                    }
                    Output::Read { io, .. } => {
                        let records = self
                            .disk
                            .durable
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        self.queue.push_back(Input::IoDone {
                            now: self.now,
                            io,
                            result: IoResult::Loaded(records),
                        });
                    }
                    Output::Backup { io, .. } => {
                        let result = if *fail_backups > 0 {
                            *fail_backups -= 1;
                            IoResult::Failed("injected backup failure".into())
                        } else {
                            backups.push(self.disk.durable.clone());
                            IoResult::Synced
                        };
                        self.queue.push_back(Input::IoDone {
                            now: self.now,
                            io,
                            result,
                        });
                    }
                    Output::Reply { id, response } => {
                        self.replies.insert(id, response);
                    }
                    Output::Send { .. } | Output::Event(_) => {}
                }
            }
            if self.node.is_halted() {
                let survivors = self.failed_sync.take().unwrap_or(0);
                self.disk.crash(survivors);
                return MigEnd::Crashed;
            }
            match self.queue.pop_front() {
                Some(input) => {
                    idle = 0;
                    self.node.handle_input(input);
                }
                None => {
                    idle += 1;
                    if idle > MIG_IDLE_TICKS {
                        return MigEnd::Idle;
                    }
                    self.now = self.now + MIG_TICK;
                    self.node.handle_input(Input::Timeout(self.now));
                }
            }
        }
        panic!("the node never went idle");
    }

    /// The laws of a serving node: one schema on disk, the live one; the
    /// same records in memory as on disk; and on disk exactly the expected
    /// records, plus perhaps some of `adoptable`, unchanged.
    fn check_serving(
        &self,
        expected: &Contents,
        adoptable: &BTreeMap<Bytes, KeyState>,
        multi: bool,
        when: &str,
    ) {
        let image = &self.disk.durable;
        let schema = self.node.schema();
        let meta = image_meta(image);
        assert_eq!(
            meta.schema, schema,
            "{when}: the metadata names schema {} but the node serves schema {schema}",
            meta.schema
        );
        assert!(
            !image.contains_key(storage::PROGRESS_KEY),
            "{when}: a progress record is left while the node serves"
        );
        let spaces = image_namespaces(image);
        assert!(
            spaces.is_empty() || spaces == [schema],
            "{when}: records of schemas {spaces:?} on disk, live schema {schema}"
        );
        let got = image_contents(image, schema);
        let mut want = expected.0.clone();
        for (k, s) in &got.0 {
            if !want.contains_key(k) && adoptable.get(k) == Some(s) {
                want.insert(k.clone(), s.clone());
            }
        }
        assert!(
            got.0 == want,
            "{when}: data records on disk differ from the records before: {}",
            diff_states(&want, &got.0)
        );
        assert!(
            got.1 == expected.1,
            "{when}: hints on disk differ from the hints before: {:?} != {:?}",
            got.1.keys().collect::<Vec<_>>(),
            expected.1.keys().collect::<Vec<_>>()
        );
        let mem: BTreeMap<Bytes, KeyState> = self
            .node
            .keys()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        assert!(
            mem == got.0,
            "{when}: the node's records differ from its live records on disk: {}",
            diff_states(&got.0, &mem)
        );
        if multi {
            assert_eq!(self.node.hint_count(), expected.1.len(), "{when}: hints");
        }
    }
}

/// The first difference between two maps of key states, for messages.
fn diff_states(want: &BTreeMap<Bytes, KeyState>, got: &BTreeMap<Bytes, KeyState>) -> String {
    for (k, s) in want {
        match got.get(k) {
            None => return format!("key {} is missing ({} expected)", hex(k), want.len()),
            Some(g) if g != s => {
                return format!("key {}: {g:?} instead of {s:?}", hex(k));
            }
            _ => {}
        }
    }
    match got.keys().find(|k| !want.contains_key(*k)) {
        Some(k) => format!("key {} appeared", hex(k)),
        None => "no difference".into(),
    }
}

/// Fuzz target `migrate_records`.
///
/// Builds a durable image of records in schema 1 or 2 from the input (see
/// [`decode_migration`]), then upgrades the node one release at a time to
/// the newest schema as core plans it: a single node finalized by admin
/// commands, or one of three members whose metadata was raised as gossip
/// would. Outputs are applied to an in-memory disk; injected crashes and
/// failed syncs lose a suffix of the unsynced writes and restart the node,
/// failed backups fail a migration (the node refuses, and an operator
/// restarts it). Whenever the node serves, and at the end after a clean
/// restart: exactly one schema is on disk and it is the live one, no
/// progress record is left, and every record (data and hints) has the same
/// logical content as before; every backup holds the records intact.
pub fn check_migrate_records(data: &[u8]) {
    run_migration(data);
}

/// What one `migrate_records` input made happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigStats {
    /// Starts of the node (every restart included).
    pub starts: usize,
    /// Injected crashes and failed syncs that struck, and how many of them
    /// struck while the node was migrating.
    pub faults: usize,
    pub faults_migrating: usize,
    /// Failed migrations the node refused to serve after.
    pub refusals: usize,
    /// Finalizations sent.
    pub finalizations: usize,
    /// Backups taken.
    pub backups: usize,
    /// Data records and hints checked.
    pub records: usize,
    pub hints: usize,
}

/// Runs a `migrate_records` input, checking every law (see
/// [`check_migrate_records`]), and says what happened.
pub fn run_migration(data: &[u8]) -> MigStats {
    let mut stats = MigStats::default();
    let plan = decode_migration(data);
    let expected = image_contents(&plan.disk, plan.from);
    // With a progress record of an interrupted migration to the next schema,
    // a record that an earlier attempt wrote there but whose live copy is
    // gone (damaged) may be adopted when the migration resumes: it is the
    // record as that attempt copied it. It need not be.
    let resumable = plan.disk.get(storage::PROGRESS_KEY).is_some_and(|v| {
        matches!(
            storage::decode_record(storage::PROGRESS_KEY, v),
            Ok(Record::Progress(p)) if p.from == plan.from && p.to == plan.from + 1
        )
    });
    let adoptable: BTreeMap<Bytes, KeyState> = if resumable {
        image_contents(&plan.disk, plan.from + 1)
            .0
            .into_iter()
            .filter(|(k, _)| !expected.0.contains_key(k))
            .collect()
    } else {
        BTreeMap::new()
    };
    let multi = plan.multi;
    let mut image = plan.disk.clone();
    let mut faults = plan.crashes.iter().copied();
    let mut fail_backups = plan.backup_failures;
    let mut backups: Vec<BTreeMap<Bytes, Bytes>> = Vec::new();
    let mut now = Time::from_millis(1);
    let mut starts = 0usize;
    for schema in plan.from..plan.to {
        let release = migrating_release(schema);
        if multi || (schema == plan.from && plan.prefinalized) {
            raise_cluster_version(&mut image, release);
        }
        let mut h = MigNode::start(multi, release, image.clone(), now, faults.next());
        starts += 1;
        let mut finalizes = 0;
        loop {
            assert!(
                starts <= MIG_MAX_STARTS,
                "the migration to schema {} never finished",
                schema + 1
            );
            let end = h.run(&mut backups, &mut fail_backups);
            now = h.now;
            let when = format!("{} (start {starts})", release.version());
            let phase = h.node.phase();
            if let Some(p) = h.struck_in.take() {
                stats.faults += 1;
                stats.faults_migrating += (p == Phase::Migrating) as usize;
            }
            if end == MigEnd::Crashed || phase == Phase::Refusing {
                if end == MigEnd::Idle {
                    stats.refusals += 1;
                    // A failed migration refuses with the old schema intact;
                    // the operator restarts the node (a kill).
                    assert_eq!(h.node.schema(), schema, "{when}: refusing");
                    let got = image_contents(&h.disk.durable, schema);
                    assert!(
                        got == expected,
                        "{when}: a refusing node's records changed: {}",
                        diff_states(&expected.0, &got.0)
                    );
                    h.disk.crash(0);
                }
                h = MigNode::start(multi, release, h.disk.durable, now, faults.next());
                starts += 1;
                continue;
            }
            assert_eq!(
                phase,
                Phase::Serving,
                "{when}: the idle node is stuck ({:?})",
                h.node.refusal()
            );
            h.check_serving(&expected, &adoptable, multi, &when);
            if h.node.schema() == schema + 1 {
                break;
            }
            assert_eq!(h.node.schema(), schema, "{when}: schema");
            assert!(
                !multi && h.node.cluster_version() < release,
                "{when}: the cluster version is {} but the node serves schema {schema}",
                h.node.cluster_version().version()
            );
            finalizes += 1;
            stats.finalizations += 1;
            assert!(finalizes <= 8, "{when}: finalization never took");
            h.queue.push_back(Input::Admin {
                now: h.now,
                id: RequestId(finalizes),
                command: AdminCommand::Finalize {
                    target: Some(release.version().into()),
                },
            });
        }
        assert_eq!(h.node.cluster_version(), release);
        // A clean shutdown between two releases.
        h.queue.push_back(Input::Shutdown { now: h.now });
        h.fault = None;
        assert_eq!(h.run(&mut backups, &mut fail_backups), MigEnd::Idle);
        assert_eq!(h.node.phase(), Phase::Stopped);
        now = h.now;
        image = h.disk.durable;
    }
    let mut r = MigNode::start(multi, migrating_release(plan.to - 1), image, now, None);
    starts += 1;
    assert_eq!(r.run(&mut backups, &mut fail_backups), MigEnd::Idle);
    assert!(r.node.is_serving(), "restart: {:?}", r.node.refusal());
    assert_eq!(r.node.schema(), plan.to, "restart");
    r.check_serving(&expected, &adoptable, multi, "after a clean restart");
    for (i, b) in backups.iter().enumerate() {
        let schema = image_meta(b).schema;
        let got = image_contents(b, schema);
        assert!(
            got == expected,
            "backup {i} (schema {schema}) lost records: {}",
            diff_states(&expected.0, &got.0)
        );
    }
    stats.starts = starts;
    stats.backups = backups.len();
    stats.records = expected.0.len();
    stats.hints = expected.1.len();
    stats
}

#[path = "corpus.rs"]
pub mod corpus;

pub use corpus::hex;
