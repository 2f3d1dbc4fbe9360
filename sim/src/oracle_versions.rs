//! Version oracles: judgements about releases, cluster versions, schema
//! migrations and restores.
//!
//! | oracle                  | when                                   | what                                             |
//! |-------------------------|----------------------------------------|--------------------------------------------------|
//! | `decodable`             | `Event::UnknownMessage` (and `Undecodable`, in `world.rs`) | no node receives a message it cannot decode |
//! | `no-early-format`       | every disk write                       | a data or hint record's schema (key namespace and value header) is at most the schema of the highest cluster version any node has persisted, and at most the writer's release schema |
//! | `migration-keeps-records` | `MigrationFinished`, and the next `MigrationStarted` or `Serving` after an interrupted migration | every key's state contains (merging changes nothing) its durable state when the migration started |
//! | `cluster-version-monotone` | every `Event::Recovered`            | a node's active cluster version never decreases across restarts |
//! | `restore-epoch`         | `Event::EpochLearned`, `WriteIssued`   | after a restore, the new epoch is above every epoch the node used before (with `--unlimited-faults`: every epoch it issued a dot in), and no dot is issued before it is learned |
//! | `expectation`           | end of a version scenario              | what the scenario exists for happened            |
//! | `finalize-idempotent`   | every answer to a `refinalize` step (`world_versions.rs`) | a finalization of the cluster version already active, sent again, is answered `Finalized` by a node still serving |
//! | `refusal-visible`       | a bound ([`refusal_bound_us`]) after a node began refusing, while it still does | every running peer linked to it both ways (since the refusal, its own start and the last link change) lists it with its release (or not at all) and not as serving |

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use cairn_core::storage::{self, decode_record, key_schema, Record, META_KEY};
use cairn_core::version::ReleaseId;
use cairn_core::KeyState;

use crate::oracle::Violation;

/// The logical records of a durable image: each user key's state in the
/// live schema (the one the metadata names). Hints are left out.
pub fn logical_records(image: &[(Bytes, Bytes)]) -> BTreeMap<Bytes, KeyState> {
    let schema = image
        .iter()
        .find(|(k, _)| k.as_ref() == META_KEY)
        .and_then(|(k, v)| match decode_record(k, v) {
            Ok(Record::Meta(m)) => Some(m.schema),
            _ => None,
        });
    let Some(schema) = schema else {
        return BTreeMap::new();
    };
    image
        .iter()
        .filter(|(k, _)| k.first() == Some(&b'd') && key_schema(k) == Some(schema))
        .filter_map(|(k, v)| match decode_record(k, v) {
            Ok(Record::Data { key, state, .. }) => Some((key, state)),
            _ => None,
        })
        .collect()
}

/// The schema a stored value says it is written in (data and hint values
/// start with it).
fn value_schema(value: &[u8]) -> Option<u16> {
    (value.len() >= 2).then(|| u16::from_le_bytes([value[0], value[1]]))
}

/// Per-node state of the version oracles.
#[derive(Clone, Debug, Default)]
struct NodeTrack {
    /// The highest cluster version this node has acted on.
    active_cv: Option<ReleaseId>,
    /// Durable logical records when the current (or an interrupted)
    /// migration started.
    migration_snapshot: Option<(u16, u16, BTreeMap<Bytes, KeyState>)>,
    /// Keys excused from the migration check (reaped or corrupt since).
    excused: BTreeSet<Bytes>,
    /// The highest epoch this node has used (recovered into, issued dots in).
    max_epoch: u32,
    /// The highest epoch this node has issued a dot in.
    max_dot_epoch: u32,
    /// Restored and not yet rejoined: the highest epoch used before.
    restored_from: Option<u32>,
    /// Its disk forgot everything (a lost journal) since it last learned
    /// its epoch.
    forgot: bool,
}

