//! The wire: a versioned envelope around typed message bodies.
//!
//! Envelope (16-byte header, little endian):
//! `magic "CAIR" | protocol u16 | message type u16 | body length u32 | crc32c(body) u32 | body`.
//! Bodies are postcard. Handshake messages ([`Hello`], [`HelloAck`],
//! [`Refuse`]) have a frozen body format and are accepted at any protocol
//! version, so peers of any release can always tell each other why they cannot
//! talk. Every other type is accepted only at a protocol the receiver speaks
//! and that carries the type. Unknown types decode to
//! [`Decoded::Unknown`]: counted and dropped, never a panic.

mod label;
mod messages;

pub use label::Label;
pub use messages::*;

use alloc::format;
use alloc::vec::Vec;
use bytes::Bytes;

use crate::version::ProtocolRange;
use crate::Error;

pub const MAGIC: [u8; 4] = *b"CAIR";
pub const HEADER_LEN: usize = 16;

/// A parsed envelope header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub protocol: u16,
    pub msg_type: u16,
    pub len: u32,
    pub crc: u32,
}

/// Wraps a body in an envelope.
pub fn seal(protocol: u16, msg_type: u16, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&protocol.to_le_bytes());
    out.extend_from_slice(&msg_type.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Parses and checks an envelope, returning its header and body.
pub fn open(bytes: &[u8], max_len: usize) -> Result<(Header, &[u8]), Error> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Envelope(format!(
            "{} bytes is shorter than a header",
            bytes.len()
        )));
    }
    if bytes[..4] != MAGIC {
        return Err(Error::Envelope(format!("bad magic {:02x?}", &bytes[..4])));
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let h = Header {
        protocol: u16_at(4),
        msg_type: u16_at(6),
        len: u32_at(8),
        crc: u32_at(12),
    };
    if h.len as usize > max_len {
        return Err(Error::Envelope(format!(
            "body of {} bytes exceeds the limit of {max_len}",
            h.len
        )));
    }
    let body = &bytes[HEADER_LEN..];
    if body.len() != h.len as usize {
        return Err(Error::Envelope(format!(
            "length field says {} but {} bytes follow",
            h.len,
            body.len()
        )));
    }
    if crc32c::crc32c(body) != h.crc {
        return Err(Error::Envelope("checksum mismatch".into()));
    }
    Ok((h, body))
}

/// Result of decoding a whole envelope.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    Known {
        protocol: u16,
        message: Message,
    },
    /// A well-formed envelope with a type this release does not know.
    Unknown {
        protocol: u16,
        msg_type: u16,
    },
}

/// Encodes a message at a protocol version: one exactly sized allocation,
/// the body serialised in place behind the header.
pub fn encode(protocol: u16, message: &Message) -> Bytes {
    let mut out = Vec::with_capacity(HEADER_LEN + message.body_size());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&protocol.to_le_bytes());
    out.extend_from_slice(&message.msg_type().to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    let mut out = message.encode_body_into(out);
    let body = &out[HEADER_LEN..];
    let (len, crc) = (body.len() as u32, crc32c::crc32c(body));
    out[8..12].copy_from_slice(&len.to_le_bytes());
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    Bytes::from(out)
}

