//! Scenarios: the fixed shape of a run (cluster, quorum, phases) and the
//! ranges from which each seed draws its options.
//!
//! A [`Scenario`] derives serde so that scenario files can be loaded later;
//! the built-ins live in [`builtin`].

use cairn_core::version::ReleaseId;
use serde::{Deserialize, Serialize};

/// The most nodes a simulated cluster may have (links are kept in a 64-bit
/// matrix).
pub const MAX_NODES: u32 = 8;

/// An inclusive range of integers a seed draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub min: u64,
    pub max: u64,
}

impl Span {
    pub const fn new(min: u64, max: u64) -> Span {
        Span { min, max }
    }
    pub const fn fixed(v: u64) -> Span {
        Span { min: v, max: v }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumSpec {
    pub n: u8,
    pub r: u8,
    pub w: u8,
}

/// Relative weights of client operation kinds, each drawn from a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixSpec {
    /// Get, then Put with the returned context.
    pub read_modify_write: Span,
    /// Put with an empty context.
    pub blind_put: Span,
    /// Get, then Delete with the returned context.
    pub delete: Span,
    /// A plain Get.
    pub read: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub clients: Span,
    pub keys: Span,
    /// Pause between two operations of one client, in milliseconds.
    pub think_ms: Span,
    /// Size of a put value (at least 8: the write id).
    pub value_len: Span,
    /// A client gives up on a request after this long (indeterminate).
    pub client_timeout_ms: u64,
    pub mix: MixSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// One-way base delay of a link, in microseconds.
    pub base_delay_us: Span,
    /// Mean of the per-message jitter, in microseconds.
    pub jitter_us: Span,
    /// Probability (ppm) that a message takes a slow path (x10..x50 jitter).
    pub tail_ppm: Span,
    pub drop_ppm: Span,
    pub duplicate_ppm: Span,
    /// Messages in flight per directed link before further ones are dropped.
    pub link_capacity: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub sync_latency_us: Span,
    pub read_latency_us: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSpec {
    /// Rate error of each node's clock, parts per million (applied +/-).
    pub drift_ppm: Span,
    /// Offset of each node's clock, in milliseconds.
    pub offset_ms: Span,
}

/// Relative weights of nemesis actions, each drawn from a range. A zero
/// range disables the action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisMix {
    pub crash: Span,
    pub clean_restart: Span,
    pub partition: Span,
    pub isolate: Span,
    pub one_way: Span,
    pub clog: Span,
    pub heal: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Time between two nemesis actions, in milliseconds.
    pub interval_ms: Span,
    pub mix: NemesisMix,
    /// Every seed crashes at least one node.
    pub require_crash: bool,
    /// Every seed partitions the network at least once.
    pub require_partition: bool,
    /// Nodes down (crashed or shutting down) at once, at most.
    pub max_down: Span,
    /// How long a crashed node stays down, in milliseconds.
    pub downtime_ms: Span,
    /// How long a partition lasts unless replaced, in milliseconds.
    pub partition_ms: Span,
    /// Extra delay on a clogged link, in milliseconds, and how long it lasts.
    pub clog_delay_ms: Span,
    pub clog_ms: Span,
    /// A clean shutdown that has not completed by then becomes a crash.
    pub shutdown_bound_ms: u64,
}

/// Everything fixed about a run except its seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub nodes: u32,
    /// Release of each node (index into the release table). Empty: every node
    /// runs the current release.
    pub releases: Vec<ReleaseId>,
    pub quorum: QuorumSpec,
    pub ring_partitions: u16,
    pub vnodes: u16,
    pub workload: WorkloadSpec,
    pub network: NetworkSpec,
    pub disk: DiskSpec,
    pub clock: ClockSpec,
    pub faults: FaultSpec,
    /// Length of the safety phase, in milliseconds of simulated time.
    pub safety_ms: u64,
    /// Bound on the liveness phase (heal, drain, converge), in milliseconds.
    pub liveness_ms: u64,
}

impl Scenario {
    /// Checks the scenario; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(format!("nodes: {} is outside 1..={MAX_NODES}", self.nodes));
        }
        if !self.releases.is_empty() && self.releases.len() != self.nodes as usize {
            return Err(format!(
                "releases: {} entries for {} nodes",
                self.releases.len(),
                self.nodes
            ));
        }
        for r in &self.releases {
            if r.get().is_none() {
                return Err(format!("releases: unknown release index {}", r.0));
            }
        }
        let q = self.quorum;
        if q.n as u32 > self.nodes || q.r > q.n || q.w > q.n || q.r == 0 || q.w == 0 {
            return Err(format!(
                "quorum: n={} r={} w={} with {} nodes",
                q.n, q.r, q.w, self.nodes
            ));
        }
        if self.workload.clients.min == 0 || self.workload.keys.min == 0 {
            return Err("workload: needs at least one client and one key".into());
        }
        if self.workload.value_len.min < 8 {
            return Err("workload.value_len: must be at least 8 (the write id)".into());
        }
        if self.safety_ms == 0 || self.liveness_ms == 0 {
            return Err("safety_ms and liveness_ms must be positive".into());
        }
        Ok(())
    }

    pub fn release_of(&self, index: u32) -> ReleaseId {
        self.releases
            .get(index as usize)
            .copied()
            .unwrap_or_else(ReleaseId::current)
    }
}

