//! A minimal in-process driver: perfect network, instant disk. It checks the
//! core's behaviour without the simulator's faults.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use cairn_core::api::{Input, IoResult, Output, ReadRequest, Request, Response};
use cairn_core::node::Phase;
use cairn_core::version::ReleaseId;
use cairn_core::{
    context, Actor, AdminCommand, BackupInfo, ClientError, Context, ContextKey, Event,
    InitialClusterState, Node, NodeConfig, NodeId, RequestId, Time, VersionVector,
};

struct Disk {
    durable: BTreeMap<Bytes, Bytes>,
    pending: Vec<(Bytes, Option<Bytes>)>,
}

/// A backup: what it is and the durable records it holds.
type Backup = (BackupInfo, BTreeMap<Bytes, Bytes>);

struct Cluster {
    now: Time,
    releases: BTreeMap<NodeId, ReleaseId>,
    initial_cv: ReleaseId,
    backups: BTreeMap<NodeId, Vec<Backup>>,
    nodes: BTreeMap<NodeId, Option<Node>>,
    disks: BTreeMap<NodeId, Disk>,
    timers: BTreeMap<NodeId, Time>,
    queue: VecDeque<(NodeId, Input)>,
    replies: BTreeMap<RequestId, Response>,
    events: Vec<(NodeId, Event)>,
    members: Vec<NodeId>,
    next_req: u64,
    /// Links that drop everything (from, to).
    cut: Vec<(NodeId, NodeId)>,
}

impl Cluster {
    fn new(n: u32) -> Cluster {
        Cluster::with_release(n, ReleaseId::current())
    }

    fn with_release(n: u32, release: ReleaseId) -> Cluster {
        let members: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let mut c = Cluster {
            now: Time::from_millis(1),
            releases: members.iter().map(|&m| (m, release)).collect(),
            initial_cv: release,
            backups: BTreeMap::new(),
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            timers: BTreeMap::new(),
            queue: VecDeque::new(),
            replies: BTreeMap::new(),
            events: Vec::new(),
            members: members.clone(),
            next_req: 1,
            cut: Vec::new(),
        };
        for &m in &members {
            c.disks.insert(
                m,
                Disk {
                    durable: BTreeMap::new(),
                    pending: Vec::new(),
                },
            );
            c.start(m);
        }
        c.run_for(500);
        c
    }

    fn start(&mut self, id: NodeId) {
        self.start_as(id, InitialClusterState::New);
    }

    fn start_as(&mut self, id: NodeId, state: InitialClusterState) {
        let mut cfg = NodeConfig::new(id, self.members.clone(), 7 + id.0 as u64);
        cfg.context_key = ContextKey::derive(b"the test cluster's secret");
        cfg.release = self.releases[&id];
        cfg.initial_cluster_version = Some(self.initial_cv);
        cfg.initial_cluster_state = state;
        let node = Node::new(cfg, self.now).expect("a valid configuration");
        self.nodes.insert(id, Some(node));
        self.drain(id);
    }

    fn crash(&mut self, id: NodeId) {
        self.nodes.insert(id, None);
        self.disks.get_mut(&id).unwrap().pending.clear();
        self.timers.remove(&id);
    }

    fn drain(&mut self, id: NodeId) {
        loop {
            let Some(Some(node)) = self.nodes.get_mut(&id) else {
                return;
            };
            match node.poll_output() {
                Output::Timeout(at) => {
                    self.timers.insert(id, at);
                    return;
                }
                Output::Send { to, bytes } => {
                    if !self.cut.contains(&(id, to)) {
                        self.queue.push_back((
                            to,
                            Input::Message {
                                now: self.now,
                                from: id,
                                bytes,
                            },
                        ));
                    }
                }
                Output::Write { key, value, .. } => {
                    self.disks.get_mut(&id).unwrap().pending.push((key, value))
                }
                Output::Sync { io } => {
                    let d = self.disks.get_mut(&id).unwrap();
                    for (k, v) in d.pending.drain(..) {
                        match v {
                            Some(v) => d.durable.insert(k, v),
                            None => d.durable.remove(&k),
                        };
                    }
                    self.queue.push_back((
                        id,
                        Input::IoDone {
                            now: self.now,
                            io,
                            result: IoResult::Synced,
                        },
                    ));
                }
                Output::Read {
                    io,
                    request: ReadRequest::All,
                } => {
                    let recs = self.disks[&id]
                        .durable
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    self.queue.push_back((
                        id,
                        Input::IoDone {
                            now: self.now,
                            io,
                            result: IoResult::Loaded(recs),
                        },
                    ));
                }
                Output::Reply { id: rid, response } => {
                    self.replies.insert(rid, response);
                }
                Output::Event(e) => self.events.push((id, e)),
                Output::Backup { io, info } => {
                    let snapshot = self.disks[&id].durable.clone();
                    self.backups.entry(id).or_default().push((info, snapshot));
                    self.queue.push_back((
                        id,
                        Input::IoDone {
                            now: self.now,
                            io,
                            result: IoResult::Synced,
                        },
                    ));
                }
            }
        }
    }

