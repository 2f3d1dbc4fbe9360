//! The disk model of one node.
//!
//! Writes are buffered in order; a sync covers every write issued before it
//! and completes after a random latency (syncs complete in the order they
//! were issued, as with a group-committing journal). Only then are the
//! covered writes durable. On a crash the unsynced tail is journal-like: a
//! random prefix of it happens to have reached the platter, the rest is lost;
//! syncs in flight never complete. The durable image is what a restarted node
//! reads back, and what the acknowledgement oracle inspects.
//!
//! Faults (see [`crate::atlas`]): failed syncs (I/O errors, a full disk),
//! and on fault-prone disks corrupted records, torn writes and misdirected
//! writes. A record the simulator destroys keeps its last good value in a
//! shadow image, so oracles can judge what the node had made durable.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use cairn_core::storage::META_KEY;
use cairn_core::Time;

use crate::atlas::DiskFaults;
use crate::rng::{between, chance, SimRng};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub reads: u64,
    /// Unsynced writes lost to crashes.
    pub lost_writes: u64,
    /// Unsynced writes that survived a crash anyway.
    pub lucky_writes: u64,
    pub backups: u64,
    /// Syncs that failed (I/O error or full disk).
    pub failed_syncs: u64,
    /// Backups whose copy failed.
    pub failed_backups: u64,
    /// Records damaged by corruption, torn or misdirected writes.
    pub damaged: u64,
}

/// Why a sync failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncFailure {
    IoError,
    Full,
}

impl SyncFailure {
    pub fn reason(self) -> &'static str {
        match self {
            SyncFailure::IoError => "I/O error (EIO)",
            SyncFailure::Full => "no space left on device (ENOSPC)",
        }
    }
}

pub struct Disk {
    durable: BTreeMap<Bytes, Bytes>,
    pending: VecDeque<(Bytes, Option<Bytes>)>,
    /// Writes ever issued; the sequence number of the next write.
    issued: u64,
    /// Writes that left the pending buffer (made durable or lost).
    retired: u64,
    last_sync_done: Time,
    /// Completed backups, oldest first (label, snapshot of the durable image).
    backups: VecDeque<(String, BTreeMap<Bytes, Bytes>)>,
    sync_latency_us: (u64, u64),
    read_latency_us: (u64, u64),
    rng: SimRng,
    pub stats: DiskStats,
    faults: DiskFaults,
    /// Syncs fail until then.
    full_until: Time,
    /// Last good value of each record the simulator destroyed (`None`: the
    /// key had no durable value), until the node rewrites it.
    shadow: BTreeMap<Bytes, Option<Bytes>>,
    /// An operator repaired the backup volume: backups no longer fail.
    backups_repaired: bool,
}

impl Disk {
    pub fn new(sync_latency_us: (u64, u64), read_latency_us: (u64, u64), rng: SimRng) -> Disk {
        Disk {
            durable: BTreeMap::new(),
            pending: VecDeque::new(),
            issued: 0,
            retired: 0,
            last_sync_done: Time::ZERO,
            backups: VecDeque::new(),
            sync_latency_us,
            read_latency_us,
            rng,
            stats: DiskStats::default(),
            faults: DiskFaults::default(),
            full_until: Time::ZERO,
            shadow: BTreeMap::new(),
            backups_repaired: false,
        }
    }

    /// Sets what this disk may suffer.
    pub fn set_faults(&mut self, faults: DiskFaults) {
        self.faults = faults;
    }

    /// Every sync fails until `until`.
    pub fn fill_up(&mut self, until: Time) {
        self.full_until = self.full_until.max(until);
    }

    pub fn free_space(&mut self) {
        self.full_until = Time::ZERO;
    }

    /// Decides whether a sync issued now fails (its writes then stay
    /// unsynced).
    pub fn sync_fails(&mut self, now: Time) -> Option<SyncFailure> {
        let f = if now < self.full_until {
            Some(SyncFailure::Full)
        } else if chance(&mut self.rng, self.faults.io_error_ppm) {
            Some(SyncFailure::IoError)
        } else {
            None
        };
        if f.is_some() {
            self.stats.failed_syncs += 1;
        }
        f
    }

