//! Durable storage: fjall, driven on tokio's blocking pool with group commit.
//!
//! The core emits `Write`s (buffered, no completion of their own) and `Sync`s
//! (complete once every earlier write is durable). The driver streams the
//! writes to the storage thread as they are issued, numbered in order, without
//! waiting for a sync. The storage thread never idles while writes wait: it
//! takes every write queued, applies them as one fjall batch followed by one
//! `persist(PersistMode::SyncData)` (fdatasync of the journal), and only then
//! reports how many writes are durable ([`Done::Durable`]). The driver
//! completes a core sync once that count covers every write issued before it.
//! So the journal is synced back to back under load, each fdatasync covering
//! everything that arrived during the previous one (group commit), and a sync
//! costs no extra round trip between the driver and the storage thread.
//! Jobs run strictly in order on one dedicated thread. A failed commit or
//! persist is final: every later batch is reported failed too, never durable.
//!
//! A backup is a job in the same queue: every write before it is applied and
//! persisted first, then a fjall snapshot is taken (later writes are not in
//! it) and written out on another blocking thread while commits go on (see
//! [`crate::backup`] for the format).
//!
//! Keys and values are opaque bytes chosen by the core; checksums inside the
//! values are the core's business (it reports corrupt records on load).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_core::api::BackupInfo;
use cairn_core::{IoId, IoResult, NodeId};
use fjall::config::{FilterPolicy, FilterPolicyEntry};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::mpsc;

/// One buffered write: `None` deletes.
pub type WriteOp = (Bytes, Option<Bytes>);

/// Work for the storage task.
pub enum Job {
    /// Apply `writes` and make them durable; `upto` numbers the last of them
    /// (writes are counted from 1 over the life of the process).
    Write { writes: Vec<WriteOp>, upto: u64 },
    /// Read every record.
    ReadAll { io: IoId },
    /// Copy every record applied so far to a new backup, then answer `io`.
    Backup { io: IoId, info: BackupInfo },
}

/// What the storage thread reports to the driver.
#[derive(Debug, PartialEq)]
pub enum Done {
    /// Every write numbered up to this one is durable.
    Durable(u64),
    /// Writes could not be made durable. Final: nothing later is durable.
    Failed(String),
    /// A read or a backup finished.
    Io(IoId, IoResult),
}

/// Where backups go and how many are kept.
#[derive(Clone, Debug)]
pub struct BackupPolicy {
    pub node: NodeId,
    pub dir: PathBuf,
    pub retention: usize,
}

/// Counters the metrics endpoint reads.
#[derive(Debug)]
pub struct StorageStats {
    /// fjall batches committed (each followed by one persist).
    pub batches: AtomicU64,
    /// Records written or deleted.
    pub records: AtomicU64,
    /// Core syncs answered (several may share one batch; counted by the driver).
    pub syncs: AtomicU64,
    /// Seconds each batch took to commit and persist (fsync).
    pub persist_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StorageStats {
    fn default() -> Self {
        StorageStats {
            batches: AtomicU64::new(0),
            records: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            // 50 µs to about 13 s.
            persist_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 19),
            ),
        }
    }
}

/// How the records keyspace is created. fjall stores these options with the
/// keyspace when it creates it and uses the stored ones afterwards, so they
/// apply to data directories created with them; older ones keep theirs (the
/// data and its layout are the same either way).
fn keyspace_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        // Bloom filters only speed up point reads, and the node never makes
        // one: it loads every record at start and iterates for backups. Not
        // building them saves CPU on every flush and compaction.
        .filter_policy(FilterPolicy::all(FilterPolicyEntry::None))
}

/// An open data directory.
#[derive(Clone)]
pub struct Storage {
    db: Database,
    data: Keyspace,
}

