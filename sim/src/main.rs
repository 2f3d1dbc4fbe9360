//! `cairn-sim`: run, sweep and list deterministic simulations of Cairn.
//!
//! Exit codes:
//! - 0: every oracle passed
//! - 1: safety violation (an oracle failed)
//! - 2: liveness failure (no convergence within the bound)
//! - 3: panic in the code under test
//! - 4: determinism mismatch (a rechecked seed gave another trace hash)
//! - 64: usage error
//!
//! A sweep exits with the most severe code among its seeds, ranked
//! 1 > 3 > 2 > 4.

use std::alloc::{GlobalAlloc, Layout};

/// mimalloc, entered through `mi_malloc` whenever the layout allows (as
/// std's own system allocator does with `malloc`): `MiMalloc` always takes
/// the aligned entry point, which costs about twice as many instructions and
/// the simulator allocates several times per event.
struct Allocator;

/// Whether mimalloc's plain entry points meet `align` for a block of `size`
/// bytes: every block is aligned to 16 bytes, or to its size when smaller.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= 16 && align <= size
}

unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: mimalloc's malloc; its blocks meet this alignment.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: as in `MiMalloc`.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: as in `alloc`.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: as in `MiMalloc`.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: every block came from mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            // SAFETY: as in `alloc`; `ptr` came from mimalloc.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: as in `MiMalloc`.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static GLOBAL: Allocator = Allocator;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cairn_sim::planted::{self, PlantedBug};
use cairn_sim::scenario::{self, Scenario};
use cairn_sim::sweep::{
    default_jobs, parse_seed_count_or_range, parse_seeds, parse_shard, sweep, SweepConfig,
};
use cairn_sim::{exit, run, RunConfig};

const EXIT_CODES: &str = "\
Exit codes:
  0   pass: every oracle held
  1   safety violation: an oracle failed (lost or stale write, bad ack, reused dot, ...)
  2   liveness failure: the healed cluster did not converge within the bound
  3   panic in the code under test
  4   determinism mismatch: a rechecked seed gave another trace hash
  64  usage error
A sweep exits with the most severe code among its seeds (1 > 3 > 2 > 4).";

#[derive(Parser, Debug)]
#[command(
    name = "cairn-sim",
    version,
    about = "Deterministic simulator for Cairn: one seed determines a whole run",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one seed and print its options, a summary and the trace hash.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// The seed (decimal or 0x-prefixed hex); default: the first of the
        /// scenario's `seeds`.
        #[arg(long)]
        seed: Option<String>,
        /// A built-in scenario (see `cairn-sim scenarios`) or a scenario file.
        #[arg(long, default_value = "default", value_name = "NAME|PATH")]
        scenario: String,
        /// Write the trace as JSON lines to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Switch on a planted bug in every node (repeatable).
        #[arg(long = "planted-bug", value_name = "NAME")]
        planted_bug: Vec<String>,
        /// Lift the fault atlas: destructive disk faults on any node; only
        /// the safety oracles that do not assume durability apply.
        #[arg(long)]
        unlimited_faults: bool,
    },
    /// Run many seeds in parallel; print every failure with its replay command.
    #[command(after_help = EXIT_CODES)]
    Sweep {
        /// Seeds: A..B (B excluded), A..=B, or one seed.
        #[arg(long)]
        seeds: String,
        /// Worker threads (default: available parallelism).
        #[arg(long)]
        jobs: Option<usize>,
        /// Shard K of N (1-based): keeps the seeds with seed % N == K-1.
        #[arg(long, value_name = "K/N")]
        shard: Option<String>,
        /// A built-in scenario, a scenario file, or `all`.
        #[arg(long, default_value = "default", value_name = "NAME|PATH|all")]
        scenario: String,
        /// Switch on a planted bug in every node (repeatable).
        #[arg(long = "planted-bug", value_name = "NAME")]
        planted_bug: Vec<String>,
        /// Lift the fault atlas (see `run --help`).
        #[arg(long)]
        unlimited_faults: bool,
        /// Without a terminal on stderr (a CI log), print a progress line at
        /// most this often, as runs finish (on a terminal: a progress bar).
        #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
        progress_every: f64,
        /// Re-run this percentage of the seeds and compare trace hashes; a
        /// mismatch fails the sweep with exit code 4.
        #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
        recheck: f64,
        /// Plant nondeterminism (state shared between runs), to see the
        /// determinism self-check fail.
        #[arg(long, hide = true)]
        plant_nondeterminism: bool,
    },
    /// Hunt every planted bug in its scenario and print how many seeds,
    /// how much wall time and which oracle it took to find it; then the
    /// same in the default sweep (`--scenario all` from seed 0, at most 200
    /// seeds).
    Power {
        /// Seeds tried per bug, at most.
        #[arg(long, default_value_t = 100)]
        budget: u64,
        /// The first seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Seeds run at once (default: available parallelism).
        #[arg(long)]
        jobs: Option<usize>,
        /// Only these bugs (repeatable; default: all).
        #[arg(long = "planted-bug", value_name = "NAME")]
        planted_bug: Vec<String>,
    },
    /// Measure simulator speed on one thread: simulated seconds per wall
    /// second, events per second, seeds per second.
    Bench {
        #[arg(long, default_value = "default", value_name = "NAME|PATH")]
        scenario: String,
        /// Seeds to run: A..B (B excluded), A..=B, or a count N (the N seeds
        /// from --start).
        #[arg(long, default_value = "20", value_name = "A..B|N")]
        seeds: String,
        /// The first seed of a count (default 0).
        #[arg(long)]
        start: Option<u64>,
    },
    /// List the built-in scenarios and planted bugs.
    Scenarios,
    /// Reduce a failing seed to a minimal explicit scenario that still fails
    /// the same oracle (delta debugging over its faults and client
    /// operations), and write it as a scenario file.
    #[command(after_help = EXIT_CODES)]
    Shrink {
        /// The failing seed.
        #[arg(long)]
        seed: String,
        /// A built-in scenario or a scenario file.
        #[arg(long, default_value = "default", value_name = "NAME|PATH")]
        scenario: String,
        /// Switch on a planted bug in every node (repeatable).
        #[arg(long = "planted-bug", value_name = "NAME")]
        planted_bug: Vec<String>,
        /// Where to write the minimal scenario (default:
        /// shrunk-<scenario>-<seed>.toml).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Stop reducing after this many runs.
        #[arg(long, default_value_t = 5000)]
        max_runs: usize,
    },
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    eprintln!("(run `cairn-sim --help` for usage)");
    ExitCode::from(exit::USAGE as u8)
}

