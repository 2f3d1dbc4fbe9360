//! The world: one event queue driving every node, the network, the disks,
//! the clients and the nemesis in virtual time.
//!
//! Events are ordered by (simulated time, sequence number), so ties resolve
//! in scheduling order and a run is a pure function of its seed. After every
//! input a node's outputs are drained until `Output::Timeout`; side effects
//! that reach another node (or a client) always go through the queue, so a
//! node is never re-entered while its outputs are being applied.
//!
//! A run has two phases. In the safety phase clients run and the nemesis
//! injects faults; oracles judge every read and acknowledgement. In the
//! liveness phase every fault is healed, crashed nodes restart, clients
//! finish what they have in flight and stop, and the cluster must converge
//! (identical replica states, equal Merkle roots, no hints left) within a
//! bound; then the converged states and a final quorum read of every key are
//! judged.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use bytes::Bytes;
use cairn_core::node::Phase as CorePhase;
use cairn_core::ring::Ring;
use cairn_core::{
    ClientError, Context, Event, InitialClusterState, Input, IoId, IoResult, Node, NodeConfig,
    NodeId, Output, Quorum, ReadRequest, Request, RequestId, Response, Time,
};

use crate::atlas::{Atlas, Chaos};
use crate::clock::Clock;
use crate::disk::{Disk, DiskStats, SyncFailure};
use crate::history::{encode_value, History, WriteId};
use crate::nemesis::{Action, Nemesis};
use crate::network::{Fate, Network};
use crate::options::Options;
use crate::oracle::{self, Violation};
use crate::planted::PlantedBug;
use crate::report::{FaultStats, Outcome, RunReport, Stats};
use crate::rng::Seeds;
use crate::scenario::Scenario;
use crate::trace::{message_type, DropReason, FaultKind, NodeEventKind, OpOutcome, Record, Trace};
use crate::workload::{ClientState, Continuation, Forgery, InFlight, Plan, Step, Then, Workload};

#[path = "world_script.rs"]
mod script;
pub use script::{fit_options, run_recorded, Recording};

#[path = "world_hostile.rs"]
mod hostile_peers;
#[path = "world_rejoin.rs"]
mod rejoin;
#[path = "world_versions.rs"]
mod versions;

/// Everything needed to run one seed.
#[derive(Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub scenario: Scenario,
    pub bugs: Vec<PlantedBug>,
    /// Write the trace as JSON lines to this file.
    pub trace: Option<PathBuf>,
}

/// Outputs one drain may produce before the node is judged to be looping.
const MAX_OUTPUTS_PER_DRAIN: usize = 1 << 20;
/// Events one run may process before it is judged not to make progress.
const MAX_EVENTS: u64 = 100_000_000;
/// How often the liveness phase checks for convergence.
const CONVERGENCE_POLL_US: u64 = 100_000;
/// Pause before a client retries when no node is up, and before a final
/// read is retried.
const RETRY_US: u64 = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
    /// Converged: every tombstone must now be reaped (`reaped`).
    Reaping,
    FinalReads,
    /// The healed cluster must take one more write of every key (from the
    /// context its final read returned): a cluster that reads but cannot
    /// write fails here (`progress`).
    FinalWrites,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Up,
    ShuttingDown,
    Down,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        /// The destination's incarnation when the message was sent: a node
        /// that restarted since never sees it (its connections were reset,
        /// as with TCP).
        to_inc: u32,
        bytes: Bytes,
        duplicate: bool,
    },
    Timer {
        node: usize,
        inc: u32,
        gen: u64,
    },
    SyncDone {
        node: usize,
        inc: u32,
        io: IoId,
        mark: u64,
        failed: Option<SyncFailure>,
    },
    /// Disk fills up, clock steps (see [`crate::atlas`]).
    Chaos,
    /// A hostile peer's frame (see [`crate::hostile`]).
    Hostile,
    ReadDone {
        node: usize,
        inc: u32,
        io: IoId,
    },
    BackupDone {
        node: usize,
        inc: u32,
        io: IoId,
        label: String,
        /// `None`: the copy failed.
        snapshot: Option<BTreeMap<Bytes, Bytes>>,
    },
    ClientWake {
        client: u32,
    },
    ClientDeadline {
        request: RequestId,
    },
    Nemesis,
    ForcedCrash,
    ForcedPartition,
    Restart {
        node: usize,
        inc: u32,
    },
    /// Stop a node after `ShutdownComplete` (clean) or `Halted`.
    Stop {
        node: usize,
        inc: u32,
        halted: bool,
    },
    ShutdownDeadline {
        node: usize,
        inc: u32,
    },
    Heal {
        gen: u64,
    },
    /// An explicit fault of the scenario's schedule.
    Scripted {
        index: usize,
    },
    /// The version orchestrator.
    Versions(versions::VEv),
    SafetyEnd,
    ConvergenceCheck,
    ReapCheck,
    FinalRead {
        key: u32,
    },
    FinalWrite {
        key: u32,
    },
    LivenessDeadline,
}

/// A queue entry: the heap orders small keys; the event itself waits in a
/// slab slot, so heap sifts move 24 bytes instead of a whole event.
struct Scheduled {
    at: Time,
    seq: u64,
    slot: u32,
}

/// Slots for events waiting in the queue, reused as they are popped.
#[derive(Default)]
struct EventSlab {
    slots: Vec<Option<Ev>>,
    free: Vec<u32>,
}

impl EventSlab {
    fn put(&mut self, ev: Ev) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(ev);
                i
            }
            None => {
                self.slots.push(Some(ev));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn take(&mut self, slot: u32) -> Ev {
        self.free.push(slot);
        self.slots[slot as usize]
            .take()
            .expect("a queued event's slot holds it until popped")
    }
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest (time, sequence) first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Slot {
    id: NodeId,
    node: Option<Node>,
    state: NodeState,
    /// Bumped at every start; events of an older incarnation are ignored.
    inc: u32,
    timer_gen: u64,
    timer_at: Option<Time>,
    clock: Clock,
    disk: Disk,
    /// The durable metadata record last decoded and the schema it names.
    meta_cache: std::cell::RefCell<Option<(Bytes, Option<u16>)>>,
    /// The epoch of a clean shutdown that left the disk undamaged: the next
    /// start must keep it (`clean-restart`).
    kept_epoch: Option<u32>,
    /// What this incarnation was seen to do, for `metrics-truthful`.
    counted: Counted,
    /// The last io id this incarnation used (`io-order`).
    last_io: Option<IoId>,
    /// When its clock last stepped backwards (`answered` does not judge a
    /// node after that).
    stepped_back_at: Option<Time>,
    /// Messages this node has sent, ever (`hostile-frame`).
    sent: u64,
    /// When this incarnation started on an empty disk, until it serves
    /// (`rejoin-bounded`).
    fresh_start: Option<Time>,
    /// When this incarnation last began to serve.
    serving_since: Time,
}

/// The message type of a handshake refusal.
fn refuse_type() -> u16 {
    message_type_named("Refuse")
}

fn message_type_named(name: &str) -> u16 {
    cairn_core::wire::MESSAGE_TYPES
        .iter()
        .find(|&&(_, n, _)| n == name)
        .map_or(u16::MAX, |&(t, ..)| t)
}

/// Counts the simulator keeps of what one incarnation of a node did, from
/// its inputs and outputs. The node's own metrics (what operators graph and
/// alert on) must agree: oracle `metrics-truthful`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counted {
    client_requests: u64,
    client_errors: u64,
    bad_contexts: u64,
    writes: u64,
    syncs: u64,
    undecodable: u64,
    unknown_messages: u64,
    /// Messages at a protocol above every one the node speaks (a peer still
    /// using a protocol agreed with an earlier incarnation).
    stale_protocol: u64,
    /// Records recovery found damaged (`CorruptRecord` events).
    corrupt_records: u64,
    /// Keys anti-entropy changed (`AntiEntropy` events).
    anti_entropy_keys: u64,
}

impl Counted {
    /// The same counts as the node reports them.
    fn reported(m: &cairn_core::node::Metrics) -> Counted {
        Counted {
            client_requests: m.client_requests,
            client_errors: m.client_errors,
            bad_contexts: m.bad_contexts,
            writes: m.writes,
            syncs: m.syncs,
            undecodable: m.undecodable,
            unknown_messages: m.unknown_messages,
            stale_protocol: m.stale_protocol,
            corrupt_records: m.corrupt_records,
            anti_entropy_keys: m.anti_entropy_keys,
        }
    }
}

impl Slot {
    /// Whether the node takes inputs (a stopped or halted one ignores them).
    fn takes_input(&self) -> bool {
        self.node
            .as_ref()
            .is_some_and(|n| !matches!(n.phase(), CorePhase::Halted | CorePhase::Stopped))
    }

    /// `metrics-truthful`: the node's counters agree with what it was seen
    /// to do since it started.
    fn check_metrics(&self, i: usize) -> Result<(), Violation> {
        let Some(node) = self.node.as_ref() else {
            return Ok(());
        };
        let reported = Counted::reported(node.metrics());
        if reported == self.counted {
            return Ok(());
        }
        Err(Violation::new(
            "metrics-truthful",
            format!(
                "n{} reports {reported:?} but was seen to do {:?}",
                i + 1,
                self.counted
            ),
        ))
    }
    /// The live schema of the node's durable image (decoded once per
    /// metadata record, not once per acknowledgement checked).
    fn durable_schema(&self) -> Option<u16> {
        let meta = self.disk.made_durable(cairn_core::storage::META_KEY)?;
        let mut cache = self.meta_cache.borrow_mut();
        if let Some((bytes, schema)) = cache.as_ref() {
            if bytes == meta {
                return *schema;
            }
        }
        let schema = oracle::durable_schema(meta);
        *cache = Some((meta.clone(), schema));
        schema
    }
}

/// Names a reply in an oracle's message; formatted only when one fails.
struct ReplyWhat<'a> {
    f: &'a InFlight,
    id: RequestId,
    node: usize,
    now: Time,
}

impl std::fmt::Display for ReplyWhat<'_> {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(out, "{} {} by ", self.f.step.kind().name(), self.id.0)?;
        match self.f.client {
            Some(c) => write!(out, "client {c}")?,
            None => write!(out, "the final reader")?,
        }
        write!(
            out,
            " via n{} (sent {}, answered {})",
            self.node + 1,
            self.f.sent_at,
            self.now
        )
    }
}

