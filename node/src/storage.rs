//! Durable storage: fjall, driven on tokio's blocking pool with group commit.
//!
//! The core emits `Write`s (buffered, no completion of their own) and `Sync`s
//! (complete once every earlier write is durable). The driver hands each sync
//! the writes issued since the previous one; the storage task applies every
//! sync that is waiting as one fjall batch followed by one
//! `persist(PersistMode::SyncData)` (fdatasync of the journal), and only then
//! reports each sync done. Jobs run strictly in order on one dedicated thread,
//! so a sync never completes before an earlier one.
//!
//! A backup is a job in the same queue: every sync before it is applied
//! first, then a fjall snapshot is taken (later writes are not in it) and
//! written out on another blocking thread while commits go on (see
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
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::mpsc;

/// One buffered write: `None` deletes.
pub type WriteOp = (Bytes, Option<Bytes>);

/// Work for the storage task.
pub enum Job {
    /// Apply `writes`, make them durable, then answer `io`.
    Sync { io: IoId, writes: Vec<WriteOp> },
    /// Read every record.
    ReadAll { io: IoId },
    /// Copy every record applied so far to a new backup, then answer `io`.
    Backup { io: IoId, info: BackupInfo },
}

/// Where backups go and how many are kept.
#[derive(Clone, Debug)]
pub struct BackupPolicy {
    pub node: NodeId,
    pub dir: PathBuf,
    pub retention: usize,
}

/// Counters the metrics endpoint reads.
#[derive(Debug, Default)]
pub struct StorageStats {
    /// fjall batches committed (each followed by one persist).
    pub batches: AtomicU64,
    /// Records written or deleted.
    pub records: AtomicU64,
    /// Core syncs answered (several may share one batch).
    pub syncs: AtomicU64,
    /// Total microseconds spent in batch commit plus persist.
    pub persist_micros: AtomicU64,
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
            .keyspace("records", KeyspaceCreateOptions::default)
            .map_err(|e| anyhow::anyhow!("cannot open keyspace in {}: {e}", dir.display()))?;
        Ok(Storage { db, data })
    }

    /// Applies several groups of writes as one batch and persists it.
    fn commit(&self, groups: &[&[WriteOp]]) -> Result<usize, fjall::Error> {
        let mut batch = self.db.batch();
        let mut n = 0;
        for group in groups {
            for (k, v) in group.iter() {
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
/// to `done` as `(io, result)`.
pub async fn run(
    storage: Storage,
    jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::Sender<(IoId, IoResult)>,
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
    done: mpsc::Sender<(IoId, IoResult)>,
    stats: Arc<StorageStats>,
    backups: BackupPolicy,
) {
    // Bounds how many syncs share one batch, so one huge group cannot starve
    // the answers of the others.
    const MAX_GROUP: usize = 1024;
    while let Some(first) = jobs.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let (answers, exports) = execute(&storage, group, &stats);
        for export in exports {
            let (tx, policy) = (done.clone(), backups.clone());
            let st = storage.clone();
            let io = export.io;
            let spawned = std::thread::Builder::new()
                .name("cairn-backup".into())
                .spawn(move || {
                    let result = st.export(export, &policy);
                    let _ = tx.blocking_send((io, result));
                });
            if let Err(e) = spawned {
                let why = format!("cannot start a backup thread: {e}");
                let _ = done.blocking_send((io, IoResult::Failed(why)));
            }
        }
        for a in answers {
            if done.blocking_send(a).is_err() {
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

/// Executes a group of jobs in order: runs of syncs become one batch.
fn execute(
    storage: &Storage,
    group: Vec<Job>,
    stats: &StorageStats,
) -> (Vec<(IoId, IoResult)>, Vec<Export>) {
    let mut exports = Vec::new();
    let mut answers = Vec::with_capacity(group.len());
    let mut pending: Vec<(IoId, Vec<WriteOp>)> = Vec::new();
    let flush = |pending: &mut Vec<(IoId, Vec<WriteOp>)>, answers: &mut Vec<(IoId, IoResult)>| {
        if pending.is_empty() {
            return;
        }
        let started = Instant::now();
        let groups: Vec<&[WriteOp]> = pending.iter().map(|(_, w)| w.as_slice()).collect();
        let result = storage.commit(&groups);
        stats
            .persist_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok(n) => {
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.records.fetch_add(n as u64, Ordering::Relaxed);
                stats
                    .syncs
                    .fetch_add(pending.len() as u64, Ordering::Relaxed);
                answers.extend(pending.drain(..).map(|(io, _)| (io, IoResult::Synced)));
            }
            Err(e) => {
                let reason = format!("fjall commit or persist failed: {e}");
                answers.extend(
                    pending
                        .drain(..)
                        .map(|(io, _)| (io, IoResult::Failed(reason.clone()))),
                );
            }
        }
    };
    for job in group {
        match job {
            Job::Sync { io, writes } => pending.push((io, writes)),
            Job::ReadAll { io } => {
                flush(&mut pending, &mut answers);
                let result = match storage.read_all() {
                    Ok(records) => IoResult::Loaded(records),
                    Err(e) => IoResult::Failed(format!("reading storage failed: {e}")),
                };
                answers.push((io, result));
            }
            Job::Backup { io, info } => {
                flush(&mut pending, &mut answers);
                exports.push(Export {
                    io,
                    info,
                    snapshot: storage.db.snapshot(),
                });
            }
        }
    }
    flush(&mut pending, &mut answers);
    (answers, exports)
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
            let (dtx, mut drx) = mpsc::channel(16);
            let policy = BackupPolicy {
                node: NodeId(1),
                dir: dir.path().join("backups"),
                retention: 2,
            };
            let task = tokio::spawn(run(s, jrx, dtx, stats.clone(), policy));
            let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
            jtx.send(Job::Sync {
                io: IoId(1),
                writes: vec![(b("a"), Some(b("1"))), (b("b"), Some(b("2")))],
            })
            .unwrap();
            jtx.send(Job::Sync {
                io: IoId(2),
                writes: vec![(b("a"), None)],
            })
            .unwrap();
            assert_eq!(drx.recv().await.unwrap(), (IoId(1), IoResult::Synced));
            assert_eq!(drx.recv().await.unwrap(), (IoId(2), IoResult::Synced));
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
            jtx.send(Job::Sync {
                io: IoId(4),
                writes: vec![(b("c"), Some(b("3")))],
            })
            .unwrap();
            let mut got = vec![drx.recv().await.unwrap(), drx.recv().await.unwrap()];
            got.sort_by_key(|(io, _)| *io);
            assert_eq!(
                got,
                vec![(IoId(3), IoResult::Synced), (IoId(4), IoResult::Synced)]
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
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 3);
    }
}
