//! The release table: every release this build can act as.
//!
//! The simulator runs nodes of different releases side by side from one
//! build by choosing a row of [`RELEASES`]. A release talks to peers whose
//! protocol range overlaps its own; the handshake picks the highest common
//! protocol.

use alloc::string::String;
use serde::{Deserialize, Serialize};

/// An inclusive range of wire protocol versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolRange {
    pub min: u16,
    pub max: u16,
}

impl ProtocolRange {
    pub const fn new(min: u16, max: u16) -> Self {
        ProtocolRange { min, max }
    }
    pub fn contains(&self, v: u16) -> bool {
        self.min <= v && v <= self.max
    }
}

impl core::fmt::Display for ProtocolRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.min == self.max {
            write!(f, "[{}]", self.min)
        } else {
            write!(f, "[{}..={}]", self.min, self.max)
        }
    }
}

/// A capability a release has. A feature is used only once the active
/// cluster version is a release that has it (finalization) and, for wire
/// features, with peers whose negotiated protocol carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Feature {
    /// Hints are delivered many to a message (protocol 2).
    HintBatch,
    /// Stored values are zstd-compressed (schema 2).
    CompressedValues,
    /// Reads fetch one full copy and digests from the other replicas,
    /// fetching more only when digests disagree (protocol 3).
    DigestReads,
    /// Data records are laid out by partition, one contiguous storage range
    /// per partition (schema 3).
    PartitionedKeys,
}

impl Feature {
    /// The lowest protocol version that carries this feature on the wire, if
    /// it is a wire feature.
    pub const fn min_protocol(self) -> Option<u16> {
        match self {
            Feature::HintBatch => Some(2),
            Feature::DigestReads => Some(3),
            Feature::CompressedValues | Feature::PartitionedKeys => None,
        }
    }
}

/// One release this build can act as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub version: &'static str,
    pub protocols: ProtocolRange,
    /// The on-disk schema this release writes once the cluster is finalized
    /// at it. It also reads the schema before, to migrate from it.
    pub schema: u16,
    pub features: &'static [Feature],
}

impl Release {
    pub fn has(&self, f: Feature) -> bool {
        self.features.contains(&f)
    }

    /// The schemas this release can open.
    pub fn reads_schema(&self, schema: u16) -> bool {
        schema == self.schema || schema + 1 == self.schema
    }
}

/// Every release, oldest first. The last row is what this build is.
///
/// Skew policy: each release speaks the protocol of the release before it,
/// so a cluster can be upgraded one node at a time from one release to the
/// next; releases further apart share no protocol and refuse each other at
/// the handshake, naming both ranges.
pub const RELEASES: &[Release] = &[
    Release {
        version: "0.1.0",
        protocols: ProtocolRange::new(1, 1),
        schema: 1,
        features: &[],
    },
    Release {
        version: "0.2.0",
        protocols: ProtocolRange::new(1, 2),
        schema: 2,
        features: &[Feature::HintBatch, Feature::CompressedValues],
    },
    Release {
        version: "0.3.0",
        protocols: ProtocolRange::new(2, 3),
        schema: 3,
        features: &[
            Feature::HintBatch,
            Feature::CompressedValues,
            Feature::DigestReads,
            Feature::PartitionedKeys,
        ],
    },
];

/// Index into [`RELEASES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReleaseId(pub u8);

impl ReleaseId {
    pub fn current() -> ReleaseId {
        ReleaseId((RELEASES.len() - 1) as u8)
    }
    pub fn get(self) -> Option<&'static Release> {
        RELEASES.get(self.0 as usize)
    }
    pub fn release(self) -> &'static Release {
        self.get().unwrap_or(&RELEASES[RELEASES.len() - 1])
    }
    pub fn version(self) -> &'static str {
        self.release().version
    }
    /// The oldest active cluster version this release can serve in: the
    /// release before it (it cannot talk to anything older).
    pub fn min_cluster_version(self) -> ReleaseId {
        ReleaseId(self.0.saturating_sub(1))
    }
    pub fn by_version(v: &str) -> Option<ReleaseId> {
        RELEASES
            .iter()
            .position(|r| r.version == v)
            .map(|i| ReleaseId(i as u8))
    }
}

