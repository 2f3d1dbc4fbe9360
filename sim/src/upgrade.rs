//! Version scenarios: rolling upgrades, canaries, rollbacks, downgrades,
//! crashes in the middle of a migration, old nodes rejoining, finalization
//! racing with restarts, and restores from backup.
//!
//! A scenario with an [`UpgradeSpec`] runs an orchestration plan next to the
//! random nemesis: a list of [`Step`]s drawn from the seed at the start of
//! the run and executed in order (by `world_versions.rs`), while clients keep
//! writing and the nemesis keeps crashing nodes and partitioning the network.
//! A plan that has not finished when the safety phase ends goes on in the
//! liveness phase; convergence waits for it.
//!
//! Each scenario states what it exists for as expectations (the cluster
//! reached the target version, a node was really crashed mid-migration, a
//! downgrade was really refused, ...). An expectation that is not met fails
//! the run as a safety violation of the `expectation` oracle, so a scenario
//! cannot silently test nothing. [`VersionStats`] counts what happened.

use cairn_core::version::{ReleaseId, RELEASES};
use serde::{Deserialize, Serialize};

use crate::scenario::{FaultSpec, NemesisMix, Scenario, Span};

/// The kinds of version scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeKind {
    /// 0.1 -> 0.2 -> 0.3, one node at a time, finalizing each step.
    Rolling,
    /// Upgrade one node, watch it serve, then the rest.
    Canary,
    /// Upgrade some nodes, then roll them back before finalizing.
    Rollback,
    /// Finalize, then restart a node on the old release: it must refuse.
    Downgrade,
    /// Rolling upgrade with crashes aimed at running migrations.
    CrashMidMigration,
    /// A node that missed the finalization comes back on the old release.
    OldNodeRejoins,
    /// Finalization sent while a node restarts.
    FinalizeDuringRestart,
    /// Back up a node, let it move on, restore the backup.
    RestoreBackup,
    /// An operator upgrades a node straight past the next release: it must
    /// refuse, and its peers refuse its handshake; then it is put back.
    SkipRelease,
}

/// The version part of a scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeSpec {
    pub kind: UpgradeKind,
    /// Releases the cluster is upgraded through, as versions (e.g.
    /// `["0.2.0", "0.3.0"]`); the cluster starts at the release before the
    /// first. Empty: the scenario's default.
    #[serde(default)]
    pub through: Vec<String>,
    /// Pause between two orchestration steps, in milliseconds.
    #[serde(default = "default_pause")]
    pub pause_ms: Span,
}

fn default_pause() -> Span {
    Span::new(300, 3000)
}

impl UpgradeSpec {
    pub fn new(kind: UpgradeKind, through: &[&str]) -> UpgradeSpec {
        UpgradeSpec {
            kind,
            through: through.iter().map(|s| s.to_string()).collect(),
            pause_ms: default_pause(),
        }
    }

    /// The releases to upgrade through, oldest first.
    pub fn targets(&self) -> Vec<ReleaseId> {
        self.through
            .iter()
            .filter_map(|v| ReleaseId::by_version(v))
            .collect()
    }

