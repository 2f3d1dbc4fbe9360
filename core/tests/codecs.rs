//! Codec properties: wire envelopes across protocol versions, storage records
//! and client causal contexts round-trip; damage is detected; untrusted bytes
//! never panic a decoder.

#[allow(dead_code)]
#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_core::api::{BackupInfo, ClientError};
use cairn_core::config::Limits;
use cairn_core::context::{self, ContextKey, ContextMac};
use cairn_core::dvv::{Actor, Dot, KeyState, Sibling, VersionVector};
use cairn_core::storage::{self, Meta, Progress, Record};
use cairn_core::version::{negotiate, ProtocolRange, RELEASES};
use cairn_core::wire::{self, *};
use cairn_core::{NodeId, RequestId, Time};
use proptest::prelude::*;

const MAX: usize = checks::MAX_BODY;
/// A record key outside every schema namespace, for value-level checks (the
/// checksum binds a value to the key it is stored under).
const TEST_KEY: &[u8] = b"test-record";

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn small_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

/// Mostly small values, sometimes large compressible ones (the storage codecs
/// compress payloads over a threshold).
fn value_bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        6 => small_bytes(),
        1 => (any::<u8>(), 100..600usize, small_bytes()).prop_map(|(b, n, tail)| {
            let mut v = vec![b; n];
            v.extend_from_slice(&tail);
            Bytes::from(v)
        }),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9a-z.]{0,12}", any::<String>(),]
}

fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![0..8u32, any::<u32>()].prop_map(NodeId)
}

fn actor() -> impl Strategy<Value = Actor> {
    (node(), prop_oneof![1..4u32, any::<u32>()]).prop_map(|(node, epoch)| Actor { node, epoch })
}

fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![1..20u64, 1..=u64::MAX]
}

fn dot() -> impl Strategy<Value = Dot> {
    (actor(), counter()).prop_map(|(actor, counter)| Dot { actor, counter })
}

/// A well-formed version vector.
fn vv() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((actor(), counter()), 0..5).prop_map(VersionVector::from_entries)
}

/// A well-formed key state: unique sorted dots, all covered by the context.
fn key_state() -> impl Strategy<Value = KeyState> {
    (
        prop::collection::btree_map(dot(), prop::option::weighted(0.8, value_bytes()), 0..4),
        vv(),
    )
        .prop_map(
            |(siblings, extra): (BTreeMap<Dot, Option<Bytes>>, VersionVector)| {
                let mut context =
                    VersionVector::from_entries(siblings.keys().map(|d| (d.actor, d.counter)));
                context.merge(&extra);
                let siblings = siblings
                    .into_iter()
                    .map(|(dot, value)| Sibling { dot, value })
                    .collect();
                let s = KeyState::from_parts(siblings, context);
                assert!(s.is_well_formed());
                s
            },
        )
}

/// Any key state the wire can carry, well formed or not (the wire codec does
/// not judge states; receivers check them).
fn any_key_state() -> impl Strategy<Value = KeyState> {
    prop_oneof![
        3 => key_state(),
        1 => (
            prop::collection::vec((dot(), prop::option::of(small_bytes())), 0..4),
            vv(),
        )
            .prop_map(|(sibs, ctx)| {
                KeyState::from_parts(
                    sibs.into_iter().map(|(dot, value)| Sibling { dot, value }).collect(),
                    ctx,
                )
            }),
    ]
}

fn range() -> impl Strategy<Value = ProtocolRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(a, b)| ProtocolRange::new(a, b))
}

fn health() -> impl Strategy<Value = Health> {
    prop_oneof![
        Just(Health::Starting),
        Just(Health::Serving),
        Just(Health::Migrating),
        Just(Health::Refusing),
        Just(Health::Draining),
        Just(Health::Halted),
    ]
}

fn member() -> impl Strategy<Value = MemberInfo> {
    (
        (node(), any::<u32>(), any::<u64>()),
        any::<u64>(),
        text(),
        range(),
        any::<u16>(),
        text(),
        health(),
    )
        .prop_map(
            |(
                (node, epoch, generation),
                heartbeat,
                release,
                protocols,
                schema,
                cluster_version,
                health,
            )| {
                MemberInfo {
                    node,
                    epoch,
                    generation,
                    heartbeat,
                    release: release.into(),
                    protocols,
                    schema,
                    cluster_version: cluster_version.into(),
                    health,
                }
            },
        )
}

fn request() -> impl Strategy<Value = ForwardedRequest> {
    prop_oneof![
        small_bytes().prop_map(|key| ForwardedRequest::Get { key }),
        (small_bytes(), value_bytes(), vv()).prop_map(|(key, value, context)| {
            ForwardedRequest::Put {
                key,
                value,
                context,
            }
        }),
        (small_bytes(), vv()).prop_map(|(key, context)| ForwardedRequest::Delete { key, context }),
    ]
}

