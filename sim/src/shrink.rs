//! Shrinking: reduce a failing run to a small one that fails the same way.
//!
//! 1. Run the seed once, recording every fault injected (with the
//!    parameters drawn for it) and every client operation started.
//! 2. Turn the recording into an explicit scenario: random faults off, the
//!    faults as a `schedule`, the operations as a client `script`. Replayed
//!    under the same seed (network delays, disk latencies and node seeds
//!    still come from it), it must fail the same oracle.
//! 3. Delta debugging (ddmin) over the faults and operations together keeps
//!    a subset only if it still fails the same oracle; the result is
//!    1-minimal: dropping any single event makes the failure go away. When
//!    that leaves more than a few events (timing bugs, where every removal
//!    shifts what follows), windows of 1 to 16 consecutive operations of the
//!    recording are tried on their own, and ddmin runs again on the first
//!    that fails.
//! 4. Cut the safety phase to just after the failure, and write the result
//!    as a scenario file.

use std::time::Instant;

use crate::planted::PlantedBug;
use crate::report::Outcome;
use crate::scenario::{ClientOp, Expect, FaultEvent, Ms, NemesisMix, Scenario};
use crate::world::{run, run_recorded, RunConfig};

pub struct ShrinkConfig {
    pub seed: u64,
    pub scenario: Scenario,
    /// Planted bugs on top of the scenario's own.
    pub bugs: Vec<PlantedBug>,
    /// Give up reducing after this many runs (the best so far is kept).
    pub max_runs: usize,
    /// Print progress on stderr.
    pub verbose: bool,
}

/// The result of a shrink.
pub struct Shrunk {
    /// The failure being kept.
    pub target: Expect,
    /// How the original run failed.
    pub original: Outcome,
    /// (faults, client operations) of the original run.
    pub before: (usize, usize),
    /// (faults, client operations) of the minimal run.
    pub after: (usize, usize),
    /// Runs spent.
    pub runs: usize,
    /// The minimal scenario (explicit schedule and script, expecting the
    /// failure; replay it with `seed`).
    pub scenario: Scenario,
    /// How the minimal scenario fails.
    pub outcome: Outcome,
    pub wall: std::time::Duration,
}

impl Shrunk {
    pub fn before_total(&self) -> usize {
        self.before.0 + self.before.1
    }
    pub fn after_total(&self) -> usize {
        self.after.0 + self.after.1
    }
}

#[derive(Clone, Debug)]
enum Item {
    Fault(FaultEvent),
    Op(ClientOp),
}

/// An explicit scenario from `base`: no random faults, these faults and
/// operations, replayed with `seed`.
pub fn explicit(
    base: &Scenario,
    seed: u64,
    bugs: &[PlantedBug],
    faults: Vec<FaultEvent>,
    ops: Vec<ClientOp>,
    expect: Expect,
) -> Scenario {
    let mut s = base.clone();
    s.name = format!("shrunk-{}-{seed}", base.name);
    s.description = format!(
        "seed {seed} of {} reduced to {} fault(s) and {} client operation(s), failing: {expect}",
        base.name,
        faults.len(),
        ops.len()
    );
    s.faults.mix = NemesisMix::none();
    s.faults.require_crash = false;
    s.faults.require_partition = false;
    s.schedule = faults;
    s.script = Some(ops);
    s.seeds = vec![seed];
    for b in bugs {
        if !s.planted_bugs.iter().any(|x| x == b.name) {
            s.planted_bugs.push(b.name.to_string());
        }
    }
    s.expect = expect;
    s
}

fn split(items: &[Item]) -> (Vec<FaultEvent>, Vec<ClientOp>) {
    let mut f = Vec::new();
    let mut o = Vec::new();
    for i in items {
        match i {
            Item::Fault(e) => f.push(e.clone()),
            Item::Op(op) => o.push(*op),
        }
    }
    (f, o)
}

struct Tester<'a> {
    cfg: &'a ShrinkConfig,
    target: Expect,
    runs: usize,
    started: Instant,
}

