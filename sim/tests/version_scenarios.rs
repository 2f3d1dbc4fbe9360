//! Every version scenario passes over a handful of seeds (short variants),
//! and does what it exists for (each checks its own expectations at the end
//! of a run; the counts here make sure they are not trivially met).

use cairn_sim::upgrade::{short, SCENARIOS};
use cairn_sim::{run, RunConfig};

const SEEDS: u64 = 3;

fn check(name: &str) -> cairn_sim::upgrade::VersionStats {
    let scenario = short(name).expect("version scenario");
    let mut total = cairn_sim::upgrade::VersionStats::default();
    for seed in 0..SEEDS {
        let r = run(&RunConfig {
            seed,
            scenario: scenario.clone(),
            bugs: Vec::new(),
            trace: None,
        });
        assert!(
            r.outcome.is_pass(),
            "{name} seed {seed}: {}: {}\nreplay: {}",
            r.outcome.label(),
            r.outcome.message(),
            r.replay_command()
        );
        let v = r.stats.versions;
        assert_eq!(v.expectations_met, 1, "{name} seed {seed}: {v}");
        total.upgrades += v.upgrades;
        total.finalized += v.finalized;
        total.mid_migration_crashes += v.mid_migration_crashes;
        total.downgrades_refused += v.downgrades_refused;
        total.old_nodes_refused += v.old_nodes_refused;
        total.restores += v.restores;
        total.rollbacks += v.rollbacks;
        total.canaries_watched += v.canaries_watched;
        total.finalize_during_restart += v.finalize_during_restart;
        total.finalize_races += v.finalize_races;
        total.migrations_finished += v.migrations_finished;
    }
    total
}

#[test]
fn rolling_upgrade() {
    let t = check("rolling-upgrade");
    assert!(t.upgrades >= 10 * SEEDS && t.finalized >= 2 * SEEDS, "{t}");
    assert!(t.migrations_finished >= 10 * SEEDS, "{t}");
}

#[test]
fn canary_upgrade() {
    assert!(check("canary-upgrade").canaries_watched >= SEEDS);
}

#[test]
fn rollback_before_finalization() {
    assert!(check("rollback-before-finalization").rollbacks >= SEEDS);
}

#[test]
fn downgrade_after_finalization() {
    assert!(check("downgrade-after-finalization").downgrades_refused >= SEEDS);
}

#[test]
fn crash_mid_migration() {
    assert!(check("crash-mid-migration").mid_migration_crashes >= SEEDS);
}

#[test]
fn old_node_rejoins() {
    assert!(check("old-node-rejoins").old_nodes_refused >= SEEDS);
}

#[test]
fn finalize_during_restart() {
    let t = check("finalize-during-restart");
    assert!(t.finalize_races >= 2 * SEEDS, "{t}");
}

#[test]
fn restore_backup() {
    assert!(check("restore-backup").restores >= SEEDS);
}

#[test]
fn every_version_scenario_is_tested_here() {
    assert_eq!(SCENARIOS.len(), 8);
}