impl Storage {
    /// Opens (or creates) the data directory.
    pub fn open(dir: &Path) -> anyhow::Result<Storage> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let db = Database::builder(dir.join("fjall")).open().map_err(|e| {
            if matches!(e, fjall::Error::Locked) {
                return anyhow::anyhow!(
                    "cannot open storage in {}: it is in use by another process (is a node running on this data directory?)",
                    dir.display()
                );
            }
            let text = format!("{e:?}");
            let hint = if text.contains("Checksum") || text.contains("Corrupt") {
                "; the data on disk is damaged and is not served: move the data directory \
                 aside and restart, and the node re-syncs from its replicas"
            } else {
                ""
            };
            anyhow::anyhow!("cannot open storage in {}: {e}{hint}", dir.display())
        })?;
        let data = db
            .keyspace("records", keyspace_options)
            .map_err(|e| anyhow::anyhow!("cannot open keyspace in {}: {e}", dir.display()))?;
        Ok(Storage { db, data })
    }

    /// Applies several groups of writes as one batch and persists it.
    fn commit(&self, groups: &[Vec<WriteOp>]) -> Result<usize, fjall::Error> {
        let mut batch = self.db.batch();
        let mut n = 0;
        for group in groups {
            for (k, v) in group {
                match v {
                    Some(v) => batch.insert(&self.data, k.as_ref(), v.as_ref()),
                    None => batch.remove(&self.data, k.as_ref()),
                }
                n += 1;
            }
        }
        if n > 0 {
            batch.commit()?;
        }
        // fdatasync of the journal: its data and size reach the disk (what a
        // read after a crash needs), without the inode's timestamps. fjall
        // syncs the directory and the old file itself when it starts a new
        // journal file.
        self.db.persist(PersistMode::SyncData)?;
        Ok(n)
    }

    /// Replaces every record with `records`, in one atomic batch, persisted.
    pub fn replace_all(&self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<usize, fjall::Error> {
        let mut batch = self.db.batch();
        let mut removed = 0;
        for item in self.data.iter() {
            let k = item.key()?;
            batch.remove(&self.data, k);
            removed += 1;
        }
        for (k, v) in records {
            batch.insert(&self.data, k.as_slice(), v.as_slice());
        }
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        Ok(removed)
    }

    pub fn read_all(&self) -> Result<Vec<(Bytes, Bytes)>, fjall::Error> {
        let mut out = Vec::new();
        for item in self.data.iter() {
            let (k, v) = item.into_inner()?;
            out.push((Bytes::copy_from_slice(&k), Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }
}

/// Runs storage jobs in order until the job channel closes. Every answer goes
/// to `done`.
pub async fn run(
    storage: Storage,
    jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    stats: Arc<StorageStats>,
    backups: BackupPolicy,
) {
    // One dedicated thread: a sync costs one hand-off to it and one back,
    // not a trip through the blocking pool per group.
    let (finished_tx, finished) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("cairn-storage".into())
        .spawn(move || {
            storage_loop(storage, jobs, done, stats, backups);
            let _ = finished_tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = finished.await;
        }
        Err(e) => tracing::error!(error = %e, "cannot start the storage thread"),
    }
}

fn storage_loop(
    storage: Storage,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    stats: Arc<StorageStats>,
    backups: BackupPolicy,
) {
    // Bounds how many jobs share one batch, so one huge group cannot hold
    // back the answers of the others.
    const MAX_GROUP: usize = 4096;
    let mut failed: Option<String> = None;
    let mut group = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let (answers, exports) = execute(&storage, &mut group, &stats, &mut failed);
        for export in exports {
            let (tx, policy) = (done.clone(), backups.clone());
            let st = storage.clone();
            let io = export.io;
            let spawned = std::thread::Builder::new()
                .name("cairn-backup".into())
                .spawn(move || {
                    let result = st.export(export, &policy);
                    let _ = tx.send(Done::Io(io, result));
                });
            if let Err(e) = spawned {
                let why = format!("cannot start a backup thread: {e}");
                let _ = done.send(Done::Io(io, IoResult::Failed(why)));
            }
        }
        for a in answers {
            if done.send(a).is_err() {
                return;
            }
        }
    }
}

/// A snapshot waiting to be written out as a backup.
struct Export {
    io: IoId,
    info: BackupInfo,
    snapshot: fjall::Snapshot,
}

impl Storage {
    /// Writes a snapshot out as a backup, then prunes old ones.
    fn export(&self, e: Export, policy: &BackupPolicy) -> IoResult {
        use fjall::Readable as _;
        let started = Instant::now();
        let records = e.snapshot.iter(&self.data).map(|g| g.into_inner());
        match crate::backup::write(&policy.dir, policy.node, &e.info, records) {
            Ok(m) => {
                tracing::info!(
                    label = %m.label,
                    records = m.records,
                    bytes = m.bytes,
                    reason = %m.reason,
                    millis = started.elapsed().as_millis() as u64,
                    "backup written"
                );
                let removed = crate::backup::prune(&policy.dir, policy.retention);
                if !removed.is_empty() {
                    tracing::info!(?removed, retention = policy.retention, "old backups pruned");
                }
                IoResult::Synced
            }
            Err(reason) => {
                tracing::error!(label = %e.info.label, %reason, "backup failed");
                IoResult::Failed(reason)
            }
        }
    }
}

/// Executes a group of jobs in order: runs of writes become one batch and
/// one persist. Once a commit or persist fails, `failed` holds why and no
/// later write is applied or reported durable.
fn execute(
    storage: &Storage,
    group: &mut Vec<Job>,
    stats: &StorageStats,
    failed: &mut Option<String>,
) -> (Vec<Done>, Vec<Export>) {
    let mut exports = Vec::new();
    let mut answers = Vec::new();
    let mut pending: Vec<Vec<WriteOp>> = Vec::new();
    let mut upto = 0;
    for job in group.drain(..) {
        match job {
            Job::Write { writes, upto: u } => {
                pending.push(writes);
                upto = u;
            }
            Job::ReadAll { io } => {
                flush(storage, stats, failed, &mut pending, upto, &mut answers);
                let result = match storage.read_all() {
                    Ok(records) => IoResult::Loaded(records),
                    Err(e) => IoResult::Failed(format!("reading storage failed: {e}")),
                };
                answers.push(Done::Io(io, result));
            }
            Job::Backup { io, info } => {
                flush(storage, stats, failed, &mut pending, upto, &mut answers);
                if let Some(reason) = failed.as_ref() {
                    answers.push(Done::Io(io, IoResult::Failed(reason.clone())));
                    continue;
                }
                exports.push(Export {
                    io,
                    info,
                    snapshot: storage.db.snapshot(),
                });
            }
        }
    }
    flush(storage, stats, failed, &mut pending, upto, &mut answers);
    (answers, exports)
}

/// Applies `pending` as one batch, persists it and reports the writes up to
/// `upto` durable (or the failure).
fn flush(
    storage: &Storage,
    stats: &StorageStats,
    failed: &mut Option<String>,
    pending: &mut Vec<Vec<WriteOp>>,
    upto: u64,
    answers: &mut Vec<Done>,
) {
    if pending.is_empty() {
        return;
    }
    if let Some(reason) = failed.as_ref() {
        pending.clear();
        answers.push(Done::Failed(reason.clone()));
        return;
    }
    let started = Instant::now();
    let result = storage.commit(pending);
    pending.clear();
    stats
        .persist_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(n) => {
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.records.fetch_add(n as u64, Ordering::Relaxed);
            answers.push(Done::Durable(upto));
        }
        Err(e) => {
            let reason = format!("fjall commit or persist failed: {e}");
            tracing::error!(%reason, "storage failed; nothing more is made durable");
            *failed = Some(reason.clone());
            answers.push(Done::Failed(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn group_commit_persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(StorageStats::default());
        {
            let s = Storage::open(dir.path()).unwrap();
            let (jtx, jrx) = mpsc::unbounded_channel();
            let (dtx, mut drx) = mpsc::unbounded_channel();
            let policy = BackupPolicy {
                node: NodeId(1),
                dir: dir.path().join("backups"),
                retention: 2,
            };
            let task = tokio::spawn(run(s, jrx, dtx, stats.clone(), policy));
            let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
            jtx.send(Job::Write {
                writes: vec![(b("a"), Some(b("1"))), (b("b"), Some(b("2")))],
                upto: 2,
            })
            .unwrap();
            jtx.send(Job::Write {
                writes: vec![(b("a"), None)],
                upto: 3,
            })
            .unwrap();
            // Both writes may share one batch; the last report covers all.
            let mut durable = 0;
            while durable < 3 {
                match drx.recv().await.unwrap() {
                    Done::Durable(n) => {
                        assert!(n > durable);
                        durable = n;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let info = BackupInfo {
                label: "n1-e1-b3".into(),
                time: cairn_core::Time(1),
                release: "0.3.0".into(),
                schema: 3,
                epoch: 1,
                reason: "manual".into(),
            };
            jtx.send(Job::Backup { io: IoId(3), info }).unwrap();
            // Issued after the backup: not part of it.
            jtx.send(Job::Write {
                writes: vec![(b("c"), Some(b("3")))],
                upto: 4,
            })
            .unwrap();
            let mut got = vec![drx.recv().await.unwrap(), drx.recv().await.unwrap()];
            got.sort_by_key(|d| matches!(d, Done::Io(..)));
            assert_eq!(
                got,
                vec![Done::Durable(4), Done::Io(IoId(3), IoResult::Synced)]
            );
            let (_, recs) = crate::backup::read(&dir.path().join("backups"), "n1-e1-b3").unwrap();
            assert_eq!(recs, vec![(b"b".to_vec(), b"2".to_vec())]);
            drop(jtx);
            task.await.unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        let all = s.read_all().unwrap();
        assert_eq!(
            all,
            vec![
                (Bytes::from("b"), Bytes::from("2")),
                (Bytes::from("c"), Bytes::from("3"))
            ]
        );
        assert_eq!(stats.records.load(Ordering::Relaxed), 4);
    }
}