    /// Advances time in 1 ms steps, delivering everything due.
    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms {
            while let Some((to, mut input)) = self.queue.pop_front() {
                let now = self.now;
                match &mut input {
                    Input::Message { now: t, .. }
                    | Input::IoDone { now: t, .. }
                    | Input::Client { now: t, .. } => *t = now,
                    _ => {}
                }
                if let Some(Some(node)) = self.nodes.get_mut(&to) {
                    node.handle_input(input);
                    self.drain(to);
                }
            }
            self.now = self.now + cairn_core::Duration::from_millis(1);
            let due: Vec<NodeId> = self
                .timers
                .iter()
                .filter(|(_, &t)| t <= self.now)
                .map(|(&n, _)| n)
                .collect();
            for n in due {
                self.timers.remove(&n);
                if let Some(Some(node)) = self.nodes.get_mut(&n) {
                    node.handle_input(Input::Timeout(self.now));
                    self.drain(n);
                }
            }
        }
    }

    /// Sends an input built with a fresh request id and waits for its reply.
    fn submit(&mut self, at: NodeId, input: impl FnOnce(Time, RequestId) -> Input) -> Response {
        let id = RequestId(self.next_req);
        self.next_req += 1;
        self.queue.push_back((at, input(self.now, id)));
        for _ in 0..3000 {
            self.run_for(1);
            if let Some(r) = self.replies.remove(&id) {
                return r;
            }
        }
        panic!("no reply to request {id:?}");
    }

    fn request(&mut self, at: NodeId, request: Request) -> Response {
        self.submit(at, |now, id| Input::Client { now, id, request })
    }

    fn node(&self, id: u32) -> &Node {
        self.nodes[&NodeId(id)].as_ref().expect("node is running")
    }

    /// Clean restart, possibly as another release.
    fn restart_as(&mut self, id: u32, release: ReleaseId) {
        let id = NodeId(id);
        self.queue
            .push_back((id, Input::Shutdown { now: self.now }));
        self.run_for(20);
        self.crash(id);
        self.releases.insert(id, release);
        self.start(id);
        self.run_for(1000);
    }

    /// Crashes a node, replaces its disk by its first backup as an offline
    /// restore does (restore marker included) and starts it.
    fn restore_first_backup(&mut self, id: u32) {
        let id = NodeId(id);
        self.crash(id);
        let snapshot = self.backups[&id][0].1.clone();
        let disk = self.disks.get_mut(&id).unwrap();
        disk.durable = snapshot;
        disk.durable.insert(
            Bytes::from_static(cairn_core::storage::RESTORED_KEY),
            cairn_core::storage::restored_marker(),
        );
        self.start(id);
    }

    /// Crashes and restarts node `id` `times` times, writing a key through
    /// it after each start so that dots are issued in every epoch; returns
    /// the epoch it ends in.
    fn crash_restart_writing(&mut self, id: u32, times: usize) -> u32 {
        for i in 0..times {
            self.crash(NodeId(id));
            self.start(NodeId(id));
            self.run_for(500);
            assert_eq!(
                self.put(id, &format!("k{i}"), "v", Context::new()),
                Response::Written
            );
        }
        self.node(id).epoch()
    }

    /// Crashes node `id` and empties its disk, metadata included.
    fn lose_disk(&mut self, id: u32) {
        self.crash(NodeId(id));
        self.disks.get_mut(&NodeId(id)).unwrap().durable.clear();
    }

    fn has_restore_marker(&self, id: u32) -> bool {
        self.disks[&NodeId(id)]
            .durable
            .contains_key(cairn_core::storage::RESTORED_KEY)
    }

    fn admin(&mut self, at: u32, command: AdminCommand) -> Response {
        self.submit(NodeId(at), |now, id| Input::Admin { now, id, command })
    }

    fn finalize(&mut self, at: u32, target: &str) -> Response {
        self.admin(
            at,
            AdminCommand::Finalize {
                target: Some(target.into()),
            },
        )
    }

    /// Schemas of the data records on a node's disk.
    fn disk_schemas(&self, id: u32) -> Vec<u16> {
        let mut s: Vec<u16> = self.disks[&NodeId(id)]
            .durable
            .keys()
            .filter(|k| k.first() == Some(&b'd'))
            .filter_map(|k| cairn_core::storage::key_schema(k))
            .collect();
        s.dedup();
        s
    }

    fn get(&mut self, at: u32, key: &str) -> (Vec<Bytes>, Context) {
        match self.request(
            NodeId(at),
            Request::Get {
                key: Bytes::copy_from_slice(key.as_bytes()),
            },
        ) {
            Response::Read { siblings, context } => (
                siblings.into_iter().filter_map(|s| s.value).collect(),
                context,
            ),
            other => panic!("get failed: {other:?}"),
        }
    }

    fn put(&mut self, at: u32, key: &str, value: &str, context: Context) -> Response {
        self.request(
            NodeId(at),
            Request::Put {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::copy_from_slice(value.as_bytes()),
                context,
            },
        )
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[test]
fn nodes_start_and_connect() {
    let c = Cluster::new(3);
    for (id, n) in &c.nodes {
        let n = n.as_ref().unwrap();
        assert!(n.is_serving(), "{id} not serving");
        assert!(
            n.peers().iter().all(|p| p.protocol == Some(3) && p.up),
            "{id}: {:?}",
            n.peers()
        );
    }
}

#[test]
fn write_on_one_node_read_on_another() {
    let mut c = Cluster::new(5);
    assert_eq!(c.put(1, "k", "v1", Context::new()), Response::Written);
    for at in 1..=5 {
        assert_eq!(c.get(at, "k").0, vec![b("v1")]);
    }
}

#[test]
fn a_read_asks_r_replicas_and_hedges_to_the_rest_when_one_is_silent() {
    let mut c = Cluster::new(3);
    assert_eq!(c.put(1, "k", "v", Context::new()), Response::Written);
    c.run_for(100);
    // Healthy: R replicas answer, nobody else is asked.
    assert_eq!(c.get(1, "k").0, vec![b("v")]);
    assert_eq!(c.node(1).metrics().read_hedges, 0);
    // The first peer node 1 asks drops everything from it, but is not (yet)
    // judged down: the read asks the third replica after the hedge delay.
    let first = *c
        .node(1)
        .ring()
        .replicas_of(b"k")
        .iter()
        .find(|&&r| r != NodeId(1))
        .unwrap();
    c.cut = vec![(NodeId(1), first)];
    let before = c.now;
    assert_eq!(c.get(1, "k").0, vec![b("v")]);
    let took = c.now.as_micros() - before.as_micros();
    assert_eq!(c.node(1).metrics().read_hedges, 1);
    let timing = cairn_core::config::Timing::default();
    assert!(
        took < timing.read_hedge_after.0 + 50_000 && took < timing.request_timeout.0,
        "the hedged read took {took} us"
    );
}

#[test]
fn concurrent_writes_become_siblings_and_a_context_resolves_them() {
    let mut c = Cluster::new(3);
    assert_eq!(c.put(1, "k", "a", Context::new()), Response::Written);
    assert_eq!(c.put(2, "k", "b", Context::new()), Response::Written);
    let (vals, ctx) = c.get(3, "k");
    assert_eq!(vals.len(), 2, "{vals:?}");
    assert_eq!(c.put(3, "k", "c", ctx), Response::Written);
    assert_eq!(c.get(1, "k").0, vec![b("c")]);
}

#[test]
fn acknowledged_write_survives_a_crash_of_its_coordinator() {
    let mut c = Cluster::new(3);
    assert_eq!(c.put(1, "k", "v", Context::new()), Response::Written);
    c.crash(NodeId(1));
    assert_eq!(c.get(2, "k").0, vec![b("v")]);
    c.start(NodeId(1));
    c.run_for(1000);
    let n1 = c.nodes[&NodeId(1)].as_ref().unwrap();
    assert!(n1.is_serving());
    assert_eq!(n1.epoch(), 2, "an unclean restart takes a new epoch");
}

#[test]
fn hints_are_stored_and_drained_and_replicas_converge() {
    let mut c = Cluster::new(3);
    // Node 3 hears nothing.
    c.cut = vec![(NodeId(1), NodeId(3)), (NodeId(2), NodeId(3))];
    assert_eq!(c.put(1, "k", "v", Context::new()), Response::Written);
    c.run_for(1000);
    let hints: usize = c
        .nodes
        .values()
        .map(|n| n.as_ref().unwrap().hint_count())
        .sum();
    assert!(hints > 0, "no hint stored for the unreachable replica");
    c.cut.clear();
    c.run_for(3000);
    let hints: usize = c
        .nodes
        .values()
        .map(|n| n.as_ref().unwrap().hint_count())
        .sum();
    assert_eq!(hints, 0);
    let states: Vec<_> = c
        .nodes
        .values()
        .map(|n| n.as_ref().unwrap().key_state(b"k").cloned())
        .collect();
    assert!(
        states.iter().all(|s| s == &states[0] && s.is_some()),
        "{states:?}"
    );
}

#[test]
fn deletes_are_tombstones_then_reaped_everywhere() {
    let mut c = Cluster::new(3);
    assert_eq!(c.put(1, "k", "v", Context::new()), Response::Written);
    let (_, ctx) = c.get(2, "k");
    let r = c.request(
        NodeId(2),
        Request::Delete {
            key: b("k"),
            context: ctx,
        },
    );
    assert_eq!(r, Response::Written);
    assert!(c.get(3, "k").0.is_empty());
    c.run_for(20_000);
    for n in c.nodes.values() {
        assert!(
            n.as_ref().unwrap().key_state(b"k").is_none(),
            "tombstone not reaped"
        );
    }
    assert!(c
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::TombstoneReaped { .. })));
}

