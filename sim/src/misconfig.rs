//! An operator's configuration mistakes, tried at every node start.
//!
//! Before the simulator starts a node with its real configuration, the
//! operator it models first tries a catalogue of one-field mistakes derived
//! from that configuration: quorums that cannot be met or are not strict,
//! membership lists that cannot hold the replicas, leave the node out or
//! name it twice, a tombstone grace shorter than a request can live, an
//! empty ring, context limits that cannot hold a context, a release that
//! does not exist. Each must be refused by [`Node::new`] with an
//! [`Error::Config`] that names the field (the node binary shows that
//! message to the operator), and no node may exist on it: oracle
//! `config-refused`.
//!
//! Each bound is also tried from the other side: the configuration at the
//! edge of what is allowed (R = N, R + W = N + 1, exactly N members, a grace
//! of exactly request timeout + read repair window, a context length limit
//! that just holds its entries) must be accepted (`config-accepted`), so a
//! validator that is stricter than its documented rule is caught too.
//!
//! No node is run on any of these configurations and nothing here draws
//! randomness, so trying them changes no trace.

use cairn_core::context::max_token_len;
use cairn_core::version::RELEASES;
use cairn_core::{Duration, Error, Node, NodeConfig, NodeId, Time};

use crate::oracle::Violation;

/// One mistake: what changed, the field the refusal must name, the config.
pub struct Mistake {
    pub what: &'static str,
    pub field: &'static str,
    pub cfg: NodeConfig,
}

/// A configuration at the edge of what is allowed.
pub struct Edge {
    pub what: &'static str,
    pub cfg: NodeConfig,
}

/// A member id that is not in `members`.
fn stranger(members: &[NodeId]) -> NodeId {
    let max = members.iter().map(|m| m.0).max().unwrap_or(0);
    NodeId(max + 1)
}

/// `members` cut to `len` entries, keeping `id`.
fn members_keeping(members: &[NodeId], id: NodeId, len: usize) -> Vec<NodeId> {
    let mut out = vec![id];
    out.extend(members.iter().copied().filter(|&m| m != id).take(len - 1));
    out
}

/// The mistakes derived from a good configuration.
pub fn mistakes(good: &NodeConfig) -> Vec<Mistake> {
    let q = good.quorum;
    let mut out = Vec::new();
    let mut push = |what: &'static str, field: &'static str, f: &dyn Fn(&mut NodeConfig)| {
        let mut cfg = good.clone();
        f(&mut cfg);
        out.push(Mistake { what, field, cfg });
    };
    push("n = 0", "quorum", &|c| c.quorum.n = 0);
    push("r = 0", "quorum", &|c| c.quorum.r = 0);
    push("w = 0", "quorum", &|c| c.quorum.w = 0);
    push("r = n + 1", "quorum", &|c| c.quorum.r = q.n + 1);
    push("w = n + 1", "quorum", &|c| c.quorum.w = q.n + 1);
    if q.n >= 2 {
        // R + W = N: a read may miss the last write.
        push("r + w = n", "quorum", &|c| {
            c.quorum.w = q.w.min(q.n - 1);
            c.quorum.r = q.n - c.quorum.w;
        });
        push("fewer members than n", "members", &|c| {
            c.members = members_keeping(&c.members, c.id, q.n as usize - 1);
        });
    }
    push("this node left out", "members", &|c| {
        let id = c.id;
        let extra = stranger(&c.members);
        c.members.retain(|&m| m != id);
        c.members.push(extra);
    });
    push("a member listed twice", "members", &|c| {
        let dup = c.members[0];
        c.members.push(dup);
    });
    push(
        "tombstone grace shorter than a request can live",
        "timing.tombstone_grace",
        &|c| {
            let t = &mut c.timing;
            t.tombstone_grace = Duration(t.request_timeout.0 + t.read_repair_window.0 - 1);
        },
    );
    push("no partitions", "partitions", &|c| c.partitions = 0);
    push("no vnodes", "partitions", &|c| c.vnodes = 0);
    push(
        "contexts of no entries",
        "limits.max_context_entries",
        &|c| c.limits.max_context_entries = 0,
    );
    push(
        "a context length limit that cannot hold its entries",
        "limits.max_context_len",
        &|c| c.limits.max_context_len = max_token_len(c.limits.max_context_entries) - 1,
    );
    push("an unknown release", "release", &|c| {
        c.release.0 = RELEASES.len() as u8
    });
    out
}