    /// Buffers a write (`None` deletes the key).
    pub fn write(&mut self, key: Bytes, value: Option<Bytes>) {
        self.stats.writes += 1;
        self.issued += 1;
        self.pending.push_back((key, value));
    }

    /// Starts a sync of every write issued so far. Returns when it completes
    /// and the mark to pass to [`Disk::complete_sync`].
    pub fn sync(&mut self, now: Time) -> (Time, u64) {
        self.stats.syncs += 1;
        let lat = between(
            &mut self.rng,
            self.sync_latency_us.0,
            self.sync_latency_us.1,
        );
        let done = Time((now.as_micros() + lat).max(self.last_sync_done.as_micros()));
        self.last_sync_done = done;
        (done, self.issued)
    }

    /// A sync issued when `mark` writes had been issued completes: those
    /// writes become durable.
    pub fn complete_sync(&mut self, mark: u64) {
        let misdirect = self.retired < mark && chance(&mut self.rng, self.faults.misdirect_ppm);
        let victim_write = if misdirect {
            between(&mut self.rng, self.retired, mark - 1)
        } else {
            u64::MAX
        };
        while self.retired < mark {
            let Some((key, value)) = self.pending.pop_front() else {
                break;
            };
            let seq = self.retired;
            self.retired += 1;
            if seq == victim_write {
                if let Some(v) = &value {
                    if self.misdirect(&key, v) {
                        continue;
                    }
                }
            }
            self.apply(key, value);
        }
    }

    /// Writes `value` (meant for `key`) under another durable key instead.
    /// False when there is no other key to hit.
    fn misdirect(&mut self, key: &Bytes, value: &Bytes) -> bool {
        let meta_too = self.faults.meta_too;
        let others: Vec<Bytes> = self
            .durable
            .keys()
            .filter(|k| *k != key && (meta_too || k.as_ref() != META_KEY))
            .cloned()
            .collect();
        if others.is_empty() {
            return false;
        }
        let victim = others[between(&mut self.rng, 0, others.len() as u64 - 1) as usize].clone();
        self.remember(key.clone(), Some(value.clone()));
        self.remember_current(&victim);
        self.durable.insert(victim, value.clone());
        self.stats.damaged += 2;
        true
    }

    /// Keeps the current durable value of `key` as its last good one.
    fn remember_current(&mut self, key: &Bytes) {
        let cur = self.durable.get(key).cloned();
        self.shadow.entry(key.clone()).or_insert(cur);
    }

    /// Records `value` as what the node made durable under `key`.
    fn remember(&mut self, key: Bytes, value: Option<Bytes>) {
        self.shadow.insert(key, value);
    }

    fn apply(&mut self, key: Bytes, value: Option<Bytes>) {
        // A node dropping a damaged record does not undo the damage: the
        // shadow goes only when the node writes the key anew.
        if value.is_some() && !self.shadow.is_empty() {
            self.shadow.remove(&key);
        }
        match value {
            Some(v) => {
                self.durable.insert(key, v);
            }
            None => {
                self.durable.remove(&key);
            }
        }
    }

    /// Snapshots the durable image for a backup (writes not yet synced are
    /// not part of it). Returns when the copy completes and the snapshot to
    /// hand to [`Disk::complete_backup`].
    pub fn start_backup(&mut self, now: Time) -> (Time, BTreeMap<Bytes, Bytes>) {
        let lat = between(
            &mut self.rng,
            self.sync_latency_us.0,
            self.sync_latency_us.1,
        );
        (Time(now.as_micros() + lat), self.durable.clone())
    }

    /// Decides whether a backup started now fails (its volume is full or
    /// the copy hits an I/O error); the node is told so when the copy would
    /// have completed.
    pub fn backup_fails(&mut self) -> bool {
        let fails = !self.backups_repaired && chance(&mut self.rng, self.faults.backup_error_ppm);
        self.stats.failed_backups += fails as u64;
        fails
    }

