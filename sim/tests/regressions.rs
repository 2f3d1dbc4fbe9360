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
//! Such a node now learns its epoch from its peers (first when started with
//! `InitialClusterState::Existing`; since the lost-journal fix below, always).
//!
//! `sweep --scenario clock-jumps --seeds 0..1000` found deleted values coming
//! back (seeds 327, 456, 554 and 686, `stale-read` on the converged state):
//! after its clock stepped back, a node's time stood still until the clock
//! caught up, so a read it held open for repair sent its long superseded
//! state after the delete's tombstone had been reaped.

//!
//! A node whose fjall journal was truncated while it was stopped came back
//! with an empty disk, as a new node at epoch 1, and reissued dots its
//! peers held (300 of 300 writes through it lost on a real cluster). The
//! `lost-journal` scenario empties a stopped node's disk, metadata included,
//! with no operator flag; on the old code seeds 30, 31, 32, 36, 38 and 39
//! failed `dot-unique`. A node with an empty disk now asks every peer which
//! epoch of its own they have seen before it writes anything. Seeds 24, 145
//! and 165 caught the ways that fix first fell short: a clean shutdown while
//! asking wrote a clean metadata record at epoch 1, and an epoch taken again
//! whose earlier dots still lived elsewhere.

//!
//! Restoring a backup brought back values whose deletes were made and
//! reaped after the backup (100 of 100 on a real cluster). Once
//! `restore-backup` waited long enough for tombstones to be reaped between
//! the backup and the restore, seeds 30 and 53 failed `stale-read` on the
//! old code. A restored node now holds its restored data aside, pulls every
//! key from the replicas, and drops what none of them holds.

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

#[test]
fn a_node_whose_journal_was_lost_reissues_no_dot() {
    for seed in [24, 30, 31, 32, 36, 38, 39, 145, 165] {
        passes(seed, "lost-journal");
    }
}

#[test]
fn a_restored_backup_brings_back_no_reaped_delete() {
    for seed in [30, 53] {
        passes(seed, "restore-backup");
    }
}
