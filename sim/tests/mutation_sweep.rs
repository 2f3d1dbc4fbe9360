//! The simulator sweep that mutation testing runs against every mutant of
//! cairn-core: a mutant is killed when any seed fails (a safety violation, a
//! liveness failure or a panic in core).
//!
//! `full_sweep` is ignored in ordinary runs; `.cargo/mutants.toml` runs it
//! alone (`cargo test -p cairn-sim --test mutation_sweep -- --ignored`).
//! It stops at the first failing seed, so a killed mutant costs only the
//! seeds up to its first failure; an unmutated tree runs them all (about
//! 60 CPU-seconds under the `mutants` profile, see README.md).
//!
//! The sweep is every scenario `--scenario all` sweeps, round-robin over
//! [`SEEDS_OF_EACH`] seeds (a mutant that breaks anything common dies in
//! the first round), then [`EXTRA_SEEDS`] more seeds of the scenarios in
//! [`EXTRA`], which reach the code the others barely touch.
//!
//! `smoke_sweep` runs the same machinery on one seed of every scenario in
//! every `cargo test`, and checks it fails when a planted bug is on.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Instant;

use cairn_sim::planted::{self, PlantedBug};
use cairn_sim::scenario::Scenario;
use cairn_sim::scenario_file::sweepable;
use cairn_sim::{run, RunConfig};

/// Seeds `0..SEEDS_OF_EACH` of every sweepable scenario.
const SEEDS_OF_EACH: u64 = 20;

/// Seeds `SEEDS_OF_EACH..SEEDS_OF_EACH + EXTRA_SEEDS` of these scenarios:
/// the widest fault mix (`default`), lost and damaged disks (recovery,
/// epochs, storage decoding), crashes back to back, tombstones reaped under
/// partitions and clock steps (anti-entropy, reaping), and the version
/// scenarios, the only ones that reach migrations, schemas, backups,
/// finalization and protocol negotiation.
const EXTRA: &[&str] = &[
    "default",
    "faulty-disks",
    "crash-storm",
    "deletes-across-partitions",
    "clock-jumps",
    "rolling-upgrade",
    "crash-mid-migration",
    "finalize-during-restart",
    "restore-backup",
];
const EXTRA_SEEDS: u64 = 50;

/// The (scenario, seed) runs of a sweep, in the order they are started.
struct Plan {
    scenarios: Vec<Scenario>,
    runs: Vec<(usize, u64)>,
}

/// Seeds `0..seeds` of every sweepable scenario, seed by seed across the
/// scenarios, then `extra_seeds` more of each scenario named in `extra`.
fn plan(seeds: u64, extra: &[&str], extra_seeds: u64) -> Plan {
    let scenarios = sweepable();
    assert!(
        scenarios.len() >= 12,
        "{} sweepable scenarios",
        scenarios.len()
    );
    let mut runs: Vec<(usize, u64)> = (0..seeds)
        .flat_map(|seed| (0..scenarios.len()).map(move |s| (s, seed)))
        .collect();
    let extra: Vec<usize> = extra
        .iter()
        .map(|name| {
            scenarios
                .iter()
                .position(|s| s.name == *name)
                .unwrap_or_else(|| panic!("{name} is not a sweepable scenario"))
        })
        .collect();
    runs.extend(
        (seeds..seeds + extra_seeds).flat_map(|seed| extra.iter().map(move |&s| (s, seed))),
    );
    Plan { scenarios, runs }
}

/// The first failing run of a sweep.
#[derive(Debug)]
struct Failure {
    scenario: String,
    seed: u64,
    label: &'static str,
    message: String,
    replay: String,
}

struct Swept {
    runs: usize,
    failure: Option<Failure>,
    wall_secs: f64,
    cpu_secs: f64,
}

