//! Deeper faults and swarm topology: disk faults kept recoverable by a fault
//! atlas, clock steps, and per-seed cluster shapes.
//!
//! # Disk faults
//! - *I/O error*: a sync fails (`IoResult::Failed`); the node halts and is
//!   restarted (unclean). The writes it covered stay unsynced, so the
//!   restart loses a random suffix of them. Non-destructive.
//! - *Full disk*: for a while every sync fails the same way. Non-destructive.
//! - *Corrupted sectors*: when a node stops, some of its durable records get
//!   a damaged byte (caught by the record checksum at the next start: the
//!   node drops the record and takes a new epoch; replicas repair the key).
//! - *Torn write*: when a node crashes, the first unsynced write that did not
//!   survive is half-written over the key's durable record.
//! - *Misdirected write*: a write covered by a completed sync lands under
//!   another key of the same node; the intended key keeps its old value.
//! - *Final wipe*: when the safety phase ends, a node crashes with every
//!   data record damaged, so only anti-entropy can bring it back.
//! - *Lost journal*: when a node stops, its disk forgets every record, the
//!   metadata included, as when a storage engine's journal is truncated or
//!   deleted. The node starts as if new; only its peers know better.
//!
//! The last five are destructive: they can destroy a durable copy of an
//! acknowledged write.
//!
//! # The fault atlas
//! Before the run, the atlas chooses which nodes may ever suffer destructive
//! faults. By default it picks at most `W + R - N - 1` of them (and never the
//! metadata record): then every acknowledged write keeps a good copy on at
//! least one replica of every strict read quorum, so every oracle keeps its
//! meaning. (`W - 1` nodes would keep a copy somewhere, but a read quorum
//! could then consist of the damaged replica and one the write never
//! reached, and a strict-quorum read would legitimately miss an
//! acknowledged write.) With N=3 R=2 W=2 the budget is zero: destructive
//! faults need a quorum with slack (e.g. N=3 R=2 W=3, or N=5 R=3 W=4).
//!
//! With `--unlimited-faults` every node may suffer destructive faults, the
//! metadata record included. Then the oracles that assume durability cannot
//! apply and are switched off: `lost-ack` and `stale-read` (on reads and on
//! the converged state) and convergence/liveness. Everything else still
//! applies: no panic, `dot-unique`, `dot-mapping`, `antichain`, `decodable`,
//! `ack-has-dot`, `ack-durable` (W durable copies at the moment of the
//! acknowledgement), `hint-durable`, bounded outputs, reply routing.
//!
//! Oracles that inspect a durable image (`ack-durable`, `hint-durable`) look
//! through destructive faults: a record the simulator destroyed counts as
//! what the node had made durable before it was destroyed.
//!
//! # Clock steps
//! A node's clock jumps forward or backward (NTP-style corrections) while
//! it runs; the node sees local time go backwards after a backward step.

use serde::{Deserialize, Serialize};

use crate::options::{draw, draw_range};
use crate::rng::{between, chance, Seeds, SimRng};
use crate::scenario::{QuorumSpec, Scenario, Span};

const fn zero() -> Span {
    Span::fixed(0)
}

/// Disk-fault rates a seed draws from (all off by default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskFaultSpec {
    /// Per sync: probability (ppm) that it fails with an I/O error.
    pub io_error_ppm: Span,
    /// Per chaos tick: probability (ppm) that a node's disk fills up.
    pub full_ppm: Span,
    /// How long a full disk stays full, in milliseconds.
    pub full_ms: Span,
    /// Per stop of a fault-prone node: probability (ppm) that some of its
    /// durable records are corrupted.
    pub corrupt_ppm: Span,
    /// Share of the records a corruption damages, in percent.
    pub corrupt_pct: Span,
    /// Per crash of a fault-prone node: probability (ppm) of a torn write.
    pub torn_ppm: Span,
    /// Per completed sync on a fault-prone node: probability (ppm) that one
    /// of its writes is misdirected.
    pub misdirect_ppm: Span,
    /// Probability (ppm) that a fault-prone node is crashed with all of its
    /// data damaged when the safety phase ends.
    pub final_wipe_ppm: Span,
    /// Per stop of a fault-prone node: probability (ppm) that its disk
    /// forgets every record, the metadata included (a lost journal).
    pub journal_loss_ppm: Span,
    /// Per backup: probability (ppm) that the copy fails (the backup volume
    /// is full or hits an I/O error) until an operator repairs it.
    pub backup_error_ppm: Span,
    /// Lift the fault atlas (set by `--unlimited-faults`).
    pub unlimited: bool,
}

