//! Finds transaction ends and restore points, with their timestamps, in a
//! PostgreSQL 15 WAL byte stream, so the repository can map times to LSNs.
//!
//! ```text
//! WAL bytes (any chunking) ──► WalScanner::feed ──► Vec<WalEvent> ──► ScanSummary (per object)
//! ```
//!
//! This crate does no I/O. It reads page headers, record headers and the
//! block-reference headers of the few records it decodes; every read is
//! bounds-checked and bad input becomes a [`ScanError`] naming the LSN.
//!
//! Layout facts it relies on (PostgreSQL 15, `XLOG_BLCKSZ` 8192, MAXALIGN 8):
//! - Each 8 KiB page starts with a 24-byte header (`xlp_magic` 0xD110,
//!   `xlp_info`, `xlp_tli`, `xlp_pageaddr`, `xlp_rem_len`); a segment's first
//!   page has a 40-byte long header adding system id, segment and block size.
//! - Records start 8-byte aligned with a 24-byte header (`xl_tot_len`,
//!   `xl_xid`, `xl_prev`, `xl_info`, `xl_rmid`, 2 pad, `xl_crc`); a record,
//!   header included, continues across pages and segments after each page
//!   header, which then sets `XLP_FIRST_IS_CONTRECORD` and `xlp_rem_len`.
//! - `xl_crc` is CRC-32C over the record data after the header, then over the
//!   header's first 20 bytes.
//! - After `XLOG_SWITCH` the rest of the segment is padding.

mod decode;
mod error;
mod event;
mod format;
mod scanner;
mod summary;
#[cfg(any(test, feature = "testgen"))]
pub mod testgen;
mod time;

pub use error::ScanError;
pub use event::WalEvent;
pub use format::{PageHeader, SIZE_OF_LONG_PHD, XLOG_BLCKSZ, XLP_LONG_HEADER};
pub use pgpitr_types::WalFormat;
pub use scanner::WalScanner;
pub use summary::{CommitPoint, RestorePointInfo, ScanSummary};
pub use time::{PG_EPOCH_UNIX_SECS, PgTimestamp, TimestampParseError};

#[cfg(test)]
mod tests;
