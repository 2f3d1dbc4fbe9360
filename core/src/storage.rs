//! On-disk record layout, one per schema version.
//!
//! A node's storage is a flat ordered key-value space. Record keys:
//! - `m`: the node's metadata ([`Meta`]), frozen format, readable by every
//!   release: epoch, dot counter, clean-shutdown flag, live schema, cluster
//!   version.
//! - `p`: progress of a schema migration ([`Progress`]), frozen format.
//! - `r`: written by an offline restore from backup, kept until the node has
//!   re-synced with its replicas ([`RESTORED_KEY`]).
//! - `d` + schema + …: a key's replicated state ([`KeyState`]).
//!   Schemas 1 and 2: `d | schema | user key`. Schema 3:
//!   `d | 3 | partition (u16 BE) | user key`, so one partition is one
//!   contiguous range of storage.
//! - `h` + schema + target node (u32 BE) + user key: a durable hint.
//!
//! Every schema lives in its own key namespace, so a migration writes the new
//! schema beside the old one and the metadata's schema field is the one atomic
//! switch between them; whatever belongs to a schema that is not live is
//! left-over from an interrupted or finished migration and is removed.
//!
//! Values:
//! - schema 1: `1 (u16 LE) | crc32c(body) (u32 LE) | body`;
//! - schemas 2 and 3: `schema (u16 LE) | crc32c(schema, rest) (u32 LE) | codec (u8) | payload`,
//!   codec 0 = raw postcard, codec 1 = zstd-compressed postcard.
//!
//! A record whose checksum or body does not decode is corrupt: it is reported
//! and treated as lost, never served.

use alloc::format;
use alloc::vec::Vec;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::dvv::{well_formed_parts, Dot, KeyState, VersionVector};
use crate::types::NodeId;
use crate::Error;

/// Every schema this build can read and write.
pub const SCHEMAS: core::ops::RangeInclusive<u16> = 1..=3;

pub const META_KEY: &[u8] = b"m";
pub const PROGRESS_KEY: &[u8] = b"p";
/// Present after an offline restore from backup until the node has re-synced:
/// it must learn its last epoch from its peers before issuing a dot, and
/// compare its data with every replica before answering reads. A restart
/// before the re-sync completes starts both over.
pub const RESTORED_KEY: &[u8] = b"r";
const DATA: u8 = b'd';
const HINT: u8 = b'h';

/// Payloads larger than this are compressed (schemas 2 and 3). Below it a
/// zstd frame saves a few bytes at best and costs a compression context per
/// record; the codec byte lets readers take either form, so the threshold
/// can change without a migration.
const COMPRESS_OVER: usize = 512;
/// Largest decompressed payload accepted: protects against corrupt input.
const MAX_PAYLOAD: usize = 64 << 20;

/// Node metadata, persisted before the node acts on it. Frozen format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The incarnation whose dots this node issues.
    pub epoch: u32,
    /// The next dot counter; meaningful only after a clean shutdown.
    pub next_counter: u64,
    /// True only between a completed clean shutdown and the next start.
    pub clean: bool,
    /// The schema of the live records.
    pub schema: u16,
    /// The active cluster version (a release version string).
    pub cluster_version: alloc::string::String,
    /// Starts so far: orders what gossip says about this node across restarts.
    pub generation: u64,
}

/// A migration in progress. Frozen format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub from: u16,
    pub to: u16,
    /// Attempts started so far, including the current one.
    pub attempts: u32,
    /// The last failure, if an attempt failed.
    pub last_error: Option<alloc::string::String>,
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Meta(Meta),
    Progress(Progress),
    Restored,
    Data {
        schema: u16,
        key: Bytes,
        state: KeyState,
    },
    Hint {
        schema: u16,
        target: NodeId,
        key: Bytes,
        state: KeyState,
    },
}

pub fn data_key(schema: u16, partition: u16, user_key: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(4 + user_key.len());
    k.push(DATA);
    k.push(schema as u8);
    if schema >= 3 {
        k.extend_from_slice(&partition.to_be_bytes());
    }
    k.extend_from_slice(user_key);
    Bytes::from(k)
}

pub fn hint_key(schema: u16, target: NodeId, user_key: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(6 + user_key.len());
    k.push(HINT);
    k.push(schema as u8);
    k.extend_from_slice(&target.0.to_be_bytes());
    k.extend_from_slice(user_key);
    Bytes::from(k)
}

