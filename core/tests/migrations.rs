//! Migrations preserve every logical record, whatever the path and wherever a
//! crash interrupts them.
//!
//! A single-node cluster (N=R=W=1) driven directly, with a disk that loses
//! unsynced writes when the node crashes.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use cairn_core::api::{Input, IoResult, Output, ReadRequest, Request, Response};
use cairn_core::version::ReleaseId;
use cairn_core::{AdminCommand, Context, Node, NodeConfig, NodeId, Quorum, RequestId, Time};
use proptest::prelude::*;

#[derive(Default, Clone)]
struct Disk {
    durable: BTreeMap<Bytes, Bytes>,
    pending: Vec<(Bytes, Option<Bytes>)>,
}

struct Harness {
    node: Node,
    disk: Disk,
    now: Time,
    queue: VecDeque<Input>,
    replies: BTreeMap<RequestId, Response>,
    next: u64,
    /// Outputs seen so far, to crash after a given count.
    outputs: usize,
}

fn config(release: ReleaseId, initial: ReleaseId) -> NodeConfig {
    let mut cfg = NodeConfig::new(NodeId(1), vec![NodeId(1)], 1);
    cfg.quorum = Quorum { n: 1, r: 1, w: 1 };
    cfg.release = release;
    cfg.initial_cluster_version = Some(initial);
    cfg
}

impl Harness {
    fn start(disk: Disk, release: ReleaseId, initial: ReleaseId, now: Time) -> Harness {
        let node = Node::new(config(release, initial), now).expect("a valid configuration");
        Harness {
            node,
            disk,
            now,
            queue: VecDeque::new(),
            replies: BTreeMap::new(),
            next: 1,
            outputs: 0,
        }
    }

    /// Runs until nothing is left to do, or until `crash_at` outputs were
    /// produced (then the unsynced writes are lost). Returns false on a crash.
    fn run(&mut self, crash_at: Option<usize>) -> bool {
        let mut idle = 0;
        for _ in 0..100_000 {
            loop {
                let out = self.node.poll_output();
                self.outputs += 1;
                if Some(self.outputs) == crash_at {
                    self.disk.pending.clear();
                    return false;
                }
                match out {
                    Output::Timeout(_) => break,
                    Output::Write { key, value, .. } => self.disk.pending.push((key, value)),
                    Output::Sync { io } => {
                        for (k, v) in self.disk.pending.drain(..) {
                            match v {
                                Some(v) => self.disk.durable.insert(k, v),
                                None => self.disk.durable.remove(&k),
                            };
                        }
                        self.queue.push_back(Input::IoDone {
                            now: self.now,
                            io,
                            result: IoResult::Synced,
                        });
                    }
                    Output::Read {
                        io,
                        request: ReadRequest::All,
                    } => {
                        let recs = self
                            .disk
                            .durable
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        self.queue.push_back(Input::IoDone {
                            now: self.now,
                            io,
                            result: IoResult::Loaded(recs),
                        });
                    }
                    Output::Backup { io, .. } => self.queue.push_back(Input::IoDone {
                        now: self.now,
                        io,
                        result: IoResult::Synced,
                    }),
                    Output::Reply { id, response } => {
                        self.replies.insert(id, response);
                    }
                    Output::Send { .. } | Output::Event(_) => {}
                }
            }
            match self.queue.pop_front() {
                Some(input) => {
                    idle = 0;
                    self.node.handle_input(input)
                }
                None => {
                    // Let timers run for a simulated second, then stop.
                    idle += 1;
                    if idle > 20 {
                        return true;
                    }
                    self.now = self.now + cairn_core::Duration::from_millis(50);
                    self.node.handle_input(Input::Timeout(self.now));
                }
            }
        }
        true
    }

    fn submit(&mut self, make: impl FnOnce(Time, RequestId) -> Input) -> Response {
        let id = RequestId(self.next);
        self.next += 1;
        self.queue.push_back(make(self.now, id));
        self.run(None);
        self.replies.remove(&id).expect("a reply")
    }

