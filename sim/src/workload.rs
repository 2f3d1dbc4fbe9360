//! Clients: each runs one operation at a time, with think time in between,
//! against a small hot keyspace.
//!
//! Operations: read-modify-write (Get, then Put with the returned context),
//! blind put (empty context), delete (Get, then Delete with the returned
//! context) and plain reads. A client gives up on a request after a timeout
//! of its own and records it as indeterminate.
//!
//! Clients keep the first context they read of each key and may write with
//! it much later (a stale context: legitimate, the write supersedes what
//! that old read saw). Some writes are hostile: their context is forged,
//! read from another key, truncated or in the format before contexts were
//! authenticated; every one must be refused, and the truth model counts
//! them as writes that saw nothing (so a hostile write that took effect
//! would also show as lost acknowledged writes).

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_core::context::{self, TAG_LEN};
use cairn_core::{Actor, Context, NodeId, RequestId, Time, VersionVector};
use rand::Rng;

use crate::history::WriteId;
use crate::options::WorkloadOptions;
use crate::rng::{between, SimRng};
use crate::trace::OpKind;

/// A client operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    ReadModifyWrite,
    BlindPut,
    Delete,
    Read,
    /// A put with the oldest context the client holds for the key.
    StaleWrite,
    Hostile(Forgery),
}

/// How a hostile client makes up a write's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Forgery {
    /// Counters far beyond what the other nodes issued, a made-up tag.
    Forged,
    /// A valid context of another key.
    Replayed,
    /// A valid context of the key, cut short.
    Truncated,
    /// A forged version vector in the format before contexts had tags.
    OldFormat,
}

impl Forgery {
    pub const ALL: [Forgery; 4] = [
        Forgery::Forged,
        Forgery::Replayed,
        Forgery::Truncated,
        Forgery::OldFormat,
    ];

    /// Its position in [`Forgery::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Forgery::Forged => "forged",
            Forgery::Replayed => "replayed",
            Forgery::Truncated => "truncated",
            Forgery::OldFormat => "old-format",
        }
    }
}

/// What a request is for, and what follows it.
#[derive(Clone, Debug)]
pub enum Step {
    /// A Get; `then` says what the client does with the result.
    Get {
        then: Then,
    },
    Put {
        write: WriteId,
    },
    Delete {
        write: WriteId,
    },
}

