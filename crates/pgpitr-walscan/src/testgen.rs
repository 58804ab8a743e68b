//! A writer of synthetic PostgreSQL 15 WAL for tests (feature `testgen`):
//! real page headers, continuation records, alignment and CRCs around
//! made-up payloads. Not for production use; it panics on misuse.

use crate::PgTimestamp;
use crate::format::*;
use pgpitr_types::{Lsn, PgMajor, WalFormat, WalSegSize};

/// The format the generated WAL has: PostgreSQL 15's.
pub fn pg15() -> WalFormat {
    PgMajor::from_major(15).map(PgMajor::wal_format).expect("15 is supported")
}

/// Appends records to an in-memory WAL stream starting at a page boundary.
#[derive(Debug, Clone)]
pub struct WalWriter {
    seg_size: u64,
    tli: u32,
    sysid: u64,
    start: u64,
    buf: Vec<u8>,
    prev: u64,
}

impl WalWriter {
    /// `start` must be a page boundary.
    pub fn new(start: Lsn, seg_size: WalSegSize) -> Self {
        assert_eq!(start.0 % XLOG_BLCKSZ, 0, "WalWriter starts at a page boundary");
        WalWriter {
            seg_size: seg_size.bytes(),
            tli: 1,
            sysid: 7_000_000_000_000_000_001,
            start: start.0,
            buf: vec![],
            prev: 0,
        }
    }

    pub fn timeline(mut self, tli: u32) -> Self {
        self.tli = tli;
        self
    }

    pub fn set_timeline(&mut self, tli: u32) {
        self.tli = tli;
    }

    pub fn system_identifier(&self) -> u64 {
        self.sysid
    }

    /// The insert position: where the next byte goes.
    pub fn pos(&self) -> Lsn {
        Lsn(self.start + self.buf.len() as u64)
    }

    pub fn start(&self) -> Lsn {
        Lsn(self.start)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Offset in [`WalWriter::bytes`] of an LSN.
    pub fn offset_of(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.start) as usize
    }

    /// Writes one record; `data` is everything after the 24-byte header
    /// (block headers, block data, main data). Returns its start and its
    /// `end_lsn` as the scanner reports it.
    pub fn record(&mut self, rmid: u8, info: u8, xid: u32, data: &[u8]) -> (Lsn, Lsn) {
        let tot = SIZE_OF_XLOG_RECORD + data.len();
        let mut hdr = [0u8; SIZE_OF_XLOG_RECORD];
        hdr[0..4].copy_from_slice(&(tot as u32).to_le_bytes());
        hdr[4..8].copy_from_slice(&xid.to_le_bytes());
        hdr[8..16].copy_from_slice(&self.prev.to_le_bytes());
        hdr[16] = info;
        hdr[17] = rmid;
        let crc = crc32c::crc32c_append(crc32c::crc32c(data), &hdr[..XL_CRC_OFFSET]);
        hdr[20..24].copy_from_slice(&crc.to_le_bytes());
        let mut rec = hdr.to_vec();
        rec.extend_from_slice(data);
        self.raw_record(&rec)
    }

    /// Writes already-built record bytes (header included) as they are,
    /// splitting them over pages. For corrupt-record tests.
    pub fn raw_record(&mut self, rec: &[u8]) -> (Lsn, Lsn) {
        self.align();
        if self.pos().0.is_multiple_of(XLOG_BLCKSZ) {
            self.page_header(0);
        }
        let start = self.pos().0;
        let mut off = 0;
        while off < rec.len() {
            if self.pos().0.is_multiple_of(XLOG_BLCKSZ) {
                self.page_header((rec.len() - off) as u32);
            }
            let space = (XLOG_BLCKSZ - self.pos().0 % XLOG_BLCKSZ) as usize;
            let n = space.min(rec.len() - off);
            self.buf.extend_from_slice(&rec[off..off + n]);
            off += n;
        }
        self.prev = start;
        // Postgres reserves MAXALIGN'd space, so the padding is always there.
        self.align();
        (Lsn(start), self.pos())
    }

    fn align(&mut self) {
        let pad = maxalign(self.pos().0) - self.pos().0;
        self.buf.extend(std::iter::repeat_n(0u8, pad as usize));
    }