#[test]
fn clean_restart_keeps_the_epoch() {
    let mut c = Cluster::new(3);
    let e = c.nodes[&NodeId(2)].as_ref().unwrap().epoch();
    c.queue
        .push_back((NodeId(2), Input::Shutdown { now: c.now }));
    c.run_for(10);
    assert!(c
        .events
        .iter()
        .any(|(n, e)| *n == NodeId(2) && *e == Event::ShutdownComplete));
    c.crash(NodeId(2));
    c.start(NodeId(2));
    c.run_for(100);
    assert_eq!(c.nodes[&NodeId(2)].as_ref().unwrap().epoch(), e);
}

#[test]
fn anti_entropy_repairs_a_replica_that_lost_its_data() {
    let mut c = Cluster::new(3);
    for i in 0..20 {
        assert_eq!(
            c.put(1, &format!("k{i}"), "v", Context::new()),
            Response::Written
        );
    }
    c.run_for(100);
    // Wipe node 3's disk entirely.
    c.lose_disk(3);
    c.start(NodeId(3));
    c.run_for(15_000);
    let n3 = c.nodes[&NodeId(3)].as_ref().unwrap();
    let n1 = c.nodes[&NodeId(1)].as_ref().unwrap();
    for p in 0..n1.ring().partitions() {
        assert_eq!(
            n1.merkle_root(p),
            n3.merkle_root(p),
            "partition {p} differs"
        );
    }
    assert_eq!(n3.keys().count(), 20);
}