/// The version oracles of one run.
#[derive(Clone, Debug)]
pub struct VersionOracles {
    /// The highest cluster version any node has persisted.
    max_cv: ReleaseId,
    nodes: Vec<NodeTrack>,
    /// `restore-epoch` compares a learned epoch with the epochs the node
    /// issued dots in, not every epoch it took: with the fault atlas lifted
    /// a node's own metadata, the only record of an epoch it took and never
    /// announced, may be destroyed. Reusing such an epoch repeats no dot
    /// (`dot-unique` judges the dots themselves).
    dot_epochs_only: bool,
}

impl VersionOracles {
    pub fn new(nodes: usize, initial_cv: ReleaseId) -> VersionOracles {
        VersionOracles {
            max_cv: initial_cv,
            nodes: vec![NodeTrack::default(); nodes],
            dot_epochs_only: false,
        }
    }

    /// With the fault atlas lifted: see `dot_epochs_only`.
    pub fn judge_epochs_by_dots(&mut self) {
        self.dot_epochs_only = true;
    }

    pub fn max_cluster_version(&self) -> ReleaseId {
        self.max_cv
    }

    /// A node reported receiving a message type it does not know.
    pub fn unknown_message(node: usize, from: u32, msg_type: u16) -> Violation {
        Violation::new(
            "decodable",
            format!(
                "n{} received a message of type {msg_type} from n{from} it does not know: a message was sent that its receiver cannot decode",
                node + 1
            ),
        )
    }

    /// `Event::ClusterVersion`: the node persisted `cv` and acts on it.
    pub fn cluster_version(&mut self, node: usize, cv: ReleaseId) {
        self.max_cv = self.max_cv.max(cv);
        let t = &mut self.nodes[node];
        t.active_cv = Some(t.active_cv.map_or(cv, |a| a.max(cv)));
    }

    /// A disk write by `node`, running `release`.
    pub fn write(
        &self,
        node: usize,
        release: ReleaseId,
        key: &[u8],
        value: Option<&Bytes>,
    ) -> Result<(), Violation> {
        let Some(value) = value else {
            return Ok(());
        };
        let Some(ks) = key_schema(key) else {
            return Ok(());
        };
        let written = ks.max(value_schema(value).unwrap_or(0));
        let allowed = self.max_cv.release().schema;
        let own = release.release().schema;
        if written > allowed {
            return Err(Violation::new(
                "no-early-format",
                format!(
                    "n{} ({}) wrote a schema {written} record (key {:02x?}) while the highest cluster version persisted anywhere is {} (schema {allowed}): a new format before finalization",
                    node + 1,
                    release.version(),
                    &key[..key.len().min(12)],
                    self.max_cv.version()
                ),
            ));
        }
        if written > own {
            return Err(Violation::new(
                "no-early-format",
                format!(
                    "n{} ({}) wrote a schema {written} record, newer than its release writes (schema {own})",
                    node + 1,
                    release.version()
                ),
            ));
        }
        Ok(())
    }

    /// `Event::Recovered`: the node loaded its disk and now runs at `cv`
    /// in `epoch` (`restored`: its disk carries the restore marker).
    pub fn recovered(
        &mut self,
        node: usize,
        cv: ReleaseId,
        epoch: u32,
        restored: bool,
    ) -> Result<(), Violation> {
        let t = &mut self.nodes[node];
        if let Some(a) = t.active_cv {
            if cv < a {
                return Err(Violation::new(
                    "cluster-version-monotone",
                    format!(
                        "n{} restarted at cluster version {}, below {} which it acted on before: it acted on a cluster version it had not persisted",
                        node + 1,
                        cv.version(),
                        a.version()
                    ),
                ));
            }
        }
        t.active_cv = Some(t.active_cv.map_or(cv, |a| a.max(cv)));
        // Read from its durable metadata: persisted, even if the node
        // crashed before acting on it (and announcing it).
        self.max_cv = self.max_cv.max(cv);
        if !restored && t.restored_from.is_none() {
            t.max_epoch = t.max_epoch.max(epoch);
        }
        Ok(())
    }

