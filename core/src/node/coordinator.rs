//! Coordinating client requests.
//!
//! Reads are coordinated by whichever node receives them: the state is asked
//! of R replicas (the coordinator first when it is one, then peers believed
//! up), and of the other replicas only when those leave the read without a
//! quorum for `read_hedge_after`. The client is answered once R have replied
//! (merged, so concurrent siblings survive), and the replies, including any
//! arriving within the read-repair window, are used to repair stale replicas;
//! anti-entropy reaches the replicas a read did not ask. Writes are coordinated by a
//! replica of the key, because only a replica knows the key's history well
//! enough to issue a fresh dot: a node that is not a replica forwards the
//! write. The coordinator applies the write locally, ships the new state to
//! the other replicas and answers once W copies (its own included) are
//! durable; replicas that do not acknowledge in time get a durable hint.

use alloc::format;
use alloc::vec::Vec;
use bytes::Bytes;

use crate::api::{ClientError, Event, Request, Response};
use crate::dvv::{Actor, Dot, KeyState, Sibling, VersionVector};
use crate::types::{NodeId, RequestId, Time};
use crate::version::Feature;
use crate::wire::{self, ForwardedRequest, ForwardedResponse, Message};

use super::durability::Deferred;
use super::{Node, Phase};

/// Who waits for a request's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Client {
    Local(RequestId),
    /// Forwarded by a peer, which answers its own client.
    Remote {
        from: NodeId,
        fwd: u64,
    },
}

pub(crate) struct GetOp {
    client: Client,
    key: Bytes,
    replicas: Vec<NodeId>,
    replies: Vec<GetReply>,
    /// Digests of the full states received: a digest reply equal to one of
    /// them is known to be contained in the merged state.
    full_digests: Vec<u64>,
    /// Replicas asked again for their full state after a digest mismatch.
    refetching: Vec<NodeId>,
    /// Replicas not asked yet: asked only if the first R leave the read
    /// without a quorum for `read_hedge_after`.
    spare: Vec<NodeId>,
    /// The replicas speak digest reads.
    digests: bool,
    merged: KeyState,
    answered: bool,
    started: Time,
}

#[derive(Clone, Copy)]
struct GetReply {
    node: NodeId,
    digest: u64,
    full: bool,
}

impl GetOp {
    /// Replies whose state is known to be in the merged state.
    fn included(&self) -> usize {
        self.replies
            .iter()
            .filter(|r| r.full || self.full_digests.contains(&r.digest))
            .count()
    }

    /// Every replica asked has answered in full or with a known digest.
    fn complete(&self) -> bool {
        self.replies.len() + self.spare.len() == self.replicas.len() && self.refetching.is_empty()
    }
}

pub(crate) struct PutOp {
    client: Client,
    key: Bytes,
    state: KeyState,
    replicas: Vec<NodeId>,
    acked: Vec<NodeId>,
    hinted: Vec<NodeId>,
    answered: bool,
    started: Time,
}

pub(crate) struct ForwardOp {
    client: RequestId,
    /// The request's key: a read's context comes back as a version vector
    /// and becomes a token for this key.
    key: Bytes,
}

pub(crate) struct HintOp {
    pub target: NodeId,
    /// (key, digest of the hint as sent).
    pub items: Vec<(Bytes, u64)>,
}

pub(crate) enum Op {
    Get(GetOp),
    Put(PutOp),
    Forward(ForwardOp),
    Hint(HintOp),
    Reap(super::anti_entropy::ReapOp),
}

impl Node {
    /// A client's request. Its context is checked here, where it enters
    /// the cluster: a write whose context this cluster did not issue for
    /// the same key is refused before anything else happens.
    pub(super) fn handle_client(&mut self, id: RequestId, request: Request) {
        self.metrics.client_requests += 1;
        match self.check_context(request) {
            Ok(request) => self.start_request(Client::Local(id), id, request),
            Err(why) => {
                self.metrics.bad_contexts += 1;
                self.reply(id, Response::Error(ClientError::BadContext(why)));
            }
        }
    }