#[test]
fn a_node_whose_disk_was_lost_learns_its_epoch_when_told_it_has_run_before() {
    let mut c = Cluster::new(3);
    // Epochs move on, and dots are issued in the last one.
    let used = c.crash_restart_writing(2, 3);
    assert!(used >= 3);
    // The disk is lost; the operator says the node has run before.
    c.lose_disk(2);
    c.start_as(NodeId(2), InitialClusterState::Existing);
    c.run_for(100);
    assert!(
        c.has_restore_marker(2),
        "no marker while the epoch is unknown"
    );
    c.run_for(15_000);
    serves_with_an_epoch_above(&c, 2, used);
    // Re-synced before serving reads: it holds every key again.
    assert_eq!(c.node(2).keys().count(), 3);
    assert!(!c.has_restore_marker(2));
}

#[test]
fn a_node_whose_journal_was_lost_learns_its_epoch_without_being_told() {
    let mut c = Cluster::new(3);
    let used = c.crash_restart_writing(2, 2);
    // A clean stop, then the disk forgets everything (metadata included);
    // the node is started as if new, with no flag from the operator.
    c.restart_as(2, ReleaseId::current());
    c.lose_disk(2);
    // Node 3 is out of reach at first: node 2 must wait for it too.
    c.cut = vec![(NodeId(2), NodeId(3)), (NodeId(3), NodeId(2))];
    c.start(NodeId(2));
    c.run_for(1000);
    assert_eq!(c.node(2).phase(), Phase::Rejoining);
    assert!(
        !c.disks[&NodeId(2)]
            .durable
            .contains_key(cairn_core::storage::META_KEY),
        "wrote an epoch before asking its peers"
    );
    c.cut.clear();
    c.run_for(15_000);
    serves_with_an_epoch_above(&c, 2, used);
    assert_eq!(c.node(2).metrics().forgotten_disks, 1);
    // Writes through it after the loss are not absorbed by its old dots.
    for i in 0..5 {
        assert_eq!(
            c.put(2, &format!("new{i}"), "w", Context::new()),
            Response::Written
        );
    }
    for at in [1, 3] {
        for i in 0..5 {
            assert_eq!(c.get(at, &format!("new{i}")).0, vec![b("w")], "via n{at}");
        }
        assert_eq!(c.get(at, "k0").0, vec![b("v")]);
    }
}

#[test]
fn a_new_node_waits_for_every_peer_before_taking_its_first_epoch() {
    let mut c = Cluster::new(3);
    assert!(c.members.iter().all(|&m| c.node(m.0).epoch() == 1));
    assert!(!c
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::EpochLearned { .. })));
    // A node with an empty disk that cannot reach one peer does not start:
    // that peer may be the only one that knows it ran before.
    c.lose_disk(3);
    c.cut = vec![(NodeId(3), NodeId(1)), (NodeId(1), NodeId(3))];
    c.start(NodeId(3));
    c.run_for(3000);
    assert_eq!(c.node(3).phase(), Phase::Rejoining);
    assert!(matches!(
        c.put(3, "k", "v", Context::new()),
        Response::Error(_)
    ));
    c.cut.clear();
    c.run_for(15_000);
    serves_with_an_epoch_above(&c, 3, 1);
}

