//! `cairn-sim`: run, sweep and list deterministic simulations of Cairn.
//!
//! Exit codes:
//! - 0: every oracle passed
//! - 1: safety violation (an oracle failed)
//! - 2: liveness failure (no convergence within the bound)
//! - 3: panic in the code under test
//! - 4: determinism mismatch (reserved)
//! - 64: usage error
//!
//! A sweep exits with the most severe code among its seeds, ranked
//! 1 > 3 > 2 > 4.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cairn_sim::planted::{self, PlantedBug};
use cairn_sim::scenario::{self, Scenario};
use cairn_sim::sweep::{parse_seeds, parse_shard, sweep, SweepConfig};
use cairn_sim::{exit, run, RunConfig};

const EXIT_CODES: &str = "\
Exit codes:
  0   pass: every oracle held
  1   safety violation: an oracle failed (lost or stale write, bad ack, reused dot, ...)
  2   liveness failure: the healed cluster did not converge within the bound
  3   panic in the code under test
  4   determinism mismatch (reserved)
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
        /// The seed (decimal or 0x-prefixed hex).
        #[arg(long)]
        seed: String,
        /// A built-in scenario (see `cairn-sim scenarios`).
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Write the trace as JSON lines to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// Switch on a planted bug in every node (repeatable).
        #[arg(long = "planted-bug", value_name = "NAME")]
        planted_bug: Vec<String>,
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
        /// A built-in scenario, or `all`.
        #[arg(long, default_value = "default")]
        scenario: String,
        /// Switch on a planted bug in every node (repeatable).
        #[arg(long = "planted-bug", value_name = "NAME")]
        planted_bug: Vec<String>,
    },
    /// List the built-in scenarios and planted bugs.
    Scenarios,
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    eprintln!("(run `cairn-sim --help` for usage)");
    ExitCode::from(exit::USAGE as u8)
}

fn scenarios(name: &str) -> Result<Vec<Scenario>, String> {
    if name == "all" {
        return Ok(scenario::BUILTIN
            .iter()
            .filter_map(|n| scenario::builtin(n))
            .collect());
    }
    scenario::builtin(name).map(|s| vec![s]).ok_or_else(|| {
        format!(
            "unknown scenario {name:?}; built-in: {}",
            scenario::BUILTIN.join(", ")
        )
    })
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
            for name in scenario::BUILTIN {
                if let Some(s) = scenario::builtin(name) {
                    println!("{:<28} {}", s.name, s.description);
                }
            }
            println!();
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
        } => {
            let seed = match parse_seeds(&seed) {
                Ok((s, e)) if e == s + 1 => s,
                Ok(_) => return usage("--seed takes one seed"),
                Err(e) => return usage(e),
            };
            let mut list = match scenarios(&scenario) {
                Ok(l) if l.len() == 1 => l,
                Ok(_) => return usage("run takes one scenario"),
                Err(e) => return usage(e),
            };
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
            if !report.outcome.is_pass() {
                println!("replay: {}", report.replay_command());
            }
            ExitCode::from(report.outcome.code() as u8)
        }
        Command::Sweep {
            seeds,
            jobs,
            shard,
            scenario,
            planted_bug,
        } => {
            let seeds = match parse_seeds(&seeds) {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let shard = match shard.as_deref().map(parse_shard).transpose() {
                Ok(s) => s,
                Err(e) => return usage(e),
            };
            let scenarios = match scenarios(&scenario) {
                Ok(l) => l,
                Err(e) => return usage(e),
            };
            let bugs = match bugs(&planted_bug) {
                Ok(b) => b,
                Err(e) => return usage(e),
            };
            let jobs = jobs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
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
            ExitCode::from(report.exit_code() as u8)
        }
    }
}
