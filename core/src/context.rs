//! Client causal contexts: authenticated, key-bound, bounded tokens.
//!
//! A read hands its client the causal context of what it returned; a write
//! that passes it back supersedes exactly that. A client could otherwise
//! claim to have seen versions it never saw (a context with huge counters
//! makes every later write of those actors look already seen, so replicas
//! drop them), or make a key's context grow without bound. So a context
//! leaves a node only as a token that the cluster can check:
//!
//! ```text
//! token = FORMAT (1 byte) | version vector (postcard) | tag (TAG_LEN bytes)
//! tag   = HMAC-SHA256(context key, FORMAT | len(user key) as u32 LE | user key | version vector)[..TAG_LEN]
//! ```
//!
//! The tag binds the token to the key it was read from, so a context of one
//! key replayed on another is refused like a forged one. The context key is
//! the same on every member (the node derives it from the cluster secret,
//! see [`ContextKey::derive`]), so a context read through one node is valid
//! on all of them, and stays valid for as long as the key does: a write
//! with a context read long ago is a normal write superseding what it saw.
//!
//! The empty context ("saw nothing", a blind write) is the empty token: it
//! claims nothing, so it needs no tag. Every other token is checked in this
//! order, and the first problem found is the error: its length against
//! [`Limits::max_context_len`], the format byte, the structure of the
//! version vector (truncated, trailing bytes, unsorted or zero entries), its
//! entry count against [`Limits::max_context_entries`], then the tag.
//! Nothing here panics on any input.
//!
//! [`Limits::max_context_len`]: crate::config::Limits::max_context_len
//! [`Limits::max_context_entries`]: crate::config::Limits::max_context_entries

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::api::Context;
use crate::config::Limits;
use crate::dvv::VersionVector;
use crate::wire::{postcard_append, varint_len};

type HmacSha256 = Hmac<Sha256>;

/// The first byte of every non-empty token this release issues. Contexts of
/// releases before authentication started with the entry count of their
/// version vector, which is never this byte for fewer than 128 entries.
pub const FORMAT: u8 = 0xC1;

/// Bytes of the tag at the end of a token (HMAC-SHA256 truncated).
pub const TAG_LEN: usize = 16;

/// The most bytes one version-vector entry takes (node and epoch as u32
/// varints, the counter as a u64 varint).
const MAX_ENTRY_LEN: usize = 5 + 5 + 10;

/// The longest token a context of `entries` entries can need.
pub const fn max_token_len(entries: usize) -> usize {
    1 + varint_len(entries as u64) + entries * MAX_ENTRY_LEN + TAG_LEN
}

/// The secret that authenticates contexts: the same on every member of a
/// cluster. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ContextKey([u8; 32]);

impl ContextKey {
    /// What [`ContextKey::derive`] puts before nothing: the key is
    /// HMAC-SHA256(secret, this label), so the cluster secret itself (which
    /// also authenticates peers) never keys context tags directly.
    pub const LABEL: &'static [u8] = b"cairn client context key v1";

    pub const fn from_bytes(bytes: [u8; 32]) -> ContextKey {
        ContextKey(bytes)
    }

    /// The context key of a cluster whose members share `secret`.
    pub fn derive(secret: &[u8]) -> ContextKey {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(Self::LABEL);
        ContextKey(mac.finalize().into_bytes().into())
    }
}

impl core::fmt::Debug for ContextKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ContextKey(..)")
    }
}

/// Why a client's context was refused. The message says what is wrong with
/// it and what the client can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextError {
    /// More bytes than [`Limits::max_context_len`](crate::config::Limits).
    TooLong { len: usize, max: usize },
    /// A first byte other than [`FORMAT`]: a context of an older release
    /// (which did not authenticate contexts), or not a context at all.
    UnknownFormat(u8),
    /// The bytes after the format byte do not hold one well-formed version
    /// vector and a tag: truncated, damaged or padded.
    Malformed(String),
    /// More entries than [`Limits::max_context_entries`](crate::config::Limits).
    TooManyEntries { entries: usize, max: usize },
    /// Well formed, but the tag does not match: issued for another key,
    /// altered, or not issued by this cluster.
    Forged,
}

impl core::fmt::Display for ContextError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ContextError::TooLong { len, max } => write!(
                f,
                "oversized: {len} bytes, more than the limit of {max}"
            ),
            ContextError::UnknownFormat(b) => write!(
                f,
                "unknown format {b:#04x} (contexts now start with {FORMAT:#04x}): a context from an older release, which did not authenticate contexts, or not a context at all; read the key again for a current one"
            ),
            ContextError::Malformed(why) => write!(
                f,
                "malformed: {why}; pass back the context exactly as a read returned it"
            ),
            ContextError::TooManyEntries { entries, max } => write!(
                f,
                "oversized: {entries} entries, more than the limit of {max}"
            ),
            ContextError::Forged => f.write_str(
                "its tag does not match this key: it was read from another key, altered, or not issued by this cluster",
            ),
        }
    }
}

