//! WAL layout shared by the supported majors: sizes, flags and header
//! parsers (`access/xlog_internal.h`, `access/xlogrecord.h`). What differs
//! between majors comes from `pgpitr_types::WalFormat`. Everything is
//! little-endian as written on x86-64/aarch64; MAXALIGN is 8.

/// WAL page size (`XLOG_BLCKSZ`); only the default build is supported.
pub const XLOG_BLCKSZ: u64 = 8192;
pub const SIZE_OF_SHORT_PHD: usize = 24;
pub const SIZE_OF_LONG_PHD: usize = 40;
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// `offsetof(XLogRecord, xl_crc)`: the CRC covers the header up to here.
pub const XL_CRC_OFFSET: usize = 20;
/// Postgres 15 cannot allocate a record buffer past `MaxAllocSize`.
pub const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// Low four bits of `xl_info` belong to the WAL machinery, high four to the rmgr.
pub const XLR_INFO_MASK: u8 = 0x0F;

pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
/// Last built-in rmgr in 15 (`RM_LOGICALMSG_ID`); 128..=255 are custom rmgrs.
pub const RM_MAX_BUILTIN_ID: u8 = 21;
pub const RM_MIN_CUSTOM_ID: u8 = 128;

// RM_XLOG record types (`catalog/pg_control.h`).
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_RESTORE_POINT: u8 = 0x70;
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;

// RM_XACT record types (`access/xact.h`).
pub const XLOG_XACT_OPMASK: u8 = 0x70;
pub const XLOG_XACT_HAS_INFO: u8 = 0x80;
pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_PREPARE: u8 = 0x10;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

pub const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
pub const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
pub const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
pub const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

// Block reference headers (`access/xlogrecord.h`).
pub const XLR_MAX_BLOCK_ID: u8 = 32;
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
pub const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
pub const BKPBLOCK_HAS_DATA: u8 = 0x20;
pub const BKPBLOCK_SAME_REL: u8 = 0x80;
pub const BKPIMAGE_HAS_HOLE: u8 = 0x01;

pub const fn maxalign(n: u64) -> u64 {
    n.saturating_add(7) & !7
}

/// Bounds-checked little-endian reads. `None` when the slice is too short.
pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off.checked_add(2)?)?.try_into().ok()?))
}

pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

pub fn i64_at(b: &[u8], off: usize) -> Option<i64> {
    u64_at(b, off).map(|v| v as i64)
}

/// `XLogPageHeaderData`, plus the `XLogLongPageHeaderData` tail on the first
/// page of a segment.
#[derive(Debug, Clone, Copy)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    pub pageaddr: u64,
    pub rem_len: u32,
    pub long: Option<LongTail>,
}

#[derive(Debug, Clone, Copy)]
pub struct LongTail {
    pub sysid: u64,
    pub seg_size: u32,
    pub blcksz: u32,
}

impl PageHeader {
    /// `b` is exactly 24 or 40 bytes; the caller chose the size by position.
    pub fn parse(b: &[u8]) -> Option<PageHeader> {
        let long = if b.len() >= SIZE_OF_LONG_PHD {
            Some(LongTail { sysid: u64_at(b, 24)?, seg_size: u32_at(b, 32)?, blcksz: u32_at(b, 36)? })
        } else {
            None
        };
        Some(PageHeader {
            magic: u16_at(b, 0)?,
            info: u16_at(b, 2)?,
            tli: u32_at(b, 4)?,
            pageaddr: u64_at(b, 8)?,
            rem_len: u32_at(b, 16)?,
            long,
        })
    }
}

/// `XLogRecord`, the fixed 24-byte record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: u64,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    pub fn parse(b: &[u8; SIZE_OF_XLOG_RECORD]) -> RecordHeader {
        let u32le = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut prev = [0u8; 8];
        prev.copy_from_slice(&b[8..16]);
        RecordHeader {
            tot_len: u32le(0),
            xid: u32le(4),
            prev: u64::from_le_bytes(prev),
            info: b[16],
            rmid: b[17],
            crc: u32le(20),
        }
    }

    /// The rmgr's part of `xl_info`.
    pub fn rm_info(&self) -> u8 {
        self.info & !XLR_INFO_MASK
    }

    pub fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.rm_info() == XLOG_SWITCH
    }

    /// Records whose payload we decode; all others are only checksummed.
    pub fn is_interesting(&self) -> bool {
        match self.rmid {
            RM_XACT_ID => matches!(
                self.info & XLOG_XACT_OPMASK,
                XLOG_XACT_COMMIT
                    | XLOG_XACT_PREPARE
                    | XLOG_XACT_ABORT
                    | XLOG_XACT_COMMIT_PREPARED
                    | XLOG_XACT_ABORT_PREPARED
            ),
            RM_XLOG_ID => matches!(
                self.rm_info(),
                XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE | XLOG_RESTORE_POINT | XLOG_END_OF_RECOVERY
            ),
            _ => false,
        }
    }
}

pub fn rmid_is_valid(rmid: u8) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID
}
