//! Testbed power: how quickly sweeps find each planted bug.
//!
//! Every bug of core's `PlantedBugs::NAMES` is hunted in the scenario best
//! suited to it: seeds are run in order until one fails. The table reports
//! how many seeds that took, the wall time until then and which oracle
//! caught it; then the same for the default sweep (`--scenario all` from
//! seed 0, seed by seed over every scenario), which must find every bug
//! within [`SWEEP_BUDGET`] seeds. Bugs whose scenario does not exist in this build are listed as
//! needing it, never given a result.
//!
//! This module also holds the scenarios written for that purpose (under
//! `scenarios/power/`), which every command can name.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::planted::{self, PlantedBug};
use crate::report::Outcome;
use crate::scenario::Scenario;
use crate::world::{run, RunConfig};

struct File {
    name: &'static str,
    text: &'static str,
}

macro_rules! power_file {
    ($name:literal) => {
        File {
            name: $name,
            text: include_str!(concat!("../../scenarios/power/", $name, ".toml")),
        }
    };
}

/// The scenarios of `scenarios/power/`.
const FILES: &[File] = &[
    power_file!("disk-faults"),
    power_file!("swarm"),
    power_file!("tombstones"),
    power_file!("hints"),
    power_file!("anti-entropy-repair"),
];

/// Names of the power scenarios.
pub fn scenario_names() -> Vec<&'static str> {
    FILES.iter().map(|f| f.name).collect()
}

/// A power scenario by name.
pub fn scenario(name: &str) -> Option<Scenario> {
    let f = FILES.iter().find(|f| f.name == name)?;
    let origin = format!("scenarios/power/{}.toml", f.name);
    match crate::scenario_file::parse(f.text, &origin) {
        Ok(s) => Some(s),
        Err(e) => panic!("embedded scenario {origin} is invalid: {e}"),
    }
}

/// A scenario by name: a built-in, or a power scenario.
pub fn any_scenario(name: &str) -> Option<Scenario> {
    crate::scenario::builtin(name).or_else(|| scenario(name))
}

/// The scenario in which each planted bug is hunted, and why.
pub fn scenario_for(bug: &str) -> &'static str {
    match bug {
        // Crashes in every seed lose what was acknowledged early / reissue
        // dots; every read-modify-write exercises read repair.
        "ack-before-durable" | "reuse-dots-after-crash" | "read-repair-overwrites" => "quick",
        // Every seed's clients send forged and replayed contexts.
        "trust-client-contexts" => "quick",
        // Replicas must miss deletes while tombstones are reaped.
        "reap-without-quorum" => "tombstones",
        // Targets must stay down long enough to be judged down.
        "drop-hints-for-down-targets" => "hints",
        // Only anti-entropy may repair a replica, over many keys.
        "anti-entropy-skips-bucket" => "anti-entropy-repair",
        "non-atomic-migration" => "crash-mid-migration",
        // The crash must fall between learning the new cluster version and
        // persisting it: nodes crash while the version moves.
        "cluster-version-before-persisting" => "crash-mid-migration",
        _ => "rolling-upgrade",
    }
}

/// One row of the power table.
#[derive(Clone, Debug)]
pub struct Row {
    pub bug: &'static str,
    pub scenario: &'static str,
    pub result: Hunt,
    /// The default sweep (`--scenario all` from seed 0), and the scenario
    /// that failed first in it.
    pub sweep: (Hunt, String),
}

/// A planted bug the default sweep needs more seeds than this to find is a
/// gap in the sweep.
pub const SWEEP_BUDGET: u64 = 200;

#[derive(Clone, Debug)]
pub enum Hunt {
    /// The scenario does not exist in this build.
    NeedsScenario,
    Found {
        /// Seeds run up to and including the first failing one.
        seeds: u64,
        seed: u64,
        wall: Duration,
        oracle: String,
        replay: String,
    },
    NotFound {
        seeds: u64,
        wall: Duration,
    },
}

/// What caught a failure: the oracle's name, or the kind of failure.
pub fn caught_by(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Pass => "-".into(),
        Outcome::Safety(v) => v.oracle.to_string(),
        Outcome::Liveness(_) => "convergence (liveness)".into(),
        Outcome::Panic(_) => "panic".into(),
    }
}

/// Runs seeds `start..start + budget` of `scenario` with `bug` on, `jobs`
/// at a time, until the first failure (the lowest failing seed counts).
pub fn hunt(bug: PlantedBug, scenario: &Scenario, start: u64, budget: u64, jobs: usize) -> Hunt {
    hunt_in(bug, std::slice::from_ref(scenario), start, budget, jobs).0
}

/// Hunts `bug` as the sweep `--scenario all --seeds start..` would meet
/// it: seed by seed, every sweepable scenario at each seed. `seeds` in the
/// result is the K of the shortest `--seeds start..start+K` that finds it;
/// the second value names the scenario that failed.
pub fn hunt_sweep(bug: PlantedBug, start: u64, budget: u64, jobs: usize) -> (Hunt, String) {
    let scenarios = crate::scenario_file::sweepable();
    let (hunt, at) = hunt_in(bug, &scenarios, start, budget, jobs);
    (
        hunt,
        at.map_or_else(String::new, |i| scenarios[i].name.clone()),
    )
}

