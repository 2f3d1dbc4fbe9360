//! Explicit schedules in the world: faults at fixed times, client scripts,
//! and the recording of what a run actually did (the faults the nemesis
//! injected, with every parameter it drew, and every client operation), so
//! that a run can be replayed from a file and shrunk.
//!
//! A child module of `world`, so it reaches the world's internals; the
//! world calls into it at a handful of marked places.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use cairn_core::Time;

use super::{ClientState, Ev, NodeState, Phase, World, RETRY_US};
use crate::nemesis::Action;
use crate::scenario::{ClientOp, FaultAction, FaultEvent, Ms, OpName, Scenario};
use crate::workload::{Forgery, Plan};

/// What one run did, as explicit scenario entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recording {
    /// Every fault injected (random, forced or scheduled), in order, with the
    /// parameters it was applied with.
    pub faults: Vec<FaultEvent>,
    /// Every client operation started, in order.
    pub ops: Vec<ClientOp>,
    /// A digest of the final state of every node (Merkle roots of every
    /// partition and the hint counts).
    pub final_digest: u64,
}

thread_local! {
    static WANT: Cell<bool> = const { Cell::new(false) };
    static STASH: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Runs one seed and returns its report with the recording of what it did.
pub fn run_recorded(cfg: &super::RunConfig) -> (crate::RunReport, Recording) {
    WANT.with(|w| w.set(true));
    STASH.with(|s| s.borrow_mut().take());
    let report = super::run(cfg);
    WANT.with(|w| w.set(false));
    let rec = STASH.with(|s| s.borrow_mut().take()).unwrap_or_default();
    (report, rec)
}

/// Parameters an explicit fault pins instead of drawing them.
#[derive(Default)]
struct Pin {
    down_us: Option<u64>,
    for_us: Option<u64>,
    delay_us: Option<u64>,
}

pub(super) struct Script {
    /// Per client, its scripted operations still to run (when scripted).
    queues: Option<Vec<VecDeque<ClientOp>>>,
    schedule: Vec<FaultEvent>,
    pin: Pin,
    /// Per node: the delay before a scripted clean restart starts again.
    restart_pin: Vec<Option<u64>>,
    /// Per client: the node its next write goes to (scripted).
    then_node: Vec<Option<u32>>,
    recording: Recording,
    /// Per client: its operation being recorded.
    current_op: Vec<Option<usize>>,
    /// The fault being recorded.
    last_fault: Option<usize>,
    /// Per node: a recorded clean restart waiting for its restart delay.
    pending_restart: Vec<Option<usize>>,
}

impl Script {
    pub(super) fn new(scenario: &Scenario, clients: usize) -> Script {
        let nodes = scenario.nodes as usize;
        let queues = scenario.is_scripted().then(|| {
            let mut q = vec![VecDeque::new(); clients];
            let mut ops = scenario.script.clone().unwrap_or_default();
            ops.sort_by_key(|o| o.at_ms);
            for op in ops {
                if let Some(queue) = q.get_mut(op.client as usize) {
                    queue.push_back(op);
                }
            }
            q
        });
        let mut schedule = scenario.schedule.clone();
        schedule.sort_by_key(|e| e.at_ms);
        Script {
            queues,
            schedule,
            pin: Pin::default(),
            restart_pin: vec![None; nodes],
            then_node: vec![None; clients],
            recording: Recording::default(),
            current_op: vec![None; clients],
            last_fault: None,
            pending_restart: vec![None; nodes],
        }
    }

    pub(super) fn is_scripted(&self) -> bool {
        self.queues.is_some()
    }
}

fn plan_of(op: OpName) -> Plan {
    match op {
        OpName::Rmw => Plan::ReadModifyWrite,
        OpName::Put => Plan::BlindPut,
        OpName::Delete => Plan::Delete,
        OpName::Read => Plan::Read,
        OpName::Stale => Plan::StaleWrite,
        OpName::Forged => Plan::Hostile(Forgery::Forged),
        OpName::Replayed => Plan::Hostile(Forgery::Replayed),
        OpName::Truncated => Plan::Hostile(Forgery::Truncated),
        OpName::OldFormat => Plan::Hostile(Forgery::OldFormat),
    }
}

fn op_of(plan: Plan) -> OpName {
    match plan {
        Plan::ReadModifyWrite => OpName::Rmw,
        Plan::BlindPut => OpName::Put,
        Plan::Delete => OpName::Delete,
        Plan::Read => OpName::Read,
        Plan::StaleWrite => OpName::Stale,
        Plan::Hostile(Forgery::Forged) => OpName::Forged,
        Plan::Hostile(Forgery::Replayed) => OpName::Replayed,
        Plan::Hostile(Forgery::Truncated) => OpName::Truncated,
        Plan::Hostile(Forgery::OldFormat) => OpName::OldFormat,
    }
}

impl World {
    /// Schedules the explicit faults and the scripted clients' first
    /// wake-ups. Returns whether the clients are scripted (then the caller
    /// does not start them itself).
    pub(super) fn start_script(&mut self) -> bool {
        for index in 0..self.script.schedule.len() {
            let at = Time(self.script.schedule[index].at_ms.micros());
            self.schedule(at, Ev::Scripted { index });
        }
        let Some(queues) = &self.script.queues else {
            return false;
        };
        let firsts: Vec<Option<u64>> = queues
            .iter()
            .map(|q| q.front().map(|o| o.at_ms.micros()))
            .collect();
        for (c, first) in firsts.into_iter().enumerate() {
            match first {
                Some(at) => self.schedule(Time(at), Ev::ClientWake { client: c as u32 }),
                None => self.workload.clients[c] = ClientState::Stopped,
            }
        }
        true
    }

    /// Applies the explicit fault `index` of the schedule.
    pub(super) fn scripted_fault(&mut self, index: usize) {
        if self.phase != Phase::Safety {
            return;
        }
        let e = self.script.schedule[index].clone();
        let node = e.node.map(|n| n as usize - 1);
        let is_up = |w: &World, i: usize| w.slots[i].state == NodeState::Up;
        let action = match e.action {
            FaultAction::Crash => match node {
                Some(i) if is_up(self, i) => Action::Crash(i),
                _ => return,
            },
            FaultAction::CleanRestart => match node {
                Some(i) if is_up(self, i) => {
                    self.script.restart_pin[i] = e.down_ms.map(Ms::micros);
                    Action::CleanRestart(i)
                }
                _ => return,
            },
            FaultAction::Partition => {
                Action::Split(e.side.iter().map(|&n| n as usize - 1).collect())
            }
            FaultAction::Isolate => match node {
                Some(i) => Action::Isolate(i),
                None => return,
            },
            FaultAction::OneWay => Action::OneWay(
                e.links
                    .iter()
                    .map(|&(a, b)| (a as usize - 1, b as usize - 1))
                    .collect(),
            ),
            FaultAction::Clog => match node {
                Some(i) => Action::Clog(i),
                None => return,
            },
            FaultAction::Heal => Action::Heal,
        };
        self.script.pin = Pin {
            down_us: e.down_ms.map(Ms::micros),
            for_us: e.for_ms.map(Ms::micros),
            delay_us: e.delay_ms.map(Ms::micros),
        };
        self.apply_action(action);
        self.script.pin = Pin::default();
    }

    /// Records a fault about to be applied.
    pub(super) fn note_action(&mut self, action: &Action) {
        let at = Ms(self.now.as_micros());
        let mut e = match action {
            Action::Crash(i) => {
                let mut e = FaultEvent::new(at, FaultAction::Crash);
                e.node = Some(*i as u32 + 1);
                e
            }
            Action::CleanRestart(i) => {
                let mut e = FaultEvent::new(at, FaultAction::CleanRestart);
                e.node = Some(*i as u32 + 1);
                self.script.pending_restart[*i] = Some(self.script.recording.faults.len());
                e
            }
            Action::Split(side) => {
                let mut e = FaultEvent::new(at, FaultAction::Partition);
                e.side = side.iter().map(|&i| i as u32 + 1).collect();
                e
            }
            Action::Isolate(i) => {
                let mut e = FaultEvent::new(at, FaultAction::Isolate);
                e.node = Some(*i as u32 + 1);
                e
            }
            Action::OneWay(links) => {
                let mut e = FaultEvent::new(at, FaultAction::OneWay);
                e.links = links
                    .iter()
                    .map(|&(a, b)| (a as u32 + 1, b as u32 + 1))
                    .collect();
                e
            }
            Action::Clog(i) => {
                let mut e = FaultEvent::new(at, FaultAction::Clog);
                e.node = Some(*i as u32 + 1);
                e
            }
            Action::Heal => FaultEvent::new(at, FaultAction::Heal),
        };
        e.at_ms = at;
        self.script.last_fault = Some(self.script.recording.faults.len());
        self.script.recording.faults.push(e);
    }

    fn last_fault(&mut self) -> Option<&mut FaultEvent> {
        let i = self.script.last_fault?;
        self.script.recording.faults.get_mut(i)
    }

    /// How long a crashed node stays down: pinned, or drawn.
    pub(super) fn pinned_downtime_us(&mut self) -> u64 {
        let d = match self.script.pin.down_us.take() {
            Some(d) => d,
            None => self.nemesis.downtime_us(),
        };
        if let Some(e) = self.last_fault() {
            e.down_ms = Some(Ms(d));
        }
        d
    }

    /// How long a partition lasts: pinned, or drawn.
    pub(super) fn pinned_partition_us(&mut self) -> u64 {
        let d = match self.script.pin.for_us.take() {
            Some(d) => d,
            None => self.nemesis.partition_us(),
        };
        if let Some(e) = self.last_fault() {
            e.for_ms = Some(Ms(d));
        }
        d
    }

    /// A clog's extra delay and length: pinned, or drawn.
    pub(super) fn pinned_clog_us(&mut self) -> (u64, u64) {
        let (delay, len) = match (
            self.script.pin.delay_us.take(),
            self.script.pin.for_us.take(),
        ) {
            (Some(d), Some(l)) => (d, l),
            (d, l) => {
                let (dd, dl) = self.nemesis.clog_us();
                (d.unwrap_or(dd), l.unwrap_or(dl))
            }
        };
        if let Some(e) = self.last_fault() {
            e.delay_ms = Some(Ms(delay));
            e.for_ms = Some(Ms(len));
        }
        (delay, len)
    }

    /// The pause before a stopped node starts again: pinned by a scripted
    /// clean restart, or drawn; recorded on the clean restart that caused it.
    pub(super) fn restart_delay_us(&mut self, node: usize) -> u64 {
        let d = match self.script.restart_pin[node].take() {
            Some(d) => d,
            None => self.nemesis.restart_delay_us(),
        };
        if let Some(i) = self.script.pending_restart[node].take() {
            if let Some(e) = self.script.recording.faults.get_mut(i) {
                e.down_ms = Some(Ms(d));
            }
        }
        d
    }

    /// Records a client operation (its first request) as it starts.
    pub(super) fn note_op(&mut self, c: u32, plan: Plan, key: u32, node: usize) {
        let op = ClientOp {
            at_ms: Ms(self.now.as_micros()),
            client: c,
            op: op_of(plan),
            key,
            node: node as u32 + 1,
            then_node: None,
        };
        self.script.current_op[c as usize] = Some(self.script.recording.ops.len());
        self.script.recording.ops.push(op);
    }

    /// The node a scripted client's write goes to, if it is a candidate.
    pub(super) fn scripted_then_node(&mut self, c: u32, candidates: &[usize]) -> Option<usize> {
        let n = self.script.then_node.get_mut(c as usize)?.take()? as usize - 1;
        candidates.contains(&n).then_some(n)
    }

    /// Records the node the second request of an operation went to.
    pub(super) fn note_then_node(&mut self, c: u32, node: usize) {
        if let Some(i) = self.script.current_op[c as usize] {
            let op = &mut self.script.recording.ops[i];
            if op.node != node as u32 + 1 {
                op.then_node = Some(node as u32 + 1);
            }
        }
    }

    /// An idle scripted client wakes: it runs its next operation if that is
    /// due, or sleeps until it is.
    pub(super) fn scripted_wake(&mut self, c: u32, candidates: &[usize]) {
        let Some(queues) = self.script.queues.as_mut() else {
            return;
        };
        let Some(op) = queues[c as usize].front().copied() else {
            self.workload.clients[c as usize] = ClientState::Stopped;
            return;
        };
        if op.at_ms.micros() > self.now.as_micros() {
            self.schedule(Time(op.at_ms.micros()), Ev::ClientWake { client: c });
            return;
        }
        if candidates.is_empty() {
            self.after(RETRY_US, Ev::ClientWake { client: c });
            return;
        }
        queues[c as usize].pop_front();
        let wanted = op.node as usize - 1;
        let node = if candidates.contains(&wanted) {
            wanted
        } else {
            self.workload.pick(candidates)
        };
        self.script.then_node[c as usize] = Some(op.then_node.unwrap_or(op.node));
        let plan = plan_of(op.op);
        self.note_op(c, plan, op.key, node);
        self.start_plan(c, plan, op.key, node);
    }

    /// At the end of a run: hands the recording to [`run_recorded`].
    pub(super) fn finish_script(&mut self) {
        if !WANT.with(|w| w.get()) {
            return;
        }
        let mut rec = std::mem::take(&mut self.script.recording);
        rec.final_digest = self.state_digest();
        STASH.with(|s| *s.borrow_mut() = Some(rec));
    }

    fn state_digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for s in &self.slots {
            h.update(&[s.node.is_some() as u8]);
            if let Some(n) = &s.node {
                for p in 0..self.ring.partitions() {
                    h.update(&n.merkle_root(p).to_le_bytes());
                }
                h.update(&(n.hint_count() as u64).to_le_bytes());
            }
        }
        h.digest()
    }
}

/// The planted bugs of a run: the configuration's and the scenario's.
pub(super) fn bugs(cfg: &super::RunConfig) -> Vec<crate::planted::PlantedBug> {
    let mut bugs = cfg.bugs.clone();
    for b in cfg.scenario.planted() {
        if !bugs.contains(&b) {
            bugs.push(b);
        }
    }
    bugs
}

/// Makes the options fit a client script: enough clients and keys for every
/// index the script names (the draws themselves are unchanged).
pub fn fit_options(options: &mut crate::options::Options, scenario: &Scenario) {
    for op in scenario.script.iter().flatten() {
        let w = &mut options.workload;
        w.clients = w.clients.max(op.client + 1);
        w.keys = w.keys.max(op.key + 1);
    }
}