pub struct World {
    now: Time,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    slab: EventSlab,
    phase: Phase,
    seeds: Seeds,
    scenario: Scenario,
    options: Options,
    bugs: Vec<PlantedBug>,
    members: Vec<NodeId>,
    ring: Ring,
    quorum: Quorum,
    slots: Vec<Slot>,
    net: Network,
    nemesis: Nemesis,
    workload: Workload,
    history: History,
    trace: Trace,
    outbuf: Vec<Output>,
    outcome: Option<(Outcome, Time)>,
    partition_gen: u64,
    faults: FaultStats,
    events: u64,
    safety_end: Time,
    converged_at: Option<Time>,
    final_todo: BTreeSet<u32>,
    /// What each key's final read returned: the context and the writes it
    /// saw, for the final write.
    final_contexts: BTreeMap<u32, (Context, Vec<WriteId>)>,
    /// Requests a node took (it was running), with its incarnation then
    /// (`answered`).
    accepted: BTreeMap<RequestId, (usize, u32)>,
    draining: bool,
    /// Disk faults and clock steps (see [`crate::atlas`]).
    atlas: Atlas,
    /// Frames of hostile or confused peers (see [`crate::hostile`]).
    hostile: crate::hostile::Hostile,
    /// A hostile frame is being fed: its `Undecodable` event is expected.
    hostile_feed: bool,
    /// When a link was last cut or healed (`rejoin-bounded`).
    net_changed_at: Time,
    /// The message type of a handshake refusal (`refusal-heeded`).
    refuse_type: u16,
    reap_query_type: u16,
    script: script::Script,
    versions: versions::Driver,
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    };
    match crate::take_panic_location() {
        Some(loc) => format!("{msg} (at {loc})"),
        None => msg,
    }
}

impl World {
    pub fn new(cfg: &RunConfig, trace: Trace) -> World {
        let scenario = crate::atlas::specialise(&cfg.scenario, cfg.seed);
        let options = Options::derive(cfg.seed, &scenario);
        let seeds = Seeds::new(cfg.seed);
        let n = scenario.nodes as usize;
        let members: Vec<NodeId> = (1..=scenario.nodes).map(NodeId).collect();
        let quorum = Quorum {
            n: scenario.quorum.n,
            r: scenario.quorum.r,
            w: scenario.quorum.w,
        };
        let ring = Ring::new(
            &members,
            scenario.ring_partitions,
            scenario.vnodes,
            quorum.n,
        );
        let slots = (0..n)
            .map(|i| Slot {
                id: members[i],
                node: None,
                state: NodeState::Down,
                inc: 0,
                timer_gen: 0,
                timer_at: None,
                clock: Clock::new(options.clock.drift_ppm[i], options.clock.offset_us[i]),
                disk: Disk::new(
                    options.disk.sync_latency_us,
                    options.disk.read_latency_us,
                    seeds.node_subsystem(i as u32, "disk"),
                ),
                meta_cache: Default::default(),
                kept_epoch: None,
                counted: Counted::default(),
                last_io: None,
                stepped_back_at: None,
                sent: 0,
                fresh_start: None,
                serving_since: Time::ZERO,
            })
            .collect();
        let mut slots: Vec<Slot> = slots;
        for (i, s) in slots.iter_mut().enumerate() {
            s.disk.set_faults(options.deep.disk_faults(i));
        }
        let atlas = Atlas::new(options.deep.clone(), n, seeds.subsystem("atlas"));
        let workload = Workload::new(
            &options.workload,
            seeds.subsystem("workload"),
            seeds.subsystem("hostile"),
        );
        let history = History::new(&workload.keys);
        let script = script::Script::new(&scenario, workload.clients.len());
        let versions = versions::Driver::new(&scenario, &seeds);
        let hostile =
            crate::hostile::Hostile::new(options.hostile_ms, seeds.subsystem("hostile-peers"));
        World {
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: EventSlab::default(),
            phase: Phase::Safety,
            seeds,
            net: Network::new(n, &options.network, seeds.subsystem("network")),
            nemesis: Nemesis::new(&options.faults, n, seeds.subsystem("nemesis")),
            scenario,
            options,
            bugs: script::bugs(cfg),
            members,
            ring,
            quorum,
            slots,
            workload,
            history,
            trace,
            outbuf: Vec::with_capacity(256),
            outcome: None,
            partition_gen: 0,
            faults: FaultStats::default(),
            events: 0,
            safety_end: Time::ZERO,
            converged_at: None,
            final_todo: BTreeSet::new(),
            final_contexts: BTreeMap::new(),
            accepted: BTreeMap::new(),
            draining: false,
            atlas,
            hostile,
            hostile_feed: false,
            net_changed_at: Time::ZERO,
            refuse_type: refuse_type(),
            reap_query_type: message_type_named("ReapQuery"),
            script,
            versions,
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        debug_assert!(at >= self.now, "scheduling into the past");
        self.seq += 1;
        let slot = self.slab.put(ev);
        self.queue.push(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            slot,
        });
    }

    fn after(&mut self, us: u64, ev: Ev) {
        let at = Time(self.now.as_micros() + us);
        self.schedule(at, ev);
    }

    fn fail(&mut self, outcome: Outcome) {
        if self.outcome.is_none() {
            self.outcome = Some((outcome, self.now));
        }
    }

    fn violation(&mut self, v: Violation) {
        self.fail(Outcome::Safety(v));
    }

    fn record(&mut self, rec: Record<'_>) {
        self.trace.record(self.now, rec);
    }

    fn fault(&mut self, kind: FaultKind, node: Option<usize>, detail: u64) {
        if matches!(
            kind,
            FaultKind::Partition | FaultKind::Isolate | FaultKind::OneWay | FaultKind::Heal
        ) {
            self.net_changed_at = self.now;
        }
        let links = match kind {
            FaultKind::Partition | FaultKind::Isolate | FaultKind::OneWay => self.net.blocked(),
            _ => 0,
        };
        self.record(Record::Fault {
            kind,
            node: node.map_or(0, |i| i as u32 + 1),
            peer: 0,
            links,
            detail,
        });
    }

    // ----- the drive loop -------------------------------------------------

    /// Runs to the end: a pass, or the first failure.
    pub fn run(&mut self) -> (Outcome, Time) {
        self.record(Record::Phase { name: "safety" });
        let members: Vec<NodeId> = self.slots.iter().map(|s| s.id).collect();
        let model = crate::placement::Placement::new(
            &members,
            self.scenario.ring_partitions,
            self.scenario.vnodes,
            self.ring.n(),
        );
        if let Err(v) = model.check(&self.ring, &self.workload.keys) {
            self.violation(v);
        }
        if let Err(v) = oracle::check_token_bound(&self.seeds.context_key()) {
            self.violation(v);
        }
        for i in 0..self.slots.len() {
            self.start_node(i);
            if self.outcome.is_some() {
                break;
            }
        }
        self.versions_start();
        if !self.start_script() {
            for c in 0..self.workload.clients.len() as u32 {
                let d = self.workload.initial_delay_us() + crate::sweep::planted_jitter_us();
                self.after(d, Ev::ClientWake { client: c });
            }
        }
        if !self.nemesis.is_idle() {
            let d = self.nemesis.interval_us();
            self.after(d, Ev::Nemesis);
        }
        let safety_ms = self.scenario.safety_ms;
        if self.options.faults.require_crash {
            let d = self.nemesis.early_us(safety_ms);
            self.after(d, Ev::ForcedCrash);
        }
        if self.options.faults.require_partition {
            let d = self.nemesis.early_us(safety_ms);
            self.after(d, Ev::ForcedPartition);
        }
        if self.atlas.opts.ticks() {
            let d = self.atlas.tick_us();
            self.after(d, Ev::Chaos);
        }
        if self.hostile.is_on() {
            let d = self.hostile.tick_us();
            self.after(d, Ev::Hostile);
        }
        self.schedule(Time::from_millis(safety_ms), Ev::SafetyEnd);

        while self.outcome.is_none() && self.phase != Phase::Done {
            let Some(s) = self.queue.pop() else {
                self.fail(Outcome::Liveness("the event queue ran dry".into()));
                break;
            };
            debug_assert!(s.at >= self.now);
            self.now = s.at;
            self.events += 1;
            if self.events > MAX_EVENTS {
                self.fail(Outcome::Liveness(format!(
                    "no end after {MAX_EVENTS} events (a node keeps asking to be woken without progress?)"
                )));
                break;
            }
            let ev = self.slab.take(s.slot);
            self.handle(ev);
        }
        self.finish_script();
        if self.outcome.is_none() {
            for i in 0..self.slots.len() {
                if let Err(v) = self.slots[i].check_metrics(i) {
                    self.violation(v);
                    break;
                }
            }
        }
        let (outcome, at) = self.outcome.clone().unwrap_or((Outcome::Pass, self.now));
        let message = outcome.message();
        self.trace.record(
            self.now,
            Record::Outcome {
                code: outcome.code() as u8,
                message: &message,
            },
        );
        (outcome, at)
    }

