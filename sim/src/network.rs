//! The network model: one directed link per ordered pair of nodes.
//!
//! A message's fate is decided when it is sent (random loss, a blocked link,
//! a full link queue) and checked again when it arrives (the link may have
//! been cut meanwhile; the destination may be down). Each copy gets its own
//! delay — base delay of the link, uniform jitter, an occasional slow path,
//! and extra delay while the link is clogged — so messages reorder. Bodies
//! are opaque: the network never looks inside.

use cairn_core::Time;

use crate::options::NetworkOptions;
use crate::rng::{between, chance, SimRng};
use crate::trace::DropReason;

/// Bit of the directed link `from -> to` (node indices) in a link matrix.
pub fn link_bit(from: usize, to: usize) -> u64 {
    1u64 << (from * 8 + to)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub duplicated: u64,
    pub lost: u64,
    pub partitioned: u64,
    pub queue_full: u64,
    pub node_down: u64,
}

impl NetStats {
    pub fn dropped(&self) -> u64 {
        self.lost + self.partitioned + self.queue_full + self.node_down
    }
    pub fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::Lost => self.lost += 1,
            DropReason::Partitioned => self.partitioned += 1,
            DropReason::QueueFull => self.queue_full += 1,
            DropReason::NodeDown => self.node_down += 1,
        }
    }
}