    /// The request with its context token verified and decoded.
    fn check_context(&self, request: Request) -> Result<ForwardedRequest, alloc::string::String> {
        let token = match &request {
            Request::Get { .. } => {
                return Ok(ForwardedRequest::checked(request, VersionVector::new()))
            }
            Request::Put { context, .. } | Request::Delete { context, .. } => context.as_bytes(),
        };
        let vv = if self.bugs().trust_client_contexts {
            trusting_decode(token).ok_or_else(|| alloc::string::String::from("malformed"))?
        } else {
            self.context_mac
                .verify(request.key(), token, &self.cfg.limits)
                .map_err(|e| alloc::string::ToString::to_string(&e))?
        };
        Ok(ForwardedRequest::checked(request, vv))
    }

    /// A write forwarded by a peer. The network may deliver it twice; a
    /// client's write must take effect once, so duplicates are dropped (the
    /// first copy answers). Forward ids are unique across the sender's
    /// restarts, so remembering them for a while is enough.
    pub(super) fn handle_forward(&mut self, from: NodeId, m: wire::Forward) {
        // Forget forwards old enough that no copy can still be in flight, and
        // the oldest ones beyond the bound. Arrival times only grow, so the
        // queue is in expiry order.
        let horizon = crate::types::Duration(self.cfg.timing.request_timeout.0 * 4);
        let cap = self.cfg.limits.max_inflight * 4;
        while let Some(&(at, id)) = self.forwards_seen.front() {
            if self.now.saturating_since(at) < horizon && self.forwards_seen.len() < cap {
                break;
            }
            self.forwards_seen.pop_front();
            self.forward_ids.remove(&id);
        }
        if !self.forward_ids.insert((from, m.fwd)) {
            self.metrics.duplicate_forwards += 1;
            return;
        }
        self.forwards_seen.push_back((self.now, (from, m.fwd)));
        self.start_request(Client::Remote { from, fwd: m.fwd }, m.origin, m.request);
    }

    pub(super) fn handle_forward_reply(&mut self, _from: NodeId, m: wire::ForwardReply) {
        if let Some(Op::Forward(f)) = self.ops.remove(&m.fwd) {
            let response = match m.response {
                ForwardedResponse::Read { siblings, context } => Response::Read {
                    siblings,
                    context: self.context_mac.issue(&f.key, &context),
                },
                ForwardedResponse::Written => Response::Written,
                ForwardedResponse::Finalized { cluster_version } => {
                    Response::Finalized { cluster_version }
                }
                ForwardedResponse::BackedUp { info } => Response::BackedUp { info },
                ForwardedResponse::Error(e) => Response::Error(e),
            };
            self.reply(f.client, response);
        }
    }

    fn start_request(&mut self, client: Client, origin: RequestId, request: ForwardedRequest) {
        if self.phase != Phase::Serving {
            let why = self.unavailable_reason();
            return self.fail_client(client, ClientError::Unavailable(why));
        }
        if let Err(why) = self.validate(&request) {
            return self.fail_client(client, ClientError::Invalid(why));
        }
        if self.ops.len() >= self.cfg.limits.max_inflight {
            return self.fail_client(client, ClientError::Overloaded);
        }
        let partition = self.ring.partition_of(request.key());
        let is_replica = self.ring.is_replica(self.cfg.id, partition);
        match request {
            ForwardedRequest::Get { .. } if self.resync.is_some() => {
                self.fail_client(
                    client,
                    ClientError::Unavailable("re-syncing from replicas after a restore".into()),
                );
            }
            ForwardedRequest::Get { key } => {
                self.metrics.gets += 1;
                self.start_get(client, key);
            }
            ForwardedRequest::Put {
                key,
                value,
                context,
            } => {
                if is_replica {
                    self.metrics.puts += 1;
                    self.start_put(client, origin, key, Some(value), context);
                } else {
                    self.forward(
                        client,
                        origin,
                        ForwardedRequest::Put {
                            key,
                            value,
                            context,
                        },
                    );
                }
            }
            ForwardedRequest::Delete { key, context } => {
                if is_replica {
                    self.metrics.puts += 1;
                    self.start_put(client, origin, key, None, context);
                } else {
                    self.forward(client, origin, ForwardedRequest::Delete { key, context });
                }
            }
        }
    }