impl Default for DiskFaultSpec {
    fn default() -> Self {
        DiskFaultSpec {
            io_error_ppm: zero(),
            full_ppm: zero(),
            full_ms: Span::new(200, 3000),
            corrupt_ppm: zero(),
            corrupt_pct: Span::new(10, 100),
            torn_ppm: zero(),
            misdirect_ppm: zero(),
            final_wipe_ppm: zero(),
            journal_loss_ppm: zero(),
            backup_error_ppm: zero(),
            unlimited: false,
        }
    }
}

impl DiskFaultSpec {
    pub fn is_default(&self) -> bool {
        *self == DiskFaultSpec::default()
    }
}

/// Clock steps a seed draws from (off by default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockStepSpec {
    /// Per chaos tick: probability (ppm) that some node's clock steps.
    pub step_ppm: Span,
    /// Size of a step, in milliseconds (forward or backward, evenly).
    pub step_ms: Span,
}

impl Default for ClockStepSpec {
    fn default() -> Self {
        ClockStepSpec {
            step_ppm: zero(),
            step_ms: Span::new(10, 5000),
        }
    }
}

impl ClockStepSpec {
    pub fn is_default(&self) -> bool {
        *self == ClockStepSpec::default()
    }
}

/// Swarm topology: each seed draws its own cluster size and strict quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmSpec {
    /// Cluster size (0: keep the scenario's `nodes`).
    pub nodes: Span,
    /// Replication factor, capped by the cluster size (0: keep).
    pub n: Span,
}

impl Default for SwarmSpec {
    fn default() -> Self {
        SwarmSpec {
            nodes: zero(),
            n: zero(),
        }
    }
}

impl SwarmSpec {
    pub fn is_default(&self) -> bool {
        *self == SwarmSpec::default()
    }
}

/// What one seed drew for disk faults and clock steps.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeepOptions {
    pub io_error_ppm: u32,
    pub full_ppm: u32,
    pub full_ms: (u64, u64),
    pub corrupt_ppm: u32,
    pub corrupt_pct: (u64, u64),
    pub torn_ppm: u32,
    pub misdirect_ppm: u32,
    pub final_wipe_ppm: u32,
    pub journal_loss_ppm: u32,
    pub backup_error_ppm: u32,
    pub step_ppm: u32,
    pub step_ms: (u64, u64),
    pub unlimited: bool,
    /// Nodes (indices) that may suffer destructive faults.
    pub prone: Vec<usize>,
    /// Whether the swarm chose this topology.
    pub swarm: bool,
}

impl DeepOptions {
    pub fn destructive(&self) -> bool {
        self.corrupt_ppm
            + self.torn_ppm
            + self.misdirect_ppm
            + self.final_wipe_ppm
            + self.journal_loss_ppm
            > 0
    }

    /// Whether chaos ticks (full disks, clock steps) run at all.
    pub fn ticks(&self) -> bool {
        self.full_ppm > 0 || self.step_ppm > 0
    }

    pub fn is_prone(&self, node: usize) -> bool {
        self.prone.contains(&node)
    }

    pub fn any(&self) -> bool {
        self.destructive() || self.ticks() || self.io_error_ppm + self.backup_error_ppm > 0
    }
}

/// The number of nodes that may suffer destructive faults.
pub fn budget(nodes: u32, q: QuorumSpec, unlimited: bool) -> usize {
    if unlimited {
        return nodes as usize;
    }
    (q.w as usize + q.r as usize).saturating_sub(q.n as usize + 1)
}

