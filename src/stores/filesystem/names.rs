//! File names of keys: `d/{hash}-{size}` for digests, `s/{escaped name}` for names.
//!
//! A name is kept verbatim when it is made only of ASCII letters, digits, `_`, `-` and `.`
//! (not leading); every other byte is written `%XX` (upper-case hex), so no name can contain
//! `/` or NUL or be `.` / `..`, and the mapping is one to one. The empty name is the file `%`.
//! A name whose escaped form is longer than 255 bytes (the usual file name limit) cannot be
//! stored.

use std::fmt::Write as _;

use crate::error::{Code, Error, Result};
use crate::key::{Digest, Key};

/// Subdirectory of digest keys.
pub(crate) const DIGESTS: &str = "d";
/// Subdirectory of name keys.
pub(crate) const NAMES: &str = "s";

/// Longest file name the store writes.
const MAX_FILE_NAME: usize = 255;

/// The subdirectory and file name of `key`, or `InvalidArgument` if it cannot be stored.
pub(crate) fn file_name(key: &Key) -> Result<(&'static str, String)> {
    match key {
        Key::Digest(d) => Ok((DIGESTS, d.to_string())),
        Key::Name(name) => escape_name(name).map(|f| (NAMES, f)).ok_or_else(|| {
            Error::new(
                Code::InvalidArgument,
                format!(
                    "a name of {} bytes is too long to be a file name once escaped (at most {MAX_FILE_NAME} bytes)",
                    name.len()
                ),
            )
            .with_key(key.clone())
        }),
    }
}

fn keep_verbatim(byte: u8, first: bool) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || (byte == b'.' && !first)
}

/// The file name of a name key, `None` if it would be too long.
pub(crate) fn escape_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("%".to_owned());
    }
    let mut out = String::with_capacity(name.len());
    for (i, byte) in name.bytes().enumerate() {
        if keep_verbatim(byte, i == 0) {
            out.push(char::from(byte));
        } else {
            write!(out, "%{byte:02X}").expect("writing to a String");
        }
        if out.len() > MAX_FILE_NAME {
            return None;
        }
    }
    Some(out)
}

/// The name stored in file `file`, `None` unless `file` is exactly what [`escape_name`]
/// writes for some name.
pub(crate) fn unescape_name(file: &str) -> Option<String> {
    if file == "%" {
        return Some(String::new());
    }
    let bytes = file.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    // Only the canonical spelling is valid: no `%61` for `a`, no lower-case hex, no `/`.
    (escape_name(&name)? == file).then_some(name)
}

/// The digest named by file `file` in `d/`, `None` unless `file` is exactly its canonical
/// text (lower-case hash, decimal size without leading zeros).
pub(crate) fn parse_digest_file(file: &str) -> Option<Digest> {
    let digest: Digest = file.parse().ok()?;
    (digest.to_string() == file).then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_names_stay_verbatim_and_others_are_escaped() {
        assert_eq!(
            escape_name("action-42_v1.json").unwrap(),
            "action-42_v1.json"
        );
        assert_eq!(escape_name("a/b").unwrap(), "a%2Fb");
        assert_eq!(escape_name("..").unwrap(), "%2E.");
        assert_eq!(escape_name(".").unwrap(), "%2E");
        assert_eq!(
            escape_name("../../etc/passwd").unwrap(),
            "%2E.%2F..%2Fetc%2Fpasswd"
        );
        assert_eq!(escape_name("nul\0byte").unwrap(), "nul%00byte");
        assert_eq!(escape_name("100%").unwrap(), "100%25");
        assert_eq!(escape_name("é").unwrap(), "%C3%A9");
        assert_eq!(escape_name("").unwrap(), "%");
    }

    #[test]
    fn every_escaped_name_is_one_path_component_and_round_trips() {
        let names = [
            "",
            ".",
            "..",
            "a",
            ".hidden",
            "a/b/../c",
            "\0",
            "%",
            "%2F",
            "sp ace",
            "tab\t",
            "é€😀",
            "-",
            "--",
            "~",
            "a.b.c",
            "/abs",
            "trailing/",
        ];
        for name in names {
            let file = escape_name(name).unwrap();
            assert!(
                !file.is_empty() && file != "." && file != "..",
                "{name:?} -> {file:?}"
            );
            assert!(
                !file.contains('/') && !file.contains('\0'),
                "{name:?} -> {file:?}"
            );
            assert_eq!(unescape_name(&file).as_deref(), Some(name), "{file:?}");
        }
    }

    #[test]
    fn non_canonical_file_names_are_not_names() {
        for file in ["%61", "%2f", "a%2", "%zz", "%C3", ".x", "..", ".", "", "a%"] {
            assert_eq!(unescape_name(file), None, "{file:?}");
        }
    }

    #[test]
    fn names_too_long_for_a_file_are_refused() {
        assert!(escape_name(&"a".repeat(255)).is_some());
        assert!(escape_name(&"a".repeat(256)).is_none());
        assert!(escape_name(&"/".repeat(85)).is_some());
        assert!(escape_name(&"/".repeat(86)).is_none());
        let err = file_name(&Key::from("é".repeat(100))).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.key().is_some());
    }

    #[test]
    fn digest_files_must_be_canonical() {
        let d = Digest::of(b"x");
        assert_eq!(parse_digest_file(&d.to_string()), Some(d));
        let upper = format!("{}-1", d.hash_hex().to_uppercase());
        assert_eq!(parse_digest_file(&upper), None);
        assert_eq!(parse_digest_file(&format!("{}-01", d.hash_hex())), None);
        assert_eq!(parse_digest_file(&format!("{}-+1", d.hash_hex())), None);
        assert_eq!(parse_digest_file("junk"), None);
        assert_eq!(file_name(&d.into()).unwrap(), (DIGESTS, d.to_string()));
    }
}
