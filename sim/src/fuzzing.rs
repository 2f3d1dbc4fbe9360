//! Whole simulations decoded from fuzz input (the `simulate` fuzz target and
//! its seed corpus in `fuzz/seeds/simulate/`).
//!
//! The bytes choose a small cluster (3-5 nodes, a strict N/R/W quorum, the
//! releases), the network, disk-fault and clock-step rates, a few timers, a
//! safety phase of 1 to 4 simulated seconds, and then an explicit client
//! script and fault schedule, as a shrunk scenario has them (see
//! [`crate::shrink`]). The random nemesis is off: every crash, restart,
//! partition, one-way cut and clog comes from the input. Disk faults stay
//! within the fault atlas, so every oracle keeps its meaning. The run must
//! pass: any safety violation, liveness failure or panic fails the check,
//! with a scenario file and a seed that replay it.
//!
//! Layout (bytes past the end read as zero, so every input is valid):
//!
//! | byte | meaning |
//! |------|---------|
//! | 0-1  | the seed (u16 LE): delays, latencies, fault draws, node seeds |
//! | 2    | nodes `3 + b % 3`; replication factor `2 + (b / 3) % (nodes - 1)` |
//! | 3    | R `1 + b % N`; W `N + 1 - R + (b / 8) % R` (so R + W > N) |
//! | 4    | safety phase `1000 + (b % 31) * 100` ms |
//! | 5    | network: bits 0-1 loss, 2-3 duplication, 4 slow path, 5 short link queues, 6-7 base delay |
//! | 6    | disk faults: bits 0-1 I/O errors, 2-3 full disks, 4 corruption, 5 torn writes, 6 misdirected writes, 7 final wipe |
//! | 7    | clocks: bits 0-1 step rate, 2-3 step size, 4-5 drift, 6-7 offsets |
//! | 8    | timers and releases: bit 0 short tombstone grace, 1 fast anti-entropy, 2 fast hints, 3 short request timeout, 4 quick failure detector; bits 5-6 releases (0-1 all current, 2 mixed, 3 all previous) |
//! | 9    | workload: clients `1 + b % 4`, keys `1 + (b >> 2) % 8`, bit 5 values of 200 bytes |
//! | then | up to 128 items of 4 bytes `[a, t, x, y]`, at `t * safety / 256` |
//!
//! An item with `a % 16` below 10 is a client operation: below 8, `(a >> 4)
//! % 4` picks rmw, put, delete or read; at 8 or 9, `(a >> 4) % 5` picks a
//! write with a context kept from long ago (stale) or a hostile one (forged,
//! replayed, truncated, old-format); client `x % clients`, key `(x >> 2) %
//! keys`; the request goes to node `1 + y % nodes`, and with `y & 0x80` the
//! write of an rmw or delete to node `1 + (y >> 3) % nodes`. Otherwise it is
//! a fault: 10 crash node `1 + x % nodes` for `50 + 20y` ms; 11 clean
//! restart of that node, down `10y` ms; 12 partition the nodes of bitmask
//! `x` from the rest; 13 isolate node `1 + x % nodes`; 14 block the links
//! `from -> to` and, with `x & 0x80`, back (`from = 1 + x % nodes`, `to` the
//! `1 + (x >> 3) % (nodes - 1)`-th node after it); 15 clog node `1 + x %
//! nodes` by `1 + 4 * (x >> 3)` ms, or heal everything when `x & 0x80`.
//! Cuts and clogs last `100 + 20y` ms.

use cairn_core::version::ReleaseId;

use crate::planted::PlantedBug;
use crate::report::RunReport;
use crate::scenario::{
    ClientOp, FaultAction, FaultEvent, Ms, NemesisMix, OpName, QuorumSpec, Scenario, Span,
    TimingSpec,
};
use crate::world::{run, RunConfig};

/// Items (client operations and faults) decoded from one input at most.
pub const MAX_ITEMS: usize = 128;
/// Bytes before the first item.
pub const HEADER_LEN: usize = 10;

/// Reads bytes front to back; past the end every byte is zero.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn has_more(&self) -> bool {
        self.pos < self.data.len()
    }
}

fn pick<T: Copy>(table: &[T], b: u8) -> T {
    table[b as usize % table.len()]
}