impl Step {
    pub fn kind(&self) -> OpKind {
        match self {
            Step::Get { .. } => OpKind::Get,
            Step::Put { .. } => OpKind::Put,
            Step::Delete { .. } => OpKind::Delete,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    Nothing,
    Put,
    Delete,
    /// The final read of the liveness phase.
    Final,
    /// A hostile write of key `target` follows, with the read's context
    /// replayed or truncated.
    Hostile {
        forgery: Forgery,
        target: u32,
    },
}

/// The second half of a read-modify-write or a delete, waiting to be sent.
#[derive(Clone, Debug)]
pub struct Continuation {
    pub key: u32,
    pub tombstone: bool,
    pub preds: Vec<WriteId>,
    pub context: Context,
    /// A hostile write, and how its context was made up.
    pub hostile: Option<Forgery>,
}

impl Continuation {
    /// A write with no context (a blind put).
    pub fn blind(key: u32) -> Continuation {
        Continuation {
            key,
            tombstone: false,
            preds: Vec::new(),
            context: Context::new(),
            hostile: None,
        }
    }
}

#[derive(Clone, Debug)]
pub enum ClientState {
    Idle,
    Busy(RequestId),
    /// Has a follow-up request to send at its next wake-up.
    Ready(Continuation),
    Stopped,
}

/// A request in flight.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// `None` for the final reads of the liveness phase.
    pub client: Option<u32>,
    pub node: usize,
    pub key: u32,
    pub step: Step,
    pub sent_at: Time,
    /// For reads: the acknowledged-write frontier when the read was sent.
    pub acked_before: Vec<WriteId>,
    /// For writes: hostile, and how.
    pub hostile: Option<Forgery>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpStats {
    pub sent: u64,
    pub gets: u64,
    pub puts: u64,
    pub deletes: u64,
    pub ok: u64,
    pub failed: u64,
    pub indeterminate: u64,
    /// Replies that arrived after the client had given up.
    pub late_replies: u64,
    pub reads_checked: u64,
    pub acks_checked: u64,
    /// Writes with a context read long before.
    pub stale_writes: u64,
    /// Hostile writes sent and refused as bad contexts, by kind of forgery
    /// (in the order of [`Forgery::ALL`]).
    pub hostile_sent: [u64; 4],
    pub hostile_refused: [u64; 4],
}

/// A context a client read, kept to write with much later.
#[derive(Clone, Debug)]
pub struct Kept {
    pub context: Context,
    /// The writes the read returned.
    pub preds: Vec<WriteId>,
}

pub struct Workload {
    pub opts: WorkloadOptions,
    pub keys: Vec<Bytes>,
    pub clients: Vec<ClientState>,
    pub inflight: BTreeMap<RequestId, InFlight>,
    pub stats: OpStats,
    /// Per client: the first context it read of each key, until a stale
    /// write uses it.
    pub kept: Vec<BTreeMap<u32, Kept>>,
    next_request: u64,
    rng: SimRng,
    /// What hostile clients make up (its own stream, so forging does not
    /// shift the other client choices).
    hostile_rng: SimRng,
}

impl Workload {
    pub fn new(opts: &WorkloadOptions, rng: SimRng, hostile_rng: SimRng) -> Workload {
        let keys = (0..opts.keys)
            .map(|i| Bytes::from(format!("key-{i:02}")))
            .collect();
        Workload {
            opts: opts.clone(),
            keys,
            clients: vec![ClientState::Idle; opts.clients as usize],
            inflight: BTreeMap::new(),
            stats: OpStats::default(),
            kept: vec![BTreeMap::new(); opts.clients as usize],
            next_request: 0,
            rng,
            hostile_rng,
        }
    }

    /// Keeps a context a client read, if it holds none for the key yet.
    pub fn keep(&mut self, client: u32, key: u32, context: &Context, preds: &[WriteId]) {
        if context.is_empty() {
            return;
        }
        if let Some(kept) = self.kept.get_mut(client as usize) {
            kept.entry(key).or_insert_with(|| Kept {
                context: context.clone(),
                preds: preds.to_vec(),
            });
        }
    }

    /// Takes the context a client kept for a key.
    pub fn take_kept(&mut self, client: u32, key: u32) -> Option<Kept> {
        self.kept.get_mut(client as usize)?.remove(&key)
    }

    /// Whether a hostile write is a delete (one in four).
    pub fn hostile_tombstone(&mut self) -> bool {
        self.hostile_rng.gen_range(0..4) == 0
    }

    /// A context claiming, for every member but `coordinator`, every epoch
    /// up to a little past `epochs` (the highest each is known to have
    /// used) at a counter no node will reach, under a made-up tag; or, with
    /// `old_format`, the same claims as contexts were encoded before they
    /// had tags.
    pub fn forged_context(
        &mut self,
        epochs: &[(NodeId, u32)],
        coordinator: NodeId,
        old_format: bool,
    ) -> Context {
        let mut entries = Vec::new();
        for &(node, epoch) in epochs {
            if node == coordinator {
                continue;
            }
            for e in 1..=epoch + 2 {
                let counter = 1_000_000_000_000 + self.hostile_rng.gen_range(0..1_000_000u64);
                entries.push((Actor { node, epoch: e }, counter));
            }
        }
        let vv = VersionVector::from_entries(entries);
        if old_format {
            return Context::from(context::legacy_encoding(&vv));
        }
        let mut tag = [0u8; TAG_LEN];
        self.hostile_rng.fill(&mut tag[..]);
        context::with_tag(&vv, tag)
    }

    /// `context` cut to a random length of at least one byte and less
    /// than its own (None when it is too short to cut).
    pub fn truncated(&mut self, context: &Context) -> Option<Context> {
        let bytes = context.as_bytes();
        if bytes.len() < 2 {
            return None;
        }
        let len = self.hostile_rng.gen_range(1..bytes.len());
        Some(Context::from(&bytes[..len]))
    }

    pub fn next_request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Think time before a client's next operation, in microseconds.
    pub fn think_us(&mut self) -> u64 {
        between(
            &mut self.rng,
            self.opts.think_ms.0 * 1000,
            self.opts.think_ms.1 * 1000,
        )
    }

    /// A first wake-up spread over the first think interval.
    pub fn initial_delay_us(&mut self) -> u64 {
        between(&mut self.rng, 0, self.opts.think_ms.1 * 1000)
    }

    pub fn pick_plan(&mut self) -> (Plan, u32) {
        let m = self.opts.mix;
        let mut x = self.rng.gen_range(0..m.total());
        let mut plan = Plan::Read;
        for (weight, p) in [
            (m.read_modify_write, Plan::ReadModifyWrite),
            (m.blind_put, Plan::BlindPut),
            (m.delete, Plan::Delete),
            (m.read, Plan::Read),
            (m.stale_context, Plan::StaleWrite),
            (m.hostile, Plan::Hostile(Forgery::Forged)),
        ] {
            if x < weight {
                plan = p;
                break;
            }
            x -= weight;
        }
        if let Plan::Hostile(_) = plan {
            let i = self.hostile_rng.gen_range(0..Forgery::ALL.len());
            plan = Plan::Hostile(Forgery::ALL[i]);
        }
        let key = self.rng.gen_range(0..self.opts.keys);
        (plan, key)
    }

    /// Picks the node a request goes to.
    pub fn pick(&mut self, candidates: &[usize]) -> usize {
        candidates[self.rng.gen_range(0..candidates.len())]
    }

    pub fn busy(&self) -> usize {
        self.inflight
            .values()
            .filter(|f| f.client.is_some())
            .count()
    }
}
