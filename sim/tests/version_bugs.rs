//! Each planted version bug is found by a version scenario within a seed
//! budget, by the oracle made for it; without the bug the same seeds pass
//! (see `version_scenarios.rs`).

use cairn_sim::planted;
use cairn_sim::upgrade::short;
use cairn_sim::{exit, run, RunConfig};

/// Runs seeds `0..budget` of `scenario` with `bug` planted until one fails;
/// returns the seed and the failure message.
fn find(scenario: &str, bug: &str, budget: u64) -> Option<(u64, String)> {
    let scenario = short(scenario).expect("version scenario");
    let bug = planted::find(bug).expect("known planted bug");
    (0..budget).find_map(|seed| {
        let r = run(&RunConfig {
            seed,
            scenario: scenario.clone(),
            bugs: vec![bug],
            trace: None,
        });
        (!r.outcome.is_pass()).then(|| {
            assert_eq!(
                r.outcome.code(),
                exit::SAFETY,
                "seed {seed}: {}",
                r.outcome.message()
            );
            (seed, r.outcome.message())
        })
    })
}

fn assert_found(scenario: &str, bug: &str, budget: u64, oracles: &[&str]) {
    let (seed, message) = find(scenario, bug, budget)
        .unwrap_or_else(|| panic!("{bug} went unnoticed by {scenario} over seeds 0..{budget}"));
    assert!(
        oracles.iter().any(|o| message.contains(&format!("[{o}]"))),
        "{bug} found at seed {seed} by an unexpected oracle: {message}"
    );
}

#[test]
fn a_new_message_before_finalization_is_found() {
    assert_found(
        "rolling-upgrade",
        "new-message-before-finalization",
        3,
        &["decodable"],
    );
}

#[test]
fn migrating_before_finalization_is_found() {
    assert_found(
        "rolling-upgrade",
        "migrate-before-finalization",
        3,
        &["no-early-format"],
    );
}

#[test]
fn a_non_atomic_migration_is_found() {
    assert_found(
        "crash-mid-migration",
        "non-atomic-migration",
        3,
        &["migration-keeps-records", "lost-ack", "stale-read"],
    );
}

#[test]
fn acting_on_a_cluster_version_before_persisting_it_is_found() {
    assert_found(
        "crash-mid-migration",
        "cluster-version-before-persisting",
        3,
        &["cluster-version-monotone"],
    );
}