fn response() -> impl Strategy<Value = ForwardedResponse> {
    prop_oneof![
        (
            prop::collection::vec((dot(), prop::option::of(small_bytes())), 0..3),
            vv()
        )
            .prop_map(|(s, context)| ForwardedResponse::Read {
                siblings: s
                    .into_iter()
                    .map(|(dot, value)| Sibling { dot, value })
                    .collect(),
                context,
            }),
        Just(ForwardedResponse::Written),
        text().prop_map(|r| ForwardedResponse::Error(ClientError::Unavailable(r))),
        (any::<u8>(), any::<u8>()).prop_map(|(acks, needed)| ForwardedResponse::Error(
            ClientError::Timeout { acks, needed }
        )),
        Just(ForwardedResponse::Error(ClientError::Overloaded)),
        text().prop_map(|r| ForwardedResponse::Error(ClientError::Invalid(r))),
        text().prop_map(|r| ForwardedResponse::Error(ClientError::Refused(r))),
        text().prop_map(|cluster_version| ForwardedResponse::Finalized { cluster_version }),
        (
            text(),
            any::<u64>(),
            text(),
            any::<u16>(),
            any::<u32>(),
            text()
        )
            .prop_map(|(label, time, release, schema, epoch, reason)| {
                ForwardedResponse::BackedUp {
                    info: BackupInfo {
                        label,
                        time: Time(time),
                        release,
                        schema,
                        epoch,
                        reason,
                    },
                }
            }),
    ]
}

/// Every message variant, with arbitrary contents.
fn message() -> impl Strategy<Value = Message> {
    let keyed = prop::collection::vec((small_bytes(), any_key_state()), 0..3);
    prop_oneof![
        (node(), text(), range(), any::<u32>(), any::<u32>()).prop_map(
            |(node, release, protocols, epoch, your_epoch)| Message::Hello(Hello {
                node,
                release,
                protocols,
                epoch,
                your_epoch
            })
        ),
        (
            node(),
            text(),
            range(),
            any::<u32>(),
            any::<u16>(),
            any::<u32>()
        )
            .prop_map(|(node, release, protocols, epoch, protocol, your_epoch)| {
                Message::HelloAck(HelloAck {
                    node,
                    release,
                    protocols,
                    epoch,
                    protocol,
                    your_epoch,
                })
            }),
        (node(), text()).prop_map(|(node, reason)| Message::Refuse(Refuse { node, reason })),
        prop::collection::vec(member(), 0..3)
            .prop_map(|members| Message::Gossip(Gossip { members })),
        (any::<u64>(), small_bytes())
            .prop_map(|(req, key)| Message::ReplicaGet(ReplicaGet { req, key })),
        (any::<u64>(), small_bytes(), any_key_state()).prop_map(|(req, key, state)| {
            Message::ReplicaGetReply(ReplicaGetReply { req, key, state })
        }),
        (any::<u64>(), small_bytes(), any_key_state())
            .prop_map(|(req, key, state)| Message::ReplicaPut(ReplicaPut { req, key, state })),
        (any::<u64>(), small_bytes())
            .prop_map(|(req, key)| Message::ReplicaPutAck(ReplicaPutAck { req, key })),
        (small_bytes(), any_key_state())
            .prop_map(|(key, state)| Message::ReadRepair(ReadRepair { key, state })),
        (any::<u64>(), any::<u64>(), request()).prop_map(|(fwd, origin, request)| {
            Message::Forward(Forward {
                fwd,
                origin: RequestId(origin),
                request,
            })
        }),
        (any::<u64>(), response())
            .prop_map(|(fwd, response)| Message::ForwardReply(ForwardReply { fwd, response })),
        (any::<u16>(), prop::collection::vec(any::<u64>(), 0..8))
            .prop_map(|(partition, buckets)| Message::AeBuckets(AeBuckets { partition, buckets })),
        (
            any::<u16>(),
            prop::collection::vec(any::<u16>(), 0..8),
            prop::collection::vec((small_bytes(), any::<u64>()), 0..4)
        )
            .prop_map(|(partition, buckets, keys)| Message::AeKeys(AeKeys {
                partition,
                buckets,
                keys
            })),
        (
            any::<u16>(),
            any::<bool>(),
            prop::collection::vec((small_bytes(), prop::option::of(any_key_state())), 0..3)
        )
            .prop_map(|(partition, reply, states)| Message::AeSync(AeSync {
                partition,
                reply,
                states
            })),
        (small_bytes(), any::<u64>())
            .prop_map(|(key, digest)| Message::ReapQuery(ReapQuery { key, digest })),
        (small_bytes(), any::<u64>(), any::<bool>())
            .prop_map(|(key, digest, yes)| Message::ReapVote(ReapVote { key, digest, yes })),
        (small_bytes(), any::<u64>())
            .prop_map(|(key, digest)| Message::ReapCommit(ReapCommit { key, digest })),
        (any::<u64>(), keyed)
            .prop_map(|(batch, items)| Message::HintBatch(HintBatch { batch, items })),
        (any::<u64>(), prop::collection::vec(small_bytes(), 0..4))
            .prop_map(|(batch, keys)| Message::HintBatchAck(HintBatchAck { batch, keys })),
        (any::<u64>(), small_bytes())
            .prop_map(|(req, key)| Message::ReplicaDigest(ReplicaDigest { req, key })),
        (any::<u64>(), small_bytes(), any::<u64>()).prop_map(|(req, key, digest)| {
            Message::ReplicaDigestReply(ReplicaDigestReply { req, key, digest })
        }),
    ]
}

/// A valid envelope of an arbitrary message at a protocol that carries it.
fn envelope() -> impl Strategy<Value = (Message, u16, Vec<u8>)> {
    (message(), any::<prop::sample::Index>()).prop_map(|(m, i)| {
        let protocols: Vec<u16> = carrying_protocols(&m);
        let p = *i.get(&protocols);
        let bytes = wire::encode(p, &m).to_vec();
        (m, p, bytes)
    })
}