    fn validate(&self, request: &ForwardedRequest) -> Result<(), alloc::string::String> {
        let limits = &self.cfg.limits;
        let key = request.key();
        if key.is_empty() {
            return Err("empty key".into());
        }
        if key.len() > limits.max_key_len {
            return Err(format!(
                "key of {} bytes exceeds {}",
                key.len(),
                limits.max_key_len
            ));
        }
        match request {
            ForwardedRequest::Put { value, context, .. } => {
                if value.len() > limits.max_value_len {
                    return Err(format!(
                        "value of {} bytes exceeds {}",
                        value.len(),
                        limits.max_value_len
                    ));
                }
                self.validate_context(context)
            }
            ForwardedRequest::Delete { context, .. } => self.validate_context(context),
            ForwardedRequest::Get { .. } => Ok(()),
        }
    }

    /// Checks a context as it reaches the coordinator. A client's was
    /// verified where it entered; one forwarded by a release that did not
    /// verify contexts is at least held to the same bounds.
    fn validate_context(&self, ctx: &VersionVector) -> Result<(), alloc::string::String> {
        if !ctx.is_well_formed() {
            return Err("malformed context".into());
        }
        if ctx.entries().len() > self.cfg.limits.max_context_entries {
            return Err(format!(
                "context of {} entries exceeds the limit of {}",
                ctx.entries().len(),
                self.cfg.limits.max_context_entries
            ));
        }
        let me = Actor {
            node: self.cfg.id,
            epoch: self.epoch,
        };
        // Only this node issues dots of its current epoch: a context that
        // claims more was not produced by this cluster.
        if ctx.get(me) >= self.next_counter {
            return Err("context names a version this node never issued".into());
        }
        Ok(())
    }

    fn forward(&mut self, client: Client, origin: RequestId, request: ForwardedRequest) {
        let Client::Local(id) = client else {
            // A forwarded request landed on a non-replica: the rings disagree.
            return self.fail_client(
                client,
                ClientError::Unavailable("not a replica of this key".into()),
            );
        };
        let replicas: Vec<NodeId> = self.ring.replicas_of(request.key()).to_vec();
        let target = replicas
            .iter()
            .copied()
            .find(|&r| self.peer_usable(r))
            .or_else(|| replicas.iter().copied().find(|&r| self.peer_ready(r)));
        let Some(target) = target else {
            return self.fail_client(
                client,
                ClientError::Unavailable("no replica of this key is reachable".into()),
            );
        };
        self.metrics.forwarded += 1;
        let fwd = self.fresh_req();
        let key = request.key().clone();
        self.ops
            .insert(fwd, Op::Forward(ForwardOp { client: id, key }));
        let t = self.cfg.timing;
        let at = self.now + crate::types::Duration(t.request_timeout.0 + t.request_timeout.0 / 4);
        self.set_deadline(fwd, at);
        self.send(
            target,
            Message::Forward(wire::Forward {
                fwd,
                origin,
                request,
            }),
        );
    }