    /// An operator repairs the backup volume: later backups succeed.
    pub fn repair_backups(&mut self) {
        self.backups_repaired = true;
    }

    /// Keeps a completed backup (the oldest beyond the retention count go).
    pub fn complete_backup(&mut self, label: String, snapshot: BTreeMap<Bytes, Bytes>) {
        const RETAIN: usize = 4;
        self.stats.backups += 1;
        self.backups.push_back((label, snapshot));
        while self.backups.len() > RETAIN {
            self.backups.pop_front();
        }
    }

    pub fn backups(&self) -> impl Iterator<Item = (&str, &BTreeMap<Bytes, Bytes>)> {
        self.backups.iter().map(|(l, s)| (l.as_str(), s))
    }

    /// Replaces the durable image (an operator restoring a backup onto a
    /// stopped node); unsynced writes are dropped.
    ///
    /// What the node had made durable before stays visible to the oracles
    /// (through [`Disk::made_durable`]), as for records the simulator
    /// destroys: a replica that acknowledged a write did make it durable,
    /// even if an operator later rolls its disk back.
    pub fn replace_durable(&mut self, image: BTreeMap<Bytes, Bytes>) {
        let changed: Vec<Bytes> = self
            .durable
            .keys()
            .chain(image.keys())
            .filter(|k| self.durable.get(*k) != image.get(*k))
            .cloned()
            .collect();
        for k in &changed {
            self.remember_current(k);
        }
        self.durable = image;
        self.pending.clear();
        self.retired = self.issued;
    }

    /// When a read issued now completes.
    pub fn read_done_at(&mut self, now: Time) -> Time {
        self.stats.reads += 1;
        let lat = between(
            &mut self.rng,
            self.read_latency_us.0,
            self.read_latency_us.1,
        );
        Time(now.as_micros() + lat)
    }

