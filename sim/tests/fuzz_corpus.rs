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

/// The seed with every kind of context write: old contexts are accepted,
/// hostile ones refused, and with contexts trusted the check fails.
#[test]
fn the_hostile_contexts_seed_is_refused_and_trusting_contexts_fails() {
    let file = seed_files("simulate")
        .into_iter()
        .find(|f| f.ends_with("3n-hostile-contexts"))
        .expect("the seed 3n-hostile-contexts");
    let data = fs::read(file).unwrap();
    let report = run_input(&data, &[]);
    assert!(report.outcome.is_pass(), "{}", report.outcome.message());
    let o = &report.stats.ops;
    assert!(
        o.hostile_sent.iter().all(|&n| n > 0),
        "{:?}",
        o.hostile_sent
    );
    assert_eq!(o.hostile_refused, o.hostile_sent);
    assert!(o.stale_writes > 0);
    let bug = planted::find("trust-client-contexts").expect("known planted bug");
    let report = run_input(&data, &[bug]);
    assert!(
        report.outcome.message().contains("context-refused"),
        "{}",
        report.outcome.message()
    );
}
