//! Client contexts in the simulator: hostile clients (forged, replayed,
//! truncated and old-format contexts) are refused on every seed, clients
//! writing with contexts kept from long ago are served, and a script can
//! name every kind of such write, so a shrunk failure replays them.

use cairn_sim::scenario::{builtin, ClientOp, Ms, NemesisMix, OpName};
use cairn_sim::{run, RunConfig};

fn config(seed: u64, scenario: cairn_sim::Scenario) -> RunConfig {
    RunConfig {
        seed,
        scenario,
        bugs: Vec::new(),
        trace: None,
    }
}

#[test]
fn hostile_writes_are_refused_and_old_contexts_accepted() {
    let mut s = builtin("quick").unwrap();
    s.safety_ms = 6000;
    let (mut sent, mut refused, mut stale) = ([0u64; 4], [0u64; 4], 0);
    for seed in 0..6 {
        let report = run(&config(seed, s.clone()));
        assert!(
            report.outcome.is_pass(),
            "seed {seed}: {}",
            report.outcome.message()
        );
        let o = &report.stats.ops;
        for k in 0..4 {
            sent[k] += o.hostile_sent[k];
            refused[k] += o.hostile_refused[k];
        }
        stale += o.stale_writes;
    }
    assert!(
        sent.iter().all(|&n| n > 0),
        "some kind was never sent: {sent:?}"
    );
    assert_eq!(refused, sent, "a hostile write went unjudged");
    assert!(stale > 0, "no write used a context kept from long ago");
}

#[test]
fn a_script_names_every_kind_of_context_write() {
    let mut s = builtin("quick").unwrap();
    s.safety_ms = 3000;
    s.faults.mix = NemesisMix::none();
    s.faults.require_crash = false;
    s.faults.require_partition = false;
    let op = |at: u64, client: u32, op: OpName, key: u32, node: u32| ClientOp {
        at_ms: Ms::from_millis(at),
        client,
        op,
        key,
        node,
        then_node: None,
    };
    s.script = Some(vec![
        op(100, 0, OpName::Rmw, 0, 1),
        op(100, 1, OpName::Rmw, 1, 2),
        op(400, 0, OpName::Rmw, 0, 3),
        op(700, 0, OpName::Stale, 0, 4),
        op(900, 1, OpName::Forged, 0, 1),
        op(1100, 1, OpName::Replayed, 0, 2),
        op(1300, 1, OpName::Truncated, 1, 3),
        op(1500, 1, OpName::OldFormat, 1, 4),
        op(1700, 0, OpName::Read, 0, 5),
    ]);
    let report = run(&config(3, s));
    assert!(report.outcome.is_pass(), "{}", report.outcome.message());
    let o = &report.stats.ops;
    assert_eq!(o.hostile_sent, [1, 1, 1, 1]);
    assert_eq!(o.hostile_refused, [1, 1, 1, 1]);
    assert_eq!(o.stale_writes, 1);
}
