//! Runs the fuzz seed corpora (`fuzz/seeds/<target>/`) as ordinary tests, on
//! stable Rust, through the same checks the fuzz targets use
//! (`fuzz/src/checks.rs`). A missing or empty seed directory is a failure,
//! so this cannot silently test nothing.

#[allow(dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn seed_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let entries = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed directory {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable seed directory").path())
        .filter(|p| p.is_file())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

fn run_seeds(target: &str, check: fn(&[u8])) {
    let mut failures = Vec::new();
    let files = seed_files(target);
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| check(&data))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!(
                "{}: {msg}\n  input: {}",
                file.display(),
                checks::hex(&data)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds of {target} fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn wire_decode_seeds() {
    run_seeds("wire_decode", checks::check_wire_decode);
}

#[test]
fn storage_decode_seeds() {
    run_seeds("storage_decode", checks::check_storage_decode);
}

#[test]
fn context_decode_seeds() {
    run_seeds("context_decode", checks::check_context_decode);
}

#[test]
fn dvv_ops_seeds() {
    run_seeds("dvv_ops", checks::check_dvv_ops);
}

#[test]
fn migrate_records_seeds() {
    run_seeds("migrate_records", checks::check_migrate_records);
}

/// The migrate_records seeds exercise what the target exists for: crashes
/// and failed syncs in the middle of a migration, failed migrations, online
/// finalizations, hints, and migrations of more than one chunk.
#[test]
fn migrate_records_seeds_cover_the_interesting_paths() {
    let stats: Vec<checks::MigStats> = seed_files("migrate_records")
        .iter()
        .map(|f| checks::run_migration(&fs::read(f).unwrap()))
        .collect();
    let total = |f: fn(&checks::MigStats) -> usize| stats.iter().map(f).sum::<usize>();
    assert!(total(|s| s.faults_migrating) > 0, "no crash mid-migration");
    assert!(total(|s| s.refusals) > 0, "no failed migration");
    assert!(total(|s| s.finalizations) > 0, "no online finalization");
    assert!(total(|s| s.hints) > 0, "no hints");
    assert!(total(|s| s.backups) > 0, "no backups");
    assert!(
        stats.iter().any(|s| s.records > 256),
        "no migration of more than one chunk"
    );
}