/// The scenario and seed an input stands for.
pub fn decode(data: &[u8]) -> (Scenario, u64) {
    let mut r = Reader { data, pos: 0 };
    let seed = u16::from_le_bytes([r.u8(), r.u8()]) as u64;
    let mut s = Scenario {
        name: "fuzz".into(),
        description: "a simulation decoded from a fuzz input".into(),
        ..Scenario::default()
    };

    let topo = r.u8();
    let nodes = 3 + (topo % 3) as u32;
    let n = 2 + (topo / 3) % (nodes as u8 - 1);
    let q = r.u8();
    let rq = 1 + q % n;
    let w = n + 1 - rq + (q / 8) % rq;
    s.nodes = nodes;
    s.quorum = QuorumSpec { n, r: rq, w };
    s.safety_ms = 1000 + (r.u8() % 31) as u64 * 100;

    let net = r.u8();
    s.network.drop_ppm = Span::fixed(pick(&[0, 1_000, 10_000, 50_000], net));
    s.network.duplicate_ppm = Span::fixed(pick(&[0, 5_000, 20_000, 50_000], net >> 2));
    s.network.tail_ppm = Span::fixed(if net & 16 != 0 { 20_000 } else { 0 });
    if net & 32 != 0 {
        s.network.link_capacity = Span::fixed(16);
    }
    let base = pick(&[100, 1_000, 5_000, 20_000], net >> 6);
    s.network.base_delay_us = Span::new(base / 2, base);

    let disk = r.u8();
    let d = &mut s.disk_faults;
    d.io_error_ppm = Span::fixed(pick(&[0, 2_000, 10_000, 50_000], disk));
    d.full_ppm = Span::fixed(pick(&[0, 100_000, 400_000, 800_000], disk >> 2));
    let on = |bit: u8, ppm: u64| Span::fixed(if disk & bit != 0 { ppm } else { 0 });
    d.corrupt_ppm = on(16, 500_000);
    d.torn_ppm = on(32, 500_000);
    d.misdirect_ppm = on(64, 20_000);
    d.final_wipe_ppm = on(128, 500_000);

    let clock = r.u8();
    s.clock_steps.step_ppm = Span::fixed(pick(&[0, 100_000, 300_000, 800_000], clock));
    s.clock_steps.step_ms = Span::new(10, pick(&[100, 2_000, 10_000, 30_000], clock >> 2));
    s.clock.drift_ppm = Span::new(0, pick(&[0, 200, 1_000, 20_000], clock >> 4));
    s.clock.offset_ms = Span::new(0, pick(&[0, 1_000, 5_000, 60_000], clock >> 6));

    let t = r.u8();
    let mut timing = TimingSpec::default();
    if t & 1 != 0 {
        timing.tombstone_grace_ms = Some(2_000);
        timing.reap_interval_ms = Some(300);
    }
    if t & 2 != 0 {
        timing.anti_entropy_interval_ms = Some(100);
    }
    if t & 4 != 0 {
        timing.hint_after_ms = Some(100);
        timing.hint_retry_ms = Some(150);
    }
    if t & 8 != 0 {
        timing.request_timeout_ms = Some(500);
    }
    if t & 16 != 0 {
        timing.gossip_interval_ms = Some(50);
        timing.peer_down_after_ms = Some(300);
    }
    s.timing = timing;
    let current = ReleaseId::current();
    let previous = ReleaseId(current.0 - 1);
    s.releases = match (t >> 5) & 3 {
        2 => (0..nodes)
            .map(|i| {
                if (seed >> i) & 1 != 0 {
                    previous
                } else {
                    current
                }
            })
            .collect(),
        3 => vec![previous; nodes as usize],
        _ => Vec::new(),
    };

    let wl = r.u8();
    let clients = 1 + (wl % 4) as u32;
    let keys = 1 + ((wl >> 2) % 8) as u32;
    s.workload.clients = Span::fixed(clients as u64);
    s.workload.keys = Span::fixed(keys as u64);
    s.workload.value_len = Span::fixed(if wl & 32 != 0 { 200 } else { 16 });

    s.faults.mix = NemesisMix::none();
    s.faults.require_crash = false;
    s.faults.require_partition = false;

    let mut ops = Vec::new();
    let mut schedule = Vec::new();
    let node_of = |b: u8| 1 + b as u32 % nodes;
    for _ in 0..MAX_ITEMS {
        if !r.has_more() {
            break;
        }
        let (a, at, x, y) = (r.u8(), r.u8(), r.u8(), r.u8());
        let at_ms = Ms(s.safety_ms * 1000 * at as u64 / 256);
        let lasts = Some(Ms::from_millis(100 + 20 * y as u64));
        let kind = a % 16;
        if kind < 10 {
            ops.push(ClientOp {
                at_ms,
                client: x as u32 % clients,
                op: if kind < 8 {
                    pick(
                        &[OpName::Rmw, OpName::Put, OpName::Delete, OpName::Read],
                        a >> 4,
                    )
                } else {
                    pick(
                        &[
                            OpName::Stale,
                            OpName::Forged,
                            OpName::Replayed,
                            OpName::Truncated,
                            OpName::OldFormat,
                        ],
                        a >> 4,
                    )
                },
                key: (x >> 2) as u32 % keys,
                node: node_of(y),
                then_node: (y & 0x80 != 0).then(|| node_of(y >> 3)),
            });
            continue;
        }
        let mut e = FaultEvent::new(at_ms, FaultAction::Heal);
        match kind {
            10 => {
                e.action = FaultAction::Crash;
                e.node = Some(node_of(x));
                e.down_ms = Some(Ms::from_millis(50 + 20 * y as u64));
            }
            11 => {
                e.action = FaultAction::CleanRestart;
                e.node = Some(node_of(x));
                e.down_ms = Some(Ms::from_millis(10 * y as u64));
            }
            12 => {
                let side: Vec<u32> = (1..=nodes).filter(|i| x >> (i - 1) & 1 != 0).collect();
                if side.is_empty() || side.len() as u32 == nodes {
                    continue;
                }
                e.action = FaultAction::Partition;
                e.side = side;
                e.for_ms = lasts;
            }
            13 => {
                e.action = FaultAction::Isolate;
                e.node = Some(node_of(x));
                e.for_ms = lasts;
            }
            14 => {
                let from = node_of(x);
                let to = 1 + (from + (x >> 3) as u32 % (nodes - 1)) % nodes;
                e.action = FaultAction::OneWay;
                e.links = vec![(from, to)];
                if x & 0x80 != 0 {
                    e.links.push((to, from));
                }
                e.for_ms = lasts;
            }
            _ if x & 0x80 != 0 => {}
            _ => {
                e.action = FaultAction::Clog;
                e.node = Some(node_of(x));
                e.delay_ms = Some(Ms::from_millis(1 + 4 * (x as u64 >> 3)));
                e.for_ms = lasts;
            }
        }
        schedule.push(e);
    }
    s.script = Some(ops);
    s.schedule = schedule;
    s.seeds = vec![seed];
    if let Err(e) = s.validate() {
        panic!("the fuzz decoder built an invalid scenario: {e}");
    }
    (s, seed)
}