fn scenarios(name: &str) -> Result<Vec<Scenario>, String> {
    cairn_sim::scenario_file::resolve(name)
        .or_else(|e| cairn_sim::power::scenario(name).map(|s| vec![s]).ok_or(e))
}

fn lift_atlas(list: &mut [Scenario], unlimited: bool) {
    if unlimited {
        for s in list {
            s.disk_faults.unlimited = true;
        }
    }
}

fn bugs(names: &[String]) -> Result<Vec<PlantedBug>, String> {
    names
        .iter()
        .map(|n| {
            planted::find(n).ok_or_else(|| {
                format!(
                    "unknown planted bug {n:?}; known: {}",
                    planted::names().join(", ")
                )
            })
        })
        .collect()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(exit::USAGE as u8),
            };
        }
    };
    match cli.command {
        Command::Scenarios => {
            use cairn_sim::scenario_file::{kind_of, Kind};
            for (kind, title) in [
                (
                    Kind::Scenario,
                    "scenarios (--scenario NAME; `all` sweeps these):",
                ),
                (
                    Kind::Regression,
                    "regressions (seeds that once found bugs):",
                ),
                (
                    Kind::Canary,
                    "canaries (a planted bug the oracles must catch):",
                ),
            ] {
                println!("{title}");
                for name in scenario::builtin_names() {
                    if kind_of(name) != kind {
                        continue;
                    }
                    if let Some(s) = scenario::builtin(name) {
                        println!("{:<30} {}", s.name, s.description);
                    }
                }
                println!();
            }
            println!("planted bugs (--planted-bug NAME):");
            for b in planted::all() {
                println!("{:<28} {}", b.name, b.description());
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            seed,
            scenario,
            trace,
            planted_bug,
            unlimited_faults,
        } => {
            let mut list = match scenarios(&scenario) {
                Ok(l) if l.len() == 1 => l,
                Ok(_) => return usage("run takes one scenario"),
                Err(e) => return usage(e),
            };
            lift_atlas(&mut list, unlimited_faults);
            let seed = match seed.as_deref().map(parse_seeds) {
                Some(Ok((s, e))) if e == s + 1 => s,
                Some(Ok(_)) => return usage("--seed takes one seed"),
                Some(Err(e)) => return usage(e),
                None => match list[0].seeds.first() {
                    Some(&s) => s,
                    None => return usage("--seed is required (the scenario names no seeds)"),
                },
            };
            let expect = list[0].expect.clone();
            let bugs = match bugs(&planted_bug) {
                Ok(b) => b,
                Err(e) => return usage(e),
            };
            cairn_sim::install_panic_hook(false);
            let cfg = RunConfig {
                seed,
                scenario: list.remove(0),
                bugs,
                trace,
            };
            println!(
                "{}",
                cairn_sim::options::Options::derive(seed, &cfg.scenario)
            );
            if !cfg.bugs.is_empty() {
                let names: Vec<&str> = cfg.bugs.iter().map(|b| b.name).collect();
                println!("planted bugs: {}", names.join(", "));
            }
            let report = run(&cfg);
            println!("{report}");
            if !expect.is_pass() {
                println!(
                    "expected: {expect} ({})",
                    if expect.matches(&report.outcome) {
                        "as expected"
                    } else {
                        "NOT as expected"
                    }
                );
            }
            if !report.outcome.is_pass() {
                if scenario.contains('/') || scenario.ends_with(".toml") {
                    println!("replay: cairn-sim run --seed {seed} --scenario {scenario}");
                } else {
                    println!("replay: {}", report.replay_command());
                }
            }
            ExitCode::from(report.outcome.code() as u8)
        }
        Command::Shrink {
            seed,
            scenario,
            planted_bug,
            out,
            max_runs,
        } => {
            let seed = match parse_seeds(&seed) {
                Ok((s, e)) if e == s + 1 => s,
                Ok(_) => return usage("--seed takes one seed"),
                Err(e) => return usage(e),
            };
            let mut list = match scenarios(&scenario) {
                Ok(l) if l.len() == 1 => l,
                Ok(_) => return usage("shrink takes one scenario"),
                Err(e) => return usage(e),
            };
            let bugs = match bugs(&planted_bug) {
                Ok(b) => b,
                Err(e) => return usage(e),
            };
            cairn_sim::install_panic_hook(true);
            let base = list.remove(0);
            let out =
                out.unwrap_or_else(|| PathBuf::from(format!("shrunk-{}-{seed}.toml", base.name)));
            let cfg = cairn_sim::shrink::ShrinkConfig {
                seed,
                scenario: base,
                bugs,
                max_runs,
                verbose: true,
            };
            let shrunk = match cairn_sim::shrink::shrink(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(exit::USAGE as u8);
                }
            };
            let header = format!(
                "Shrunk from seed {seed} of scenario {}: {} fault(s) + {} client operation(s) -> {} + {}.\nOriginal failure: {}\nReplay: cairn-sim run --scenario {}",
                cfg.scenario.name,
                shrunk.before.0,
                shrunk.before.1,
                shrunk.after.0,
                shrunk.after.1,
                shrunk.original.message(),
                out.display()
            );
            let text = match cairn_sim::shrink::to_file_text(&shrunk.scenario, &header) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(exit::USAGE as u8);
                }
            };
            if let Err(e) = std::fs::write(&out, text) {
                eprintln!("error: cannot write {}: {e}", out.display());
                return ExitCode::from(exit::USAGE as u8);
            }
            println!(
                "before: {} events ({} fault(s), {} client operation(s))",
                shrunk.before_total(),
                shrunk.before.0,
                shrunk.before.1
            );
            println!(
                "after:  {} events ({} fault(s), {} client operation(s)), {:.1}% of the original",
                shrunk.after_total(),
                shrunk.after.0,
                shrunk.after.1,
                100.0 * shrunk.after_total() as f64 / shrunk.before_total().max(1) as f64
            );
            println!(
                "still fails: {}: {}",
                shrunk.outcome.label(),
                shrunk.outcome.message()
            );
            println!(
                "{} run(s) in {:.1} s; wrote {}",
                shrunk.runs,
                shrunk.wall.as_secs_f64(),
                out.display()
            );
            println!("replay: cairn-sim run --scenario {}", out.display());
            ExitCode::from(shrunk.outcome.code() as u8)
        }
        Command::Sweep {
            seeds,
            jobs,
            shard,
            scenario,
            planted_bug,
            unlimited_faults,
            progress_every,
            recheck: recheck_pct,
            plant_nondeterminism,
        } => {
            if !(progress_every >= 0.0 && progress_every.is_finite()) {
                return usage("--progress-every takes a number of seconds, 0 or more");
            }
            if !(0.0..=100.0).contains(&recheck_pct) {
                return usage("--recheck takes a percentage in 0..=100");
            }
            cairn_sim::sweep::plant_nondeterminism(plant_nondeterminism);
            let seeds = match parse_seeds(&seeds) {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let shard = match shard.as_deref().map(parse_shard).transpose() {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let mut scenarios = match scenarios(&scenario) {
                Ok(l) => l,
                Err(e) => return usage(e),
            };
            lift_atlas(&mut scenarios, unlimited_faults);
            let bugs = match bugs(&planted_bug) {
                Ok(b) => b,
                Err(e) => return usage(e),
            };
            let jobs = jobs.unwrap_or_else(default_jobs);
            if jobs == 0 {
                return usage("--jobs must be at least 1");
            }
            cairn_sim::install_panic_hook(true);
            let cfg = SweepConfig {
                seeds,
                shard,
                scenarios,
                bugs,
                jobs,
                progress: true,
                progress_every: std::time::Duration::from_secs_f64(progress_every),
            };
            let count = cfg.seed_list().len() * cfg.scenarios.len();
            eprintln!(
                "sweeping {count} run(s) on {jobs} thread(s): seeds {}..{}{}",
                seeds.0,
                seeds.1,
                shard.map_or(String::new(), |(k, n)| format!(", shard {k}/{n}"))
            );
            let report = sweep(&cfg);
            for f in report.failures() {
                println!(
                    "FAIL seed {} scenario {}: {} at {}: {}",
                    f.seed, f.scenario, f.label, f.at, f.message
                );
                println!("  replay: {}", f.replay);
            }
            let sim: u64 = report.results.iter().map(|r| r.sim_us).sum();
            let ops: u64 = report.results.iter().map(|r| r.ops).sum();
            let faults: u64 = report.results.iter().map(|r| r.faults).sum();
            let wall = report.wall.as_secs_f64();
            let n = report.results.len().max(1) as f64;
            eprintln!(
                "{:.1} s wall, {:.2} seeds/s, {:.0} simulated s per wall s, {:.0} client ops and {:.1} faults per seed",
                wall,
                report.results.len() as f64 / wall.max(1e-9),
                sim as f64 / 1e6 / wall.max(1e-9),
                ops as f64 / n,
                faults as f64 / n
            );
            let failed = report.results.len() - report.passed();
            println!("{} passed, {} failed", report.passed(), failed);
            let checked = cairn_sim::sweep::recheck(&cfg, &report, recheck_pct);
            for m in &checked.mismatches {
                println!("{m}");
            }
            println!(
                "determinism: {} of {} seed(s) re-run, {} mismatch(es)",
                checked.rechecked,
                report.results.len(),
                checked.mismatches.len()
            );
            let code = [report.exit_code(), checked.exit_code()]
                .into_iter()
                .max_by_key(|&c| cairn_sim::report::severity(c))
                .unwrap_or(exit::PASS);
            ExitCode::from(code as u8)
        }
        Command::Power {
            budget,
            start,
            jobs,
            planted_bug,
        } => {
            let only = match bugs(&planted_bug) {
                Ok(b) => b,
                Err(e) => return usage(e),
            };
            let jobs = jobs.unwrap_or_else(default_jobs);
            if jobs == 0 {
                return usage("--jobs must be at least 1");
            }
            eprintln!(
                "hunting {} planted bug(s), at most {budget} seed(s) each from seed {start}, on {jobs} thread(s)",
                if only.is_empty() {
                    planted::all().len()
                } else {
                    only.len()
                }
            );
            cairn_sim::install_panic_hook(true);
            let rows: Vec<_> = cairn_sim::power::table_of(&only, start, budget, jobs);
            print!("{}", cairn_sim::power::render(&rows));
            let missed = cairn_sim::power::any_missed(&rows);
            ExitCode::from(if missed { exit::SAFETY as u8 } else { 0 })
        }
        Command::Bench {
            scenario,
            seeds,
            start,
        } => {
            let (first, end) = match parse_seed_count_or_range(&seeds, start) {
                Ok(r) => r,
                Err(e) => return usage(e),
            };
            let list = match scenarios(&scenario) {
                Ok(l) if l.len() == 1 => l,
                Ok(_) => return usage("bench takes one scenario"),
                Err(e) => return usage(e),
            };
            cairn_sim::install_panic_hook(true);
            eprintln!("bench: seeds {first}..{end}");
            let b = cairn_sim::bench::bench(&list[0], first, end - first);
            println!("{b}");
            ExitCode::SUCCESS
        }
    }
}