impl Tester<'_> {
    fn scenario(&self, items: &[Item], safety_ms: Option<u64>) -> Scenario {
        let (f, o) = split(items);
        let mut s = explicit(
            &self.cfg.scenario,
            self.cfg.seed,
            &self.cfg.bugs,
            f,
            o,
            self.target.clone(),
        );
        if let Some(ms) = safety_ms {
            s.safety_ms = ms;
        }
        s
    }

    /// Runs an explicit scenario; `Some(outcome)` if it fails as targeted.
    fn fails(&mut self, s: &Scenario) -> Option<Outcome> {
        self.runs += 1;
        let report = run(&RunConfig {
            seed: self.cfg.seed,
            scenario: s.clone(),
            bugs: s.planted(),
            trace: None,
        });
        self.target
            .matches(&report.outcome)
            .then_some(report.outcome)
    }

    fn test(&mut self, items: &[Item]) -> bool {
        let s = self.scenario(items, None);
        self.fails(&s).is_some()
    }

    fn out_of_runs(&self) -> bool {
        self.runs >= self.cfg.max_runs
    }

    /// Cheap cuts before ddmin: without any fault, then only the operations
    /// on one key (most failures are about one key; ddmin alone would spend
    /// many runs where every operation shifts the timing of the others).
    fn slice(&mut self, items: Vec<Item>) -> Vec<Item> {
        let mut items = items;
        let ops_only: Vec<Item> = items
            .iter()
            .filter(|i| matches!(i, Item::Op(_)))
            .cloned()
            .collect();
        if ops_only.len() < items.len() && self.test(&ops_only) {
            items = ops_only;
        }
        let mut keys: Vec<(usize, u32)> = Vec::new();
        for i in &items {
            if let Item::Op(o) = i {
                match keys.iter_mut().find(|(_, k)| *k == o.key) {
                    Some((n, _)) => *n += 1,
                    None => keys.push((1, o.key)),
                }
            }
        }
        if keys.len() < 2 {
            return items;
        }
        keys.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, key) in keys {
            if self.out_of_runs() {
                break;
            }
            let one: Vec<Item> = items
                .iter()
                .filter(|i| match i {
                    Item::Op(o) => o.key == key,
                    Item::Fault(_) => true,
                })
                .cloned()
                .collect();
            if self.test(&one) {
                if self.cfg.verbose {
                    let (f, o) = split(&one);
                    eprintln!(
                        "  {} run(s): only key {key}: {} fault(s) + {} op(s)",
                        self.runs,
                        f.len(),
                        o.len()
                    );
                }
                return one;
            }
        }
        items
    }

    /// A last resort when ddmin stops at a large set: with timing bugs every
    /// removal shifts the timing of what follows, so a 1-minimal set can stay
    /// large while a few operations close in time, at their recorded times,
    /// fail on their own. Tries every window of 1, 2, 4, 8 and 16
    /// consecutive operations of `all` (with the faults `found` kept), the
    /// smallest first, while smaller than `found`; returns the first that
    /// fails.
    fn windows(&mut self, all: &[Item], found: &[Item]) -> Option<Vec<Item>> {
        let faults: Vec<Item> = found
            .iter()
            .filter(|i| matches!(i, Item::Fault(_)))
            .cloned()
            .collect();
        let ops: Vec<&Item> = all.iter().filter(|i| matches!(i, Item::Op(_))).collect();
        for w in [1usize, 2, 4, 8, 16] {
            if w >= ops.len() || faults.len() + w >= found.len() {
                break;
            }
            for start in 0..=ops.len() - w {
                if self.out_of_runs() {
                    return None;
                }
                let mut candidate = faults.clone();
                candidate.extend(ops[start..start + w].iter().map(|&i| i.clone()));
                if self.test(&candidate) {
                    if self.cfg.verbose {
                        eprintln!(
                            "  {} run(s): {w} consecutive operation(s) fail on their own",
                            self.runs
                        );
                    }
                    return Some(candidate);
                }
            }
        }
        None
    }

    /// Zeller's ddmin: a 1-minimal failing subset of `items` (or the best
    /// found when out of runs).
    fn ddmin(&mut self, mut items: Vec<Item>) -> Vec<Item> {
        let mut n = 2usize;
        while items.len() >= 2 && !self.out_of_runs() {
            let chunks = chunks(&items, n);
            let mut reduced = false;
            for c in &chunks {
                if self.out_of_runs() {
                    break;
                }
                if self.test(c) {
                    items = c.clone();
                    n = 2;
                    reduced = true;
                    break;
                }
            }
            if !reduced && n > 2 {
                for i in 0..chunks.len() {
                    if self.out_of_runs() {
                        break;
                    }
                    let complement: Vec<Item> = chunks
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != i)
                        .flat_map(|(_, c)| c.iter().cloned())
                        .collect();
                    if self.test(&complement) {
                        items = complement;
                        n = (n - 1).max(2);
                        reduced = true;
                        break;
                    }
                }
            }
            if self.cfg.verbose {
                let (f, o) = split(&items);
                eprintln!(
                    "  {} run(s), {:.1} s: {} fault(s) + {} op(s), granularity {n}",
                    self.runs,
                    self.started.elapsed().as_secs_f64(),
                    f.len(),
                    o.len()
                );
            }
            if !reduced {
                if n >= items.len() {
                    break;
                }
                n = (2 * n).min(items.len());
            }
        }
        if items.len() == 1 && !self.out_of_runs() && self.test(&[]) {
            items.clear();
        }
        items
    }
}

/// Splits `items` into `n` nearly equal consecutive chunks.
fn chunks(items: &[Item], n: usize) -> Vec<Vec<Item>> {
    let n = n.clamp(1, items.len().max(1));
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let end = start + (items.len() - start) / (n - i);
        out.push(items[start..end].to_vec());
        start = end;
    }
    out
}

