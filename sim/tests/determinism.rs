//! The same seed gives the same run; different seeds give different runs.

use cairn_sim::scenario::builtin;
use cairn_sim::{run, RunConfig};

fn config(seed: u64, scenario: &str) -> RunConfig {
    RunConfig {
        seed,
        scenario: builtin(scenario).expect("built-in scenario"),
        bugs: Vec::new(),
        trace: None,
    }
}

#[test]
fn same_seed_same_trace_hash() {
    let a = run(&config(7, "quick"));
    let b = run(&config(7, "quick"));
    assert_ne!(a.trace_hash, 0);
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "seed 7 ran twice with different traces"
    );
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(a.stats.events, b.stats.events);
    assert_eq!(a.stats.ops, b.stats.ops);
}

#[test]
fn different_seeds_differ() {
    let hashes: Vec<u64> = (100..104)
        .map(|s| run(&config(s, "quick")).trace_hash)
        .collect();
    for i in 0..hashes.len() {
        for j in i + 1..hashes.len() {
            assert_ne!(
                hashes[i],
                hashes[j],
                "seeds {} and {} share a trace hash",
                100 + i,
                100 + j
            );
        }
    }
}

#[test]
fn writing_the_trace_does_not_change_the_hash() {
    let path = std::env::temp_dir().join(format!(
        "cairn-sim-determinism-{}.jsonl",
        std::process::id()
    ));
    let mut with_file = config(11, "quick");
    with_file.trace = Some(path.clone());
    let a = run(&with_file);
    let b = run(&config(11, "quick"));
    let text = std::fs::read_to_string(&path).expect("trace written");
    let _ = std::fs::remove_file(&path);
    assert_eq!(a.trace_hash, b.trace_hash);
    // The header line, then one line per hashed record.
    assert_eq!(text.lines().count() as u64, a.stats.trace_records + 1);
    let header: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap()).expect("the header is JSON");
    assert_eq!(header["ev"], "header");
    for line in text.lines().skip(1).take(50) {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(v.get("t").is_some() && v.get("ev").is_some(), "{line}");
    }
    assert!(text.contains("\"ev\":\"deliver\""));
    assert!(text.contains("\"ev\":\"fault\""));
    assert!(text.contains("\"ev\":\"check\""));
}

#[test]
fn default_scenario_crashes_and_partitions_every_seed() {
    for seed in 0..3 {
        let r = run(&config(seed, "default"));
        let f = r.stats.faults;
        assert!(f.crashes >= 1, "seed {seed}: no crash");
        assert!(f.partitions >= 1, "seed {seed}: no partition");
        assert!(
            r.stats.ops.sent >= 1000,
            "seed {seed}: only {} client ops",
            r.stats.ops.sent
        );
    }
}
