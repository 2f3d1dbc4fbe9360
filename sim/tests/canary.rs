//! The harness can fail: with a bug planted in core, a sweep finds it and
//! classifies it as a safety violation; without it, the same seeds pass.

use cairn_sim::exit;
use cairn_sim::planted;
use cairn_sim::scenario::builtin;
use cairn_sim::sweep::{sweep, SweepConfig};

const SEEDS: (u64, u64) = (0, 24);

fn config(bug: Option<&str>) -> SweepConfig {
    SweepConfig {
        seeds: SEEDS,
        shard: None,
        scenarios: vec![builtin("quick").expect("quick scenario")],
        bugs: bug
            .map(|b| vec![planted::find(b).expect("known planted bug")])
            .unwrap_or_default(),
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        progress: false,
        progress_every: std::time::Duration::from_secs(5),
    }
}

#[test]
fn ack_before_durable_is_caught_as_a_safety_violation() {
    let report = sweep(&config(Some("ack-before-durable")));
    let failures: Vec<_> = report.failures().collect();
    assert!(
        !failures.is_empty(),
        "the planted bug went unnoticed over seeds {SEEDS:?}"
    );
    for f in &failures {
        assert_eq!(
            f.code,
            exit::SAFETY,
            "seed {}: {} ({})",
            f.seed,
            f.label,
            f.message
        );
        assert!(
            f.replay.contains("--planted-bug ack-before-durable"),
            "{}",
            f.replay
        );
    }
    assert!(
        failures.iter().any(|f| f.message.contains("[ack-durable]")),
        "no failure came from the ack-durable oracle"
    );
    assert_eq!(report.exit_code(), exit::SAFETY);
}

#[test]
fn the_same_seeds_pass_without_the_bug() {
    let report = sweep(&config(None));
    let failures: Vec<String> = report
        .failures()
        .map(|f| format!("seed {}: {}: {}", f.seed, f.label, f.message))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(report.passed() as u64, SEEDS.1 - SEEDS.0);
    assert_eq!(report.exit_code(), exit::PASS);
}
