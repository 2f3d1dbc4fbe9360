//! The nemesis: chooses faults during the safety phase.
//!
//! Each action is drawn by weight from the seed's options: crash (and
//! restart after a random downtime), clean restart (shutdown, then start
//! again from the same disk), a majority/minority split, the isolation of one
//! node, one-way blocks of some links, clogging of one node's links, or a
//! heal. Crashes never take more than `max_down` nodes down at once, and
//! every fault is undone by itself after a bounded time, so progress is
//! always possible again.
//!
//! [`VersionNemesis`] makes the random choices of the version orchestrator
//! (`world_versions.rs`): node orders for rolling upgrades, which node to
//! ask to finalize, pauses, and when to crash a migrating node.

use rand::seq::SliceRandom;
use rand::Rng;

use crate::options::FaultOptions;
use crate::rng::{between, SimRng};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Crash(usize),
    CleanRestart(usize),
    /// Block both directions between this side and the rest.
    Split(Vec<usize>),
    Isolate(usize),
    /// Block these directed links.
    OneWay(Vec<(usize, usize)>),
    /// Delay every link to and from this node.
    Clog(usize),
    Heal,
}

pub struct Nemesis {
    pub opts: FaultOptions,
    nodes: usize,
    rng: SimRng,
}

impl Nemesis {
    pub fn new(opts: &FaultOptions, nodes: usize, rng: SimRng) -> Nemesis {
        Nemesis {
            opts: opts.clone(),
            nodes,
            rng,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.opts.weights.total() == 0
    }

    pub fn interval_us(&mut self) -> u64 {
        between(
            &mut self.rng,
            self.opts.interval_ms.0,
            self.opts.interval_ms.1,
        ) * 1000
    }

    pub fn downtime_us(&mut self) -> u64 {
        between(
            &mut self.rng,
            self.opts.downtime_ms.0,
            self.opts.downtime_ms.1,
        ) * 1000
    }

    pub fn restart_delay_us(&mut self) -> u64 {
        between(&mut self.rng, 10_000, 2_000_000)
    }

    pub fn partition_us(&mut self) -> u64 {
        between(
            &mut self.rng,
            self.opts.partition_ms.0,
            self.opts.partition_ms.1,
        ) * 1000
    }

    pub fn clog_us(&mut self) -> (u64, u64) {
        let delay = between(
            &mut self.rng,
            self.opts.clog_delay_ms.0,
            self.opts.clog_delay_ms.1,
        ) * 1000;
        let len = between(&mut self.rng, self.opts.clog_ms.0, self.opts.clog_ms.1) * 1000;
        (delay, len)
    }

    /// A time within the first third of the safety phase, for guaranteed faults.
    pub fn early_us(&mut self, safety_ms: u64) -> u64 {
        between(&mut self.rng, 1000, (safety_ms / 3).max(1001)) * 1000
    }

    /// One of `up` (node indices), if any.
    pub fn pick(&mut self, up: &[usize]) -> Option<usize> {
        up.choose(&mut self.rng).copied()
    }

    /// A random majority/minority split: the returned side is the minority.
    pub fn split(&mut self) -> Vec<usize> {
        let mut all: Vec<usize> = (0..self.nodes).collect();
        all.shuffle(&mut self.rng);
        let max_minority = (self.nodes.saturating_sub(1) / 2).max(1);
        let k = self.rng.gen_range(1..=max_minority);
        let mut side = all[..k].to_vec();
        side.sort_unstable();
        side
    }

    pub fn one_way(&mut self) -> Vec<(usize, usize)> {
        let count = self.rng.gen_range(1..=self.nodes.max(1));
        let mut links = Vec::with_capacity(count);
        for _ in 0..count {
            let a = self.rng.gen_range(0..self.nodes);
            let b = self.rng.gen_range(0..self.nodes);
            if a != b && !links.contains(&(a, b)) {
                links.push((a, b));
            }
        }
        links
    }

    /// Chooses the next action. `up` lists running nodes; `down` counts nodes
    /// that are crashed or shutting down.
    pub fn choose(&mut self, up: &[usize], down: usize) -> Option<Action> {
        let w = self.opts.weights;
        let total = w.total();
        if total == 0 {
            return None;
        }
        let mut x = self.rng.gen_range(0..total);
        let may_stop = down < self.opts.max_down as usize;
        let mut take = |weight: u32| {
            if x < weight {
                true
            } else {
                x -= weight;
                false
            }
        };
        if take(w.crash) {
            return if may_stop {
                self.pick(up).map(Action::Crash)
            } else {
                None
            };
        }
        if take(w.clean_restart) {
            return if may_stop {
                self.pick(up).map(Action::CleanRestart)
            } else {
                None
            };
        }
        if take(w.partition) {
            return Some(Action::Split(self.split()));
        }
        if take(w.isolate) {
            let n = self.rng.gen_range(0..self.nodes);
            return Some(Action::Isolate(n));
        }
        if take(w.one_way) {
            return Some(Action::OneWay(self.one_way()));
        }
        if take(w.clog) {
            let n = self.rng.gen_range(0..self.nodes);
            return Some(Action::Clog(n));
        }
        Some(Action::Heal)
    }
}

/// Random choices of the version orchestrator, from its own stream so
/// that they do not shift the fault nemesis' draws.
pub struct VersionNemesis {
    pub rng: SimRng,
}

impl VersionNemesis {
    pub fn new(rng: SimRng) -> VersionNemesis {
        VersionNemesis { rng }
    }

    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        between(&mut self.rng, lo, hi)
    }