/// Issues and verifies tokens with one context key (keyed once, then
/// cloned per token).
#[derive(Clone)]
pub struct ContextMac {
    mac: HmacSha256,
}

impl core::fmt::Debug for ContextMac {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ContextMac(..)")
    }
}

impl ContextMac {
    pub fn new(key: &ContextKey) -> ContextMac {
        ContextMac {
            mac: HmacSha256::new_from_slice(&key.0).expect("HMAC takes keys of any length"),
        }
    }

    fn keyed(&self, user_key: &[u8], vv: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(&[FORMAT]);
        mac.update(&(user_key.len() as u32).to_le_bytes());
        mac.update(user_key);
        mac.update(vv);
        mac
    }

    fn tag(&self, user_key: &[u8], vv: &[u8]) -> [u8; TAG_LEN] {
        let full = self.keyed(user_key, vv).finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// The token for `vv` read from `user_key` (the empty token for the
    /// empty vector).
    pub fn issue(&self, user_key: &[u8], vv: &VersionVector) -> Context {
        if vv.is_empty() {
            return Context::new();
        }
        // What `seal` builds, encoded in place: no separate body buffer.
        let mut out = Vec::with_capacity(1 + vv.encoded_len() + TAG_LEN);
        out.push(FORMAT);
        let mut out = postcard_append(vv, out);
        let tag = self.tag(user_key, &out[1..]);
        out.extend_from_slice(&tag);
        Context::from(out)
    }

    /// A token of `body` (whatever its bytes) for `user_key`, with a valid
    /// tag. [`ContextMac::issue`] seals encoded version vectors; tests and
    /// fuzzing seal arbitrary bytes to reach the checks behind the tag.
    pub fn seal(&self, user_key: &[u8], body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + body.len() + TAG_LEN);
        out.push(FORMAT);
        out.extend_from_slice(body);
        out.extend_from_slice(&self.tag(user_key, body));
        out
    }

    /// The version vector of a client's token for `user_key`, or why it is
    /// refused. Never panics.
    pub fn verify(
        &self,
        user_key: &[u8],
        token: &[u8],
        limits: &Limits,
    ) -> Result<VersionVector, ContextError> {
        if token.is_empty() {
            return Ok(VersionVector::new());
        }
        let vv = inspect(token, limits)?;
        let body = &token[1..token.len() - TAG_LEN];
        let tag = &token[token.len() - TAG_LEN..];
        // Constant time: the tag is a credential.
        self.keyed(user_key, body)
            .verify_truncated_left(tag)
            .map_err(|_| ContextError::Forged)?;
        Ok(vv)
    }
}

/// Checks everything about a token except its tag, and decodes it. For
/// diagnostics and fuzzing only: what it returns is not authenticated.
pub fn inspect(token: &[u8], limits: &Limits) -> Result<VersionVector, ContextError> {
    if token.is_empty() {
        return Ok(VersionVector::new());
    }
    if token.len() > limits.max_context_len {
        return Err(ContextError::TooLong {
            len: token.len(),
            max: limits.max_context_len,
        });
    }
    if token[0] != FORMAT {
        return Err(ContextError::UnknownFormat(token[0]));
    }
    if token.len() < 1 + TAG_LEN + 1 {
        return Err(ContextError::Malformed(format!(
            "truncated: {} bytes, too short for a version vector and a {TAG_LEN}-byte tag",
            token.len()
        )));
    }
    let body = &token[1..token.len() - TAG_LEN];
    let (vv, rest) = postcard::take_from_bytes::<VersionVector>(body).map_err(|e| {
        ContextError::Malformed(match e {
            postcard::Error::DeserializeUnexpectedEnd => "truncated".into(),
            e => format!("{e}"),
        })
    })?;
    if !rest.is_empty() {
        return Err(ContextError::Malformed(format!(
            "{} bytes more than a version vector and a tag",
            rest.len()
        )));
    }
    if !vv.is_well_formed() {
        return Err(ContextError::Malformed(
            "version vector entries not sorted or zero".into(),
        ));
    }
    if vv.entries().len() > limits.max_context_entries {
        return Err(ContextError::TooManyEntries {
            entries: vv.entries().len(),
            max: limits.max_context_entries,
        });
    }
    Ok(vv)
}

/// A token for `vv` with an arbitrary `tag`, as a forger would build it.
/// For tests of the refusal; a node never issues one.
pub fn with_tag(vv: &VersionVector, tag: [u8; TAG_LEN]) -> Context {
    let mut out = Vec::with_capacity(1 + vv.encoded_len() + TAG_LEN);
    out.push(FORMAT);
    let mut out = postcard_append(vv, out);
    out.extend_from_slice(&tag);
    Context::from(out)
}