/// Runs the simulation an input stands for, with these planted bugs.
pub fn run_input(data: &[u8], bugs: &[PlantedBug]) -> RunReport {
    let (scenario, seed) = decode(data);
    run(&RunConfig {
        seed,
        scenario,
        bugs: bugs.to_vec(),
        trace: None,
    })
}

/// Fuzz target `simulate`: the run an input stands for passes every oracle.
///
/// On a failure it panics with the outcome, and with a scenario file and
/// the command that replays it.
pub fn check_simulate(data: &[u8]) {
    let report = run_input(data, &[]);
    if report.outcome.is_pass() {
        return;
    }
    let (scenario, seed) = decode(data);
    let file = crate::shrink::to_file_text(
        &scenario,
        &format!("replay: cairn-sim run --seed {seed} --scenario THIS_FILE"),
    )
    .unwrap_or_else(|e| e);
    panic!(
        "{} at {} µs: {}\nseed {seed}, scenario file:\n{file}",
        report.outcome.label(),
        report.at.as_micros(),
        report.outcome.message()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_decodes_to_a_valid_small_scenario() {
        let mut x: u32 = 1;
        for len in 0..200usize {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            let (s, seed) = decode(&data);
            assert!(seed <= u16::MAX as u64);
            assert!((3..=5).contains(&s.nodes));
            let q = s.quorum;
            assert!(q.r + q.w > q.n && q.n as u32 <= s.nodes && q.n >= 2);
            assert!((1000..=4000).contains(&s.safety_ms));
            assert!(s.schedule.len() + s.script.as_ref().unwrap().len() <= MAX_ITEMS);
        }
    }

    #[test]
    fn items_decode_as_documented() {
        // 5 nodes, N=3, R=2, W=2; a 2 s safety phase; 4 clients, 8 keys.
        let mut data = vec![7, 0, 5, 1, 10, 0, 0, 0, 0, 0xff];
        data.extend_from_slice(&[0x10, 128, 0b0000_0101, 3]); // put, client 1, key 1, n4
        data.extend_from_slice(&[10, 64, 1, 5]); // crash n2 for 150 ms
        data.extend_from_slice(&[12, 0, 0b00011, 0]); // partition {n1, n2}
        data.extend_from_slice(&[15, 255, 0x80, 0]); // heal
        let (s, seed) = decode(&data);
        assert_eq!(seed, 7);
        assert_eq!((s.nodes, s.quorum), (5, QuorumSpec { n: 3, r: 2, w: 2 }));
        assert_eq!(s.safety_ms, 2000);
        let ops = s.script.unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(
            (ops[0].op, ops[0].client, ops[0].key, ops[0].node),
            (OpName::Put, 1, 1, 4)
        );
        assert_eq!(ops[0].at_ms, Ms::from_millis(1000));
        let f: Vec<FaultAction> = s.schedule.iter().map(|e| e.action).collect();
        assert_eq!(
            f,
            [
                FaultAction::Crash,
                FaultAction::Partition,
                FaultAction::Heal
            ]
        );
        assert_eq!(s.schedule[0].node, Some(2));
        assert_eq!(s.schedule[0].down_ms, Some(Ms::from_millis(150)));
        assert_eq!(s.schedule[1].side, [1, 2]);
    }
}