/// The schema namespace a data or hint record key belongs to.
pub fn key_schema(key: &[u8]) -> Option<u16> {
    match key {
        [DATA | HINT, s, ..] => Some(*s as u16),
        _ => None,
    }
}

fn frame_v1(body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn frozen<T: Serialize>(value: &T) -> Bytes {
    frame_v1(&postcard::to_allocvec(value).expect("in-memory serialisation cannot fail"))
}

fn unframe_v1(bytes: &[u8]) -> Result<&[u8], Error> {
    if bytes.len() < 6 {
        return Err(Error::Storage(format!(
            "record of {} bytes is too short",
            bytes.len()
        )));
    }
    let crc = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let body = &bytes[6..];
    if crc32c::crc32c(body) != crc {
        return Err(Error::Storage("checksum mismatch".into()));
    }
    Ok(body)
}

fn decode_frozen<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() >= 2 && u16::from_le_bytes([bytes[0], bytes[1]]) != 1 {
        return Err(Error::Storage(
            "metadata record with an unknown frame".into(),
        ));
    }
    postcard::from_bytes(unframe_v1(bytes)?).map_err(|e| Error::Storage(format!("body: {e}")))
}

pub fn encode_meta(meta: &Meta) -> Bytes {
    frozen(meta)
}

pub fn encode_progress(p: &Progress) -> Bytes {
    frozen(p)
}

/// The value stored under [`RESTORED_KEY`].
pub fn restored_marker() -> Bytes {
    frame_v1(&[])
}

/// Encodes a key state in the given schema, to be stored under
/// `record_key`. The checksum covers the record key too, so a valid record
/// written under the wrong key (a misdirected write) is caught at load.
pub fn encode_state(schema: u16, record_key: &[u8], state: &KeyState) -> Bytes {
    let size = state.encoded_len();
    if schema <= 1 {
        // schema u16 | crc u32 | body
        let out = Vec::with_capacity(6 + size);
        let mut out = crate::wire::postcard_append(state, framed_header(out, 1));
        let crc = crc32c::crc32c_append(crc32c::crc32c(record_key), &out[6..]);
        out[2..6].copy_from_slice(&crc.to_le_bytes());
        return Bytes::from(out);
    }
    // schema u16 | crc u32 | codec u8 | payload
    let mut out = if size > COMPRESS_OVER {
        let body = postcard::to_allocvec(state).expect("in-memory serialisation cannot fail");
        match zstd::bulk::compress(&body, 3) {
            Ok(c) if c.len() < body.len() => {
                let mut out = framed_header(Vec::with_capacity(7 + c.len()), schema);
                out.push(1);
                out.extend_from_slice(&c);
                out
            }
            _ => {
                let mut out = framed_header(Vec::with_capacity(7 + body.len()), schema);
                out.push(0);
                out.extend_from_slice(&body);
                out
            }
        }
    } else {
        let mut out = framed_header(Vec::with_capacity(7 + size), schema);
        out.push(0);
        crate::wire::postcard_append(state, out)
    };
    let crc = checksum_v2(record_key, schema, &out[6..]);
    out[2..6].copy_from_slice(&crc.to_le_bytes());
    Bytes::from(out)
}

/// Starts a record: the schema and room for the checksum.
fn framed_header(mut out: Vec<u8>, schema: u16) -> Vec<u8> {
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out
}

/// Schemas 2 and up checksum the schema field too, so a damaged schema field
/// cannot pass for another schema.
fn checksum_v2(record_key: &[u8], schema: u16, rest: &[u8]) -> u32 {
    let c = crc32c::crc32c_append(crc32c::crc32c(record_key), &schema.to_le_bytes());
    crc32c::crc32c_append(c, rest)
}

/// Decodes a key's state stored under `record_key`, in any schema, checking
/// its checksum and invariants.
pub fn decode_state(record_key: &[u8], bytes: &[u8]) -> Result<KeyState, Error> {
    let body = state_body(record_key, bytes)?;
    let state: KeyState =
        postcard::from_bytes(&body).map_err(|e| Error::Storage(format!("body: {e}")))?;
    if !state.is_well_formed() {
        return Err(Error::Storage("key state violates its invariants".into()));
    }
    Ok(state)
}

