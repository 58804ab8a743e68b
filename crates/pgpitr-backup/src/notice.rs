//! Page checksum failures as PostgreSQL 15 reports them during BASE_BACKUP
//! (found by corrupting a block of a test cluster and backing it up):
//!
//! ```text
//! WARNING  checksum verification failed in file "./base/5/16384", block 1: calculated B090 but expected 1F64
//! WARNING  file "./base/5/16384" has a total of 2 checksum verification failures
//! WARNING  2 total checksum verification failures
//! ERROR    checksum verification failed                        (SQLSTATE XX001, after the manifest)
//! ```
//!
//! At most five blocks per file are named; the final ERROR replaces the
//! end-of-backup result set, so the stop LSN comes from the manifest.

use pgpitr_repo::backup::ChecksumFailure;

/// SQLSTATE `data_corrupted`, of the final error.
pub const DATA_CORRUPTED: &str = "XX001";

/// A checksum failure from a server WARNING, or `None` when the message is
/// about something else (or only totals).
pub fn parse_checksum_notice(message: &str) -> Option<ChecksumFailure> {
    let rest = message.strip_prefix("checksum verification failed in file \"")?;
    let (file, tail) = rest.split_once('"')?;
    let block = tail
        .strip_prefix(", block ")
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    Some(ChecksumFailure {
        file: Some(file.strip_prefix("./").unwrap_or(file).to_string()),
        block,
        message: message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg15_warnings() {
        let f = parse_checksum_notice(
            "checksum verification failed in file \"./base/5/16384\", block 3: calculated 2B6 but expected BFFC",
        )
        .unwrap();
        assert_eq!(f.file.as_deref(), Some("base/5/16384"));
        assert_eq!(f.block, Some(3));
        assert!(
            parse_checksum_notice("file \"./base/5/16384\" has a total of 2 checksum verification failures").is_none()
        );
        assert!(parse_checksum_notice("2 total checksum verification failures").is_none());
        assert!(parse_checksum_notice("checksum verification failed in file \"unterminated").is_none());
    }
}