/// What happens to a message handed to the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Dropped(DropReason),
    /// Arrives at `at`; a duplicate copy (if any) arrives at `duplicate`.
    Arrives {
        at: Time,
        duplicate: Option<Time>,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Clog {
    until: Time,
    extra_us: u64,
}

pub struct Network {
    nodes: usize,
    base_us: Vec<u64>,
    jitter_us: u64,
    tail_ppm: u32,
    drop_ppm: u32,
    duplicate_ppm: u32,
    late_duplicate_ppm: u32,
    late_duplicate_us: (u64, u64),
    capacity: u32,
    /// Blocked directed links, bit `from * 8 + to`.
    blocked: u64,
    clogs: Vec<Clog>,
    in_flight: Vec<u32>,
    rng: SimRng,
    pub stats: NetStats,
}

impl Network {
    pub fn new(nodes: usize, opts: &NetworkOptions, rng: SimRng) -> Network {
        assert!(nodes <= 8, "the link matrix holds at most 8 nodes");
        assert_eq!(opts.base_delay_us.len(), nodes * nodes);
        Network {
            nodes,
            base_us: opts.base_delay_us.clone(),
            jitter_us: opts.jitter_us,
            tail_ppm: opts.tail_ppm,
            drop_ppm: opts.drop_ppm,
            duplicate_ppm: opts.duplicate_ppm,
            late_duplicate_ppm: opts.late_duplicate_ppm,
            late_duplicate_us: (
                opts.late_duplicate_ms.0 * 1000,
                opts.late_duplicate_ms.1 * 1000,
            ),
            capacity: opts.link_capacity,
            blocked: 0,
            clogs: vec![Clog::default(); nodes * nodes],
            in_flight: vec![0; nodes * nodes],
            rng,
            stats: NetStats::default(),
        }
    }

    fn link(&self, from: usize, to: usize) -> usize {
        from * self.nodes + to
    }

    pub fn is_blocked(&self, from: usize, to: usize) -> bool {
        self.blocked & link_bit(from, to) != 0
    }

    /// The blocked-link matrix.
    pub fn blocked(&self) -> u64 {
        self.blocked
    }

    pub fn in_flight(&self, from: usize, to: usize) -> u32 {
        self.in_flight[self.link(from, to)]
    }

    fn delay(&mut self, now: Time, link: usize) -> Time {
        let mut us = self.base_us[link] + between(&mut self.rng, 0, 2 * self.jitter_us);
        if chance(&mut self.rng, self.tail_ppm) {
            us += between(&mut self.rng, 10 * self.jitter_us, 50 * self.jitter_us);
        }
        let clog = self.clogs[link];
        if now < clog.until {
            us += clog.extra_us;
        }
        Time(now.as_micros() + us.max(1))
    }

    /// Hands a message to the network.
    pub fn send(&mut self, now: Time, from: usize, to: usize) -> Fate {
        self.stats.sent += 1;
        let link = self.link(from, to);
        let fate = if self.is_blocked(from, to) {
            Fate::Dropped(DropReason::Partitioned)
        } else if chance(&mut self.rng, self.drop_ppm) {
            Fate::Dropped(DropReason::Lost)
        } else if self.in_flight[link] >= self.capacity {
            Fate::Dropped(DropReason::QueueFull)
        } else {
            self.in_flight[link] += 1;
            let at = self.delay(now, link);
            let duplicate = if chance(&mut self.rng, self.duplicate_ppm)
                && self.in_flight[link] < self.capacity
            {
                self.in_flight[link] += 1;
                self.stats.duplicated += 1;
                Some(self.delay(now, link))
            } else if chance(&mut self.rng, self.late_duplicate_ppm)
                && self.in_flight[link] < self.capacity
            {
                // A copy that arrives long after the original.
                self.in_flight[link] += 1;
                self.stats.duplicated += 1;
                let (lo, hi) = self.late_duplicate_us;
                Some(Time(
                    now.as_micros() + between(&mut self.rng, lo, hi).max(1),
                ))
            } else {
                None
            };
            Fate::Arrives { at, duplicate }
        };
        if let Fate::Dropped(r) = fate {
            self.stats.count_drop(r);
        }
        fate
    }

    /// A copy reaches the far end of its link. It is dropped if the link was
    /// cut while it was in flight. (The caller checks that the destination
    /// is running.)
    pub fn arrive(&mut self, from: usize, to: usize) -> Result<(), DropReason> {
        let link = self.link(from, to);
        debug_assert!(self.in_flight[link] > 0);
        self.in_flight[link] = self.in_flight[link].saturating_sub(1);
        if self.is_blocked(from, to) {
            self.stats.count_drop(DropReason::Partitioned);
            return Err(DropReason::Partitioned);
        }
        Ok(())
    }

    /// Blocks one direction of a link.
    pub fn block(&mut self, from: usize, to: usize) {
        if from != to {
            self.blocked |= link_bit(from, to);
        }
    }

    /// Blocks both directions between every node of `side` and every other.
    pub fn split(&mut self, side: &[usize]) {
        for a in 0..self.nodes {
            for b in 0..self.nodes {
                if side.contains(&a) != side.contains(&b) {
                    self.block(a, b);
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked = 0;
    }

    /// Adds `extra_us` to every message sent on `from -> to` until `until`.
    pub fn clog(&mut self, from: usize, to: usize, until: Time, extra_us: u64) {
        let link = self.link(from, to);
        self.clogs[link] = Clog { until, extra_us };
    }

    pub fn unclog_all(&mut self) {
        for c in &mut self.clogs {
            *c = Clog::default();
        }
    }

    /// Stops random loss and duplication (the liveness phase).
    pub fn calm(&mut self) {
        self.drop_ppm = 0;
        self.duplicate_ppm = 0;
        self.late_duplicate_ppm = 0;
        self.tail_ppm = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_from;

    fn opts(nodes: usize, drop_ppm: u32, capacity: u32) -> NetworkOptions {
        NetworkOptions {
            base_delay_us: vec![500; nodes * nodes],
            jitter_us: 200,
            tail_ppm: 0,
            drop_ppm,
            duplicate_ppm: 0,
            link_capacity: capacity,
            late_duplicate_ppm: 0,
            late_duplicate_ms: (0, 0),
        }
    }

    #[test]
    fn one_way_block_cuts_only_one_direction() {
        let mut net = Network::new(3, &opts(3, 0, 100), rng_from(1));
        net.block(0, 1);
        assert_eq!(
            net.send(Time(0), 0, 1),
            Fate::Dropped(DropReason::Partitioned)
        );
        assert!(matches!(net.send(Time(0), 1, 0), Fate::Arrives { .. }));
        assert!(matches!(net.send(Time(0), 0, 2), Fate::Arrives { .. }));
        net.heal();
        assert!(matches!(net.send(Time(0), 0, 1), Fate::Arrives { .. }));
    }

    #[test]
    fn split_is_symmetric_and_cuts_messages_in_flight() {
        let mut net = Network::new(3, &opts(3, 0, 100), rng_from(1));
        assert!(matches!(net.send(Time(0), 0, 2), Fate::Arrives { .. }));
        net.split(&[2]);
        assert!(net.is_blocked(0, 2) && net.is_blocked(2, 0) && net.is_blocked(1, 2));
        assert!(!net.is_blocked(0, 1) && !net.is_blocked(1, 0));
        assert_eq!(net.arrive(0, 2), Err(DropReason::Partitioned));
        assert_eq!(net.in_flight(0, 2), 0);
        assert_eq!(net.stats.partitioned, 1);
    }

    #[test]
    fn bounded_link_queue_drops_beyond_capacity() {
        let mut net = Network::new(2, &opts(2, 0, 3), rng_from(2));
        for _ in 0..3 {
            assert!(matches!(net.send(Time(0), 0, 1), Fate::Arrives { .. }));
        }
        assert_eq!(
            net.send(Time(0), 0, 1),
            Fate::Dropped(DropReason::QueueFull)
        );
        assert_eq!(net.stats.queue_full, 1);
        // The other direction has its own queue.
        assert!(matches!(net.send(Time(0), 1, 0), Fate::Arrives { .. }));
        assert!(net.arrive(0, 1).is_ok());
        assert!(matches!(net.send(Time(0), 0, 1), Fate::Arrives { .. }));
    }

    #[test]
    fn jitter_reorders_and_clogging_delays() {
        let mut net = Network::new(2, &opts(2, 0, 10_000), rng_from(3));
        let mut last = Time(0);
        let mut reordered = false;
        for i in 0..200 {
            if let Fate::Arrives { at, .. } = net.send(Time(i), 0, 1) {
                reordered |= at < last;
                last = at;
                assert!(at.as_micros() >= i + 500 && at.as_micros() <= i + 900);
            }
        }
        assert!(reordered, "jitter never reordered two messages");
        net.clog(0, 1, Time(1_000_000), 50_000);
        match net.send(Time(1000), 0, 1) {
            Fate::Arrives { at, .. } => assert!(at.as_micros() >= 51_500),
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn loss_rate_is_roughly_honoured() {
        let mut net = Network::new(2, &opts(2, 100_000, 1_000_000), rng_from(4));
        for _ in 0..10_000 {
            net.send(Time(0), 0, 1);
        }
        assert!((800..1200).contains(&net.stats.lost), "{}", net.stats.lost);
    }
}
