//! Oracle `rejoin-bounded`: a node that starts on an empty disk asks its
//! peers which epochs it used before it serves (it may have run before and
//! lost its journal). It must not wait for ever on peers that are down: once
//! a majority of the members (itself included) has been reachable for the
//! node's probe timeout and a few handshake retries, it serves.

use super::*;

/// Slack on top of the probe timeout and two handshake retries: ticks,
/// delays and clock drift.
const SLACK_US: u64 = 1_500_000;

impl World {
    /// Called after every timer of node `i`.
    pub(super) fn check_rejoin(&mut self, i: usize) {
        let Some(started) = self.slots[i].fresh_start else {
            return;
        };
        let Some(node) = self.slots[i].node.as_ref() else {
            return;
        };
        if node.phase() != CorePhase::Rejoining {
            if node.phase() != CorePhase::Recovering && node.phase() != CorePhase::Loading {
                self.slots[i].fresh_start = None;
            }
            return;
        }
        if self.slots[i].stepped_back_at.is_some() {
            return;
        }
        let timing = node.config().timing;
        let members = self.slots.len();
        let need = members / 2; // peers; with the node itself, a majority
                                // When each serving peer became reachable: it serves, and no link
                                // was cut since.
        let mut since: Vec<Time> = (0..members)
            .filter(|&j| j != i)
            .filter_map(|j| {
                let s = &self.slots[j];
                let serving = s.node.as_ref().is_some_and(|n| n.is_serving());
                let linked = !self.net.is_blocked(i, j) && !self.net.is_blocked(j, i);
                (serving && linked).then(|| s.serving_since.max(self.net_changed_at))
            })
            .collect();
        if since.len() < need || need == 0 {
            return;
        }
        since.sort_unstable();
        let reachable = since[need - 1].max(started);
        let bound = timing.probe_timeout.0 + 2 * timing.handshake_retry.0 + SLACK_US;
        let due = Time(reachable.as_micros().max(started.as_micros() + bound) + bound / 4);
        if self.now > due {
            self.violation(Violation::new(
                "rejoin-bounded",
                format!(
                    "n{} started on an empty disk at {started} and still waits for its peers at {}, though {need} of them have served and been reachable since {reachable} (probe timeout {} ms)",
                    i + 1,
                    self.now,
                    timing.probe_timeout.0 / 1000
                ),
            ));
        }
    }
}
