//! Scenarios: the fixed shape of a run (cluster, quorum, phases), the ranges
//! from which each seed draws its options, an optional explicit schedule of
//! faults and client operations, and the outcome the scenario expects.
//!
//! Scenarios are written as TOML files (see `scenarios/README.md` for the
//! format); the built-in ones live in `scenarios/` and are embedded in the
//! binary by [`crate::scenario_file`]. Every field but `name` and
//! `description` may be left out of a file and then takes the value of the
//! `default` scenario, which [`Scenario::default`] spells out.

use std::fmt;

use cairn_core::config::Timing;
use cairn_core::types::Duration;
use cairn_core::version::ReleaseId;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::report::Outcome;

/// The most nodes a simulated cluster may have (links are kept in a 64-bit
/// matrix).
pub const MAX_NODES: u32 = 8;

/// Client and key indices a script may name (a script brings its clients
/// and keys into being: a seed that draws fewer gets more).
pub const MAX_SCRIPT_CLIENTS: u32 = 64;
pub const MAX_SCRIPT_KEYS: u32 = 256;

/// An inclusive range of integers a seed draws from.
///
/// In a file: an integer (a fixed value), a `[min, max]` pair, or a table
/// `{ min = .., max = .. }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub const fn is_zero(&self) -> bool {
        self.min == 0 && self.max == 0
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.min == self.max {
            s.serialize_u64(self.min)
        } else {
            [self.min, self.max].serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a [min, max] pair of integers")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                Ok(Span::fixed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                u64::try_from(v)
                    .map(Span::fixed)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Span, A::Error> {
                let min: u64 = a
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("a [min, max] pair needs two integers"))?;
                let max: u64 = a
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("a [min, max] pair needs two integers"))?;
                if a.next_element::<u64>()?.is_some() {
                    return Err(de::Error::custom(
                        "a [min, max] pair has exactly two integers",
                    ));
                }
                checked(min, max)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Span, A::Error> {
                let (mut min, mut max) = (None, None);
                while let Some(k) = a.next_key::<String>()? {
                    match k.as_str() {
                        "min" => min = Some(a.next_value::<u64>()?),
                        "max" => max = Some(a.next_value::<u64>()?),
                        other => {
                            return Err(de::Error::unknown_field(other, &["min", "max"]));
                        }
                    }
                }
                let min = min.ok_or_else(|| de::Error::missing_field("min"))?;
                let max = max.ok_or_else(|| de::Error::missing_field("max"))?;
                checked(min, max)
            }
        }
        fn checked<E: de::Error>(min: u64, max: u64) -> Result<Span, E> {
            if min > max {
                return Err(E::custom(format!("min {min} is greater than max {max}")));
            }
            Ok(Span { min, max })
        }
        d.deserialize_any(V)
    }
}

/// A point or length of simulated time, kept in microseconds and written in
/// files as milliseconds: an integer, or a float for sub-millisecond
/// precision (`1234.567` is 1 234 567 µs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ms(pub u64);

impl Ms {
    pub const fn from_millis(ms: u64) -> Ms {
        Ms(ms * 1000)
    }
    pub const fn micros(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (self.0 / 1000) * 1000 == self.0 {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}.{:03}", self.0 / 1000, self.0 % 1000)
        }
    }
}

