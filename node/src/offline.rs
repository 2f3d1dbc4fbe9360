//! Offline operations on a stopped node's data directory: `cairn restore`
//! and `cairn migrate --dry-run`.
//!
//! Both refuse to run while a node holds the data directory (fjall keeps an
//! exclusive lock on `data_dir/fjall/lock` while it is open).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cairn_core::storage::{self, Meta, Progress, Record};
use cairn_core::version::ReleaseId;

use crate::config::Config;
use crate::storage::Storage;

fn fjall_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("fjall")
}

/// Fails if a running node holds the data directory's lock.
fn ensure_not_running(data_dir: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let lock = fjall_dir(data_dir).join("lock");
    let Ok(file) = std::fs::File::open(&lock) else {
        return Ok(());
    };
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "the data directory {} is in use: stop the node first",
            data_dir.display()
        );
    }
    // SAFETY: as above; the lock is released when `file` closes anyway.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
    Ok(())
}

/// `cairn restore`: replaces the node's records with a backup's, plus the
/// marker that makes the node learn its epochs from its peers before it
/// issues a write. Returns what was done, for the operator.
pub fn restore(cfg: &Config, label: &str) -> anyhow::Result<String> {
    let backups = cfg.backups_dir();
    let (manifest, records) = crate::backup::read(&backups, label)?;
    ensure_not_running(&cfg.data_dir)?;
    if manifest.node != cfg.id.0 {
        bail!(
            "backup {label} was taken on node {}, but this configuration is node {}",
            manifest.node,
            cfg.id.0
        );
    }
    let mut report = String::new();
    let store = match Storage::open(&cfg.data_dir) {
        Ok(s) => s,
        Err(e) if e.to_string().contains("in use") => return Err(e),
        Err(e) => {
            // Damaged beyond opening: keep it aside, restore into a new one.
            let aside = cfg
                .data_dir
                .join(format!("fjall.before-restore-{}", crate::backup::unix_ms()));
            std::fs::rename(fjall_dir(&cfg.data_dir), &aside).with_context(|| {
                format!("storage does not open ({e:#}) and cannot be moved aside")
            })?;
            let _ = writeln!(
                report,
                "storage did not open ({e:#}); moved it to {}",
                aside.display()
            );
            Storage::open(&cfg.data_dir)?
        }
    };
    let mut all = records;
    all.retain(|(k, _)| k.as_slice() != storage::RESTORED_KEY);
    all.push((
        storage::RESTORED_KEY.to_vec(),
        storage::restored_marker().to_vec(),
    ));
    let removed = store
        .replace_all(&all)
        .map_err(|e| anyhow::anyhow!("writing the restored records failed: {e}"))?;
    drop(store);
    let _ = writeln!(
        report,
        "restored node {} in {} from backup {label}",
        cfg.id.0,
        cfg.data_dir.display()
    );
    let _ = writeln!(
        report,
        "  backup: taken {} ({}), release {}, schema {}, epoch {}, {} records, sha256 {} verified",
        manifest.created,
        manifest.reason,
        manifest.release,
        manifest.schema,
        manifest.epoch,
        manifest.records,
        manifest.sha256
    );
    let _ = writeln!(
        report,
        "  replaced {removed} records with {} (plus the restore marker); backups in {} kept",
        all.len() - 1,
        backups.display()
    );
    let _ = writeln!(
        report,
        "  next start: the node learns from every peer the epochs it used since the backup, takes a newer one, and is re-synced by anti-entropy; it is not ready until every peer has answered"
    );
    Ok(report)
}

/// What a data directory holds, read without changing it.
#[derive(Debug, Default)]
pub struct Inventory {
    pub meta: Option<Meta>,
    pub progress: Option<Progress>,
    pub restored: bool,
    pub corrupt: usize,
    /// Per schema namespace: (data records, hint records).
    pub namespaces: BTreeMap<u16, (usize, usize)>,
    pub other: usize,
}

/// Reads every record of a stopped node's data directory without writing to
/// it: fjall may write while it opens a database (journal recovery), so a
/// copy is opened instead.
pub fn inventory(data_dir: &Path) -> anyhow::Result<Inventory> {
    let src = fjall_dir(data_dir);
    let mut inv = Inventory::default();
    if !src.exists() {
        return Ok(inv);
    }
    ensure_not_running(data_dir)?;
    let tmp = std::env::temp_dir().join(format!(
        "cairn-dry-run-{}-{}",
        std::process::id(),
        crate::backup::unix_ms()
    ));
    let result = (|| {
        copy_tree(&src, &tmp.join("fjall"))?;
        let store = Storage::open(&tmp)?;
        let records = store
            .read_all()
            .map_err(|e| anyhow::anyhow!("reading storage failed: {e}"))?;
        drop(store);
        for (k, v) in records {
            match storage::decode_record(&k, &v) {
                Ok(Record::Meta(m)) => inv.meta = Some(m),
                Ok(Record::Progress(p)) => inv.progress = Some(p),
                Ok(Record::Restored) => inv.restored = true,
                Ok(Record::Data { schema, .. }) => inv.namespaces.entry(schema).or_default().0 += 1,
                Ok(Record::Hint { schema, .. }) => inv.namespaces.entry(schema).or_default().1 += 1,
                Err(_) => match storage::key_schema(&k) {
                    Some(s) => {
                        inv.corrupt += 1;
                        inv.namespaces.entry(s).or_default();
                    }
                    None if k.as_ref() == storage::META_KEY => inv.corrupt += 1,
                    None => inv.other += 1,
                },
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| inv)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("cannot copy {}", src.display()))?;
        }
    }
    Ok(())
}