#[test]
fn peers_learn_a_nodes_epoch_from_its_handshake_and_gossip() {
    let mut c = Cluster::new(3);
    c.crash(NodeId(2));
    c.start(NodeId(2));
    c.run_for(2000);
    let epoch = c.node(2).epoch();
    assert!(epoch > 1);
    let seen = c
        .node(1)
        .peers()
        .into_iter()
        .find(|p| p.id == NodeId(2))
        .and_then(|p| p.info)
        .map(|i| i.epoch);
    assert_eq!(seen, Some(epoch));
}

#[test]
fn a_new_node_goes_on_with_a_majority_when_a_peer_never_answers() {
    let mut c = Cluster::new(3);
    c.lose_disk(3);
    c.cut = vec![(NodeId(3), NodeId(1)), (NodeId(1), NodeId(3))];
    c.start(NodeId(3));
    c.run_for(5_000);
    assert_eq!(c.node(3).phase(), Phase::Rejoining);
    // Past the probe timeout, node 2's answer (it saw epoch 1) and its own
    // make a majority: it takes an epoch past 1 by a random step.
    c.run_for(10_000);
    assert_ne!(c.node(3).phase(), Phase::Rejoining);
    assert!(c.node(3).epoch() > 2, "epoch {}", c.node(3).epoch());
    // Alone with no peer answering, a node keeps waiting.
    let mut c = Cluster::new(3);
    c.lose_disk(3);
    c.cut = [1, 2]
        .iter()
        .flat_map(|&p| [(NodeId(3), NodeId(p)), (NodeId(p), NodeId(3))])
        .collect();
    c.start(NodeId(3));
    c.run_for(20_000);
    assert_eq!(c.node(3).phase(), Phase::Rejoining);
}

/// Node `id` serves, at an epoch above every epoch it `used` before.
fn serves_with_an_epoch_above(c: &Cluster, id: u32, used: u32) {
    let n = c.node(id);
    assert!(n.is_serving(), "{:?}", n.phase());
    assert!(
        n.epoch() > used,
        "epoch {} reuses one used before ({used})",
        n.epoch()
    );
}

/// The cluster version a node's durable metadata names.
fn durable_cluster_version(c: &Cluster, id: u32) -> String {
    let meta = &c.disks[&NodeId(id)].durable[cairn_core::storage::META_KEY];
    match cairn_core::storage::decode_record(cairn_core::storage::META_KEY, meta) {
        Ok(cairn_core::storage::Record::Meta(m)) => m.cluster_version,
        other => panic!("metadata record: {other:?}"),
    }
}

#[test]
fn a_shutdown_while_a_cluster_version_persists_keeps_it() {
    let mut c = upgraded_to_0_2_unfinalized();
    assert_eq!(durable_cluster_version(&c, 2), "0.1.0");
    c.finalize(1, "0.2.0");
    // Deliver node 2's inputs one by one; as soon as its metadata names
    // 0.2.0 on disk (persisted, not yet acted on), ask it to shut down.
    let mut shut = false;
    for _ in 0..10_000 {
        let Some((to, input)) = c.queue.pop_front() else {
            c.run_for(1);
            continue;
        };
        if let Some(Some(node)) = c.nodes.get_mut(&to) {
            node.handle_input(input);
            c.drain(to);
        }
        if !shut && durable_cluster_version(&c, 2) == "0.2.0" {
            assert_eq!(c.node(2).cluster_version(), release("0.1.0"));
            c.queue
                .push_front((NodeId(2), Input::Shutdown { now: c.now }));
            shut = true;
        }
        if shut && c.queue.is_empty() {
            break;
        }
    }
    assert!(shut, "node 2 never persisted 0.2.0");
    assert_eq!(
        durable_cluster_version(&c, 2),
        "0.2.0",
        "the shutdown's metadata took the persisted cluster version back"
    );
    c.crash(NodeId(2));
    c.start(NodeId(2));
    c.run_for(500);
    assert_eq!(c.node(2).cluster_version(), release("0.2.0"));
}

/// Three nodes that started on 0.1.0 and were each restarted on 0.2.0; the
/// cluster version is still 0.1.0.
fn upgraded_to_0_2_unfinalized() -> Cluster {
    let mut c = Cluster::with_release(3, release("0.1.0"));
    for id in 1..=3 {
        c.restart_as(id, release("0.2.0"));
    }
    c.run_for(2000);
    c
}

fn release(v: &str) -> ReleaseId {
    ReleaseId::by_version(v).unwrap()
}

