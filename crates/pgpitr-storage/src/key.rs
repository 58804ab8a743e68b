//! Object key rules, shared by every backend so a key that works on one works
//! on all of them.

use crate::error::{Result, StorageError};

/// Maximum key length in bytes (S3's limit, applied everywhere).
pub const MAX_KEY_LEN: usize = 1024;

/// Name prefix reserved for temporary files of the local backend. Keys may
/// not contain a segment starting with it, so listings can skip such files
/// without ever hiding a real object.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Checks that `key` is a valid object key.
///
/// A key is a non-empty, `/`-separated relative path: no leading `/`, no
/// empty segments (`a//b`, trailing `/`), no `.` or `..` segments, no NUL,
/// backslash or other control characters, no segment starting with `.tmp-`
/// (reserved) and at most [`MAX_KEY_LEN`] bytes.
pub fn validate_key(key: &str) -> Result<()> {
    let invalid = |reason: &str| Err(StorageError::InvalidKey { key: key.to_owned(), reason: reason.to_owned() });
    if key.is_empty() {
        return invalid("key is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return invalid("key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return invalid("key must be relative (no leading '/')");
    }
    if key.contains('\0') {
        return invalid("key contains a NUL byte");
    }
    if key.contains('\\') {
        return invalid("key contains a backslash; use '/' as the separator");
    }
    if key.chars().any(char::is_control) {
        return invalid("key contains a control character");
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("key has an empty path segment ('//' or a trailing '/')"),
            "." | ".." => return invalid("key has a '.' or '..' segment"),
            s if s.starts_with(TEMP_PREFIX) => {
                return invalid("key has a segment starting with \".tmp-\", which is reserved for temporary files");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a listing prefix. The empty prefix (everything) is allowed, and so
/// is one trailing `/`; otherwise the key rules apply. Prefixes match keys
/// as plain strings, so `wal/00` matches `wal/0001` and `wal/00/x`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return Err(StorageError::InvalidKey {
            key: prefix.to_owned(),
            reason: "prefix must be relative (no leading '/')".to_owned(),
        });
    }
    validate_key(trimmed).map_err(|e| match e {
        StorageError::InvalidKey { reason, .. } => StorageError::InvalidKey { key: prefix.to_owned(), reason },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for k in ["a", "wal/000000010000000000000001", "a/b/c.json", ".lock", "a/.hidden", "x..y", "…/ü"] {
            validate_key(k).unwrap_or_else(|e| panic!("{k:?} rejected: {e}"));
        }
    }

    #[test]
    fn rejects_bad_keys_with_a_reason() {
        for (k, why) in [
            ("", "empty"),
            ("/abs", "relative"),
            ("a//b", "empty path segment"),
            ("a/", "empty path segment"),
            ("./a", "'.'"),
            ("a/../b", "'..'"),
            ("..", "'..'"),
            ("a\0b", "NUL"),
            ("a\\b", "backslash"),
            ("a\nb", "control"),
            ("a/.tmp-123", "reserved"),
        ] {
            let e = validate_key(k).expect_err(k);
            assert!(matches!(e, StorageError::InvalidKey { .. }), "{k:?}: {e}");
            assert!(e.to_string().contains(why), "{k:?}: {e}");
        }
        assert!(validate_key(&"a".repeat(1025)).is_err());
        assert!(validate_key(&"a".repeat(1024)).is_ok());
    }

    #[test]
    fn prefixes() {
        for p in ["", "a", "a/", "a/b/", "wal/00"] {
            validate_prefix(p).unwrap_or_else(|e| panic!("{p:?} rejected: {e}"));
        }
        for p in ["/", "/a", "a//", "../a", "a/../", "a\\b"] {
            let e = validate_prefix(p).expect_err(p);
            assert!(e.to_string().contains(&format!("{p:?}")), "{e}");
        }
    }
}
