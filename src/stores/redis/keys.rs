//! How keys are spelled in Redis: final keys, temporary upload keys (same cluster slot), and
//! decoding keyspace-event payloads back into [`Key`]s.

use std::fmt::Write as _;

use crate::error::{Code, Error, Result};
use crate::key::{Digest, Key};

/// Every temporary key ends with this marker and 32 hex digits.
const TEMP_MARKER: &str = ":tmp:";
const TEMP_ID_LEN: usize = 32;

/// `prefix` + the key: a digest as `{hash}-{size}`, a name as it is (NativeLink's encoding).
///
/// A final key that ends like a temporary key is refused, so no key ever aliases an upload in
/// progress.
pub(crate) fn final_key(prefix: &str, key: &Key) -> Result<String> {
    let mut out = String::with_capacity(prefix.len() + 80);
    out.push_str(prefix);
    match key {
        Key::Digest(d) => {
            let _ = write!(out, "{d}");
        }
        Key::Name(n) => out.push_str(n),
    }
    if is_temp_key(out.as_bytes()) {
        return Err(Error::new(
            Code::InvalidArgument,
            "names ending in `:tmp:` and 32 hex digits are reserved for uploads in progress",
        )
        .with_key(key.clone()));
    }
    Ok(out)
}

/// The key an upload of `final_key` stages into, with a fresh random id. It hashes to the
/// same cluster slot as `final_key` whenever Redis' hash-tag rules allow it (always, unless
/// the final key holds a `}` without forming a tag).
pub(crate) fn temp_key(final_key: &str) -> String {
    let id = fastrand::u128(..);
    let mut out = String::with_capacity(final_key.len() + 2 + TEMP_MARKER.len() + TEMP_ID_LEN);
    if hash_tag(final_key.as_bytes()).len() < final_key.len() || final_key.contains('}') {
        // The final key has its own tag (kept, since it comes first), or cannot be tagged.
        out.push_str(final_key);
    } else {
        out.push('{');
        out.push_str(final_key);
        out.push('}');
    }
    let _ = write!(out, "{TEMP_MARKER}{id:032x}");
    out
}

/// True for keys made by [`temp_key`].
pub(crate) fn is_temp_key(key: &[u8]) -> bool {
    let Some(split) = key.len().checked_sub(TEMP_MARKER.len() + TEMP_ID_LEN) else {
        return false;
    };
    let (head, id) = key[split..].split_at(TEMP_MARKER.len());
    head == TEMP_MARKER.as_bytes()
        && id
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The part of `key` that Redis Cluster hashes to pick a slot: the content of the first
/// `{...}` if it is not empty, else the whole key.
pub(crate) fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&c| c == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&c| c == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The keys a removal event for Redis key `raw` concerns: none for keys outside `prefix` and
/// for temporary keys; a digest-shaped name is reported both as the digest and as the name,
/// since the two spell the same Redis key.
pub(crate) fn decode(prefix: &str, raw: &[u8]) -> Vec<Key> {
    if is_temp_key(raw) {
        return Vec::new();
    }
    let Some(rest) = raw.strip_prefix(prefix.as_bytes()) else {
        return Vec::new();
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return Vec::new();
    };
    let mut keys = Vec::with_capacity(2);
    if let Ok(d) = rest.parse::<Digest>() {
        keys.push(Key::Digest(d));
    }
    keys.push(Key::from(rest));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_keys_follow_nativelinks_encoding() {
        let d = Digest::of(b"abc");
        assert_eq!(final_key("p:", &d.into()).unwrap(), format!("p:{d}"));
        assert_eq!(final_key("", &"ac/1".into()).unwrap(), "ac/1");
        let reserved = Key::from(format!("x{TEMP_MARKER}{:032x}", 7u128));
        let err = final_key("", &reserved).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn temp_keys_share_the_final_keys_slot() {
        for final_key in [
            "cas:abc-3",
            "a{b}c",
            "{user1000}.following",
            "open{brace",
            "{",
        ] {
            let temp = temp_key(final_key);
            assert!(is_temp_key(temp.as_bytes()), "{temp}");
            assert_eq!(
                hash_tag(temp.as_bytes()),
                hash_tag(final_key.as_bytes()),
                "{final_key} -> {temp}"
            );
        }
        // Shapes that cannot be tagged (a `}` outside a tag, the empty key) still get a temp
        // key; it shares the slot only outside cluster mode, which this store does not support.
        for untaggable in ["a}b", "x{}y{z}", ""] {
            assert!(is_temp_key(temp_key(untaggable).as_bytes()));
        }
        assert_ne!(temp_key("k"), temp_key("k"), "ids are random");
    }

    #[test]
    fn hash_tags_follow_the_cluster_spec() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"plain"), b"plain");
    }

    #[test]
    fn events_decode_to_keys_under_the_prefix_only() {
        let d = Digest::of(b"abc");
        let raw = format!("p:{d}");
        assert_eq!(
            decode("p:", raw.as_bytes()),
            vec![Key::Digest(d), Key::from(d.to_string())]
        );
        assert_eq!(decode("p:", b"p:ac/1"), vec![Key::from("ac/1")]);
        assert!(decode("p:", b"q:ac/1").is_empty());
        assert!(decode("p:", temp_key("p:ac/1").as_bytes()).is_empty());
        assert!(decode("p:", b"p:\xff").is_empty());
    }
}
