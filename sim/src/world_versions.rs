//! The version orchestrator inside the world: it runs a scenario's upgrade
//! plan (see [`crate::upgrade`]) step by step, sends admin commands, swaps
//! releases and disks, aims crashes at migrations, and feeds the version
//! oracles (see [`crate::oracle_versions`]) from node events and disk
//! writes.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_core::storage::{self, RESTORED_KEY};
use cairn_core::version::ReleaseId;
use cairn_core::{AdminCommand, ClientError, Event, Input, RequestId, Response, Time};
use rand::seq::SliceRandom;
use rand::Rng;

use super::{Ev, NodeState, Phase, World};
use crate::nemesis::{Action, VersionNemesis};
use crate::oracle::Violation;
use crate::oracle_versions::{
    check_refusal_visible, image_schemas, logical_records, refusal_bound_us, VersionOracles,
};
use crate::rng::Seeds;
use crate::scenario::Scenario;
use crate::trace::Record;
use crate::upgrade::{Step, UpgradeKind, UpgradeSpec, VersionStats};

/// How often the orchestrator looks at the cluster while a step waits.
const POLL_US: u64 = 100_000;
/// An admin command unanswered after this long is given up (and retried).
const ADMIN_TIMEOUT_US: u64 = 5_000_000;
/// Admin request ids live far above the clients' ones.
const ADMIN_ID_BASE: u64 = 1 << 62;
/// Crashes aimed at migrations, per node and run.
const MIGRATION_CRASHES_PER_NODE: u32 = 2;

