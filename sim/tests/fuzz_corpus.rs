//! Runs the seed corpus of the `simulate` fuzz target (`fuzz/seeds/simulate/`)
//! as an ordinary test, through the same check the target uses
//! (`cairn_sim::fuzzing::check_simulate`). A missing or empty seed directory
//! is a failure, so this cannot silently test nothing; and with a bug
//! planted in core, some seed must fail.

use std::fs;

use cairn_sim::fuzzing::{check_simulate, run_input};
use cairn_sim::planted;

#[path = "../../fuzz/src/corpus.rs"]
mod corpus;

use corpus::{run_seeds, seed_files};

#[test]
fn simulate_seeds() {
    run_seeds("simulate", check_simulate);
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