/// Every protocol version of the release table that carries `m`.
fn carrying_protocols(m: &Message) -> Vec<u16> {
    let mut ps: Vec<u16> = RELEASES
        .iter()
        .flat_map(|r| r.protocols.min..=r.protocols.max)
        .filter(|&p| p >= m.min_protocol())
        .collect();
    ps.sort_unstable();
    ps.dedup();
    ps
}

fn known(protocol: u16, message: Message) -> Result<Decoded, cairn_core::Error> {
    Ok(Decoded::Known { protocol, message })
}

// ---------------------------------------------------------------------------
// Wire
// ---------------------------------------------------------------------------

#[test]
fn the_message_generator_covers_every_type() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = message();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        use proptest::strategy::ValueTree;
        seen.insert(strategy.new_tree(&mut runner).unwrap().current().msg_type());
    }
    let all: std::collections::BTreeSet<u16> = MESSAGE_TYPES.iter().map(|t| t.0).collect();
    assert_eq!(seen, all);
}

/// What a release that speaks `speaks` must make of `m` sent at protocol `p`:
/// handshakes decode at any protocol; an envelope at a protocol outside the
/// range is refused; a type that no protocol in the range carries is one the
/// release would not know, so it is tolerated as unknown; a type sent at a
/// protocol below its minimum is refused; everything else decodes.
fn expected(p: u16, m: &Message, speaks: ProtocolRange) -> Option<Decoded> {
    let msg_type = m.msg_type();
    if is_handshake_type(msg_type) {
        return Some(Decoded::Known {
            protocol: p,
            message: m.clone(),
        });
    }
    if !speaks.contains(p) {
        return None;
    }
    if m.min_protocol() > speaks.max {
        return Some(Decoded::Unknown {
            protocol: p,
            msg_type,
        });
    }
    if p < m.min_protocol() {
        return None;
    }
    Some(Decoded::Known {
        protocol: p,
        message: m.clone(),
    })
}

fn assert_decodes_as(p: u16, m: &Message, speaks: ProtocolRange) -> Result<(), TestCaseError> {
    let got = wire::decode(&wire::encode(p, m), speaks, MAX);
    match expected(p, m, speaks) {
        Some(want) => prop_assert_eq!(
            got,
            Ok(want),
            "{} at protocol {} by {}",
            m.name(),
            p,
            speaks
        ),
        None => prop_assert!(
            got.is_err(),
            "{} at protocol {} accepted by {}: {:?}",
            m.name(),
            p,
            speaks,
            got
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every message round-trips at every protocol of every release that
    /// carries it; at every other protocol number (0 to one past the newest)
    /// and for every release, the decoder refuses or tolerates it as
    /// specified.
    /// The sizes the encoders reserve, computed from the fields, are the
    /// exact encoded sizes (a wrong size would cost a reallocation per
    /// message, never correctness).
    #[test]
    fn computed_sizes_are_exact(m in message(), s in any_key_state()) {
        prop_assert_eq!(m.body_size(), m.encode_body().len(), "{}", m.name());
        prop_assert_eq!(s.encoded_len(), postcard::to_allocvec(&s).unwrap().len());
        prop_assert_eq!(
            s.context().encoded_len(),
            postcard::to_allocvec(s.context()).unwrap().len()
        );
    }

    #[test]
    fn messages_round_trip_at_every_protocol_that_carries_them(m in message()) {
        let entry = MESSAGE_TYPES.iter().find(|t| t.0 == m.msg_type()).copied();
        prop_assert_eq!(entry, Some((m.msg_type(), m.name(), m.min_protocol())));
        prop_assert_eq!(Message::decode_body(m.msg_type(), &m.encode_body()), Ok(Some(m.clone())));
        let mut carried = 0;
        for release in RELEASES {
            let speaks = release.protocols;
            for p in speaks.min..=speaks.max {
                if p >= m.min_protocol() {
                    let got = wire::decode(&wire::encode(p, &m), speaks, MAX);
                    prop_assert_eq!(got, known(p, m.clone()), "release {} at protocol {}", release.version, p);
                    carried += 1;
                }
            }
        }
        prop_assert!(carried > 0, "no release carries {}", m.name());
        let newest = RELEASES.iter().map(|r| r.protocols.max).max().unwrap();
        for release in RELEASES {
            for p in 0..=newest + 1 {
                assert_decodes_as(p, &m, release.protocols)?;
            }
        }
    }

    /// Handshake messages are understood at any protocol number, so peers
    /// that share no protocol can still explain why.
    #[test]
    fn handshakes_decode_at_any_protocol(m in message(), p in any::<u16>(), speaks in range()) {
        if is_handshake_type(m.msg_type()) {
            prop_assert_eq!(wire::decode(&wire::encode(p, &m), speaks, MAX), known(p, m));
        }
    }

    /// An older release given a newer peer's messages. Where the two share a
    /// protocol, everything sent at the negotiated protocol is decoded or
    /// tolerated as specified; an envelope at a protocol the older release
    /// does not speak is refused; a type code it does not know is tolerated
    /// as `Unknown`. Nothing panics.
    #[test]
    fn older_decoders_refuse_or_tolerate_newer_messages(
        m in message(),
        unknown_type in any::<u16>().prop_filter("unknown type", |t| checks::min_protocol_of(*t).is_none()),
        body in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        for (i, old) in RELEASES.iter().enumerate() {
            for new in &RELEASES[i..] {
                let newest = new.protocols.max;
                assert_decodes_as(newest, &m, old.protocols)?;
                if !old.protocols.contains(newest) && !is_handshake_type(m.msg_type()) {
                    let got = wire::decode(&wire::encode(newest, &m), old.protocols, MAX);
                    prop_assert!(got.is_err());
                }
                let Ok(p) = negotiate(new.version, new.protocols, old.version, old.protocols) else {
                    // No common protocol: only the handshake gets through.
                    prop_assert!(old.protocols.max < new.protocols.min);
                    continue;
                };
                prop_assert!(old.protocols.contains(p) && new.protocols.contains(p));
                assert_decodes_as(p, &m, old.protocols)?;
                // A type code from the future, at a protocol the old release speaks.
                let future = wire::seal(p, unknown_type, &body);
                prop_assert_eq!(
                    wire::decode(&future, old.protocols, MAX),
                    Ok(Decoded::Unknown { protocol: p, msg_type: unknown_type })
                );
                if !old.protocols.contains(newest) {
                    let future = wire::seal(newest, unknown_type, &body);
                    prop_assert!(wire::decode(&future, old.protocols, MAX).is_err());
                }
            }
        }
    }

    /// Damage to a valid envelope: a flipped bit outside the protocol and type
    /// fields, a truncation or an extension is always an error; a flipped
    /// protocol or type bit yields an error or a consistent decode. Never a
    /// panic.
    #[test]
    fn damaged_envelopes_are_refused(
        (_m, _p, bytes) in envelope(),
        flip in any::<prop::sample::Index>(),
        bit in 0..8u8,
        cut in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let i = flip.index(bytes.len());
        let mut flipped = bytes.clone();
        flipped[i] ^= 1 << bit;
        for range in checks::protocol_ranges() {
            if (4..8).contains(&i) {
                checks::check_envelope(&flipped, range);
            } else {
                prop_assert!(wire::decode(&flipped, range, MAX).is_err(), "flip of bit {} at {} undetected", bit, i);
            }
            let truncated = &bytes[..cut.index(bytes.len())];
            prop_assert!(wire::decode(truncated, range, MAX).is_err());
            let mut extended = bytes.clone();
            extended.extend_from_slice(&tail);
            prop_assert!(wire::decode(&extended, range, MAX).is_err());
            if bytes.len() > wire::HEADER_LEN {
                let limit = bytes.len() - wire::HEADER_LEN - 1;
                prop_assert!(wire::decode(&bytes, range, limit).is_err(), "body limit ignored");
            }
        }
    }

    /// Arbitrary bytes, raw or sealed into a valid envelope of any type and
    /// protocol, never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic_the_wire_decoder(
        data in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        checks::check_wire_decode(&data);
    }

    /// Valid envelopes with random bytes appended to the body (and the
    /// checksum fixed up) reach the body decoders' trailing-data paths.
    #[test]
    fn bodies_with_junk_never_panic(
        (m, p, _bytes) in envelope(),
        tail in prop::collection::vec(any::<u8>(), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = m.encode_body();
        let keep = cut.index(body.len() + 1);
        body.truncate(keep);
        body.extend_from_slice(&tail);
        let sealed = wire::seal(p, m.msg_type(), &body);
        for range in checks::protocol_ranges() {
            checks::check_envelope(&sealed, range);
        }
    }
}

// ---------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------

fn meta() -> impl Strategy<Value = Meta> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        any::<u16>(),
        text(),
        any::<u64>(),
    )
        .prop_map(
            |(epoch, next_counter, clean, schema, cluster_version, generation)| Meta {
                epoch,
                next_counter,
                clean,
                schema,
                cluster_version,
                generation,
            },
        )
}

