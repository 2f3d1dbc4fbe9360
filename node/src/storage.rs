//! Durable storage: fjall, driven on tokio's blocking pool with group commit.
//!
//! The core emits `Write`s (buffered, no completion of their own) and `Sync`s
//! (complete once every earlier write is durable). The driver hands each sync
//! the writes issued since the previous one; the storage task applies every
//! sync that is waiting as one fjall batch followed by one
//! `persist(PersistMode::SyncAll)`, and only then reports each sync done. Jobs
//! run strictly in order, so a sync never completes before an earlier one.
//!
//! Keys and values are opaque bytes chosen by the core; checksums inside the
//! values are the core's business (it reports corrupt records on load).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cairn_core::{IoId, IoResult};
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
        self.db.persist(PersistMode::SyncAll)?;
        Ok(n)
    }

    fn read_all(&self) -> Result<Vec<(Bytes, Bytes)>, fjall::Error> {
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
    mut jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::Sender<(IoId, IoResult)>,
    stats: Arc<StorageStats>,
) {
    // Bounds how many syncs share one batch, so one huge group cannot starve
    // the answers of the others.
    const MAX_GROUP: usize = 1024;
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let st = storage.clone();
        let stats2 = stats.clone();
        let answers = tokio::task::spawn_blocking(move || execute(&st, group, &stats2)).await;
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "storage task panicked");
                return;
            }
        };
        for a in answers {
            if done.send(a).await.is_err() {
                return;
            }
        }
    }
}

/// Executes a group of jobs in order: runs of syncs become one batch.
fn execute(storage: &Storage, group: Vec<Job>, stats: &StorageStats) -> Vec<(IoId, IoResult)> {
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
        }
    }
    flush(&mut pending, &mut answers);
    answers
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
            let task = tokio::spawn(run(s, jrx, dtx, stats.clone()));
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
            drop(jtx);
            task.await.unwrap();
        }
        let s = Storage::open(dir.path()).unwrap();
        let all = s.read_all().unwrap();
        assert_eq!(all, vec![(Bytes::from("b"), Bytes::from("2"))]);
        assert_eq!(stats.syncs.load(Ordering::Relaxed), 2);
    }
}
