//! Outcomes, exit codes and run summaries.

use std::fmt;

use cairn_core::Time;

use crate::disk::DiskStats;
use crate::network::NetStats;
use crate::options::Options;
use crate::oracle::Violation;
use crate::workload::OpStats;

/// Process exit codes.
pub mod exit {
    /// Every oracle passed.
    pub const PASS: i32 = 0;
    /// A safety oracle failed.
    pub const SAFETY: i32 = 1;
    /// The cluster did not converge (or finish its work) in the liveness bound.
    pub const LIVENESS: i32 = 2;
    /// The code under test panicked.
    pub const PANIC: i32 = 3;
    /// Two runs of the same seed disagreed.
    pub const DETERMINISM: i32 = 4;
    /// Bad command line.
    pub const USAGE: i32 = 64;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Safety(Violation),
    Liveness(String),
    Panic(String),
}

impl Outcome {
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Pass => exit::PASS,
            Outcome::Safety(_) => exit::SAFETY,
            Outcome::Liveness(_) => exit::LIVENESS,
            Outcome::Panic(_) => exit::PANIC,
        }
    }

    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Pass)
    }

    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Safety(_) => "safety violation",
            Outcome::Liveness(_) => "liveness failure",
            Outcome::Panic(_) => "panic",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Outcome::Pass => "all oracles passed".into(),
            Outcome::Safety(v) => v.to_string(),
            Outcome::Liveness(m) => m.clone(),
            Outcome::Panic(m) => m.clone(),
        }
    }
}

/// Ranks exit codes by severity (highest first): a safety violation, then a
/// panic, then a liveness failure, then a determinism mismatch.
pub fn severity(code: i32) -> u8 {
    match code {
        exit::SAFETY => 5,
        exit::PANIC => 4,
        exit::LIVENESS => 3,
        exit::DETERMINISM => 2,
        exit::USAGE => 1,
        _ => 0,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub crashes: u64,
    pub clean_restarts: u64,
    pub shutdown_kills: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub isolations: u64,
    pub one_way: u64,
    pub clogs: u64,
    pub heals: u64,
    pub halts: u64,
    /// Stops or syncs that damaged durable records.
    pub disk_damage: u64,
    pub sync_failures: u64,
    pub disk_full: u64,
    pub clock_steps: u64,
    /// Nodes crashed with all their data damaged at the end of the safety
    /// phase.
    pub wipes: u64,
    /// Frames of hostile or confused peers (see [`crate::hostile`]).
    pub hostile_frames: u64,
}

impl FaultStats {
    /// Faults injected (restarts and heals are their undoing, not faults).
    pub fn injected(&self) -> u64 {
        self.crashes
            + self.clean_restarts
            + self.partitions
            + self.isolations
            + self.one_way
            + self.clogs
            + self.disk_damage
            + self.sync_failures
            + self.disk_full
            + self.clock_steps
            + self.wipes
            + self.hostile_frames
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub sim_end: Time,
    pub safety_end: Time,
    pub converged_at: Option<Time>,
    pub ops: OpStats,
    pub writes: u64,
    pub acked: u64,
    pub faults: FaultStats,
    pub net: NetStats,
    pub disk: DiskStats,
    pub events: u64,
    pub trace_records: u64,
    /// What the version orchestrator did (empty outside version scenarios).
    pub versions: crate::upgrade::VersionStats,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: String,
    pub bugs: Vec<String>,
    pub options: Options,
    pub outcome: Outcome,
    /// Simulated time of the failure (or of the end of the run).
    pub at: Time,
    pub stats: Stats,
    pub trace_hash: u64,
    pub wall: std::time::Duration,
}

impl RunReport {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cairn-sim run --seed {} --scenario {}",
            self.seed, self.scenario
        );
        for b in &self.bugs {
            cmd.push_str(" --planted-bug ");
            cmd.push_str(b);
        }
        if self.options.deep.unlimited {
            cmd.push_str(" --unlimited-faults");
        }
        cmd
    }
}

