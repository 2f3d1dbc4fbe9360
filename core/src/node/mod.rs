//! The node state machine (stub; being implemented).

use alloc::collections::VecDeque;
use bytes::Bytes;

use crate::api::{ClientError, Input, Output, Response};
use crate::config::NodeConfig;
use crate::dvv::KeyState;
use crate::ring::Ring;
use crate::types::{NodeId, Time};

pub struct Node {
    config: NodeConfig,
    ring: Ring,
    out: VecDeque<Output>,
    now: Time,
}

impl Node {
    pub fn new(config: NodeConfig, now: Time) -> Node {
        let ring = Ring::new(&config.members, config.partitions, config.vnodes, config.quorum.n);
        Node { config, ring, out: VecDeque::new(), now }
    }
    pub fn id(&self) -> NodeId { self.config.id }
    pub fn epoch(&self) -> u32 { 0 }
    pub fn is_serving(&self) -> bool { false }
    pub fn is_halted(&self) -> bool { false }
    pub fn ring(&self) -> &Ring { &self.ring }
    pub fn key_state(&self, _key: &[u8]) -> Option<&KeyState> { None }
    pub fn keys(&self) -> impl Iterator<Item = (&Bytes, &KeyState)> { core::iter::empty() }
    pub fn merkle_root(&self, _partition: u16) -> u64 { 0 }
    pub fn hint_count(&self) -> usize { 0 }
    pub fn handle_input(&mut self, input: Input) {
        if let Input::Client { id, now, .. } = input {
            self.now = now;
            self.out.push_back(Output::Reply { id, response: Response::Error(ClientError::Unavailable("stub".into())) });
        }
    }
    pub fn poll_output(&mut self) -> Output {
        self.out.pop_front().unwrap_or(Output::Timeout(self.now + crate::types::Duration::from_secs(1)))
    }
}