/// The causal context of the key state stored under `record_key`: what
/// [`decode_state`] would return the context of, after the same checks
/// (it fails exactly when `decode_state` fails), without copying the
/// values out of the record.
pub fn decode_context(record_key: &[u8], bytes: &[u8]) -> Result<VersionVector, Error> {
    /// A [`Sibling`](crate::dvv::Sibling) as encoded, its value borrowed.
    #[derive(Deserialize)]
    struct SiblingView<'a> {
        dot: Dot,
        #[serde(borrow)]
        #[allow(dead_code)]
        value: Option<&'a [u8]>,
    }
    /// A [`KeyState`] as encoded, its values borrowed.
    #[derive(Deserialize)]
    struct StateView<'a> {
        #[serde(borrow)]
        siblings: Vec<SiblingView<'a>>,
        context: VersionVector,
    }
    let body = state_body(record_key, bytes)?;
    let state: StateView<'_> =
        postcard::from_bytes(&body).map_err(|e| Error::Storage(format!("body: {e}")))?;
    if !well_formed_parts(state.siblings.iter().map(|s| s.dot), &state.context) {
        return Err(Error::Storage("key state violates its invariants".into()));
    }
    Ok(state.context)
}

/// The postcard body of a key state stored under `record_key`, its
/// checksum checked and decompressed.
fn state_body<'a>(
    record_key: &[u8],
    bytes: &'a [u8],
) -> Result<alloc::borrow::Cow<'a, [u8]>, Error> {
    if bytes.len() < 6 {
        return Err(Error::Storage(format!(
            "record of {} bytes is too short",
            bytes.len()
        )));
    }
    let schema = u16::from_le_bytes([bytes[0], bytes[1]]);
    let crc = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let rest = &bytes[6..];
    let body: alloc::borrow::Cow<'_, [u8]> = match schema {
        1 => {
            if crc32c::crc32c_append(crc32c::crc32c(record_key), rest) != crc {
                return Err(Error::Storage("checksum mismatch".into()));
            }
            rest.into()
        }
        2 | 3 => {
            if checksum_v2(record_key, schema, rest) != crc {
                return Err(Error::Storage("checksum mismatch".into()));
            }
            match rest.split_first() {
                Some((0, payload)) => payload.into(),
                Some((1, payload)) => zstd::bulk::decompress(payload, MAX_PAYLOAD)
                    .map_err(|e| Error::Storage(format!("decompression: {e}")))?
                    .into(),
                Some((c, _)) => return Err(Error::Storage(format!("unknown codec {c}"))),
                None => return Err(Error::Storage("empty payload".into())),
            }
        }
        s => {
            return Err(Error::Storage(format!(
                "record written in schema {s}; this build reads schemas {}..={}",
                SCHEMAS.start(),
                SCHEMAS.end()
            )))
        }
    };
    if let Some(ks) = key_schema(record_key) {
        if ks != schema {
            return Err(Error::Storage(format!(
                "a schema {schema} value under a schema {ks} key"
            )));
        }
    }
    Ok(body)
}

