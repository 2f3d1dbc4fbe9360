//! Snapshot expectations: every built-in scenario, under a fixed seed and a
//! short safety phase, gives a deterministic summary (options, client
//! operations, faults, oracle checks, outcome, final-state digest, trace
//! hash) that is compared with `sim/tests/snapshots/*.snap`, so any change
//! of behaviour shows up in review.
//!
//! After an intended change: `INSTA_UPDATE=always cargo test -p cairn-sim
//! --test snapshots` (or `cargo insta review`), then commit the snapshots.

use std::fmt::Write;

use cairn_sim::scenario::{builtin, builtin_names, Scenario, Span};
use cairn_sim::world::run_recorded;
use cairn_sim::RunConfig;

const SEED: u64 = 1;
/// The safety phase of a snapshot run (version scenarios get longer: their
/// orchestration needs the time).
const SAFETY_MS: u64 = 6_000;

fn shortened(mut s: Scenario) -> Scenario {
    match s.upgrade.as_mut() {
        Some(u) => {
            s.safety_ms = (s.safety_ms / 2).max(20_000);
            u.pause_ms = Span::new(200, 1200);
        }
        None => s.safety_ms = s.safety_ms.min(SAFETY_MS),
    }
    s.schedule.retain(|e| e.at_ms.micros() < s.safety_ms * 1000);
    s
}

fn summary(s: &Scenario) -> String {
    let cfg = RunConfig {
        seed: SEED,
        scenario: s.clone(),
        bugs: Vec::new(),
        trace: None,
    };
    let (report, rec) = run_recorded(&cfg);
    let mut out = String::new();
    writeln!(out, "{}", report.options).unwrap();
    for line in report.to_string().lines() {
        // Wall-clock figures are not deterministic.
        if !line.trim_start().starts_with("wall:") {
            writeln!(out, "{line}").unwrap();
        }
    }
    writeln!(
        out,
        "recorded: {} fault(s), {} client operation(s)",
        rec.faults.len(),
        rec.ops.len()
    )
    .unwrap();
    writeln!(
        out,
        "events: {}, trace records: {}",
        report.stats.events, report.stats.trace_records
    )
    .unwrap();
    writeln!(out, "final state digest: 0x{:016x}", rec.final_digest).unwrap();
    out
}

#[test]
fn every_builtin_scenario_matches_its_snapshot() {
    for name in builtin_names() {
        let s = shortened(builtin(name).expect("listed scenarios exist"));
        let text = summary(&s);
        insta::with_settings!({
            snapshot_suffix => name,
            prepend_module_to_snapshot => false,
            description => format!("{name} (seed {SEED}, safety phase {} ms)", s.safety_ms),
            omit_expression => true,
        }, {
            insta::assert_snapshot!("scenario", text);
        });
    }
}

#[test]
fn summaries_are_deterministic() {
    for name in ["quick", "hinted-handoff"] {
        let s = shortened(builtin(name).unwrap());
        assert_eq!(summary(&s), summary(&s), "{name}");
    }
}
