//! `cairn-sim bench`: how fast the simulator runs a scenario.
//!
//! Runs consecutive seeds on one thread (so the figures are per core) and
//! reports simulated seconds per wall second, events per second and seeds
//! per second, both per wall-clock second and per second of the thread's own
//! CPU time (the second holds on a machine busy with other work). Every run
//! must pass; a failing seed is reported, since a
//! failure cuts a run short and would flatter the figures.

use std::time::{Duration, Instant};

use crate::scenario::Scenario;
use crate::world::{run, RunConfig};

#[derive(Clone, Debug, Default)]
pub struct Bench {
    pub scenario: String,
    pub seeds: u64,
    pub wall: Duration,
    /// CPU time of the benchmarking thread.
    pub cpu: Duration,
    pub sim_us: u64,
    pub events: u64,
    pub failed: Vec<u64>,
}

impl Bench {
    pub fn sim_per_wall(&self) -> f64 {
        self.sim_us as f64 / 1e6 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn seeds_per_sec(&self) -> f64 {
        self.seeds as f64 / self.wall.as_secs_f64().max(1e-9)
    }
    pub fn sim_per_cpu(&self) -> f64 {
        self.sim_us as f64 / 1e6 / self.cpu.as_secs_f64().max(1e-9)
    }
    pub fn events_per_cpu(&self) -> f64 {
        self.events as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
    pub fn seeds_per_cpu(&self) -> f64 {
        self.seeds as f64 / self.cpu.as_secs_f64().max(1e-9)
    }
}

/// CPU time consumed so far by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux and BSD libc provides.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs seeds `start..start + count` of `scenario`, one after the other.
pub fn bench(scenario: &Scenario, start: u64, count: u64) -> Bench {
    let mut b = Bench {
        scenario: scenario.name.clone(),
        seeds: count,
        ..Bench::default()
    };
    let started = Instant::now();
    let cpu_started = thread_cpu_time();
    for seed in start..start + count {
        let r = run(&RunConfig {
            seed,
            scenario: scenario.clone(),
            bugs: Vec::new(),
            trace: None,
        });
        b.sim_us += r.stats.sim_end.as_micros();
        b.events += r.stats.events;
        if !r.outcome.is_pass() {
            b.failed.push(seed);
        }
    }
    b.wall = started.elapsed();
    b.cpu = thread_cpu_time().saturating_sub(cpu_started);
    b
}

impl std::fmt::Display for Bench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench: scenario {}, {} seeds on one thread, {:.2} s wall, {:.1} simulated s per seed",
            self.scenario,
            self.seeds,
            self.wall.as_secs_f64(),
            self.sim_us as f64 / 1e6 / self.seeds.max(1) as f64
        )?;
        writeln!(f, "  {:<36}{:>12}{:>14}", "", "per wall s", "per CPU s")?;
        writeln!(
            f,
            "  {:<36}{:>12.0}{:>14.0}",
            "simulated seconds",
            self.sim_per_wall(),
            self.sim_per_cpu()
        )?;
        writeln!(
            f,
            "  {:<36}{:>12.0}{:>14.0}",
            "events",
            self.events_per_sec(),
            self.events_per_cpu()
        )?;
        write!(
            f,
            "  {:<36}{:>12.2}{:>14.2}\n  ({:.2} s CPU; per CPU second is per core whatever else runs)",
            "seeds (one thread: per core)",
            self.seeds_per_sec(),
            self.seeds_per_cpu(),
            self.cpu.as_secs_f64()
        )?;
        if !self.failed.is_empty() {
            write!(
                f,
                "\n  failing seeds (figures not representative): {:?}",
                self.failed
            )?;
        }
        Ok(())
    }
}
