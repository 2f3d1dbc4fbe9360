//! The disk model of one node.
//!
//! Writes are buffered in order; a sync covers every write issued before it
//! and completes after a random latency (syncs complete in the order they
//! were issued, as with a group-committing journal). Only then are the
//! covered writes durable. On a crash the unsynced tail is journal-like: a
//! random prefix of it happens to have reached the platter, the rest is lost;
//! syncs in flight never complete. The durable image is what a restarted node
//! reads back, and what the acknowledgement oracle inspects.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use cairn_core::Time;

use crate::rng::{between, SimRng};

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
        }
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
        while self.retired < mark {
            let Some((key, value)) = self.pending.pop_front() else {
                break;
            };
            self.retired += 1;
            self.apply(key, value);
        }
    }

    fn apply(&mut self, key: Bytes, value: Option<Bytes>) {
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

    pub fn durable(&self, key: &[u8]) -> Option<&Bytes> {
        self.durable.get(key)
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
