//! Sweeps: many seeds (times scenarios) in parallel on std threads.
//!
//! Results are collected and sorted by (scenario, seed), so what a sweep
//! prints does not depend on thread scheduling.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Parses `bench --seeds`: a range as [`parse_seeds`] takes it (`A..B`,
/// `A..=B`), or a count `N`: the N seeds from `start`.
pub fn parse_seed_count_or_range(text: &str, start: Option<u64>) -> Result<(u64, u64), String> {
    if text.contains("..") {
        if start.is_some() {
            return Err("--start goes with a count of seeds, not a range".to_string());
        }
        return parse_seeds(text);
    }
    let count: u64 = text
        .trim()
        .parse()
        .map_err(|e| format!("bad seed count {text:?} (want N, A..B or A..=B): {e}"))?;
    if count == 0 {
        return Err("--seeds: at least one seed".to_string());
    }
    let start = start.unwrap_or(0);
    Ok((start, start.saturating_add(count)))
}

/// Worker threads when none are asked for: the available parallelism.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    /// Report progress on stderr: a bar on a terminal; otherwise (a CI log)
    /// a line at most every `progress_every`, as runs finish.
    pub progress: bool,
    pub progress_every: Duration,
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
    // indicatif draws nothing when stderr is not a terminal; plain lines
    // stand in for the bar there.
    let lines = cfg.progress && !std::io::stderr().is_terminal();
    let last_line = Mutex::new(started);
    let done = AtomicUsize::new(0);
    let bar = ProgressBar::with_draw_target(
        Some(items.len() as u64),
        if cfg.progress && !lines {
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
                if lines {
                    let mut last = last_line.lock().unwrap_or_else(|e| e.into_inner());
                    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                    let now = Instant::now();
                    if now.duration_since(*last) >= cfg.progress_every || d == items.len() {
                        *last = now;
                        eprintln!(
                            "{}",
                            progress_line(
                                d,
                                items.len(),
                                failed.load(Ordering::Relaxed),
                                now.duration_since(started)
                            )
                        );
                    }
                }
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

/// `sweep: 120/1000 runs (12.0%), 0 failed, 30 s elapsed, about 220 s left`.
pub fn progress_line(done: usize, total: usize, failed: usize, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let left = if done == 0 {
        String::new()
    } else {
        format!(
            ", about {:.0} s left",
            secs / done as f64 * (total - done.min(total)) as f64
        )
    };
    format!(
        "sweep: {done}/{total} runs ({:.1}%), {failed} failed, {secs:.0} s elapsed{left}",
        100.0 * done as f64 / total.max(1) as f64
    )
}

// ----- determinism self-check -------------------------------------------

/// Switched on only by tests and `--plant-nondeterminism`: a counter that
/// survives from one run to the next in this process (the bug class of
/// statics shared between runs) perturbs when clients start.
static PLANT_NONDETERMINISM: AtomicBool = AtomicBool::new(false);
static RUNS_SO_FAR: AtomicU64 = AtomicU64::new(0);

/// Plants (or removes) nondeterminism in every later run of this process.
pub fn plant_nondeterminism(on: bool) {
    PLANT_NONDETERMINISM.store(on, Ordering::SeqCst);
}

/// Extra start delay of a client: zero unless nondeterminism is planted.
pub fn planted_jitter_us() -> u64 {
    if PLANT_NONDETERMINISM.load(Ordering::Relaxed) {
        RUNS_SO_FAR.fetch_add(1, Ordering::Relaxed) % 997
    } else {
        0
    }
}

/// Which results a recheck of `pct` percent re-runs: evenly spread, at
/// least one when `pct > 0`.
pub fn recheck_picks(len: usize, pct: f64) -> Vec<usize> {
    if len == 0 || pct <= 0.0 {
        return Vec::new();
    }
    let count = ((len as f64 * pct / 100.0).ceil() as usize).clamp(1, len);
    (0..count).map(|i| i * len / count).collect()
}

/// Two runs of one seed that disagreed.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub seed: u64,
    pub scenario: String,
    pub first_hash: u64,
    pub second_hash: u64,
    /// The first diverging trace line of a further pair of runs: (1-based
    /// line number, line of one run, line of the other).
    pub diverging: Option<(usize, String, String)>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DETERMINISM seed {} scenario {}: trace hash 0x{:016x} then 0x{:016x}",
            self.seed, self.scenario, self.first_hash, self.second_hash
        )?;
        match &self.diverging {
            Some((n, a, b)) => write!(
                f,
                "\n  first diverging trace line {n}:\n    run 1: {a}\n    run 2: {b}"
            ),
            None => write!(
                f,
                "\n  (two further runs wrote identical traces: the divergence did not recur)"
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RecheckReport {
    pub rechecked: usize,
    pub mismatches: Vec<Mismatch>,
}

impl RecheckReport {
    pub fn exit_code(&self) -> i32 {
        if self.mismatches.is_empty() {
            exit::PASS
        } else {
            exit::DETERMINISM
        }
    }
}

/// Re-runs a share (`pct` percent) of a sweep's seeds and compares trace
/// hashes; for each mismatch, runs the seed twice more writing traces and
/// names the first line where they differ.
pub fn recheck(cfg: &SweepConfig, report: &SweepReport, pct: f64) -> RecheckReport {
    let picks: Vec<&SeedResult> = recheck_picks(report.results.len(), pct)
        .into_iter()
        .map(|i| &report.results[i])
        .collect();
    let scenario_of = |name: &str| cfg.scenarios.iter().find(|s| s.name == name).cloned();
    let next = AtomicUsize::new(0);
    let mismatches: Mutex<Vec<Mismatch>> = Mutex::new(Vec::new());
    let jobs = cfg.jobs.max(1).min(picks.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(r) = picks.get(i) else {
                    break;
                };
                let Some(scenario) = scenario_of(&r.scenario) else {
                    continue;
                };
                let rc = RunConfig {
                    seed: r.seed,
                    scenario,
                    bugs: cfg.bugs.clone(),
                    trace: None,
                };
                let again = run(&rc);
                if again.trace_hash != r.trace_hash {
                    let diverging = first_divergence(&rc);
                    mismatches
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Mismatch {
                            seed: r.seed,
                            scenario: r.scenario.clone(),
                            first_hash: r.trace_hash,
                            second_hash: again.trace_hash,
                            diverging,
                        });
                }
            });
        }
    });
    let mut mismatches = mismatches.into_inner().unwrap_or_else(|e| e.into_inner());
    mismatches.sort_by(|a, b| (&a.scenario, a.seed).cmp(&(&b.scenario, b.seed)));
    RecheckReport {
        rechecked: picks.len(),
        mismatches,
    }
}

