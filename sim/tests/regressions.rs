//! Seeds that once found bugs in core, kept so the bugs stay fixed.
//!
//! Issue 2's sweep found that a `Forward` delivered twice applied one client
//! write twice (two dots for one write): the default scenario's seeds 70 and
//! 605 caught it through the `antichain` oracle.
//!
//! Once anti-entropy stopped comparing empty partitions, seed 22 of
//! `restore-backup` caught a restored node that, restarted before its re-sync
//! completed, served reads from its restored data (`stale-read`).

use cairn_sim::scenario::builtin;
use cairn_sim::{run, Outcome, RunConfig};

fn passes(seed: u64, scenario: &str) {
    let report = run(&RunConfig {
        seed,
        scenario: builtin(scenario).expect("built-in scenario"),
        bugs: Vec::new(),
        trace: None,
    });
    assert!(
        matches!(report.outcome, Outcome::Pass),
        "seed {seed} ({scenario}) regressed: {:?}",
        report.outcome
    );
}

#[test]
fn duplicated_forward_applies_a_write_once() {
    passes(70, "default");
    passes(605, "default");
}

#[test]
fn a_restored_node_restarted_mid_resync_serves_no_stale_reads() {
    passes(22, "restore-backup");
}