impl Serialize for Ms {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if (self.0 / 1000) * 1000 == self.0 {
            s.serialize_u64(self.0 / 1000)
        } else {
            s.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

impl<'de> Deserialize<'de> for Ms {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Ms, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Ms;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of milliseconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ms, E> {
                v.checked_mul(1000)
                    .map(Ms)
                    .ok_or_else(|| E::custom("too large"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ms, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{v} is negative"))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ms, E> {
                if !(0.0..1e15).contains(&v) {
                    return Err(E::custom(format!("{v} is out of range")));
                }
                Ok(Ms((v * 1000.0).round() as u64))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuorumSpec {
    pub n: u8,
    pub r: u8,
    pub w: u8,
}

impl Default for QuorumSpec {
    fn default() -> Self {
        QuorumSpec { n: 3, r: 2, w: 2 }
    }
}

/// Relative weights of client operation kinds, each drawn from a range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixSpec {
    /// Get, then Put with the returned context.
    pub read_modify_write: Span,
    /// Put with an empty context.
    pub blind_put: Span,
    /// Get, then Delete with the returned context.
    pub delete: Span,
    /// A plain Get.
    pub read: Span,
    /// A put with a context the client read from the same key long before
    /// (the oldest it holds): legitimate, and must be accepted.
    pub stale_context: Span,
    /// A hostile write: its context is forged (made-up counters and tag),
    /// read from another key, truncated, or in the format before contexts
    /// were authenticated. It must be refused.
    pub hostile: Span,
}

impl Default for MixSpec {
    fn default() -> Self {
        MixSpec {
            read_modify_write: Span::new(30, 70),
            blind_put: Span::new(0, 20),
            delete: Span::new(3, 15),
            read: Span::new(5, 30),
            stale_context: Span::new(1, 8),
            hostile: Span::new(1, 8),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            clients: Span::new(6, 10),
            keys: Span::new(8, 16),
            think_ms: Span::new(20, 150),
            value_len: Span::new(8, 48),
            client_timeout_ms: 3000,
            mix: MixSpec::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Probability (ppm) that a message is delivered once more, late (a copy
    /// stuck in a queue, resent over a new connection); 0 by default.
    #[serde(skip_serializing_if = "Span::is_zero")]
    pub late_duplicate_ppm: Span,
    /// How late such a copy arrives, in milliseconds after it was sent.
    #[serde(skip_serializing_if = "late_default")]
    pub late_duplicate_ms: Span,
}

fn late_default(s: &Span) -> bool {
    *s == Span::new(2_000, 5_000)
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            base_delay_us: Span::new(100, 1500),
            jitter_us: Span::new(50, 2000),
            tail_ppm: Span::new(0, 20_000),
            drop_ppm: Span::new(0, 20_000),
            duplicate_ppm: Span::new(0, 10_000),
            late_duplicate_ppm: Span::fixed(0),
            late_duplicate_ms: Span::new(2_000, 5_000),
            link_capacity: Span::new(256, 2048),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskSpec {
    pub sync_latency_us: Span,
    pub read_latency_us: Span,
}

impl Default for DiskSpec {
    fn default() -> Self {
        DiskSpec {
            sync_latency_us: Span::new(100, 5000),
            read_latency_us: Span::new(50, 2000),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockSpec {
    /// Rate error of each node's clock, parts per million (applied +/-).
    pub drift_ppm: Span,
    /// Offset of each node's clock, in milliseconds.
    pub offset_ms: Span,
}

impl Default for ClockSpec {
    fn default() -> Self {
        ClockSpec {
            drift_ppm: Span::new(0, 200),
            offset_ms: Span::new(0, 5000),
        }
    }
}

/// Relative weights of nemesis actions, each drawn from a range. A zero
/// range disables the action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NemesisMix {
    pub crash: Span,
    pub clean_restart: Span,
    pub partition: Span,
    pub isolate: Span,
    pub one_way: Span,
    pub clog: Span,
    pub heal: Span,
}

impl NemesisMix {
    /// Every weight zero: no random faults.
    pub fn none() -> NemesisMix {
        NemesisMix {
            crash: Span::fixed(0),
            clean_restart: Span::fixed(0),
            partition: Span::fixed(0),
            isolate: Span::fixed(0),
            one_way: Span::fixed(0),
            clog: Span::fixed(0),
            heal: Span::fixed(0),
        }
    }
}

impl Default for NemesisMix {
    fn default() -> Self {
        NemesisMix {
            crash: Span::new(1, 5),
            clean_restart: Span::new(0, 3),
            partition: Span::new(1, 4),
            isolate: Span::new(0, 3),
            one_way: Span::new(0, 3),
            clog: Span::new(0, 3),
            heal: Span::new(1, 3),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            interval_ms: Span::new(1000, 6000),
            mix: NemesisMix::default(),
            require_crash: true,
            require_partition: true,
            max_down: Span::new(1, 2),
            downtime_ms: Span::new(200, 8000),
            partition_ms: Span::new(500, 10_000),
            clog_delay_ms: Span::new(20, 800),
            clog_ms: Span::new(500, 8000),
            shutdown_bound_ms: 5000,
        }
    }
}

/// Overrides of the nodes' limits (`cairn_core::config::Limits`), small
/// enough for a run to reach them. Left out: core's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSpec {
    /// Hints a node keeps; more are dropped (anti-entropy repairs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_hints: Option<usize>,
    /// Siblings a write may leave; one that would leave more is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_siblings: Option<usize>,
    /// Messages queued for a peer not yet handshaken; the oldest go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_peer_queue: Option<usize>,
}

impl LimitsSpec {
    pub fn is_empty(&self) -> bool {
        *self == LimitsSpec::default()
    }

    /// Applies the overrides to a node's limits.
    pub fn apply(&self, l: &mut cairn_core::Limits) {
        if let Some(v) = self.max_hints {
            l.max_hints = v;
        }
        if let Some(v) = self.max_siblings {
            l.max_siblings = v;
        }
        if let Some(v) = self.max_peer_queue {
            l.max_peer_queue = v;
        }
    }
}

/// Overrides of the nodes' timers (`cairn_core::config::Timing`), in
/// milliseconds. Left out: core's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint_retry_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_repair_window_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gossip_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_down_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_entropy_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tombstone_grace_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reap_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_retry_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_timeout_ms: Option<u64>,
}

impl TimingSpec {
    pub fn is_empty(&self) -> bool {
        *self == TimingSpec::default()
    }

    /// Applies the overrides to a node's timers.
    pub fn apply(&self, t: &mut Timing) {
        let set = |slot: &mut Duration, v: Option<u64>| {
            if let Some(ms) = v {
                *slot = Duration::from_millis(ms);
            }
        };
        set(&mut t.tick, self.tick_ms);
        set(&mut t.request_timeout, self.request_timeout_ms);
        set(&mut t.hint_after, self.hint_after_ms);
        set(&mut t.hint_retry, self.hint_retry_ms);
        set(&mut t.read_repair_window, self.read_repair_window_ms);
        set(&mut t.gossip_interval, self.gossip_interval_ms);
        set(&mut t.peer_down_after, self.peer_down_after_ms);
        set(&mut t.anti_entropy_interval, self.anti_entropy_interval_ms);
        set(&mut t.tombstone_grace, self.tombstone_grace_ms);
        set(&mut t.reap_interval, self.reap_interval_ms);
        set(&mut t.handshake_retry, self.handshake_retry_ms);
        set(&mut t.probe_timeout, self.probe_timeout_ms);
    }

    fn fields(&self) -> [(&'static str, Option<u64>); 12] {
        [
            ("tick_ms", self.tick_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("hint_after_ms", self.hint_after_ms),
            ("hint_retry_ms", self.hint_retry_ms),
            ("read_repair_window_ms", self.read_repair_window_ms),
            ("gossip_interval_ms", self.gossip_interval_ms),
            ("peer_down_after_ms", self.peer_down_after_ms),
            ("anti_entropy_interval_ms", self.anti_entropy_interval_ms),
            ("tombstone_grace_ms", self.tombstone_grace_ms),
            ("reap_interval_ms", self.reap_interval_ms),
            ("handshake_retry_ms", self.handshake_retry_ms),
            ("probe_timeout_ms", self.probe_timeout_ms),
        ]
    }
}

/// What an explicit fault event does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAction {
    /// Crash `node`; it restarts after `down_ms`.
    Crash,
    /// Shut `node` down cleanly; it starts again `down_ms` after it stopped.
    CleanRestart,
    /// Cut the nodes of `side` off from the rest (both directions) for
    /// `for_ms`.
    Partition,
    /// Cut `node` off from every other node for `for_ms`.
    Isolate,
    /// Block the directed `links` ([from, to] pairs) for `for_ms`.
    OneWay,
    /// Delay every link to and from `node` by `delay_ms` for `for_ms`.
    Clog,
    /// Heal every partition and clog.
    Heal,
}

impl FaultAction {
    pub fn name(self) -> &'static str {
        match self {
            FaultAction::Crash => "crash",
            FaultAction::CleanRestart => "clean-restart",
            FaultAction::Partition => "partition",
            FaultAction::Isolate => "isolate",
            FaultAction::OneWay => "one-way",
            FaultAction::Clog => "clog",
            FaultAction::Heal => "heal",
        }
    }
}

/// One timed fault of an explicit schedule. Nodes are numbered from 1, as
/// in traces (`n1`, `n2`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultEvent {
    /// When, from the start of the run (only the safety phase has faults).
    pub at_ms: Ms,
    pub action: FaultAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<(u32, u32)>,
    /// Crash: time down before the restart. Clean restart: time between the
    /// end of the shutdown and the start. Left out: drawn from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_ms: Option<Ms>,
    /// Partition, isolate, one-way, clog: how long the fault lasts. Left
    /// out: drawn from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<Ms>,
    /// Clog: the extra delay. Left out: drawn from the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<Ms>,
}

impl FaultEvent {
    pub fn new(at_ms: Ms, action: FaultAction) -> FaultEvent {
        FaultEvent {
            at_ms,
            action,
            node: None,
            side: Vec::new(),
            links: Vec::new(),
            down_ms: None,
            for_ms: None,
            delay_ms: None,
        }
    }
}

/// A client operation of an explicit script.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpName {
    /// Get, then Put with the returned context.
    Rmw,
    /// Put with an empty context.
    Put,
    /// Get, then Delete with the returned context.
    Delete,
    /// A plain Get.
    Read,
    /// Put with the oldest context the client holds for the key (an rmw
    /// when it holds none).
    Stale,
    /// Put (or delete) with a forged context: counters far beyond what the
    /// other nodes issued, and a made-up tag.
    Forged,
    /// Get another key, then put this one with that key's context.
    Replayed,
    /// Get, then put with the returned context cut short.
    Truncated,
    /// Put with a forged context in the format before contexts were
    /// authenticated.
    OldFormat,
}

/// One operation of an explicit client script. With a script, clients do
/// exactly what it says (and nothing drawn from the seed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientOp {
    /// Not before this time (a client runs one operation at a time: a busy
    /// client starts it when the previous one is done).
    pub at_ms: Ms,
    /// Client index, from 0.
    pub client: u32,
    pub op: OpName,
    /// Key index, from 0 (`key-00`, `key-01`, ...).
    pub key: u32,
    /// The node the (first) request goes to, from 1; another running node
    /// if that one is down.
    pub node: u32,
    /// The node the write of an rmw or delete goes to (default: `node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then_node: Option<u32>,
}

/// The kind of outcome a scenario expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpectedOutcome {
    #[default]
    Pass,
    Safety,
    Liveness,
    Panic,
}

/// The outcome a scenario expects of every seed it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Expect {
    pub outcome: ExpectedOutcome,
    /// For `safety`: the oracle that must fail (e.g. `ack-durable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oracle: Option<String>,
}

impl Expect {
    pub fn is_pass(&self) -> bool {
        self.outcome == ExpectedOutcome::Pass
    }

    /// Expects the same kind of failure (and the same oracle) as `outcome`.
    pub fn failure_like(outcome: &Outcome) -> Expect {
        match outcome {
            Outcome::Pass => Expect::default(),
            Outcome::Safety(v) => Expect {
                outcome: ExpectedOutcome::Safety,
                oracle: Some(v.oracle.to_string()),
            },
            Outcome::Liveness(_) => Expect {
                outcome: ExpectedOutcome::Liveness,
                oracle: None,
            },
            Outcome::Panic(_) => Expect {
                outcome: ExpectedOutcome::Panic,
                oracle: None,
            },
        }
    }

    /// Whether `outcome` is what this expects.
    pub fn matches(&self, outcome: &Outcome) -> bool {
        match (self.outcome, outcome) {
            (ExpectedOutcome::Pass, Outcome::Pass) => true,
            (ExpectedOutcome::Safety, Outcome::Safety(v)) => match &self.oracle {
                None => true,
                Some(o) => o == v.oracle,
            },
            (ExpectedOutcome::Liveness, Outcome::Liveness(_)) => true,
            (ExpectedOutcome::Panic, Outcome::Panic(_)) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.outcome, &self.oracle) {
            (ExpectedOutcome::Pass, _) => f.write_str("pass"),
            (ExpectedOutcome::Safety, Some(o)) => write!(f, "safety violation [{o}]"),
            (ExpectedOutcome::Safety, None) => f.write_str("safety violation"),
            (ExpectedOutcome::Liveness, _) => f.write_str("liveness failure"),
            (ExpectedOutcome::Panic, _) => f.write_str("panic"),
        }
    }
}

/// Everything fixed about a run except its seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// One line, shown by `cairn-sim scenarios`.
    pub description: String,
    #[serde(default = "defaults::nodes")]
    pub nodes: u32,
    /// Release of each node (index into the release table; in files, the
    /// release's version, e.g. `"0.2.0"`). Empty: every node runs the current
    /// release.
    #[serde(default, with = "release_names")]
    pub releases: Vec<ReleaseId>,
    #[serde(default)]
    pub quorum: QuorumSpec,
    #[serde(default = "defaults::ring_partitions")]
    pub ring_partitions: u16,
    #[serde(default = "defaults::vnodes")]
    pub vnodes: u16,
    #[serde(default)]
    pub workload: WorkloadSpec,
    #[serde(default)]
    pub network: NetworkSpec,
    #[serde(default)]
    pub disk: DiskSpec,
    #[serde(default)]
    pub clock: ClockSpec,
    #[serde(default)]
    pub faults: FaultSpec,
    /// Length of the safety phase, in milliseconds of simulated time.
    #[serde(default = "defaults::safety_ms")]
    pub safety_ms: u64,
    /// Bound on the liveness phase (heal, drain, converge), in milliseconds.
    #[serde(default = "defaults::liveness_ms")]
    pub liveness_ms: u64,
    /// Overrides of the nodes' timers.
    #[serde(default, skip_serializing_if = "TimingSpec::is_empty")]
    pub timing: TimingSpec,
    /// Overrides of the nodes' limits.
    #[serde(default, skip_serializing_if = "LimitsSpec::is_empty")]
    pub limits: LimitsSpec,
    /// Disk faults under the fault atlas (see [`crate::atlas`]).
    #[serde(
        default,
        skip_serializing_if = "crate::atlas::DiskFaultSpec::is_default"
    )]
    pub disk_faults: crate::atlas::DiskFaultSpec,
    /// Clock steps forward and backward.
    #[serde(
        default,
        skip_serializing_if = "crate::atlas::ClockStepSpec::is_default"
    )]
    pub clock_steps: crate::atlas::ClockStepSpec,
    /// Frames no honest peer sends (see [`crate::hostile`]).
    #[serde(
        default,
        skip_serializing_if = "crate::hostile::HostileSpec::is_default"
    )]
    pub hostile_peers: crate::hostile::HostileSpec,
    /// Swarm topology: each seed draws its cluster size and strict quorum.
    #[serde(default, skip_serializing_if = "crate::atlas::SwarmSpec::is_default")]
    pub swarm: crate::atlas::SwarmSpec,
    /// Planted bugs switched on in every node (see `cairn-sim scenarios`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planted_bugs: Vec<String>,
    /// Seeds this scenario is known for (regressions and canaries: the
    /// seeds to replay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<u64>,
    /// Explicit faults, on top of any random ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<FaultEvent>,
    /// Explicit client operations; when present (even empty) the clients run
    /// only these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Vec<ClientOp>>,
    #[serde(default)]
    pub expect: Expect,
    /// A version scenario's orchestration (see [`crate::upgrade`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::upgrade::UpgradeSpec>,
}

