//! Peers: the handshake, gossip and failure detection.
//!
//! Handshake: a node says [`wire::Hello`] to every peer when it starts
//! serving and whenever a peer sends it something before they agreed on a
//! protocol. The answer is [`wire::HelloAck`] with the highest protocol both
//! speak, or [`wire::Refuse`] naming both ranges. Messages for a peer wait in a
//! bounded queue until its handshake completes; messages from a peer without a
//! handshake are dropped (and counted), never guessed at.
//!
//! Gossip: every `gossip_interval` a node bumps its heartbeat and sends every
//! member's latest [`wire::MemberInfo`] (release, protocols, schema, cluster
//! version, health) to one random peer, so version drift is visible on every
//! node. A peer whose heartbeat has not advanced (and that sent nothing) for
//! `peer_down_after` is judged down.
//!
//! A node that starts refusing to serve gossips to every peer at once, and
//! keeps handshaking and gossiping while it refuses. A start counts as a
//! new generation even when it refuses (and persists nothing); a node that
//! hears of itself at a (generation, heartbeat) ahead of its own moves past
//! it, so its own word wins. A hello naming another release than gossip
//! last reported replaces what was known of the peer's last life; a peer
//! whose release we cannot talk to is listed with that release as
//! `Refusing`.

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::api::{Event, Output};
use crate::types::{NodeId, Time};
use crate::version;
use crate::wire::{self, Health, MemberInfo, Message};

use super::{Node, Phase};

pub(crate) struct Peer {
    pub id: NodeId,
    /// The agreed protocol, once the handshake completed.
    pub protocol: Option<u16>,
    /// Why the peer refused us (or we it), if it did.
    pub refused: Option<String>,
    pub last_hello: Option<Time>,
    /// The latest gossip about this peer.
    pub info: Option<MemberInfo>,
    /// When we last had evidence the peer is alive.
    pub last_seen: Option<Time>,
    pub up: bool,
    pub queue: VecDeque<Message>,
}

impl Peer {
    pub fn new(id: NodeId) -> Peer {
        Peer {
            id,
            protocol: None,
            refused: None,
            last_hello: None,
            info: None,
            last_seen: None,
            up: false,
            queue: VecDeque::new(),
        }
    }
}

/// A read-only view of a peer, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub id: NodeId,
    pub protocol: Option<u16>,
    pub up: bool,
    pub refused: Option<String>,
    pub info: Option<MemberInfo>,
}

impl Node {
    /// Every peer as this node sees it.
    pub fn peers(&self) -> Vec<PeerView> {
        self.peers
            .values()
            .map(|p| PeerView {
                id: p.id,
                protocol: p.protocol,
                up: p.up,
                refused: p.refused.clone(),
                info: p.info.clone(),
            })
            .collect()
    }

    /// What this node says about itself in gossip.
    pub fn self_info(&self) -> MemberInfo {
        MemberInfo {
            node: self.cfg.id,
            epoch: self.announced_epoch(),
            generation: self.generation,
            heartbeat: self.heartbeat,
            release: wire::Label::from_static(self.release.version),
            protocols: self.release.protocols,
            schema: self.schema,
            cluster_version: wire::Label::from_static(self.cluster_version.version()),
            health: self.health(),
        }
    }