/// The names of the built-in scenarios, in the order `scenarios` lists them.
pub const BUILTIN: &[&str] = &[
    "default",
    "partitions-heavy",
    "crash-storm",
    "steady",
    "quick",
];

/// A built-in scenario by name.
pub fn builtin(name: &str) -> Option<Scenario> {
    let base = default_scenario();
    let s = match name {
        "default" => base,
        "partitions-heavy" => Scenario {
            name: name.into(),
            description:
                "frequent symmetric, asymmetric and isolating partitions with clogging; no crashes"
                    .into(),
            faults: FaultSpec {
                interval_ms: Span::new(500, 3000),
                mix: NemesisMix {
                    crash: Span::fixed(0),
                    clean_restart: Span::fixed(0),
                    partition: Span::new(2, 6),
                    isolate: Span::new(1, 4),
                    one_way: Span::new(1, 4),
                    clog: Span::new(1, 4),
                    heal: Span::new(1, 3),
                },
                require_crash: false,
                ..base.faults.clone()
            },
            ..base
        },
        "crash-storm" => Scenario {
            name: name.into(),
            description: "crashes and clean restarts back to back, up to two nodes down at once"
                .into(),
            faults: FaultSpec {
                interval_ms: Span::new(300, 2000),
                mix: NemesisMix {
                    crash: Span::new(3, 8),
                    clean_restart: Span::new(1, 4),
                    partition: Span::new(0, 1),
                    isolate: Span::new(0, 1),
                    one_way: Span::fixed(0),
                    clog: Span::new(0, 1),
                    heal: Span::fixed(1),
                },
                max_down: Span::new(1, 2),
                downtime_ms: Span::new(100, 4000),
                ..base.faults.clone()
            },
            ..base
        },
        "steady" => Scenario {
            name: name.into(),
            description: "no faults at all: a baseline for throughput and convergence".into(),
            network: NetworkSpec {
                drop_ppm: Span::fixed(0),
                duplicate_ppm: Span::fixed(0),
                ..base.network.clone()
            },
            faults: FaultSpec {
                mix: NemesisMix {
                    crash: Span::fixed(0),
                    clean_restart: Span::fixed(0),
                    partition: Span::fixed(0),
                    isolate: Span::fixed(0),
                    one_way: Span::fixed(0),
                    clog: Span::fixed(0),
                    heal: Span::fixed(0),
                },
                require_crash: false,
                require_partition: false,
                ..base.faults.clone()
            },
            ..base
        },
        "quick" => Scenario {
            name: name.into(),
            description:
                "the default fault mix over a 12 s safety phase (for tests and smoke runs)".into(),
            safety_ms: 12_000,
            faults: FaultSpec {
                interval_ms: Span::new(500, 2500),
                ..base.faults.clone()
            },
            ..base
        },
        _ => return None,
    };
    Some(s)
}

fn default_scenario() -> Scenario {
    Scenario {
        name: "default".into(),
        description: "5 nodes, N=3 R=2 W=2, 60 s of continuous load with crashes, clean restarts, partitions and clogging in every seed".into(),
        nodes: 5,
        releases: Vec::new(),
        quorum: QuorumSpec { n: 3, r: 2, w: 2 },
        ring_partitions: 64,
        vnodes: 16,
        workload: WorkloadSpec {
            clients: Span::new(6, 10),
            keys: Span::new(8, 16),
            think_ms: Span::new(20, 150),
            value_len: Span::new(8, 48),
            client_timeout_ms: 3000,
            mix: MixSpec {
                read_modify_write: Span::new(30, 70),
                blind_put: Span::new(0, 20),
                delete: Span::new(3, 15),
                read: Span::new(5, 30),
            },
        },
        network: NetworkSpec {
            base_delay_us: Span::new(100, 1500),
            jitter_us: Span::new(50, 2000),
            tail_ppm: Span::new(0, 20_000),
            drop_ppm: Span::new(0, 20_000),
            duplicate_ppm: Span::new(0, 10_000),
            link_capacity: Span::new(256, 2048),
        },
        disk: DiskSpec {
            sync_latency_us: Span::new(100, 5000),
            read_latency_us: Span::new(50, 2000),
        },
        clock: ClockSpec {
            drift_ppm: Span::new(0, 200),
            offset_ms: Span::new(0, 5000),
        },
        faults: FaultSpec {
            interval_ms: Span::new(1000, 6000),
            mix: NemesisMix {
                crash: Span::new(1, 5),
                clean_restart: Span::new(0, 3),
                partition: Span::new(1, 4),
                isolate: Span::new(0, 3),
                one_way: Span::new(0, 3),
                clog: Span::new(0, 3),
                heal: Span::new(1, 3),
            },
            require_crash: true,
            require_partition: true,
            max_down: Span::new(1, 2),
            downtime_ms: Span::new(200, 8000),
            partition_ms: Span::new(500, 10_000),
            clog_delay_ms: Span::new(20, 800),
            clog_ms: Span::new(500, 8000),
            shutdown_bound_ms: 5000,
        },
        safety_ms: 60_000,
        liveness_ms: 60_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_named_after_themselves() {
        for name in BUILTIN {
            let s = builtin(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(&s.name, name);
            s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(builtin("nope").is_none());
    }

    #[test]
    fn scenario_round_trips_through_json() {
        let s = builtin("default").unwrap();
        let text = serde_json::to_string(&s).unwrap();
        let back: Scenario = serde_json::from_str(&text).unwrap();
        assert_eq!(s, back);
    }
}
