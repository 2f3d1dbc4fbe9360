//! `cairn-sim bench`: how fast the simulator runs a scenario.
//!
//! Runs consecutive seeds on one thread (so the figures are per core) and
//! reports simulated seconds per wall second, events per second and seeds
//! per second. Every run must pass; a failing seed is reported, since a
//! failure cuts a run short and would flatter the figures.

use std::time::{Duration, Instant};

use crate::scenario::Scenario;
use crate::world::{run, RunConfig};

#[derive(Clone, Debug, Default)]
pub struct Bench {
    pub scenario: String,
    pub seeds: u64,
    pub wall: Duration,
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
}

/// Runs seeds `start..start + count` of `scenario`, one after the other.
pub fn bench(scenario: &Scenario, start: u64, count: u64) -> Bench {
    let mut b = Bench {
        scenario: scenario.name.clone(),
        seeds: count,
        ..Bench::default()
    };
    let started = Instant::now();
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
        writeln!(
            f,
            "  simulated seconds per wall second: {:.0}",
            self.sim_per_wall()
        )?;
        writeln!(
            f,
            "  events per second:                 {:.0}",
            self.events_per_sec()
        )?;
        write!(
            f,
            "  seeds per second (per core):       {:.2}",
            self.seeds_per_sec()
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
