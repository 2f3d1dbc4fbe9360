//! Runs the fuzz seed corpora (`fuzz/seeds/<target>/`) as ordinary tests, on
//! stable Rust, through the same checks the fuzz targets use
//! (`fuzz/src/checks.rs`), with the shared runner of `fuzz/src/corpus.rs`.

#[allow(dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

use checks::corpus::{run_seeds, seed_files};
use std::fs;

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
