//! The PostgreSQL majors pgpitr supports, and everything that differs
//! between them. The rest of pgpitr asks a [`PgMajor`] and never compares
//! version numbers itself: supporting the next major is a row in [`MAJORS`]
//! plus a test run.

use std::fmt;

/// What differs from one major to the next. Each value was checked against
/// that branch's sources (`access/xlog_internal.h`, `access/xact.h`,
/// `replication/repl_gram.y`, `backup/backup_manifest.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    major: u32,
    wal: WalFormat,
    base_backup: BaseBackupDialect,
    manifest_version: u32,
    read_replication_slot: bool,
    /// `UPLOAD_MANIFEST` and `BASE_BACKUP (INCREMENTAL)`, with
    /// `summarize_wal` (`backup/basebackup_incremental.c`).
    native_incremental: bool,
}

/// What the WAL scanner must know of a major's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalFormat {
    /// `XLOG_PAGE_MAGIC`: every page header carries it.
    pub page_magic: u16,
    /// `BKPIMAGE_*` bits that say a full-page image is compressed (14 had
    /// one, `IS_COMPRESSED`; 15 one per method).
    pub bkpimage_compressed: u8,
    /// Size of `xl_xact_stats_item` in commit and abort records: 12 bytes
    /// (kind, database, object) from 15, 16 from 18 (the object id became 64
    /// bits). 14 has no dropped-stats items.
    pub dropped_stats_item_len: Option<usize>,
    /// Size of `xl_xact_prepare`, the head of a PREPARE record (15 added
    /// the counts of dropped-stats items); its GID follows, its `gidlen`
    /// is 18 bytes before its end.
    pub prepare_header_len: usize,
}

/// How `BASE_BACKUP` is spelled and what it sends back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseBackupDialect {
    /// 14: bare keywords (`LABEL 'x' PROGRESS FAST NOWAIT MANIFEST 'yes'`),
    /// one CopyOut stream per tablespace and one for the manifest; no
    /// server-side compression.
    Keywords,
    /// 15 and later: parenthesised options, one CopyOut stream of
    /// sub-messages (new archive, data, progress, manifest), server-side
    /// compression.
    Options,
}

const fn wal(page_magic: u16, bkpimage_compressed: u8, dropped_stats_item_len: Option<usize>) -> WalFormat {
    let prepare_header_len = if dropped_stats_item_len.is_some() { 72 } else { 64 };
    WalFormat { page_magic, bkpimage_compressed, dropped_stats_item_len, prepare_header_len }
}

/// One row per supported major, oldest first.
const MAJORS: &[Row] = &[
    Row {
        major: 14,
        wal: wal(0xD10D, 0x02, None),
        base_backup: BaseBackupDialect::Keywords,
        manifest_version: 1,
        native_incremental: false,
        read_replication_slot: false,
    },
    Row {
        major: 15,
        wal: wal(0xD110, 0x04 | 0x08 | 0x10, Some(12)),
        base_backup: BaseBackupDialect::Options,
        manifest_version: 1,
        native_incremental: false,
        read_replication_slot: true,
    },
    Row {
        major: 16,
        wal: wal(0xD113, 0x04 | 0x08 | 0x10, Some(12)),
        base_backup: BaseBackupDialect::Options,
        manifest_version: 1,
        native_incremental: false,
        read_replication_slot: true,
    },
    Row {
        major: 17,
        wal: wal(0xD116, 0x04 | 0x08 | 0x10, Some(12)),
        base_backup: BaseBackupDialect::Options,
        manifest_version: 2,
        native_incremental: true,
        read_replication_slot: true,
    },
    Row {
        major: 18,
        wal: wal(0xD118, 0x04 | 0x08 | 0x10, Some(16)),
        base_backup: BaseBackupDialect::Options,
        manifest_version: 2,
        native_incremental: true,
        read_replication_slot: true,
    },
];

/// A supported PostgreSQL major. Made only from a version pgpitr knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgMajor(u32);

/// A server or repository of a major pgpitr does not support.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PostgreSQL {found} is not supported: pgpitr supports {}", supported_list())]
pub struct UnsupportedMajor {
    /// The major (or the raw number, if it was not a version at all).
    pub found: String,
}