    /// Starts a read. It asks R replicas (ourselves first when we are one,
    /// then peers believed up) and keeps the others in reserve: they are
    /// asked only when the first ones leave the read without a quorum for
    /// `read_hedge_after`. One replica sends its full state, the others a
    /// digest of theirs, once the whole cluster speaks protocol 3.
    fn start_get(&mut self, client: Client, key: Bytes) {
        let me = self.cfg.id;
        let replicas: Vec<NodeId> = self.ring.replicas_of(&key).to_vec();
        let mut order = replicas.clone();
        // Stable: preference order within each class.
        order.sort_by_key(|&r| (r != me, r != me && !self.peer_usable(r)));
        let first = (self.cfg.quorum.r as usize).max(1).min(order.len());
        let spare = order.split_off(first);
        let digests = self.feature_active(Feature::DigestReads)
            && replicas
                .iter()
                .all(|&r| r == me || self.peer_protocol(r) >= Feature::DigestReads.min_protocol());
        let req = self.fresh_req();
        let hedge = if spare.is_empty() {
            self.cfg.timing.request_timeout
        } else {
            self.cfg.timing.read_hedge_after
        };
        let op = GetOp {
            client,
            key: key.clone(),
            replicas,
            replies: Vec::with_capacity(order.len() + spare.len()),
            full_digests: Vec::new(),
            refetching: Vec::new(),
            spare,
            digests,
            merged: KeyState::new(),
            answered: false,
            started: self.now,
        };
        self.ops.insert(req, Op::Get(op));
        self.set_deadline(req, self.now + hedge);
        // The first asked sends its full state (ourselves, when a replica).
        self.ask_replicas(req, &key, &order, digests, true);
    }

    /// Sends read requests for `key` to `targets`: the first a full read when
    /// `full_first` (or when digests are off), the rest digest reads.
    fn ask_replicas(
        &mut self,
        req: u64,
        key: &Bytes,
        targets: &[NodeId],
        digests: bool,
        full_first: bool,
    ) {
        for (i, &r) in targets.iter().enumerate() {
            if r == self.cfg.id {
                let (state, digest) = self.store.state_and_digest(key);
                self.get_reply(req, r, state, Some(digest));
            } else if digests && !(full_first && i == 0) {
                self.send(
                    r,
                    Message::ReplicaDigest(wire::ReplicaDigest {
                        req,
                        key: key.clone(),
                    }),
                );
            } else {
                self.send(
                    r,
                    Message::ReplicaGet(wire::ReplicaGet {
                        req,
                        key: key.clone(),
                    }),
                );
            }
        }
    }

    /// The first replicas asked left the read without a quorum: ask the
    /// others too (a full read from the first if no full state came yet).
    fn hedge_get(&mut self, req: u64) {
        let Some(Op::Get(op)) = self.ops.get_mut(&req) else {
            return;
        };
        let spare = core::mem::take(&mut op.spare);
        let (key, digests, started) = (op.key.clone(), op.digests, op.started);
        let full_first = op.full_digests.is_empty();
        self.metrics.read_hedges += 1;
        self.set_deadline(req, started + self.cfg.timing.request_timeout);
        self.ask_replicas(req, &key, &spare, digests, full_first);
    }

    pub(super) fn handle_replica_get_reply(&mut self, from: NodeId, m: wire::ReplicaGetReply) {
        if !self.well_formed_from(from, "a replica's read reply", &m.state) {
            return;
        }
        self.get_reply(m.req, from, m.state, None);
    }

    pub(super) fn handle_replica_digest(&mut self, from: NodeId, m: wire::ReplicaDigest) {
        if self.resync.is_some() {
            return;
        }
        let digest = self.store.digest_or_empty(&m.key);
        self.send(
            from,
            Message::ReplicaDigestReply(wire::ReplicaDigestReply {
                req: m.req,
                key: m.key,
                digest,
            }),
        );
    }

    pub(super) fn handle_replica_digest_reply(
        &mut self,
        from: NodeId,
        m: wire::ReplicaDigestReply,
    ) {
        let Some(Op::Get(op)) = self.ops.get_mut(&m.req) else {
            return;
        };
        if !op.replicas.contains(&from) || op.replies.iter().any(|r| r.node == from) {
            return;
        }
        op.replies.push(GetReply {
            node: from,
            digest: m.digest,
            full: false,
        });
        if !op.full_digests.contains(&m.digest) {
            // It holds something the full copy does not: fetch it.
            op.refetching.push(from);
            let key = op.key.clone();
            self.send(
                from,
                Message::ReplicaGet(wire::ReplicaGet { req: m.req, key }),
            );
        }
        self.get_progress(m.req);
    }