/// `cairn migrate --dry-run`: what a start of this configuration would do to
/// the schema, decided as the core decides it at start-up.
pub fn migrate_plan(cfg: &Config) -> anyhow::Result<String> {
    let mut out = plan(cfg)?;
    out.push_str("(dry run: nothing was written)\n");
    Ok(out)
}

fn reads(schema: u16) -> String {
    if schema <= 1 {
        format!("schema {schema}")
    } else {
        format!("schemas {} and {schema}", schema - 1)
    }
}

fn plan(cfg: &Config) -> anyhow::Result<String> {
    let inv = inventory(&cfg.data_dir)?;
    let me = cfg.release;
    let rel = me.release();
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "data directory: {}", cfg.data_dir.display());
    let _ = writeln!(
        w,
        "this binary runs as release {} (writes schema {}, reads {}; serves at cluster versions {} to {})",
        rel.version,
        rel.schema,
        reads(rel.schema),
        me.min_cluster_version().version(),
        rel.version
    );
    let fresh = inv.meta.is_none() && inv.namespaces.is_empty();
    match &inv.meta {
        Some(m) => {
            let _ = writeln!(
                w,
                "metadata: live schema {}, cluster version {}, epoch {}, {} shutdown, {} starts so far",
                m.schema,
                m.cluster_version,
                m.epoch,
                if m.clean { "clean" } else { "unclean" },
                m.generation
            );
        }
        None if fresh => {
            let _ = writeln!(w, "metadata: none (empty data directory)");
        }
        None => {
            let _ = writeln!(
                w,
                "metadata: missing (the fullest namespace is taken as live)"
            );
        }
    }
    if inv.namespaces.is_empty() {
        let _ = writeln!(w, "records: none");
    }
    for (schema, (data, hints)) in &inv.namespaces {
        let _ = writeln!(w, "records: schema {schema}: {data} keys, {hints} hints");
    }
    if inv.corrupt > 0 {
        let _ = writeln!(
            w,
            "corrupt records: {} (dropped and repaired from replicas at start)",
            inv.corrupt
        );
    }
    if inv.restored {
        let _ = writeln!(
            w,
            "restore marker: present (the node will learn its epochs from its peers)"
        );
    }
    if let Some(p) = &inv.progress {
        let _ = writeln!(
            w,
            "interrupted migration: schema {} to {}, {} attempts so far{}",
            p.from,
            p.to,
            p.attempts,
            p.last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    // The decisions of the core's recovery, in the same order.
    let cv = match &inv.meta {
        Some(m) => match ReleaseId::by_version(&m.cluster_version) {
            Some(v) => v,
            None => {
                let _ = writeln!(
                    w,
                    "plan: refuse to start: cluster version {} is unknown to this build; run a newer release",
                    m.cluster_version
                );
                return Ok(out);
            }
        },
        None => cfg
            .initial_cluster_version
            .unwrap_or(me.min_cluster_version()),
    };
    let target = cv.release().schema.min(rel.schema);
    let schema = match &inv.meta {
        Some(m) => m.schema,
        None => inv
            .namespaces
            .iter()
            .max_by_key(|(_, (d, h))| d + h)
            .map(|(s, _)| *s)
            .unwrap_or(target),
    };
    // As the core decides it: a migration that had not finished (its
    // progress record, or a cluster version asking for a newer schema) is
    // named rather than taken for a directory too old to open.
    let unfinished = inv
        .progress
        .as_ref()
        .filter(|p| p.from == schema)
        .map(|p| p.to)
        .or_else(|| (cv.release().schema > schema).then_some(schema + 1));
    if let Some(why) = cairn_core::version::schema_refusal(rel, schema, unfinished) {
        let _ = writeln!(w, "plan: refuse to start: {why}");
        return Ok(out);
    }
    if cv > me {
        let _ = writeln!(
            w,
            "plan: refuse to serve: release {} is older than the active cluster version {}",
            rel.version,
            cv.version()
        );
        return Ok(out);
    }
    if cv < me.min_cluster_version() {
        let _ = writeln!(
            w,
            "plan: refuse to serve: release {} needs the cluster finalized at {} or later, but it is at {}",
            rel.version,
            me.min_cluster_version().version(),
            cv.version()
        );
        return Ok(out);
    }
    let _ = writeln!(
        w,
        "cluster version {} asks this release for schema {target}",
        cv.version()
    );
    if fresh {
        let _ = writeln!(
            w,
            "plan: no migration: a new node starts at schema {target}, cluster version {}",
            cv.version()
        );
    } else if target > schema {
        let resuming = inv
            .progress
            .as_ref()
            .is_some_and(|p| p.from == schema && p.to == target);
        let (data, hints) = inv.namespaces.get(&schema).copied().unwrap_or_default();
        let _ = writeln!(
            w,
            "plan: MIGRATE at start-up from schema {schema} to schema {target} ({data} keys, {hints} hints){}: a backup is taken first, the node is not ready until it finishes",
            if resuming { ", resuming the interrupted attempt" } else { "" }
        );
    } else if rel.schema > schema {
        let _ = writeln!(
            w,
            "plan: no migration at start-up: schema {schema} stays live until the cluster is finalized at {} (then the node migrates online, after a backup)",
            rel.version
        );
    } else {
        let _ = writeln!(w, "plan: no migration: schema {schema} is current");
    }
    Ok(out)
}