/// Runs `(seed, scenario)` pairs seed-major (each seed of `start..start +
/// budget` over every scenario), `jobs` at a time, until the first failure;
/// the earliest failing pair in that order counts. Returns the index of its
/// scenario.
fn hunt_in(
    bug: PlantedBug,
    scenarios: &[Scenario],
    start: u64,
    budget: u64,
    jobs: usize,
) -> (Hunt, Option<usize>) {
    let started = Instant::now();
    let per_seed = scenarios.len() as u64;
    let jobs = jobs.max(1) as u64;
    let total = budget * per_seed;
    let mut next = 0;
    while next < total {
        let chunk: Vec<u64> = (next..total.min(next + jobs)).collect();
        next += chunk.len() as u64;
        let first = AtomicU64::new(u64::MAX);
        let mut found: Vec<(u64, Outcome, String)> = Vec::new();
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&pos| {
                    let first = &first;
                    s.spawn(move || {
                        let r = run(&RunConfig {
                            seed: start + pos / per_seed,
                            scenario: scenarios[(pos % per_seed) as usize].clone(),
                            bugs: vec![bug],
                            trace: None,
                        });
                        if !r.outcome.is_pass() {
                            first.fetch_min(pos, Ordering::Relaxed);
                        }
                        (pos, r.outcome.clone(), r.replay_command())
                    })
                })
                .collect();
            for h in handles {
                if let Ok(x) = h.join() {
                    found.push(x);
                }
            }
        });
        let lowest = first.load(Ordering::Relaxed);
        if let Some((pos, outcome, replay)) = found.into_iter().find(|(p, _, _)| *p == lowest) {
            let hunt = Hunt::Found {
                seeds: pos / per_seed + 1,
                seed: start + pos / per_seed,
                wall: started.elapsed(),
                oracle: caught_by(&outcome),
                replay,
            };
            return (hunt, Some((pos % per_seed) as usize));
        }
    }
    let hunt = Hunt::NotFound {
        seeds: budget,
        wall: started.elapsed(),
    };
    (hunt, None)
}

/// Hunts every planted bug in its scenario.
pub fn table(start: u64, budget: u64, jobs: usize) -> Vec<Row> {
    table_of(&[], start, budget, jobs)
}

/// Hunts the given bugs (all when empty) in their scenarios.
pub fn table_of(only: &[PlantedBug], start: u64, budget: u64, jobs: usize) -> Vec<Row> {
    planted::all()
        .into_iter()
        .filter(|b| only.is_empty() || only.contains(b))
        .map(|bug| {
            let name = scenario_for(bug.name);
            let result = match any_scenario(name) {
                None => Hunt::NeedsScenario,
                Some(s) => hunt(bug, &s, start, budget, jobs),
            };
            Row {
                bug: bug.name,
                scenario: name,
                result,
                sweep: hunt_sweep(bug, 0, SWEEP_BUDGET, jobs),
            }
        })
        .collect()
}

/// A hunt's seeds, wall time and catching oracle, as table cells.
fn cells(h: &Hunt, scenario: &str) -> (String, String, String) {
    match h {
        Hunt::NeedsScenario => (
            "-".to_string(),
            "-".to_string(),
            format!("needs scenario {scenario}"),
        ),
        Hunt::Found {
            seeds,
            seed,
            wall,
            oracle,
            ..
        } => (
            format!("{seeds} (seed {seed})"),
            format!("{:.2} s", wall.as_secs_f64()),
            oracle.clone(),
        ),
        Hunt::NotFound { seeds, wall } => (
            format!(">{seeds}"),
            format!("{:.2} s", wall.as_secs_f64()),
            "NOT FOUND".to_string(),
        ),
    }
}

/// The table as text: the hunt in each bug's own scenario, then in the
/// default sweep (`--scenario all` from seed 0, at most
/// [`SWEEP_BUDGET`] seeds).
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<34} {:<20} {:>14} {:>9}  {:<24} | {:>14} {:>9}  {}\n",
        "planted bug",
        "scenario",
        "seeds to find",
        "wall",
        "caught by",
        "default sweep",
        "wall",
        "caught by (in scenario)"
    );
    for r in rows {
        let (seeds, wall, by) = cells(&r.result, r.scenario);
        let (sweep_seeds, sweep_wall, sweep_by) = cells(&r.sweep.0, "");
        let sweep_by = match &r.sweep.0 {
            Hunt::Found { .. } => format!("{sweep_by} (in {})", r.sweep.1),
            _ => sweep_by,
        };
        out.push_str(&format!(
            "{:<34} {:<20} {:>14} {:>9}  {:<24} | {:>14} {:>9}  {}\n",
            r.bug, r.scenario, seeds, wall, by, sweep_seeds, sweep_wall, sweep_by
        ));
    }
    out
}

/// Whether some bug went unfound (in its scenario or in the default sweep).
pub fn any_missed(rows: &[Row]) -> bool {
    rows.iter().any(|r| {
        matches!(r.result, Hunt::NotFound { .. }) || matches!(r.sweep.0, Hunt::NotFound { .. })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_scenarios_parse_and_validate() {
        for name in scenario_names() {
            let s = scenario(name).unwrap();
            assert_eq!(s.name, name);
            s.validate().unwrap();
        }
    }

    #[test]
    fn every_planted_bug_has_a_scenario() {
        for b in planted::all() {
            assert!(!scenario_for(b.name).is_empty());
        }
    }
}