    /// A replica's full state for a read (`digest`: the state's digest when
    /// already known, as for our own copy).
    fn get_reply(&mut self, req: u64, from: NodeId, state: KeyState, digest: Option<u64>) {
        let Some(Op::Get(op)) = self.ops.get_mut(&req) else {
            return;
        };
        if !op.replicas.contains(&from) {
            return;
        }
        let digest = digest.unwrap_or_else(|| state.digest());
        match op.replies.iter().position(|r| r.node == from) {
            Some(i) if op.replies[i].full => return,
            Some(i) => {
                op.replies[i] = GetReply {
                    node: from,
                    digest,
                    full: true,
                };
                op.refetching.retain(|&n| n != from);
            }
            None => op.replies.push(GetReply {
                node: from,
                digest,
                full: true,
            }),
        }
        if !op.full_digests.contains(&digest) {
            op.full_digests.push(digest);
        }
        op.merged.merge_owned(state);
        self.get_progress(req);
    }

    /// Answers once R replies are known to be in the merged state; finishes
    /// once every replica has answered.
    fn get_progress(&mut self, req: u64) {
        let r = self.cfg.quorum.r as usize;
        let Some(Op::Get(op)) = self.ops.get_mut(&req) else {
            return;
        };
        let complete = op.complete();
        if !op.answered && op.included() >= r {
            op.answered = true;
            let siblings = op.merged.siblings().to_vec();
            let context = op.merged.context().clone();
            let (client, key) = (op.client, op.key.clone());
            let window_end = op.started.max(self.now) + self.cfg.timing.read_repair_window;
            self.answer_read(client, &key, siblings, context);
            if !complete {
                // Keep listening a little longer, for read repair.
                self.cancel_deadline(req);
                self.set_deadline(req, window_end);
            }
        }
        if complete {
            self.finish_get(req);
        }
    }

    /// A read is over: repair every replica that answered with a stale state.
    fn finish_get(&mut self, req: u64) {
        let Some(Op::Get(op)) = self.ops.remove(&req) else {
            return;
        };
        self.cancel_deadline(req);
        if !op.answered {
            let err = ClientError::Timeout {
                acks: op.included() as u8,
                needed: self.cfg.quorum.r,
            };
            self.metrics.quorum_timeouts += 1;
            self.fail_client(op.client, err);
            return;
        }
        if op.merged.is_empty() {
            return;
        }
        let merged_digest = op.merged.digest();
        for &GetReply { node, digest, .. } in &op.replies {
            if digest == merged_digest {
                continue;
            }
            self.metrics.read_repairs += 1;
            self.emit(Event::ReadRepair {
                key: op.key.clone(),
                target: node,
            });
            if node == self.cfg.id {
                self.repair_local(&op.key, &op.merged);
            } else {
                self.send(
                    node,
                    Message::ReadRepair(wire::ReadRepair {
                        key: op.key.clone(),
                        state: op.merged.clone(),
                    }),
                );
            }
        }
    }

