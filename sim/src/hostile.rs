//! Hostile and confused peers: frames no honest peer sends, delivered to a
//! node as if a real peer had sent them.
//!
//! A peer with a bad network card, a bug, or an attacker on its link sends
//! bytes that do not decode, message types no release knows, states that
//! break the representation invariants, or anti-entropy traffic about a
//! partition the receiver does not hold. A node must drop each of them,
//! count and report it exactly as its kind demands (operators alert on
//! these counters), answer none of them, and keep every acknowledged write:
//! oracle `hostile-frame`, checked right after each frame, with the usual
//! oracles judging the rest of the run.
//!
//! Scenarios switch it on with `[hostile_peers] interval_ms = [min, max]`
//! (off by default). Frames come from their own random stream, so a
//! scenario without them draws exactly what it drew before.

use bytes::Bytes;
use cairn_core::ring::Ring;
use cairn_core::wire::{self, Message};
use cairn_core::{Actor, Dot, KeyState, NodeId, Sibling, VersionVector};
use serde::{Deserialize, Serialize};

use crate::rng::{between, chance, Seeds, SimRng};
use crate::scenario::Span;

/// What a scenario file says (`[hostile_peers]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostileSpec {
    /// Time between two hostile frames, in milliseconds (0: none).
    pub interval_ms: Span,
}

impl Default for HostileSpec {
    fn default() -> Self {
        HostileSpec {
            interval_ms: Span::fixed(0),
        }
    }
}

impl HostileSpec {
    pub fn is_default(&self) -> bool {
        *self == HostileSpec::default()
    }
}

/// What a seed drew: the interval between frames, in milliseconds
/// (`(0, 0)`: off).
pub fn derive(seed: u64, spec: &HostileSpec) -> (u64, u64) {
    let mut rng = Seeds::new(seed).subsystem("hostile-peers-options");
    let a = crate::options::draw(&mut rng, spec.interval_ms);
    let b = crate::options::draw(&mut rng, spec.interval_ms);
    (a.min(b), a.max(b))
}

/// The kinds of frame, each with the reaction it demands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A valid frame with a body byte changed: the checksum fails.
    Corrupt,
    /// A valid frame cut short.
    Truncated,
    /// A well-formed envelope of a type no release knows.
    UnknownType,
    /// A known message carrying an ill-formed state (a sibling its context
    /// does not cover, or two siblings with one dot).
    IllFormed,
    /// Anti-entropy about a partition the receiver does not replicate, or
    /// one beyond the ring.
    Foreign,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Corrupt => "corrupt",
            Kind::Truncated => "truncated",
            Kind::UnknownType => "unknown-type",
            Kind::IllFormed => "ill-formed",
            Kind::Foreign => "foreign-partition",
        }
    }
}

/// How the receiver must react, given its state when the frame arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// One `Undecodable` event (and the counter).
    Undecodable,
    /// One `UnknownMessage` event (and the counter).
    Unknown,
    /// Nothing counted.
    Ignored,
}

/// The receiver as the frame finds it.
pub struct Receiver<'a> {
    pub id: NodeId,
    /// Serving, and handshaken with the sender (it reads the sender's
    /// messages at all).
    pub reads_from_sender: bool,
    /// The protocol the frame claims: the one agreed with the sender, else
    /// the receiver's highest.
    pub protocol: u16,
    pub ring: &'a Ring,
}

/// One frame, and what it demands.
pub struct Frame {
    pub kind: Kind,
    pub bytes: Bytes,
    pub reaction: Reaction,
}

/// Draws hostile frames.
pub struct Hostile {
    interval_ms: (u64, u64),
    rng: SimRng,
}

impl Hostile {
    pub fn new(interval_ms: (u64, u64), rng: SimRng) -> Hostile {
        Hostile { interval_ms, rng }
    }

    pub fn is_on(&self) -> bool {
        self.interval_ms.1 > 0
    }

    pub fn tick_us(&mut self) -> u64 {
        between(&mut self.rng, self.interval_ms.0.max(1), self.interval_ms.1) * 1000
    }

    /// One of `n` things.
    pub fn pick(&mut self, n: usize) -> usize {
        between(&mut self.rng, 0, n.saturating_sub(1) as u64) as usize
    }

    /// A frame from `sender` to `to`.
    pub fn frame(&mut self, sender: NodeId, to: &Receiver<'_>) -> Frame {
        let kind = match self.pick(5) {
            0 => Kind::Corrupt,
            1 => Kind::Truncated,
            2 => Kind::UnknownType,
            3 => Kind::IllFormed,
            _ => Kind::Foreign,
        };
        let read = |r: Reaction| {
            if to.reads_from_sender {
                r
            } else {
                Reaction::Ignored
            }
        };
        let (bytes, reaction) = match kind {
            Kind::Corrupt => {
                let mut b = self.honest(to).to_vec();
                let at = between(&mut self.rng, wire::HEADER_LEN as u64, b.len() as u64 - 1);
                b[at as usize] ^= between(&mut self.rng, 1, 255) as u8;
                (Bytes::from(b), Reaction::Undecodable)
            }
            Kind::Truncated => {
                let b = self.honest(to);
                let len = between(&mut self.rng, 0, b.len() as u64 - 1) as usize;
                (b.slice(..len), Reaction::Undecodable)
            }
            Kind::UnknownType => {
                let msg_type = loop {
                    let t = between(&mut self.rng, 0x4000, 0xffff) as u16;
                    if !wire::MESSAGE_TYPES.iter().any(|&(known, ..)| known == t) {
                        break t;
                    }
                };
                let body = self.junk();
                (
                    wire::seal(to.protocol, msg_type, &body),
                    read(Reaction::Unknown),
                )
            }
            Kind::IllFormed => {
                let m = self.ill_formed(sender, to);
                (wire::encode(to.protocol, &m), read(Reaction::Undecodable))
            }
            Kind::Foreign => {
                let m = self.foreign(to);
                (wire::encode(to.protocol, &m), Reaction::Ignored)
            }
        };
        Frame {
            kind,
            bytes,
            reaction,
        }
    }