fn progress() -> impl Strategy<Value = Progress> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        prop::option::of(text()),
    )
        .prop_map(|(from, to, attempts, last_error)| Progress {
            from,
            to,
            attempts,
            last_error,
        })
}

fn schema() -> impl Strategy<Value = u16> {
    prop::sample::select(storage::SCHEMAS.collect::<Vec<u16>>())
}

/// Flips one bit at a time at each of `positions` (bit indices, reduced
/// modulo the value's length), and truncates at each of `cuts`; every damaged
/// value must be refused by `decode`.
fn assert_damage_detected<T: std::fmt::Debug>(
    value: &[u8],
    positions: &[prop::sample::Index],
    cuts: &[prop::sample::Index],
    decode: impl Fn(&[u8]) -> Result<T, cairn_core::Error>,
) -> Result<(), TestCaseError> {
    for pos in positions {
        let bit = pos.index(value.len() * 8);
        let mut damaged = value.to_vec();
        damaged[bit / 8] ^= 1 << (bit % 8);
        let got = decode(&damaged);
        prop_assert!(
            got.is_err(),
            "flip of bit {} of {} undetected: {:?}",
            bit,
            checks::hex(value),
            got
        );
    }
    for cut in cuts {
        let n = cut.index(value.len());
        prop_assert!(
            decode(&value[..n]).is_err(),
            "truncation to {} bytes undetected",
            n
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Key states round-trip through every schema, bare and as data and hint
    /// records.
    #[test]
    fn key_states_round_trip_in_every_schema(
        state in key_state(),
        schema in schema(),
        partition in any::<u16>(),
        target in node(),
        user in small_bytes(),
    ) {
        let value = storage::encode_state(schema, TEST_KEY, &state);
        prop_assert_eq!(storage::decode_state(TEST_KEY, &value), Ok(state.clone()));
        let key = storage::data_key(schema, partition, &user);
        prop_assert_eq!(storage::key_schema(&key), Some(schema));
        let value = storage::encode_state(schema, &key, &state);
        prop_assert_eq!(
            storage::decode_record(&key, &value),
            Ok(Record::Data { schema, key: user.clone(), state: state.clone() })
        );
        // The same value under any other key is a misdirected write.
        prop_assert!(storage::decode_record(&storage::data_key(schema, partition, b"elsewhere"), &value).is_err());
        let key = storage::hint_key(schema, target, &user);
        prop_assert_eq!(storage::key_schema(&key), Some(schema));
        prop_assert!(storage::decode_record(&key, &value).is_err());
        let value = storage::encode_state(schema, &key, &state);
        prop_assert_eq!(
            storage::decode_record(&key, &value),
            Ok(Record::Hint { schema, target, key: user, state })
        );
    }

    #[test]
    fn metadata_and_progress_round_trip(m in meta(), p in progress()) {
        prop_assert_eq!(
            storage::decode_record(storage::META_KEY, &storage::encode_meta(&m)),
            Ok(Record::Meta(m))
        );
        prop_assert_eq!(
            storage::decode_record(storage::PROGRESS_KEY, &storage::encode_progress(&p)),
            Ok(Record::Progress(p))
        );
        prop_assert_eq!(
            storage::decode_record(storage::RESTORED_KEY, &storage::restored_marker()),
            Ok(Record::Restored)
        );
    }

    /// A state that breaks the representation invariants is refused on
    /// load, even with a valid checksum.
    #[test]
    fn malformed_states_are_refused_on_load(state in any_key_state(), schema in schema()) {
        let value = storage::encode_state(schema, TEST_KEY, &state);
        prop_assert_eq!(storage::decode_state(TEST_KEY, &value).is_ok(), state.is_well_formed());
    }

    /// Any single bit flip in a stored key state, or any truncation of it, is
    /// detected.
    #[test]
    fn damaged_key_states_are_detected(
        state in key_state(),
        schema in schema(),
        positions in prop::collection::vec(any::<prop::sample::Index>(), 64),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 8),
    ) {
        let value = storage::encode_state(schema, TEST_KEY, &state);
        assert_damage_detected(&value, &positions, &cuts, |v| storage::decode_state(TEST_KEY, v))?;
        let key = storage::data_key(schema, 3, b"k");
        let value = storage::encode_state(schema, &key, &state);
        assert_damage_detected(&value, &positions, &cuts, |v| storage::decode_record(&key, v))?;
    }

    /// The same for metadata and migration progress records.
    #[test]
    fn damaged_metadata_is_detected(
        m in meta(),
        p in progress(),
        positions in prop::collection::vec(any::<prop::sample::Index>(), 64),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 8),
    ) {
        let value = storage::encode_meta(&m);
        let meta_record = |v: &[u8]| storage::decode_record(storage::META_KEY, v);
        assert_damage_detected(&value, &positions, &cuts, meta_record)?;
        let value = storage::encode_progress(&p);
        let progress_record = |v: &[u8]| storage::decode_record(storage::PROGRESS_KEY, v);
        assert_damage_detected(&value, &positions, &cuts, progress_record)?;
    }

    /// Arbitrary keys and values never panic the record decoders.
    #[test]
    fn arbitrary_records_never_panic(data in prop::collection::vec(any::<u8>(), 0..160)) {
        checks::check_storage_decode(&data);
    }
}