#[test]
fn rolling_upgrade_with_finalization_migrates_every_node() {
    let mut c = Cluster::with_release(3, release("0.1.0"));
    for i in 0..30 {
        assert_eq!(
            c.put(
                1 + i % 3,
                &format!("k{i}"),
                &format!("v{i}"),
                Context::new()
            ),
            Response::Written
        );
    }
    c.restart_as(1, release("0.2.0"));
    assert!(c.node(1).is_serving());
    assert_eq!(
        c.disk_schemas(1),
        vec![1],
        "no new format before finalization"
    );
    match c.finalize(1, "0.2.0") {
        Response::Error(cairn_core::ClientError::Refused(why)) => {
            assert!(why.contains("runs 0.1.0"), "{why}")
        }
        other => panic!("finalize should be refused: {other:?}"),
    }
    c.restart_as(2, release("0.2.0"));
    c.restart_as(3, release("0.2.0"));
    c.run_for(2000);
    assert_eq!(
        c.finalize(2, "0.2.0"),
        Response::Finalized {
            cluster_version: "0.2.0".into()
        }
    );
    c.run_for(3000);
    for id in 1..=3 {
        assert_eq!(c.node(id).schema(), 2, "n{id} not migrated");
        assert_eq!(c.disk_schemas(id), vec![2]);
        assert!(c.node(id).is_serving());
        assert!(
            !c.backups[&NodeId(id)].is_empty(),
            "no backup before migration"
        );
    }
    for i in 0..30 {
        assert_eq!(
            c.get(1 + i % 3, &format!("k{i}")).0,
            vec![b(&format!("v{i}"))]
        );
    }
    // Then on to 0.3.0.
    for id in 1..=3 {
        c.restart_as(id, release("0.3.0"));
        assert!(c.node(id).is_serving(), "{:?}", c.node(id).refusal());
    }
    assert_eq!(
        c.finalize(3, "0.3.0"),
        Response::Finalized {
            cluster_version: "0.3.0".into()
        }
    );
    c.run_for(3000);
    for id in 1..=3 {
        assert_eq!(c.disk_schemas(id), vec![3]);
    }
    for i in 0..30 {
        assert_eq!(
            c.get(1 + i % 3, &format!("k{i}")).0,
            vec![b(&format!("v{i}"))]
        );
    }
}

#[test]
fn rollback_before_finalization_loses_nothing() {
    let mut c = Cluster::with_release(3, release("0.1.0"));
    c.restart_as(1, release("0.2.0"));
    assert_eq!(
        c.put(1, "k", "written by 0.2", Context::new()),
        Response::Written
    );
    c.restart_as(1, release("0.1.0"));
    assert!(c.node(1).is_serving());
    assert_eq!(
        c.node(1).key_state(b"k").map(|s| s.values().count()),
        Some(1)
    );
}

#[test]
fn downgrade_after_finalization_is_refused() {
    let mut c = upgraded_to_0_2_unfinalized();
    assert_eq!(
        c.finalize(1, "0.2.0"),
        Response::Finalized {
            cluster_version: "0.2.0".into()
        }
    );
    c.run_for(2000);
    c.restart_as(2, release("0.1.0"));
    let n2 = c.node(2);
    assert_eq!(n2.phase(), Phase::Refusing);
    let why = n2.refusal().unwrap();
    assert!(
        why.contains("schema 2") || why.contains("older than the active cluster version"),
        "{why}"
    );
}

#[test]
fn restore_from_backup_learns_its_epochs_from_peers() {
    let mut c = Cluster::new(3);
    assert!(matches!(
        c.admin(2, AdminCommand::Backup),
        Response::BackedUp { .. }
    ));
    // Crash twice: epochs move on past the backup's.
    for _ in 0..2 {
        c.crash(NodeId(2));
        c.start(NodeId(2));
        c.run_for(500);
        assert_eq!(c.put(2, "after", "x", Context::new()), Response::Written);
    }
    let used = c.node(2).epoch();
    c.restore_first_backup(2);
    c.run_for(3000);
    serves_with_an_epoch_above(&c, 2, used);
    assert!(c
        .events
        .iter()
        .any(|(n, e)| *n == NodeId(2) && matches!(e, Event::EpochLearned { .. })));
}