    fn shutdown(&mut self) {
        self.queue.push_back(Input::Shutdown { now: self.now });
        self.run(None);
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        let (key, value) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
        let r = self.submit(|now, id| Input::Client {
            now,
            id,
            request: Request::Put {
                key,
                value,
                context: Context::new(),
            },
        });
        assert_eq!(r, Response::Written);
    }

    fn contents(&self) -> BTreeMap<Bytes, Vec<Bytes>> {
        self.node
            .keys()
            .map(|(k, s)| (k.clone(), s.values().cloned().collect()))
            .collect()
    }

    /// Every data record on disk is in the live schema.
    fn disk_schemas(&self) -> Vec<u16> {
        let mut s: Vec<u16> = self
            .disk
            .durable
            .keys()
            .filter(|k| k.first() == Some(&b'd'))
            .filter_map(|k| cairn_core::storage::key_schema(k))
            .collect();
        s.dedup();
        s
    }
}

fn release(i: u8) -> ReleaseId {
    ReleaseId(i)
}

fn records() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<u8>>> {
    prop::collection::btree_map(
        prop::collection::vec(any::<u8>(), 1..12),
        prop::collection::vec(any::<u8>(), 0..400),
        1..40,
    )
}

/// Writes `records` on a node of release `from`, then upgrades it one
/// release at a time to `to`, finalizing each; returns the harness.
fn upgrade_path(records: &BTreeMap<Vec<u8>, Vec<u8>>, from: u8, to: u8) -> Harness {
    let mut h = Harness::start(
        Disk::default(),
        release(from),
        release(from),
        Time::from_millis(1),
    );
    h.run(None);
    for (k, v) in records {
        h.put(k, v);
    }
    let expected = h.contents();
    for r in from + 1..=to {
        h.shutdown();
        let disk = h.disk.clone();
        let now = h.now;
        h = Harness::start(disk, release(r), release(r), now);
        h.run(None);
        assert!(h.node.is_serving(), "{:?}", h.node.refusal());
        assert_eq!(
            h.contents(),
            expected,
            "restart as {}",
            release(r).version()
        );
        let target = release(r).version().to_string();
        let fin = h.submit(|now, id| Input::Admin {
            now,
            id,
            command: AdminCommand::Finalize {
                target: Some(target),
            },
        });
        assert!(matches!(fin, Response::Finalized { .. }), "{fin:?}");
        h.run(None);
        assert_eq!(h.node.schema(), release(r).release().schema);
        assert_eq!(h.disk_schemas(), vec![release(r).release().schema]);
        assert_eq!(
            h.contents(),
            expected,
            "after migrating to {}",
            release(r).version()
        );
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any records, any migration path: the logical contents are preserved.
    #[test]
    fn every_migration_path_preserves_the_records(records in records(), from in 0u8..2, extra in 1u8..3) {
        let to = (from + extra).min(2);
        upgrade_path(&records, from, to);
    }
}

/// A crash after every output of a migration recovers to the old or the new
/// schema, never a mix, with every record.
#[test]
fn a_crash_at_every_step_of_a_migration_recovers_whole() {
    let records: BTreeMap<Vec<u8>, Vec<u8>> = (0..300u32)
        .map(|i| {
            (
                format!("key-{i}").into_bytes(),
                vec![b'v'; (i % 300) as usize],
            )
        })
        .collect();
    // A 0.2 node on schema 1 data, cluster at 0.1.
    let mut base = upgrade_path(&records, 0, 0);
    let expected = base.contents();
    base.shutdown();
    let disk = base.disk.clone();
    // Count the outputs of an uninterrupted migration.
    let total = {
        let mut h = Harness::start(disk.clone(), release(1), release(0), base.now);
        h.run(None);
        let start = h.outputs;
        let _ = h.submit(|now, id| Input::Admin {
            now,
            id,
            command: AdminCommand::Finalize { target: None },
        });
        assert_eq!(h.node.schema(), 2);
        h.outputs - start
    };
    assert!(total > 10);
    for crash_after in 1..total {
        let mut h = Harness::start(disk.clone(), release(1), release(0), base.now);
        h.run(None);
        let start = h.outputs;
        let id = RequestId(999);
        h.queue.push_back(Input::Admin {
            now: h.now,
            id,
            command: AdminCommand::Finalize { target: None },
        });
        let survived = h.run(Some(start + crash_after));
        assert!(!survived, "crash point {crash_after} not reached");
        // Restart from what is durable.
        let mut r = Harness::start(h.disk.clone(), release(1), release(0), h.now);
        r.run(None);
        assert!(
            r.node.is_serving(),
            "after a crash at {crash_after}: {:?}",
            r.node.refusal()
        );
        let schemas = r.disk_schemas();
        assert_eq!(
            schemas.len(),
            1,
            "crash at {crash_after}: schemas {schemas:?} mixed on disk"
        );
        assert_eq!(schemas[0], r.node.schema());
        assert_eq!(
            r.contents(),
            expected,
            "crash at {crash_after}: records lost"
        );
    }
}

/// A 0.2 node stopped at any point of its migration to schema 2 leaves a
/// directory 0.3 cannot open. Once the finalization is persisted (the
/// migration is due), the refusal says the migration is not finished and
/// which release finishes it; before that, the directory is just too old.
#[test]
fn a_directory_stopped_mid_migration_is_refused_naming_the_unfinished_migration() {
    let records: BTreeMap<Vec<u8>, Vec<u8>> = (0..300u32)
        .map(|i| (format!("key-{i}").into_bytes(), vec![b'v'; 700]))
        .collect();
    let mut base = upgrade_path(&records, 0, 0);
    base.shutdown();
    let disk = base.disk.clone();
    let old = ReleaseId::by_version("0.2.0").unwrap();
    let newest = ReleaseId::by_version("0.3.0").unwrap();
    let refusal_on_newest = |disk: &Disk, now: Time| {
        let mut r = Harness::start(disk.clone(), newest, newest, now);
        r.run(None);
        r.node.refusal().map(str::to_string)
    };
    // Never finalized: too old, nothing about a migration.
    let why = refusal_on_newest(&disk, base.now).expect("refused");
    assert!(
        why.contains("too old") && why.contains("upgrade one release at a time"),
        "{why}"
    );
    assert!(!why.contains("migration"), "{why}");
    let mut unfinished = 0;
    for crash_after in 1..400 {
        let mut h = Harness::start(disk.clone(), old, release(0), base.now);
        h.run(None);
        let start = h.outputs;
        h.queue.push_back(Input::Admin {
            now: h.now,
            id: RequestId(999),
            command: AdminCommand::Finalize { target: None },
        });
        if h.run(Some(start + crash_after)) {
            break;
        }
        let durable = &h.disk.durable;
        let meta = durable
            .get(cairn_core::storage::META_KEY)
            .map(
                |v| match cairn_core::storage::decode_record(cairn_core::storage::META_KEY, v) {
                    Ok(cairn_core::storage::Record::Meta(m)) => m,
                    other => panic!("metadata: {other:?}"),
                },
            )
            .expect("metadata");
        let due = meta.cluster_version == "0.2.0"
            || durable.contains_key(cairn_core::storage::PROGRESS_KEY);
        let why = refusal_on_newest(&h.disk, h.now);
        match (meta.schema, due) {
            (2, _) => assert_eq!(why, None, "after the switch, 0.3.0 serves"),
            (_, true) => {
                unfinished += 1;
                let why = why.expect("refused");
                assert!(
                    why.contains(
                        "migration to schema 2 not finished; start 0.2.0 again to finish it"
                    ),
                    "crash after {crash_after}: {why}"
                );
            }
            (_, false) => assert!(why.expect("refused").contains("too old")),
        }
    }
    assert!(unfinished > 0, "no crash point fell inside the migration");
}
