//! Start-up, epochs and clean shutdown.
//!
//! A node reads all of storage, then decides its epoch: after a clean
//! shutdown it keeps its epoch and dot counter; after anything else (a crash,
//! a halted node, corrupt records, missing metadata) it takes a new epoch,
//! higher than any of its own epochs found in the data, so it can never issue
//! a dot it issued before (Riak kv679). The new metadata, marked unclean, is
//! durable before the node serves.

use alloc::vec::Vec;
use bytes::Bytes;

use crate::api::{Event, Output, ReadRequest};
use crate::storage::{self, Meta, Record};

use super::durability::Deferred;
use super::{Node, Phase};

impl Node {
    pub(super) fn start_loading(&mut self) {
        let io = self.io_id();
        self.load_io = Some(io);
        self.push(Output::Read {
            io,
            request: ReadRequest::All,
        });
    }

    pub(super) fn recover(&mut self, records: Vec<(Bytes, Bytes)>) {
        if self.phase != Phase::Loading {
            return;
        }
        let total = records.len();
        let mut meta: Option<Meta> = None;
        let mut corrupt = 0usize;
        let mut own_epoch = 0u32;
        let mut own_counter = 0u64;
        let me = self.cfg.id;
        for (key, value) in records {
            match storage::decode_record(&key, &value) {
                Ok(Record::Meta(m)) => meta = Some(m),
                Ok(Record::Data { key, state }) => {
                    for &(actor, c) in state.context().entries() {
                        if actor.node == me {
                            own_epoch = own_epoch.max(actor.epoch);
                            if actor.epoch == own_epoch {
                                own_counter = own_counter.max(c);
                            }
                        }
                    }
                    self.store.set(&self.ring, &key, Some(state), self.now);
                }
                Ok(Record::Hint { target, key, state }) => {
                    if target != me && self.peers.contains_key(&target) {
                        self.hints.insert((target, key), state);
                    }
                }
                Err(_) => {
                    corrupt += 1;
                    self.metrics.corrupt_records += 1;
                    self.emit(Event::CorruptRecord { key: key.clone() });
                    // Corrupt data is treated as lost: drop the record so it
                    // is never served; replicas will repair the key.
                    self.write_record(key, None);
                }
            }
        }
        let clean = matches!(&meta, Some(m) if m.clean) && corrupt == 0;
        let reuse_epoch = clean || self.bugs().reuse_dots_after_crash;
        match meta {
            Some(m) if reuse_epoch => {
                self.epoch = m.epoch.max(1);
                self.next_counter = if clean {
                    m.next_counter.max(1)
                } else {
                    // Planted bug: carry on from the last clean counter.
                    m.next_counter.max(1)
                };
                if clean && own_epoch == self.epoch {
                    self.next_counter = self.next_counter.max(own_counter + 1);
                }
            }
            m => {
                let prev = m.map_or(0, |m| m.epoch);
                self.epoch = prev.max(own_epoch) + 1;
                self.next_counter = 1;
            }
        }
        self.emit(Event::Recovered {
            epoch: self.epoch,
            clean,
            records: total,
            corrupt,
        });
        self.phase = Phase::Recovering;
        self.write_meta(false);
        self.after_durable(Deferred::Serve);
    }

    fn write_meta(&mut self, clean: bool) {
        let meta = Meta {
            epoch: self.epoch,
            next_counter: self.next_counter,
            clean,
        };
        self.write_record(
            Bytes::from_static(storage::META_KEY),
            Some(storage::encode_meta(&meta)),
        );
    }

    pub(super) fn start_serving(&mut self) {
        if self.phase != Phase::Recovering {
            return;
        }
        self.phase = Phase::Serving;
        let now = self.now;
        self.timers.gossip = now;
        self.timers.handshake = now;
        self.timers.hints = now + self.cfg.timing.hint_retry;
        self.timers.anti_entropy = now + self.cfg.timing.anti_entropy_interval;
        self.timers.reap = now + self.cfg.timing.reap_interval;
        self.emit(Event::Serving);
        self.hello_all();
    }

    /// Clean shutdown: fail what is in flight, persist the metadata that lets
    /// the next start keep this epoch, then report completion.
    pub(super) fn begin_shutdown(&mut self) {
        match self.phase {
            Phase::Serving | Phase::Recovering => {}
            Phase::Loading => {
                // Nothing was written yet; stop at once.
                self.phase = Phase::Stopped;
                self.emit(Event::ShutdownComplete);
                return;
            }
            _ => return,
        }
        self.phase = Phase::Draining;
        self.fail_all_ops();
        self.write_meta(true);
        self.after_durable(Deferred::ShutdownDone);
    }
}