mod defaults {
    pub fn nodes() -> u32 {
        5
    }
    pub fn ring_partitions() -> u16 {
        64
    }
    pub fn vnodes() -> u16 {
        16
    }
    pub fn safety_ms() -> u64 {
        60_000
    }
    pub fn liveness_ms() -> u64 {
        60_000
    }
}

/// Releases as version strings in files (indices are accepted too).
mod release_names {
    use cairn_core::version::{ReleaseId, RELEASES};
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ids: &[ReleaseId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(|r| r.version()))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Version(String),
        Index(u8),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ReleaseId>, D::Error> {
        let raw = Vec::<Either>::deserialize(d)?;
        raw.into_iter()
            .map(|e| match e {
                Either::Version(v) => ReleaseId::by_version(&v).ok_or_else(|| {
                    let known: Vec<&str> = RELEASES.iter().map(|r| r.version).collect();
                    de::Error::custom(format!(
                        "unknown release {v:?}; known: {}",
                        known.join(", ")
                    ))
                }),
                Either::Index(i) => Ok(ReleaseId(i)),
            })
            .collect()
    }
}

impl Default for Scenario {
    /// The `default` scenario: 5 nodes, N=3 R=2 W=2, 60 s of load with
    /// every kind of fault.
    fn default() -> Self {
        Scenario {
            name: "default".into(),
            description: "5 nodes, N=3 R=2 W=2, 60 s of continuous load with crashes, clean restarts, partitions and clogging in every seed".into(),
            nodes: defaults::nodes(),
            releases: Vec::new(),
            quorum: QuorumSpec::default(),
            ring_partitions: defaults::ring_partitions(),
            vnodes: defaults::vnodes(),
            workload: WorkloadSpec::default(),
            network: NetworkSpec::default(),
            disk: DiskSpec::default(),
            clock: ClockSpec::default(),
            faults: FaultSpec::default(),
            safety_ms: defaults::safety_ms(),
            liveness_ms: defaults::liveness_ms(),
            timing: TimingSpec::default(),
            limits: LimitsSpec::default(),
            disk_faults: Default::default(),
            clock_steps: Default::default(),
            hostile_peers: Default::default(),
            swarm: Default::default(),
            planted_bugs: Vec::new(),
            seeds: Vec::new(),
            schedule: Vec::new(),
            script: None,
            expect: Expect::default(),
            upgrade: None,
        }
    }
}

