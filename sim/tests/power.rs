//! Testbed power: every replication bug planted in core is found by a sweep
//! of its scenario within a fixed seed budget, and the seed that finds it
//! passes without the bug (so the bug, not the scenario, is what fails).
//!
//! The version bugs are hunted by the version-scenario tests.

use cairn_sim::planted;
use cairn_sim::power::{any_scenario, hunt, scenario_for, Hunt};
use cairn_sim::{run, RunConfig};

/// (bug, seeds the sweep may take, oracles allowed to catch it).
const BUDGETS: &[(&str, u64, &[&str])] = &[
    ("ack-before-durable", 8, &["ack-durable"]),
    (
        "reuse-dots-after-crash",
        8,
        // A reused counter also makes an honest client's context name a
        // version the node "never issued", so its write is refused.
        &["dot-unique", "antichain", "lost-ack", "request-valid"],
    ),
    (
        "read-repair-overwrites",
        8,
        // An overwrite can also destroy a durable copy of a write between
        // the replica's acknowledgement and the client's.
        &["lost-ack", "stale-read", "antichain", "ack-durable"],
    ),
    ("reap-without-quorum", 24, &["stale-read", "lost-ack"]),
    ("drop-hints-for-down-targets", 8, &["hint-durable"]),
    ("anti-entropy-skips-bucket", 8, &["convergence (liveness)"]),
    ("trust-client-contexts", 4, &["context-refused"]),
];

fn check(bug: &str) {
    let &(_, budget, oracles) = BUDGETS.iter().find(|b| b.0 == bug).unwrap();
    let name = scenario_for(bug);
    let scenario = any_scenario(name).unwrap_or_else(|| panic!("no scenario {name}"));
    let planted = planted::find(bug).unwrap();
    match hunt(planted, &scenario, 0, budget, 2) {
        Hunt::Found {
            seed,
            oracle,
            replay,
            ..
        } => {
            assert!(
                oracles.contains(&oracle.as_str()),
                "{bug}: caught by {oracle}, expected one of {oracles:?} ({replay})"
            );
            let clean = run(&RunConfig {
                seed,
                scenario,
                bugs: Vec::new(),
                trace: None,
            });
            assert!(
                clean.outcome.is_pass(),
                "{bug}: seed {seed} of {name} fails without the bug too: {}",
                clean.outcome.message()
            );
        }
        other => panic!("{bug} not found in {budget} seeds of {name}: {other:?}"),
    }
}

#[test]
fn ack_before_durable() {
    check("ack-before-durable");
}

#[test]
fn reuse_dots_after_crash() {
    check("reuse-dots-after-crash");
}

#[test]
fn read_repair_overwrites() {
    check("read-repair-overwrites");
}

#[test]
fn reap_without_quorum() {
    check("reap-without-quorum");
}

#[test]
fn drop_hints_for_down_targets() {
    check("drop-hints-for-down-targets");
}

#[test]
fn anti_entropy_skips_bucket() {
    check("anti-entropy-skips-bucket");
}

#[test]
fn trust_client_contexts() {
    check("trust-client-contexts");
}

#[test]
fn every_planted_bug_is_budgeted_or_a_version_bug() {
    for b in planted::all() {
        let budgeted = BUDGETS.iter().any(|x| x.0 == b.name);
        let version = matches!(
            scenario_for(b.name),
            "rolling-upgrade" | "crash-mid-migration"
        );
        assert!(budgeted || version, "{} has no budget", b.name);
    }
}