    /// A random order of the nodes `0..n` (rolling upgrades go this way).
    pub fn order(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        v.shuffle(&mut self.rng);
        v
    }

    /// One of `nodes`, if any.
    pub fn pick(&mut self, nodes: &[usize]) -> Option<usize> {
        nodes.choose(&mut self.rng).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::NemesisWeights;
    use crate::rng::rng_from;

    fn opts(max_down: u32) -> FaultOptions {
        FaultOptions {
            interval_ms: (100, 200),
            weights: NemesisWeights {
                crash: 1,
                clean_restart: 1,
                partition: 1,
                isolate: 1,
                one_way: 1,
                clog: 1,
                heal: 1,
            },
            require_crash: true,
            require_partition: true,
            max_down,
            downtime_ms: (1, 2),
            partition_ms: (1, 2),
            clog_delay_ms: (1, 2),
            clog_ms: (1, 2),
            shutdown_bound_ms: 100,
        }
    }

    #[test]
    fn never_stops_more_than_max_down() {
        let mut n = Nemesis::new(&opts(1), 5, rng_from(3));
        for _ in 0..1000 {
            match n.choose(&[0, 1, 2, 3], 1) {
                Some(Action::Crash(_)) | Some(Action::CleanRestart(_)) => {
                    panic!("exceeded max_down")
                }
                _ => {}
            }
        }
        let mut crashed = false;
        for _ in 0..1000 {
            crashed |= matches!(n.choose(&[0, 1, 2, 3, 4], 0), Some(Action::Crash(_)));
        }
        assert!(crashed);
    }

    #[test]
    fn version_orders_are_permutations() {
        let mut v = VersionNemesis::new(rng_from(5));
        let mut seen_other = false;
        for _ in 0..20 {
            let mut o = v.order(5);
            seen_other |= o != vec![0, 1, 2, 3, 4];
            o.sort_unstable();
            assert_eq!(o, vec![0, 1, 2, 3, 4]);
        }
        assert!(seen_other);
        assert_eq!(v.pick(&[]), None);
        assert_eq!(v.pick(&[3]), Some(3));
        let b = v.between(10, 20);
        assert!((10..=20).contains(&b));
    }

    #[test]
    fn splits_leave_a_majority() {
        let mut n = Nemesis::new(&opts(1), 5, rng_from(4));
        for _ in 0..200 {
            let side = n.split();
            assert!(!side.is_empty() && side.len() <= 2, "{side:?}");
        }
    }
}
