//! Seeds that once found bugs in core, kept so the bugs stay fixed.
//!
//! Issue 2's sweep found that a `Forward` delivered twice applied one client
//! write twice (two dots for one write): the default scenario's seeds 70 and
//! 605 caught it through the `antichain` oracle.
//!
//! Once anti-entropy stopped comparing empty partitions, seed 22 of
//! `restore-backup` caught a restored node that, restarted before its re-sync
//! completed, served reads from its restored data (`stale-read`).
//!
//! `sweep --scenario faulty-disks --unlimited-faults` found nodes whose disk
//! lost every record starting again as new nodes at epoch 1 and issuing dots
//! they had issued before (`dot-unique`, seeds 58, 252, 258, 327 and 331).
//! A node that has run before now starts with `InitialClusterState::Existing`
//! and learns its epoch from its peers.
//!
//! `sweep --scenario clock-jumps --seeds 0..1000` found deleted values coming
//! back (seeds 327, 456, 554 and 686, `stale-read` on the converged state):
//! after its clock stepped back, a node's time stood still until the clock
//! caught up, so a read it held open for repair sent its long superseded
//! state after the delete's tombstone had been reaped.

use cairn_sim::scenario::builtin;
use cairn_sim::{run, Outcome, RunConfig};

fn passes(seed: u64, scenario: &str) {
    passes_with(seed, scenario, false);
}

fn passes_with(seed: u64, scenario: &str, unlimited_faults: bool) {
    let mut scenario_spec = builtin(scenario).expect("built-in scenario");
    scenario_spec.disk_faults.unlimited = unlimited_faults;
    let report = run(&RunConfig {
        seed,
        scenario: scenario_spec,
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

#[test]
fn a_node_whose_disk_lost_everything_reissues_no_dot() {
    for seed in [58, 252, 258, 327, 331] {
        passes_with(seed, "faulty-disks", true);
    }
}

#[test]
fn a_clock_stepping_back_does_not_hold_a_read_repair_open() {
    for seed in [327, 456, 554, 686] {
        passes(seed, "clock-jumps");
    }
}
