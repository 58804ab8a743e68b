use pgpitr_types::Lsn;

/// Why the WAL could not be scanned, and where. Messages follow the wording of
/// Postgres's own `xlogreader.c` so they can be matched against server logs.
///
/// Every error is definite: the bytes are not valid PostgreSQL 15 WAL at
/// `lsn()` (or the scanner was pointed at the wrong place). After an error the
/// scanner stays failed; to skip the damage, start a new [`crate::WalScanner::new`]
/// at a later position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    #[error(
        "invalid magic number {magic:04X} in WAL page at {lsn} (the repository's PostgreSQL major writes {expected:04X})"
    )]
    BadMagic { lsn: Lsn, magic: u16, expected: u16 },
    #[error("invalid info bits {info:04X} in WAL page at {lsn}: {reason}")]
    BadPageInfo { lsn: Lsn, info: u16, reason: &'static str },
    #[error("unexpected pageaddr {found} in WAL page at {lsn}")]
    UnexpectedPageAddr { lsn: Lsn, found: Lsn },
    #[error("WAL segment size {found} in the page header at {lsn} differs from the expected {expected}")]
    SegSizeMismatch { lsn: Lsn, found: u64, expected: u64 },
    #[error("WAL block size {found} in the page header at {lsn} is not 8192")]
    BlockSizeMismatch { lsn: Lsn, found: u32 },
    #[error("WAL system identifier {found} at {lsn} differs from {expected} seen earlier")]
    SystemIdMismatch { lsn: Lsn, found: u64, expected: u64 },
    #[error("out-of-sequence timeline ID {found} (after {previous}) in WAL page at {lsn}")]
    TimelineRegressed { lsn: Lsn, found: u32, previous: u32 },
    #[error("invalid record length at {lsn}: expected at least 24, got {len}")]
    RecordTooShort { lsn: Lsn, len: u32 },
    #[error("record length {len} at {lsn} too long")]
    RecordTooLong { lsn: Lsn, len: u32 },
    #[error("invalid resource manager ID {rmid} at {lsn}")]
    InvalidRmgr { lsn: Lsn, rmid: u8 },
    /// `expected` is `None` for the first record of a scan, whose link must
    /// merely point backwards.
    #[error("record with incorrect prev-link {found} at {lsn}")]
    BadPrevLink { lsn: Lsn, found: Lsn, expected: Option<Lsn> },
    #[error("there is no contrecord flag at {lsn} (record at {record} continues there)")]
    MissingContinuation { lsn: Lsn, record: Lsn },
    #[error("invalid contrecord length {rem_len} (expected {expected}) at {lsn}")]
    BadContinuationLength { lsn: Lsn, rem_len: u32, expected: u32 },
    #[error("unexpected contrecord flag at {lsn}: the scan did not start at a record boundary")]
    UnexpectedContinuation { lsn: Lsn },
    #[error(
        "incorrect resource manager data checksum in record at {lsn} (stored {stored:08X}, computed {computed:08X})"
    )]
    Crc { lsn: Lsn, stored: u32, computed: u32 },
    #[error("cannot decode {what} record at {lsn}: {reason}")]
    Decode { lsn: Lsn, what: &'static str, reason: &'static str },
    #[error("cannot start scanning at {lsn}: {reason}")]
    InvalidStart { lsn: Lsn, reason: &'static str },
    #[error("WAL position overflows 64 bits after {lsn}")]
    PositionOverflow { lsn: Lsn },
}

impl ScanError {
    /// The WAL position the error is about: a page or record start.
    pub fn lsn(&self) -> Lsn {
        use ScanError::*;
        match *self {
            BadMagic { lsn, .. }
            | BadPageInfo { lsn, .. }
            | UnexpectedPageAddr { lsn, .. }
            | SegSizeMismatch { lsn, .. }
            | BlockSizeMismatch { lsn, .. }
            | SystemIdMismatch { lsn, .. }
            | TimelineRegressed { lsn, .. }
            | RecordTooShort { lsn, .. }
            | RecordTooLong { lsn, .. }
            | InvalidRmgr { lsn, .. }
            | BadPrevLink { lsn, .. }
            | MissingContinuation { lsn, .. }
            | BadContinuationLength { lsn, .. }
            | UnexpectedContinuation { lsn }
            | Crc { lsn, .. }
            | Decode { lsn, .. }
            | InvalidStart { lsn, .. }
            | PositionOverflow { lsn } => lsn,
        }
    }
}
