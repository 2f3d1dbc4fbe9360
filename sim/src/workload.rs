//! Clients: each runs one operation at a time, with think time in between,
//! against a small hot keyspace.
//!
//! Operations: read-modify-write (Get, then Put with the returned context),
//! blind put (empty context), delete (Get, then Delete with the returned
//! context) and plain reads. A client gives up on a request after a timeout
//! of its own and records it as indeterminate.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_core::{Context, RequestId, Time};
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
}

/// The second half of a read-modify-write or a delete, waiting to be sent.
#[derive(Clone, Debug)]
pub struct Continuation {
    pub key: u32,
    pub tombstone: bool,
    pub preds: Vec<WriteId>,
    pub context: Context,
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
}

pub struct Workload {
    pub opts: WorkloadOptions,
    pub keys: Vec<Bytes>,
    pub clients: Vec<ClientState>,
    pub inflight: BTreeMap<RequestId, InFlight>,
    pub stats: OpStats,
    next_request: u64,
    rng: SimRng,
}

impl Workload {
    pub fn new(opts: &WorkloadOptions, rng: SimRng) -> Workload {
        let keys = (0..opts.keys)
            .map(|i| Bytes::from(format!("key-{i:02}")))
            .collect();
        Workload {
            opts: opts.clone(),
            keys,
            clients: vec![ClientState::Idle; opts.clients as usize],
            inflight: BTreeMap::new(),
            stats: OpStats::default(),
            next_request: 0,
            rng,
        }
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
        let plan = if x < m.read_modify_write {
            Plan::ReadModifyWrite
        } else {
            x -= m.read_modify_write;
            if x < m.blind_put {
                Plan::BlindPut
            } else {
                x -= m.blind_put;
                if x < m.delete {
                    Plan::Delete
                } else {
                    Plan::Read
                }
            }
        };
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
