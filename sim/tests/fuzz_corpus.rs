//! Runs the seed corpus of the `simulate` fuzz target (`fuzz/seeds/simulate/`)
//! as an ordinary test, through the same check the target uses
//! (`cairn_sim::fuzzing::check_simulate`). A missing or empty seed directory
//! is a failure, so this cannot silently test nothing; and with a bug
//! planted in core, some seed must fail.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_sim::fuzzing::{check_simulate, run_input};
use cairn_sim::planted;

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

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn simulate_seeds() {
    let files = seed_files("simulate");
    let mut failures = Vec::new();
    for file in &files {
        let data = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = std::panic::catch_unwind(|| check_simulate(&data)) {
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
        "{} of {} seeds of simulate fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// The check can fail: with a replica acknowledging writes before they are
/// durable, the seeds that crash nodes under load catch it.
#[test]
fn a_planted_bug_fails_some_seed() {
    let bug = planted::find("ack-before-durable").expect("known planted bug");
    let caught: Vec<String> = seed_files("simulate")
        .iter()
        .filter_map(|file| {
            let data = fs::read(file).unwrap();
            let report = run_input(&data, &[bug]);
            (!report.outcome.is_pass()).then(|| {
                format!(
                    "{}: {}",
                    file.file_name().unwrap().to_string_lossy(),
                    report.outcome.message()
                )
            })
        })
        .collect();
    assert!(
        caught.iter().any(|m| m.contains("ack-durable")),
        "no seed of simulate caught the planted bug ack-before-durable: {caught:?}"
    );
}