    /// The driver replaced a node's disk (a restore, or an old image):
    /// what it persisted before is gone on purpose.
    pub fn disk_replaced(&mut self, node: usize, restored: bool) {
        let t = &mut self.nodes[node];
        t.active_cv = None;
        t.migration_snapshot = None;
        t.excused.clear();
        if restored {
            t.restored_from = Some(t.max_epoch);
        }
    }

    /// The node's disk forgot every record, its metadata included. The
    /// epochs it used are known only from the dots its peers hold; epochs
    /// whose every dot was lost with the disk may be taken again
    /// (`dot-unique` judges whether a dot issued again still has a copy
    /// anywhere).
    pub fn journal_lost(&mut self, node: usize) {
        let t = &mut self.nodes[node];
        t.forgot = true;
        t.active_cv = None;
        t.migration_snapshot = None;
        t.excused.clear();
    }

    /// The node issued a dot in `epoch`.
    pub fn write_issued(&mut self, node: usize, epoch: u32) -> Result<(), Violation> {
        let t = &mut self.nodes[node];
        if let Some(before) = t.restored_from {
            return Err(Violation::new(
                "restore-epoch",
                format!(
                    "n{} issued a dot in epoch {epoch} after a restore, before learning its epoch from its peers (it had used epochs up to {before})",
                    node + 1
                ),
            ));
        }
        t.max_epoch = t.max_epoch.max(epoch);
        t.max_dot_epoch = t.max_dot_epoch.max(epoch);
        Ok(())
    }

    /// `Event::EpochLearned`: a restored node took `epoch`.
    pub fn epoch_learned(&mut self, node: usize, epoch: u32) -> Result<(), Violation> {
        let t = &mut self.nodes[node];
        let restored_from = t.restored_from.take();
        if core::mem::take(&mut t.forgot) {
            return Ok(());
        }
        let before = if self.dot_epochs_only {
            t.max_dot_epoch
        } else {
            restored_from.unwrap_or(t.max_epoch)
        };
        if epoch <= before {
            return Err(Violation::new(
                "restore-epoch",
                format!(
                    "n{} took epoch {epoch} after a restore, but had used epoch {before} before: its dots could repeat",
                    node + 1
                ),
            ));
        }
        Ok(())
    }

    /// A key of this node was reaped or found corrupt: it may legitimately
    /// be gone after a migration.
    pub fn excuse(&mut self, node: usize, key: &[u8]) {
        let t = &mut self.nodes[node];
        if t.migration_snapshot.is_some() {
            t.excused.insert(Bytes::copy_from_slice(key));
        }
    }

    /// `Event::MigrationStarted`: checks what an interrupted migration left
    /// (against `state`, the node's current key states), then remembers
    /// `durable`, the node's durable logical records now.
    pub fn migration_started<'a>(
        &mut self,
        node: usize,
        from: u16,
        to: u16,
        durable: BTreeMap<Bytes, KeyState>,
        state: impl Fn(&[u8]) -> Option<&'a KeyState>,
    ) -> Result<(), Violation> {
        self.migration_check(node, "resumed after an interruption", state)?;
        let t = &mut self.nodes[node];
        t.migration_snapshot = Some((from, to, durable));
        t.excused.clear();
        Ok(())
    }

    /// `Event::MigrationFinished`, or the node serves again after an
    /// interrupted migration: every record it held when the migration
    /// started must still be there, contained in the key's state now.
    pub fn migration_check<'a>(
        &mut self,
        node: usize,
        when: &str,
        state: impl Fn(&[u8]) -> Option<&'a KeyState>,
    ) -> Result<(), Violation> {
        let t = &mut self.nodes[node];
        let Some((from, to, snap)) = t.migration_snapshot.take() else {
            return Ok(());
        };
        for (key, old) in &snap {
            if t.excused.contains(key) || old.is_empty() {
                continue;
            }
            let now = state(key);
            let kept = now.is_some_and(|now| {
                let mut merged = now.clone();
                merged.merge(old);
                merged == *now
            });
            if !kept {
                let dots: Vec<String> = old.siblings().iter().map(|s| s.dot.to_string()).collect();
                return Err(Violation::new(
                    "migration-keeps-records",
                    format!(
                        "n{} lost part of key {:?} across the migration from schema {from} to {to} ({when}): it held [{}] when the migration started, now {}",
                        node + 1,
                        String::from_utf8_lossy(key),
                        dots.join(","),
                        match now {
                            None => "nothing".to_string(),
                            Some(s) => format!(
                                "[{}]",
                                s.siblings()
                                    .iter()
                                    .map(|x| x.dot.to_string())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            ),
                        }
                    ),
                ));
            }
        }
        t.excused.clear();
        Ok(())
    }

    /// Whether an interrupted migration's records are still to be checked.
    pub fn migration_pending(&self, node: usize) -> bool {
        self.nodes[node].migration_snapshot.is_some()
    }
}