    /// Every durable record, in key order (what a restarted node loads).
    pub fn load_all(&self) -> Vec<(Bytes, Bytes)> {
        self.durable
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every record on the disk, durable or still pending (older values of
    /// a key included).
    pub fn all_records(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.durable.iter().chain(
            self.pending
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v))),
        )
    }

    pub fn durable(&self, key: &[u8]) -> Option<&Bytes> {
        self.durable.get(key)
    }

    /// What the node made durable under `key`, looking through records the
    /// simulator destroyed.
    pub fn made_durable(&self, key: &[u8]) -> Option<&Bytes> {
        match self.shadow.get(key) {
            Some(v) => v.as_ref(),
            None => self.durable.get(key),
        }
    }

    /// Whether the simulator destroyed the record under `key` (and the node
    /// has not written it anew since).
    pub fn is_damaged(&self, key: &[u8]) -> bool {
        self.shadow.contains_key(key)
    }

    /// Whether some record the simulator destroyed is still on the disk
    /// (the node will find it damaged when it next loads).
    pub fn holds_damage(&self) -> bool {
        self.shadow.keys().any(|k| self.durable.contains_key(k))
    }

    /// The value the node last wrote under `key`, synced or not (`None`
    /// when it last deleted it or never wrote it).
    pub fn latest(&self, key: &[u8]) -> Option<&Bytes> {
        match self.pending.iter().rev().find(|(k, _)| k.as_ref() == key) {
            Some((_, v)) => v.as_ref(),
            None => self.made_durable(key),
        }
    }

    /// Damages a share (`pct` percent, at least one) of the durable records
    /// (the metadata only if allowed). Returns how many.
    pub fn corrupt(&mut self, pct: u64) -> u64 {
        let meta_too = self.faults.meta_too;
        let keys: Vec<Bytes> = self
            .durable
            .keys()
            .filter(|k| meta_too || k.as_ref() != META_KEY)
            .cloned()
            .collect();
        if keys.is_empty() {
            return 0;
        }
        let count = ((keys.len() as u64 * pct.min(100)).div_ceil(100)).max(1);
        let mut hit = 0;
        for k in keys {
            if hit >= count {
                break;
            }
            // Keep the chosen share, spread over the key space.
            if between(&mut self.rng, 1, 100) > pct && pct < 100 {
                continue;
            }
            self.remember_current(&k);
            if let Some(v) = self.durable.get_mut(&k) {
                let mut b = v.to_vec();
                if b.is_empty() {
                    b.push(0xff);
                } else {
                    let i = between(&mut self.rng, 0, b.len() as u64 - 1) as usize;
                    b[i] ^= 1 << between(&mut self.rng, 0, 7);
                }
                *v = Bytes::from(b);
                hit += 1;
            }
        }
        self.stats.damaged += hit;
        hit
    }

    /// A stop of the node: corrupted sectors may show up (fault-prone
    /// disks only). Returns the records damaged.
    pub fn maybe_corrupt(&mut self) -> u64 {
        if !chance(&mut self.rng, self.faults.corrupt_ppm) {
            return 0;
        }
        let pct = between(
            &mut self.rng,
            self.faults.corrupt_pct.0,
            self.faults.corrupt_pct.1,
        );
        self.corrupt(pct.max(1))
    }

    /// A stop of the node: its journal may be lost (fault-prone disks
    /// only), and with it every record. Returns the records lost.
    pub fn maybe_lose_journal(&mut self) -> u64 {
        if !chance(&mut self.rng, self.faults.journal_loss_ppm) {
            return 0;
        }
        self.lose_everything()
    }

    /// Forgets every durable record, the metadata included (a truncated or
    /// deleted journal). Oracles still see what the node had made durable.
    pub fn lose_everything(&mut self) -> u64 {
        let keys: Vec<Bytes> = self.durable.keys().cloned().collect();
        for k in &keys {
            self.remember_current(k);
        }
        self.durable.clear();
        let n = keys.len() as u64;
        self.stats.damaged += n;
        n
    }

    /// Damages every data and hint record (the metadata only if allowed).
    pub fn wipe(&mut self) -> u64 {
        self.corrupt(100)
    }

    pub fn durable_len(&self) -> usize {
        self.durable.len()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Power loss: a random prefix of the unsynced writes survives, the rest
    /// is lost. Returns (survived, lost).
    pub fn crash(&mut self) -> (u64, u64) {
        let n = self.pending.len() as u64;
        let keep = between(&mut self.rng, 0, n);
        for _ in 0..keep {
            if let Some((k, v)) = self.pending.pop_front() {
                self.apply(k, v);
            }
        }
        let lost = self.pending.len() as u64;
        if lost > 0 && chance(&mut self.rng, self.faults.torn_ppm) {
            if let Some((k, Some(v))) = self.pending.front().cloned() {
                if self.faults.meta_too || k.as_ref() != META_KEY {
                    let cut = between(&mut self.rng, 0, v.len().saturating_sub(1) as u64) as usize;
                    self.remember_current(&k);
                    self.durable.insert(k, v.slice(..cut));
                    self.stats.damaged += 1;
                }
            }
        }
        self.pending.clear();
        self.retired = self.issued;
        self.stats.lucky_writes += keep;
        self.stats.lost_writes += lost;
        (keep, lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_from;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn disk(seed: u64) -> Disk {
        Disk::new((100, 200), (10, 20), rng_from(seed))
    }

    #[test]
    fn sync_makes_earlier_writes_durable_and_only_those() {
        let mut d = disk(1);
        d.write(b("a"), Some(b("1")));
        let (at, mark) = d.sync(Time(0));
        assert!(at >= Time(100) && at <= Time(200));
        d.write(b("b"), Some(b("2")));
        assert!(
            d.durable(b"a").is_none(),
            "durable before the sync completed"
        );
        d.complete_sync(mark);
        assert_eq!(d.durable(b"a"), Some(&b("1")));
        assert!(d.durable(b"b").is_none(), "a sync covered a later write");
        let (_, mark2) = d.sync(Time(0));
        d.write(b("a"), None);
        d.complete_sync(mark2);
        assert_eq!(d.durable(b"b"), Some(&b("2")));
        assert_eq!(d.durable(b"a"), Some(&b("1")));
        let (_, mark3) = d.sync(Time(0));
        d.complete_sync(mark3);
        assert!(d.durable(b"a").is_none(), "delete not applied");
    }

    #[test]
    fn backups_snapshot_only_the_durable_image() {
        let mut d = disk(3);
        d.write(b("a"), Some(b("1")));
        let (_, mark) = d.sync(Time(0));
        d.complete_sync(mark);
        d.write(b("b"), Some(b("2")));
        let (at, snap) = d.start_backup(Time(10));
        assert!(at > Time(10));
        d.write(b("c"), Some(b("3")));
        let (_, mark) = d.sync(Time(0));
        d.complete_sync(mark);
        d.complete_backup("x".into(), snap);
        let (label, snap) = d.backups().next().unwrap();
        assert_eq!(label, "x");
        assert_eq!(snap.keys().cloned().collect::<Vec<_>>(), vec![b("a")]);
        for i in 0..10 {
            let (_, s) = d.start_backup(Time(0));
            d.complete_backup(format!("{i}"), s);
        }
        assert_eq!(d.backups().count(), 4);
    }

    fn prone(misdirect_ppm: u32, torn_ppm: u32) -> DiskFaults {
        DiskFaults {
            prone: true,
            misdirect_ppm,
            torn_ppm,
            corrupt_pct: (100, 100),
            ..DiskFaults::default()
        }
    }

    fn state(counter: u64) -> cairn_core::KeyState {
        use cairn_core::{Actor, Dot, NodeId, VersionVector};
        let mut s = cairn_core::KeyState::new();
        let dot = Dot {
            actor: Actor {
                node: NodeId(1),
                epoch: 1,
            },
            counter,
        };
        s.apply_write(&VersionVector::new(), dot, Some(b("v")));
        s
    }

    #[test]
    fn a_misdirected_write_is_caught_at_load_and_seen_through_by_oracles() {
        use cairn_core::storage::{data_key, decode_record, encode_state};
        let (ka, kb) = (data_key(3, 1, b"a"), data_key(3, 1, b"b"));
        let mut d = disk(5);
        d.write(ka.clone(), Some(encode_state(3, &ka, &state(1))));
        d.write(kb.clone(), Some(encode_state(3, &kb, &state(2))));
        let (_, mark) = d.sync(Time(0));
        d.complete_sync(mark);
        d.set_faults(prone(1_000_000, 0));
        let newer = encode_state(3, &ka, &state(3));
        d.write(ka.clone(), Some(newer.clone()));
        let (_, mark) = d.sync(Time(0));
        d.complete_sync(mark);
        // The write landed on b; a kept its old record.
        assert_eq!(d.durable(&kb), Some(&newer));
        assert!(decode_record(&kb, d.durable(&kb).unwrap()).is_err());
        assert!(decode_record(&ka, d.durable(&ka).unwrap()).is_ok());
        assert_ne!(d.durable(&ka), Some(&newer));
        // Oracles see what the node made durable.
        assert_eq!(d.made_durable(&ka), Some(&newer));
        assert!(d.is_damaged(&ka) && d.is_damaged(&kb));
        assert!(decode_record(&kb, d.made_durable(&kb).unwrap()).is_ok());
        // Rewriting a key heals its shadow; dropping it does not.
        d.set_faults(DiskFaults::default());
        d.write(kb.clone(), None);
        let (_, mark) = d.sync(Time(0));
        d.complete_sync(mark);
        assert!(d.is_damaged(&kb));
        d.write(kb.clone(), Some(encode_state(3, &kb, &state(4))));
        let (_, mark) = d.sync(Time(0));
        d.complete_sync(mark);
        assert!(!d.is_damaged(&kb));
    }

    #[test]
    fn corruption_and_torn_writes_are_caught_by_checksums() {
        use cairn_core::storage::{data_key, decode_record, encode_meta, encode_state, Meta};
        let mut d = disk(8);
        let meta = Meta {
            epoch: 1,
            next_counter: 1,
            clean: false,
            schema: 3,
            cluster_version: "0.2.0".into(),
            generation: 1,
        };
        d.write(Bytes::from_static(META_KEY), Some(encode_meta(&meta)));
        let keys: Vec<Bytes> = (0..20u8).map(|i| data_key(3, 0, &[i])).collect();
        for (i, k) in keys.iter().enumerate() {
            d.write(k.clone(), Some(encode_state(3, k, &state(i as u64 + 1))));
        }
        let (_, mark) = d.sync(Time(0));
        d.complete_sync(mark);
        d.set_faults(prone(0, 1_000_000));
        assert_eq!(d.wipe(), 20, "the metadata is spared under the atlas");
        for k in &keys {
            assert!(decode_record(k, d.durable(k).unwrap()).is_err());
            assert!(decode_record(k, d.made_durable(k).unwrap()).is_ok());
        }
        assert!(decode_record(META_KEY, d.durable(META_KEY).unwrap()).is_ok());
        // A torn write: the first lost unsynced write is half-written.
        let k = data_key(3, 0, b"torn");
        let mut torn = 0;
        for seed in 0..20 {
            let mut d = disk(seed);
            d.set_faults(prone(0, 1_000_000));
            d.write(k.clone(), Some(encode_state(3, &k, &state(99))));
            let (_, lost) = d.crash();
            if lost == 1 {
                torn += 1;
                assert!(decode_record(&k, d.durable(&k).unwrap()).is_err());
                assert!(d.is_damaged(&k) && d.made_durable(&k).is_none());
            }
        }
        assert!(torn > 0);
    }

    #[test]
    fn failed_syncs_leave_writes_unsynced() {
        let mut d = disk(2);
        d.set_faults(DiskFaults {
            io_error_ppm: 1_000_000,
            ..DiskFaults::default()
        });
        d.write(b("a"), Some(b("1")));
        assert_eq!(d.sync_fails(Time(0)), Some(SyncFailure::IoError));
        d.set_faults(DiskFaults::default());
        d.fill_up(Time(100));
        assert_eq!(d.sync_fails(Time(50)), Some(SyncFailure::Full));
        assert_eq!(d.sync_fails(Time(100)), None);
        assert_eq!(d.stats.failed_syncs, 2);
        assert!(d.durable(b"a").is_none());
    }

    #[test]
    fn syncs_complete_in_issue_order() {
        let mut d = Disk::new((0, 10_000), (1, 1), rng_from(9));
        let mut last = Time::ZERO;
        for i in 0..100 {
            let (at, _) = d.sync(Time(i * 10));
            assert!(at >= last);
            last = at;
        }
    }

    #[test]
    fn crash_loses_unsynced_writes_but_never_synced_ones() {
        let mut lost_some = false;
        let mut kept_some = false;
        for seed in 0..50 {
            let mut d = disk(seed);
            d.write(b("synced"), Some(b("s")));
            let (_, mark) = d.sync(Time(0));
            d.complete_sync(mark);
            for i in 0..5 {
                d.write(Bytes::from(format!("u{i}")), Some(b("u")));
            }
            let (_, never) = d.sync(Time(0));
            let (kept, lost) = d.crash();
            assert_eq!(kept + lost, 5);
            lost_some |= lost > 0;
            kept_some |= kept > 0;
            // A sync of the dead incarnation completing later changes nothing.
            d.complete_sync(never);
            assert_eq!(d.durable(b"synced"), Some(&b("s")));
            // What survived is a prefix of the journal.
            let survived: Vec<bool> = (0..5)
                .map(|i| d.durable(format!("u{i}").as_bytes()).is_some())
                .collect();
            assert!(survived.windows(2).all(|w| w[0] || !w[1]), "{survived:?}");
            assert_eq!(d.pending_len(), 0);
            assert_eq!(d.load_all().len(), 1 + kept as usize);
        }
        assert!(lost_some && kept_some);
    }
}