/// The configurations at the edge of each bound, derived from a good one.
pub fn edges(good: &NodeConfig) -> Vec<Edge> {
    let q = good.quorum;
    let mut out = Vec::new();
    let mut push = |what: &'static str, f: &dyn Fn(&mut NodeConfig)| {
        let mut cfg = good.clone();
        f(&mut cfg);
        out.push(Edge { what, cfg });
    };
    push("r = w = n", &|c| {
        c.quorum.r = q.n;
        c.quorum.w = q.n;
    });
    push("r + w = n + 1", &|c| {
        c.quorum.w = q.w.min(q.n);
        c.quorum.r = q.n + 1 - c.quorum.w;
    });
    push("exactly n members", &|c| {
        c.members = members_keeping(&c.members, c.id, q.n as usize);
    });
    push(
        "tombstone grace of exactly request timeout + read repair window",
        &|c| {
            let t = &mut c.timing;
            t.tombstone_grace = Duration(t.request_timeout.0 + t.read_repair_window.0);
        },
    );
    push("one partition, one vnode", &|c| {
        c.partitions = 1;
        c.vnodes = 1;
    });
    push("a context length limit that just holds its entries", &|c| {
        c.limits.max_context_len = max_token_len(c.limits.max_context_entries)
    });
    push("contexts of one entry", &|c| {
        c.limits.max_context_entries = 1;
        c.limits.max_context_len = max_token_len(1);
    });
    out
}

/// Tries every mistake and every edge of `good` (which must itself be
/// valid); the first misjudgement is a violation.
pub fn judge(node: usize, good: &NodeConfig, now: Time) -> Result<(), Violation> {
    for m in mistakes(good) {
        let what = m.what;
        match Node::new(m.cfg, now) {
            Ok(_) => {
                return Err(Violation::new(
                    "config-refused",
                    format!("n{node} started with a misconfiguration ({what})"),
                ))
            }
            Err(Error::Config(msg)) if msg.starts_with(&format!("{}: ", m.field)) => {}
            Err(e) => {
                return Err(Violation::new(
                    "config-refused",
                    format!(
                        "n{node} refused a misconfiguration ({what}) without naming {}: {e}",
                        m.field
                    ),
                ))
            }
        }
    }
    for e in edges(good) {
        if let Err(err) = e.cfg.validate() {
            return Err(Violation::new(
                "config-accepted",
                format!(
                    "n{node} refused a configuration at the edge of what is allowed ({}): {err}",
                    e.what
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::Quorum;

    fn config(members: u32, n: u8, r: u8, w: u8) -> NodeConfig {
        let mut c = NodeConfig::new(NodeId(1), (1..=members).map(NodeId).collect(), 9);
        c.quorum = Quorum { n, r, w };
        c
    }

    #[test]
    fn every_mistake_is_refused_naming_its_field_and_every_edge_accepted() {
        for c in [
            config(1, 1, 1, 1),
            config(3, 3, 2, 2),
            config(3, 3, 1, 3),
            config(5, 3, 2, 2),
            config(2, 2, 2, 1),
        ] {
            c.validate().unwrap();
            judge(1, &c, Time(1)).unwrap();
            let mistakes = mistakes(&c);
            assert!(mistakes.len() >= 12, "{} mistakes", mistakes.len());
            for m in &mistakes {
                let err = m.cfg.validate().unwrap_err().to_string();
                assert!(err.contains(&format!("{}: ", m.field)), "{}: {err}", m.what);
            }
            assert_eq!(edges(&c).len(), 7);
        }
    }

    #[test]
    fn a_configuration_that_is_already_wrong_is_reported() {
        // R + W = N: its mistakes are refused, but naming the quorum rather
        // than the field each one changed.
        let err = judge(1, &config(3, 3, 1, 2), Time(1)).unwrap_err();
        assert_eq!(err.oracle, "config-refused");
        assert!(err.message.contains("without naming"), "{err}");
    }
}