    /// The release every node starts at.
    pub fn start_release(&self) -> ReleaseId {
        match self.targets().first() {
            Some(r) => ReleaseId(r.0.saturating_sub(1)),
            None => ReleaseId::current(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        for v in &self.through {
            if ReleaseId::by_version(v).is_none() {
                let known: Vec<&str> = RELEASES.iter().map(|r| r.version).collect();
                return Err(format!(
                    "upgrade.through: unknown release {v:?} (known: {})",
                    known.join(", ")
                ));
            }
        }
        let t = self.targets();
        if t.windows(2).any(|w| w[1].0 != w[0].0 + 1) || t.first().is_some_and(|r| r.0 == 0) {
            return Err(
                "upgrade.through: releases must follow each other, starting above the oldest"
                    .into(),
            );
        }
        if self.pause_ms.min > self.pause_ms.max {
            return Err("upgrade.pause_ms: min above max".into());
        }
        Ok(())
    }
}

/// Which node a step is about (an index into the cluster).
pub type NodeIx = usize;

/// One step of an orchestration plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Do nothing for this long (µs).
    Sleep(u64),
    /// Restart a node cleanly as `release` and wait until it serves again
    /// (a crashed node simply comes back as `release`).
    RestartAs { node: NodeIx, release: ReleaseId },
    /// Ask some node to finalize at `target`, retrying after refusals until
    /// one answers `Finalized`.
    Finalize { target: ReleaseId },
    /// Ask a node to finalize while the cluster is known not to be ready;
    /// a refusal is the expected answer (recorded, never retried).
    ProbeFinalize { target: ReleaseId },
    /// Send again the finalization of the cluster version already active
    /// (an operator or orchestrator repeating itself): it must be answered
    /// `Finalized`, whatever else runs.
    Refinalize { target: ReleaseId },
    /// Wait until every node runs, serves, and is at cluster version `cv`
    /// with its data in `schema`.
    Barrier { cv: ReleaseId, schema: u16 },
    /// Watch a freshly upgraded canary under load until it has answered
    /// clients for at least this long (µs).
    Watch { node: NodeIx, us: u64 },
    /// Restart a node on a release older than the cluster version and wait
    /// for its refusal.
    Downgrade { node: NodeIx, release: ReleaseId },
    /// Isolate `node`, finalize `target` at once elsewhere (before the
    /// others see it gone), then crash `node` and bring it back on `old`.
    MissFinalization {
        node: NodeIx,
        target: ReleaseId,
        old: ReleaseId,
    },
    /// Wait until `node` refuses to serve.
    AwaitRefusal { node: NodeIx },
    /// Restart `node` as `release` and send a finalization at `target`
    /// `offset_us` later (negative: earlier).
    RaceFinalize {
        node: NodeIx,
        release: ReleaseId,
        target: ReleaseId,
        offset_us: i64,
        crash: bool,
    },
    /// From now on, crash nodes shortly after their migrations start.
    ArmMigrationCrashes,
    /// Take a backup of `node` (admin command).
    Backup { node: NodeIx },
    /// Replace `node`'s disk by its oldest (or newest) backup plus the
    /// restore marker, restart it and wait until it has learned its epoch
    /// and serves.
    Restore { node: NodeIx, oldest: bool },
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Sleep(_) => "sleep",
            Step::RestartAs { .. } => "restart-as",
            Step::Finalize { .. } => "finalize",
            Step::ProbeFinalize { .. } => "probe-finalize",
            Step::Refinalize { .. } => "refinalize",
            Step::Barrier { .. } => "barrier",
            Step::Watch { .. } => "watch",
            Step::Downgrade { .. } => "downgrade",
            Step::MissFinalization { .. } => "miss-finalization",
            Step::AwaitRefusal { .. } => "await-refusal",
            Step::RaceFinalize { .. } => "race-finalize",
            Step::ArmMigrationCrashes => "arm-migration-crashes",
            Step::Backup { .. } => "backup",
            Step::Restore { .. } => "restore",
        }
    }
}

/// What the version scenarios did in one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionStats {
    /// Nodes restarted as a newer release.
    pub upgrades: u64,
    /// Nodes restarted as an older release before finalization.
    pub rollbacks: u64,
    pub finalize_sent: u64,
    pub finalized: u64,
    /// Finalizations refused (expected while a node is down or old).
    pub finalize_refused: u64,
    /// Finalizations of the active cluster version sent again and answered.
    pub refinalized: u64,
    /// Finalizations sent while some node was restarting.
    pub finalize_during_restart: u64,
    /// ... of which were accepted.
    pub finalized_during_restart: u64,
    /// Finalizations sent within a second of a planned restart or crash
    /// (before or after it).
    pub finalize_races: u64,
    pub migrations_started: u64,
    pub migrations_finished: u64,
    pub migrations_failed: u64,
    /// Crashes that hit a node while it was migrating.
    pub mid_migration_crashes: u64,
    /// Downgrades after finalization that were refused.
    pub downgrades_refused: u64,
    /// Old nodes that rejoined after finalization and were refused
    /// (at start, or once they heard the cluster version).
    pub old_nodes_refused: u64,
    pub backups: u64,
    pub restores: u64,
    /// Restored nodes that learned their epoch from peers.
    pub epochs_learned: u64,
    /// Canary watches completed with the canary serving clients.
    pub canaries_watched: u64,
    /// Expectations of the scenario checked (and met) at the end.
    pub expectations_met: u64,
}

impl VersionStats {
    pub fn is_empty(&self) -> bool {
        *self == VersionStats::default()
    }
}

impl std::fmt::Display for VersionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} upgrades, {} rollbacks; finalize {} sent, {} finalized, {} refused, {} sent again, {} during a restart ({} accepted), {} racing a restart; migrations {} started, {} finished, {} failed, {} crashed mid-way; {} downgrades refused, {} old nodes refused; {} backups, {} restores, {} epochs learned; {} canaries watched; {} expectations met",
            self.upgrades,
            self.rollbacks,
            self.finalize_sent,
            self.finalized,
            self.finalize_refused,
            self.refinalized,
            self.finalize_during_restart,
            self.finalized_during_restart,
            self.finalize_races,
            self.migrations_started,
            self.migrations_finished,
            self.migrations_failed,
            self.mid_migration_crashes,
            self.downgrades_refused,
            self.old_nodes_refused,
            self.backups,
            self.restores,
            self.epochs_learned,
            self.canaries_watched,
            self.expectations_met
        )
    }
}

/// The names of the built-in version scenarios.
pub const SCENARIOS: &[&str] = &[
    "rolling-upgrade",
    "canary-upgrade",
    "rollback-before-finalization",
    "downgrade-after-finalization",
    "crash-mid-migration",
    "old-node-rejoins",
    "finalize-during-restart",
    "restore-backup",
];