/// The scenario a seed actually runs: with a swarm spec, its own cluster
/// size and strict quorum. Idempotent (the result has no swarm spec).
pub fn specialise(scenario: &Scenario, seed: u64) -> Scenario {
    let mut s = scenario.clone();
    if s.swarm.is_default() || !s.releases.is_empty() || !s.schedule.is_empty() {
        return s;
    }
    let mut rng = Seeds::new(seed).subsystem("swarm");
    let sw = s.swarm.clone();
    s.swarm = SwarmSpec::default();
    if sw.nodes.max > 0 {
        let lo = sw.nodes.min.max(3);
        let hi = sw.nodes.max.clamp(lo, crate::scenario::MAX_NODES as u64);
        s.nodes = between(&mut rng, lo, hi) as u32;
    }
    let nodes = s.nodes as u64;
    let n = if sw.n.max > 0 {
        between(&mut rng, sw.n.min.max(1), sw.n.max).min(nodes)
    } else {
        (s.quorum.n as u64).min(nodes)
    };
    // Strict quorums: r + w > n.
    let r = between(&mut rng, 1, n);
    let w = between(&mut rng, n + 1 - r, n);
    s.quorum = QuorumSpec {
        n: n as u8,
        r: r as u8,
        w: w as u8,
    };
    // `Options::derive` caps `max_down` by this size and quorum.
    s
}

/// Draws the disk-fault and clock-step options of a (specialised) scenario.
pub fn derive(seed: u64, scenario: &Scenario, swarm: bool) -> DeepOptions {
    let mut rng = Seeds::new(seed).subsystem("deep-faults");
    let d = &scenario.disk_faults;
    let c = &scenario.clock_steps;
    let mut o = DeepOptions {
        io_error_ppm: draw(&mut rng, d.io_error_ppm) as u32,
        full_ppm: draw(&mut rng, d.full_ppm) as u32,
        full_ms: draw_range(&mut rng, d.full_ms),
        corrupt_ppm: draw(&mut rng, d.corrupt_ppm) as u32,
        corrupt_pct: draw_range(&mut rng, d.corrupt_pct),
        torn_ppm: draw(&mut rng, d.torn_ppm) as u32,
        misdirect_ppm: draw(&mut rng, d.misdirect_ppm) as u32,
        final_wipe_ppm: draw(&mut rng, d.final_wipe_ppm) as u32,
        journal_loss_ppm: 0,
        backup_error_ppm: 0,
        step_ppm: draw(&mut rng, c.step_ppm) as u32,
        step_ms: draw_range(&mut rng, c.step_ms),
        unlimited: d.unlimited,
        prone: Vec::new(),
        swarm,
    };
    // Drawn from its own stream, so scenarios without it keep their draws.
    o.journal_loss_ppm = draw(
        &mut Seeds::new(seed).subsystem("journal-loss"),
        d.journal_loss_ppm,
    ) as u32;
    o.backup_error_ppm = draw(
        &mut Seeds::new(seed).subsystem("backup-errors"),
        d.backup_error_ppm,
    ) as u32;
    if o.destructive() {
        let n = scenario.nodes as usize;
        let k = budget(scenario.nodes, scenario.quorum, d.unlimited).min(n);
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = between(&mut rng, i as u64, n as u64 - 1) as usize;
            all.swap(i, j);
        }
        o.prone = all[..k].to_vec();
        o.prone.sort_unstable();
    }
    o
}

/// A chaos tick's choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chaos {
    /// The node's disk is full for this many microseconds.
    DiskFull { node: usize, for_us: u64 },
    /// The node's clock jumps by this many microseconds.
    ClockStep { node: usize, by_us: i64 },
}

/// Decides chaos ticks and destructive disk faults.
pub struct Atlas {
    pub opts: DeepOptions,
    rng: SimRng,
    nodes: usize,
}

/// Time between two chaos ticks, in microseconds.
pub const CHAOS_TICK_US: (u64, u64) = (500_000, 2_000_000);

impl Atlas {
    pub fn new(opts: DeepOptions, nodes: usize, rng: SimRng) -> Atlas {
        Atlas { opts, rng, nodes }
    }

    pub fn tick_us(&mut self) -> u64 {
        between(&mut self.rng, CHAOS_TICK_US.0, CHAOS_TICK_US.1)
    }

    pub fn chaos(&mut self) -> Option<Chaos> {
        if self.nodes == 0 {
            return None;
        }
        let node = between(&mut self.rng, 0, self.nodes as u64 - 1) as usize;
        if chance(&mut self.rng, self.opts.full_ppm) {
            let ms = between(&mut self.rng, self.opts.full_ms.0, self.opts.full_ms.1);
            return Some(Chaos::DiskFull {
                node,
                for_us: ms * 1000,
            });
        }
        if chance(&mut self.rng, self.opts.step_ppm) {
            let ms = between(&mut self.rng, self.opts.step_ms.0, self.opts.step_ms.1) as i64;
            let by = if chance(&mut self.rng, 500_000) {
                ms
            } else {
                -ms
            };
            return Some(Chaos::ClockStep {
                node,
                by_us: by * 1000,
            });
        }
        None
    }

