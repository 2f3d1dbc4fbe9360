//! Backups on disk: writing, listing, verifying and pruning.
//!
//! The core asks for a backup with `Output::Backup`; the storage task takes a
//! fjall snapshot at that point of its job queue (every earlier sync applied,
//! no later write visible) and this module writes the snapshot out:
//!
//! ```text
//! <data_dir>/backups/<label>/
//!     records.bin     "CAIRNBK1", then per record, in key order:
//!                     key length (u32 LE) | key | value length (u32 LE) | value
//!     manifest.json   the core's BackupInfo (label, release, schema, epoch,
//!                     reason), the node id, the wall-clock creation time,
//!                     the record count, the size and the SHA-256 of records.bin
//! ```
//!
//! Records are stored exactly as the core wrote them (each value carries the
//! core's own checksum too). A backup is written under `.tmp-<label>`,
//! synced, then renamed, so a directory with a manifest is always complete;
//! `cairn restore` verifies the SHA-256 before touching the data.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_core::api::BackupInfo;
use cairn_core::NodeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of `records.bin`.
pub const MAGIC: &[u8; 8] = b"CAIRNBK1";
pub const RECORDS_FILE: &str = "records.bin";
pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: u32 = 1;

/// What `manifest.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub node: u32,
    pub label: String,
    /// Why it was taken: `manual` or `before migration to schema N`.
    pub reason: String,
    /// The release the node ran, the live schema and the epoch at the time.
    pub release: String,
    pub schema: u16,
    pub epoch: u32,
    /// Wall-clock creation time.
    pub created_unix_ms: u64,
    pub created: String,
    /// The core's clock when it asked for the backup (microseconds).
    pub core_time_us: u64,
    pub records: u64,
    /// Size of `records.bin` in bytes.
    pub bytes: u64,
    /// SHA-256 of `records.bin`, hex.
    pub sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Formats Unix milliseconds as RFC 3339 UTC (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a backup of `records` (in key order) into `backups/<info.label>`.
pub fn write<K, V, E>(
    backups: &Path,
    node: NodeId,
    info: &BackupInfo,
    records: impl Iterator<Item = Result<(K, V), E>>,
) -> Result<Manifest, String>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
    E: std::fmt::Display,
{
    let label = &info.label;
    if label.is_empty() || label.contains(['/', '\\']) || label.starts_with('.') {
        return Err(format!("invalid backup label {label:?}"));
    }
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    std::fs::create_dir_all(backups)
        .map_err(|e| io(&format!("cannot create {}", backups.display()), e))?;
    let final_dir = backups.join(label);
    if final_dir.exists() {
        return Err(format!(
            "a backup labelled {label} already exists in {}",
            backups.display()
        ));
    }
    let tmp = backups.join(format!(".tmp-{label}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)
        .map_err(|e| io(&format!("cannot create {}", tmp.display()), e))?;
    let result = (|| {
        let path = tmp.join(RECORDS_FILE);
        let file = File::create(&path).map_err(|e| io("cannot create records.bin", e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut sha = Sha256::new();
        let mut bytes = 0u64;
        let mut count = 0u64;
        let mut put = |buf: &[u8], out: &mut BufWriter<File>| -> Result<(), String> {
            sha.update(buf);
            bytes += buf.len() as u64;
            out.write_all(buf)
                .map_err(|e| io("cannot write records.bin", e))
        };
        put(MAGIC, &mut out)?;
        for item in records {
            let (k, v) = item.map_err(|e| format!("reading the snapshot failed: {e}"))?;
            let (k, v) = (k.as_ref(), v.as_ref());
            put(&(k.len() as u32).to_le_bytes(), &mut out)?;
            put(k, &mut out)?;
            put(&(v.len() as u32).to_le_bytes(), &mut out)?;
            put(v, &mut out)?;
            count += 1;
        }
        let file = out
            .into_inner()
            .map_err(|e| format!("cannot write records.bin: {e}"))?;
        file.sync_all()
            .map_err(|e| io("cannot sync records.bin", e))?;
        let created_unix_ms = unix_ms();
        let manifest = Manifest {
            format: FORMAT,
            node: node.0,
            label: label.clone(),
            reason: info.reason.clone(),
            release: info.release.clone(),
            schema: info.schema,
            epoch: info.epoch,
            created_unix_ms,
            created: rfc3339(created_unix_ms),
            core_time_us: info.time.0,
            records: count,
            bytes,
            sha256: hex(&sha.finalize()),
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        let mpath = tmp.join(MANIFEST_FILE);
        let mut f = File::create(&mpath).map_err(|e| io("cannot create manifest.json", e))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| io("cannot write manifest.json", e))?;
        sync_dir(&tmp).map_err(|e| io("cannot sync the backup directory", e))?;
        std::fs::rename(&tmp, &final_dir).map_err(|e| io("cannot rename the backup", e))?;
        sync_dir(backups).map_err(|e| io("cannot sync the backups directory", e))?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Every complete backup in `backups`, oldest first.
pub fn list(backups: &Path) -> Vec<Manifest> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(backups) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(text) = std::fs::read(e.path().join(MANIFEST_FILE)) else {
            continue;
        };
        if let Ok(m) = serde_json::from_slice::<Manifest>(&text) {
            out.push(m);
        }
    }
    out.sort_by(|a, b| (a.created_unix_ms, &a.label).cmp(&(b.created_unix_ms, &b.label)));
    out
}

/// Deletes the oldest backups beyond `keep`; returns the labels removed.
pub fn prune(backups: &Path, keep: usize) -> Vec<String> {
    let all = list(backups);
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for m in all.into_iter().take(excess) {
        if std::fs::remove_dir_all(backups.join(&m.label)).is_ok() {
            removed.push(m.label);
        }
    }
    removed
}

/// A record as stored: (key, value).
pub type RawRecord = (Vec<u8>, Vec<u8>);

/// Reads a backup and checks it against its manifest.
pub fn read(backups: &Path, label: &str) -> anyhow::Result<(Manifest, Vec<RawRecord>)> {
    use anyhow::{bail, Context as _};
    let dir: PathBuf = backups.join(label);
    if label.contains(['/', '\\']) || !dir.is_dir() {
        let known: Vec<String> = list(backups).into_iter().map(|m| m.label).collect();
        bail!(
            "no backup labelled {label:?} in {} (available: {})",
            backups.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join(MANIFEST_FILE))
            .with_context(|| format!("cannot read {}", dir.join(MANIFEST_FILE).display()))?,
    )
    .context("manifest.json is not valid")?;
    if manifest.format != FORMAT {
        bail!("backup format {} is not supported", manifest.format);
    }
    let mut raw = Vec::new();
    BufReader::new(
        File::open(dir.join(RECORDS_FILE))
            .with_context(|| format!("cannot open {}", dir.join(RECORDS_FILE).display()))?,
    )
    .read_to_end(&mut raw)?;
    let sum = hex(&Sha256::digest(&raw));
    if sum != manifest.sha256 || raw.len() as u64 != manifest.bytes {
        bail!(
            "backup {label} is damaged: records.bin has SHA-256 {sum} and {} bytes, the manifest says {} and {}",
            raw.len(),
            manifest.sha256,
            manifest.bytes
        );
    }
    let bad = || anyhow::anyhow!("backup {label}: records.bin is truncated or malformed");
    if raw.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        bail!("backup {label}: records.bin does not start with {MAGIC:?}");
    }
    let mut at = MAGIC.len();
    let mut take = |n: usize| -> anyhow::Result<&[u8]> {
        let s = raw.get(at..at + n).ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    let mut records = Vec::with_capacity(manifest.records as usize);
    while records.len() < manifest.records as usize {
        let kl = u32::from_le_bytes(take(4)?.try_into()?) as usize;
        let k = take(kl)?.to_vec();
        let vl = u32::from_le_bytes(take(4)?.try_into()?) as usize;
        let v = take(vl)?.to_vec();
        records.push((k, v));
    }
    if at != raw.len() {
        bail!("backup {label}: records.bin has bytes after the last record");
    }
    Ok((manifest, records))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::Time;

    fn info(label: &str) -> BackupInfo {
        BackupInfo {
            label: label.into(),
            time: Time(5),
            release: "0.2.0".into(),
            schema: 2,
            epoch: 3,
            reason: "manual".into(),
        }
    }

    #[test]
    fn write_read_list_prune() {
        let dir = tempfile::tempdir().unwrap();
        let recs = vec![
            Ok::<_, String>((b"a".to_vec(), b"1".to_vec())),
            Ok((b"b".to_vec(), vec![0u8; 300])),
        ];
        let m = write(dir.path(), NodeId(1), &info("n1-e3-b1"), recs.into_iter()).unwrap();
        assert_eq!(m.records, 2);
        let (m2, back) = read(dir.path(), "n1-e3-b1").unwrap();
        assert_eq!(m, m2);
        assert_eq!(back[1].1.len(), 300);
        // The same label twice is refused.
        let again = write(
            dir.path(),
            NodeId(1),
            &info("n1-e3-b1"),
            std::iter::empty::<Result<(Vec<u8>, Vec<u8>), String>>(),
        );
        assert!(again.is_err());
        for i in 2..5 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            let l = format!("n1-e3-b{i}");
            write(
                dir.path(),
                NodeId(1),
                &info(&l),
                std::iter::empty::<Result<(Vec<u8>, Vec<u8>), String>>(),
            )
            .unwrap();
        }
        assert_eq!(list(dir.path()).len(), 4);
        assert_eq!(prune(dir.path(), 2), vec!["n1-e3-b1", "n1-e3-b2"]);
        assert_eq!(list(dir.path()).len(), 2);
        // Damage is detected.
        let p = dir.path().join("n1-e3-b4").join(RECORDS_FILE);
        let mut raw = std::fs::read(&p).unwrap();
        raw.push(0);
        std::fs::write(&p, raw).unwrap();
        assert!(read(dir.path(), "n1-e3-b4").is_err());
        assert!(read(dir.path(), "nope").is_err());
    }

    #[test]
    fn time_formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_709_251_200_123), "2024-03-01T00:00:00.123Z");
    }
}