/// A built-in version scenario by name.
pub fn builtin(name: &str) -> Option<Scenario> {
    let base = Scenario::default();
    let faults = FaultSpec {
        interval_ms: Span::new(1000, 5000),
        mix: NemesisMix {
            crash: Span::new(1, 4),
            clean_restart: Span::new(0, 2),
            partition: Span::new(1, 3),
            isolate: Span::new(0, 2),
            one_way: Span::new(0, 2),
            clog: Span::new(0, 2),
            heal: Span::new(1, 3),
        },
        max_down: Span::fixed(1),
        downtime_ms: Span::new(200, 5000),
        partition_ms: Span::new(500, 6000),
        ..base.faults.clone()
    };
    let (kind, through, description, safety_ms): (UpgradeKind, &[&str], &str, u64) = match name {
        "rolling-upgrade" => (
            UpgradeKind::Rolling,
            &["0.2.0", "0.3.0"],
            "rolling upgrade 0.1 -> 0.2 -> 0.3 under load with crashes and partitions, finalizing at random points",
            80_000,
        ),
        "canary-upgrade" => (
            UpgradeKind::Canary,
            &["0.2.0"],
            "upgrade one node to 0.2, watch it serve under load, then the rest, then finalize",
            50_000,
        ),
        "rollback-before-finalization" => (
            UpgradeKind::Rollback,
            &["0.2.0"],
            "upgrade some nodes to 0.2, then roll them back to 0.1 before finalizing: nothing is lost",
            50_000,
        ),
        "downgrade-after-finalization" => (
            UpgradeKind::Downgrade,
            &["0.2.0"],
            "upgrade to 0.2 and finalize, then restart a node as 0.1: it must refuse, naming the versions",
            50_000,
        ),
        "crash-mid-migration" => (
            UpgradeKind::CrashMidMigration,
            &["0.2.0", "0.3.0"],
            "rolling upgrade 0.1 -> 0.3 with crashes aimed at running schema migrations",
            80_000,
        ),
        "old-node-rejoins" => (
            UpgradeKind::OldNodeRejoins,
            &["0.2.0"],
            "a node misses the finalization at 0.2 and comes back as 0.1: it must refuse",
            50_000,
        ),
        "finalize-during-restart" => (
            UpgradeKind::FinalizeDuringRestart,
            &["0.2.0", "0.3.0"],
            "finalization sent while the last node restarts into the new release, or crashes",
            80_000,
        ),
        "restore-backup" => (
            UpgradeKind::RestoreBackup,
            &[],
            "back up a node, let it move on through crashes and deletes whose tombstones are reaped, restore the backup: it learns its epoch, re-syncs, and brings back no deleted value",
            50_000,
        ),
        _ => return None,
    };
    let mut s = Scenario {
        name: name.into(),
        description: description.into(),
        faults,
        safety_ms,
        liveness_ms: 90_000,
        upgrade: Some(UpgradeSpec::new(kind, through)),
        ..base
    };
    if kind == UpgradeKind::CrashMidMigration {
        // The backup a migration takes first may fail.
        s.disk_faults.backup_error_ppm = Span::new(200_000, 600_000);
    }
    if kind == UpgradeKind::RestoreBackup {
        // Deletes made after the backup have their tombstones reaped before
        // the restore.
        s.timing.reap_interval_ms = Some(500);
        s.workload.keys = Span::new(30, 60);
        s.workload.mix = crate::scenario::MixSpec {
            read_modify_write: Span::new(30, 60),
            blind_put: Span::new(0, 10),
            delete: Span::new(15, 35),
            read: Span::new(5, 20),
            ..Default::default()
        };
    }
    Some(s)
}

/// A shorter variant of a built-in version scenario (for tests): a shorter
/// safety phase and quicker steps.
pub fn short(name: &str) -> Option<Scenario> {
    let mut s = builtin(name)?;
    s.safety_ms = (s.safety_ms / 2).max(20_000);
    if let Some(u) = s.upgrade.as_mut() {
        u.pause_ms = Span::new(200, 1200);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_scenarios_are_valid() {
        for name in SCENARIOS {
            let s = builtin(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(&s.name, name);
            s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            let u = s.upgrade.as_ref().unwrap();
            u.validate().unwrap();
            let text = serde_json::to_string(&s).unwrap();
            let back: Scenario = serde_json::from_str(&text).unwrap();
            assert_eq!(s, back);
        }
        let r = builtin("rolling-upgrade").unwrap().upgrade.unwrap();
        assert_eq!(r.start_release(), ReleaseId(0));
        assert_eq!(r.targets(), vec![ReleaseId(1), ReleaseId(2)]);
        let b = builtin("restore-backup").unwrap().upgrade.unwrap();
        assert_eq!(b.start_release(), ReleaseId::current());
        let bad = UpgradeSpec::new(UpgradeKind::Rolling, &["0.3.0", "0.2.0"]);
        assert!(bad.validate().is_err());
        assert!(UpgradeSpec::new(UpgradeKind::Rolling, &["9.9.9"])
            .validate()
            .is_err());
    }
}
