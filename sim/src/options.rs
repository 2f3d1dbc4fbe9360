//! Options drawn from the seed within the scenario's ranges (swarm testing:
//! each seed runs a different topology of delays, fault rates and workload
//! mix). They are printed with the seed so a run can be understood without
//! re-deriving them.

use std::fmt;

use serde::Serialize;

use crate::rng::{between, Seeds, SimRng};
use crate::scenario::{Scenario, Span};

#[derive(Clone, Debug, Serialize)]
pub struct NetworkOptions {
    /// Base one-way delay of each directed link (`from * nodes + to`), in µs.
    pub base_delay_us: Vec<u64>,
    pub jitter_us: u64,
    pub tail_ppm: u32,
    pub drop_ppm: u32,
    pub duplicate_ppm: u32,
    pub link_capacity: u32,
    /// Late duplicates: probability (ppm) and delay after sending (ms).
    pub late_duplicate_ppm: u32,
    pub late_duplicate_ms: (u64, u64),
}

#[derive(Clone, Debug, Serialize)]
pub struct DiskOptions {
    pub sync_latency_us: (u64, u64),
    pub read_latency_us: (u64, u64),
}

#[derive(Clone, Debug, Serialize)]
pub struct ClockOptions {
    /// Per node: rate error in ppm (may be negative).
    pub drift_ppm: Vec<i64>,
    /// Per node: offset in microseconds.
    pub offset_us: Vec<u64>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Mix {
    pub read_modify_write: u32,
    pub blind_put: u32,
    pub delete: u32,
    pub read: u32,
    pub stale_context: u32,
    pub hostile: u32,
}

impl Mix {
    pub fn total(&self) -> u32 {
        self.read_modify_write
            + self.blind_put
            + self.delete
            + self.read
            + self.stale_context
            + self.hostile
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadOptions {
    pub clients: u32,
    pub keys: u32,
    pub think_ms: (u64, u64),
    pub value_len: u32,
    pub client_timeout_ms: u64,
    pub mix: Mix,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct NemesisWeights {
    pub crash: u32,
    pub clean_restart: u32,
    pub partition: u32,
    pub isolate: u32,
    pub one_way: u32,
    pub clog: u32,
    pub heal: u32,
}

impl NemesisWeights {
    pub fn total(&self) -> u32 {
        self.crash
            + self.clean_restart
            + self.partition
            + self.isolate
            + self.one_way
            + self.clog
            + self.heal
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultOptions {
    pub interval_ms: (u64, u64),
    pub weights: NemesisWeights,
    pub require_crash: bool,
    pub require_partition: bool,
    pub max_down: u32,
    pub downtime_ms: (u64, u64),
    pub partition_ms: (u64, u64),
    pub clog_delay_ms: (u64, u64),
    pub clog_ms: (u64, u64),
    pub shutdown_bound_ms: u64,
}

/// Every choice a seed makes before the run starts.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub seed: u64,
    pub scenario: String,
    pub nodes: u32,
    pub releases: Vec<String>,
    pub quorum: (u8, u8, u8),
    pub network: NetworkOptions,
    pub disk: DiskOptions,
    pub clock: ClockOptions,
    pub workload: WorkloadOptions,
    pub faults: FaultOptions,
    pub safety_ms: u64,
    pub liveness_ms: u64,
    /// Disk faults, clock steps and the fault atlas.
    pub deep: crate::atlas::DeepOptions,
    /// Milliseconds between two frames of a hostile peer (`(0, 0)`: none).
    pub hostile_ms: (u64, u64),
}

pub(crate) fn draw(rng: &mut SimRng, s: Span) -> u64 {
    between(rng, s.min, s.max)
}

/// A sub-range of `s`: two draws, ordered.
pub(crate) fn draw_range(rng: &mut SimRng, s: Span) -> (u64, u64) {
    let a = draw(rng, s);
    let b = draw(rng, s);
    (a.min(b), a.max(b))
}

impl Options {
    pub fn derive(seed: u64, scenario: &Scenario) -> Options {
        let swarm = !scenario.swarm.is_default();
        let scenario = &crate::atlas::specialise(scenario, seed);
        let seeds = Seeds::new(seed);
        let mut rng = seeds.subsystem("options");
        let n = scenario.nodes;
        let net = &scenario.network;
        let base_lo = draw(&mut rng, net.base_delay_us);
        let base_delay_us = (0..n * n)
            .map(|_| between(&mut rng, base_lo, net.base_delay_us.max))
            .collect();
        let network = NetworkOptions {
            base_delay_us,
            jitter_us: draw(&mut rng, net.jitter_us),
            tail_ppm: draw(&mut rng, net.tail_ppm) as u32,
            drop_ppm: draw(&mut rng, net.drop_ppm) as u32,
            duplicate_ppm: draw(&mut rng, net.duplicate_ppm) as u32,
            link_capacity: draw(&mut rng, net.link_capacity).max(1) as u32,
            late_duplicate_ppm: 0,
            late_duplicate_ms: (0, 0),
        };
        // Drawn from its own stream, so scenarios without them keep their
        // draws.
        let mut late = seeds.subsystem("late-duplicates");
        let network = NetworkOptions {
            late_duplicate_ppm: draw(&mut late, net.late_duplicate_ppm) as u32,
            late_duplicate_ms: draw_range(&mut late, net.late_duplicate_ms),
            ..network
        };
        let disk = DiskOptions {
            sync_latency_us: draw_range(&mut rng, scenario.disk.sync_latency_us),
            read_latency_us: draw_range(&mut rng, scenario.disk.read_latency_us),
        };
        let clock = ClockOptions {
            drift_ppm: (0..n)
                .map(|_| {
                    let m = draw(&mut rng, scenario.clock.drift_ppm) as i64;
                    if draw(&mut rng, Span::new(0, 1)) == 0 {
                        -m
                    } else {
                        m
                    }
                })
                .collect(),
            offset_us: (0..n)
                .map(|_| draw(&mut rng, scenario.clock.offset_ms) * 1000)
                .collect(),
        };
        let w = &scenario.workload;
        let mix = Mix {
            read_modify_write: draw(&mut rng, w.mix.read_modify_write) as u32,
            blind_put: draw(&mut rng, w.mix.blind_put) as u32,
            delete: draw(&mut rng, w.mix.delete) as u32,
            read: draw(&mut rng, w.mix.read) as u32,
            // Drawn last, below, so the draws that came before them stay
            // what they were.
            stale_context: 0,
            hostile: 0,
        };
        let mut workload = WorkloadOptions {
            clients: draw(&mut rng, w.clients) as u32,
            keys: draw(&mut rng, w.keys) as u32,
            think_ms: draw_range(&mut rng, w.think_ms),
            value_len: draw(&mut rng, w.value_len).max(8) as u32,
            client_timeout_ms: w.client_timeout_ms,
            mix,
        };
        let f = &scenario.faults;
        let weights = NemesisWeights {
            crash: draw(&mut rng, f.mix.crash) as u32,
            clean_restart: draw(&mut rng, f.mix.clean_restart) as u32,
            partition: draw(&mut rng, f.mix.partition) as u32,
            isolate: draw(&mut rng, f.mix.isolate) as u32,
            one_way: draw(&mut rng, f.mix.one_way) as u32,
            clog: draw(&mut rng, f.mix.clog) as u32,
            heal: draw(&mut rng, f.mix.heal) as u32,
        };
        // Never take down so many nodes that a write quorum cannot form.
        let q = scenario.quorum;
        let cap = (n.saturating_sub(1) / 2)
            .max(1)
            .min(n.saturating_sub(q.w as u32).max(1));
        let faults = FaultOptions {
            interval_ms: draw_range(&mut rng, f.interval_ms),
            weights,
            require_crash: f.require_crash,
            require_partition: f.require_partition,
            max_down: (draw(&mut rng, f.max_down) as u32).clamp(1, cap),
            downtime_ms: draw_range(&mut rng, f.downtime_ms),
            partition_ms: draw_range(&mut rng, f.partition_ms),
            clog_delay_ms: draw_range(&mut rng, f.clog_delay_ms),
            clog_ms: draw_range(&mut rng, f.clog_ms),
            shutdown_bound_ms: f.shutdown_bound_ms,
        };
        workload.mix.stale_context = draw(&mut rng, w.mix.stale_context) as u32;
        workload.mix.hostile = draw(&mut rng, w.mix.hostile) as u32;
        if workload.mix.total() == 0 {
            workload.mix.read_modify_write = 1;
        }
        let mut options = Options {
            seed,
            scenario: scenario.name.clone(),
            nodes: n,
            releases: (0..n)
                .map(|i| scenario.release_of(i).release().version.to_string())
                .collect(),
            quorum: (q.n, q.r, q.w),
            network,
            disk,
            clock,
            workload,
            faults,
            safety_ms: scenario.safety_ms,
            liveness_ms: scenario.liveness_ms,
            deep: crate::atlas::derive(seed, scenario, swarm),
            hostile_ms: crate::hostile::derive(seed, &scenario.hostile_peers),
        };
        crate::world::fit_options(&mut options, scenario);
        options
    }
}

fn ms(us: u64) -> String {
    format!("{}.{:03}ms", us / 1000, us % 1000)
}

fn pct(ppm: u32) -> String {
    format!("{}.{:02}%", ppm / 10_000, (ppm % 10_000) / 100)
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, r, w) = self.quorum;
        writeln!(f, "seed: {} (0x{:016x})", self.seed, self.seed)?;
        writeln!(f, "scenario: {}", self.scenario)?;
        writeln!(f, "options:")?;
        writeln!(
            f,
            "  topology: {} nodes, releases [{}], N={n} R={r} W={w}",
            self.nodes,
            self.releases.join(", ")
        )?;
        let net = &self.network;
        let lo = net.base_delay_us.iter().copied().min().unwrap_or(0);
        let hi = net.base_delay_us.iter().copied().max().unwrap_or(0);
        writeln!(
            f,
            "  network: base delay {}..{}, jitter mean {}, slow path {}, drop {}, duplicate {}, link queue {}",
            ms(lo),
            ms(hi),
            ms(net.jitter_us),
            pct(net.tail_ppm),
            pct(net.drop_ppm),
            pct(net.duplicate_ppm),
            net.link_capacity
        )?;
        writeln!(
            f,
            "  disk: sync {}..{}, read {}..{}, unsynced writes lost on crash (journal prefix survives)",
            ms(self.disk.sync_latency_us.0),
            ms(self.disk.sync_latency_us.1),
            ms(self.disk.read_latency_us.0),
            ms(self.disk.read_latency_us.1)
        )?;
        writeln!(
            f,
            "  clocks: drift ppm {:?}, offsets ms {:?}",
            self.clock.drift_ppm,
            self.clock
                .offset_us
                .iter()
                .map(|o| o / 1000)
                .collect::<Vec<_>>()
        )?;
        let fo = &self.faults;
        let wt = fo.weights;
        writeln!(
            f,
            "  faults: nemesis every {}..{} ms, weights crash {} clean-restart {} partition {} isolate {} one-way {} clog {} heal {}",
            fo.interval_ms.0, fo.interval_ms.1, wt.crash, wt.clean_restart, wt.partition, wt.isolate, wt.one_way, wt.clog, wt.heal
        )?;
        writeln!(
            f,
            "          max down {}, downtime {}..{} ms, partitions {}..{} ms, clog +{}..{} ms for {}..{} ms{}{}",
            fo.max_down,
            fo.downtime_ms.0,
            fo.downtime_ms.1,
            fo.partition_ms.0,
            fo.partition_ms.1,
            fo.clog_delay_ms.0,
            fo.clog_delay_ms.1,
            fo.clog_ms.0,
            fo.clog_ms.1,
            if fo.require_crash { ", crash guaranteed" } else { "" },
            if fo.require_partition { ", partition guaranteed" } else { "" }
        )?;
        let wl = &self.workload;
        let t = wl.mix.total().max(1);
        writeln!(
            f,
            "  workload: {} clients, {} keys, think {}..{} ms, value {} B, client timeout {} ms, mix rmw {}% blind-put {}% delete {}% read {}% stale-context {}% hostile {}%",
            wl.clients,
            wl.keys,
            wl.think_ms.0,
            wl.think_ms.1,
            wl.value_len,
            wl.client_timeout_ms,
            wl.mix.read_modify_write * 100 / t,
            wl.mix.blind_put * 100 / t,
            wl.mix.delete * 100 / t,
            wl.mix.read * 100 / t,
            wl.mix.stale_context * 100 / t,
            wl.mix.hostile * 100 / t
        )?;
        if self.deep.any() {
            writeln!(f, "{}", self.deep)?;
        }
        if self.hostile_ms.1 > 0 {
            writeln!(
                f,
                "  hostile peers: a frame every {}-{} ms",
                self.hostile_ms.0, self.hostile_ms.1
            )?;
        }
        write!(
            f,
            "  phases: safety {} s, liveness bound {} s{}",
            self.safety_ms / 1000,
            self.liveness_ms / 1000,
            if self.deep.swarm {
                " (swarm: topology and quorum drawn by the seed)"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::builtin;

    #[test]
    fn options_are_a_function_of_the_seed() {
        let s = builtin("default").unwrap();
        let a = Options::derive(5, &s);
        let b = Options::derive(5, &s);
        assert_eq!(format!("{a}"), format!("{b}"));
        let c = Options::derive(6, &s);
        assert_ne!(format!("{a}"), format!("{c}"));
        assert!(a.faults.max_down >= 1 && a.faults.max_down <= 2);
        assert_eq!(a.network.base_delay_us.len(), 25);
    }
}
