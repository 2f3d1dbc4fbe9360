//! Versions: the active cluster version, finalization, schema migrations and
//! backups.
//!
//! The cluster version is a monotone max-register. A node persists a higher
//! value before it acts on it (uses new wire messages or on-disk formats),
//! never lowers it, and spreads it by gossip. Finalization raises it, and is
//! refused unless every member runs a release that supports the target and
//! is serving. A node whose binary is older than the active cluster version
//! refuses to serve and says why.
//!
//! A schema migration (the live schema is behind what the cluster version
//! asks for) runs at start-up or online once finalization arrives:
//! 1. stop serving and wait until every write is durable;
//! 2. take a backup;
//! 3. persist a progress record, then write every record again in the new
//!    schema's key namespace, in durable chunks (the old records are not
//!    touched, and an interrupted attempt resumes where it stopped);
//! 4. the atomic switch: write the metadata with the new schema, synced;
//! 5. delete the old namespace and the progress record; serve again.
//!
//! A crash before step 4 leaves the old schema live (the partial new one is
//! cleaned up or resumed at start-up); after it, the new one. A migration
//! that keeps failing stops after [`MAX_ATTEMPTS`] and the node refuses to
//! serve, with the old schema intact (the automatic backup holds it too).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;

use crate::api::{AdminCommand, BackupInfo, ClientError, Event, Output, Response};
use crate::storage::{self, Progress};
use crate::types::{IoId, RequestId};
use crate::version::{Feature, ReleaseId};
use crate::wire::Health;

use super::durability::Deferred;
use super::{Node, Phase};

/// Attempts of one migration before the node gives up and refuses to serve.
pub const MAX_ATTEMPTS: u32 = 5;
/// Keys rewritten per durable chunk.
const CHUNK: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Waiting for every write to be durable.
    Quiescing,
    BackingUp(IoId),
    Copying,
    Switching,
    Cleaning,
}

pub(crate) struct Migration {
    from: u16,
    to: u16,
    step: Step,
    attempts: u32,
    /// The last key copied.
    cursor: Option<Bytes>,
}

/// What waits for a backup to complete.
pub(crate) enum BackupFor {
    Admin(RequestId),
    Migration,
}

impl Node {
    /// The release a version names, as this node's build knows it: a build
    /// knows its own release and the ones before it, never a later one (the
    /// simulator runs every release from one table, so this keeps an old
    /// node as blind to newer releases as its real binary is).
    pub(super) fn known_release(&self, version: &str) -> Option<ReleaseId> {
        ReleaseId::by_version(version).filter(|r| *r <= self.cfg.release)
    }

    /// The active cluster version.
    pub fn cluster_version(&self) -> ReleaseId {
        self.cluster_version
    }

    /// The schema of the live records.
    pub fn schema(&self) -> u16 {
        self.schema
    }

    /// Why the node refuses to serve, if it does.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// True once the cluster version enables `f` (and this release has it).
    pub(super) fn feature_active(&self, f: Feature) -> bool {
        self.release.has(f) && self.cluster_version.release().has(f)
    }

    /// The schema the cluster version asks this node to keep its data in.
    pub(super) fn target_schema(&self) -> u16 {
        if self.bugs().migrate_before_finalization {
            return self.release.schema;
        }
        self.cluster_version
            .release()
            .schema
            .min(self.release.schema)
    }

    /// Why this binary cannot serve at cluster version `cv`, if it cannot.
    pub(super) fn version_refusal(&self, cv: ReleaseId) -> Option<String> {
        let me = self.cfg.release;
        if cv > me {
            return Some(format!(
                "binary {} is older than the active cluster version {}: run {} or newer, or restore a backup taken before the finalization",
                me.version(),
                cv.version(),
                cv.version()
            ));
        }
        if cv < me.min_cluster_version() {
            return Some(format!(
                "release {} needs the cluster finalized at {} or later, but it is at {}: upgrade every node to {} and finalize first",
                me.version(),
                me.min_cluster_version().version(),
                cv.version(),
                me.min_cluster_version().version()
            ));
        }
        None
    }

    pub(super) fn refuse(&mut self, reason: String) {
        if self.refusal.as_deref() == Some(reason.as_str()) {
            return;
        }
        self.fail_all_ops();
        self.phase = Phase::Refusing;
        self.refusal = Some(reason.clone());
        self.emit(Event::Refusing { reason });
        // Tell every peer now, not one a gossip round: they list this node
        // as serving until they hear otherwise.
        self.announce();
    }