    /// A fault-prone node among `up` to wipe when the safety phase ends.
    pub fn final_wipe(&mut self, up: &[usize]) -> Option<usize> {
        if !chance(&mut self.rng, self.opts.final_wipe_ppm) {
            return None;
        }
        let cands: Vec<usize> = up
            .iter()
            .copied()
            .filter(|&i| self.opts.is_prone(i))
            .collect();
        if cands.is_empty() {
            return None;
        }
        Some(cands[between(&mut self.rng, 0, cands.len() as u64 - 1) as usize])
    }
}

/// What a disk may suffer, handed to each node's [`crate::disk::Disk`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskFaults {
    pub io_error_ppm: u32,
    /// Destructive faults are allowed on this disk.
    pub prone: bool,
    pub corrupt_ppm: u32,
    pub corrupt_pct: (u64, u64),
    pub torn_ppm: u32,
    pub misdirect_ppm: u32,
    pub journal_loss_ppm: u32,
    pub backup_error_ppm: u32,
    /// The metadata record may be damaged too.
    pub meta_too: bool,
}

impl DeepOptions {
    pub fn disk_faults(&self, node: usize) -> DiskFaults {
        let prone = self.is_prone(node);
        DiskFaults {
            io_error_ppm: self.io_error_ppm,
            prone,
            corrupt_ppm: if prone { self.corrupt_ppm } else { 0 },
            corrupt_pct: self.corrupt_pct,
            torn_ppm: if prone { self.torn_ppm } else { 0 },
            misdirect_ppm: if prone { self.misdirect_ppm } else { 0 },
            journal_loss_ppm: if prone { self.journal_loss_ppm } else { 0 },
            backup_error_ppm: self.backup_error_ppm,
            meta_too: self.unlimited,
        }
    }
}

impl std::fmt::Display for DeepOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |ppm: u32| format!("{}.{:02}%", ppm / 10_000, (ppm % 10_000) / 100);
        write!(
            f,
            "  disk faults: I/O error {} per sync, full disk {} per tick for {}..{} ms; destructive on nodes {:?}{}: corrupt {} per stop ({}..{}% of records), torn {} per crash, misdirected {} per sync, final wipe {}, lost journal {} per stop, failed backup {} per backup",
            pct(self.io_error_ppm),
            pct(self.full_ppm),
            self.full_ms.0,
            self.full_ms.1,
            self.prone.iter().map(|i| i + 1).collect::<Vec<_>>(),
            if self.unlimited { " (unlimited: atlas lifted)" } else { " (fault atlas)" },
            pct(self.corrupt_ppm),
            self.corrupt_pct.0,
            self.corrupt_pct.1,
            pct(self.torn_ppm),
            pct(self.misdirect_ppm),
            pct(self.final_wipe_ppm),
            pct(self.journal_loss_ppm),
            pct(self.backup_error_ppm)
        )?;
        write!(
            f,
            "\n  clock steps: {} per tick, {}..{} ms either way",
            pct(self.step_ppm),
            self.step_ms.0,
            self.step_ms.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_good_copy_in_every_read_quorum() {
        let q = |n, r, w| QuorumSpec { n, r, w };
        assert_eq!(budget(5, q(3, 2, 2), false), 0);
        assert_eq!(budget(5, q(3, 2, 3), false), 1);
        assert_eq!(budget(7, q(5, 3, 4), false), 1);
        assert_eq!(budget(7, q(5, 5, 5), false), 4);
        assert_eq!(budget(5, q(3, 2, 2), true), 5);
    }

    #[test]
    fn swarm_draws_strict_quorums_within_range() {
        let mut s = crate::scenario::builtin("default").unwrap();
        s.swarm = SwarmSpec {
            nodes: Span::new(3, 7),
            n: Span::new(3, 5),
        };
        let mut sizes = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let t = specialise(&s, seed);
            assert!((3..=7).contains(&t.nodes));
            let q = t.quorum;
            assert!(q.n as u32 <= t.nodes && q.r + q.w > q.n && q.r >= 1 && q.w <= q.n);
            assert_eq!(specialise(&t, seed), t, "not idempotent");
            sizes.insert(t.nodes);
        }
        assert_eq!(sizes.len(), 5);
    }
}