/// Why `release` cannot open a data directory whose live schema is
/// `schema`, if it cannot. `unfinished` is the schema a migration of the
/// directory was headed for and had not reached, if one was (its progress
/// record says so, or the cluster version it persisted asks for a newer
/// schema): a directory one schema behind for that reason needs the release
/// that writes the next schema again, not an older one.
pub fn schema_refusal(release: &Release, schema: u16, unfinished: Option<u16>) -> Option<String> {
    use alloc::format;
    if release.reads_schema(schema) {
        return None;
    }
    let reads = if release.schema > 1 {
        format!("schemas {} and {}", release.schema - 1, release.schema)
    } else {
        format!("schema {}", release.schema)
    };
    if schema > release.schema {
        return Some(format!(
            "data directory uses schema {schema}, written by a newer release; release {} reads {reads}: run a newer release, or restore a backup taken before the upgrade",
            release.version,
        ));
    }
    let finisher = unfinished.filter(|&to| to > schema).and_then(|to| {
        RELEASES
            .iter()
            .find(|r| r.schema == to && r.reads_schema(schema))
    });
    Some(match finisher {
        Some(r) => format!(
            "migration to schema {} not finished; start {} again to finish it, then {}: the data directory still uses schema {schema}, and release {} reads {reads}",
            r.schema, r.version, release.version, release.version,
        ),
        None => format!(
            "data directory uses schema {schema}, too old for release {}, which reads {reads}: upgrade one release at a time",
            release.version,
        ),
    })
}

/// Why two peers cannot talk.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no common wire protocol: local release {local_release} speaks {local}, peer release {peer_release} speaks {peer}")]
pub struct HandshakeError {
    pub local_release: String,
    pub local: ProtocolRange,
    pub peer_release: String,
    pub peer: ProtocolRange,
}

/// Picks the highest protocol both ranges contain.
pub fn negotiate(
    local_release: &str,
    local: ProtocolRange,
    peer_release: &str,
    peer: ProtocolRange,
) -> Result<u16, HandshakeError> {
    let hi = local.max.min(peer.max);
    let lo = local.min.max(peer.min);
    if lo <= hi {
        Ok(hi)
    } else {
        Err(HandshakeError {
            local_release: local_release.into(),
            local,
            peer_release: peer_release.into(),
            peer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_ordered_and_ranges_differ() {
        assert!(RELEASES.len() >= 2);
        for w in RELEASES.windows(2) {
            assert!(w[0].protocols.max <= w[1].protocols.max);
            assert_ne!(w[0].protocols, w[1].protocols);
        }
        for r in RELEASES {
            for f in r.features {
                if let Some(p) = f.min_protocol() {
                    assert!(r.protocols.contains(p));
                }
            }
        }
        // Each release talks to the one before it, and not further back.
        for w in RELEASES.windows(2) {
            assert!(negotiate(w[1].version, w[1].protocols, w[0].version, w[0].protocols).is_ok());
            assert!(w[1].reads_schema(w[0].schema));
        }
        for (i, a) in RELEASES.iter().enumerate() {
            for b in RELEASES.iter().skip(i + 2) {
                assert!(negotiate(a.version, a.protocols, b.version, b.protocols).is_err());
            }
        }
    }

    #[test]
    fn negotiation_picks_highest_common() {
        let a = ProtocolRange::new(1, 2);
        let b = ProtocolRange::new(1, 1);
        assert_eq!(negotiate("0.2.0", a, "0.1.0", b), Ok(1));
        assert_eq!(negotiate("0.2.0", a, "0.2.0", a), Ok(2));
        let err = negotiate("0.3.0", ProtocolRange::new(3, 4), "0.1.0", b).unwrap_err();
        let msg = alloc::string::ToString::to_string(&err);
        assert!(msg.contains("[3..=4]") && msg.contains("[1]"), "{msg}");
    }
}