    pub(super) fn peer_ready(&self, peer: NodeId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.protocol.is_some())
    }

    /// Handshaken and believed up.
    pub(super) fn peer_usable(&self, peer: NodeId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.protocol.is_some() && p.up)
    }

    /// The protocol agreed with a peer: None before a handshake completes
    /// and after the peer refused us or we refused it.
    pub fn peer_protocol(&self, peer: NodeId) -> Option<u16> {
        self.peers.get(&peer).and_then(|p| p.protocol)
    }

    /// Sends a message, or queues it until the peer's handshake completes.
    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        self.send_each(&[to], message);
    }

    /// Sends one message to several peers, in order, encoding it once per
    /// protocol rather than once per peer.
    pub(super) fn send_each(&mut self, targets: &[NodeId], message: Message) {
        let max_queue = self.cfg.limits.max_peer_queue;
        let unchecked = self.bugs().new_message_before_finalization;
        let mut encoded: Option<(u16, bytes::Bytes)> = None;
        let mut message = Some(message);
        for (i, &to) in targets.iter().enumerate() {
            let Some(m) = message.as_ref() else {
                return;
            };
            let Some(peer) = self.peers.get_mut(&to) else {
                continue;
            };
            match peer.protocol {
                // (The planted bug sends new messages without this check.)
                Some(p) if m.min_protocol() > p && !unchecked => {
                    // The peer and we disagree on the protocol (a handshake
                    // message was lost): never send what it may not decode.
                    // Drop it, and agree again.
                    self.metrics.protocol_mismatch_drops += 1;
                    self.maybe_hello(to);
                }
                Some(p) => {
                    let bytes = match encoded.take() {
                        Some((q, b)) if q == p => b,
                        _ => wire::encode(p, m),
                    };
                    // Kept only for a later target: the first clone of
                    // freshly encoded bytes allocates.
                    if i + 1 < targets.len() {
                        encoded = Some((p, bytes.clone()));
                    }
                    self.push(Output::Send { to, bytes });
                }
                None => {
                    if peer.queue.len() >= max_queue {
                        peer.queue.pop_front();
                        self.metrics.peer_queue_drops += 1;
                    }
                    // The last target may take the message itself.
                    let queued = if i + 1 == targets.len() {
                        message.take().expect("checked above")
                    } else {
                        m.clone()
                    };
                    peer.queue.push_back(queued);
                    self.maybe_hello(to);
                }
            }
        }
    }

    fn send_handshake(&mut self, to: NodeId, message: Message) {
        // Handshake bodies are frozen; they travel at our lowest protocol.
        let bytes = wire::encode(self.release.protocols.min, &message);
        self.push(Output::Send { to, bytes });
    }

    fn hello(&self) -> wire::Hello {
        wire::Hello {
            node: self.cfg.id,
            release: self.release.version.into(),
            protocols: self.release.protocols,
            epoch: self.announced_epoch(),
            your_epoch: 0,
        }
    }

    pub(super) fn hello_all(&mut self) {
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            self.say_hello(id);
        }
    }

    fn say_hello(&mut self, to: NodeId) {
        let now = self.now;
        if let Some(p) = self.peers.get_mut(&to) {
            p.last_hello = Some(now);
        }
        let mut hello = self.hello();
        hello.your_epoch = self.epochs_seen.get(&to).copied().unwrap_or(0);
        self.send_handshake(to, Message::Hello(hello));
    }

    /// Says hello unless we did so recently.
    pub(super) fn maybe_hello(&mut self, to: NodeId) {
        if !self.talks_to_peers() {
            return;
        }
        let retry = self.cfg.timing.handshake_retry;
        let due = self.peers.get(&to).is_some_and(|p| {
            p.last_hello
                .is_none_or(|t| self.now.saturating_since(t) >= retry)
        });
        if due {
            self.say_hello(to);
        }
    }

    pub(super) fn retry_handshakes(&mut self) {
        let pending: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.protocol.is_none())
            .map(|p| p.id)
            .collect();
        for id in pending {
            self.maybe_hello(id);
        }
    }

    fn agree(&self, release: &str, protocols: version::ProtocolRange) -> Result<u16, String> {
        version::negotiate(
            self.release.version,
            self.release.protocols,
            release,
            protocols,
        )
        .map_err(|e| e.to_string())
    }

    pub(super) fn handle_hello(&mut self, from: NodeId, m: wire::Hello) {
        if m.node != from || !self.talks_to_peers() {
            return;
        }
        self.note_epoch(from, m.epoch);
        let agreed = self.agree(&m.release, m.protocols);
        self.note_release(from, &m.release, m.protocols, agreed.is_ok());
        match agreed {
            Ok(protocol) => {
                let ack = Message::HelloAck(wire::HelloAck {
                    node: self.cfg.id,
                    release: self.release.version.into(),
                    protocols: self.release.protocols,
                    epoch: self.announced_epoch(),
                    protocol,
                    your_epoch: self.epochs_seen.get(&from).copied().unwrap_or(0),
                });
                self.send_handshake(from, ack);
                self.connected(from, protocol);
                self.rejoin_report(from, m.your_epoch);
            }
            Err(reason) => {
                self.send_handshake(
                    from,
                    Message::Refuse(wire::Refuse {
                        node: self.cfg.id,
                        reason: reason.clone(),
                    }),
                );
                self.refused(from, reason);
            }
        }
    }

    pub(super) fn handle_hello_ack(&mut self, from: NodeId, m: wire::HelloAck) {
        if m.node != from || !self.talks_to_peers() {
            return;
        }
        self.note_epoch(from, m.epoch);
        // Check the peer's choice ourselves rather than trusting it.
        let agreed = self.agree(&m.release, m.protocols);
        self.note_release(from, &m.release, m.protocols, agreed.is_ok());
        match agreed {
            Ok(p) if p == m.protocol => {
                self.connected(from, p);
                self.rejoin_report(from, m.your_epoch);
            }
            Ok(p) => self.refused(
                from,
                alloc::format!(
                    "peer chose protocol {} but the highest common one is {p}",
                    m.protocol
                ),
            ),
            Err(reason) => self.refused(from, reason),
        }
    }

    pub(super) fn handle_refuse(&mut self, from: NodeId, m: wire::Refuse) {
        if m.node == from {
            self.refused(from, m.reason);
        }
    }

    fn connected(&mut self, peer: NodeId, protocol: u16) {
        let now = self.now;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let changed = p.protocol != Some(protocol);
        p.protocol = Some(protocol);
        p.refused = None;
        p.last_seen = Some(now);
        let queued: Vec<Message> = p.queue.drain(..).collect();
        if changed {
            self.emit(Event::PeerConnected { peer, protocol });
        }
        self.set_up(peer, true);
        for m in queued {
            self.send(peer, m);
        }
    }

    fn refused(&mut self, peer: NodeId, reason: String) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.protocol = None;
        let dropped = p.queue.len() as u64;
        p.queue.clear();
        self.metrics.peer_queue_drops += dropped;
        if p.refused.as_deref() != Some(reason.as_str()) {
            p.refused = Some(reason.clone());
            self.emit(Event::PeerRefused { peer, reason });
        }
        self.set_up(peer, false);
    }

    pub(super) fn note_alive(&mut self, peer: NodeId) {
        let now = self.now;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_seen = Some(now);
            if !p.up && p.protocol.is_some() {
                self.set_up(peer, true);
            }
        }
    }

    fn set_up(&mut self, peer: NodeId, up: bool) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.up != up {
                p.up = up;
                self.emit(Event::PeerLiveness { peer, up });
            }
        }
    }

    pub(super) fn gossip_round(&mut self) {
        self.heartbeat += 1;
        // Failure detection.
        let down_after = self.cfg.timing.peer_down_after;
        let now = self.now;
        let stale: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| {
                p.up && p
                    .last_seen
                    .is_none_or(|t| now.saturating_since(t) >= down_after)
            })
            .map(|p| p.id)
            .collect();
        for id in stale {
            self.set_up(id, false);
        }
        // The handshaken peers, counted and then indexed rather than collected.
        let count = self.peers.values().filter(|p| p.protocol.is_some()).count();
        if count == 0 {
            return;
        }
        let i = self.random_index(count);
        let target = self
            .peers
            .values()
            .filter(|p| p.protocol.is_some())
            .nth(i)
            .expect("fewer than count")
            .id;
        let gossip = self.gossip();
        self.send(target, gossip);
    }

    /// This node's gossip: its own info first, then what it knows of every
    /// peer.
    fn gossip(&self) -> Message {
        let mut members = Vec::with_capacity(self.peers.len() + 1);
        members.push(self.self_info());
        members.extend(self.peers.values().filter_map(|p| p.info.clone()));
        Message::Gossip(wire::Gossip { members })
    }

    /// Gossips to every peer at once (queued for those not yet handshaken),
    /// as when this node's health changes in a way peers must not miss.
    pub(super) fn announce(&mut self) {
        if !self.talks_to_peers() {
            return;
        }
        let targets: Vec<NodeId> = self.peers.keys().copied().collect();
        let gossip = self.gossip();
        self.send_each(&targets, gossip);
    }

    /// What a peer's handshake says of it. A release other than the one
    /// gossip last reported means a new life of the peer, whose gossip may
    /// never reach us (we cannot talk to it) or may not be newer than the
    /// last life's by its generation (a start that refused to serve persists
    /// none): what we knew of the old life no longer holds. A peer whose
    /// release we cannot talk to serves nothing to us.
    fn note_release(
        &mut self,
        peer: NodeId,
        release: &str,
        protocols: version::ProtocolRange,
        compatible: bool,
    ) {
        let Some(info) = self.peers.get_mut(&peer).and_then(|p| p.info.as_mut()) else {
            return;
        };
        if info.release != release {
            info.generation += 1;
            info.heartbeat = 0;
            info.release = wire::Label::new(release);
            info.protocols = protocols;
            info.health = Health::Starting;
        }
        if !compatible {
            info.health = Health::Refusing;
        }
    }

    pub(super) fn handle_gossip(&mut self, _from: NodeId, m: wire::Gossip) {
        let now = self.now;
        let learn = matches!(self.phase, Phase::Serving | Phase::Migrating);
        for info in m.members.into_iter().take(self.cfg.members.len()) {
            if info.node == self.cfg.id {
                // What peers say of this node, ahead of what it says of
                // itself (a guess from its hello, or a life that persisted
                // no generation): move past it, so its own word wins.
                if (info.generation, info.heartbeat) > (self.generation, self.heartbeat) {
                    self.generation = info.generation;
                    self.heartbeat = info.heartbeat + 1;
                }
                continue;
            }
            if learn && info.cluster_version != self.cluster_version.version() {
                self.learn_cluster_version(&info.cluster_version);
            }
            self.note_epoch(info.node, info.epoch);
            let Some(p) = self.peers.get_mut(&info.node) else {
                continue;
            };
            let newer = p.info.as_ref().is_none_or(|old| {
                (info.generation, info.heartbeat) > (old.generation, old.heartbeat)
            });
            if newer {
                p.info = Some(info);
                p.last_seen = Some(now);
            }
        }
    }
}