impl Scenario {
    /// Checks the scenario. The message starts with the path of the
    /// offending field (`quorum.w: ...`), which file errors use to point at
    /// the line.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.description.contains('\n') {
            return Err("description: must be one line".into());
        }
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
        if let Some(u) = &self.upgrade {
            u.validate()?;
        }
        let q = self.quorum;
        for (f, v) in [("n", q.n), ("r", q.r), ("w", q.w)] {
            if v == 0 {
                return Err(format!("quorum.{f}: must be at least 1"));
            }
        }
        if q.n as u32 > self.nodes {
            return Err(format!(
                "quorum.n: {} exceeds the {} nodes",
                q.n, self.nodes
            ));
        }
        if q.r > q.n {
            return Err(format!("quorum.r: {} exceeds n={}", q.r, q.n));
        }
        if q.w > q.n {
            return Err(format!("quorum.w: {} exceeds n={}", q.w, q.n));
        }
        if self.ring_partitions == 0 {
            return Err("ring_partitions: must be at least 1".into());
        }
        if self.vnodes == 0 {
            return Err("vnodes: must be at least 1".into());
        }
        if self.workload.clients.min == 0 {
            return Err("workload.clients: needs at least one client".into());
        }
        if self.workload.keys.min == 0 {
            return Err("workload.keys: needs at least one key".into());
        }
        if self.workload.value_len.min < 8 {
            return Err("workload.value_len: must be at least 8 (the write id)".into());
        }
        if self.safety_ms == 0 {
            return Err("safety_ms: must be positive".into());
        }
        if self.liveness_ms == 0 {
            return Err("liveness_ms: must be positive".into());
        }
        for (f, v) in self.timing.fields() {
            if v == Some(0) {
                return Err(format!("timing.{f}: must be positive"));
            }
        }
        // What the nodes themselves would refuse (strict quorums, a
        // tombstone grace that outlasts requests, ...), said before a run.
        let members: Vec<cairn_core::NodeId> = (1..=self.nodes).map(cairn_core::NodeId).collect();
        let mut cfg = cairn_core::NodeConfig::new(members[0], members, 0);
        cfg.quorum = cairn_core::Quorum {
            n: q.n,
            r: q.r,
            w: q.w,
        };
        cfg.partitions = self.ring_partitions;
        cfg.vnodes = self.vnodes;
        self.timing.apply(&mut cfg.timing);
        self.limits.apply(&mut cfg.limits);
        if let Err(e) = cfg.validate() {
            return Err(format!(
                "the nodes would refuse this scenario's configuration: {e}"
            ));
        }
        for b in &self.planted_bugs {
            if crate::planted::find(b).is_none() {
                return Err(format!(
                    "planted_bugs: unknown planted bug {b:?}; known: {}",
                    crate::planted::names().join(", ")
                ));
            }
        }
        if self.expect.oracle.is_some() && self.expect.outcome != ExpectedOutcome::Safety {
            return Err("expect.oracle: only a safety outcome names an oracle".into());
        }
        for (i, e) in self.schedule.iter().enumerate() {
            self.validate_event(e)
                .map_err(|(field, msg)| format!("schedule[{i}].{field}: {msg}"))?;
        }
        for (i, op) in self.script.iter().flatten().enumerate() {
            let bad = |field: &str, msg: String| Err(format!("script[{i}].{field}: {msg}"));
            if op.client >= MAX_SCRIPT_CLIENTS {
                return bad(
                    "client",
                    format!("{} is not below {MAX_SCRIPT_CLIENTS}", op.client),
                );
            }
            if op.key >= MAX_SCRIPT_KEYS {
                return bad("key", format!("{} is not below {MAX_SCRIPT_KEYS}", op.key));
            }
            if op.node == 0 || op.node > self.nodes {
                return bad(
                    "node",
                    format!("no node {} (nodes are 1..={})", op.node, self.nodes),
                );
            }
            if let Some(n) = op.then_node {
                if n == 0 || n > self.nodes {
                    return bad(
                        "then_node",
                        format!("no node {n} (nodes are 1..={})", self.nodes),
                    );
                }
            }
        }
        Ok(())
    }

    fn validate_event(&self, e: &FaultEvent) -> Result<(), (&'static str, String)> {
        let nodes = self.nodes;
        let node_ok = |n: u32| n >= 1 && n <= nodes;
        if e.at_ms.micros() >= self.safety_ms * 1000 {
            return Err((
                "at_ms",
                format!(
                    "{} ms is not within the safety phase ({} ms)",
                    e.at_ms, self.safety_ms
                ),
            ));
        }
        let needs_node = matches!(
            e.action,
            FaultAction::Crash
                | FaultAction::CleanRestart
                | FaultAction::Isolate
                | FaultAction::Clog
        );
        match e.node {
            None if needs_node => {
                return Err(("node", format!("{} needs a node", e.action.name())))
            }
            Some(_) if !needs_node => {
                return Err(("node", format!("{} takes no node", e.action.name())))
            }
            Some(n) if !node_ok(n) => {
                return Err(("node", format!("no node {n} (nodes are 1..={nodes})")))
            }
            _ => {}
        }
        if e.action == FaultAction::Partition {
            if e.side.is_empty() || e.side.len() as u32 >= nodes {
                return Err((
                    "side",
                    format!("a partition needs a side of 1..{nodes} nodes"),
                ));
            }
            if let Some(&n) = e.side.iter().find(|&&n| !node_ok(n)) {
                return Err(("side", format!("no node {n} (nodes are 1..={nodes})")));
            }
        } else if !e.side.is_empty() {
            return Err(("side", format!("{} takes no side", e.action.name())));
        }
        if e.action == FaultAction::OneWay {
            if e.links.is_empty() {
                return Err(("links", "one-way needs [from, to] links".into()));
            }
            for &(a, b) in &e.links {
                if !node_ok(a) || !node_ok(b) || a == b {
                    return Err(("links", format!("bad link [{a}, {b}]")));
                }
            }
        } else if !e.links.is_empty() {
            return Err(("links", format!("{} takes no links", e.action.name())));
        }
        let takes_down = matches!(e.action, FaultAction::Crash | FaultAction::CleanRestart);
        if e.down_ms.is_some() && !takes_down {
            return Err(("down_ms", format!("{} takes no down_ms", e.action.name())));
        }
        let takes_for = matches!(
            e.action,
            FaultAction::Partition | FaultAction::Isolate | FaultAction::OneWay | FaultAction::Clog
        );
        if e.for_ms.is_some() && !takes_for {
            return Err(("for_ms", format!("{} takes no for_ms", e.action.name())));
        }
        if e.delay_ms.is_some() && e.action != FaultAction::Clog {
            return Err(("delay_ms", format!("{} takes no delay_ms", e.action.name())));
        }
        Ok(())
    }

    pub fn release_of(&self, index: u32) -> ReleaseId {
        self.releases
            .get(index as usize)
            .copied()
            .unwrap_or_else(ReleaseId::current)
    }

    /// The planted bugs this scenario switches on.
    pub fn planted(&self) -> Vec<crate::planted::PlantedBug> {
        self.planted_bugs
            .iter()
            .filter_map(|b| crate::planted::find(b))
            .collect()
    }

    /// Whether the scenario replays an explicit client script.
    pub fn is_scripted(&self) -> bool {
        self.script.is_some()
    }
}

