//! Keys: content digests and names.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::error::{Code, Error};

/// A content digest: the sha256 hash of a blob and its size in bytes.
///
/// `Digest` is `Copy` and carries the size, so routing wrappers (`SizePartition`, `Shard`)
/// decide where a blob lives without any I/O. Its text form is `{64 lowercase hex}-{size}`,
/// the form NativeLink and Bazel use in file names and URLs.
///
/// ```
/// use casstack::Digest;
///
/// let d = Digest::of(b"hello");
/// assert_eq!(d.size(), 5);
/// let text = d.to_string();
/// assert_eq!(text, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824-5");
/// assert_eq!(text.parse::<Digest>().unwrap(), d);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hash: [u8; 32],
    size: u64,
}

impl Digest {
    /// The digest of the empty blob. Every store reports it present with size 0, never stores
    /// it, and reads it as empty.
    ///
    /// ```
    /// assert_eq!(casstack::Digest::EMPTY, casstack::Digest::of(b""));
    /// ```
    pub const EMPTY: Digest = Digest {
        hash: [
            0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
            0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
            0x78, 0x52, 0xb8, 0x55,
        ],
        size: 0,
    };

    /// A digest from its parts. Nothing is checked: the hash is whatever the caller says.
    ///
    /// ```
    /// let d = casstack::Digest::new([7; 32], 10);
    /// assert_eq!(d.hash(), &[7; 32]);
    /// ```
    pub const fn new(hash: [u8; 32], size: u64) -> Self {
        Digest { hash, size }
    }

    /// The sha256 digest of `data`.
    ///
    /// ```
    /// assert_eq!(casstack::Digest::of(b"abc").size(), 3);
    /// ```
    pub fn of(data: &[u8]) -> Self {
        Digest {
            hash: Sha256::digest(data).into(),
            size: data.len() as u64,
        }
    }

    /// The 32 bytes of the sha256 hash.
    ///
    /// ```
    /// assert_eq!(casstack::Digest::EMPTY.hash()[0], 0xe3);
    /// ```
    pub const fn hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// The size of the blob in bytes.
    ///
    /// ```
    /// assert_eq!(casstack::Digest::of(b"12345").size(), 5);
    /// ```
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// True for the digest of the empty blob.
    ///
    /// ```
    /// assert!(casstack::Digest::of(b"").is_empty_blob());
    /// ```
    pub fn is_empty_blob(&self) -> bool {
        *self == Digest::EMPTY
    }

    /// The hash as 64 lowercase hex characters, without the size.
    ///
    /// ```
    /// assert!(casstack::Digest::EMPTY.hash_hex().starts_with("e3b0c442"));
    /// ```
    pub fn hash_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.hash {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0xf)] as char);
        }
        out
    }

    /// Parses a hash of 64 hex characters (either case) and a size.
    ///
    /// ```
    /// let d = casstack::Digest::EMPTY;
    /// assert_eq!(casstack::Digest::from_hex(&d.hash_hex(), 0).unwrap(), d);
    /// assert!(casstack::Digest::from_hex("xyz", 0).is_err());
    /// ```
    pub fn from_hex(hex: &str, size: u64) -> Result<Self, Error> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("a sha256 hash has 64 hex characters, got {}", bytes.len()),
            ));
        }
        let mut hash = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(Error::new(
                    Code::InvalidArgument,
                    format!("not a hex hash: {hex:?}"),
                ));
            };
            hash[i] = hi << 4 | lo;
        }
        Ok(Digest { hash, size })
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let Some((hash, size)) = s.split_once('-') else {
            return Err(Error::new(
                Code::InvalidArgument,
                format!("a digest is written {{hash}}-{{size}}, got {s:?}"),
            ));
        };
        let size = size.parse::<u64>().map_err(|_| {
            Error::new(
                Code::InvalidArgument,
                format!("digest size is not a number: {s:?}"),
            )
        })?;
        Digest::from_hex(hash, size)
    }
}

/// What a store is asked about: a content [`Digest`] or a name.
///
/// Names serve action-cache style entries whose key is not the hash of the value (Bazel's
/// `/ac/`, ccache). Cloning a name key is a reference-count bump. Digest-only wrappers
/// (`SizePartition`, `Verify`) reject names with [`Code::InvalidArgument`].
///
/// ```
/// use casstack::{Digest, Key};
///
/// let by_digest: Key = Digest::of(b"x").into();
/// let by_name: Key = "action/42".into();
/// assert!(by_digest.digest().is_some());
/// assert_eq!(by_name.name(), Some("action/42"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A content digest.
    Digest(Digest),
    /// A free-form name.
    Name(Arc<str>),
}

impl Key {
    /// The digest, if this is a digest key.
    ///
    /// ```
    /// let k = casstack::Key::from(casstack::Digest::EMPTY);
    /// assert_eq!(k.digest(), Some(casstack::Digest::EMPTY));
    /// ```
    pub fn digest(&self) -> Option<Digest> {
        match self {
            Key::Digest(d) => Some(*d),
            Key::Name(_) => None,
        }
    }

    /// The name, if this is a name key.
    ///
    /// ```
    /// assert_eq!(casstack::Key::from("a").name(), Some("a"));
    /// ```
    pub fn name(&self) -> Option<&str> {
        match self {
            Key::Digest(_) => None,
            Key::Name(n) => Some(n),
        }
    }

    /// True for the digest of the empty blob (never for a name, even an empty one).
    ///
    /// ```
    /// assert!(casstack::Key::from(casstack::Digest::EMPTY).is_empty_blob());
    /// assert!(!casstack::Key::from("").is_empty_blob());
    /// ```
    pub fn is_empty_blob(&self) -> bool {
        matches!(self, Key::Digest(d) if d.is_empty_blob())
    }

    /// The digest, or `InvalidArgument` naming the key: for stores that only take digests.
    ///
    /// ```
    /// assert!(casstack::Key::from("a").require_digest().is_err());
    /// ```
    pub fn require_digest(&self) -> Result<Digest, Error> {
        self.digest().ok_or_else(|| {
            Error::new(Code::InvalidArgument, "this store takes only digest keys")
                .with_key(self.clone())
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Digest(d) => d.fmt(f),
            Key::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Digest(d) => d.fmt(f),
            Key::Name(n) => write!(f, "Name({n:?})"),
        }
    }
}

impl From<Digest> for Key {
    fn from(d: Digest) -> Self {
        Key::Digest(d)
    }
}

impl From<&Digest> for Key {
    fn from(d: &Digest) -> Self {
        Key::Digest(*d)
    }
}

impl From<&str> for Key {
    fn from(n: &str) -> Self {
        Key::Name(n.into())
    }
}

impl From<String> for Key {
    fn from(n: String) -> Self {
        Key::Name(n.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_constant_is_sha256_of_nothing() {
        assert_eq!(Digest::EMPTY, Digest::of(b""));
        assert_eq!(
            Digest::EMPTY.to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855-0"
        );
    }

    #[test]
    fn parse_rejects_malformed_text() {
        for bad in [
            "",
            "abc",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855-x",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85-0",
            "g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855-0",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855--1",
        ] {
            let err = bad.parse::<Digest>().unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn parse_accepts_upper_case_and_round_trips() {
        let d = Digest::of(b"round trip");
        let upper = format!("{}-{}", d.hash_hex().to_uppercase(), d.size());
        assert_eq!(upper.parse::<Digest>().unwrap(), d);
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn names_and_digests_never_compare_equal() {
        let d = Digest::EMPTY;
        assert_ne!(Key::from(d), Key::from(d.to_string()));
    }
}