    fn page_header(&mut self, rem_len: u32) {
        let addr = self.pos().0;
        let long = addr.is_multiple_of(self.seg_size);
        let mut info = 0u16;
        if long {
            info |= XLP_LONG_HEADER;
        }
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        let mut h = Vec::with_capacity(SIZE_OF_LONG_PHD);
        h.extend_from_slice(&pg15().page_magic.to_le_bytes());
        h.extend_from_slice(&info.to_le_bytes());
        h.extend_from_slice(&self.tli.to_le_bytes());
        h.extend_from_slice(&addr.to_le_bytes());
        h.extend_from_slice(&rem_len.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        if long {
            h.extend_from_slice(&self.sysid.to_le_bytes());
            h.extend_from_slice(&(self.seg_size as u32).to_le_bytes());
            h.extend_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
        }
        self.buf.extend_from_slice(&h);
    }

    /// An `RM_XACT` COMMIT without `xinfo`.
    pub fn commit(&mut self, xid: u32, time: PgTimestamp) -> (Lsn, Lsn) {
        self.record(RM_XACT_ID, XLOG_XACT_COMMIT, xid, &main_data(&time.0.to_le_bytes()))
    }

    /// An ABORT with `xinfo` listing subtransactions, as a ROLLBACK writes.
    pub fn abort(&mut self, xid: u32, time: PgTimestamp) -> (Lsn, Lsn) {
        let mut m = time.0.to_le_bytes().to_vec();
        m.extend(XACT_XINFO_HAS_SUBXACTS.to_le_bytes());
        m.extend(2i32.to_le_bytes());
        m.extend((xid + 1).to_le_bytes());
        m.extend((xid + 2).to_le_bytes());
        self.record(RM_XACT_ID, XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO, xid, &main_data(&m))
    }

    /// A COMMIT PREPARED with every optional part before the two-phase xid,
    /// written by a session without an xid of its own (`xl_xid` 0).
    pub fn commit_prepared(&mut self, prepared_xid: u32, time: PgTimestamp) -> (Lsn, Lsn) {
        let xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_RELFILENODES
            | XACT_XINFO_HAS_DROPPED_STATS
            | XACT_XINFO_HAS_INVALS
            | XACT_XINFO_HAS_TWOPHASE;
        let mut m = time.0.to_le_bytes().to_vec();
        m.extend(xinfo.to_le_bytes());
        m.extend([5u8; 8]); // dbinfo
        m.extend(1i32.to_le_bytes());
        m.extend(77u32.to_le_bytes()); // subxacts
        m.extend(2i32.to_le_bytes());
        m.extend([6u8; 24]); // relfilenodes
        m.extend(1i32.to_le_bytes());
        m.extend([7u8; 12]); // dropped stats
        m.extend(3i32.to_le_bytes());
        m.extend([8u8; 48]); // invalidations
        m.extend(prepared_xid.to_le_bytes());
        self.record(RM_XACT_ID, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, 0, &main_data(&m))
    }

    /// A PREPARE TRANSACTION record (the two-phase state file header + GID).
    pub fn prepare(&mut self, xid: u32, gid: &str, time: PgTimestamp) -> (Lsn, Lsn) {
        let mut m = vec![0u8; 72];
        m[0..4].copy_from_slice(&0x57F9_4534u32.to_le_bytes());
        m[8..12].copy_from_slice(&xid.to_le_bytes());
        m[16..24].copy_from_slice(&time.0.to_le_bytes());
        m[54..56].copy_from_slice(&((gid.len() + 1) as u16).to_le_bytes());
        m.extend(gid.as_bytes());
        m.push(0);
        m.resize(maxalign(m.len() as u64) as usize, 0);
        self.record(RM_XACT_ID, XLOG_XACT_PREPARE, xid, &main_data(&m))
    }

    pub fn restore_point(&mut self, name: &str, time: PgTimestamp) -> (Lsn, Lsn) {
        let mut m = time.0.to_le_bytes().to_vec();
        let mut n = [0u8; 64];
        n[..name.len().min(63)].copy_from_slice(&name.as_bytes()[..name.len().min(63)]);
        m.extend(n);
        self.record(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &main_data(&m))
    }

    /// A heap-like record of exactly `tot_len` bytes (at least 48): one block
    /// reference with data, then main data.
    pub fn filler(&mut self, tot_len: usize) -> (Lsn, Lsn) {
        assert!(tot_len >= 48);
        let body = tot_len - SIZE_OF_XLOG_RECORD;
        // block header 4 + rel 12 + blkno 4 + main header 2 + main 2 = 24
        let data_len = body - 24;
        let mut d = vec![0u8, BKPBLOCK_HAS_DATA];
        d.extend((data_len as u16).to_le_bytes());
        d.extend([1u8; 16]);
        d.extend([XLR_BLOCK_ID_DATA_SHORT, 2]);
        d.extend(std::iter::repeat_n(0x5Au8, data_len));
        d.extend([0xAB, 0xCD]);
        assert!(data_len <= u16::MAX as usize);
        self.record(10, 0x00, 1234, &d)
    }

    /// An XLOG_SWITCH record, then the padding Postgres writes: zeros, with a
    /// page header on each remaining page of the segment.
    pub fn switch(&mut self) -> (Lsn, Lsn) {
        let (start, _) = self.record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
        let seg_end = self.pos().0.div_ceil(self.seg_size) * self.seg_size;
        while self.pos().0 < seg_end {
            if self.pos().0.is_multiple_of(XLOG_BLCKSZ) {
                self.page_header(0);
            }
            let n = XLOG_BLCKSZ - self.pos().0 % XLOG_BLCKSZ;
            self.buf.extend(std::iter::repeat_n(0u8, n as usize));
        }
        (start, Lsn(seg_end))
    }

    /// Cuts the stream back to `lsn`, e.g. to tear a record as a crash does.
    /// The next record's `xl_prev` becomes `prev`.
    pub fn truncate(&mut self, lsn: Lsn, prev: Lsn) {
        self.buf.truncate(self.offset_of(lsn));
        self.prev = prev.0;
    }

    /// At a page boundary: the header Postgres writes after abandoning a torn
    /// record, flagged `XLP_FIRST_IS_OVERWRITE_CONTRECORD`.
    pub fn overwrite_contrecord_page(&mut self) {
        assert_eq!(self.pos().0 % XLOG_BLCKSZ, 0);
        let at = self.buf.len();
        self.page_header(0);
        let info = u16::from_le_bytes([self.buf[at + 2], self.buf[at + 3]]) | XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        self.buf[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
    }

    /// Appends `n` zero bytes, as the unwritten tail of a partial segment.
    pub fn zeros(&mut self, n: usize) {
        self.buf.extend(std::iter::repeat_n(0u8, n));
    }
}

/// Wraps `main` in a main-data header: the data part of a record with no
/// block references.
pub fn main_data(main: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(main.len() + 5);
    if main.len() < 256 {
        d.extend([XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
    } else {
        d.push(XLR_BLOCK_ID_DATA_LONG);
        d.extend((main.len() as u32).to_le_bytes());
    }
    d.extend_from_slice(main);
    d
}