    fn start_put(
        &mut self,
        client: Client,
        origin: RequestId,
        key: Bytes,
        value: Option<Bytes>,
        context: VersionVector,
    ) {
        let mut state = self.store.get(&key).cloned().unwrap_or_default();
        let surviving = state
            .siblings()
            .iter()
            .filter(|s| !context.covers(s.dot))
            .count();
        if surviving + 1 > self.cfg.limits.max_siblings {
            return self.fail_client(
                client,
                ClientError::Invalid(format!(
                    "key has {surviving} concurrent versions (limit {}): read it and write with its context to resolve them",
                    self.cfg.limits.max_siblings
                )),
            );
        }
        let dot = Dot {
            actor: Actor {
                node: self.cfg.id,
                epoch: self.epoch,
            },
            counter: self.next_counter,
        };
        self.next_counter += 1;
        let tombstone = value.is_none();
        state.apply_write(&context, dot, value);
        debug_assert!(state.is_well_formed());
        self.emit(Event::WriteIssued {
            request: origin,
            key: key.clone(),
            dot,
            tombstone,
        });
        self.put_local(&key, Some(state.clone()));
        let replicas: Vec<NodeId> = self.ring.replicas_of(&key).to_vec();
        let req = self.fresh_req();
        let others: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|&r| r != self.cfg.id)
            .collect();
        self.send_each(
            &others,
            Message::ReplicaPut(wire::ReplicaPut {
                req,
                key: key.clone(),
                state: state.clone(),
            }),
        );
        let op = PutOp {
            client,
            key,
            state,
            replicas,
            acked: Vec::new(),
            hinted: Vec::new(),
            answered: false,
            started: self.now,
        };
        self.ops.insert(req, Op::Put(op));
        let t = self.cfg.timing;
        self.set_deadline(req, self.now + t.hint_after.min(t.request_timeout));
        if self.bugs().ack_before_durable {
            self.local_put_durable(req);
        } else {
            self.after_durable(Deferred::LocalPut { op: req });
        }
    }

    pub(super) fn local_put_durable(&mut self, op: u64) {
        let me = self.cfg.id;
        self.put_acked(op, me);
    }

    pub(super) fn handle_replica_put_ack(&mut self, from: NodeId, m: wire::ReplicaPutAck) {
        match self.ops.get(&m.req) {
            Some(Op::Put(_)) => self.put_acked(m.req, from),
            Some(Op::Hint(_)) => self.hint_acked(m.req, from, &[m.key]),
            _ => {}
        }
    }

    fn put_acked(&mut self, req: u64, from: NodeId) {
        let w = self.cfg.quorum.w as usize;
        let Some(Op::Put(op)) = self.ops.get_mut(&req) else {
            return;
        };
        if !op.replicas.contains(&from) || op.acked.contains(&from) {
            return;
        }
        op.acked.push(from);
        let mut answer = None;
        if !op.answered && op.acked.len() >= w {
            op.answered = true;
            answer = Some(op.client);
        }
        let done = op.answered
            && op
                .replicas
                .iter()
                .all(|r| op.acked.contains(r) || op.hinted.contains(r));
        if let Some(client) = answer {
            self.answer(client, Response::Written);
        }
        if done {
            self.ops.remove(&req);
            self.cancel_deadline(req);
        }
    }

    /// An op's deadline passed.
    pub(super) fn op_deadline(&mut self, req: u64) {
        match self.ops.get(&req) {
            Some(Op::Get(op)) if !op.answered && !op.spare.is_empty() => self.hedge_get(req),
            Some(Op::Get(_)) => self.finish_get(req),
            Some(Op::Put(_)) => self.put_deadline(req),
            Some(Op::Forward(_)) => {
                if let Some(Op::Forward(f)) = self.ops.remove(&req) {
                    self.metrics.quorum_timeouts += 1;
                    self.reply(
                        f.client,
                        Response::Error(ClientError::Timeout {
                            acks: 0,
                            needed: self.cfg.quorum.w,
                        }),
                    );
                }
            }
            Some(Op::Hint(_)) => {
                // Unacknowledged delivery: the hint stays and is retried.
                self.ops.remove(&req);
            }
            Some(Op::Reap(_)) => {
                self.ops.remove(&req);
            }
            None => {}
        }
    }

    /// Hint replicas that have not acknowledged once `hint_after` has
    /// passed; fail the client when the request timeout passes without a
    /// quorum. The two are independent: a client never waits longer than
    /// the request timeout, however late hinting is configured.
    fn put_deadline(&mut self, req: u64) {
        let me = self.cfg.id;
        let now = self.now;
        let t = self.cfg.timing;
        let Some(Op::Put(op)) = self.ops.get_mut(&req) else {
            return;
        };
        let hint_at = op.started + t.hint_after;
        let fail_at = op.started + t.request_timeout;
        let missing: Vec<NodeId> = if now >= hint_at {
            op.replicas
                .iter()
                .copied()
                .filter(|r| *r != me && !op.acked.contains(r) && !op.hinted.contains(r))
                .collect()
        } else {
            Vec::new()
        };
        op.hinted.extend_from_slice(&missing);
        let key = op.key.clone();
        let state = op.state.clone();
        let timed_out = !op.answered && now >= fail_at;
        if timed_out {
            op.answered = true;
        }
        let next = [
            (now < hint_at).then_some(hint_at),
            (!op.answered).then_some(fail_at),
        ]
        .into_iter()
        .flatten()
        .min();
        let (client, acks) = (op.client, op.acked.len() as u8);
        for target in missing {
            self.store_hint(target, &key, &state);
        }
        if timed_out {
            self.metrics.quorum_timeouts += 1;
            let needed = self.cfg.quorum.w;
            self.fail_client(client, ClientError::Timeout { acks, needed });
        }
        match next {
            Some(at) => self.set_deadline(req, at.max(now)),
            // Answered, and every replica acknowledged or hinted.
            None => {
                self.ops.remove(&req);
            }
        }
    }

    /// Answers whoever waits for a request (a read's answer goes through
    /// [`Node::answer_read`]).
    pub(super) fn answer(&mut self, client: Client, response: Response) {
        match client {
            Client::Local(id) => self.reply(id, response),
            Client::Remote { from, fwd } => {
                let response = ForwardedResponse::from_response(response);
                self.send(
                    from,
                    Message::ForwardReply(wire::ForwardReply { fwd, response }),
                );
            }
        }
    }

    /// Answers a read: a local client gets its context as a token for
    /// `key`; a forwarding peer gets the version vector and makes the token
    /// itself.
    fn answer_read(
        &mut self,
        client: Client,
        key: &[u8],
        siblings: Vec<Sibling>,
        context: VersionVector,
    ) {
        match client {
            Client::Local(id) => {
                let context = self.context_mac.issue(key, &context);
                self.reply(id, Response::Read { siblings, context });
            }
            Client::Remote { from, fwd } => {
                let response = ForwardedResponse::Read { siblings, context };
                self.send(
                    from,
                    Message::ForwardReply(wire::ForwardReply { fwd, response }),
                );
            }
        }
    }

    /// Fails every request in flight (clean shutdown).
    pub(super) fn fail_all_ops(&mut self) {
        let ops = core::mem::take(&mut self.ops);
        self.deadlines.clear();
        self.deadline_of.clear();
        for (_, op) in ops {
            let client = match op {
                Op::Get(g) if !g.answered => Some(g.client),
                Op::Put(p) if !p.answered => Some(p.client),
                Op::Forward(f) => Some(Client::Local(f.client)),
                _ => None,
            };
            if let Some(c) = client {
                self.fail_client(c, ClientError::Unavailable("shutting down".into()));
            }
        }
    }
}

/// How contexts were read before they were authenticated, for the planted
/// bug `trust-client-contexts`: a token's version vector with its tag
/// unchecked, or a bare version vector of the old format. None if neither
/// decodes.
fn trusting_decode(token: &[u8]) -> Option<VersionVector> {
    use crate::context::{FORMAT, TAG_LEN};
    if token.is_empty() {
        return Some(VersionVector::new());
    }
    if token[0] == FORMAT && token.len() > 1 + TAG_LEN {
        if let Ok((vv, _)) =
            postcard::take_from_bytes::<VersionVector>(&token[1..token.len() - TAG_LEN])
        {
            if vv.is_well_formed() {
                return Some(vv);
            }
        }
    }
    postcard::from_bytes::<VersionVector>(token)
        .ok()
        .filter(VersionVector::is_well_formed)
}