fn tombstone_over_a_value() -> KeyState {
    let mut state = KeyState::new();
    let a = Actor {
        node: NodeId(1),
        epoch: 1,
    };
    state.apply_write(
        &VersionVector::new(),
        Dot {
            actor: a,
            counter: 1,
        },
        Some(Bytes::from_static(b"v")),
    );
    let ctx = state.context().clone();
    state.apply_write(
        &ctx,
        Dot {
            actor: a,
            counter: 2,
        },
        None,
    );
    state
}

/// Flips every bit of `value` in turn; returns the flips that `decode_state`
/// accepts: (bit, damaged value in hex, decoded state).
fn undetected_flips(value: &[u8]) -> Vec<(usize, String, KeyState)> {
    let mut undetected = Vec::new();
    for bit in 0..value.len() * 8 {
        let mut damaged = value.to_vec();
        damaged[bit / 8] ^= 1 << (bit % 8);
        if let Ok(s) = storage::decode_state(TEST_KEY, &damaged) {
            undetected.push((bit, checks::hex(&damaged), s));
        }
    }
    undetected
}

/// Every bit of small records, exhaustively.
#[test]
fn every_single_bit_flip_of_a_small_record_is_detected() {
    let state = tombstone_over_a_value();
    for schema in storage::SCHEMAS {
        let value = storage::encode_state(schema, TEST_KEY, &state);
        let undetected = undetected_flips(&value);
        assert!(
            undetected.is_empty(),
            "schema {schema}: undetected flips {undetected:?}"
        );
    }
    let meta = Meta {
        epoch: 1,
        next_counter: 2,
        clean: false,
        schema: 1,
        cluster_version: "0.1.0".into(),
        generation: 1,
    };
    let value = storage::encode_meta(&meta);
    for bit in 0..value.len() * 8 {
        let mut damaged = value.to_vec();
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(
            storage::decode_record(storage::META_KEY, &damaged).is_err(),
            "meta: flip of bit {bit} undetected"
        );
    }
}