    /// Stops a node and schedules its restart: after a drawn delay during
    /// the safety phase, at once during the liveness phase.
    fn stop_and_restart_later(&mut self, node: usize) {
        self.stop_node(node);
        let d = if self.phase == Phase::Safety {
            self.restart_delay_us(node)
        } else {
            0
        };
        let inc = self.slots[node].inc;
        self.after(d, Ev::Restart { node, inc });
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                to_inc,
                bytes,
                duplicate,
            } => self.deliver(from, to, to_inc, bytes, duplicate),
            Ev::Timer { node, inc, gen } => {
                let s = &mut self.slots[node];
                if s.inc == inc && s.timer_gen == gen && s.node.is_some() {
                    s.timer_at = None;
                    self.feed(node, Input::Timeout);
                    self.check_rejoin(node);
                }
            }
            Ev::SyncDone {
                node,
                inc,
                io,
                mark: _,
                failed: Some(why),
            } => {
                let s = &self.slots[node];
                if s.inc == inc && s.node.is_some() {
                    self.faults.sync_failures += 1;
                    let full = (why == SyncFailure::Full) as u64;
                    self.fault(FaultKind::SyncFailed, Some(node), full);
                    self.feed(node, |now| Input::IoDone {
                        now,
                        io,
                        result: IoResult::Failed(why.reason().into()),
                    });
                }
            }
            Ev::Chaos => self.chaos_step(),
            Ev::Hostile => self.hostile_step(),
            Ev::SyncDone {
                node,
                inc,
                io,
                mark,
                failed: None,
            } => {
                let s = &mut self.slots[node];
                if s.inc == inc && s.node.is_some() {
                    if s.takes_input() {
                        s.counted.syncs += 1;
                    }
                    let damaged = s.disk.stats.damaged;
                    s.disk.complete_sync(mark);
                    let d = s.disk.stats.damaged - damaged;
                    if d > 0 {
                        self.fault(FaultKind::DiskDamage, Some(node), d);
                    }
                    self.feed(node, |now| Input::IoDone {
                        now,
                        io,
                        result: IoResult::Synced,
                    });
                }
            }
            Ev::ReadDone { node, inc, io } => {
                let s = &mut self.slots[node];
                if s.inc == inc && s.node.is_some() {
                    let records = s.disk.load_all();
                    self.feed(node, |now| Input::IoDone {
                        now,
                        io,
                        result: IoResult::Loaded(records),
                    });
                }
            }
            Ev::BackupDone {
                node,
                inc,
                io,
                label,
                snapshot,
            } => {
                let s = &mut self.slots[node];
                if s.inc == inc && s.node.is_some() {
                    let result = match snapshot {
                        Some(snapshot) => {
                            s.disk.complete_backup(label, snapshot);
                            IoResult::Synced
                        }
                        None => IoResult::Failed(
                            "copying to the backup volume: no space left on device (ENOSPC)".into(),
                        ),
                    };
                    self.feed(node, |now| Input::IoDone { now, io, result });
                }
            }
            Ev::ClientWake { client } => self.client_wake(client),
            Ev::ClientDeadline { request } => self.client_deadline(request),
            Ev::Nemesis => self.nemesis_step(),
            Ev::ForcedCrash => self.forced_crash(),
            Ev::ForcedPartition => {
                if self.phase == Phase::Safety {
                    let side = self.nemesis.split();
                    self.apply_action(Action::Split(side));
                }
            }
            Ev::Restart { node, inc } => {
                let s = &self.slots[node];
                if s.state == NodeState::Down && s.inc == inc {
                    self.start_node(node);
                }
            }
            Ev::Stop { node, inc, halted } => {
                if self.slots[node].inc == inc && self.slots[node].node.is_some() {
                    if halted {
                        self.faults.halts += 1;
                        self.fault(FaultKind::Halted, Some(node), 0);
                    } else {
                        self.fault(FaultKind::ShutdownComplete, Some(node), 0);
                    }
                    // A node that refused to serve, or had not loaded its
                    // disk yet (epoch 0), persists nothing at its shutdown:
                    // its next start takes a new epoch.
                    let epoch = self.slots[node]
                        .node
                        .as_ref()
                        .filter(|n| n.refusal().is_none() && n.epoch() > 0)
                        .map(|n| n.epoch());
                    let damaged = self.slots[node].disk.stats.damaged;
                    self.stop_and_restart_later(node);
                    // (A disk that lost its journal at the stop is not
                    // undamaged: the node rightly takes a new epoch.)
                    let kept_meta = self.slots[node]
                        .disk
                        .durable(cairn_core::storage::META_KEY)
                        .is_some();
                    // Nor is one still holding a record damaged before the
                    // stop: the node finds it at load and takes a new epoch.
                    let disk = &self.slots[node].disk;
                    if !halted && disk.stats.damaged == damaged && kept_meta && !disk.holds_damage()
                    {
                        self.slots[node].kept_epoch = epoch;
                    }
                }
            }
            Ev::ShutdownDeadline { node, inc } => {
                let s = &self.slots[node];
                if s.inc == inc && s.state == NodeState::ShuttingDown {
                    self.faults.shutdown_kills += 1;
                    self.fault(FaultKind::ShutdownKilled, Some(node), 0);
                    // A clean shutdown needs one sync; a failed sync halts
                    // the node instead. One still draining at the bound
                    // hangs an operator's SIGTERM.
                    self.violation(Violation::new(
                        "shutdown-completes",
                        format!(
                            "n{} did not finish a clean shutdown within {} ms",
                            node + 1,
                            self.options.faults.shutdown_bound_ms
                        ),
                    ));
                    self.stop_and_restart_later(node);
                }
            }
            Ev::Heal { gen } => {
                if gen == self.partition_gen && self.net.blocked() != 0 {
                    self.net.heal();
                    self.faults.heals += 1;
                    self.fault(FaultKind::Heal, None, 0);
                }
            }
            Ev::Scripted { index } => self.scripted_fault(index),
            Ev::Versions(ev) => self.versions_handle(ev),
            Ev::SafetyEnd => self.begin_liveness(),
            Ev::ConvergenceCheck => self.convergence_check(),
            Ev::ReapCheck => self.reap_check(),
            Ev::FinalRead { key } => self.final_read(key),
            Ev::FinalWrite { key } => self.final_write(key),
            Ev::LivenessDeadline if self.options.deep.unlimited => {
                // Convergence assumes durability; with the atlas lifted only
                // the safety oracles apply.
                if matches!(
                    self.phase,
                    Phase::Liveness | Phase::Reaping | Phase::FinalReads | Phase::FinalWrites
                ) {
                    self.record(Record::Phase {
                        name: "liveness-not-judged",
                    });
                    self.phase = Phase::Done;
                }
            }
            Ev::LivenessDeadline => {
                if matches!(
                    self.phase,
                    Phase::Liveness | Phase::Reaping | Phase::FinalReads | Phase::FinalWrites
                ) {
                    let gaps = if self.phase == Phase::Reaping {
                        let mut left = self.tombstones_left();
                        left.truncate(8);
                        left
                    } else {
                        self.convergence_gaps(8)
                    };
                    let what = if self.phase == Phase::FinalReads {
                        format!(
                            "final reads of {} key(s) did not succeed",
                            self.final_todo.len()
                        )
                    } else if self.phase == Phase::Reaping {
                        format!(
                            "[reaped] {} tombstone(s) were not reaped",
                            self.tombstones_left().len()
                        )
                    } else if self.phase == Phase::FinalWrites {
                        format!(
                            "[progress] final writes of {} key(s) were not acknowledged",
                            self.final_todo.len()
                        )
                    } else {
                        "the cluster did not converge".to_string()
                    };
                    self.fail(Outcome::Liveness(format!(
                        "{what} within {} s of healing: {}",
                        self.scenario.liveness_ms / 1000,
                        if gaps.is_empty() {
                            "no gap found".to_string()
                        } else {
                            gaps.join("; ")
                        }
                    )));
                }
            }
        }
    }

    // ----- nodes ----------------------------------------------------------

    fn node_config(&self, i: usize) -> NodeConfig {
        let s = &self.slots[i];
        let mut cfg = NodeConfig::new(
            s.id,
            self.members.clone(),
            self.seeds.node_core(i as u32, s.inc),
        );
        cfg.quorum = self.quorum;
        cfg.context_key = self.seeds.context_key();
        cfg.release = self.versions.release_of(i);
        cfg.initial_cluster_version = Some(self.versions.initial_cluster_version());
        // Operators leave `initial_cluster_state` at its default: a node
        // whose disk came back empty must find out from its peers.
        cfg.initial_cluster_state = InitialClusterState::New;
        cfg.partitions = self.scenario.ring_partitions;
        cfg.vnodes = self.scenario.vnodes;
        self.scenario.timing.apply(&mut cfg.timing);
        // Keys and values exactly as long as the limits allow: every write
        // sits on the edge, which must be accepted (`request-valid`).
        cfg.limits.max_key_len = self
            .workload
            .keys
            .iter()
            .map(|k| k.len())
            .max()
            .unwrap_or(1);
        cfg.limits.max_value_len = (self.workload.opts.value_len as usize).max(8);
        self.scenario.limits.apply(&mut cfg.limits);
        for b in &self.bugs {
            b.apply(&mut cfg.bugs);
        }
        cfg
    }

    fn start_node(&mut self, i: usize) {
        debug_assert!(!self.draining);
        self.slots[i].inc += 1;
        let cfg = self.node_config(i);
        let now = self.slots[i].clock.local(self.now);
        let inc = self.slots[i].inc;
        if inc > 1 {
            self.faults.restarts += 1;
            self.fault(FaultKind::Restart, Some(i), inc as u64);
        }
        self.record(Record::NodeEvent {
            node: i as u32 + 1,
            kind: NodeEventKind::Started,
            detail: inc as u64,
        });
        // The operator's mistakes first: each must be refused (and no node
        // exists on it), each edge of the rules accepted.
        match catch_unwind(AssertUnwindSafe(|| {
            crate::misconfig::judge(i + 1, &cfg, now)
        })) {
            Ok(Ok(())) => {}
            Ok(Err(v)) => self.violation(v),
            Err(p) => {
                let msg = panic_message(&*p);
                self.fail(Outcome::Panic(format!(
                    "n{} panicked on a misconfiguration: {msg}",
                    i + 1
                )));
                return;
            }
        }
        self.slots[i].counted = Counted::default();
        self.slots[i].last_io = None;
        self.slots[i].fresh_start = (self.slots[i].disk.durable_len() == 0).then_some(self.now);
        match catch_unwind(AssertUnwindSafe(|| Node::new(cfg, now))) {
            Ok(Err(e)) => self.violation(Violation::new(
                "config-accepted",
                format!("n{} refused the configuration it was given: {e}", i + 1),
            )),
            Ok(Ok(node)) => {
                let s = &mut self.slots[i];
                s.node = Some(node);
                s.state = NodeState::Up;
                s.timer_at = None;
                s.timer_gen += 1;
                self.drain(i);
            }
            Err(p) => {
                let msg = panic_message(&*p);
                self.fail(Outcome::Panic(format!(
                    "n{} panicked in Node::new: {msg}",
                    i + 1
                )));
            }
        }
    }

    /// Takes a node out: the process is gone and its unsynced writes with it.
    fn stop_node(&mut self, i: usize) {
        if let Err(v) = self.slots[i].check_metrics(i) {
            self.violation(v);
        }
        // Set again by a clean stop, after this.
        self.slots[i].kept_epoch = None;
        let s = &mut self.slots[i];
        s.node = None;
        s.state = NodeState::Down;
        s.timer_at = None;
        s.timer_gen += 1;
        s.disk.crash();
        let damaged = s.disk.stats.damaged;
        s.disk.maybe_corrupt();
        let forgot = s.disk.maybe_lose_journal() > 0;
        let d = s.disk.stats.damaged - damaged;
        if forgot {
            self.versions.oracles.journal_lost(i);
        }
        if d > 0 {
            self.faults.disk_damage += 1;
            self.fault(FaultKind::DiskDamage, Some(i), d);
        }
    }

    fn feed(&mut self, i: usize, make: impl FnOnce(Time) -> Input) {
        debug_assert!(
            !self.draining,
            "a node was re-entered while its outputs were applied"
        );
        let local = self.slots[i].clock.local(self.now);
        let input = make(local);
        let Some(node) = self.slots[i].node.as_mut() else {
            return;
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| node.handle_input(input))) {
            let msg = panic_message(&*p);
            self.fail(Outcome::Panic(format!(
                "n{} panicked in handle_input at {}: {msg}",
                i + 1,
                self.now
            )));
            return;
        }
        self.drain(i);
    }

    /// Drains a node's outputs until `Timeout`, then applies them in order.
    fn drain(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.outbuf);
        buf.clear();
        let Some(node) = self.slots[i].node.as_mut() else {
            self.outbuf = buf;
            return;
        };
        let polled = catch_unwind(AssertUnwindSafe(|| loop {
            match node.poll_output() {
                Output::Timeout(at) => return Some(at),
                o => {
                    buf.push(o);
                    if buf.len() > MAX_OUTPUTS_PER_DRAIN {
                        return None;
                    }
                }
            }
        }));
        let timeout = match polled {
            Ok(Some(at)) => at,
            Ok(None) => {
                self.violation(Violation::new(
                    "bounded-outputs",
                    format!(
                        "n{} produced more than {MAX_OUTPUTS_PER_DRAIN} outputs in one drain",
                        i + 1
                    ),
                ));
                self.outbuf = buf;
                return;
            }
            Err(p) => {
                let msg = panic_message(&*p);
                self.fail(Outcome::Panic(format!(
                    "n{} panicked in poll_output at {}: {msg}",
                    i + 1,
                    self.now
                )));
                self.outbuf = buf;
                return;
            }
        };
        self.draining = true;
        for o in buf.drain(..) {
            self.apply(i, o);
        }
        self.draining = false;
        self.outbuf = buf;
        self.arm(i, timeout);
    }

    fn arm(&mut self, i: usize, local_at: Time) {
        let now = self.now;
        let s = &mut self.slots[i];
        if s.node.is_none() {
            return;
        }
        let at = s.clock.to_sim(local_at, now);
        if at == s.timer_at {
            return;
        }
        s.timer_gen += 1;
        s.timer_at = at;
        let (inc, gen) = (s.inc, s.timer_gen);
        if let Some(at) = at {
            self.schedule(at, Ev::Timer { node: i, inc, gen });
        }
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        let i = (id.0 as usize).checked_sub(1)?;
        (i < self.slots.len()).then_some(i)
    }

    fn apply(&mut self, i: usize, o: Output) {
        if let Output::Write { io, .. }
        | Output::Sync { io }
        | Output::Read { io, .. }
        | Output::Backup { io, .. } = &o
        {
            // A driver matches completions to requests by io id.
            let last = self.slots[i].last_io.replace(*io);
            if last.is_some_and(|last| *io <= last) {
                self.violation(Violation::new(
                    "io-order",
                    format!(
                        "n{} asked for io {} after io {}: io ids must increase",
                        i + 1,
                        io.0,
                        last.map_or(0, |l| l.0)
                    ),
                ));
            }
        }
        match o {
            Output::Send { to, bytes } => {
                self.slots[i].sent += 1;
                // `refusal-heeded`: a node that refuses a peer holds no
                // protocol with it.
                if crate::trace::message_type(&bytes) == self.refuse_type {
                    if let Some(p) = self.slots[i]
                        .node
                        .as_ref()
                        .and_then(|n| n.peer_protocol(to))
                    {
                        self.violation(Violation::new(
                            "refusal-heeded",
                            format!(
                                "n{} refused {to} but still holds protocol {p} with it",
                                i + 1
                            ),
                        ));
                    }
                }
                // `protocol-kept`: a message (not a handshake) travels at
                // the protocol its sender agreed with the receiver.
                let t = crate::trace::message_type(&bytes);
                if !cairn_core::wire::is_handshake_type(t) && bytes.len() >= 6 {
                    let sent = u16::from_le_bytes([bytes[4], bytes[5]]);
                    let agreed = self.slots[i]
                        .node
                        .as_ref()
                        .and_then(|n| n.peer_protocol(to));
                    if agreed.is_some_and(|p| p != sent) {
                        self.violation(Violation::new(
                            "protocol-kept",
                            format!(
                                "n{} sent {} to {to} at protocol {sent}, not the {} they agreed",
                                i + 1,
                                crate::trace::message_name(t),
                                agreed.unwrap_or(0)
                            ),
                        ));
                    }
                }
                if crate::trace::message_type(&bytes) == self.reap_query_type {
                    if let Some(n) = self.slots[i].node.as_ref() {
                        if let Err(v) = crate::oracle::check_reap_query(n, &bytes) {
                            self.violation(v);
                        }
                    }
                }
                let Some(j) = self.index_of(to) else {
                    self.violation(Violation::new(
                        "membership",
                        format!("n{} sent a message to {to}, which is not a member", i + 1),
                    ));
                    return;
                };
                self.send(i, j, bytes);
            }
            Output::Write { key, value, .. } => {
                self.slots[i].counted.writes += 1;
                if value.is_none() && key.first() == Some(&b'h') {
                    self.check_hint_removal(i, &key);
                }
                self.versions_on_write(i, &key, value.as_ref());
                self.slots[i].disk.write(key, value)
            }
            Output::Sync { io } => {
                let (at, mark) = self.slots[i].disk.sync(self.now);
                let failed = self.slots[i].disk.sync_fails(self.now);
                let inc = self.slots[i].inc;
                self.schedule(
                    at,
                    Ev::SyncDone {
                        node: i,
                        inc,
                        io,
                        mark,
                        failed,
                    },
                );
            }
            Output::Read { io, request } => {
                let ReadRequest::All = request;
                let at = self.slots[i].disk.read_done_at(self.now);
                let inc = self.slots[i].inc;
                self.schedule(at, Ev::ReadDone { node: i, inc, io });
            }
            Output::Backup { io, info } => {
                let disk = &mut self.slots[i].disk;
                let (at, snapshot) = disk.start_backup(self.now);
                let snapshot = (!disk.backup_fails()).then_some(snapshot);
                let inc = self.slots[i].inc;
                self.schedule(
                    at,
                    Ev::BackupDone {
                        node: i,
                        inc,
                        io,
                        label: info.label,
                        snapshot,
                    },
                );
            }
            Output::Reply { id, response } => {
                if let Response::Error(e) = &response {
                    let c = &mut self.slots[i].counted;
                    c.client_errors += 1;
                    c.bad_contexts += matches!(e, ClientError::BadContext(_)) as u64;
                }
                self.on_reply(i, id, response)
            }
            Output::Event(e) => self.on_event(i, e),
            Output::Timeout(_) => unreachable!("drain stops at Timeout"),
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        self.versions_on_event(i, &e);
        match &e {
            Event::Undecodable { .. } => self.slots[i].counted.undecodable += 1,
            Event::UnknownMessage { .. } => self.slots[i].counted.unknown_messages += 1,
            Event::CorruptRecord { key } => {
                self.slots[i].counted.corrupt_records += 1;
                // Damage is the disk's doing, never the node's own: a
                // record it wrote and cannot read back is a codec bug.
                if !self.slots[i].disk.is_damaged(key) {
                    self.violation(Violation::new(
                        "corrupt-truthful",
                        format!(
                            "n{} reports the record {key:?} damaged, but its disk kept it as written",
                            i + 1
                        ),
                    ));
                }
            }
            Event::AntiEntropy { keys, .. } => {
                self.slots[i].counted.anti_entropy_keys += *keys as u64
            }
            _ => {}
        }
        let node = i as u32 + 1;
        if let Err(v) = self.check_limits(i, &e) {
            self.violation(v);
        }
        if let Some(n) = self.slots[i].node.as_ref() {
            if let Err(v) = oracle::check_status(n, &e) {
                self.violation(v);
            }
        }
        match e {
            Event::WriteIssued {
                request,
                key,
                dot,
                tombstone,
            } => {
                self.record(Record::NodeEvent {
                    node,
                    kind: NodeEventKind::WriteIssued,
                    detail: request.0,
                });
                let forgotten = match self.history.first_issue_key(dot) {
                    Some(k) => {
                        let k = k.clone();
                        !self.dot_survives(&k, dot)
                    }
                    None => false,
                };
                if let Err(v) = self
                    .history
                    .write_issued(request, &key, dot, tombstone, node, forgotten)
                {
                    self.violation(v);
                }
            }
            Event::Undecodable { from, reason } => {
                self.record(Record::NodeEvent {
                    node,
                    kind: NodeEventKind::Undecodable,
                    detail: from.0 as u64,
                });
                if self.hostile_feed {
                    // Judged by `hostile-frame`.
                    return;
                }
                self.violation(Violation::new(
                    "decodable",
                    format!("n{node} could not decode a message from {from}: {reason}"),
                ));
            }
            Event::Recovered { epoch, corrupt, .. } => {
                self.record(Record::NodeEvent {
                    node,
                    kind: NodeEventKind::Recovered,
                    detail: epoch as u64,
                });
                let reported = self.slots[i].counted.corrupt_records;
                if corrupt as u64 != reported {
                    self.violation(Violation::new(
                        "metrics-truthful",
                        format!(
                            "n{node} recovered with {corrupt} damaged records but reported {reported} (`CorruptRecord` events)"
                        ),
                    ));
                }
                // After a clean shutdown on an undamaged disk a node keeps
                // its epoch (a restored one re-learns it; a refusing one
                // reports none).
                let restored = self.slots[i]
                    .disk
                    .durable(cairn_core::storage::RESTORED_KEY)
                    .is_some();
                if let Some(kept) = self.slots[i].kept_epoch.take() {
                    if epoch != kept && epoch != 0 && !restored {
                        self.violation(Violation::new(
                            "clean-restart",
                            format!(
                                "n{node} started in epoch {epoch} after a clean shutdown in epoch {kept} on an undamaged disk"
                            ),
                        ));
                    } else if epoch == kept {
                        // And it serves in it (it must not take a new one
                        // while it rejoins).
                        self.slots[i].kept_epoch = Some(kept);
                    }
                }
            }
            Event::Serving => {
                if let Some(kept) = self.slots[i].kept_epoch.take() {
                    let epoch = self.slots[i].node.as_ref().map_or(kept, |n| n.epoch());
                    if epoch != kept {
                        self.violation(Violation::new(
                            "clean-restart",
                            format!(
                                "n{node} serves in epoch {epoch} after a clean shutdown in epoch {kept} on an undamaged disk"
                            ),
                        ));
                    }
                }
                self.slots[i].serving_since = self.now;
                self.slots[i].fresh_start = None;
                self.record(Record::NodeEvent {
                    node,
                    kind: NodeEventKind::Serving,
                    detail: 0,
                })
            }
            Event::ShutdownComplete => {
                // Every request the node took is answered (an error will
                // do) before it stops: a client must not wait out its
                // timeout on a process that is gone.
                let inc = self.slots[i].inc;
                let open: Vec<u64> = self
                    .accepted
                    .iter()
                    .filter(|(_, &(n, at))| n == i && at == inc)
                    .map(|(id, _)| id.0)
                    .collect();
                if !open.is_empty() {
                    self.violation(Violation::new(
                        "shutdown-answers",
                        format!(
                            "n{node} completed its shutdown with {} client request(s) unanswered: {open:?}",
                            open.len()
                        ),
                    ));
                }
                let s = &self.slots[i];
                if s.state == NodeState::ShuttingDown {
                    let inc = s.inc;
                    self.schedule(
                        self.now,
                        Ev::Stop {
                            node: i,
                            inc,
                            halted: false,
                        },
                    );
                }
            }
            Event::Halted { .. } => {
                let inc = self.slots[i].inc;
                self.slots[i].state = NodeState::ShuttingDown;
                self.schedule(
                    self.now,
                    Ev::Stop {
                        node: i,
                        inc,
                        halted: true,
                    },
                );
            }
            _ => {}
        }
    }

    /// `limits-kept`: a write a coordinator issues leaves it at most
    /// `max_siblings` siblings of the key (a write that would leave more is
    /// refused), and a node holds at most `max_hints` hints.
    fn check_limits(&self, i: usize, e: &Event) -> Result<(), Violation> {
        let Some(n) = self.slots[i].node.as_ref() else {
            return Ok(());
        };
        let limits = &n.config().limits;
        match e {
            Event::WriteIssued { key, .. } => {
                let siblings = n.key_state(key).map_or(0, |s| s.siblings().len());
                if siblings > limits.max_siblings {
                    return Err(Violation::new(
                        "limits-kept",
                        format!(
                            "n{} issued a write that left {siblings} siblings of {key:?}, above max_siblings = {}",
                            i + 1,
                            limits.max_siblings
                        ),
                    ));
                }
            }
            Event::HintStored { .. } if n.hint_count() > limits.max_hints => {
                return Err(Violation::new(
                    "limits-kept",
                    format!(
                        "n{} holds {} hints, above max_hints = {}",
                        i + 1,
                        n.hint_count(),
                        limits.max_hints
                    ),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// `hints-counted`: once converged, the hints a node says it holds are
    /// the hint records on its disk.
    fn check_hint_records(&self) -> Result<(), Violation> {
        for (i, s) in self.slots.iter().enumerate() {
            let Some(n) = s.node.as_ref() else { continue };
            let mut keys: Vec<&Bytes> = s
                .disk
                .all_records()
                .map(|(k, _)| k)
                .filter(|k| k.first() == Some(&b'h') && s.disk.latest(k).is_some())
                .collect();
            keys.sort_unstable();
            keys.dedup();
            if keys.len() != n.hint_count() {
                return Err(Violation::new(
                    "hints-counted",
                    format!(
                        "n{} says it holds {} hints, but its disk holds {} hint records",
                        i + 1,
                        n.hint_count(),
                        keys.len()
                    ),
                ));
            }
        }
        Ok(())
    }

    // ----- network --------------------------------------------------------

    fn send(&mut self, from: usize, to: usize, bytes: Bytes) {
        match self.net.send(self.now, from, to) {
            Fate::Dropped(reason) => {
                let msg_type = message_type(&bytes);
                self.record(Record::Drop {
                    from: from as u32 + 1,
                    to: to as u32 + 1,
                    msg_type,
                    len: bytes.len() as u32,
                    reason,
                });
            }
            Fate::Arrives { at, duplicate } => {
                let to_inc = self.slots[to].inc;
                if let Some(d) = duplicate {
                    self.schedule(
                        d,
                        Ev::Deliver {
                            from,
                            to,
                            to_inc,
                            bytes: bytes.clone(),
                            duplicate: true,
                        },
                    );
                }
                self.schedule(
                    at,
                    Ev::Deliver {
                        from,
                        to,
                        to_inc,
                        bytes,
                        duplicate: false,
                    },
                );
            }
        }
    }

    fn deliver(&mut self, from: usize, to: usize, to_inc: u32, bytes: Bytes, duplicate: bool) {
        let msg_type = message_type(&bytes);
        let len = bytes.len() as u32;
        let reason = match self.net.arrive(from, to) {
            Err(r) => Some(r),
            Ok(()) if self.slots[to].node.is_none() || self.slots[to].inc != to_inc => {
                self.net.stats.count_drop(DropReason::NodeDown);
                Some(DropReason::NodeDown)
            }
            Ok(()) => None,
        };
        let (f, t) = (from as u32 + 1, to as u32 + 1);
        if let Some(reason) = reason {
            self.record(Record::Drop {
                from: f,
                to: t,
                msg_type,
                len,
                reason,
            });
            return;
        }
        self.net.stats.delivered += 1;
        self.record(Record::Deliver {
            from: f,
            to: t,
            msg_type,
            len,
            duplicate,
        });
        if let Some(node) = self.slots[to].node.as_ref() {
            if self.slots[to].takes_input() && hostile_peers::is_stale(node, &bytes) {
                self.slots[to].counted.stale_protocol += 1;
            }
        }
        let id = self.slots[from].id;
        let refusal = msg_type == self.refuse_type && self.slots[to].takes_input();
        self.feed(to, |now| Input::Message {
            now,
            from: id,
            bytes,
        });
        // `refusal-heeded`: a peer's refusal ends the agreement with it.
        if refusal {
            let kept = self.slots[to]
                .node
                .as_ref()
                .and_then(|n| n.peer_protocol(id));
            if let Some(p) = kept {
                self.violation(Violation::new(
                    "refusal-heeded",
                    format!(
                        "n{} still holds protocol {p} with {id} after {id} refused it",
                        to + 1
                    ),
                ));
            }
        }
    }

    // ----- clients --------------------------------------------------------

    /// Nodes a client may talk to: running and serving ones if any, else any
    /// running one.
    fn candidates(&self) -> Vec<usize> {
        let up: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].state == NodeState::Up)
            .collect();
        let serving: Vec<usize> = up
            .iter()
            .copied()
            .filter(|&i| self.slots[i].node.as_ref().is_some_and(|n| n.is_serving()))
            .collect();
        if serving.is_empty() {
            up
        } else {
            serving
        }
    }

    fn client_wake(&mut self, c: u32) {
        let state = std::mem::replace(&mut self.workload.clients[c as usize], ClientState::Idle);
        if self.phase != Phase::Safety {
            self.workload.clients[c as usize] = match state {
                ClientState::Busy(r) => ClientState::Busy(r),
                _ => ClientState::Stopped,
            };
            return;
        }
        let candidates = self.candidates();
        match state {
            ClientState::Busy(r) => {
                self.workload.clients[c as usize] = ClientState::Busy(r);
            }
            ClientState::Stopped => {
                self.workload.clients[c as usize] = ClientState::Stopped;
            }
            ClientState::Ready(cont) => {
                if candidates.is_empty() {
                    self.workload.clients[c as usize] = ClientState::Ready(cont);
                    self.after(RETRY_US, Ev::ClientWake { client: c });
                    return;
                }
                let node = match self.scripted_then_node(c, &candidates) {
                    Some(n) => n,
                    None => self.workload.pick(&candidates),
                };
                self.note_then_node(c, node);
                self.send_write(Some(c), node, cont);
            }
            ClientState::Idle => {
                if self.script.is_scripted() {
                    return self.scripted_wake(c, &candidates);
                }
                if candidates.is_empty() {
                    self.after(RETRY_US, Ev::ClientWake { client: c });
                    return;
                }
                let node = self.workload.pick(&candidates);
                let (plan, key) = self.workload.pick_plan();
                self.note_op(c, plan, key, node);
                self.start_plan(c, plan, key, node);
            }
        }
    }

    /// Sends the first request of an operation.
    fn start_plan(&mut self, c: u32, plan: Plan, key: u32, node: usize) {
        let keys = self.workload.keys.len() as u32;
        match plan {
            Plan::BlindPut => self.send_write(Some(c), node, Continuation::blind(key)),
            Plan::ReadModifyWrite => self.send_get(Some(c), node, key, Then::Put),
            Plan::Delete => self.send_get(Some(c), node, key, Then::Delete),
            Plan::Read => self.send_get(Some(c), node, key, Then::Nothing),
            Plan::StaleWrite => match self.workload.take_kept(c, key) {
                Some(kept) => {
                    self.workload.stats.stale_writes += 1;
                    let cont = Continuation {
                        key,
                        tombstone: false,
                        preds: kept.preds,
                        context: kept.context,
                        hostile: None,
                    };
                    self.send_write(Some(c), node, cont);
                }
                // Nothing kept yet: an ordinary read-modify-write.
                None => self.send_get(Some(c), node, key, Then::Put),
            },
            Plan::Hostile(forgery @ (Forgery::Forged | Forgery::OldFormat)) => {
                let cont = self.forged_write(key, node, forgery);
                self.send_write(Some(c), node, cont);
            }
            Plan::Hostile(Forgery::Replayed) if keys > 1 => {
                let then = Then::Hostile {
                    forgery: Forgery::Replayed,
                    target: key,
                };
                self.send_get(Some(c), node, (key + 1) % keys, then);
            }
            Plan::Hostile(Forgery::Truncated) => {
                let then = Then::Hostile {
                    forgery: Forgery::Truncated,
                    target: key,
                };
                self.send_get(Some(c), node, key, then);
            }
            // One key: nothing to replay from.
            Plan::Hostile(Forgery::Replayed) => {
                let cont = self.forged_write(key, node, Forgery::Forged);
                self.send_write(Some(c), node, cont);
            }
        }
    }

    /// A hostile write of `key` sent to `node`, whose context claims far
    /// more of every other node than it issued (the highest epoch each is
    /// known to have used, and a couple beyond).
    fn forged_write(&mut self, key: u32, node: usize, forgery: Forgery) -> Continuation {
        let epochs: Vec<(NodeId, u32)> = self
            .slots
            .iter()
            .map(|s| (s.id, s.node.as_ref().map_or(0, |n| n.epoch()).max(s.inc)))
            .collect();
        let coordinator = self.slots[node].id;
        let context =
            self.workload
                .forged_context(&epochs, coordinator, forgery == Forgery::OldFormat);
        Continuation {
            key,
            tombstone: self.workload.hostile_tombstone(),
            preds: Vec::new(),
            context,
            hostile: Some(forgery),
        }
    }

    fn send_get(&mut self, client: Option<u32>, node: usize, key: u32, then: Then) {
        let id = self.workload.next_request();
        // With the fault atlas lifted an acknowledged write may be gone:
        // lost-ack and stale-read do not apply.
        let acked_before = if self.options.deep.unlimited {
            Vec::new()
        } else {
            self.history.frontier(key).to_vec()
        };
        let request = Request::Get {
            key: self.workload.keys[key as usize].clone(),
        };
        self.workload.stats.gets += 1;
        self.dispatch(
            id,
            InFlight {
                client,
                node,
                key,
                step: Step::Get { then },
                sent_at: self.now,
                acked_before,
                hostile: None,
            },
            request,
            0,
        );
    }

    fn send_write(&mut self, c: Option<u32>, node: usize, cont: Continuation) {
        let id = self.workload.next_request();
        // A hostile write saw nothing, whatever its context claims.
        debug_assert!(cont.hostile.is_none() || cont.preds.is_empty());
        let write = self
            .history
            .begin_write(cont.key, id, &cont.preds, cont.tombstone, self.now);
        if let Some(forgery) = cont.hostile {
            self.workload.stats.hostile_sent[forgery.index()] += 1;
        }
        let key = self.workload.keys[cont.key as usize].clone();
        let (request, step) = if cont.tombstone {
            self.workload.stats.deletes += 1;
            (
                Request::Delete {
                    key,
                    context: cont.context,
                },
                Step::Delete { write },
            )
        } else {
            self.workload.stats.puts += 1;
            let value = encode_value(write, self.workload.opts.value_len as usize);
            (
                Request::Put {
                    key,
                    value,
                    context: cont.context,
                },
                Step::Put { write },
            )
        };
        self.dispatch(
            id,
            InFlight {
                client: c,
                node,
                key: cont.key,
                step,
                sent_at: self.now,
                acked_before: Vec::new(),
                hostile: cont.hostile,
            },
            request,
            write,
        );
    }

    fn dispatch(&mut self, id: RequestId, f: InFlight, request: Request, write: WriteId) {
        let node = f.node;
        self.record(Record::ClientSend {
            client: f.client.map_or(u32::MAX, |c| c),
            request: id.0,
            node: node as u32 + 1,
            op: f.step.kind(),
            key: f.key,
            write,
        });
        if let Some(c) = f.client {
            self.workload.clients[c as usize] = ClientState::Busy(id);
        }
        self.workload.stats.sent += 1;
        self.workload.inflight.insert(id, f);
        if self.slots[node].takes_input() {
            self.slots[node].counted.client_requests += 1;
            self.accepted.insert(id, (node, self.slots[node].inc));
        }
        let timeout = self.workload.opts.client_timeout_ms * 1000;
        self.after(timeout, Ev::ClientDeadline { request: id });
        self.feed(node, |now| Input::Client { now, id, request });
    }

    /// The client is done with its current operation.
    fn client_next(&mut self, c: u32) {
        if self.phase == Phase::Safety {
            self.workload.clients[c as usize] = ClientState::Idle;
            let d = if self.script.is_scripted() {
                0
            } else {
                self.workload.think_us()
            };
            self.after(d, Ev::ClientWake { client: c });
        } else {
            self.workload.clients[c as usize] = ClientState::Stopped;
        }
    }

    fn client_deadline(&mut self, request: RequestId) {
        let Some(f) = self.workload.inflight.remove(&request) else {
            return;
        };
        if let Some((i, inc)) = self.accepted.remove(&request) {
            let s = &self.slots[i];
            // Not judged on a node whose clock ever stepped backwards: its
            // requests can outlast the client's timeout after a step
            // (clock-jumps seeds 33, 35 and 54 of 0..60), not yet explained.
            let stepped = s.stepped_back_at.is_some();
            if s.inc == inc && s.node.is_some() && !stepped {
                // The node took the request and is still the same process:
                // it answers every request it takes within its own request
                // timeout (a quorum timeout at worst), or fails it when it
                // halts or shuts down.
                return self.violation(Violation::new(
                    "answered",
                    format!(
                        "n{} took request {} at {} and, still running, never answered it in {} ms",
                        i + 1,
                        request.0,
                        f.sent_at,
                        self.workload.opts.client_timeout_ms
                    ),
                ));
            }
        }
        self.workload.stats.indeterminate += 1;
        self.record(Record::ClientDone {
            client: f.client.map_or(u32::MAX, |c| c),
            request: request.0,
            outcome: OpOutcome::GaveUp,
            siblings: 0,
        });
        match f.client {
            Some(c) => self.client_next(c),
            None => self.final_retry(&f),
        }
    }

    fn on_reply(&mut self, i: usize, id: RequestId, response: Response) {
        if self.versions_on_reply(i, id, &response) {
            return;
        }
        self.accepted.remove(&id);
        let Some(f) = self.workload.inflight.remove(&id) else {
            self.workload.stats.late_replies += 1;
            return;
        };
        if f.node != i {
            self.violation(Violation::new(
                "reply-routing",
                format!(
                    "request {} was sent to n{} but answered by n{}",
                    id.0,
                    f.node + 1,
                    i + 1
                ),
            ));
            return;
        }
        let client = f.client.map_or(u32::MAX, |c| c);
        let what = ReplyWhat {
            f: &f,
            id,
            node: i,
            now: self.now,
        };
        match (&f.step, response) {
            (Step::Get { then }, Response::Read { siblings, context }) => {
                self.workload.stats.ok += 1;
                self.record(Record::ClientDone {
                    client,
                    request: id.0,
                    outcome: OpOutcome::Read,
                    siblings: siblings.len() as u32,
                });
                let writes = match self.history.resolve(f.key, &siblings, &what) {
                    Ok(w) => w,
                    Err(v) => return self.violation(v),
                };
                self.workload.stats.reads_checked += 1;
                let verdict =
                    oracle::check_read(&self.history, f.key, &writes, &f.acked_before, &what);
                self.record(Record::Check {
                    oracle: "read",
                    key: f.key,
                    request: id.0,
                    ok: verdict.is_ok(),
                });
                if let Err(v) = verdict {
                    return self.violation(v);
                }
                if let Err(v) = oracle::check_context(&context, &what) {
                    return self.violation(v);
                }
                if let Some(c) = f.client {
                    self.workload.keep(c, f.key, &context, &writes);
                }
                match (then, f.client) {
                    (Then::Final, _) => {
                        if self.final_todo.remove(&f.key) {
                            self.final_contexts.insert(f.key, (context, writes));
                        }
                        if self.final_todo.is_empty() {
                            self.begin_final_writes();
                        }
                    }
                    (Then::Put | Then::Delete, Some(c)) if self.phase == Phase::Safety => {
                        self.workload.clients[c as usize] = ClientState::Ready(Continuation {
                            key: f.key,
                            tombstone: *then == Then::Delete,
                            preds: writes,
                            context,
                            hostile: None,
                        });
                        self.schedule(self.now, Ev::ClientWake { client: c });
                    }
                    (&Then::Hostile { forgery, target }, Some(c))
                        if self.phase == Phase::Safety =>
                    {
                        let made_up = match forgery {
                            Forgery::Replayed => Some(context).filter(|x| !x.is_empty()),
                            _ => self.workload.truncated(&context),
                        };
                        let cont = match made_up {
                            Some(context) => Continuation {
                                key: target,
                                tombstone: self.workload.hostile_tombstone(),
                                preds: Vec::new(),
                                context,
                                hostile: Some(forgery),
                            },
                            // The key holds nothing yet: forge instead.
                            None => self.forged_write(target, f.node, Forgery::Forged),
                        };
                        self.workload.clients[c as usize] = ClientState::Ready(cont);
                        self.schedule(self.now, Ev::ClientWake { client: c });
                    }
                    (_, Some(c)) => self.client_next(c),
                    (_, None) => {}
                }
            }
            (Step::Put { write } | Step::Delete { write }, Response::Written)
                if f.hostile.is_some() =>
            {
                self.check_write_context(*write, &f, &Response::Written, &what);
            }
            (Step::Put { write } | Step::Delete { write }, Response::Written) => {
                let write = *write;
                self.workload.stats.ok += 1;
                self.record(Record::ClientDone {
                    client,
                    request: id.0,
                    outcome: OpOutcome::Written,
                    siblings: 0,
                });
                self.history.acked(write, self.now);
                self.workload.stats.acks_checked += 1;
                let verdict = self.check_ack(write, &what);
                self.record(Record::Check {
                    oracle: "ack-durable",
                    key: f.key,
                    request: id.0,
                    ok: verdict.is_ok(),
                });
                if let Err(v) = verdict {
                    return self.violation(v);
                }
                match f.client {
                    Some(c) => self.client_next(c),
                    None => {
                        self.final_todo.remove(&f.key);
                        if self.phase == Phase::FinalWrites && self.final_todo.is_empty() {
                            self.phase = Phase::Done;
                        }
                    }
                }
            }
            (_, Response::Error(ClientError::Invalid(why)))
                if f.hostile.is_none() && !why.starts_with("key has ") =>
            {
                // Only the sibling limit may refuse an honest request: its
                // key and value are within the limits the nodes were given.
                self.violation(Violation::new(
                    "request-valid",
                    format!("{what} was refused as invalid, within every limit: {why}"),
                ))
            }
            (_, Response::Error(e)) => {
                if let Step::Put { write } | Step::Delete { write } = f.step {
                    let answer = Response::Error(e.clone());
                    if self.check_write_context(write, &f, &answer, &what) {
                        return;
                    }
                }
                let outcome = match e {
                    ClientError::Timeout { .. } => {
                        self.workload.stats.indeterminate += 1;
                        OpOutcome::TimedOut
                    }
                    _ => {
                        self.workload.stats.failed += 1;
                        OpOutcome::Failed
                    }
                };
                self.record(Record::ClientDone {
                    client,
                    request: id.0,
                    outcome,
                    siblings: 0,
                });
                match f.client {
                    Some(c) => self.client_next(c),
                    None => self.final_retry(&f),
                }
            }
            (step, r) => self.violation(Violation::new(
                "reply-kind",
                format!("{what}: a {} was answered with {r:?}", step.kind().name()),
            )),
        }
    }

    /// Judges what a write's answer says about its context (see
    /// [`oracle::check_write_context`]); true when that was a violation.
    fn check_write_context(
        &mut self,
        write: WriteId,
        f: &InFlight,
        answer: &Response,
        what: &(impl std::fmt::Display + ?Sized),
    ) -> bool {
        let hostile = f.hostile.map(Forgery::name);
        let Some((oracle, verdict)) =
            oracle::check_write_context(&self.history, write, hostile, answer, what)
        else {
            return false;
        };
        self.record(Record::Check {
            oracle,
            key: f.key,
            request: self.history.write(write).request.0,
            ok: verdict.is_ok(),
        });
        match verdict {
            Ok(()) => {
                if let Some(forgery) = f.hostile {
                    self.workload.stats.hostile_refused[forgery.index()] += 1;
                }
                false
            }
            Err(v) => {
                self.violation(v);
                true
            }
        }
    }

    fn check_ack(
        &self,
        write: WriteId,
        what: &(impl std::fmt::Display + ?Sized),
    ) -> Result<(), Violation> {
        let w = self.history.write(write);
        let user_key = self.history.key_name(w.key);
        let partition = self.ring.partition_of(user_key);
        let covers = |r: NodeId| {
            self.index_of(r).is_some_and(|j| {
                let slot = &self.slots[j];
                let disk = &slot.disk;
                slot.durable_schema().is_some_and(|schema| {
                    oracle::durable_covers_in(
                        |k| disk.made_durable(k),
                        schema,
                        partition,
                        user_key,
                        &w.dots,
                    )
                })
            })
        };
        let replicas = self.ring.replicas_of(user_key);
        // Fast path: stop at the W-th durable copy (the verdict is the same;
        // the full list is only needed to describe a failure).
        let needed = self.quorum.w as usize;
        if !w.dots.is_empty()
            && replicas.iter().filter(|&&r| covers(r)).take(needed).count() >= needed
        {
            return Ok(());
        }
        let holders: Vec<(NodeId, bool)> = replicas.iter().map(|&r| (r, covers(r))).collect();
        oracle::check_ack_durable(&self.history, write, &holders, self.quorum.w, what)
    }

    // ----- nemesis --------------------------------------------------------

    fn up_nodes(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].state == NodeState::Up)
            .collect()
    }

    fn down_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state != NodeState::Up)
            .count()
    }

    fn nemesis_step(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let up = self.up_nodes();
        let down = self.down_count();
        if let Some(action) = self.nemesis.choose(&up, down) {
            self.apply_action(action);
        }
        let d = self.nemesis.interval_us();
        self.after(d, Ev::Nemesis);
    }

    fn forced_crash(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let up = self.up_nodes();
        if self.down_count() < self.options.faults.max_down as usize {
            if let Some(n) = self.nemesis.pick(&up) {
                return self.apply_action(Action::Crash(n));
            }
        }
        self.after(500_000, Ev::ForcedCrash);
    }

    fn apply_action(&mut self, action: Action) {
        self.note_action(&action);
        match action {
            Action::Crash(i) => {
                self.faults.crashes += 1;
                let pending = self.slots[i].disk.pending_len() as u64;
                self.fault(FaultKind::Crash, Some(i), pending);
                self.stop_node(i);
                let d = self.pinned_downtime_us();
                let inc = self.slots[i].inc;
                self.after(d, Ev::Restart { node: i, inc });
            }
            Action::CleanRestart(i) => {
                self.faults.clean_restarts += 1;
                self.fault(FaultKind::Shutdown, Some(i), 0);
                self.slots[i].state = NodeState::ShuttingDown;
                let inc = self.slots[i].inc;
                let bound = self.options.faults.shutdown_bound_ms * 1000;
                self.after(bound, Ev::ShutdownDeadline { node: i, inc });
                self.feed(i, |now| Input::Shutdown { now });
            }
            Action::Split(side) => {
                self.faults.partitions += 1;
                self.new_partition();
                self.net.split(&side);
                let first = side.first().copied();
                self.fault(FaultKind::Partition, first, side.len() as u64);
            }
            Action::Isolate(i) => {
                self.faults.isolations += 1;
                self.new_partition();
                self.net.split(&[i]);
                self.fault(FaultKind::Isolate, Some(i), 0);
            }
            Action::OneWay(links) => {
                self.faults.one_way += 1;
                self.new_partition();
                for &(a, b) in &links {
                    self.net.block(a, b);
                }
                self.fault(FaultKind::OneWay, None, links.len() as u64);
            }
            Action::Clog(i) => {
                self.faults.clogs += 1;
                let (delay, len) = self.pinned_clog_us();
                let until = Time(self.now.as_micros() + len);
                for j in 0..self.slots.len() {
                    self.net.clog(i, j, until, delay);
                    self.net.clog(j, i, until, delay);
                }
                self.fault(FaultKind::Clog, Some(i), delay);
            }
            Action::Heal => {
                self.partition_gen += 1;
                if self.net.blocked() != 0 {
                    self.faults.heals += 1;
                    self.net.heal();
                    self.fault(FaultKind::Heal, None, 0);
                }
                self.net.unclog_all();
            }
        }
    }

    /// A new partition replaces the current one and heals by itself later.
    fn new_partition(&mut self) {
        self.partition_gen += 1;
        self.net.heal();
        let d = self.pinned_partition_us();
        let gen = self.partition_gen;
        self.after(d, Ev::Heal { gen });
    }

    // ----- disk faults and clock steps (see crate::atlas) ----------------

    fn chaos_step(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        match self.atlas.chaos() {
            Some(Chaos::DiskFull { node, for_us }) => {
                self.faults.disk_full += 1;
                let until = Time(self.now.as_micros() + for_us);
                self.slots[node].disk.fill_up(until);
                self.fault(FaultKind::DiskFull, Some(node), for_us);
            }
            Some(Chaos::ClockStep { node, by_us }) => {
                self.faults.clock_steps += 1;
                let now = self.now;
                self.slots[node].clock.step(by_us, now);
                if by_us < 0 {
                    self.slots[node].stepped_back_at = Some(now);
                }
                self.fault(FaultKind::ClockStep, Some(node), by_us as u64);
                // The node's next deadline moved in simulated time.
                if self.slots[node].node.is_some() {
                    self.slots[node].timer_at = None;
                    self.slots[node].timer_gen += 1;
                    let inc = self.slots[node].inc;
                    let gen = self.slots[node].timer_gen;
                    self.schedule(now, Ev::Timer { node, inc, gen });
                }
            }
            None => {}
        }
        let d = self.atlas.tick_us();
        self.after(d, Ev::Chaos);
    }

    /// At the end of the safety phase, maybe crash a fault-prone node with
    /// every data record damaged: only anti-entropy can repair it.
    fn final_wipe(&mut self) {
        let up = self.up_nodes();
        let Some(i) = self.atlas.final_wipe(&up) else {
            return;
        };
        self.faults.wipes += 1;
        self.faults.crashes += 1;
        let pending = self.slots[i].disk.pending_len() as u64;
        self.fault(FaultKind::Crash, Some(i), pending);
        self.stop_node(i);
        let d = self.slots[i].disk.wipe();
        self.fault(FaultKind::DiskDamage, Some(i), d);
    }

    /// Whether any node still holds `dot` on `key`: in memory, or on its
    /// disk (durable or pending), as data or as a hint. A dot issued again
    /// after its first issue left no copy anywhere confuses no one.
    fn dot_survives(&self, key: &Bytes, dot: cairn_core::Dot) -> bool {
        use cairn_core::storage::{decode_record, Record as Stored};
        self.slots.iter().any(|s| {
            s.node
                .as_ref()
                .and_then(|n| n.key_state(key))
                .is_some_and(|st| st.context().covers(dot))
                || s.disk.all_records().any(|(k, v)| {
                    matches!(
                        decode_record(k, v),
                        Ok(Stored::Data { key: ref rk, ref state, .. }
                            | Stored::Hint { key: ref rk, ref state, .. })
                            if rk == key && state.context().covers(dot)
                    )
                })
        })
    }

    /// The `hint-durable` oracle: node `i` deletes a hint record; the
    /// hint's target must already hold durably every sibling of the hint's
    /// last stored state.
    fn check_hint_removal(&mut self, i: usize, record_key: &Bytes) {
        use cairn_core::storage::{data_key, decode_record, key_schema, Record as Stored};
        let Some(node) = self.slots[i].node.as_ref() else {
            return;
        };
        // Records of a namespace that is not live are migration left-overs.
        if key_schema(record_key) != Some(node.schema()) {
            return;
        }
        // A node whose disk carries the restore marker drops the hints it
        // loads (at start-up, before it serves): they may carry values
        // deleted since the backup. Hints are never the only copy of an
        // acknowledged write (strict quorums); anti-entropy repairs their
        // targets.
        if node.phase() != cairn_core::node::Phase::Serving
            && self.slots[i]
                .disk
                .durable(cairn_core::storage::RESTORED_KEY)
                .is_some()
        {
            return;
        }
        // A hint destroyed by a disk fault (the node drops what it cannot
        // decode) is a loss the fault atlas allows, not a removal.
        if self.slots[i].disk.is_damaged(record_key) {
            return;
        }
        let Some(last) = self.slots[i].disk.latest(record_key) else {
            return;
        };
        let Ok(Stored::Hint {
            target, key, state, ..
        }) = decode_record(record_key, last)
        else {
            return;
        };
        let Some(j) = self.index_of(target) else {
            return;
        };
        let disk = &self.slots[j].disk;
        let meta = disk
            .made_durable(cairn_core::storage::META_KEY)
            .and_then(|m| decode_record(cairn_core::storage::META_KEY, m).ok());
        let held = match meta {
            Some(Stored::Meta(m)) => {
                let dk = data_key(m.schema, self.ring.partition_of(&key), &key);
                match disk.made_durable(&dk).map(|v| decode_record(&dk, v)) {
                    Some(Ok(Stored::Data { state: t, .. })) => Some(t),
                    _ => None,
                }
            }
            _ => None,
        };
        let ok = match &held {
            Some(t) => state.siblings().iter().all(|s| t.context().covers(s.dot)),
            // A tombstone may have been reaped since the target took it.
            None => state.siblings().iter().all(|s| s.is_tombstone()),
        };
        self.record(Record::Check {
            oracle: "hint-durable",
            key: 0,
            request: 0,
            ok,
        });
        if !ok {
            let missing: Vec<String> = state
                .siblings()
                .iter()
                .filter(|s| !held.as_ref().is_some_and(|t| t.context().covers(s.dot)))
                .map(|s| s.dot.to_string())
                .collect();
            self.violation(Violation::new(
                "hint-durable",
                format!(
                    "n{} removed its hint for {target} of key {:?} while {target} did not hold it durably (missing dots {})",
                    i + 1,
                    String::from_utf8_lossy(&key),
                    missing.join(",")
                ),
            ));
        }
    }

    // ----- liveness -------------------------------------------------------

    fn begin_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.safety_end = self.now;
        self.record(Record::Phase { name: "liveness" });
        self.partition_gen += 1;
        if self.net.blocked() != 0 {
            self.faults.heals += 1;
        }
        self.net.heal();
        self.net.unclog_all();
        self.net.calm();
        self.fault(FaultKind::Heal, None, 1);
        self.final_wipe();
        for i in 0..self.slots.len() {
            self.slots[i].disk.free_space();
            if self.slots[i].state == NodeState::Down {
                self.start_node(i);
            }
        }
        for c in 0..self.workload.clients.len() {
            if !matches!(self.workload.clients[c], ClientState::Busy(_)) {
                self.workload.clients[c] = ClientState::Stopped;
            }
        }
        self.after(CONVERGENCE_POLL_US, Ev::ConvergenceCheck);
        let bound = self.scenario.liveness_ms * 1000;
        self.after(bound, Ev::LivenessDeadline);
    }

    /// What still keeps the cluster from having converged (at most `limit`
    /// items). Empty when converged.
    fn convergence_gaps(&self, limit: usize) -> Vec<String> {
        let mut gaps = Vec::new();
        for s in &self.slots {
            match (&s.node, s.state) {
                (Some(n), NodeState::Up) if n.is_serving() && !n.is_halted() => {}
                (Some(n), st) => gaps.push(format!(
                    "{} is {:?}{}{}",
                    s.id,
                    st,
                    if n.is_serving() { "" } else { ", not serving" },
                    if n.is_halted() { ", halted" } else { "" }
                )),
                (None, st) => gaps.push(format!("{} is {st:?}", s.id)),
            }
        }
        gaps.extend(self.versions_gap());
        if !gaps.is_empty() {
            return gaps;
        }
        let busy = self.workload.busy();
        if busy > 0 {
            gaps.push(format!("{busy} client request(s) still in flight"));
        }
        for s in &self.slots {
            let h = s.node.as_ref().map_or(0, |n| n.hint_count());
            if h > 0 {
                gaps.push(format!("{} still holds {h} hint(s)", s.id));
            }
        }
        for k in 0..self.history.key_count() {
            if gaps.len() >= limit {
                return gaps;
            }
            let key = self.history.key_name(k);
            let replicas = self.ring.replicas_of(key);
            let states: Vec<Option<&cairn_core::KeyState>> = replicas
                .iter()
                .map(|&r| {
                    self.index_of(r)
                        .and_then(|j| self.slots[j].node.as_ref())
                        .and_then(|n| n.key_state(key))
                })
                .collect();
            if states.windows(2).any(|w| w[0] != w[1]) {
                let per: Vec<String> = replicas
                    .iter()
                    .zip(&states)
                    .map(|(r, s)| match s {
                        None => format!("{r}: absent"),
                        Some(s) => format!(
                            "{r}: [{}] ctx {:?}",
                            s.siblings()
                                .iter()
                                .map(|x| format!(
                                    "{}{}",
                                    x.dot,
                                    if x.is_tombstone() { "(del)" } else { "" }
                                ))
                                .collect::<Vec<_>>()
                                .join(","),
                            s.context()
                                .entries()
                                .iter()
                                .map(|(a, c)| format!("n{}.e{}:{c}", a.node.0, a.epoch))
                                .collect::<Vec<_>>()
                        ),
                    })
                    .collect();
                gaps.push(format!(
                    "key {} differs across replicas: {}",
                    self.history.key_label(k),
                    per.join(" | ")
                ));
            }
        }
        for p in 0..self.ring.partitions() {
            if gaps.len() >= limit {
                return gaps;
            }
            let pref = self.ring.preference(p);
            let roots: Vec<u64> = pref
                .iter()
                .map(|&r| {
                    self.index_of(r)
                        .and_then(|j| self.slots[j].node.as_ref())
                        .map_or(0, |n| n.merkle_root(p))
                })
                .collect();
            if roots.windows(2).any(|w| w[0] != w[1]) {
                let per: Vec<String> = pref
                    .iter()
                    .zip(&roots)
                    .map(|(r, h)| format!("{r}:{h:016x}"))
                    .collect();
                gaps.push(format!(
                    "partition {p} Merkle roots differ: {}",
                    per.join(" ")
                ));
            }
        }
        gaps.truncate(limit);
        gaps
    }

    fn convergence_check(&mut self) {
        if self.phase != Phase::Liveness {
            return;
        }
        if !self.convergence_gaps(1).is_empty() {
            self.after(CONVERGENCE_POLL_US, Ev::ConvergenceCheck);
            return;
        }
        self.converged_at = Some(self.now);
        self.record(Record::Phase { name: "converged" });
        // Judge the converged state of every key.
        for k in 0..self.history.key_count() {
            let key = self.history.key_name(k).clone();
            let first = self.ring.replicas_of(&key)[0];
            let Some(j) = self.index_of(first) else {
                continue;
            };
            let siblings: Vec<cairn_core::Sibling> = self.slots[j]
                .node
                .as_ref()
                .and_then(|n| n.key_state(&key))
                .map(|s| s.siblings().to_vec())
                .unwrap_or_default();
            let what = format!("the converged state of {first}");
            let verdict = self.history.resolve(k, &siblings, &what).and_then(|ws| {
                if self.options.deep.unlimited {
                    oracle::check_read(&self.history, k, &ws, &[], "the converged state")
                } else {
                    oracle::check_final_state(&self.history, k, &ws)
                }
            });
            self.record(Record::Check {
                oracle: "converged-state",
                key: k,
                request: 0,
                ok: verdict.is_ok(),
            });
            if let Err(v) = verdict {
                return self.violation(v);
            }
        }
        if let Err(v) = self.versions_final_check() {
            return self.violation(v);
        }
        let serving: Vec<&Node> = self
            .slots
            .iter()
            .filter_map(|s| s.node.as_ref())
            .filter(|n| n.is_serving())
            .collect();
        if let Err(v) = oracle::check_protocols(&serving) {
            return self.violation(v);
        }
        if let Some(v) = serving.iter().find_map(|n| oracle::check_merkle(n).err()) {
            return self.violation(v);
        }
        if let Err(v) = self.check_hint_records() {
            return self.violation(v);
        }
        self.phase = Phase::Reaping;
        self.record(Record::Phase { name: "reaping" });
        self.reap_check();
    }

    /// Tombstones left on a node of the healed cluster: keys whose stored
    /// state holds deletes only (judged here, not by core's own test).
    fn tombstones_left(&self) -> Vec<String> {
        let mut left = Vec::new();
        for s in &self.slots {
            let Some(n) = s.node.as_ref() else { continue };
            for (key, state) in n.keys() {
                if state.siblings().iter().all(|x| x.value.is_none()) {
                    left.push(format!("{} on {}", String::from_utf8_lossy(key), s.id));
                }
            }
        }
        left
    }

    /// `reaped`: once the cluster has converged, every tombstone is reaped
    /// (its grace passes, its replicas vote) before the liveness bound;
    /// a store that keeps them grows without end.
    fn reap_check(&mut self) {
        if self.phase != Phase::Reaping {
            return;
        }
        if !self.tombstones_left().is_empty() {
            self.after(CONVERGENCE_POLL_US, Ev::ReapCheck);
            return;
        }
        self.begin_final(Phase::FinalReads, "final-reads", |key| Ev::FinalRead {
            key,
        });
    }

    /// Starts a final phase: one request of `ev` per key, all of them due.
    fn begin_final(&mut self, phase: Phase, name: &'static str, ev: fn(u32) -> Ev) {
        self.phase = phase;
        self.record(Record::Phase { name });
        for k in 0..self.history.key_count() {
            self.final_todo.insert(k);
            self.schedule(self.now, ev(k));
        }
        if self.final_todo.is_empty() {
            self.phase = Phase::Done;
        }
    }

    /// The final reader's or writer's request failed: try again.
    fn final_retry(&mut self, f: &InFlight) {
        let ev = match f.step {
            Step::Get { .. } => Ev::FinalRead { key: f.key },
            _ => Ev::FinalWrite { key: f.key },
        };
        self.after(RETRY_US, ev);
    }

    fn begin_final_writes(&mut self) {
        self.begin_final(Phase::FinalWrites, "final-writes", |key| Ev::FinalWrite {
            key,
        });
    }

    fn final_write(&mut self, key: u32) {
        if self.phase != Phase::FinalWrites || !self.final_todo.contains(&key) {
            return;
        }
        let candidates = self.candidates();
        if candidates.is_empty() {
            return self.after(RETRY_US, Ev::FinalWrite { key });
        }
        let node = candidates[(key as usize + self.events as usize) % candidates.len()];
        let (context, preds) = self.final_contexts.get(&key).cloned().unwrap_or_default();
        let cont = Continuation {
            key,
            tombstone: false,
            preds,
            context,
            hostile: None,
        };
        self.send_write(None, node, cont);
    }

    fn final_read(&mut self, key: u32) {
        if self.phase != Phase::FinalReads || !self.final_todo.contains(&key) {
            return;
        }
        let candidates = self.candidates();
        if candidates.is_empty() {
            return self.after(RETRY_US, Ev::FinalRead { key });
        }
        let node = candidates[(key as usize + self.events as usize) % candidates.len()];
        self.send_get(None, node, key, Then::Final);
    }

    // ----- results --------------------------------------------------------

    pub fn stats(&self) -> Stats {
        let mut disk = DiskStats::default();
        for s in &self.slots {
            disk.writes += s.disk.stats.writes;
            disk.syncs += s.disk.stats.syncs;
            disk.reads += s.disk.stats.reads;
            disk.lost_writes += s.disk.stats.lost_writes;
            disk.lucky_writes += s.disk.stats.lucky_writes;
            disk.backups += s.disk.stats.backups;
            disk.failed_syncs += s.disk.stats.failed_syncs;
            disk.damaged += s.disk.stats.damaged;
        }
        Stats {
            sim_end: self.now,
            safety_end: if self.phase == Phase::Safety {
                self.now
            } else {
                self.safety_end
            },
            converged_at: self.converged_at,
            ops: self.workload.stats,
            writes: self.history.writes().len() as u64,
            acked: self.history.acked_count(),
            faults: self.faults,
            net: self.net.stats,
            disk,
            events: self.events,
            trace_records: self.trace.records(),
            versions: self.versions.stats,
        }
    }

    pub fn trace_mut(&mut self) -> &mut Trace {
        &mut self.trace
    }
}

