//! Start-up, epochs, restores and clean shutdown.
//!
//! A node reads all of storage, then:
//! - checks that it can open the data (its release reads the live schema) and
//!   serve at the persisted cluster version, or refuses, saying why, without
//!   writing anything;
//! - removes what an interrupted migration left in a schema namespace that is
//!   not live (or keeps it to resume that migration);
//! - decides its epoch: after a clean shutdown it keeps its epoch and dot
//!   counter; after anything else (a crash, corrupt records, missing
//!   metadata) it takes a new epoch, higher than any of its own found in the
//!   data, so it can never issue a dot it issued before (Riak kv679);
//! - persists the new metadata, marked unclean, before doing anything else;
//! - after a restore from backup, the data may predate epochs the node used
//!   since; it waits until every peer has told it the highest epoch of its
//!   own they have seen, and takes one above them all;
//! - with an empty disk it may be new, or a node whose disk forgot
//!   everything (a lost journal): it writes nothing and issues no dot until
//!   every peer has told it the highest epoch of its own they have seen. If
//!   none has seen it, it is new; otherwise it proceeds as after a restore.
//!   While it asks, it announces epoch 0, so a peer's answer is about its
//!   earlier lives only.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use bytes::Bytes;
use rand_core::RngCore;

use crate::api::{Event, Output, ReadRequest};
use crate::config::InitialClusterState;
use crate::storage::{self, Meta, Progress, Record};
use crate::types::NodeId;
use crate::version::ReleaseId;

use super::durability::Deferred;
use super::{Node, Phase};

impl Node {
    pub(super) fn start_loading(&mut self) {
        let io = self.io_id();
        self.load_io = Some(io);
        self.push(Output::Read {
            io,
            request: ReadRequest::All,
        });
    }

