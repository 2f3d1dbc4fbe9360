//! Shrinking a planted-bug failure leaves at most a tenth of its fault and
//! client events, and the scenario file it writes reproduces the failure.

use cairn_sim::scenario::builtin;
use cairn_sim::scenario_file;
use cairn_sim::shrink::{shrink, to_file_text, ShrinkConfig};
use cairn_sim::{run, Outcome, RunConfig};

#[test]
fn a_planted_bug_shrinks_to_a_tenth_and_the_file_reproduces_it() {
    // The canary scenario switches on reuse-dots-after-crash.
    let base = builtin("reuse-dots-after-crash").expect("canary scenario");
    let seed = base.seeds[0];
    let shrunk = shrink(&ShrinkConfig {
        seed,
        scenario: base,
        bugs: Vec::new(),
        max_runs: 2000,
        verbose: false,
    })
    .expect("the seed fails and shrinks");
    let before = shrunk.before_total();
    let after = shrunk.after_total();
    assert!(
        before >= 20,
        "the original run is too small to judge: {before}"
    );
    assert!(
        after * 10 <= before,
        "{after} of {before} events left ({:?} -> {:?})",
        shrunk.before,
        shrunk.after
    );
    let oracle = match &shrunk.original {
        Outcome::Safety(v) => v.oracle,
        o => panic!("not a safety violation: {o:?}"),
    };
    assert!(matches!(&shrunk.outcome, Outcome::Safety(v) if v.oracle == oracle));

    // Write the file, load it back and replay it: the same oracle fails.
    let dir = std::env::temp_dir().join(format!("cairn-shrink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shrunk.toml");
    std::fs::write(&path, to_file_text(&shrunk.scenario, "shrunk").unwrap()).unwrap();
    let loaded = scenario_file::load(&path).expect("the written file loads");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(loaded, shrunk.scenario);
    assert!(loaded.is_scripted());
    assert_eq!(loaded.faults.mix.crash.max, 0, "random faults are off");
    let report = run(&RunConfig {
        seed: loaded.seeds[0],
        scenario: loaded.clone(),
        bugs: Vec::new(),
        trace: None,
    });
    assert!(
        loaded.expect.matches(&report.outcome),
        "the written scenario does not reproduce: {:?}",
        report.outcome
    );
    assert!(matches!(&report.outcome, Outcome::Safety(v) if v.oracle == oracle));
}