/// Decodes any record by its key.
pub fn decode_record(key: &[u8], value: &[u8]) -> Result<Record, Error> {
    match key {
        META_KEY => Ok(Record::Meta(decode_frozen(value)?)),
        PROGRESS_KEY => Ok(Record::Progress(decode_frozen(value)?)),
        RESTORED_KEY => {
            if value.get(..2) != Some(&1u16.to_le_bytes()[..]) || !unframe_v1(value)?.is_empty() {
                return Err(Error::Storage("malformed restore marker".into()));
            }
            Ok(Record::Restored)
        }
        [DATA, s, rest @ ..] if SCHEMAS.contains(&(*s as u16)) => {
            let schema = *s as u16;
            let user = if schema >= 3 {
                rest.get(2..)
                    .ok_or_else(|| Error::Storage("schema 3 key without a partition".into()))?
            } else {
                rest
            };
            Ok(Record::Data {
                schema,
                key: Bytes::copy_from_slice(user),
                state: decode_state(key, value)?,
            })
        }
        [HINT, s, a, b, c, d, user @ ..] if SCHEMAS.contains(&(*s as u16)) => Ok(Record::Hint {
            schema: *s as u16,
            target: NodeId(u32::from_be_bytes([*a, *b, *c, *d])),
            key: Bytes::copy_from_slice(user),
            state: decode_state(key, value)?,
        }),
        _ => Err(Error::Storage(format!(
            "unknown record key {:02x?}",
            &key[..key.len().min(8)]
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dvv::{Actor, Dot, VersionVector};

    fn state(len: usize) -> KeyState {
        let mut s = KeyState::new();
        let d = Dot {
            actor: Actor {
                node: NodeId(2),
                epoch: 3,
            },
            counter: 9,
        };
        s.apply_write(
            &VersionVector::new(),
            d,
            Some(Bytes::from(alloc::vec![b'x'; len])),
        );
        s
    }

    #[test]
    fn decode_context_agrees_with_decode_state() {
        for schema in SCHEMAS {
            for len in [0, 1, 4000] {
                let s = state(len);
                let k = data_key(schema, 7, b"user");
                let good = encode_state(schema, &k, &s);
                assert_eq!(decode_context(&k, &good).unwrap(), *s.context());
                // Every single-byte corruption and truncation: both fail or
                // both give the same context.
                let mut tries: Vec<Vec<u8>> = Vec::new();
                for i in 0..good.len().min(64) {
                    for bit in [0x01u8, 0x80] {
                        let mut b = good.to_vec();
                        b[i] ^= bit;
                        tries.push(b);
                    }
                    tries.push(good[..i].to_vec());
                }
                for b in &tries {
                    assert_eq!(
                        decode_context(&k, b).ok(),
                        decode_state(&k, b).ok().map(|s| s.context().clone())
                    );
                }
            }
        }
    }

    #[test]
    fn records_round_trip_in_every_schema() {
        for schema in SCHEMAS {
            for len in [1, 4000] {
                let s = state(len);
                let k = data_key(schema, 7, b"user");
                assert_eq!(key_schema(&k), Some(schema));
                assert_eq!(
                    decode_record(&k, &encode_state(schema, &k, &s)).unwrap(),
                    Record::Data {
                        schema,
                        key: Bytes::from_static(b"user"),
                        state: s.clone()
                    }
                );
                let hk = hint_key(schema, NodeId(7), b"user");
                assert!(matches!(
                    decode_record(&hk, &encode_state(schema, &hk, &s)).unwrap(),
                    Record::Hint {
                        target: NodeId(7),
                        ..
                    }
                ));
            }
        }
        let m = Meta {
            epoch: 4,
            next_counter: 10,
            clean: true,
            schema: 2,
            cluster_version: "0.2.0".into(),
            generation: 3,
        };
        assert_eq!(
            decode_record(META_KEY, &encode_meta(&m)).unwrap(),
            Record::Meta(m)
        );
        assert_eq!(
            decode_record(RESTORED_KEY, &restored_marker()).unwrap(),
            Record::Restored
        );
    }

    #[test]
    fn compression_shrinks_large_values() {
        let s = state(4000);
        assert!(encode_state(2, b"k", &s).len() < encode_state(1, b"k", &s).len() / 4);
    }

    #[test]
    fn corruption_is_detected() {
        for schema in SCHEMAS {
            let key = data_key(schema, 0, b"k");
            let bytes = encode_state(schema, &key, &state(300));
            assert!(decode_record(&key, &bytes).is_ok());
            for i in 0..bytes.len() {
                let mut b = bytes.to_vec();
                b[i] ^= 0x40;
                assert!(
                    decode_record(&key, &b).is_err(),
                    "schema {schema}: flip at {i} undetected"
                );
            }
            assert!(decode_record(&key, &bytes[..bytes.len() - 1]).is_err());
            // A valid record under another key: a misdirected write.
            assert!(decode_record(&data_key(schema, 0, b"other"), &bytes).is_err());
            assert!(decode_record(&hint_key(schema, NodeId(1), b"k"), &bytes).is_err());
        }
        assert!(decode_record(b"zzz", &[0; 8]).is_err());
        assert!(decode_record(b"", &[]).is_err());
        assert!(decode_record(&[DATA, 9, 1], &encode_state(1, &[DATA, 9, 1], &state(1))).is_err());
        // A value of one schema under a key of another.
        let k1 = data_key(1, 0, b"k");
        let k2 = data_key(2, 0, b"k");
        assert!(decode_record(&k1, &encode_state(2, &k1, &state(1))).is_err());
        assert!(decode_record(&k2, &encode_state(1, &k2, &state(1))).is_err());
    }
}