/// Slack on top of the gossip and handshake periods of `refusal-visible`:
/// network delays, lost messages, ticks and clock drift.
const REFUSAL_SLACK_US: u64 = 1_500_000;

/// How long after a node begins refusing its peers may still list it as
/// serving: a handshake retry (a peer that refuses its release learns it
/// from its hello), three gossip rounds (a peer it talks to learns it from
/// its gossip), and slack.
pub fn refusal_bound_us(timing: &cairn_core::config::Timing) -> u64 {
    timing.handshake_retry.0 + 3 * timing.gossip_interval.0 * 5 / 4 + REFUSAL_SLACK_US
}

/// `refusal-visible`: `observer` (a running peer of `refusing`, linked to
/// it both ways long enough) must not list `refusing` as serving, nor with
/// another release than the one it runs: its operators read peer health
/// and releases on its status page, and finalization trusts them.
pub fn check_refusal_visible(
    refusing: cairn_core::NodeId,
    refusing_release: &str,
    observer: &cairn_core::Node,
    since: cairn_core::Time,
    now: cairn_core::Time,
) -> Result<(), Violation> {
    use cairn_core::wire::Health;
    let Some(view) = observer.peers().into_iter().find(|p| p.id == refusing) else {
        return Ok(());
    };
    let Some(info) = view
        .info
        .as_ref()
        .filter(|i| i.health == Health::Serving || i.release != refusing_release)
    else {
        return Ok(());
    };
    Err(Violation::new(
        "refusal-visible",
        format!(
            "{} still lists {refusing} as {:?} on release {} ({}) at {now}, though {refusing} runs {refusing_release} and has refused to serve since {since}",
            observer.id(),
            info.health,
            info.release,
            if view.up { "up" } else { "down" },
        ),
    ))
}