/// Runs the plan on every available core and stops at the first failure.
fn sweep(plan: &Plan, bugs: &[PlantedBug]) -> Swept {
    static QUIET_PANICS: Once = Once::new();
    QUIET_PANICS.call_once(|| cairn_sim::install_panic_hook(true));
    let started = Instant::now();
    let cpu_before = process_cpu_secs();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failure: Mutex<Option<Failure>> = Mutex::new(None);
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(plan.runs.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Some(&(s, seed)) = plan.runs.get(next.fetch_add(1, Ordering::Relaxed))
                    else {
                        break;
                    };
                    let report = run(&RunConfig {
                        seed,
                        scenario: plan.scenarios[s].clone(),
                        bugs: bugs.to_vec(),
                        trace: None,
                    });
                    done.fetch_add(1, Ordering::Relaxed);
                    if !report.outcome.is_pass() {
                        stop.store(true, Ordering::Relaxed);
                        let mut first = failure.lock().unwrap_or_else(|e| e.into_inner());
                        first.get_or_insert_with(|| Failure {
                            scenario: plan.scenarios[s].name.clone(),
                            seed,
                            label: report.outcome.label(),
                            message: report.outcome.message(),
                            replay: report.replay_command(),
                        });
                    }
                }
            });
        }
    });
    Swept {
        runs: done.into_inner(),
        failure: failure.into_inner().unwrap_or_else(|e| e.into_inner()),
        wall_secs: started.elapsed().as_secs_f64(),
        cpu_secs: process_cpu_secs() - cpu_before,
    }
}

/// CPU time of this process so far (every thread), in seconds.
fn process_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer;
    // CLOCK_PROCESS_CPUTIME_ID is POSIX.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Fails the test with the first failing seed and its replay command; the
/// `mutation-sweep:` lines are what `.ci/mutants` reads from the logs.
fn assert_passed(what: &str, plan: &Plan, swept: &Swept) {
    if let Some(f) = &swept.failure {
        println!(
            "mutation-sweep: FAIL scenario={} seed={} outcome={:?}",
            f.scenario, f.seed, f.label
        );
        panic!(
            "{what}: {} in scenario {} seed {} after {} of {} runs: {}\n  replay: {}",
            f.label,
            f.scenario,
            f.seed,
            swept.runs,
            plan.runs.len(),
            f.message,
            f.replay
        );
    }
    assert_eq!(swept.runs, plan.runs.len(), "{what}: not every run ran");
    println!(
        "mutation-sweep: PASS runs={} scenarios={} wall={:.1}s cpu={:.1}s",
        swept.runs,
        plan.scenarios.len(),
        swept.wall_secs,
        swept.cpu_secs
    );
}

/// What mutation testing runs for every mutant of cairn-core.
#[test]
#[ignore = "the mutation-testing sweep (about 60 CPU-seconds optimised): `-- --ignored`"]
fn full_sweep() {
    let plan = plan(SEEDS_OF_EACH, EXTRA, EXTRA_SEEDS);
    let swept = sweep(&plan, &[]);
    assert_passed("mutation sweep", &plan, &swept);
}

/// One seed of every scenario passes, and the same sweep with a planted bug
/// fails: the sweep can kill a mutant.
#[test]
fn smoke_sweep() {
    let plan = plan(1, &["quick"], 1);
    assert_eq!(plan.runs.len(), plan.scenarios.len() + 1);
    let swept = sweep(&plan, &[]);
    assert_passed("smoke sweep", &plan, &swept);

    let planted = planted::find("ack-before-durable").expect("planted bug");
    let plan = plan_of("quick", 0..40);
    let swept = sweep(&plan, &[planted]);
    let f = swept
        .failure
        .expect("40 seeds of quick with ack-before-durable planted should fail");
    assert_eq!(f.label, "safety violation", "{f:?}");
    assert!(swept.runs <= plan.runs.len());
}

/// Seeds `seeds` of one sweepable scenario.
fn plan_of(name: &str, seeds: std::ops::Range<u64>) -> Plan {
    let scenarios: Vec<Scenario> = sweepable().into_iter().filter(|s| s.name == name).collect();
    assert_eq!(scenarios.len(), 1, "{name}");
    Plan {
        scenarios,
        runs: seeds.map(|seed| (0, seed)).collect(),
    }
}

#[test]
fn the_plan_covers_every_scenario_first_then_the_extra_seeds() {
    let p = plan(SEEDS_OF_EACH, EXTRA, EXTRA_SEEDS);
    let n = p.scenarios.len();
    let first_round: Vec<usize> = p.runs[..n].iter().map(|&(s, _)| s).collect();
    assert_eq!(first_round, (0..n).collect::<Vec<_>>());
    assert!(p.runs[..n].iter().all(|&(_, seed)| seed == 0));
    assert_eq!(
        p.runs.len() as u64,
        n as u64 * SEEDS_OF_EACH + EXTRA.len() as u64 * EXTRA_SEEDS
    );
    let mut seen = std::collections::BTreeSet::new();
    assert!(p.runs.iter().all(|r| seen.insert(*r)), "a run is repeated");
}
