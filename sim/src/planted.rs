//! Planted bugs: switches in cairn-core that the sweep must be able to find.
//!
//! The list of names is core's own (`PlantedBugs::NAMES`), so a bug added
//! there is usable here at once; this module only adds the one-line
//! descriptions shown by `cairn-sim scenarios`.

use cairn_core::config::PlantedBugs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlantedBug {
    /// The name used on the command line (`--planted-bug NAME`).
    pub name: &'static str,
}

impl PlantedBug {
    /// Turns the bug on in a node's configuration.
    pub fn apply(&self, bugs: &mut PlantedBugs) {
        let known = bugs.enable(self.name);
        debug_assert!(known, "core does not know planted bug {}", self.name);
    }

    pub fn description(&self) -> &'static str {
        match self.name {
            "ack-before-durable" => "a replica acknowledges a write before it is durable",
            "reuse-dots-after-crash" => {
                "a node restarting after a crash keeps its epoch and reuses dots"
            }
            "read-repair-overwrites" => "read repair replaces a replica's state instead of merging",
            "reap-without-quorum" => "a tombstone is reaped without asking the other replicas",
            "drop-hints-for-down-targets" => "hints for a target that is down are given up",
            "anti-entropy-skips-bucket" => {
                "anti-entropy leaves out the keys of the last Merkle bucket"
            }
            "new-message-before-finalization" => {
                "a new wire message is sent before the cluster is finalized at a release that has it"
            }
            "migrate-before-finalization" => {
                "data is migrated to the new schema before finalization"
            }
            "non-atomic-migration" => "migration rewrites records in place instead of switching atomically",
            "cluster-version-before-persisting" => {
                "a cluster version learned from gossip is acted on before it is persisted"
            }
            "trust-client-contexts" => {
                "a client's context is taken as it claims to be: tag, key and bounds unchecked"
            }
            _ => "(no description)",
        }
    }
}

/// Every planted bug core can switch on.
pub fn all() -> Vec<PlantedBug> {
    PlantedBugs::NAMES
        .iter()
        .map(|&name| PlantedBug { name })
        .collect()
}

pub fn find(name: &str) -> Option<PlantedBug> {
    PlantedBugs::NAMES
        .iter()
        .find(|&&n| n == name)
        .map(|&name| PlantedBug { name })
}

/// The names, for error messages and help.
pub fn names() -> Vec<&'static str> {
    PlantedBugs::NAMES.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bug_changes_the_configuration() {
        assert!(find("ack-before-durable").is_some());
        for bug in all() {
            let mut b = PlantedBugs::default();
            bug.apply(&mut b);
            assert_ne!(b, PlantedBugs::default(), "{} does nothing", bug.name);
            assert_eq!(find(bug.name), Some(bug));
        }
        assert!(find("no-such-bug").is_none());
    }
}
