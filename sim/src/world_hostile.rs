//! The world's side of [`crate::hostile`]: now and then in the safety
//! phase, a frame no honest peer sends reaches a running node from another
//! running one, and the node's reaction is judged at once (oracle
//! `hostile-frame`).

use super::*;
use crate::hostile::{Reaction, Receiver};

impl World {
    pub(super) fn hostile_step(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        let d = self.hostile.tick_us();
        self.after(d, Ev::Hostile);
        let n = self.slots.len();
        let to = self.hostile.pick(n);
        if !self.slots[to].takes_input() {
            return;
        }
        // The sender: another running node with a working link (a frame in
        // the name of a node that is down would make the receiver believe
        // it up, which no real connection can do).
        let senders: Vec<usize> = (0..n)
            .filter(|&j| j != to && self.slots[j].takes_input() && !self.net.is_blocked(j, to))
            .collect();
        if senders.is_empty() {
            return;
        }
        let from = senders[self.hostile.pick(senders.len())];
        let sender = self.slots[from].id;
        let Some(node) = self.slots[to].node.as_ref() else {
            return;
        };
        let agreed = node.peer_protocol(sender);
        let receiver = Receiver {
            id: self.slots[to].id,
            reads_from_sender: node.phase() == CorePhase::Serving && agreed.is_some(),
            protocol: agreed.unwrap_or(node.release().protocols.max),
            ring: &self.ring,
        };
        let frame = self.hostile.frame(sender, &receiver);
        self.faults.hostile_frames += 1;
        self.fault(FaultKind::HostileFrame, Some(to), sender.0 as u64);
        let (before, sent_before) = (self.slots[to].counted, self.slots[to].sent);
        self.hostile_feed = true;
        let msg_type = crate::trace::message_type(&frame.bytes);
        let bytes = frame.bytes;
        self.feed(to, |now| Input::Message {
            now,
            from: sender,
            bytes,
        });
        self.hostile_feed = false;
        if self.outcome.is_some() {
            return;
        }
        let after = self.slots[to].counted;
        let got = (
            after.undecodable - before.undecodable,
            after.unknown_messages - before.unknown_messages,
        );
        let want = match frame.reaction {
            Reaction::Undecodable => (1, 0),
            Reaction::Unknown => (0, 1),
            Reaction::Ignored => (0, 0),
        };
        // A peer that has not agreed a protocol is greeted; otherwise
        // nothing answers a hostile frame.
        let answered = self.slots[to].sent - sent_before;
        if got != want || (agreed.is_some() && answered > 0) {
            self.violation(Violation::new(
                "hostile-frame",
                format!(
                    "n{} took a {} frame (type {msg_type}) from {sender} ({:?} expected): it reported {} undecodable and {} unknown messages and sent {answered} messages",
                    to + 1,
                    frame.kind.name(),
                    frame.reaction,
                    got.0,
                    got.1,
                ),
            ));
        }
    }
}

/// Whether a node drops `bytes` as a message of a protocol above every one
/// it speaks (the node's `stale_protocol` counter). Frames on the simulated
/// network are never damaged, so only the header is read (the node checks
/// the checksum first, and an honest frame passes it).
pub(super) fn is_stale(node: &Node, bytes: &[u8]) -> bool {
    use cairn_core::wire::{is_handshake_type, HEADER_LEN, MAGIC};
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return false;
    }
    let protocol = u16::from_le_bytes([bytes[4], bytes[5]]);
    let msg_type = u16::from_le_bytes([bytes[6], bytes[7]]);
    !is_handshake_type(msg_type) && protocol > node.release().protocols.max
}