/// Orchestrator events.
#[derive(Debug)]
pub(super) enum VEv {
    Tick,
    AdminDeadline {
        id: u64,
    },
    /// A crash aimed at a running migration.
    MigrationCrash {
        node: usize,
        inc: u32,
    },
    /// The delayed half of a [`Step::RaceFinalize`].
    RaceRestart {
        node: usize,
        crash: bool,
    },
    RaceFinalize {
        target: ReleaseId,
    },
    /// An operator restarts a node that refused after its migration failed
    /// (once the backup volume is repaired).
    OperatorRestart {
        node: usize,
        inc: u32,
    },
    /// `refusal-visible`: node `node` (incarnation `inc`) refuses since
    /// `since`; its peers must have noticed by now.
    RefusalVisible {
        node: usize,
        inc: u32,
        since: Time,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdminKind {
    Finalize { target: ReleaseId, probe: bool },
    Refinalize { target: ReleaseId },
    Backup,
}

#[derive(Clone, Copy, Debug)]
struct Admin {
    node: usize,
    kind: AdminKind,
    /// Sent while some node was restarting.
    during_restart: bool,
}

/// Progress of the current step.
#[derive(Clone, Debug, Default)]
struct StepState {
    started: bool,
    /// A restart is still to be triggered.
    restart_needed: bool,
    t0: Time,
    until: Time,
    /// An admin command of this step is in flight.
    in_flight: Option<u64>,
    /// The step's admin command succeeded.
    succeeded: bool,
    /// Sub-stage of multi-part steps.
    stage: u8,
    next_try: Time,
    /// Client answers from the watched node.
    served: u64,
}

pub(super) struct Driver {
    kind: Option<UpgradeKind>,
    pub(super) oracles: VersionOracles,
    /// The release each node runs at its next start.
    releases: Vec<ReleaseId>,
    start: ReleaseId,
    targets: Vec<ReleaseId>,
    initial_cv: ReleaseId,
    plan: Vec<Step>,
    cursor: usize,
    st: StepState,
    nemesis: VersionNemesis,
    admin: BTreeMap<u64, Admin>,
    next_admin: u64,
    armed: bool,
    /// Per node: crashes aimed at its migrations so far, and whether one is
    /// to follow its pre-migration backup.
    aimed: Vec<u32>,
    crash_after_backup: Vec<bool>,
    /// Per node: served clients since its last start.
    served_since_start: Vec<bool>,
    /// Refusals seen (node, reason, whether it served first).
    refusals: Vec<(usize, String, bool)>,
    /// Restored nodes waiting for `EpochLearned`.
    restoring: Vec<bool>,
    /// When each node last recovered (its peer table starts afresh).
    recovered_at: Vec<Time>,
    pub(super) stats: VersionStats,
    done: bool,
}

impl Driver {
    pub(super) fn new(scenario: &Scenario, seeds: &Seeds) -> Driver {
        let n = scenario.nodes as usize;
        let mut nemesis = VersionNemesis::new(seeds.subsystem("versions"));
        let spec = scenario.upgrade.clone();
        let (start, targets) = match &spec {
            Some(u) => {
                let mut targets = u.targets();
                // Half of the restore seeds restore a pre-migration backup
                // after an upgrade to 0.2 and its finalization.
                if u.kind == UpgradeKind::RestoreBackup
                    && targets.is_empty()
                    && nemesis.rng.gen_bool(0.4)
                {
                    targets = vec![ReleaseId(1)];
                }
                let start = targets
                    .first()
                    .map_or(ReleaseId::current(), |r| ReleaseId(r.0 - 1));
                (start, targets)
            }
            None => (ReleaseId::current(), Vec::new()),
        };
        let releases: Vec<ReleaseId> = match &spec {
            Some(_) => vec![start; n],
            None => (0..n as u32).map(|i| scenario.release_of(i)).collect(),
        };
        let initial_cv = releases.iter().copied().min().unwrap_or(start);
        let plan = match &spec {
            Some(u) => build_plan(u, start, &targets, n, &mut nemesis),
            None => Vec::new(),
        };
        let mut oracles = VersionOracles::new(n, initial_cv);
        if scenario.disk_faults.unlimited {
            oracles.judge_epochs_by_dots();
        }
        Driver {
            kind: spec.as_ref().map(|u| u.kind),
            oracles,
            releases,
            start,
            targets,
            initial_cv,
            done: plan.is_empty(),
            plan,
            cursor: 0,
            st: StepState::default(),
            nemesis,
            admin: BTreeMap::new(),
            next_admin: 0,
            armed: false,
            aimed: vec![0; n],
            crash_after_backup: vec![false; n],
            served_since_start: vec![false; n],
            refusals: Vec::new(),
            restoring: vec![false; n],
            recovered_at: vec![Time::ZERO; n],
            stats: VersionStats::default(),
        }
    }

    pub(super) fn release_of(&self, i: usize) -> ReleaseId {
        self.releases[i]
    }

    pub(super) fn initial_cluster_version(&self) -> ReleaseId {
        self.initial_cv
    }
}

fn pause(u: &UpgradeSpec, nem: &mut VersionNemesis) -> Step {
    Step::Sleep(nem.between(u.pause_ms.min, u.pause_ms.max) * 1000)
}

/// Draws the plan of a version scenario.
fn build_plan(
    u: &UpgradeSpec,
    start: ReleaseId,
    targets: &[ReleaseId],
    n: usize,
    nem: &mut VersionNemesis,
) -> Vec<Step> {
    let mut p = Vec::new();
    let barrier = |t: ReleaseId| Step::Barrier {
        cv: t,
        schema: t.release().schema,
    };
    p.push(pause(u, nem));
    match u.kind {
        UpgradeKind::Rolling | UpgradeKind::CrashMidMigration => {
            if u.kind == UpgradeKind::CrashMidMigration {
                p.push(Step::ArmMigrationCrashes);
            }
            for (ti, &t) in targets.iter().enumerate() {
                let order = nem.order(n);
                for (k, &node) in order.iter().enumerate() {
                    p.push(Step::RestartAs { node, release: t });
                    p.push(pause(u, nem));
                    if k == 0 && ti > 0 {
                        // One node runs a release the others do not know.
                        p.push(Step::Refinalize {
                            target: targets[ti - 1],
                        });
                    }
                    if k + 1 < n && nem.rng.gen_bool(0.3) {
                        p.push(Step::ProbeFinalize { target: t });
                    }
                }
                p.push(pause(u, nem));
                p.push(Step::Finalize { target: t });
                p.push(barrier(t));
                p.push(pause(u, nem));
            }
        }
        UpgradeKind::Canary => {
            let mut active = start;
            for &t in targets {
                let order = nem.order(n);
                let canary = order[0];
                p.push(Step::RestartAs {
                    node: canary,
                    release: t,
                });
                p.push(Step::Watch {
                    node: canary,
                    us: nem.between(3_000, 10_000) * 1000,
                });
                if active > start {
                    // With the canary on a release the others do not know.
                    p.push(Step::Refinalize { target: active });
                }
                active = t;
                p.push(Step::ProbeFinalize { target: t });
                for &node in &order[1..] {
                    p.push(Step::RestartAs { node, release: t });
                    p.push(pause(u, nem));
                }
                p.push(Step::Finalize { target: t });
                p.push(barrier(t));
            }
        }
        UpgradeKind::Rollback => {
            let t = targets.first().copied().unwrap_or(ReleaseId::current());
            let k = nem.rng.gen_range(1..=n);
            let order = nem.order(n);
            let subset = &order[..k];
            for &node in subset {
                p.push(Step::RestartAs { node, release: t });
                p.push(pause(u, nem));
            }
            if k < n {
                p.push(Step::ProbeFinalize { target: t });
            }
            p.push(Step::Sleep(nem.between(2_000, 8_000) * 1000));
            let mut back = subset.to_vec();
            back.shuffle(&mut nem.rng);
            for node in back {
                p.push(Step::RestartAs {
                    node,
                    release: start,
                });
                p.push(pause(u, nem));
            }
            p.push(barrier(start));
        }
        UpgradeKind::Downgrade => {
            let t = targets.first().copied().unwrap_or(ReleaseId::current());
            for node in nem.order(n) {
                p.push(Step::RestartAs { node, release: t });
                p.push(pause(u, nem));
            }
            p.push(Step::Finalize { target: t });
            p.push(barrier(t));
            p.push(pause(u, nem));
            let x = nem.rng.gen_range(0..n);
            p.push(Step::Downgrade {
                node: x,
                release: start,
            });
            p.push(Step::Sleep(nem.between(1_000, 4_000) * 1000));
            p.push(Step::RestartAs {
                node: x,
                release: t,
            });
            p.push(barrier(t));
        }
        UpgradeKind::SkipRelease => {
            let t = targets.last().copied().unwrap_or(ReleaseId::current());
            let x = nem.rng.gen_range(0..n);
            p.push(pause(u, nem));
            p.push(Step::RestartAs {
                node: x,
                release: t,
            });
            p.push(Step::AwaitRefusal { node: x });
            // Long enough for its peers to try it and refuse it.
            p.push(Step::Sleep(nem.between(3_000, 6_000) * 1000));
            p.push(Step::RestartAs {
                node: x,
                release: start,
            });
            p.push(barrier(start));
        }
        UpgradeKind::OldNodeRejoins => {
            let t = targets.first().copied().unwrap_or(ReleaseId::current());
            for node in nem.order(n) {
                p.push(Step::RestartAs { node, release: t });
                p.push(pause(u, nem));
            }
            let x = nem.rng.gen_range(0..n);
            p.push(Step::MissFinalization {
                node: x,
                target: t,
                old: start,
            });
            p.push(Step::AwaitRefusal { node: x });
            p.push(Step::Sleep(nem.between(1_000, 3_000) * 1000));
            p.push(Step::RestartAs {
                node: x,
                release: t,
            });
            p.push(Step::Finalize { target: t });
            p.push(barrier(t));
        }
        UpgradeKind::FinalizeDuringRestart => {
            for &t in targets {
                let order = nem.order(n);
                for &node in &order[..n - 1] {
                    p.push(Step::RestartAs { node, release: t });
                    p.push(pause(u, nem));
                }
                let offset_us = nem.rng.gen_range(-300_000i64..=800_000);
                p.push(Step::RaceFinalize {
                    node: order[n - 1],
                    release: t,
                    target: t,
                    offset_us,
                    crash: nem.rng.gen_bool(0.3),
                });
                p.push(Step::Finalize { target: t });
                p.push(barrier(t));
                // Then a finalization (a no-op now) racing with a crash or
                // restart of a random node.
                let node = nem.rng.gen_range(0..n);
                p.push(Step::RaceFinalize {
                    node,
                    release: t,
                    target: t,
                    offset_us: nem.rng.gen_range(-300_000i64..=800_000),
                    crash: nem.rng.gen_bool(0.5),
                });
                p.push(barrier(t));
                p.push(pause(u, nem));
            }
        }
        UpgradeKind::RestoreBackup => {
            let x = nem.rng.gen_range(0..n);
            if let Some(&t) = targets.first() {
                // Upgrade and finalize (each node backs up before its
                // migration), then restore the pre-migration backup.
                for node in nem.order(n) {
                    p.push(Step::RestartAs { node, release: t });
                    p.push(pause(u, nem));
                }
                p.push(Step::Finalize { target: t });
                p.push(barrier(t));
                p.push(Step::Sleep(nem.between(1_000, 6_000) * 1000));
                p.push(Step::Restore {
                    node: x,
                    oldest: true,
                });
                p.push(barrier(t));
            } else {
                p.push(Step::Backup { node: x });
                // Long enough for deletes made after the backup to have
                // their tombstones reaped (grace 10 s) before the restore.
                p.push(Step::Sleep(nem.between(14_000, 25_000) * 1000));
                p.push(Step::Restore {
                    node: x,
                    oldest: false,
                });
                p.push(barrier(start));
            }
        }
    }
    p
}

/// What a step handler decided.
enum Progress {
    Wait,
    Done,
}

impl World {
    // ----- hooks called from world.rs --------------------------------------

    /// Schedules the first step of the plan.
    pub(super) fn versions_start(&mut self) {
        if !self.versions.done {
            self.after(POLL_US, Ev::Versions(VEv::Tick));
        }
    }

    pub(super) fn versions_handle(&mut self, ev: VEv) {
        match ev {
            VEv::Tick => self.versions_tick(),
            VEv::AdminDeadline { id } => {
                if let Some(a) = self.versions.admin.remove(&id) {
                    self.version_record(a.node, "admin-timeout", "no answer");
                    if self.versions.st.in_flight == Some(id) {
                        self.versions.st.in_flight = None;
                    }
                }
            }
            VEv::MigrationCrash { node, inc } => self.migration_crash(node, inc),
            VEv::OperatorRestart { node, inc } => self.operator_restart(node, inc),
            VEv::RaceRestart { node, crash } => self.race_restart(node, crash),
            VEv::RefusalVisible { node, inc, since } => self.refusal_visible(node, inc, since),
            VEv::RaceFinalize { target } => {
                if self.send_finalize(target, false, None, false).is_some() {
                    self.versions.stats.finalize_races += 1;
                }
            }
        }
    }

    /// A storage write by node `i` (before the disk sees it).
    pub(super) fn versions_on_write(&mut self, i: usize, key: &[u8], value: Option<&Bytes>) {
        let Some(release) = self.slots[i].node.as_ref().map(|n| n.config().release) else {
            return;
        };
        if let Err(v) = self.versions.oracles.write(i, release, key, value) {
            self.violation(v);
        }
    }

    /// A node event (during a drain: nothing here feeds a node).
    pub(super) fn versions_on_event(&mut self, i: usize, e: &Event) {
        let node = self.slots[i].node.as_ref();
        let verdict = match e {
            // A hostile peer's unknown type is judged by `hostile-frame`.
            Event::UnknownMessage { .. } if self.hostile_feed => Ok(()),
            Event::UnknownMessage { from, msg_type } => {
                Err(VersionOracles::unknown_message(i, from.0, *msg_type))
            }
            Event::ClusterVersion { version } => {
                if let Some(v) = ReleaseId::by_version(version) {
                    self.versions.oracles.cluster_version(i, v);
                }
                self.version_record(i, "cluster-version", version);
                Ok(())
            }
            Event::Recovered { epoch, .. } => {
                self.versions.served_since_start[i] = false;
                self.versions.recovered_at[i] = self.now;
                match node {
                    // A node refusing at start (its disk at a cluster
                    // version its build does not know, say) acts on none.
                    Some(n) if n.phase() == cairn_core::node::Phase::Refusing => Ok(()),
                    Some(n) => {
                        let cv = n.cluster_version();
                        self.versions.oracles.recovered(i, cv, *epoch, false)
                    }
                    None => Ok(()),
                }
            }
            Event::WriteIssued { dot, .. } => {
                self.versions.served_since_start[i] = true;
                self.versions.oracles.write_issued(i, dot.actor.epoch)
            }
            Event::Serving => {
                self.versions.served_since_start[i] = true;
                let oracles = &mut self.versions.oracles;
                if oracles.migration_pending(i) {
                    oracles.migration_check(
                        i,
                        "serving again after an interrupted migration",
                        |k| node.and_then(|n| n.key_state(k)),
                    )
                } else {
                    Ok(())
                }
            }
            Event::MigrationStarted { from, to } => {
                self.versions.stats.migrations_started += 1;
                let durable = logical_records(&self.slots[i].disk.load_all());
                let r = self
                    .versions
                    .oracles
                    .migration_started(i, *from, *to, durable, |k| {
                        node.and_then(|n| n.key_state(k))
                    });
                self.version_record(i, "migration-started", &format!("{from}->{to}"));
                self.aim_migration_crash(i);
                r
            }
            Event::MigrationFinished { from, to } => {
                self.versions.stats.migrations_finished += 1;
                let r = self
                    .versions
                    .oracles
                    .migration_check(i, "finished", |k| node.and_then(|n| n.key_state(k)));
                self.version_record(i, "migration-finished", &format!("{from}->{to}"));
                r
            }
            Event::MigrationFailed { from, to, reason } => {
                self.versions.stats.migrations_failed += 1;
                self.version_record(i, "migration-failed", &format!("{from}->{to}: {reason}"));
                // The operator reads the refusal, repairs the backup volume
                // and restarts the node: its migration starts over.
                self.slots[i].disk.repair_backups();
                let d = self.versions.nemesis.between(POLL_US, 20 * POLL_US);
                let inc = self.slots[i].inc;
                self.after(d, Ev::Versions(VEv::OperatorRestart { node: i, inc }));
                Ok(())
            }
            Event::BackupTaken { info } => {
                self.version_record(i, "backup", &info.reason);
                if info.reason.starts_with("before migration")
                    && self.versions.crash_after_backup[i]
                {
                    self.versions.crash_after_backup[i] = false;
                    let lat = self.options.disk.sync_latency_us.1.max(1);
                    let d = self.versions.nemesis.between(0, lat);
                    let inc = self.slots[i].inc;
                    self.after(d, Ev::Versions(VEv::MigrationCrash { node: i, inc }));
                }
                Ok(())
            }
            Event::Refusing { reason } => {
                let bound = node.map(|n| refusal_bound_us(&n.config().timing));
                let served = self.versions.served_since_start[i];
                self.versions.refusals.push((i, reason.clone(), served));
                self.version_record(i, "refusing", reason);
                if let Some(bound) = bound {
                    let (inc, since) = (self.slots[i].inc, self.now);
                    self.after(
                        bound,
                        Ev::Versions(VEv::RefusalVisible {
                            node: i,
                            inc,
                            since,
                        }),
                    );
                }
                Ok(())
            }
            Event::EpochLearned { epoch } => {
                if self.versions.restoring[i] {
                    self.versions.restoring[i] = false;
                    self.versions.stats.epochs_learned += 1;
                }
                self.version_record(i, "epoch-learned", &epoch.to_string());
                self.versions.oracles.epoch_learned(i, *epoch)
            }
            Event::TombstoneReaped { key } => {
                self.versions.oracles.excuse(i, key);
                Ok(())
            }
            Event::CorruptRecord { key } => {
                // A damaged data record names a record key; the snapshot
                // is by user key.
                if let Some(user) = user_key_of(key) {
                    self.versions.oracles.excuse(i, user);
                }
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(v) = verdict {
            self.violation(v);
        }
    }

    /// A reply from node `i`. True when it answered an admin command.
    pub(super) fn versions_on_reply(
        &mut self,
        i: usize,
        id: RequestId,
        response: &Response,
    ) -> bool {
        let Some(a) = self.versions.admin.remove(&id.0) else {
            if let (Some(Step::Watch { node, .. }), Response::Read { .. } | Response::Written) =
                (self.versions.plan.get(self.versions.cursor), response)
            {
                if *node == i {
                    self.versions.st.served += 1;
                }
            }
            return false;
        };
        let mine = self.versions.st.in_flight == Some(id.0);
        if mine {
            self.versions.st.in_flight = None;
        }
        match (a.kind, response) {
            (AdminKind::Finalize { target, probe }, Response::Finalized { cluster_version }) => {
                self.versions.stats.finalized += 1;
                if a.during_restart {
                    self.versions.stats.finalized_during_restart += 1;
                }
                self.version_record(i, "finalized", cluster_version);
                // Every node must run a release that supports the target.
                let behind: Vec<String> = (0..self.slots.len())
                    .filter(|&j| self.versions.releases[j] < target)
                    .map(|j| format!("n{} runs {}", j + 1, self.versions.releases[j].version()))
                    .collect();
                if !behind.is_empty() {
                    self.violation(Violation::new(
                        "finalize-guard",
                        format!(
                            "n{} finalized {} while {}",
                            i + 1,
                            target.version(),
                            behind.join(", ")
                        ),
                    ));
                }
                let reached = ReleaseId::by_version(cluster_version).is_some_and(|v| v >= target);
                if mine && reached && !probe {
                    self.versions.st.succeeded = true;
                }
            }
            (AdminKind::Refinalize { target }, r) => {
                let reached = matches!(&r, Response::Finalized { cluster_version }
                    if ReleaseId::by_version(cluster_version).is_some_and(|v| v >= target));
                // A node that stopped serving meanwhile may refuse.
                let serving = self.slots[i].node.as_ref().is_some_and(|n| n.is_serving());
                if reached {
                    self.versions.stats.refinalized += 1;
                    self.version_record(i, "refinalized", target.version());
                } else if serving {
                    self.violation(Violation::new(
                        "finalize-idempotent",
                        format!(
                            "n{} answered a repeated finalization of the active cluster version {} with {r:?}",
                            i + 1,
                            target.version()
                        ),
                    ));
                }
                if mine {
                    self.versions.st.succeeded = true;
                }
            }
            (AdminKind::Finalize { .. }, Response::Error(ClientError::Refused(why))) => {
                self.versions.stats.finalize_refused += 1;
                self.version_record(i, "finalize-refused", why);
            }
            (AdminKind::Backup, Response::BackedUp { info }) => {
                self.versions.stats.backups += 1;
                self.version_record(i, "backed-up", &info.label);
                if mine {
                    self.versions.st.succeeded = true;
                }
            }
            (_, r) => {
                let text = format!("{r:?}");
                self.version_record(i, "admin-failed", &text);
            }
        }
        if mine {
            let d = self.versions.nemesis.between(300_000, 2_000_000);
            self.versions.st.next_try = Time(self.now.as_micros() + d);
        }
        true
    }

    /// Why the liveness phase cannot end yet, if the plan is not finished.
    pub(super) fn versions_gap(&self) -> Option<String> {
        if self.versions.done {
            return None;
        }
        let step = self.versions.plan.get(self.versions.cursor)?;
        Some(format!(
            "the version plan is at step {}/{} ({step:?})",
            self.versions.cursor + 1,
            self.versions.plan.len()
        ))
    }

    /// At convergence: what the scenario exists for must have happened.
    pub(super) fn versions_final_check(&mut self) -> Result<(), Violation> {
        let Some(kind) = self.versions.kind else {
            return Ok(());
        };
        let fail = |what: String| {
            Err(Violation::new(
                "expectation",
                format!("expectation not met: {what}"),
            ))
        };
        let s = self.versions.stats;
        let final_release = match kind {
            UpgradeKind::Rollback | UpgradeKind::SkipRelease => self.versions.start,
            _ => self
                .versions
                .targets
                .last()
                .copied()
                .unwrap_or(self.versions.start),
        };
        let schema = final_release.release().schema;
        for (j, slot) in self.slots.iter().enumerate() {
            let Some(n) = slot.node.as_ref() else {
                return fail(format!("n{} is not running at the end", j + 1));
            };
            if n.config().release != final_release
                || n.cluster_version() != final_release
                || n.schema() != schema
            {
                return fail(format!(
                    "n{} ends on release {} at cluster version {} with schema {}, not {} / schema {schema}",
                    j + 1,
                    n.config().release.version(),
                    n.cluster_version().version(),
                    n.schema(),
                    final_release.version()
                ));
            }
            let on_disk = image_schemas(&slot.disk.load_all());
            if on_disk.iter().any(|&x| x != schema) {
                return fail(format!(
                    "n{}'s disk holds records of schemas {on_disk:?}, not only {schema}",
                    j + 1
                ));
            }
        }
        let upgraded = self.versions.targets.len() as u64;
        let finalizing = !(matches!(kind, UpgradeKind::Rollback | UpgradeKind::SkipRelease)
            || (kind == UpgradeKind::RestoreBackup && upgraded == 0));
        if finalizing && s.finalized < upgraded {
            return fail(format!(
                "{} finalization(s) for {upgraded} upgrade step(s)",
                s.finalized
            ));
        }
        let start = self.versions.start.version();
        let names_versions =
            |r: &str, v: &str| r.contains(start) && (r.contains(v) || r.contains("schema"));
        match kind {
            UpgradeKind::Canary if s.canaries_watched == 0 => {
                return fail("the canary never served clients while the others were old".into())
            }
            UpgradeKind::Rollback if s.rollbacks == 0 => {
                return fail("nothing was rolled back".into())
            }
            UpgradeKind::Downgrade if s.downgrades_refused == 0 => {
                return fail("no downgrade after finalization was refused".into())
            }
            UpgradeKind::CrashMidMigration if s.mid_migration_crashes == 0 => {
                return fail("no crash hit a running migration".into())
            }
            UpgradeKind::OldNodeRejoins if s.old_nodes_refused == 0 => {
                return fail("the old node was never refused".into())
            }
            UpgradeKind::SkipRelease if s.old_nodes_refused == 0 => {
                return fail("the node that skipped a release was never refused".into())
            }
            UpgradeKind::FinalizeDuringRestart if s.finalize_races == 0 => {
                return fail("no finalization raced with a restart".into())
            }
            UpgradeKind::RestoreBackup if s.restores == 0 || s.epochs_learned == 0 => {
                return fail(format!(
                    "{} restore(s), {} epoch(s) learned",
                    s.restores, s.epochs_learned
                ))
            }
            _ => {}
        }
        if matches!(kind, UpgradeKind::Downgrade | UpgradeKind::OldNodeRejoins) {
            // Every refusal says which versions are involved.
            let t = final_release.version();
            if let Some((j, r, _)) = self
                .versions
                .refusals
                .iter()
                .find(|(_, r, _)| !names_versions(r, t))
            {
                return fail(format!(
                    "n{}'s refusal does not name the versions: {r}",
                    j + 1
                ));
            }
        }
        self.versions.stats.expectations_met += 1;
        Ok(())
    }

    /// `refusal-visible`: node `i` has refused since `since`. Every running
    /// peer linked to it both ways for the bound (since the refusal, the
    /// peer's start and the last link change) must not list it as serving.
    /// Judged again every bound while it keeps refusing.
    fn refusal_visible(&mut self, i: usize, inc: u32, since: Time) {
        if self.phase == Phase::Done || self.outcome.is_some() || self.slots[i].inc != inc {
            return;
        }
        let Some(node) = self.slots[i].node.as_ref() else {
            return;
        };
        if node.phase() != cairn_core::node::Phase::Refusing || self.slots[i].state != NodeState::Up
        {
            return;
        }
        let bound = refusal_bound_us(&node.config().timing);
        let (id, release) = (node.id(), node.release().version);
        let mut verdict = Ok(());
        for j in (0..self.slots.len()).filter(|&j| j != i) {
            let Some(peer) = self.slots[j].node.as_ref() else {
                continue;
            };
            let running = self.slots[j].state == NodeState::Up
                && matches!(
                    peer.phase(),
                    cairn_core::node::Phase::Serving
                        | cairn_core::node::Phase::Migrating
                        | cairn_core::node::Phase::Rejoining
                        | cairn_core::node::Phase::Refusing
                );
            let linked = !self.net.is_blocked(i, j) && !self.net.is_blocked(j, i);
            let from = since
                .max(self.net_changed_at)
                .max(self.versions.recovered_at[j]);
            if !running || !linked || self.now.as_micros() < from.as_micros() + bound {
                continue;
            }
            if let Err(v) = check_refusal_visible(id, release, peer, since, self.now) {
                verdict = Err(v);
                break;
            }
        }
        match verdict {
            Err(v) => self.violation(v),
            Ok(()) => self.after(
                bound,
                Ev::Versions(VEv::RefusalVisible {
                    node: i,
                    inc,
                    since,
                }),
            ),
        }
    }

    // ----- the plan ---------------------------------------------------------

    fn version_record(&mut self, i: usize, action: &'static str, detail: &str) {
        self.record(Record::Version {
            node: i as u32 + 1,
            action,
            detail,
        });
    }

    fn any_restarting(&self) -> bool {
        self.slots.iter().any(|s| {
            s.state != NodeState::Up
                || s.node.as_ref().is_some_and(|n| {
                    !n.is_serving() && n.phase() != cairn_core::node::Phase::Refusing
                })
        })
    }

    fn versions_tick(&mut self) {
        if self.phase == Phase::Done || self.outcome.is_some() {
            return;
        }
        loop {
            let Some(step) = self.versions.plan.get(self.versions.cursor).cloned() else {
                self.versions.done = true;
                self.version_record(0, "plan-done", "");
                return;
            };
            if !self.versions.st.started {
                self.versions.st.started = true;
                self.versions.st.t0 = self.now;
                self.version_record(0, "step", step.name());
            }
            match self.run_step(&step) {
                Progress::Done => {
                    self.versions.cursor += 1;
                    self.versions.st = StepState::default();
                    if self.outcome.is_some() {
                        return;
                    }
                }
                Progress::Wait => {
                    self.after(POLL_US, Ev::Versions(VEv::Tick));
                    return;
                }
            }
        }
    }

    /// Node `i` runs its planned release and serves (or refuses).
    fn settled(&self, i: usize) -> Option<&cairn_core::Node> {
        let s = &self.slots[i];
        let n = s.node.as_ref()?;
        (s.state == NodeState::Up && n.config().release == self.versions.releases[i]).then_some(n)
    }

    /// Sets the release node `i` starts as next, counting upgrades and
    /// rollbacks.
    fn plan_release(&mut self, i: usize, release: ReleaseId) {
        let old = self.versions.releases[i];
        if release > old {
            self.versions.stats.upgrades += 1;
        } else if release < old {
            self.versions.stats.rollbacks += 1;
        }
        self.versions.releases[i] = release;
        self.version_record(i, "release", release.version());
    }

    /// A step's restart of `node` as `release`: planned once, then retried
    /// until the node is back. True once it has restarted.
    fn restart_as(&mut self, node: usize, release: ReleaseId) -> bool {
        if self.versions.st.stage == 0 {
            self.plan_release(node, release);
            self.versions.st.stage = 1;
            self.versions.st.restart_needed = true;
        }
        if self.versions.st.restart_needed {
            if !self.restart_into_plan(node) {
                return false;
            }
            self.versions.st.restart_needed = false;
        }
        true
    }

    /// Triggers a clean restart of `i` if it runs another release than
    /// planned. Returns false while it has to wait.
    fn restart_into_plan(&mut self, i: usize) -> bool {
        let s = &self.slots[i];
        match s.state {
            NodeState::Down | NodeState::ShuttingDown => true,
            NodeState::Up => {
                let runs = s.node.as_ref().map(|n| n.config().release);
                if runs == Some(self.versions.releases[i]) {
                    return true;
                }
                if self.no_room_to_stop() {
                    return false;
                }
                self.apply_action(Action::CleanRestart(i));
                true
            }
        }
    }

    /// Sends a finalization to a random serving node (not `avoid`); with
    /// `for_step`, its answer completes the current step.
    fn send_finalize(
        &mut self,
        target: ReleaseId,
        probe: bool,
        avoid: Option<usize>,
        for_step: bool,
    ) -> Option<u64> {
        let serving = self.serving_nodes(avoid);
        let at = self.versions.nemesis.pick(&serving)?;
        let kind = AdminKind::Finalize { target, probe };
        self.versions.stats.finalize_sent += 1;
        if self.any_restarting() {
            self.versions.stats.finalize_during_restart += 1;
        }
        let what = format!(
            "{}{}",
            target.version(),
            if probe { " (probe)" } else { "" }
        );
        self.version_record(at, "finalize", &what);
        Some(self.send_admin(
            at,
            kind,
            AdminCommand::Finalize {
                target: Some(target.version().into()),
            },
            for_step,
        ))
    }

    fn send_admin(
        &mut self,
        at: usize,
        kind: AdminKind,
        command: AdminCommand,
        for_step: bool,
    ) -> u64 {
        self.versions.next_admin += 1;
        let id = ADMIN_ID_BASE + self.versions.next_admin;
        let during_restart = self.any_restarting();
        self.versions.admin.insert(
            id,
            Admin {
                node: at,
                kind,
                during_restart,
            },
        );
        if for_step {
            // Set before the command is fed: the answer may come at once.
            self.versions.st.in_flight = Some(id);
        }
        self.after(ADMIN_TIMEOUT_US, Ev::Versions(VEv::AdminDeadline { id }));
        self.feed(at, |now| Input::Admin {
            now,
            id: RequestId(id),
            command,
        });
        id
    }

    fn run_step(&mut self, step: &Step) -> Progress {
        let now = self.now;
        match *step {
            Step::Sleep(us) => {
                if self.versions.st.until == Time::ZERO {
                    self.versions.st.until = Time(now.as_micros() + us);
                }
                if now >= self.versions.st.until {
                    Progress::Done
                } else {
                    Progress::Wait
                }
            }
            Step::ArmMigrationCrashes => {
                self.versions.armed = true;
                Progress::Done
            }
            Step::RestartAs { node, release } => {
                if !self.restart_as(node, release) {
                    return Progress::Wait;
                }
                match self.settled(node) {
                    Some(n) if n.is_serving() => Progress::Done,
                    Some(n) if n.phase() == cairn_core::node::Phase::Refusing => {
                        // A refusal here is judged by the barrier that follows
                        // (or by the scenario's expectations).
                        Progress::Done
                    }
                    _ => Progress::Wait,
                }
            }
            Step::Finalize { target } | Step::ProbeFinalize { target } => {
                let probe = matches!(step, Step::ProbeFinalize { .. });
                if self.versions.st.succeeded {
                    return Progress::Done;
                }
                if self.versions.st.in_flight.is_some() || now < self.versions.st.next_try {
                    return Progress::Wait;
                }
                if probe && self.versions.st.stage == 1 {
                    // Answered (or timed out) once: a probe is not retried.
                    return Progress::Done;
                }
                if self.send_finalize(target, probe, None, true).is_some() {
                    self.versions.st.stage = 1;
                }
                Progress::Wait
            }
            Step::Refinalize { target } => {
                if self.versions.st.succeeded {
                    return Progress::Done;
                }
                if self.versions.st.in_flight.is_some() {
                    return Progress::Wait;
                }
                if self.versions.st.stage == 1 {
                    // Timed out (the node went down meanwhile): not judged.
                    return Progress::Done;
                }
                let serving = self.serving_nodes(None);
                let Some(at) = self.versions.nemesis.pick(&serving) else {
                    return Progress::Wait;
                };
                self.version_record(at, "refinalize", target.version());
                let command = AdminCommand::Finalize {
                    target: Some(target.version().into()),
                };
                self.send_admin(at, AdminKind::Refinalize { target }, command, true);
                self.versions.st.stage = 1;
                Progress::Wait
            }
            Step::Barrier { cv, schema } => {
                let ok = (0..self.slots.len()).all(|j| {
                    self.settled(j).is_some_and(|n| {
                        n.is_serving() && n.cluster_version() >= cv && n.schema() == schema
                    })
                });
                if ok {
                    Progress::Done
                } else {
                    Progress::Wait
                }
            }
            Step::Watch { node, us } => {
                let ok = self.settled(node).is_some_and(|n| n.is_serving());
                if now.as_micros() >= self.versions.st.t0.as_micros() + us
                    && ok
                    && self.versions.st.served > 0
                {
                    self.versions.stats.canaries_watched += 1;
                    let detail = format!("{} answers", self.versions.st.served);
                    self.version_record(node, "canary-watched", &detail);
                    return Progress::Done;
                }
                Progress::Wait
            }
            Step::Downgrade { node, release } => {
                if !self.restart_as(node, release) {
                    return Progress::Wait;
                }
                let Some(n) = self.settled(node) else {
                    return Progress::Wait;
                };
                if let Some(why) = n.refusal() {
                    let why = why.to_string();
                    self.versions.stats.downgrades_refused += 1;
                    self.version_record(node, "downgrade-refused", &why);
                    return Progress::Done;
                }
                if n.is_serving() {
                    let v = Violation::new(
                        "downgrade-refused",
                        format!(
                            "n{} serves on release {} although the cluster was finalized at {}",
                            node + 1,
                            release.version(),
                            self.versions.oracles.max_cluster_version().version()
                        ),
                    );
                    self.violation(v);
                    return Progress::Done;
                }
                Progress::Wait
            }
            Step::MissFinalization { node, target, old } => {
                self.miss_finalization(node, target, old)
            }
            Step::AwaitRefusal { node } => {
                let Some(n) = self.settled(node) else {
                    return Progress::Wait;
                };
                match n.refusal() {
                    Some(why) => {
                        let why = why.to_string();
                        let served = self.versions.served_since_start[node];
                        self.versions.stats.old_nodes_refused += 1;
                        let when = if served {
                            "after rejoining"
                        } else {
                            "at start"
                        };
                        self.version_record(node, "old-node-refused", &format!("{when}: {why}"));
                        Progress::Done
                    }
                    None => Progress::Wait,
                }
            }
            Step::RaceFinalize {
                node,
                release,
                target,
                offset_us,
                crash,
            } => {
                if self.versions.st.stage == 0 {
                    if self.down_count() > 0 {
                        return Progress::Wait;
                    }
                    self.versions.st.stage = 1;
                    if offset_us < 0 {
                        if self
                            .send_finalize(target, false, Some(node), false)
                            .is_some()
                        {
                            self.versions.stats.finalize_races += 1;
                        }
                        self.plan_release(node, release);
                        self.after(
                            offset_us.unsigned_abs(),
                            Ev::Versions(VEv::RaceRestart { node, crash }),
                        );
                    } else {
                        self.plan_release(node, release);
                        self.race_restart(node, crash);
                        self.after(offset_us as u64, Ev::Versions(VEv::RaceFinalize { target }));
                    }
                    self.versions.st.until = Time(now.as_micros() + offset_us.unsigned_abs() + 1);
                }
                if now > self.versions.st.until {
                    Progress::Done
                } else {
                    Progress::Wait
                }
            }
            Step::Backup { node } => {
                if self.versions.st.succeeded {
                    return Progress::Done;
                }
                if self.versions.st.in_flight.is_some() || now < self.versions.st.next_try {
                    return Progress::Wait;
                }
                if self.settled(node).is_some_and(|n| n.is_serving()) {
                    self.send_admin(node, AdminKind::Backup, AdminCommand::Backup, true);
                }
                Progress::Wait
            }
            Step::Restore { node, oldest } => self.restore(node, oldest),
        }
    }

    fn race_restart(&mut self, node: usize, crash: bool) {
        if self.slots[node].state != NodeState::Up {
            return;
        }
        if crash {
            self.apply_action(Action::Crash(node));
        } else {
            self.apply_action(Action::CleanRestart(node));
        }
    }

    fn miss_finalization(&mut self, node: usize, target: ReleaseId, old: ReleaseId) -> Progress {
        let now = self.now;
        let st = &mut self.versions.st;
        match st.stage {
            // Wait for a calm, whole cluster.
            0 => {
                if now < st.next_try {
                    return Progress::Wait;
                }
                let calm = self.down_count() == 0
                    && (0..self.slots.len())
                        .all(|j| self.settled(j).is_some_and(|n| n.is_serving()));
                if !calm {
                    return Progress::Wait;
                }
                self.apply_action(Action::Isolate(node));
                match self.send_finalize(target, false, Some(node), true) {
                    Some(_) => self.versions.st.stage = 1,
                    None => self.apply_action(Action::Heal),
                }
                Progress::Wait
            }
            1 => {
                if st.in_flight.is_some() {
                    return Progress::Wait;
                }
                if !st.succeeded {
                    // Refused (someone was down): heal and try again later.
                    st.stage = 0;
                    self.apply_action(Action::Heal);
                    return Progress::Wait;
                }
                self.plan_release(node, old);
                if self.slots[node].state == NodeState::Up {
                    self.apply_action(Action::Crash(node));
                }
                Progress::Done
            }
            _ => Progress::Done,
        }
    }

    fn restore(&mut self, node: usize, oldest: bool) -> Progress {
        match self.versions.st.stage {
            0 => {
                if self.slots[node].state == NodeState::ShuttingDown {
                    return Progress::Wait;
                }
                let backups: Vec<BTreeMap<Bytes, Bytes>> = self.slots[node]
                    .disk
                    .backups()
                    .map(|(_, s)| s.clone())
                    .collect();
                let chosen = if oldest {
                    backups.first()
                } else {
                    backups.last()
                };
                let Some(image) = chosen.cloned() else {
                    self.violation(Violation::new(
                        "expectation",
                        format!(
                            "expectation not met: n{} has no backup to restore",
                            node + 1
                        ),
                    ));
                    return Progress::Done;
                };
                if self.slots[node].state == NodeState::Up {
                    self.apply_action(Action::Crash(node));
                }
                let mut image = image;
                image.insert(Bytes::from_static(RESTORED_KEY), storage::restored_marker());
                self.slots[node].disk.replace_durable(image);
                self.slots[node].kept_epoch = None;
                self.versions.oracles.disk_replaced(node, true);
                self.versions.restoring[node] = true;
                self.versions.stats.restores += 1;
                self.version_record(
                    node,
                    "restored",
                    if oldest {
                        "oldest backup"
                    } else {
                        "newest backup"
                    },
                );
                self.versions.st.stage = 1;
                Progress::Wait
            }
            _ => {
                let learned = !self.versions.restoring[node];
                if learned && self.settled(node).is_some_and(|n| n.is_serving()) {
                    Progress::Done
                } else {
                    Progress::Wait
                }
            }
        }
    }

    // ----- crashes aimed at migrations --------------------------------------

    /// Node `i` started a migration: maybe crash it part-way.
    fn aim_migration_crash(&mut self, i: usize) {
        let v = &mut self.versions;
        if !v.armed || v.aimed[i] >= MIGRATION_CRASHES_PER_NODE {
            return;
        }
        if v.nemesis.rng.gen_bool(0.5) {
            // Right after the backup, while the copy is being made durable.
            v.crash_after_backup[i] = true;
        } else {
            let lat = self.options.disk.sync_latency_us.1.max(1);
            let d = self.versions.nemesis.between(0, 3 * lat);
            let inc = self.slots[i].inc;
            self.after(d, Ev::Versions(VEv::MigrationCrash { node: i, inc }));
        }
    }

    /// Restarts `node` if it still refuses in the same incarnation (waiting
    /// while the fault budget has no room for another node down).
    fn operator_restart(&mut self, node: usize, inc: u32) {
        if !self.still_in(node, inc, cairn_core::node::Phase::Refusing) {
            return;
        }
        if self.no_room_to_stop() {
            self.after(POLL_US, Ev::Versions(VEv::OperatorRestart { node, inc }));
            return;
        }
        self.version_record(node, "operator-restart", "after a failed migration");
        self.apply_action(Action::CleanRestart(node));
    }

    /// The running nodes that serve, `avoid` aside.
    fn serving_nodes(&self, avoid: Option<usize>) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&j| Some(j) != avoid)
            .filter(|&j| self.slots[j].state == NodeState::Up)
            .filter(|&j| self.slots[j].node.as_ref().is_some_and(|n| n.is_serving()))
            .collect()
    }

    /// Whether `node` still runs incarnation `inc`, in `phase`.
    fn still_in(&self, node: usize, inc: u32, phase: cairn_core::node::Phase) -> bool {
        let s = &self.slots[node];
        s.inc == inc
            && s.state == NodeState::Up
            && s.node.as_ref().is_some_and(|n| n.phase() == phase)
    }

    /// Whether stopping one more node now would exceed the fault budget.
    fn no_room_to_stop(&self) -> bool {
        let budget = self.options.faults.max_down as usize;
        self.down_count() >= budget && self.phase == Phase::Safety
    }

    fn migration_crash(&mut self, node: usize, inc: u32) {
        if !self.still_in(node, inc, cairn_core::node::Phase::Migrating) {
            return;
        }
        self.versions.aimed[node] += 1;
        self.versions.stats.mid_migration_crashes += 1;
        self.version_record(node, "crash-mid-migration", "");
        self.apply_action(Action::Crash(node));
    }
}

/// The user key of a data record's key (`d`, schema, the partition from
/// schema 3 on, the user key: `cairn_core::storage::data_key`).
fn user_key_of(record_key: &[u8]) -> Option<&[u8]> {
    match record_key {
        [b'd', s, rest @ ..] if *s >= 3 => rest.get(2..),
        [b'd', _, rest @ ..] => Some(rest),
        _ => None,
    }
}