    // ---- admin ---------------------------------------------------------

    pub(super) fn handle_admin(&mut self, id: RequestId, command: AdminCommand) {
        match command {
            AdminCommand::Finalize { target } => self.admin_finalize(id, target),
            AdminCommand::Backup => {
                if !matches!(self.phase, Phase::Serving | Phase::Refusing) {
                    let why = self.unavailable_reason();
                    return self.reply(id, Response::Error(ClientError::Unavailable(why)));
                }
                self.after_durable(Deferred::Backup(id));
            }
        }
    }

    fn admin_finalize(&mut self, id: RequestId, target: Option<String>) {
        let target = match target {
            None => self.cfg.release,
            Some(v) => match self.known_release(&v) {
                Some(r) => r,
                None => {
                    return self.reply(
                        id,
                        Response::Error(ClientError::Invalid(format!("unknown release {v}"))),
                    )
                }
            },
        };
        // Finalizing a version the cluster already runs at is done, whoever
        // is up: an operator (or an orchestrator resuming) may send it again.
        if self.phase == Phase::Serving && target <= self.cluster_version {
            let v = self.cluster_version.version().into();
            return self.reply(id, Response::Finalized { cluster_version: v });
        }
        if let Err(why) = self.finalize_blocker(target) {
            return self.reply(id, Response::Error(ClientError::Refused(why)));
        }
        self.persist_cluster_version(target, Some(id));
    }

    /// Every member must run a release that supports `target` and be serving.
    fn finalize_blocker(&self, target: ReleaseId) -> Result<(), String> {
        let t = target.version();
        if self.phase != Phase::Serving {
            return Err(format!(
                "cannot finalize {t}: {} is not serving ({})",
                self.cfg.id,
                self.unavailable_reason()
            ));
        }
        if target > self.cfg.release {
            return Err(format!(
                "cannot finalize {t}: {} runs {}",
                self.cfg.id, self.release.version
            ));
        }
        for p in self.peers.values() {
            let Some(info) = p.info.as_ref() else {
                return Err(format!(
                    "cannot finalize {t}: nothing heard from {} yet",
                    p.id
                ));
            };
            if !p.up {
                return Err(format!("cannot finalize {t}: {} is down", p.id));
            }
            // A peer on a release this build does not know (a newer one)
            // serves only at a cluster version at or past this build's
            // release, where every target it may finalize is already active.
            match self.known_release(&info.release) {
                Some(r) if r >= target => {}
                _ => {
                    return Err(format!(
                        "cannot finalize {t}: {} runs {}",
                        p.id, info.release
                    ))
                }
            }
            if info.health != Health::Serving {
                return Err(format!(
                    "cannot finalize {t}: {} is {:?}",
                    p.id, info.health
                ));
            }
        }
        Ok(())
    }

    /// Learned from gossip: a peer runs at a higher cluster version.
    pub(super) fn learn_cluster_version(&mut self, version: &str) {
        let Some(v) = self.known_release(version) else {
            // A version this build does not know is newer than all it knows.
            let reason = format!(
                "binary {} is older than the active cluster version {version}",
                self.release.version
            );
            if !matches!(self.phase, Phase::Draining | Phase::Stopped | Phase::Halted) {
                self.refuse(reason);
            }
            return;
        };
        let known = self.pending_cluster_version.unwrap_or(self.cluster_version);
        if v <= known {
            return;
        }
        if self.bugs().cluster_version_before_persisting {
            // Planted bug: act first, persist "later" (never).
            self.activate_cluster_version(v, None);
            return;
        }
        self.persist_cluster_version(v, None);
    }

    /// Persists a higher cluster version, then acts on it.
    fn persist_cluster_version(&mut self, v: ReleaseId, reply: Option<RequestId>) {
        self.pending_cluster_version = Some(v);
        self.write_meta_with(false, self.schema, v);
        self.after_durable(Deferred::ActivateClusterVersion { version: v, reply });
    }