/// Runs one seed to completion. Panics in the code under test are caught and
/// reported as [`Outcome::Panic`].
pub fn run(cfg: &RunConfig) -> RunReport {
    let started = std::time::Instant::now();
    let options = Options::derive(cfg.seed, &cfg.scenario);
    let bugs: Vec<String> = cfg.bugs.iter().map(|b| b.name.to_string()).collect();
    let trace = match &cfg.trace {
        Some(p) => match Trace::to_file_with_header(p, &crate::trace::header(&options, &bugs)) {
            Ok(t) => t,
            Err(e) => {
                return RunReport {
                    seed: cfg.seed,
                    scenario: cfg.scenario.name.clone(),
                    bugs,
                    options,
                    outcome: Outcome::Liveness(format!(
                        "cannot create trace file {}: {e}",
                        p.display()
                    )),
                    at: Time::ZERO,
                    stats: Stats::default(),
                    trace_hash: 0,
                    wall: started.elapsed(),
                }
            }
        },
        None => Trace::new(),
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut world = World::new(cfg, trace);
        let (outcome, at) = world.run();
        let write_err = world.trace_mut().finish().err();
        (
            outcome,
            at,
            world.stats(),
            world.trace_mut().hash(),
            write_err,
        )
    }));
    let (outcome, at, stats, trace_hash) = match result {
        Ok((outcome, at, stats, hash, write_err)) => {
            if let Some(e) = write_err {
                eprintln!("warning: writing the trace failed: {e}");
            }
            (outcome, at, stats, hash)
        }
        Err(p) => (
            Outcome::Panic(format!("panic outside a node call: {}", panic_message(&*p))),
            Time::ZERO,
            Stats::default(),
            0,
        ),
    };
    RunReport {
        seed: cfg.seed,
        scenario: cfg.scenario.name.clone(),
        bugs,
        options,
        outcome,
        at,
        stats,
        trace_hash,
        wall: started.elapsed(),
    }
}