/// The schemas of the data and hint records of a durable image.
pub fn image_schemas(image: &[(Bytes, Bytes)]) -> BTreeSet<u16> {
    image
        .iter()
        .filter(|(k, _)| k.as_ref() != storage::PROGRESS_KEY)
        .filter_map(|(k, _)| key_schema(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::storage::{data_key, encode_meta, encode_state, hint_key, Meta};
    use cairn_core::{Actor, Dot, NodeId, VersionVector};

    fn dot(n: u32, e: u32, c: u64) -> Dot {
        Dot {
            actor: Actor {
                node: NodeId(n),
                epoch: e,
            },
            counter: c,
        }
    }

    fn state(dots: &[Dot]) -> KeyState {
        let mut s = KeyState::new();
        for &d in dots {
            s.apply_write(&VersionVector::new(), d, Some(Bytes::from_static(b"v")));
        }
        s
    }

    const V1: ReleaseId = ReleaseId(0);
    const V2: ReleaseId = ReleaseId(1);
    const V3: ReleaseId = ReleaseId(2);

    #[test]
    fn unknown_messages_are_violations() {
        let v = VersionOracles::unknown_message(1, 3, 77);
        assert_eq!(v.oracle, "decodable");
        assert!(v.message.contains("n2") && v.message.contains("77"));
    }

    #[test]
    fn a_new_format_before_finalization_is_caught() {
        let mut o = VersionOracles::new(3, V1);
        let s = state(&[dot(1, 1, 1)]);
        let v1 = encode_state(1, &data_key(1, 0, b"k"), &s);
        let v2 = encode_state(2, &data_key(2, 0, b"k"), &s);
        assert!(o.write(0, V2, &data_key(1, 0, b"k"), Some(&v1)).is_ok());
        // Deletes of any namespace are fine (clean-up of left-overs).
        assert!(o.write(0, V2, &data_key(2, 0, b"k"), None).is_ok());
        let e = o
            .write(0, V2, &data_key(2, 0, b"k"), Some(&v2))
            .unwrap_err();
        assert_eq!(e.oracle, "no-early-format");
        // A schema 2 value under a schema 1 key is caught too.
        assert!(o.write(0, V2, &data_key(1, 0, b"k"), Some(&v2)).is_err());
        assert!(o
            .write(0, V2, &hint_key(2, NodeId(2), b"k"), Some(&v2))
            .is_err());
        o.cluster_version(1, V2);
        assert!(o.write(0, V2, &data_key(2, 0, b"k"), Some(&v2)).is_ok());
        // Never above the writer's own release.
        let v3 = encode_state(3, &data_key(3, 0, b"k"), &s);
        o.cluster_version(1, V3);
        assert!(o.write(0, V2, &data_key(3, 0, b"k"), Some(&v3)).is_err());
        assert!(o.write(0, V3, &data_key(3, 0, b"k"), Some(&v3)).is_ok());
        // Metadata is frozen-format and always allowed.
        let meta = encode_meta(&Meta {
            epoch: 1,
            next_counter: 1,
            clean: false,
            schema: 1,
            cluster_version: "0.1.0".into(),
            generation: 1,
        });
        assert!(VersionOracles::new(1, V1)
            .write(0, V3, META_KEY, Some(&meta))
            .is_ok());
    }

    #[test]
    fn a_cluster_version_that_goes_back_is_caught() {
        let mut o = VersionOracles::new(2, V1);
        assert!(o.recovered(0, V1, 1, false).is_ok());
        o.cluster_version(0, V2);
        let e = o.recovered(0, V1, 2, false).unwrap_err();
        assert_eq!(e.oracle, "cluster-version-monotone");
        assert!(e.message.contains("0.1.0") && e.message.contains("0.2.0"));
        assert!(o.recovered(0, V2, 3, false).is_ok());
        // A replaced disk starts over.
        o.disk_replaced(0, true);
        assert!(o.recovered(0, V1, 2, true).is_ok());
        // Other nodes are independent.
        assert!(o.recovered(1, V1, 1, false).is_ok());
    }

    #[test]
    fn a_restore_that_reuses_an_epoch_is_caught() {
        let mut o = VersionOracles::new(1, V3);
        o.recovered(0, V3, 1, false).unwrap();
        o.write_issued(0, 1).unwrap();
        o.recovered(0, V3, 2, false).unwrap();
        o.write_issued(0, 2).unwrap();
        o.disk_replaced(0, true);
        // The backup's metadata says epoch 1: recovering into 2 is fine
        // as long as no dot is issued in it.
        o.recovered(0, V3, 2, true).unwrap();
        let e = o.write_issued(0, 2).unwrap_err();
        assert_eq!(e.oracle, "restore-epoch");
        let e = o.epoch_learned(0, 2).unwrap_err();
        assert_eq!(e.oracle, "restore-epoch");
        o.disk_replaced(0, true);
        assert!(o.epoch_learned(0, 3).is_ok());
        assert!(o.write_issued(0, 3).is_ok());
    }

    #[test]
    fn a_record_lost_in_a_migration_is_caught() {
        let mut o = VersionOracles::new(1, V2);
        let a = state(&[dot(1, 1, 1)]);
        let b = state(&[dot(2, 1, 1)]);
        let snap: BTreeMap<Bytes, KeyState> = [
            (Bytes::from_static(b"a"), a.clone()),
            (Bytes::from_static(b"b"), b.clone()),
        ]
        .into_iter()
        .collect();
        let mut grown = a.clone();
        grown.apply_write(a.context(), dot(1, 1, 2), Some(Bytes::from_static(b"w")));
        let now: BTreeMap<Bytes, KeyState> = [
            (Bytes::from_static(b"a"), grown.clone()),
            (Bytes::from_static(b"b"), b.clone()),
        ]
        .into_iter()
        .collect();
        o.migration_started(0, 1, 2, snap.clone(), |_| None)
            .unwrap();
        assert!(o.migration_pending(0));
        // Everything kept (a key may grow): fine.
        o.migration_check(0, "finished", |k| now.get(k)).unwrap();
        assert!(!o.migration_pending(0));
        // A key gone: caught.
        o.migration_started(0, 1, 2, snap.clone(), |_| None)
            .unwrap();
        let e = o
            .migration_check(0, "finished", |k| (k == b"a").then_some(&grown))
            .unwrap_err();
        assert_eq!(e.oracle, "migration-keeps-records");
        assert!(e.message.contains("\"b\""), "{}", e.message);
        // A key whose state lost a sibling: caught.
        let other = state(&[dot(3, 1, 1)]);
        o.migration_started(0, 1, 2, snap.clone(), |_| None)
            .unwrap();
        let e = o
            .migration_check(0, "finished", |k| {
                if k == b"a" {
                    Some(&other)
                } else {
                    now.get(k)
                }
            })
            .unwrap_err();
        assert_eq!(e.oracle, "migration-keeps-records");
        // An interrupted migration is judged when the next one starts.
        o.migration_started(0, 1, 2, snap.clone(), |_| None)
            .unwrap();
        assert!(o
            .migration_started(0, 1, 2, snap.clone(), |k| (k == b"a").then_some(&a))
            .is_err());
        // Reaped keys are excused.
        o.migration_started(0, 1, 2, snap, |_| None).unwrap();
        o.excuse(0, b"b");
        o.migration_check(0, "finished", |k| now.get(k).filter(|_| k == b"a"))
            .unwrap();
    }

    #[test]
    fn logical_records_read_the_live_schema_only() {
        let s = state(&[dot(1, 1, 1)]);
        let meta = |schema| Meta {
            epoch: 1,
            next_counter: 1,
            clean: false,
            schema,
            cluster_version: "0.2.0".into(),
            generation: 1,
        };
        let mut image = vec![
            (
                data_key(1, 0, b"old"),
                encode_state(1, &data_key(1, 0, b"old"), &s),
            ),
            (
                data_key(2, 0, b"new"),
                encode_state(2, &data_key(2, 0, b"new"), &s),
            ),
            (
                hint_key(1, NodeId(2), b"h"),
                encode_state(1, &hint_key(1, NodeId(2), b"h"), &s),
            ),
        ];
        assert!(logical_records(&image).is_empty(), "no metadata");
        image.push((Bytes::from_static(META_KEY), encode_meta(&meta(1))));
        let r = logical_records(&image);
        assert_eq!(
            r.keys().cloned().collect::<Vec<_>>(),
            vec![Bytes::from_static(b"old")]
        );
        image.pop();
        image.push((Bytes::from_static(META_KEY), encode_meta(&meta(2))));
        let r = logical_records(&image);
        assert_eq!(
            r.keys().cloned().collect::<Vec<_>>(),
            vec![Bytes::from_static(b"new")]
        );
        assert_eq!(image_schemas(&image), [1, 2].into_iter().collect());
    }
}