    /// An honest message's frame, to damage.
    fn honest(&mut self, to: &Receiver<'_>) -> Bytes {
        let key = self.key_in(to.ring, None);
        let m = Message::ReplicaGet(wire::ReplicaGet {
            req: self.rng_u64(),
            key,
        });
        wire::encode(to.protocol, &m)
    }

    fn rng_u64(&mut self) -> u64 {
        between(&mut self.rng, 0, u64::MAX)
    }

    fn junk(&mut self) -> Vec<u8> {
        let len = between(&mut self.rng, 0, 64) as usize;
        (0..len).map(|_| self.rng_u64() as u8).collect()
    }

    /// A key of `partition` (any partition if None).
    fn key_in(&mut self, ring: &Ring, partition: Option<u16>) -> Bytes {
        loop {
            let key = Bytes::from(format!("hostile-{:x}", self.rng_u64()));
            if partition.is_none_or(|p| ring.partition_of(&key) == p) {
                return key;
            }
        }
    }

    /// A state no honest node builds.
    fn ill_formed_state(&mut self, sender: NodeId) -> KeyState {
        let actor = Actor {
            node: sender,
            epoch: between(&mut self.rng, 1, 3) as u32,
        };
        let sibling = |counter: u64, value: &'static [u8]| Sibling {
            dot: Dot { actor, counter },
            value: Some(Bytes::from_static(value)),
        };
        let c = between(&mut self.rng, 1, 1_000);
        if chance(&mut self.rng, 500_000) {
            // A sibling its context does not cover.
            KeyState::from_parts(vec![sibling(c, b"uncovered")], VersionVector::new())
        } else {
            // Two siblings with one dot (both covered).
            let context = VersionVector::from_entries([(actor, c)]);
            KeyState::from_parts(vec![sibling(c, b"one"), sibling(c, b"other")], context)
        }
    }

    /// A message that carries an ill-formed state, reaching the check of
    /// its handler (a partition the receiver replicates, for anti-entropy).
    fn ill_formed(&mut self, sender: NodeId, to: &Receiver<'_>) -> Message {
        let state = self.ill_formed_state(sender);
        let held: Vec<u16> = (0..to.ring.partitions())
            .filter(|&p| to.ring.is_replica(to.id, p))
            .collect();
        let key = self.key_in(to.ring, None);
        match self.pick(5) {
            0 => Message::ReplicaPut(wire::ReplicaPut {
                req: self.rng_u64(),
                key,
                state,
            }),
            1 => Message::ReplicaGetReply(wire::ReplicaGetReply {
                req: self.rng_u64(),
                key,
                state,
            }),
            2 => Message::ReadRepair(wire::ReadRepair { key, state }),
            3 if !held.is_empty() => {
                let partition = held[self.pick(held.len())];
                let key = self.key_in(to.ring, Some(partition));
                Message::AeSync(wire::AeSync {
                    partition,
                    reply: false,
                    states: vec![(key, Some(state))],
                })
            }
            _ => Message::HintBatch(wire::HintBatch {
                batch: self.rng_u64(),
                items: vec![(key, state)],
            }),
        }
    }

    /// Anti-entropy about a partition the receiver does not replicate.
    fn foreign(&mut self, to: &Receiver<'_>) -> Message {
        let partitions = to.ring.partitions();
        let not_held: Vec<u16> = (0..partitions)
            .filter(|&p| !to.ring.is_replica(to.id, p))
            .collect();
        let partition = if !not_held.is_empty() && chance(&mut self.rng, 750_000) {
            not_held[self.pick(not_held.len())]
        } else {
            partitions.saturating_add(between(&mut self.rng, 0, 1_000) as u16)
        };
        match self.pick(3) {
            0 => Message::AeBuckets(wire::AeBuckets {
                partition,
                buckets: (0..cairn_core::merkle::BUCKETS)
                    .map(|_| self.rng_u64())
                    .collect(),
            }),
            1 => Message::AeKeys(wire::AeKeys {
                partition,
                buckets: vec![0, 1, 2],
                keys: vec![(self.key_in(to.ring, None), self.rng_u64())],
            }),
            _ => Message::AeSync(wire::AeSync {
                partition,
                reply: true,
                states: vec![(self.key_in(to.ring, None), None)],
            }),
        }
    }
}
