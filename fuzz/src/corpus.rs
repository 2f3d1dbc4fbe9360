//! Runs a fuzz target's seed corpus (`fuzz/seeds/<target>/`) through its
//! check as an ordinary test, on stable Rust. Shared by cairn-core's and
//! cairn-sim's `tests/fuzz_corpus.rs` (included with `#[path]`). A missing
//! or empty seed directory is a failure, so a corpus cannot silently test
//! nothing.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The seed files of `target`, sorted; panics when there are none.
pub fn seed_files(target: &str) -> Vec<PathBuf> {
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

/// Lower-case hex, for naming an input in a failure message.
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs every seed of `target` through `check`, then fails naming each seed
/// whose check panicked, with its input in hex.
pub fn run_seeds(target: &str, check: impl Fn(&[u8])) {
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
                hex(&data)
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
