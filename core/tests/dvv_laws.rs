//! Laws of the dotted version vectors, checked on realistic histories.
//!
//! A history is a sequence of steps over a few replicas of one key: client
//! writes coordinated by a replica under a fresh dot of its own actor (one
//! counter per actor, shared with other keys, so counters skip), carrying the
//! context of some earlier read or none; reads, possibly merging two replicas;
//! merges between replicas in any order; and crashes that lose state and
//! restart the replica under a new epoch. The reference model (shared with the
//! `dvv_ops` fuzz target, in `fuzz/src/checks.rs`) tracks the true causal
//! history: each write's past is the history of the read whose context it
//! carried, and each replica's history is the union of what reached it.

#[allow(dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

use cairn_core::dvv::{Actor, Dot, KeyState, VersionVector};
use cairn_core::NodeId;
use checks::{Model, Op};
use proptest::prelude::*;

fn op(replicas: u8) -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (
            0..replicas,
            prop::option::weighted(0.75, 0..8u8),
            prop::bool::weighted(0.2),
            prop_oneof![3 => Just(0u8), 1 => 1..3u8],
        )
            .prop_map(|(replica, read, delete, skip)| Op::Write {
                replica,
                read,
                delete,
                skip,
            }),
        4 => (0..replicas, 0..replicas).prop_map(|(into, from)| Op::Merge { into, from }),
        3 => (0..replicas, prop::option::weighted(0.5, 0..replicas))
            .prop_map(|(replica, also)| Op::Read { replica, also }),
        1 => (0..replicas, prop::option::of(0..8u8))
            .prop_map(|(replica, restore)| Op::Crash { replica, restore }),
    ]
}

/// A replica count and a history over it.
fn history() -> impl Strategy<Value = (usize, Vec<Op>)> {
    (2..=4u8).prop_flat_map(|n| (Just(n as usize), prop::collection::vec(op(n), 1..48)))
}

/// A history without crashes: every write survives somewhere.
fn history_without_crashes() -> impl Strategy<Value = (usize, Vec<Op>)> {
    history().prop_map(|(n, ops)| {
        let ops = ops
            .into_iter()
            .filter(|op| !matches!(op, Op::Crash { .. }))
            .collect();
        (n, ops)
    })
}

fn actor() -> impl Strategy<Value = Actor> {
    (1..4u32, 1..3u32).prop_map(|(n, epoch)| Actor {
        node: NodeId(n),
        epoch,
    })
}

fn vv() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((actor(), 1..6u64), 0..6).prop_map(VersionVector::from_entries)
}

fn all_actors() -> Vec<Actor> {
    (1..4u32)
        .flat_map(|n| {
            (1..3u32).map(move |epoch| Actor {
                node: NodeId(n),
                epoch,
            })
        })
        .collect()
}

fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
    let mut m = a.clone();
    m.merge(b);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every step: `apply_write` removes exactly the siblings its context
    /// covers; merge reports a change exactly when it makes one and is
    /// commutative; every replica and read is well formed, its context covers
    /// exactly its true history and its siblings are exactly the maximal
    /// antichain of that history. At the end, all replicas merged hold the
    /// maximal antichain of every write, tombstones included.
    #[test]
    fn siblings_are_the_maximal_antichain_of_the_true_history(
        (n, ops) in history_without_crashes(),
    ) {
        let model = Model::run(n, &ops);
        model.check_convergence();
    }

    /// The same with crashes: a replica that loses state restarts under a new
    /// epoch, from nothing or from an earlier read, and the survivors still
    /// converge to the maximal antichain of what survived.
    #[test]
    fn crashes_under_a_new_epoch_keep_the_laws((n, ops) in history()) {
        let model = Model::run(n, &ops);
        model.check_convergence();
    }

    /// Merge is idempotent, commutative and associative on reachable states,
    /// compared with `==`.
    #[test]
    fn merge_is_a_semilattice_on_reachable_states((n, ops) in history()) {
        let model = Model::run(n, &ops);
        model.check_semilattice(7);
    }

    /// `digest()` is equal exactly when states are equal.
    #[test]
    fn digest_agrees_with_equality((n, ops) in history()) {
        let model = Model::run(n, &ops);
        prop_assert!(!model.reachable.is_empty());
        model.check_digests();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn vv_merge_is_the_pointwise_max(a in vv(), b in vv()) {
        let m = merged(&a, &b);
        prop_assert!(m.is_well_formed());
        prop_assert_eq!(&m, &checks::pointwise_max([&a, &b]));
        for actor in all_actors() {
            prop_assert_eq!(m.get(actor), a.get(actor).max(b.get(actor)));
        }
        prop_assert_eq!(&m, &merged(&b, &a));
        prop_assert_eq!(&merged(&m, &a), &m);
        prop_assert_eq!(&merged(&a, &a), &a);
    }

    #[test]
    fn vv_merge_is_associative(a in vv(), b in vv(), c in vv()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn vv_dominates_and_covers_agree_with_merge(
        a in vv(),
        b in vv(),
        dot_actor in actor(),
        counter in 1..7u64,
    ) {
        let pointwise = all_actors().into_iter().all(|x| a.get(x) >= b.get(x));
        prop_assert_eq!(a.dominates(&b), pointwise);
        prop_assert_eq!(a.dominates(&b), merged(&a, &b) == a);
        prop_assert!(merged(&a, &b).dominates(&a) && merged(&a, &b).dominates(&b));
        prop_assert_eq!(a.dominates(&b) && b.dominates(&a), a == b);
        for &(x, c) in b.entries() {
            prop_assert_eq!(a.covers(Dot { actor: x, counter: c }), a.get(x) >= c);
        }
        let dot = Dot { actor: dot_actor, counter };
        let single = VersionVector::from_entries([(dot_actor, counter)]);
        prop_assert_eq!(a.covers(dot), counter <= a.get(dot_actor));
        prop_assert_eq!(a.covers(dot), a.dominates(&single));
        let mut observed = a.clone();
        observed.observe(dot);
        prop_assert_eq!(&observed, &merged(&a, &single));
        prop_assert!(observed.covers(dot));
    }

    #[test]
    fn vv_from_entries_normalises(entries in prop::collection::vec((actor(), 1..6u64), 0..8)) {
        let vv = VersionVector::from_entries(entries.iter().copied());
        prop_assert!(vv.is_well_formed());
        let mut reversed = entries.clone();
        reversed.reverse();
        prop_assert_eq!(&VersionVector::from_entries(reversed), &vv);
        for actor in all_actors() {
            let max = entries.iter().filter(|e| e.0 == actor).map(|e| e.1).max().unwrap_or(0);
            prop_assert_eq!(vv.get(actor), max);
        }
    }
}

/// The textbook case: two clients read the same version and write
/// concurrently through different coordinators; a third write that read both
/// supersedes both, while a blind write stays concurrent with everything.
#[test]
fn concurrent_writes_then_a_resolving_write() {
    let ops = [
        Op::Write {
            replica: 0,
            read: None,
            delete: false,
            skip: 0,
        },
        Op::Merge { into: 1, from: 0 },
        Op::Read {
            replica: 0,
            also: None,
        },
        Op::Write {
            replica: 0,
            read: Some(0),
            delete: false,
            skip: 0,
        },
        Op::Write {
            replica: 1,
            read: Some(0),
            delete: false,
            skip: 1,
        },
        Op::Merge { into: 2, from: 0 },
        Op::Merge { into: 2, from: 1 },
        Op::Read {
            replica: 2,
            also: None,
        },
        Op::Write {
            replica: 2,
            read: None,
            delete: false,
            skip: 0,
        },
        Op::Write {
            replica: 2,
            read: Some(1),
            delete: true,
            skip: 0,
        },
        Op::Merge { into: 0, from: 2 },
        Op::Merge { into: 1, from: 0 },
    ];
    let model = Model::run(3, &ops);
    model.check_convergence();
    let final_state: &KeyState = &model.replicas[1].state;
    // The blind write and the resolving delete survive.
    assert_eq!(final_state.siblings().len(), 2);
    assert_eq!(final_state.values().count(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The byte encoding the `dvv_ops` fuzz target reads is a faithful image
    /// of the steps (so its seeds mean what they say).
    #[test]
    fn fuzz_op_encoding_round_trips((n, ops) in history()) {
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|op| match op {
                Op::Write { replica, read, delete, skip } => {
                    Op::Write { replica, read, delete, skip: skip.min(1) }
                }
                other => other,
            })
            .collect();
        prop_assert_eq!(checks::decode_ops(&checks::encode_ops(n, &ops)), (n, ops));
    }
}