    pub(super) fn activate_cluster_version(&mut self, v: ReleaseId, reply: Option<RequestId>) {
        if self.pending_cluster_version == Some(v) {
            self.pending_cluster_version = None;
        }
        if v > self.cluster_version {
            self.cluster_version = v;
            self.emit(Event::ClusterVersion {
                version: v.version().into(),
            });
        }
        if let Some(id) = reply {
            let cv = self.cluster_version.version().into();
            self.reply(
                id,
                Response::Finalized {
                    cluster_version: cv,
                },
            );
        }
        if let Some(reason) = self.version_refusal(self.cluster_version) {
            if !matches!(self.phase, Phase::Draining | Phase::Stopped | Phase::Halted) {
                self.refuse(reason);
            }
            return;
        }
        if self.phase == Phase::Serving && self.target_schema() > self.schema {
            self.start_migration();
        }
    }

    // ---- backups -------------------------------------------------------

    pub(super) fn start_backup(&mut self, for_: BackupFor, reason: String) -> IoId {
        let io = self.io_id();
        let info = BackupInfo {
            label: format!("{}-e{}-b{}", self.cfg.id, self.epoch, io.0),
            time: self.now,
            release: self.release.version.into(),
            schema: self.schema,
            epoch: self.epoch,
            reason,
        };
        self.backups.insert(io, (info.clone(), for_));
        self.push(Output::Backup { io, info });
        io
    }

    /// A backup completed (or failed).
    pub(super) fn backup_done(&mut self, io: IoId, result: Result<(), String>) {
        let Some((info, for_)) = self.backups.remove(&io) else {
            return;
        };
        if result.is_ok() {
            self.emit(Event::BackupTaken { info: info.clone() });
        }
        match (for_, result) {
            (BackupFor::Admin(id), Ok(())) => self.reply(id, Response::BackedUp { info }),
            (BackupFor::Admin(id), Err(e)) => self.reply(
                id,
                Response::Error(ClientError::Unavailable(format!("backup failed: {e}"))),
            ),
            (BackupFor::Migration, Ok(())) => self.migration_backed_up(io),
            (BackupFor::Migration, Err(e)) => {
                self.migration_failed(format!("backup before migration failed: {e}"))
            }
        }
    }

    // ---- migrations ----------------------------------------------------

    /// Begins migrating the live schema to the target one.
    pub(super) fn start_migration(&mut self) {
        let (from, to) = (self.schema, self.target_schema());
        debug_assert!(to > from);
        let attempts = self.migration_attempts + 1;
        if attempts > MAX_ATTEMPTS {
            let reason = format!(
                "migration from schema {from} to {to} failed {MAX_ATTEMPTS} times (last: {}); the data is intact at schema {from} and in the backups: investigate the disk, then restart",
                self.migration_error.clone().unwrap_or_else(|| "interrupted".into())
            );
            return self.refuse(reason);
        }
        self.migration_attempts = attempts;
        self.fail_all_ops();
        self.phase = Phase::Migrating;
        self.migration = Some(Migration {
            from,
            to,
            step: Step::Quiescing,
            attempts,
            cursor: None,
        });
        self.emit(Event::MigrationStarted { from, to });
        self.after_durable(Deferred::Migrate);
    }

    fn migration_backed_up(&mut self, io: IoId) {
        let Some(m) = self.migration.as_mut() else {
            return;
        };
        if m.step != Step::BackingUp(io) {
            return;
        }
        m.step = Step::Copying;
        let progress = Progress {
            from: m.from,
            to: m.to,
            attempts: m.attempts,
            last_error: self.migration_error.clone(),
        };
        self.write_record(
            Bytes::from_static(storage::PROGRESS_KEY),
            Some(storage::encode_progress(&progress)),
        );
        self.migrate_step();
    }