fn secs(t: Time) -> String {
    format!(
        "{}.{:03}",
        t.as_micros() / 1_000_000,
        (t.as_micros() % 1_000_000) / 1000
    )
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let o = &s.ops;
        let fs = &s.faults;
        let n = &s.net;
        let wall = self.wall.as_secs_f64();
        let sim = s.sim_end.as_micros() as f64 / 1e6;
        writeln!(f, "summary:")?;
        writeln!(
            f,
            "  simulated: {} s (safety phase {} s{})",
            secs(s.sim_end),
            secs(s.safety_end),
            match s.converged_at {
                Some(t) => format!(", converged at {} s", secs(t)),
                None => String::new(),
            }
        )?;
        writeln!(
            f,
            "  client ops: {} sent ({} get, {} put, {} delete): {} ok, {} failed, {} indeterminate; {} late replies",
            o.sent, o.gets, o.puts, o.deletes, o.ok, o.failed, o.indeterminate, o.late_replies
        )?;
        writeln!(
            f,
            "  writes: {} sent, {} acknowledged; checks: {} reads, {} acknowledgements",
            s.writes, s.acked, o.reads_checked, o.acks_checked
        )?;
        let hostile: u64 = o.hostile_sent.iter().sum();
        if hostile + o.stale_writes > 0 {
            let kinds: Vec<String> = crate::workload::Forgery::ALL
                .iter()
                .map(|k| {
                    format!(
                        "{} {}/{}",
                        k.name(),
                        o.hostile_refused[k.index()],
                        o.hostile_sent[k.index()]
                    )
                })
                .collect();
            writeln!(
                f,
                "  contexts: {} writes with a context kept from long ago; hostile writes refused/sent: {}",
                o.stale_writes,
                kinds.join(", ")
            )?;
        }
        writeln!(
            f,
            "  faults injected: {} (crash {}, clean restart {}, partition {}, isolate {}, one-way {}, clog {}); {} restarts, {} heals, {} shutdowns killed, {} halts",
            fs.injected(),
            fs.crashes,
            fs.clean_restarts,
            fs.partitions,
            fs.isolations,
            fs.one_way,
            fs.clogs,
            fs.restarts,
            fs.heals,
            fs.shutdown_kills,
            fs.halts
        )?;
        writeln!(
            f,
            "  messages: {} sent, {} delivered, {} dropped (lost {}, partitioned {}, queue full {}, node down {}), {} duplicated",
            n.sent,
            n.delivered,
            n.dropped(),
            n.lost,
            n.partitioned,
            n.queue_full,
            n.node_down,
            n.duplicated
        )?;
        writeln!(
            f,
            "  disk: {} writes, {} syncs, {} unsynced writes lost on crash ({} survived)",
            s.disk.writes, s.disk.syncs, s.disk.lost_writes, s.disk.lucky_writes
        )?;
        if fs.disk_damage + fs.sync_failures + fs.disk_full + fs.clock_steps + fs.wipes > 0 {
            writeln!(
                f,
                "  disk and clock faults: {} damaging ({} records damaged, {} final wipes), {} failed syncs, {} full disks, {} clock steps",
                fs.disk_damage + fs.wipes,
                s.disk.damaged,
                fs.wipes,
                fs.sync_failures,
                fs.disk_full,
                fs.clock_steps
            )?;
        }
        if fs.hostile_frames > 0 {
            writeln!(
                f,
                "  hostile peers: {} frames (corrupt, truncated, unknown types, ill-formed states, foreign partitions)",
                fs.hostile_frames
            )?;
        }
        if !s.versions.is_empty() {
            writeln!(f, "  versions: {}", s.versions)?;
        }
        writeln!(
            f,
            "  wall: {:.3} s ({:.0} simulated s per wall s, {} events, {} trace records)",
            wall,
            if wall > 0.0 { sim / wall } else { 0.0 },
            s.events,
            s.trace_records
        )?;
        writeln!(
            f,
            "outcome: {} at {} s: {}",
            self.outcome.label(),
            secs(self.at),
            self.outcome.message()
        )?;
        write!(f, "trace hash: 0x{:016x}", self.trace_hash)
    }
}