/// A postcard flavor that appends to a `Vec` (one `extend_from_slice` per
/// run of bytes, no per-byte iterator plumbing).
pub(crate) struct AppendVec(pub Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec {
    type Output = Vec<u8>;

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Most runs are varints of a byte or three: pushing them costs less
        // than a call to memcpy.
        if data.len() <= 4 {
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Serialises `value` with postcard onto the end of `out` (callers reserve
/// the room, see [`postcard::experimental::serialized_size`]).
pub(crate) fn postcard_append<T: serde::Serialize + ?Sized>(value: &T, out: Vec<u8>) -> Vec<u8> {
    postcard::serialize_with_flavor(value, AppendVec(out))
        .expect("in-memory serialisation cannot fail")
}

/// Bytes postcard takes for `v` as a varint.
#[inline]
pub(crate) const fn varint_len(v: u64) -> usize {
    // 7 bits a byte; zero still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes postcard takes for a length-prefixed byte string of `len` bytes.
#[inline]
pub(crate) fn bytes_len(len: usize) -> usize {
    varint_len(len as u64) + len
}

/// Decodes an envelope received by a node that speaks `speaks`.
pub fn decode(bytes: &[u8], speaks: ProtocolRange, max_len: usize) -> Result<Decoded, Error> {
    let (h, body) = open(bytes, max_len)?;
    decode_opened(h, body, speaks)
}

/// Decodes the body of an envelope [`open`] already checked.
pub fn decode_opened(h: Header, body: &[u8], speaks: ProtocolRange) -> Result<Decoded, Error> {
    let handshake = is_handshake_type(h.msg_type);
    if !handshake && !speaks.contains(h.protocol) {
        return Err(Error::Envelope(format!(
            "protocol {} is outside the range {speaks} this release speaks",
            h.protocol
        )));
    }
    // A type newer than every protocol this release speaks is one it would
    // not know at all: tolerate it, like a real older binary.
    let newer = MESSAGE_TYPES
        .iter()
        .any(|&(t, _, min)| t == h.msg_type && min > speaks.max);
    if newer && !handshake {
        return Ok(Decoded::Unknown {
            protocol: h.protocol,
            msg_type: h.msg_type,
        });
    }
    match Message::decode_body(h.msg_type, body)? {
        None => Ok(Decoded::Unknown {
            protocol: h.protocol,
            msg_type: h.msg_type,
        }),
        Some(message) => {
            if !handshake && h.protocol < message.min_protocol() {
                return Err(Error::Envelope(format!(
                    "message type {} needs protocol {} but came at {}",
                    h.msg_type,
                    message.min_protocol(),
                    h.protocol
                )));
            }
            Ok(Decoded::Known {
                protocol: h.protocol,
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn hello() -> Message {
        Message::Hello(Hello {
            node: NodeId(3),
            release: "0.2.0".into(),
            protocols: ProtocolRange::new(1, 2),
            epoch: 7,
            your_epoch: 0,
        })
    }

    #[test]
    fn envelope_round_trips() {
        let m = hello();
        let bytes = encode(1, &m);
        assert_eq!(
            decode(&bytes, ProtocolRange::new(1, 2), 1 << 20).unwrap(),
            Decoded::Known {
                protocol: 1,
                message: m
            }
        );
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let bytes = encode(1, &hello());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], ProtocolRange::new(1, 2), 1 << 20).is_err());
        }
        for i in 0..bytes.len() {
            let mut b = bytes.to_vec();
            b[i] ^= 1;
            // A flipped protocol or type field still names a legal (or an
            // unknown, tolerated) envelope; anything else must be caught.
            if (4..8).contains(&i) {
                assert!(!matches!(
                    decode(&b, ProtocolRange::new(1, 2), 1 << 20),
                    Ok(Decoded::Known {
                        message: Message::Hello(_),
                        protocol: 1
                    })
                ));
                continue;
            }
            assert!(
                decode(&b, ProtocolRange::new(1, 2), 1 << 20).is_err(),
                "flip at {i}"
            );
        }
    }

    #[test]
    fn unknown_types_are_tolerated() {
        let bytes = seal(1, 999, b"whatever");
        assert_eq!(
            decode(&bytes, ProtocolRange::new(1, 1), 1 << 20).unwrap(),
            Decoded::Unknown {
                protocol: 1,
                msg_type: 999
            }
        );
    }

    #[test]
    fn protocol_outside_range_is_refused_naming_it() {
        let m = Message::ReadRepair(ReadRepair {
            key: Bytes::from_static(b"k"),
            state: crate::dvv::KeyState::new(),
        });
        let bytes = encode(3, &m);
        let err = decode(&bytes, ProtocolRange::new(1, 2), 1 << 20).unwrap_err();
        assert!(format!("{err}").contains("[1..=2]"));
    }

    #[test]
    fn new_types_need_their_protocol() {
        let m = Message::HintBatch(HintBatch {
            batch: 1,
            items: Vec::new(),
        });
        let bytes = encode(1, &m);
        assert!(decode(&bytes, ProtocolRange::new(1, 2), 1 << 20).is_err());
        let bytes = encode(2, &m);
        assert!(decode(&bytes, ProtocolRange::new(1, 2), 1 << 20).is_ok());
        // A release that only speaks protocol 1 refuses the envelope outright,
        // and would not know the type even at its own protocol.
        assert!(decode(&bytes, ProtocolRange::new(1, 1), 1 << 20).is_err());
        let bytes = encode(1, &m);
        assert!(matches!(
            decode(&bytes, ProtocolRange::new(1, 1), 1 << 20),
            Ok(Decoded::Unknown { msg_type: 40, .. })
        ));
    }
}