#[test]
fn a_restored_backup_brings_back_no_delete_reaped_since() {
    let mut c = Cluster::new(3);
    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert_eq!(c.put(1, k, "old", Context::new()), Response::Written);
    }
    assert!(matches!(
        c.admin(2, AdminCommand::Backup),
        Response::BackedUp { .. }
    ));
    for k in &keys {
        let (_, ctx) = c.get(1, k);
        assert_eq!(
            c.request(
                NodeId(1),
                Request::Delete {
                    key: b(k),
                    context: ctx,
                }
            ),
            Response::Written
        );
    }
    // Long enough for every replica to reap every tombstone.
    c.run_for(60_000);
    let reaped: u64 = c
        .members
        .clone()
        .iter()
        .map(|&m| c.node(m.0).metrics().tombstones_reaped)
        .sum();
    assert!(reaped >= 10, "only {reaped} tombstones reaped");
    c.restore_first_backup(2);
    c.run_for(30_000);
    assert!(c.node(2).is_serving(), "{:?}", c.node(2).phase());
    assert!(!c.has_restore_marker(2));
    assert_eq!(c.node(2).metrics().restored_keys_dropped, keys.len() as u64);
    for at in [1, 2, 3] {
        for k in &keys {
            assert!(c.get(at, k).0.is_empty(), "{k} came back via n{at}");
        }
    }
    // What the replicas still hold is pulled back, and writes go on.
    assert_eq!(c.put(2, "new", "v", Context::new()), Response::Written);
    assert_eq!(c.get(3, "new").0, vec![b("v")]);
}

#[test]
fn a_restart_before_the_resync_completes_resyncs_again() {
    let mut c = Cluster::new(3);
    assert!(matches!(
        c.admin(2, AdminCommand::Backup),
        Response::BackedUp { .. }
    ));
    // A delete acknowledged after the backup: the restored copy lacks it.
    let (_, ctx) = c.get(1, "k");
    assert_eq!(c.put(1, "k", "v", ctx), Response::Written);
    let (_, ctx) = c.get(1, "k");
    assert_eq!(
        c.request(
            NodeId(1),
            Request::Delete {
                key: b("k"),
                context: ctx,
            }
        ),
        Response::Written
    );
    c.restore_first_backup(2);
    // Let it learn its epoch, then keep node 3 out of reach so the re-sync
    // cannot complete.
    for _ in 0..3000 {
        c.run_for(1);
        if c.events
            .iter()
            .any(|(n, e)| *n == NodeId(2) && matches!(e, Event::EpochLearned { .. }))
        {
            break;
        }
    }
    c.cut = vec![(NodeId(2), NodeId(3)), (NodeId(3), NodeId(2))];
    c.run_for(3000);
    assert!(c.has_restore_marker(2), "marker dropped before the re-sync");
    // A clean restart before the re-sync completes: the node must not serve
    // reads from its restored data.
    c.restart_as(2, ReleaseId::current());
    c.run_for(3000);
    assert!(c.has_restore_marker(2));
    assert!(!c.node(2).is_serving(), "{:?}", c.node(2).phase());
    assert!(matches!(
        c.request(NodeId(2), Request::Get { key: b("k") }),
        Response::Error(_)
    ));
    // Once node 3 is reachable the node rejoins, re-syncs and serves.
    c.cut.clear();
    c.run_for(20_000);
    assert!(c.node(2).is_serving(), "{:?}", c.node(2).phase());
    assert!(!c.has_restore_marker(2), "marker kept after the re-sync");
    assert!(c.get(2, "k").0.is_empty(), "the delete is lost");
}

#[test]
fn a_data_directory_from_a_newer_release_is_refused() {
    let mut c = Cluster::new(3);
    assert_eq!(c.put(1, "k", "v", Context::new()), Response::Written);
    c.restart_as(1, release("0.1.0"));
    let n1 = c.node(1);
    assert_eq!(n1.phase(), Phase::Refusing);
    // A 0.1.0 binary has never heard of 0.3.0: it names what it found.
    let why = n1.refusal().unwrap();
    assert!(
        why.contains("0.1.0") && why.contains("cluster version 0.3.0"),
        "{why}"
    );
}

#[test]
fn a_backward_step_of_the_drivers_clock_does_not_stop_the_nodes_timers() {
    let members = vec![NodeId(1), NodeId(2), NodeId(3)];
    let start = Time::from_millis(100_000);
    let mut node = Node::new(NodeConfig::new(NodeId(1), members, 7), start).unwrap();
    // Answers its reads and syncs at `now` until it asks to be woken.
    let settle = |node: &mut Node, now: Time| loop {
        let result = match node.poll_output() {
            Output::Timeout(at) => return at,
            Output::Read { io, .. } => (io, IoResult::Loaded(Vec::new())),
            Output::Sync { io } => (io, IoResult::Synced),
            _ => continue,
        };
        node.handle_input(Input::IoDone {
            now,
            io: result.0,
            result: result.1,
        });
    };
    let at = settle(&mut node, start);
    assert!(at.as_micros() < start.as_micros() + 5_000_000, "{at:?}");
    // The driver's clock steps back by a minute.
    let back = Time::from_millis(40_000);
    node.handle_input(Input::Timeout(back));
    let at = settle(&mut node, back);
    // The next wake-up is asked for in the driver's time, soon after the
    // step, not a minute later when the clock has caught up.
    assert!(
        at.as_micros() < back.as_micros() + 5_000_000,
        "asked to be woken at {at:?}, the clock reads {back:?}"
    );
    // Time keeps flowing at the clock's rate from there.
    let later = Time::from_millis(41_000);
    node.handle_input(Input::Timeout(later));
    let at = settle(&mut node, later);
    assert!(at.as_micros() < later.as_micros() + 5_000_000, "{at:?}");
}

