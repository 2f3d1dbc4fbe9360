//! The determinism self-check reports a mismatch: with nondeterminism
//! planted (a counter that survives from one run to the next, the bug class
//! of statics shared between runs), rechecked seeds give other trace hashes,
//! the sweep's recheck fails with the determinism exit code and names the
//! first diverging trace line. Without it, the recheck passes.
//!
//! Planting is process-wide, so this file holds a single test.

use cairn_sim::exit;
use cairn_sim::scenario::builtin;
use cairn_sim::sweep::{plant_nondeterminism, recheck, sweep, SweepConfig};

#[test]
fn a_planted_nondeterminism_is_reported_and_a_clean_sweep_is_not() {
    let mut s = builtin("quick").unwrap();
    s.safety_ms = 4000;
    let cfg = SweepConfig {
        seeds: (0, 4),
        shard: None,
        scenarios: vec![s],
        bugs: Vec::new(),
        jobs: 2,
        progress: false,
        progress_every: std::time::Duration::from_secs(5),
    };

    let report = sweep(&cfg);
    let clean = recheck(&cfg, &report, 100.0);
    assert_eq!(clean.rechecked, 4);
    assert!(clean.mismatches.is_empty(), "{:?}", clean.mismatches);
    assert_eq!(clean.exit_code(), exit::PASS);

    plant_nondeterminism(true);
    let report = sweep(&cfg);
    let checked = recheck(&cfg, &report, 100.0);
    plant_nondeterminism(false);
    assert_eq!(checked.exit_code(), exit::DETERMINISM);
    assert!(!checked.mismatches.is_empty());
    for m in &checked.mismatches {
        assert_ne!(m.first_hash, m.second_hash);
        let (line, a, b) = m
            .diverging
            .as_ref()
            .unwrap_or_else(|| panic!("no diverging line named: {m}"));
        assert!(*line >= 1 && a != b, "{m}");
        assert!(m.to_string().contains("first diverging trace line"), "{m}");
    }
}