    /// Advances the migration; called whenever its last step is durable.
    pub(super) fn migrate_step(&mut self) {
        let Some(m) = self.migration.as_ref() else {
            return;
        };
        let (from, to, step) = (m.from, m.to, m.step);
        match step {
            Step::Quiescing => {
                let io = self.start_backup(
                    BackupFor::Migration,
                    format!("before migration to schema {to}"),
                );
                if let Some(m) = self.migration.as_mut() {
                    m.step = Step::BackingUp(io);
                }
            }
            Step::BackingUp(_) => {}
            Step::Copying => {
                let done = self.copy_chunk(from, to);
                if done {
                    // The atomic switch: the metadata names the new schema.
                    if let Some(m) = self.migration.as_mut() {
                        m.step = Step::Switching;
                    }
                    self.write_meta_with(false, to, self.committed_cluster_version());
                }
                self.after_durable(Deferred::Migrate);
            }
            Step::Switching => {
                self.schema = to;
                if let Some(m) = self.migration.as_mut() {
                    m.step = Step::Cleaning;
                }
                self.remove_namespace(from);
                self.write_record(Bytes::from_static(storage::PROGRESS_KEY), None);
                self.after_durable(Deferred::Migrate);
            }
            Step::Cleaning => {
                self.migration = None;
                self.migration_attempts = 0;
                self.migration_error = None;
                self.resume.clear();
                self.emit(Event::MigrationFinished { from, to });
                self.phase = Phase::Serving;
                self.hello_all();
            }
        }
    }

    /// Writes the next chunk of records in the new schema. Returns true when
    /// every record has been written.
    fn copy_chunk(&mut self, from: u16, to: u16) -> bool {
        let cursor = self.migration.as_ref().and_then(|m| m.cursor.clone());
        let range = match &cursor {
            Some(c) => self
                .store
                .keys
                .range::<Bytes, _>((core::ops::Bound::Excluded(c), core::ops::Bound::Unbounded)),
            None => self.store.keys.range::<Bytes, _>(..),
        };
        // (key, partition, the record to write unless already written).
        type Rewrite = Option<(Bytes, Bytes)>;
        let chunk: Vec<(Bytes, u16, Rewrite)> = range
            .take(CHUNK)
            .map(|(k, e)| {
                // Already written by an interrupted attempt: skip.
                let write = (self.resume.get(k) != Some(&e.digest)).then(|| {
                    let record_key = storage::data_key(to, e.partition, k);
                    let bytes = storage::encode_state(to, &record_key, &e.state);
                    (record_key, bytes)
                });
                (k.clone(), e.partition, write)
            })
            .collect();
        let non_atomic = self.bugs().non_atomic_migration;
        for (key, partition, write) in &chunk {
            let Some((record_key, bytes)) = write else {
                continue;
            };
            self.write_record(record_key.clone(), Some(bytes.clone()));
            if non_atomic {
                // Planted bug: rewrite in place, dropping the old record now.
                self.write_record(storage::data_key(from, *partition, key), None);
            }
        }
        if cursor.is_none() {
            // Hints are few: move them with the first chunk.
            let hints: Vec<(Bytes, Bytes)> = self
                .hints
                .iter()
                .map(|((t, k), s)| {
                    let record_key = storage::hint_key(to, *t, k);
                    let bytes = storage::encode_state(to, &record_key, s);
                    (record_key, bytes)
                })
                .collect();
            for (k, v) in hints {
                self.write_record(k, Some(v));
            }
        }
        let last = chunk.last().map(|c| c.0.clone());
        if let (Some(m), Some(last)) = (self.migration.as_mut(), last.clone()) {
            m.cursor = Some(last);
        }
        chunk.len() < CHUNK
    }

    /// Deletes every record of a schema namespace this node knows of.
    fn remove_namespace(&mut self, schema: u16) {
        let data: Vec<Bytes> = self
            .store
            .keys
            .iter()
            .map(|(k, e)| storage::data_key(schema, e.partition, k))
            .collect();
        let hints: Vec<Bytes> = self
            .hints
            .keys()
            .map(|(t, k)| storage::hint_key(schema, *t, k))
            .collect();
        for k in data.into_iter().chain(hints) {
            self.write_record(k, None);
        }
    }

    pub(super) fn migration_failed(&mut self, reason: String) {
        let Some(m) = self.migration.take() else {
            return;
        };
        self.migration_error = Some(reason.clone());
        self.emit(Event::MigrationFailed {
            from: m.from,
            to: m.to,
            reason: reason.clone(),
        });
        // Nothing was switched: the old schema is live and complete.
        self.refuse(format!(
            "migration from schema {} to {} failed: {reason}; the data is intact at schema {}",
            m.from, m.to, m.from
        ));
    }

    /// A clean shutdown interrupts the migration; it resumes at next start.
    pub(super) fn migration_abandon(&mut self) {
        self.migration = None;
    }

    pub(super) fn migration_in_progress(&self) -> Option<(u16, u16)> {
        self.migration.as_ref().map(|m| (m.from, m.to))
    }
}