    pub(super) fn recover(&mut self, records: Vec<(Bytes, Bytes)>) {
        if self.phase != Phase::Loading {
            return;
        }
        let total = records.len();
        let mut corrupt = 0usize;
        // Pass 1: the records that say how to read the rest.
        let mut meta: Option<Meta> = None;
        let mut progress: Option<Progress> = None;
        let mut restored = false;
        let mut namespaces: alloc::collections::BTreeMap<u16, usize> = Default::default();
        for (key, value) in &records {
            match key.as_ref() {
                storage::META_KEY | storage::PROGRESS_KEY | storage::RESTORED_KEY => {
                    match storage::decode_record(key, value) {
                        Ok(Record::Meta(m)) => meta = Some(m),
                        Ok(Record::Progress(p)) => progress = Some(p),
                        Ok(Record::Restored) => restored = true,
                        Ok(_) => {}
                        Err(_) => {
                            corrupt += 1;
                            self.metrics.corrupt_records += 1;
                            self.emit(Event::CorruptRecord { key: key.clone() });
                            if key.as_ref() == storage::PROGRESS_KEY {
                                // An unreadable progress record cannot be
                                // resumed: drop it, or every later start
                                // would count it as damage again (a new
                                // epoch each time). The migration, if one is
                                // due, starts afresh.
                                self.write_record(key.clone(), None);
                            }
                        }
                    }
                }
                k => {
                    if let Some(s) = storage::key_schema(k) {
                        *namespaces.entry(s).or_default() += 1;
                    }
                }
            }
        }
        let fresh = meta.is_none() && namespaces.is_empty();
        // A start, even one that refuses: peers tell this life's gossip from
        // the last one's by it.
        self.generation = meta.as_ref().map_or(0, |m| m.generation) + 1;
        let cluster_version = match &meta {
            Some(m) => match self.known_release(&m.cluster_version) {
                Some(v) => v,
                None => {
                    return self.refuse_at_start(
                        total,
                        format!(
                            "binary {} is older than the active cluster version {}, which it does not know: run {} or newer, or restore a backup taken before the finalization",
                            self.release.version, m.cluster_version, m.cluster_version
                        ),
                    )
                }
            },
            None => self.cfg.initial_cluster_version.unwrap_or(self.cfg.release.min_cluster_version()),
        };
        self.cluster_version = cluster_version;
        let schema = match &meta {
            Some(m) => m.schema,
            // Without metadata, the namespace holding most records is live.
            None => namespaces
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(s, _)| *s)
                .unwrap_or_else(|| self.target_schema()),
        };
        // A migration that had not finished: its progress record, or a
        // cluster version that asks for a newer schema than the live one.
        let unfinished = progress
            .as_ref()
            .filter(|p| p.from == schema)
            .map(|p| p.to)
            .or_else(|| (cluster_version.release().schema > schema).then_some(schema + 1));
        if let Some(why) = crate::version::schema_refusal(self.release, schema, unfinished) {
            return self.refuse_at_start(total, why);
        }
        if let Some(why) = self.version_refusal(cluster_version) {
            return self.refuse_at_start(total, why);
        }
        self.schema = schema;
        let target = self.target_schema();
        let resuming = progress
            .as_ref()
            .filter(|p| p.from == schema && p.to == target)
            .cloned();
        if let Some(p) = &progress {
            if p.to == schema {
                // The switch happened; only the clean-up was interrupted.
                self.write_record(Bytes::from_static(storage::PROGRESS_KEY), None);
            } else if resuming.is_some() {
                self.migration_attempts = p.attempts;
                self.migration_error = p.last_error.clone();
            } else {
                self.write_record(Bytes::from_static(storage::PROGRESS_KEY), None);
            }
        }
        // Pass 2: the live namespace. Restored data is held aside: it may
        // hold values whose deletes were reaped since the backup, so it is
        // never served or sent to a peer. The re-sync pulls every key from
        // the replicas instead, and what none of them holds is dropped when
        // it completes (see `resync_progress`). With W = 1 a restored copy
        // may be the only one of an acknowledged write, so it is kept.
        let quarantine = restored && self.cfg.quorum.w > 1;
        let me = self.cfg.id;
        let mut own_epoch = 0u32;
        let mut own_counter = 0u64;
        // Copies an interrupted migration already wrote: (key, record key).
        let mut copies: Vec<(Bytes, Bytes)> = Vec::new();
        for (key, value) in records {
            let Some(ns) = storage::key_schema(&key) else {
                continue;
            };
            if ns != schema {
                if let Some(p) = &resuming {
                    if ns == p.to {
                        if let Ok(Record::Data {
                            key: user_key,
                            state,
                            ..
                        }) = storage::decode_record(&key, &value)
                        {
                            self.resume.insert(user_key.clone(), state.digest());
                            copies.push((user_key, key));
                            continue;
                        }
                    }
                }
                // Left over from a migration: never live, never served.
                self.write_record(key, None);
                continue;
            }
            match storage::decode_record(&key, &value) {
                Ok(Record::Data { key, state, .. }) => {
                    for &(actor, c) in state.context().entries() {
                        if actor.node == me {
                            if actor.epoch > own_epoch {
                                own_epoch = actor.epoch;
                                own_counter = 0;
                            }
                            if actor.epoch == own_epoch {
                                own_counter = own_counter.max(c);
                            }
                        }
                    }
                    self.note_epochs(&state);
                    if quarantine {
                        self.quarantine.insert(key);
                    } else {
                        self.store.set(&self.ring, &key, Some(state), self.now);
                    }
                }
                Ok(Record::Hint {
                    target, key, state, ..
                }) => {
                    if quarantine {
                        // A restored hint may carry a value deleted since;
                        // its target took the write, or the re-sync of its
                        // replicas will bring it.
                        self.write_record(storage::hint_key(schema, target, &key), None);
                    } else if target != me && self.peers.contains_key(&target) {
                        self.hints.insert((target, key), state);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    corrupt += 1;
                    self.metrics.corrupt_records += 1;
                    self.emit(Event::CorruptRecord { key: key.clone() });
                    // Corrupt data is treated as lost: drop the record so it
                    // is never served; replicas will repair the key.
                    self.write_record(key, None);
                }
            }
        }
        // A copy whose live record is gone (damaged and dropped above) would
        // turn live at the switch without being loaded: delete it. The key
        // is repaired from its replicas like any lost record.
        for (user_key, record_key) in copies {
            if self.store.get(&user_key).is_none() {
                self.resume.remove(&user_key);
                self.write_record(record_key, None);
            }
        }
        // Data without (readable) metadata, or an empty directory of a node
        // that has run before: the epochs this node used are unknown, so
        // learn them from the peers, as after a restore. The marker makes a
        // restart before that completes start over.
        let lost = (meta.is_none() && !fresh)
            || (fresh && self.cfg.initial_cluster_state == InitialClusterState::Existing);
        if lost && !restored {
            self.write_record(
                Bytes::from_static(storage::RESTORED_KEY),
                Some(storage::restored_marker()),
            );
        }
        let restored = restored || lost;
        // An empty disk may be a new member's, or one that forgot everything
        // (a truncated or deleted journal looks the same). Only the peers
        // can tell: until they have, the node writes nothing and issues no
        // dot (see `rejoin_report`).
        self.probing = fresh && !restored;
        let clean = matches!(&meta, Some(m) if m.clean) && corrupt == 0 && !restored;
        let reuse_epoch = clean || (self.bugs().reuse_dots_after_crash && !fresh);
        match &meta {
            Some(m) if reuse_epoch => {
                self.epoch = m.epoch.max(1);
                self.next_counter = m.next_counter.max(1);
                if clean && own_epoch == self.epoch {
                    self.next_counter = self.next_counter.max(own_counter + 1);
                }
            }
            m => {
                let prev = m.as_ref().map_or(0, |m| m.epoch);
                self.epoch = prev.max(own_epoch) + 1;
                self.next_counter = 1;
            }
        }
        self.emit(Event::Recovered {
            epoch: self.epoch,
            clean,
            records: total,
            corrupt,
        });
        // Request ids are unique across this node's starts (peers remember
        // forwarded ones to drop duplicates).
        self.next_req = (self.generation << 40) + 1;
        self.restored = restored;
        self.phase = Phase::Recovering;
        if !self.probing {
            self.write_meta(false);
        }
        self.after_durable(Deferred::Serve);
    }