/// The names of the built-in scenarios, in the order `scenarios` lists them:
/// the files under `scenarios/` (see [`crate::scenario_file::BUILTIN_FILES`])
/// and then any defined below in Rust.
pub fn builtin_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = crate::scenario_file::builtin_file_names();
    for n in RUST_BUILTIN {
        if !names.contains(n) {
            names.push(n);
        }
    }
    names
}

/// The names of the five original built-in scenarios (kept for callers that
/// want a fixed list; [`builtin_names`] has them all).
pub const BUILTIN: &[&str] = &[
    "default",
    "partitions-heavy",
    "crash-storm",
    "steady",
    "quick",
];

/// Built-in scenarios still defined in Rust (not yet written as files).
const RUST_BUILTIN: &[&str] = crate::upgrade::SCENARIOS;

/// A built-in scenario by name: an embedded file, or one defined in Rust.
pub fn builtin(name: &str) -> Option<Scenario> {
    if let Some(s) = crate::scenario_file::builtin_file(name) {
        return Some(s);
    }
    rust_builtin(name)
}

/// Built-in scenarios defined as Rust values, for scenarios not (yet)
/// written as files: add a match arm returning
/// `Some(Scenario { name: name.into(), ..Scenario::default() })` and the
/// name to [`RUST_BUILTIN`]. The embedded files take precedence.
fn rust_builtin(name: &str) -> Option<Scenario> {
    crate::upgrade::builtin(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_named_after_themselves() {
        for name in builtin_names() {
            let s = builtin(name).unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(&s.name, name);
            s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in BUILTIN {
            assert!(builtin(name).is_some(), "{name} missing");
        }
        assert!(builtin("nope").is_none());
    }

    #[test]
    fn scenario_round_trips_through_json() {
        for name in builtin_names() {
            let s = builtin(name).unwrap();
            let text = serde_json::to_string(&s).unwrap();
            let back: Scenario = serde_json::from_str(&text).unwrap();
            assert_eq!(s, back);
        }
    }

    #[test]
    fn the_default_file_is_the_default_scenario() {
        assert_eq!(builtin("default").unwrap(), Scenario::default());
    }

    #[test]
    fn spans_and_millis_parse_in_every_form() {
        #[derive(Deserialize)]
        struct T {
            a: Span,
            b: Span,
            c: Span,
            d: Ms,
            e: Ms,
        }
        let t: T =
            toml::from_str("a = 5\nb = [1, 9]\nc = { min = 2, max = 3 }\nd = 12\ne = 1.5").unwrap();
        assert_eq!(t.a, Span::fixed(5));
        assert_eq!(t.b, Span::new(1, 9));
        assert_eq!(t.c, Span::new(2, 3));
        assert_eq!(t.d, Ms(12_000));
        assert_eq!(t.e, Ms(1_500));
        assert!(toml::from_str::<T>("a = [9, 1]\nb = 1\nc = 1\nd = 1\ne = 1").is_err());
        assert_eq!(Ms(1_234_567).to_string(), "1234.567");
    }
}