// ---- client contexts -------------------------------------------------------

fn actor(node: u32, epoch: u32) -> Actor {
    Actor {
        node: NodeId(node),
        epoch,
    }
}

fn bad_context(r: &Response) -> &str {
    match r {
        Response::Error(ClientError::BadContext(why)) => why,
        other => panic!("expected a bad context, got {other:?}"),
    }
}

/// The outside test that found the bug: a context claiming versions of the
/// other nodes far beyond what they issued, sent through node 1, made every
/// later write through nodes 2 and 3 look already seen.
#[test]
fn a_forged_context_is_refused_and_later_writes_survive() {
    let mut c = Cluster::new(3);
    assert_eq!(c.put(1, "k", "first", Context::new()), Response::Written);
    let forged = VersionVector::from_entries([
        (actor(2, 1), 1_000_000_000_000),
        (actor(3, 1), 1_000_000_000_000),
    ]);
    let issued = |c: &Cluster| {
        c.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::WriteIssued { .. }))
            .count()
    };
    let before = issued(&c);
    for token in [
        context::with_tag(&forged, [0; context::TAG_LEN]),
        Context::from(context::legacy_encoding(&forged)),
    ] {
        let r = c.put(1, "k", "forged", token);
        assert!(!bad_context(&r).is_empty());
    }
    assert_eq!(issued(&c), before, "a refused write issued a dot");
    assert_eq!(c.node(1).metrics().bad_contexts, 2);
    for (at, v) in [(2, "via 2"), (3, "via 3"), (2, "via 2 again")] {
        assert_eq!(c.put(at, "k", v, Context::new()), Response::Written);
    }
    c.run_for(2000);
    for at in 1..=3 {
        let mut vals = c.get(at, "k").0;
        vals.sort();
        assert_eq!(
            vals,
            vec![b("first"), b("via 2"), b("via 2 again"), b("via 3")],
            "read through n{at}"
        );
    }
}

#[test]
fn contexts_of_another_key_unknown_formats_truncated_and_oversized_are_refused() {
    let mut c = Cluster::new(3);
    assert_eq!(c.put(1, "a", "a1", Context::new()), Response::Written);
    assert_eq!(c.put(1, "b", "b1", Context::new()), Response::Written);
    let (_, of_a) = c.get(2, "a");
    let r = c.put(3, "b", "b2", of_a.clone());
    assert!(bad_context(&r).contains("another key"), "{r:?}");
    let cut = Context::from(&of_a.as_bytes()[..of_a.as_bytes().len() - 3]);
    let r = c.put(3, "a", "a2", cut);
    assert!(bad_context(&r).contains("malformed"), "{r:?}");
    let mut old = of_a.as_bytes().to_vec();
    old[0] = 0x01;
    let r = c.put(3, "a", "a2", Context::from(old));
    assert!(bad_context(&r).contains("unknown format"), "{r:?}");
    let huge = VersionVector::from_entries((1..=5000).map(|n| (actor(n, 1), 1)));
    let r = c.put(
        3,
        "a",
        "a2",
        context::with_tag(&huge, [7; context::TAG_LEN]),
    );
    assert!(bad_context(&r).contains("oversized"), "{r:?}");
    let r = c.request(
        NodeId(3),
        Request::Delete {
            key: b("b"),
            context: of_a,
        },
    );
    bad_context(&r);
    // Nothing changed.
    assert_eq!(c.get(1, "a").0, vec![b("a1")]);
    assert_eq!(c.get(1, "b").0, vec![b("b1")]);
}

/// A context read long ago, before many other writes (and a restart of its
/// coordinator), is still the key's own: the write supersedes what it saw
/// and leaves everything newer as siblings.
#[test]
fn a_context_read_long_ago_stays_valid_on_its_key() {
    let mut c = Cluster::new(5);
    assert_eq!(c.put(1, "k", "old", Context::new()), Response::Written);
    let (_, long_ago) = c.get(4, "k");
    for i in 0..20 {
        let (_, ctx) = c.get(1 + i % 5, "k");
        assert_eq!(
            c.put(1 + (i + 1) % 5, "k", &format!("v{i}"), ctx),
            Response::Written
        );
    }
    c.restart_as(2, ReleaseId::current());
    // Written through every node, replicas and non-replicas (which forward
    // the checked context).
    assert_eq!(c.put(5, "k", "late", long_ago.clone()), Response::Written);
    let mut vals = c.get(3, "k").0;
    vals.sort();
    assert_eq!(vals, vec![b("late"), b("v19")]);
    for at in 1..=4 {
        assert_eq!(
            c.put(at, "k", &format!("late {at}"), long_ago.clone()),
            Response::Written
        );
    }
}
