//! On-disk record layout.
//!
//! A node's storage is a flat ordered key-value space. Record keys:
//! - `m`: the node's metadata ([`Meta`]): epoch, dot counter, clean-shutdown flag.
//! - `d` + user key: a key's replicated state ([`KeyState`]).
//! - `h` + target node (4 bytes, big endian) + user key: a durable hint.
//!
//! Every stored value is `schema (u16 LE) | crc32c of body (u32 LE) | body`,
//! the body being postcard. A record whose checksum or body does not decode
//! is corrupt: it is reported and treated as lost, never served.

use alloc::format;
use alloc::vec::Vec;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::dvv::KeyState;
use crate::types::NodeId;
use crate::Error;

/// The schema this code writes.
pub const SCHEMA: u16 = 1;

pub const META_KEY: &[u8] = b"m";
const DATA: u8 = b'd';
const HINT: u8 = b'h';

/// Node metadata, persisted before the node acts on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The incarnation whose dots this node issues.
    pub epoch: u32,
    /// The next dot counter; meaningful only after a clean shutdown.
    pub next_counter: u64,
    /// True only between a completed clean shutdown and the next start.
    pub clean: bool,
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Meta(Meta),
    Data {
        key: Bytes,
        state: KeyState,
    },
    Hint {
        target: NodeId,
        key: Bytes,
        state: KeyState,
    },
}

pub fn data_key(user_key: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(1 + user_key.len());
    k.push(DATA);
    k.extend_from_slice(user_key);
    Bytes::from(k)
}

pub fn hint_key(target: NodeId, user_key: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(5 + user_key.len());
    k.push(HINT);
    k.extend_from_slice(&target.0.to_be_bytes());
    k.extend_from_slice(user_key);
    Bytes::from(k)
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    let body = postcard::to_allocvec(value).expect("in-memory serialisation cannot fail");
    let mut out = Vec::with_capacity(6 + body.len());
    out.extend_from_slice(&SCHEMA.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() < 6 {
        return Err(Error::Storage(format!(
            "record of {} bytes is too short",
            bytes.len()
        )));
    }
    let schema = u16::from_le_bytes([bytes[0], bytes[1]]);
    if schema != SCHEMA {
        return Err(Error::Storage(format!(
            "record written by schema {schema}, this release reads schema {SCHEMA}"
        )));
    }
    let crc = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let body = &bytes[6..];
    if crc32c::crc32c(body) != crc {
        return Err(Error::Storage("checksum mismatch".into()));
    }
    postcard::from_bytes(body).map_err(|e| Error::Storage(format!("body: {e}")))
}

pub fn encode_meta(meta: &Meta) -> Bytes {
    encode(meta)
}

pub fn encode_state(state: &KeyState) -> Bytes {
    encode(state)
}

/// Decodes a key's stored state, checking its invariants.
pub fn decode_state(bytes: &[u8]) -> Result<KeyState, Error> {
    let state: KeyState = decode(bytes)?;
    if !state.is_well_formed() {
        return Err(Error::Storage("key state violates its invariants".into()));
    }
    Ok(state)
}

/// Decodes any record by its key.
pub fn decode_record(key: &[u8], value: &[u8]) -> Result<Record, Error> {
    match key.first() {
        Some(b'm') if key == META_KEY => Ok(Record::Meta(decode(value)?)),
        Some(&DATA) => Ok(Record::Data {
            key: Bytes::copy_from_slice(&key[1..]),
            state: decode_state(value)?,
        }),
        Some(&HINT) if key.len() >= 5 => Ok(Record::Hint {
            target: NodeId(u32::from_be_bytes([key[1], key[2], key[3], key[4]])),
            key: Bytes::copy_from_slice(&key[5..]),
            state: decode_state(value)?,
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

    fn state() -> KeyState {
        let mut s = KeyState::new();
        let d = Dot {
            actor: Actor {
                node: NodeId(2),
                epoch: 3,
            },
            counter: 9,
        };
        s.apply_write(&VersionVector::new(), d, Some(Bytes::from_static(b"v")));
        s
    }

    #[test]
    fn records_round_trip() {
        let s = state();
        let k = data_key(b"user");
        assert_eq!(
            decode_record(&k, &encode_state(&s)).unwrap(),
            Record::Data {
                key: Bytes::from_static(b"user"),
                state: s.clone()
            }
        );
        let hk = hint_key(NodeId(7), b"user");
        assert!(matches!(
            decode_record(&hk, &encode_state(&s)).unwrap(),
            Record::Hint {
                target: NodeId(7),
                ..
            }
        ));
        let m = Meta {
            epoch: 4,
            next_counter: 10,
            clean: true,
        };
        assert_eq!(
            decode_record(META_KEY, &encode_meta(&m)).unwrap(),
            Record::Meta(m)
        );
    }

    #[test]
    fn corruption_is_detected() {
        let bytes = encode_state(&state());
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 0x40;
            assert!(
                decode_record(&data_key(b"k"), &b).is_err(),
                "flip at {i} undetected"
            );
        }
        assert!(decode_record(&data_key(b"k"), &bytes[..bytes.len() - 1]).is_err());
        assert!(decode_record(b"zzz", &bytes).is_err());
        assert!(decode_record(b"", &[]).is_err());
    }
}