/// Runs `rc` twice writing JSON traces and returns the first line where
/// they differ.
pub fn first_divergence(rc: &RunConfig) -> Option<(usize, String, String)> {
    static FILES: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let paths: Vec<std::path::PathBuf> = (0..2)
        .map(|_| {
            let k = FILES.fetch_add(1, Ordering::Relaxed);
            dir.join(format!(
                "cairn-sim-recheck-{}-{}-{k}.jsonl",
                std::process::id(),
                rc.seed
            ))
        })
        .collect();
    let texts: Vec<String> = paths
        .iter()
        .map(|p| {
            let mut c = rc.clone();
            c.trace = Some(p.clone());
            run(&c);
            let t = std::fs::read_to_string(p).unwrap_or_default();
            let _ = std::fs::remove_file(p);
            t
        })
        .collect();
    let (a, b) = (&texts[0], &texts[1]);
    let mut la = a.lines();
    let mut lb = b.lines();
    let mut n = 0;
    loop {
        n += 1;
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => {
                return Some((
                    n,
                    x.unwrap_or("(end of trace)").to_string(),
                    y.unwrap_or("(end of trace)").to_string(),
                ))
            }
        }
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
            progress_every: Duration::from_secs(5),
        };
        assert_eq!(cfg.seed_list(), vec![1, 4, 7]);
    }

    #[test]
    fn bench_seeds_are_a_count_or_a_range() {
        assert_eq!(parse_seed_count_or_range("20", None), Ok((0, 20)));
        assert_eq!(parse_seed_count_or_range("20", Some(5)), Ok((5, 25)));
        assert_eq!(parse_seed_count_or_range("100..120", None), Ok((100, 120)));
        assert_eq!(parse_seed_count_or_range("3..=4", None), Ok((3, 5)));
        assert!(parse_seed_count_or_range("3..5", Some(1)).is_err());
        assert!(parse_seed_count_or_range("0", None).is_err());
        assert!(parse_seed_count_or_range("x", None).is_err());
    }

    #[test]
    fn progress_lines_say_how_far_and_how_long() {
        assert_eq!(
            progress_line(25, 100, 1, Duration::from_secs(10)),
            "sweep: 25/100 runs (25.0%), 1 failed, 10 s elapsed, about 30 s left"
        );
        assert_eq!(
            progress_line(0, 100, 0, Duration::ZERO),
            "sweep: 0/100 runs (0.0%), 0 failed, 0 s elapsed"
        );
    }

    #[test]
    fn rechecks_pick_an_even_share() {
        assert_eq!(recheck_picks(1000, 5.0).len(), 50);
        assert_eq!(recheck_picks(10, 5.0), vec![0]);
        assert_eq!(recheck_picks(4, 100.0), vec![0, 1, 2, 3]);
        assert!(recheck_picks(10, 0.0).is_empty());
        assert!(recheck_picks(0, 5.0).is_empty());
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