/// Shrinks a failing seed. Errors if the seed passes or if the explicit
/// replay of its recording does not fail the same way.
pub fn shrink(cfg: &ShrinkConfig) -> Result<Shrunk, String> {
    let started = Instant::now();
    if cfg.scenario.upgrade.is_some() {
        return Err(format!(
            "{} runs a version orchestration, whose steps (and the faults it injects) are not recorded as explicit events: shrinking it is not supported",
            cfg.scenario.name
        ));
    }
    let mut bugs = cfg.scenario.planted();
    for b in &cfg.bugs {
        if !bugs.contains(b) {
            bugs.push(*b);
        }
    }
    let (report, rec) = run_recorded(&RunConfig {
        seed: cfg.seed,
        scenario: cfg.scenario.clone(),
        bugs,
        trace: None,
    });
    if report.outcome.is_pass() {
        return Err(format!(
            "seed {} of {} passes: nothing to shrink",
            cfg.seed, cfg.scenario.name
        ));
    }
    let target = Expect::failure_like(&report.outcome);
    let before = (rec.faults.len(), rec.ops.len());
    if cfg.verbose {
        eprintln!(
            "seed {} fails: {}: {}",
            cfg.seed,
            report.outcome.label(),
            report.outcome.message()
        );
        eprintln!(
            "recorded {} fault(s) and {} client operation(s); shrinking while it fails: {target}",
            before.0, before.1
        );
    }
    let mut t = Tester {
        cfg,
        target: target.clone(),
        runs: 1,
        started,
    };
    let mut items: Vec<Item> = rec
        .faults
        .into_iter()
        .map(Item::Fault)
        .chain(rec.ops.into_iter().map(Item::Op))
        .collect();
    if !t.test(&items) {
        return Err(format!(
            "the explicit replay of seed {}'s {} fault(s) and {} operation(s) does not fail with {target}: the failure depends on something the recording does not capture",
            cfg.seed, before.0, before.1
        ));
    }
    // Events after the failure cannot have caused it.
    let at = report.at.as_micros();
    let early: Vec<Item> = items
        .iter()
        .filter(|i| match i {
            Item::Fault(e) => e.at_ms.micros() <= at,
            Item::Op(o) => o.at_ms.micros() <= at,
        })
        .cloned()
        .collect();
    if early.len() < items.len() && t.test(&early) {
        items = early;
    }
    let all = items.clone();
    let items = t.slice(items);
    let mut items = t.ddmin(items);
    if items.len() > 4 {
        if let Some(one) = t.windows(&all, &items) {
            items = t.ddmin(one);
        }
    }
    // Cut the safety phase to just after the failure, if it still fails.
    let (f, o) = split(&items);
    let mut scenario = t.scenario(&items, None);
    let mut outcome = t.fails(&scenario);
    let last = f
        .iter()
        .map(|e| e.at_ms)
        .chain(o.iter().map(|o| o.at_ms))
        .max()
        .unwrap_or(Ms(0));
    if let Some(Outcome::Safety(_)) = &outcome {
        let cut = (at.max(last.micros()) / 1000 + 1000).min(scenario.safety_ms);
        let shorter = t.scenario(&items, Some(cut));
        if let Some(o) = t.fails(&shorter) {
            scenario = shorter;
            outcome = Some(o);
        }
    }
    let outcome = outcome.ok_or_else(|| "the minimal scenario stopped failing".to_string())?;
    Ok(Shrunk {
        target,
        original: report.outcome,
        before,
        after: (f.len(), o.len()),
        runs: t.runs,
        scenario,
        outcome,
        wall: started.elapsed(),
    })
}

/// The text of a scenario file for `s`, with a header comment.
pub fn to_file_text(s: &Scenario, header: &str) -> Result<String, String> {
    let body = toml::to_string(s).map_err(|e| format!("cannot write the scenario: {e}"))?;
    let mut text = String::new();
    for line in header.lines() {
        text.push_str("# ");
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&body);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_everything_in_order() {
        let items: Vec<Item> = (0..10)
            .map(|i| Item::Fault(FaultEvent::new(Ms(i), crate::scenario::FaultAction::Heal)))
            .collect();
        for n in 1..=10 {
            let c = chunks(&items, n);
            assert_eq!(c.len(), n);
            let flat: Vec<u64> = c
                .iter()
                .flatten()
                .map(|i| match i {
                    Item::Fault(e) => e.at_ms.0,
                    Item::Op(_) => unreachable!(),
                })
                .collect();
            assert_eq!(flat, (0..10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_written_scenario_parses_back() {
        let mut s = explicit(
            &Scenario::default(),
            7,
            &[],
            vec![{
                let mut e = FaultEvent::new(Ms(1_234_567), crate::scenario::FaultAction::Crash);
                e.node = Some(2);
                e.down_ms = Some(Ms(3_000_000));
                e
            }],
            vec![ClientOp {
                at_ms: Ms(5_000_001),
                client: 3,
                op: crate::scenario::OpName::Rmw,
                key: 4,
                node: 1,
                then_node: Some(5),
            }],
            Expect::default(),
        );
        s.expect.outcome = crate::scenario::ExpectedOutcome::Safety;
        s.expect.oracle = Some("ack-durable".into());
        let text = to_file_text(&s, "a header\nover two lines").unwrap();
        let back = crate::scenario_file::parse(&text, "shrunk.toml").unwrap();
        assert_eq!(back, s);
        assert!(text.starts_with("# a header\n# over two lines\n"));
    }
}
