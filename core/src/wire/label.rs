//! [`Label`]: a version string of gossip (a member's release or cluster
//! version) that is copied and decoded without allocating.

use alloc::string::String;
use core::fmt;
use core::ops::Deref;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::version::RELEASES;

/// A string as gossip carries it: encoded exactly as a `String`, but the
/// version of a release this build knows (every version an honest member
/// sends, give or take releases newer than this one) is kept as that
/// release's `&'static str`, so copying a member's info or decoding it does
/// not allocate. Any other string is kept on the heap.
#[derive(Clone)]
pub struct Label(Repr);

#[derive(Clone)]
enum Repr {
    Known(&'static str),
    Other(String),
}

/// The version of a release this build knows that equals `s`, if any.
fn known(s: &str) -> Option<&'static str> {
    RELEASES.iter().map(|r| r.version).find(|v| *v == s)
}

impl Label {
    pub fn new(s: &str) -> Label {
        match known(s) {
            Some(v) => Label(Repr::Known(v)),
            None => Label(Repr::Other(String::from(s))),
        }
    }

    /// A label of a string that lives forever (never allocates).
    pub const fn from_static(s: &'static str) -> Label {
        Label(Repr::Known(s))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Known(s) => s,
            Repr::Other(s) => s,
        }
    }
}

impl Default for Label {
    fn default() -> Label {
        Label::new("")
    }
}

impl Deref for Label {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Label {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Label {
    fn from(s: &str) -> Label {
        Label::new(s)
    }
}

impl From<String> for Label {
    fn from(s: String) -> Label {
        match known(&s) {
            Some(v) => Label(Repr::Known(v)),
            None => Label(Repr::Other(s)),
        }
    }
}

impl From<&String> for Label {
    fn from(s: &String) -> Label {
        Label::new(s)
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        match l.0 {
            Repr::Known(s) => String::from(s),
            Repr::Other(s) => s,
        }
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Label) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Label {}

impl PartialEq<str> for Label {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Label {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Label {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Label> for str {
    fn eq(&self, other: &Label) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Label> for &str {
    fn eq(&self, other: &Label) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Label> for String {
    fn eq(&self, other: &Label) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialOrd for Label {
    fn partial_cmp(&self, other: &Label) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Label {
    fn cmp(&self, other: &Label) -> core::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl core::hash::Hash for Label {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

/// As a `String` shows.
impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

/// The same bytes as a `String`.
impl Serialize for Label {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Accepts exactly what a `String` accepts.
impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Label, D::Error> {
        struct LabelVisitor;
        impl Visitor<'_> for LabelVisitor {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
                Ok(Label::new(v))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Label, E> {
                Ok(Label::from(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Label, E> {
                match core::str::from_utf8(v) {
                    Ok(s) => Ok(Label::new(s)),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Bytes(v), &self)),
                }
            }
        }
        d.deserialize_string(LabelVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec::Vec;

    #[test]
    fn encodes_and_shows_like_a_string() {
        for s in ["", "0.2.0", "0.1.0", "9.9.9", &"x".repeat(300), "é∂"] {
            let l = Label::from(s);
            assert_eq!(l.as_str(), s);
            let as_string: Vec<u8> = postcard::to_allocvec(&String::from(s)).unwrap();
            assert_eq!(postcard::to_allocvec(&l).unwrap(), as_string);
            let back: Label = postcard::from_bytes(&as_string).unwrap();
            assert_eq!(back, s);
            assert_eq!(format!("{l:?}"), format!("{:?}", String::from(s)));
            assert_eq!(format!("{l}"), s);
        }
        let bad = [2u8, 0xff, 0xfe];
        assert_eq!(
            postcard::from_bytes::<Label>(&bad).is_err(),
            postcard::from_bytes::<String>(&bad).is_err()
        );
    }
}