/// How releases before authentication encoded a context: the bare version
/// vector. Such contexts are refused ([`ContextError::UnknownFormat`], or
/// [`ContextError::Malformed`] in the rare case their first byte is
/// [`FORMAT`]). For tests of the refusal.
pub fn legacy_encoding(vv: &VersionVector) -> Vec<u8> {
    postcard::to_allocvec(vv).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dvv::Actor;
    use crate::types::NodeId;

    fn vv(entries: &[(u32, u32, u64)]) -> VersionVector {
        VersionVector::from_entries(entries.iter().map(|&(n, e, c)| {
            (
                Actor {
                    node: NodeId(n),
                    epoch: e,
                },
                c,
            )
        }))
    }

    fn mac() -> ContextMac {
        ContextMac::new(&ContextKey::derive(b"a cluster secret of some length"))
    }

    #[test]
    fn issued_contexts_verify_on_their_key_only() {
        let (m, l) = (mac(), Limits::default());
        let ctx = vv(&[(1, 1, 4), (2, 3, 9)]);
        let token = m.issue(b"a", &ctx);
        assert_eq!(token.as_bytes()[0], FORMAT);
        assert_eq!(m.verify(b"a", token.as_bytes(), &l), Ok(ctx.clone()));
        assert_eq!(
            m.verify(b"b", token.as_bytes(), &l),
            Err(ContextError::Forged)
        );
        let other = ContextMac::new(&ContextKey::derive(b"another cluster's secret"));
        assert_eq!(
            other.verify(b"a", token.as_bytes(), &l),
            Err(ContextError::Forged)
        );
        // The empty context is the empty token, and needs no tag.
        assert!(m.issue(b"a", &VersionVector::new()).is_empty());
        assert_eq!(m.verify(b"a", b"", &l), Ok(VersionVector::new()));
    }

    #[test]
    fn issue_seals_the_encoded_vector() {
        let m = mac();
        let ctx = vv(&[(1, 1, 4), (2, 3, 9), (3, 200, 1 << 40)]);
        let body = postcard::to_allocvec(&ctx).unwrap();
        assert_eq!(m.issue(b"k", &ctx).as_bytes(), &m.seal(b"k", &body)[..]);
    }

    #[test]
    fn forged_truncated_old_and_oversized_contexts_are_refused() {
        let (m, l) = (mac(), Limits::default());
        let forged = vv(&[(2, 1, 1_000_000_000_000), (3, 1, 1_000_000_000_000)]);
        let token = with_tag(&forged, [0; TAG_LEN]);
        assert_eq!(
            m.verify(b"k", token.as_bytes(), &l),
            Err(ContextError::Forged)
        );
        // A valid token with one bit of its vector flipped.
        let good = m.issue(b"k", &vv(&[(1, 1, 4)]));
        let mut bent = good.as_bytes().to_vec();
        bent[3] ^= 1;
        assert!(m.verify(b"k", &bent, &l).is_err());
        for cut in 1..good.as_bytes().len() {
            let e = m.verify(b"k", &good.as_bytes()[..cut], &l).unwrap_err();
            assert!(matches!(e, ContextError::Malformed(_)), "cut to {cut}: {e}");
        }
        let old = legacy_encoding(&forged);
        assert_eq!(
            m.verify(b"k", &old, &l),
            Err(ContextError::UnknownFormat(2))
        );
        let many = VersionVector::from_entries((0..2000u32).map(|n| {
            (
                Actor {
                    node: NodeId(n),
                    epoch: 1,
                },
                1,
            )
        }));
        let token = m.issue(b"k", &many);
        assert!(matches!(
            m.verify(b"k", token.as_bytes(), &l),
            Err(ContextError::TooManyEntries { .. })
        ));
        let tiny = Limits {
            max_context_len: 20,
            ..Limits::default()
        };
        assert!(matches!(
            m.verify(b"k", token.as_bytes(), &tiny),
            Err(ContextError::TooLong { .. })
        ));
        let mut padded = good.as_bytes().to_vec();
        padded.insert(padded.len() - TAG_LEN, 0);
        assert!(matches!(
            m.verify(b"k", &padded, &l),
            Err(ContextError::Malformed(_))
        ));
    }

    #[test]
    fn the_bound_fits_the_largest_entries() {
        let worst = VersionVector::from_entries((0..50u32).map(|i| {
            (
                Actor {
                    node: NodeId(u32::MAX - i),
                    epoch: u32::MAX,
                },
                u64::MAX,
            )
        }));
        let token = mac().issue(b"k", &worst);
        assert_eq!(token.as_bytes().len(), max_token_len(50));
        assert!(
            max_token_len(Limits::default().max_context_entries)
                <= Limits::default().max_context_len
        );
    }

    #[test]
    fn keys_do_not_show_in_debug_output() {
        let k = ContextKey::from_bytes([0xAB; 32]);
        assert_eq!(alloc::format!("{k:?}"), "ContextKey(..)");
    }
}