    fn refuse_at_start(&mut self, records: usize, reason: String) {
        self.emit(Event::Recovered {
            epoch: self.epoch,
            clean: false,
            records,
            corrupt: 0,
        });
        self.refuse(reason);
    }

    /// Remembers the highest epoch of every node whose dots `state` mentions.
    pub(super) fn note_epochs(&mut self, state: &crate::dvv::KeyState) {
        for &(actor, _) in state.context().entries() {
            let e = self.epochs_seen.entry(actor.node).or_insert(0);
            if *e < actor.epoch {
                *e = actor.epoch;
            }
        }
    }

    pub(super) fn note_epoch(&mut self, node: NodeId, epoch: u32) {
        let e = self.epochs_seen.entry(node).or_insert(0);
        if *e < epoch {
            *e = epoch;
        }
    }

    pub(super) fn write_meta(&mut self, clean: bool) {
        self.write_meta_with(clean, self.schema, self.committed_cluster_version());
    }

    /// The cluster version the metadata must name: the active one, or a
    /// higher one already persisted and waiting to become active. Metadata
    /// written meanwhile (a clean shutdown, a restart's, a migration's
    /// switch) must not take that persisted version back.
    pub(super) fn committed_cluster_version(&self) -> ReleaseId {
        self.pending_cluster_version
            .map_or(self.cluster_version, |p| p.max(self.cluster_version))
    }

    pub(super) fn write_meta_with(&mut self, clean: bool, schema: u16, cv: ReleaseId) {
        let meta = Meta {
            epoch: self.epoch,
            next_counter: self.next_counter,
            clean,
            schema,
            cluster_version: cv.version().into(),
            generation: self.generation,
        };
        self.write_record(
            Bytes::from_static(storage::META_KEY),
            Some(storage::encode_meta(&meta)),
        );
    }

    /// Recovery's metadata is durable: rejoin, migrate or serve.
    pub(super) fn recovered(&mut self) {
        if self.phase != Phase::Recovering {
            return;
        }
        self.start_timers();
        if self.restored || self.probing {
            self.phase = Phase::Rejoining;
            self.probe_since = self.now;
            self.rejoin_waiting = self.peers.keys().copied().collect();
            if self.rejoin_waiting.is_empty() {
                return self.rejoined();
            }
            self.hello_all();
            return;
        }
        self.ready();
    }

    /// A peer reported the highest epoch of ours it has seen.
    pub(super) fn rejoin_report(&mut self, from: NodeId, your_epoch: u32) {
        if self.phase != Phase::Rejoining {
            return;
        }
        self.learned_epoch = self.learned_epoch.max(your_epoch);
        self.rejoin_waiting.remove(&from);
        if self.rejoin_waiting.is_empty() {
            self.rejoined();
        }
    }

    /// A node with an empty disk that has asked for `probe_timeout` goes on
    /// once a majority of the members (itself included) has answered: a
    /// new cluster must not wait for ever on a member that never comes (or
    /// that it refuses). The silent peers may know epochs of its own the
    /// others do not, so it takes its epoch a random step (up to 65,536)
    /// further: reusing one of theirs becomes unlikely, not impossible.
    pub(super) fn probe_deadline(&mut self) {
        if !self.probing || self.phase != Phase::Rejoining {
            return;
        }
        if self.now.saturating_since(self.probe_since) < self.cfg.timing.probe_timeout {
            return;
        }
        let members = self.peers.len() + 1;
        let answered = members - self.rejoin_waiting.len();
        if answered * 2 <= members {
            return;
        }
        self.epoch_jump = 1 + self.rng.next_u32() % 65_536;
        self.rejoin_waiting.clear();
        self.rejoined();
    }

