//! Sweeps: many seeds (times scenarios) in parallel on std threads.
//!
//! Results are collected and sorted by (scenario, seed), so what a sweep
//! prints does not depend on thread scheduling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cairn_core::Time;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::planted::PlantedBug;
use crate::report::{exit, severity};
use crate::scenario::Scenario;
use crate::world::{run, RunConfig};

/// Parses `A..B` (B excluded), `A..=B` or a single seed `S`.
pub fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let num = |s: &str| -> Result<u64, String> {
        let s = s.trim();
        let r = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        };
        r.map_err(|e| format!("bad seed {s:?}: {e}"))
    };
    if let Some((a, b)) = text.split_once("..=") {
        let (a, b) = (num(a)?, num(b)?);
        if b < a || b == u64::MAX {
            return Err(format!("empty or unbounded seed range {text}"));
        }
        return Ok((a, b + 1));
    }
    if let Some((a, b)) = text.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        if b <= a {
            return Err(format!("empty seed range {text}"));
        }
        return Ok((a, b));
    }
    let s = num(text)?;
    Ok((s, s.saturating_add(1)))
}

/// Parses `K/N` (1 <= K <= N): shard K of N keeps the seeds with
/// `seed % N == K - 1`.
pub fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let (k, n) = text
        .split_once('/')
        .ok_or_else(|| format!("shard {text:?} is not K/N"))?;
    let k: u64 = k
        .trim()
        .parse()
        .map_err(|e| format!("shard index {k:?}: {e}"))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|e| format!("shard count {n:?}: {e}"))?;
    if n == 0 || k == 0 || k > n {
        return Err(format!("shard {text}: need 1 <= K <= N"));
    }
    Ok((k, n))
}

pub struct SweepConfig {
    /// Seeds `start..end`.
    pub seeds: (u64, u64),
    pub shard: Option<(u64, u64)>,
    pub scenarios: Vec<Scenario>,
    pub bugs: Vec<PlantedBug>,
    pub jobs: usize,
    pub progress: bool,
}

impl SweepConfig {
    pub fn seed_list(&self) -> Vec<u64> {
        (self.seeds.0..self.seeds.1)
            .filter(|s| match self.shard {
                Some((k, n)) => s % n == k - 1,
                None => true,
            })
            .collect()
    }
}

/// The verdict of one (scenario, seed).
#[derive(Clone, Debug)]
pub struct SeedResult {
    pub seed: u64,
    pub scenario: String,
    pub code: i32,
    pub label: &'static str,
    pub message: String,
    pub at: Time,
    pub replay: String,
    pub trace_hash: u64,
    pub sim_us: u64,
    pub ops: u64,
    pub faults: u64,
}

#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub results: Vec<SeedResult>,
    pub wall: std::time::Duration,
}

impl SweepReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.code == exit::PASS).count()
    }

    pub fn failures(&self) -> impl Iterator<Item = &SeedResult> {
        self.results.iter().filter(|r| r.code != exit::PASS)
    }

    /// The most severe exit code (0 when everything passed).
    pub fn exit_code(&self) -> i32 {
        self.results
            .iter()
            .map(|r| r.code)
            .max_by_key(|&c| severity(c))
            .unwrap_or(exit::PASS)
    }
}

/// Runs every (scenario, seed) of the sweep.
pub fn sweep(cfg: &SweepConfig) -> SweepReport {
    let started = std::time::Instant::now();
    let seeds = cfg.seed_list();
    let items: Vec<(usize, u64)> = (0..cfg.scenarios.len())
        .flat_map(|s| seeds.iter().map(move |&seed| (s, seed)))
        .collect();
    let bar = ProgressBar::with_draw_target(
        Some(items.len() as u64),
        if cfg.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds, {msg} [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("0 failed");
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let results: Mutex<Vec<SeedResult>> = Mutex::new(Vec::with_capacity(items.len()));
    let jobs = cfg.jobs.max(1).min(items.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(s, seed)) = items.get(i) else {
                    break;
                };
                let rc = RunConfig {
                    seed,
                    scenario: cfg.scenarios[s].clone(),
                    bugs: cfg.bugs.clone(),
                    trace: None,
                };
                let r = run(&rc);
                let res = SeedResult {
                    seed,
                    scenario: rc.scenario.name.clone(),
                    code: r.outcome.code(),
                    label: r.outcome.label(),
                    message: r.outcome.message(),
                    at: r.at,
                    replay: r.replay_command(),
                    trace_hash: r.trace_hash,
                    sim_us: r.stats.sim_end.as_micros(),
                    ops: r.stats.ops.sent,
                    faults: r.stats.faults.injected(),
                };
                if res.code != exit::PASS {
                    let f = failed.fetch_add(1, Ordering::Relaxed) + 1;
                    bar.set_message(format!("{f} failed"));
                }
                results.lock().unwrap_or_else(|e| e.into_inner()).push(res);
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by(|a, b| (&a.scenario, a.seed).cmp(&(&b.scenario, b.seed)));
    SweepReport {
        results,
        wall: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ranges_and_shards_parse() {
        assert_eq!(parse_seeds("0..1000"), Ok((0, 1000)));
        assert_eq!(parse_seeds("5..=7"), Ok((5, 8)));
        assert_eq!(parse_seeds("42"), Ok((42, 43)));
        assert_eq!(parse_seeds("0x10..0x12"), Ok((16, 18)));
        assert!(parse_seeds("9..3").is_err());
        assert!(parse_seeds("x").is_err());
        assert_eq!(parse_shard("2/4"), Ok((2, 4)));
        assert!(
            parse_shard("0/4").is_err() && parse_shard("5/4").is_err() && parse_shard("1").is_err()
        );
        let cfg = SweepConfig {
            seeds: (0, 10),
            shard: Some((2, 3)),
            scenarios: vec![],
            bugs: vec![],
            jobs: 1,
            progress: false,
        };
        assert_eq!(cfg.seed_list(), vec![1, 4, 7]);
    }

    #[test]
    fn the_most_severe_code_wins() {
        let r = |code| SeedResult {
            seed: 0,
            scenario: String::new(),
            code,
            label: "",
            message: String::new(),
            at: Time::ZERO,
            replay: String::new(),
            trace_hash: 0,
            sim_us: 0,
            ops: 0,
            faults: 0,
        };
        let rep = |codes: &[i32]| SweepReport {
            results: codes.iter().map(|&c| r(c)).collect(),
            wall: Default::default(),
        };
        assert_eq!(rep(&[0, 0]).exit_code(), 0);
        assert_eq!(rep(&[0, 2, 3]).exit_code(), 3);
        assert_eq!(rep(&[2, 1, 3]).exit_code(), 1);
        assert_eq!(rep(&[]).exit_code(), 0);
    }
}