/// "14, 15, 16, 17 and 18".
pub fn supported_list() -> String {
    let names: Vec<String> = MAJORS.iter().map(|r| r.major.to_string()).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// The major of a `server_version_num` (10 and later: 150018 is 15).
pub(crate) fn major_number(num: u32) -> u32 {
    num / 10_000
}

impl PgMajor {
    /// From `server_version_num` (e.g. 150018).
    pub fn from_version_num(num: u32) -> Result<PgMajor, UnsupportedMajor> {
        if num < 100_000 {
            return Err(UnsupportedMajor { found: format!("{}.{}", major_number(num), num / 100 % 100) });
        }
        Self::from_major(major_number(num))
    }

    /// From a major number (e.g. 15, as a repository records it).
    pub fn from_major(major: u32) -> Result<PgMajor, UnsupportedMajor> {
        MAJORS
            .iter()
            .any(|r| r.major == major)
            .then_some(PgMajor(major))
            .ok_or_else(|| UnsupportedMajor { found: major.to_string() })
    }

    /// Every supported major, oldest first.
    pub fn all() -> impl Iterator<Item = PgMajor> {
        MAJORS.iter().map(|r| PgMajor(r.major))
    }

    pub fn number(self) -> u32 {
        self.0
    }

    fn row(self) -> &'static Row {
        // Made only from a row, so there is one.
        MAJORS.iter().find(|r| r.major == self.0).unwrap_or(&MAJORS[0])
    }

    pub fn wal_format(self) -> WalFormat {
        self.row().wal
    }

    pub fn base_backup(self) -> BaseBackupDialect {
        self.row().base_backup
    }

    /// Whether the server can compress `BASE_BACKUP` itself (if built with
    /// the method).
    pub fn server_compression(self) -> bool {
        self.row().base_backup == BaseBackupDialect::Options
    }

    /// Whether the server takes incremental backups itself (17 and later).
    pub fn native_incremental(self) -> bool {
        self.row().native_incremental
    }

    /// The `PostgreSQL-Backup-Manifest-Version` the server writes (2 carries
    /// the system identifier).
    pub fn manifest_version(self) -> u32 {
        self.row().manifest_version
    }

    /// Whether the replication protocol has `READ_REPLICATION_SLOT`; before
    /// it, a slot's position comes from `pg_replication_slots`.
    pub fn has_read_replication_slot(self) -> bool {
        self.row().read_replication_slot
    }

    /// Whether `CREATE_REPLICATION_SLOT` takes parenthesised options.
    pub fn slot_options_in_parentheses(self) -> bool {
        self.row().base_backup == BaseBackupDialect::Options
    }
}

impl fmt::Display for PgMajor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_map_to_majors_and_unknown_ones_are_refused() {
        assert_eq!(PgMajor::from_version_num(150018).unwrap().number(), 15);
        assert_eq!(PgMajor::from_version_num(140023).unwrap().number(), 14);
        assert_eq!(PgMajor::from_version_num(180004).unwrap().number(), 18);
        let e = PgMajor::from_version_num(130010).unwrap_err().to_string();
        assert_eq!(e, "PostgreSQL 13 is not supported: pgpitr supports 14, 15, 16, 17 and 18");
        assert!(PgMajor::from_version_num(190001).is_err(), "19 is a row more, once it can be tested");
        assert_eq!(PgMajor::from_version_num(90624).unwrap_err().found, "9.6");
        assert!(PgMajor::from_major(0).is_err());
    }

    #[test]
    fn every_major_has_its_own_page_magic() {
        let magics: std::collections::HashSet<u16> = PgMajor::all().map(|m| m.wal_format().page_magic).collect();
        assert_eq!(magics.len(), MAJORS.len());
        assert!(MAJORS.windows(2).all(|w| w[0].major < w[1].major && w[0].wal.page_magic < w[1].wal.page_magic));
    }

    #[test]
    fn dialects_follow_the_majors() {
        let m = |n| PgMajor::from_major(n).unwrap();
        assert_eq!(m(14).base_backup(), BaseBackupDialect::Keywords);
        assert!(!m(14).has_read_replication_slot() && !m(14).server_compression());
        assert_eq!(m(15).base_backup(), BaseBackupDialect::Options);
        assert_eq!((m(16).manifest_version(), m(17).manifest_version()), (1, 2));
        assert_eq!(m(18).wal_format().dropped_stats_item_len, Some(16));
        assert_eq!(m(14).wal_format().dropped_stats_item_len, None);
    }
}