    /// Every peer has reported the highest epoch of ours it has seen (or,
    /// after `probe_deadline`, a majority of the members has).
    fn rejoined(&mut self) {
        let jump = core::mem::take(&mut self.epoch_jump);
        if self.probing {
            self.probing = false;
            if self.learned_epoch == 0 {
                // No peer has ever seen this node: it is new.
                self.epoch += jump;
                self.phase = Phase::Recovering;
                self.write_meta(false);
                self.after_durable(Deferred::Serve);
                return;
            }
            // It has run before and its disk forgot: like a restore, it
            // takes an epoch above every one its peers saw and re-syncs
            // before serving reads. The marker makes a restart before the
            // re-sync completes start over.
            self.write_record(
                Bytes::from_static(storage::RESTORED_KEY),
                Some(storage::restored_marker()),
            );
            self.metrics.forgotten_disks += 1;
        }
        // Above the epoch it started in too: that one is in its metadata,
        // though it was never announced.
        let epoch = self.epoch.max(self.learned_epoch) + 1 + jump;
        self.epoch = epoch;
        self.next_counter = 1;
        self.restored = false;
        self.write_meta(false);
        // The restore marker stays until the re-sync completes: a restart
        // before then must not serve reads from the restored data.
        self.emit(Event::EpochLearned { epoch });
        let me = self.cfg.id;
        let pairs: BTreeSet<(u16, NodeId)> = self
            .ring
            .partitions_of(me)
            .flat_map(|p| {
                self.ring
                    .preference(p)
                    .iter()
                    .filter(move |&&r| r != me)
                    .map(move |&r| (p, r))
            })
            .collect();
        self.resync = Some(pairs);
        self.resync_progress();
        self.phase = Phase::Recovering;
        self.after_durable(Deferred::Serve);
    }

    /// Ends the re-sync after a restore once every (partition, replica)
    /// pair has been found equal, and drops the restore marker with it.
    pub(super) fn resync_progress(&mut self) {
        if self.resync.as_ref().is_some_and(|p| p.is_empty()) {
            self.resync = None;
            self.release_quarantine();
            self.write_record(Bytes::from_static(storage::RESTORED_KEY), None);
        }
    }

    /// The re-sync completed: every restored key a replica still holds was
    /// pulled (with exactly the values the replicas hold); the records of
    /// the others are deleted. Their values were deleted and reaped since
    /// the backup, or never acknowledged.
    fn release_quarantine(&mut self) {
        let schema = self.schema;
        for key in core::mem::take(&mut self.quarantine) {
            if self.store.get(&key).is_none() {
                let partition = self.ring.partition_of(&key);
                self.write_record(storage::data_key(schema, partition, &key), None);
                self.metrics.restored_keys_dropped += 1;
            }
        }
        // A migration that waited for the re-sync starts once those deletes
        // are durable: it must not count the dropped keys as data.
        self.after_durable(Deferred::MigrateIfDue);
    }

    /// Starts a migration that is due and was waiting.
    pub(super) fn migrate_if_due(&mut self) {
        if self.phase == Phase::Serving
            && self.quarantine.is_empty()
            && self.target_schema() > self.schema
        {
            self.start_migration();
        }
    }

    /// Peers a restored node still waits for.
    pub fn rejoin_waiting(&self) -> Vec<NodeId> {
        self.rejoin_waiting
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    fn ready(&mut self) {
        // A migration copies what the store holds: restored data held aside
        // waits for the re-sync, and the migration with it.
        if self.target_schema() > self.schema && self.quarantine.is_empty() {
            self.start_migration();
            return;
        }
        self.phase = Phase::Serving;
        self.emit(Event::Serving);
        self.hello_all();
    }

    /// Clean shutdown: fail what is in flight, persist the metadata that lets
    /// the next start keep this epoch, then report completion.
    pub(super) fn begin_shutdown(&mut self) {
        match self.phase {
            Phase::Serving | Phase::Recovering | Phase::Rejoining => {}
            Phase::Loading | Phase::Refusing => {
                // Nothing of ours to persist.
                self.phase = Phase::Stopped;
                self.emit(Event::ShutdownComplete);
                return;
            }
            Phase::Migrating => {
                // The migration resumes at the next start.
                self.migration_abandon();
            }
            _ => return,
        }
        self.phase = Phase::Draining;
        self.fail_all_ops();
        // A node still asking whether it ran before has no epoch to keep:
        // its next start must ask again.
        if !self.probing {
            self.write_meta(!self.restored);
        }
        self.after_durable(Deferred::ShutdownDone);
    }
}