/// Schemas 1, 2 and 3 frame the same bytes differently, so the schema field
/// must be under the checksum. Were it not, flipping bit 1 of a schema 3
/// value would read its codec byte as an empty sibling list and the rest as
/// a context: a well-formed state that lost its siblings yet still covers
/// their dots, so merging it elsewhere would delete them.
#[test]
fn stored_schema_field_is_covered_by_the_checksum() {
    let mut live = KeyState::new();
    let a = Actor {
        node: NodeId(1),
        epoch: 1,
    };
    live.apply_write(
        &VersionVector::new(),
        Dot {
            actor: a,
            counter: 1,
        },
        Some(Bytes::from_static(b"v")),
    );
    let mut report = Vec::new();
    for state in [live, tombstone_over_a_value()] {
        for schema in storage::SCHEMAS {
            let value = storage::encode_state(schema, TEST_KEY, &state);
            for (bit, damaged, decoded) in undetected_flips(&value) {
                if bit < 16 {
                    report.push(format!(
                        "schema {schema} value {} with bit {bit} flipped ({damaged}) decodes to {}state {decoded:?}",
                        checks::hex(&value),
                        if decoded == state { "the same " } else { "a different " },
                    ));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "undetected flips of the schema field:\n{}",
        report.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Client contexts
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn contexts_round_trip_on_their_key(ctx in vv(), key in small_bytes()) {
        let mac = checks::context_mac();
        let token = mac.issue(&key, &ctx);
        prop_assert_eq!(mac.verify(&key, token.as_bytes(), &Limits::default()), Ok(ctx));
    }

    /// Any other key, any other context key, any flipped bit, any cut: refused.
    #[test]
    fn altered_contexts_are_refused(
        ctx in vv(),
        key in small_bytes(),
        other in small_bytes(),
        bit in any::<usize>(),
        cut in any::<usize>(),
    ) {
        prop_assume!(!ctx.is_empty());
        let (mac, limits) = (checks::context_mac(), Limits::default());
        let token = mac.issue(&key, &ctx).as_bytes().to_vec();
        if other != key {
            prop_assert_eq!(mac.verify(&other, &token, &limits), Err(context::ContextError::Forged));
        }
        let stranger = ContextMac::new(&ContextKey::derive(b"another cluster"));
        prop_assert_eq!(stranger.verify(&key, &token, &limits), Err(context::ContextError::Forged));
        let mut flipped = token.clone();
        let at = bit % (token.len() * 8);
        flipped[at / 8] ^= 1 << (at % 8);
        prop_assert!(mac.verify(&key, &flipped, &limits).is_err());
        let cut = 1 + cut % (token.len() - 1);
        prop_assert!(mac.verify(&key, &token[..cut], &limits).is_err());
    }

    /// With a valid tag, a token is accepted exactly when its entries are
    /// strictly sorted and non-zero.
    #[test]
    fn unsorted_or_zero_contexts_are_refused(
        entries in prop::collection::vec((actor(), prop_oneof![Just(0u64), counter()]), 1..5),
    ) {
        let mac = checks::context_mac();
        let token = mac.seal(b"k", &postcard::to_allocvec(&entries).unwrap());
        let sorted = entries.windows(2).all(|w| w[0].0 < w[1].0);
        let well_formed = sorted && entries.iter().all(|e| e.1 > 0);
        let got = mac.verify(b"k", &token, &Limits::default());
        prop_assert_eq!(got.is_ok(), well_formed, "{:?}", got);
        if let Ok(ctx) = got {
            prop_assert_eq!(ctx.entries(), &entries[..]);
        }
    }

    #[test]
    fn arbitrary_context_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
        checks::check_context_decode(&data);
    }

    /// The same bytes with the format byte in front.
    #[test]
    fn arbitrary_tokens_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut token = vec![context::FORMAT];
        token.extend_from_slice(&data);
        checks::check_context_decode(&token);
    }
}

/// Forwarded requests and their replies keep the encoding client requests
/// and responses had before contexts were authenticated, so a release that
/// checks contexts and one that does not still forward writes to each other.
#[test]
fn forwarded_requests_and_replies_keep_their_encoding() {
    let ctx = VersionVector::from_entries([(
        Actor {
            node: NodeId(2),
            epoch: 1,
        },
        5,
    )]);
    let put = Message::Forward(Forward {
        fwd: 7,
        origin: RequestId(9),
        request: ForwardedRequest::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            context: ctx.clone(),
        },
    });
    // fwd, origin, variant 1 (Put), key, value, context {n2.e1: 5}.
    assert_eq!(put.encode_body(), [7, 9, 1, 1, b'k', 1, b'v', 1, 2, 1, 5]);
    let delete = Message::Forward(Forward {
        fwd: 7,
        origin: RequestId(9),
        request: ForwardedRequest::Delete {
            key: Bytes::from_static(b"k"),
            context: ctx,
        },
    });
    assert_eq!(delete.encode_body(), [7, 9, 2, 1, b'k', 1, 2, 1, 5]);
    let reply = |response| Message::ForwardReply(ForwardReply { fwd: 7, response }).encode_body();
    assert_eq!(reply(ForwardedResponse::Written), [7, 1]);
    // Error (4), Invalid (3), "x".
    assert_eq!(
        reply(ForwardedResponse::Error(ClientError::Invalid("x".into()))),
        [7, 4, 3, 1, b'x']
    );
    assert_eq!(
        reply(ForwardedResponse::Error(ClientError::Timeout {
            acks: 1,
            needed: 2
        })),
        [7, 4, 1, 1, 2]
    );
    // A refused context never travels as the variant older releases lack.
    assert_eq!(
        ForwardedResponse::from_response(cairn_core::Response::Error(ClientError::BadContext(
            "x".into()
        ))),
        ForwardedResponse::Error(ClientError::Invalid("bad context: x".into()))
    );
}

// ---------------------------------------------------------------------------
// Fuzz seeds
// ---------------------------------------------------------------------------

/// Regenerates the generated seeds under `fuzz/seeds/` from valid encodings
/// and a few malformed ones. Files with other names (inputs found by the
/// fuzzers) are left alone.
///
/// `cargo test -p cairn-core --test codecs -- --ignored write_fuzz_seeds`
#[test]
#[ignore = "writes files under fuzz/seeds; run by hand to refresh them"]
fn write_fuzz_seeds() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::path::Path;

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    };
    let mut runner = TestRunner::deterministic();

    // Wire: the smallest of a few hundred generated messages of each type, at
    // the lowest and highest protocol that carries it, plus damaged ones.
    let strategy = message();
    let mut smallest: BTreeMap<u16, Message> = BTreeMap::new();
    for _ in 0..3000 {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        let size = m.encode_body().len();
        let slot = smallest.entry(m.msg_type()).or_insert_with(|| m.clone());
        if size < slot.encode_body().len() {
            *slot = m;
        }
    }
    assert_eq!(smallest.len(), MESSAGE_TYPES.len());
    for m in smallest.values() {
        let ps = carrying_protocols(m);
        for p in [ps[0], ps[ps.len() - 1]] {
            let name = format!("{}-p{p}", m.name().to_lowercase());
            write("wire_decode", &name, &wire::encode(p, m));
        }
    }
    let hello = smallest[&1].clone();
    let valid = wire::encode(1, &hello).to_vec();
    write("wire_decode", "bad-empty", b"");
    write("wire_decode", "bad-short-header", &valid[..10]);
    let mut bad = valid.clone();
    bad[0] = b'X';
    write("wire_decode", "bad-magic", &bad);
    let mut bad = valid.clone();
    bad[12] ^= 1;
    write("wire_decode", "bad-checksum", &bad);
    write(
        "wire_decode",
        "bad-truncated-body",
        &valid[..valid.len() - 1],
    );
    write(
        "wire_decode",
        "unknown-type",
        &wire::seal(1, checks::UNKNOWN_TYPE, b"future"),
    );
    write(
        "wire_decode",
        "protocol-99",
        &wire::seal(99, 10, &smallest[&10].encode_body()),
    );
    let batch = &smallest[&40];
    write("wire_decode", "hintbatch-at-p1", &wire::encode(1, batch));
    let mut junk = smallest[&12].encode_body();
    junk.extend_from_slice(&[0xff; 5]);
    write(
        "wire_decode",
        "replicaput-trailing-junk",
        &wire::seal(1, 12, &junk),
    );

    // Storage: records of every kind and schema, then damaged ones.
    let mut states = Vec::new();
    for _ in 0..40 {
        states.push(key_state().new_tree(&mut runner).unwrap().current());
    }
    states.sort_by_key(|s| s.encoded_len());
    let small = states[states.len() / 2].clone();
    let large = {
        let mut s = small.clone();
        let a = Actor {
            node: NodeId(9),
            epoch: 1,
        };
        let ctx = s.context().clone();
        s.apply_write(
            &ctx,
            Dot {
                actor: a,
                counter: 1,
            },
            Some(Bytes::from(vec![b'z'; 400])),
        );
        s
    };
    let tombstone = {
        let mut s = KeyState::new();
        let a = Actor {
            node: NodeId(2),
            epoch: 5,
        };
        s.apply_write(
            &VersionVector::new(),
            Dot {
                actor: a,
                counter: 3,
            },
            None,
        );
        s
    };
    for schema in storage::SCHEMAS {
        let value = storage::encode_state(schema, TEST_KEY, &small);
        let key = storage::data_key(schema, 513, b"user");
        write(
            "storage_decode",
            &format!("data-s{schema}"),
            &checks::join_record(&key, &value),
        );
        let value = storage::encode_state(schema, TEST_KEY, &large);
        write(
            "storage_decode",
            &format!("data-large-s{schema}"),
            &checks::join_record(&key, &value),
        );
        let key = storage::hint_key(schema, NodeId(4), b"user");
        let value = storage::encode_state(schema, TEST_KEY, &tombstone);
        write(
            "storage_decode",
            &format!("hint-s{schema}"),
            &checks::join_record(&key, &value),
        );
        let mut flipped = storage::encode_state(schema, TEST_KEY, &large).to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x10;
        let key = storage::data_key(schema, 0, b"k");
        write(
            "storage_decode",
            &format!("bad-flip-s{schema}"),
            &checks::join_record(&key, &flipped),
        );
    }
    let meta = Meta {
        epoch: 3,
        next_counter: 17,
        clean: true,
        schema: 2,
        cluster_version: "0.2.0".into(),
        generation: 4,
    };
    write(
        "storage_decode",
        "meta",
        &checks::join_record(storage::META_KEY, &storage::encode_meta(&meta)),
    );
    let progress = Progress {
        from: 1,
        to: 2,
        attempts: 1,
        last_error: Some("disk full".into()),
    };
    write(
        "storage_decode",
        "progress",
        &checks::join_record(storage::PROGRESS_KEY, &storage::encode_progress(&progress)),
    );
    write(
        "storage_decode",
        "restored",
        &checks::join_record(storage::RESTORED_KEY, &storage::restored_marker()),
    );
    let value = storage::encode_state(1, TEST_KEY, &small);
    write(
        "storage_decode",
        "bad-truncated",
        &checks::join_record(&storage::data_key(1, 0, b"k"), &value[..value.len() - 2]),
    );
    write(
        "storage_decode",
        "bad-unknown-key",
        &checks::join_record(b"zz", &value),
    );
    write(
        "storage_decode",
        "bad-schema-9",
        &checks::join_record(&[b'd', 9, b'k'], &value),
    );
    let malformed = KeyState::from_parts(small.siblings().to_vec(), VersionVector::new());
    write(
        "storage_decode",
        "bad-uncovered-siblings",
        &checks::join_record(
            &storage::data_key(1, 0, b"k"),
            &storage::encode_state(1, TEST_KEY, &malformed),
        ),
    );

    // Contexts: tokens for the checks' user key under their context key.
    let a = |n: u32, e: u32| Actor {
        node: NodeId(n),
        epoch: e,
    };
    let mac = checks::context_mac();
    let key = checks::CONTEXT_USER_KEY;
    write("context_decode", "empty", b"");
    let ctx = VersionVector::from_entries([(a(1, 1), 4), (a(2, 1), 1), (a(2, 3), 9)]);
    let three = mac.issue(key, &ctx);
    write("context_decode", "three", three.as_bytes());
    let big = VersionVector::from_entries([(a(u32::MAX, u32::MAX), u64::MAX)]);
    write(
        "context_decode",
        "extremes",
        mac.issue(key, &big).as_bytes(),
    );
    let forged =
        VersionVector::from_entries([(a(2, 1), 1_000_000_000_000), (a(3, 1), 1_000_000_000_000)]);
    write(
        "context_decode",
        "bad-forged",
        context::with_tag(&forged, [0; context::TAG_LEN]).as_bytes(),
    );
    write(
        "context_decode",
        "bad-other-key",
        mac.issue(b"another key", &ctx).as_bytes(),
    );
    write(
        "context_decode",
        "bad-old-format",
        &context::legacy_encoding(&forged),
    );
    let unsorted = vec![(a(2, 1), 3u64), (a(1, 1), 5)];
    write(
        "context_decode",
        "bad-unsorted",
        &mac.seal(key, &postcard::to_allocvec(&unsorted).unwrap()),
    );
    let zero = vec![(a(1, 1), 0u64)];
    write(
        "context_decode",
        "bad-zero",
        &mac.seal(key, &postcard::to_allocvec(&zero).unwrap()),
    );
    let enc = three.as_bytes();
    write("context_decode", "bad-truncated", &enc[..enc.len() - 1]);
    write(
        "context_decode",
        "bad-huge-length",
        &mac.seal(key, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
    );
    let many = VersionVector::from_entries((1..=1100).map(|n| (a(n, 1), 1)));
    write(
        "context_decode",
        "bad-too-many-entries",
        mac.issue(key, &many).as_bytes(),
    );
    // Inputs the fuzzer found in the format before tags, sealed into tokens
    // so that their version vectors reach the decoder behind the tag.
    for name in ["found-overlong-varint", "found-trailing-bytes"] {
        let raw = std::fs::read(root.join("context_decode").join(name)).unwrap();
        write(
            "context_decode",
            &format!("{name}-sealed"),
            &mac.seal(key, &raw),
        );
    }

    // Histories of one key.
    use checks::Op;
    let w = |replica, read, delete| Op::Write {
        replica,
        read,
        delete,
        skip: 0,
    };
    let textbook = [
        w(0, None, false),
        Op::Merge { into: 1, from: 0 },
        Op::Read {
            replica: 0,
            also: None,
        },
        w(0, Some(0), false),
        w(1, Some(0), false),
        Op::Merge { into: 2, from: 0 },
        Op::Merge { into: 2, from: 1 },
        Op::Read {
            replica: 2,
            also: None,
        },
        w(2, None, false),
        w(2, Some(1), true),
        Op::Merge { into: 0, from: 2 },
        Op::Merge { into: 1, from: 0 },
    ];
    write("dvv_ops", "empty", &[]);
    write("dvv_ops", "textbook", &checks::encode_ops(3, &textbook));
    let crash = [
        w(0, None, false),
        w(0, None, false),
        Op::Read {
            replica: 0,
            also: None,
        },
        Op::Crash {
            replica: 0,
            restore: None,
        },
        w(0, Some(0), false),
        Op::Merge { into: 1, from: 0 },
        Op::Read {
            replica: 1,
            also: Some(0),
        },
        Op::Crash {
            replica: 1,
            restore: Some(1),
        },
        w(1, Some(1), true),
        Op::Merge { into: 0, from: 1 },
    ];
    write(
        "dvv_ops",
        "crash-and-restore",
        &checks::encode_ops(2, &crash),
    );
    let ops_strategy = prop::collection::vec(
        (0..4u8, 0..4u8, prop::option::of(0..8u8), any::<bool>()).prop_map(
            |(k, r, x, d)| match k {
                0 | 1 => Op::Write {
                    replica: r,
                    read: x,
                    delete: d && k == 1,
                    skip: k,
                },
                2 => Op::Merge {
                    into: r,
                    from: x.unwrap_or(0),
                },
                _ => Op::Read {
                    replica: r,
                    also: x.map(|i| i % 4),
                },
            },
        ),
        40..60,
    );
    for i in 0..3 {
        let ops = ops_strategy.new_tree(&mut runner).unwrap().current();
        write(
            "dvv_ops",
            &format!("random-{i}"),
            &checks::encode_ops(4, &ops),
        );
    }
}
