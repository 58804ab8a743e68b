//! Payload decoding for the few record types we report. Only runs after the
//! record's CRC matched, so a failure here means our reading of the format
//! disagrees with Postgres: it is an error, never a silently skipped commit.

use crate::format::*;
use crate::{PgTimestamp, ScanError, WalEvent};
use pgpitr_types::{Lsn, TimelineId, WalFormat};

/// Forward-only bounds-checked reader over a byte slice.
struct Cursor<'a> {
    b: &'a [u8],
    off: usize,
}

const SHORT: &str = "record data ends early";

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Cursor { b, off: 0 }
    }

    fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.off)
    }

    fn skip(&mut self, n: usize) -> Result<(), &'static str> {
        if n > self.remaining() {
            return Err(SHORT);
        }
        self.off += n;
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let s = self.b.get(self.off..self.off.saturating_add(N)).ok_or(SHORT)?;
        self.off += N;
        s.try_into().map_err(|_| SHORT)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, &'static str> {
        Ok(i64::from_le_bytes(self.take()?))
    }

    /// Skips an `int n; T items[n]` array.
    fn skip_array(&mut self, item_size: usize) -> Result<(), &'static str> {
        let n = self.u32()? as i32;
        let n = usize::try_from(n).map_err(|_| "negative array length")?;
        self.skip(n.checked_mul(item_size).ok_or(SHORT)?)
    }
}

/// Walks the block-reference headers (as `DecodeXLogRecord` does) to find the
/// main data, which is always the last `main_data_len` bytes of the record.
/// `data` is the record without its 24-byte header.
pub(crate) fn main_data<'a>(data: &'a [u8], format: &WalFormat) -> Result<&'a [u8], &'static str> {
    let mut c = Cursor::new(data);
    // Bytes of block images, block data and main data announced so far.
    let mut datatotal: u64 = 0;
    let mut main_len: u64 = 0;
    let mut last_block: Option<u8> = None;
    let mut have_rel = false;
    while c.remaining() as u64 > datatotal {
        match c.u8()? {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(c.u8()?);
                datatotal += main_len;
                break; // main data header is always last
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u64::from(c.u32()?);
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => c.skip(2)?,
            XLR_BLOCK_ID_TOPLEVEL_XID => c.skip(4)?,
            id if id <= XLR_MAX_BLOCK_ID => {
                if last_block.is_some_and(|l| id <= l) {
                    return Err("out-of-order block_id");
                }
                last_block = Some(id);
                let fork_flags = c.u8()?;
                let data_len = c.u16()?;
                if (fork_flags & BKPBLOCK_HAS_DATA != 0) != (data_len != 0) {
                    return Err("BKPBLOCK_HAS_DATA disagrees with the block data length");
                }
                datatotal += u64::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let bimg_len = c.u16()?;
                    let _hole_offset = c.u16()?;
                    let bimg_info = c.u8()?;
                    // A compressed image with a hole stores the hole length;
                    // uncompressed ones derive it from the image length.
                    if bimg_info & format.bkpimage_compressed != 0 && bimg_info & BKPIMAGE_HAS_HOLE != 0 {
                        c.skip(2)?;
                    }
                    datatotal += u64::from(bimg_len);
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    c.skip(12)?; // RelFileNode
                    have_rel = true;
                } else if !have_rel {
                    return Err("BKPBLOCK_SAME_REL set but no previous rel");
                }
                c.skip(4)?; // BlockNumber
            }
            _ => return Err("invalid block_id"),
        }
    }
    if c.remaining() as u64 != datatotal {
        return Err("record length disagrees with its block and data headers");
    }
    let start = data.len().checked_sub(main_len as usize).ok_or(SHORT)?;
    Ok(&data[start..])
}

/// Decodes an interesting record (see `RecordHeader::is_interesting`).
pub(crate) fn decode(
    hdr: &RecordHeader,
    data: &[u8],
    lsn: Lsn,
    end_lsn: Lsn,
    format: &WalFormat,
) -> Result<Option<WalEvent>, ScanError> {
    let err = |what: &'static str| move |reason: &'static str| ScanError::Decode { lsn, what, reason };
    let main = main_data(data, format).map_err(err("block reference headers of a"))?;
    match hdr.rmid {
        RM_XACT_ID => decode_xact(hdr, main, lsn, end_lsn, format).map_err(err("transaction")),
        RM_XLOG_ID => decode_xlog(hdr, main, lsn, end_lsn).map_err(err("XLOG")),
        _ => Ok(None),
    }
}

fn decode_xact(
    hdr: &RecordHeader,
    main: &[u8],
    lsn: Lsn,
    end_lsn: Lsn,
    format: &WalFormat,
) -> Result<Option<WalEvent>, &'static str> {
    let op = hdr.info & XLOG_XACT_OPMASK;
    if op == XLOG_XACT_PREPARE {
        // The main data is the two-phase state file, starting with
        // xl_xact_prepare (72 bytes, 64 in 14): xid at 8, prepared_at at 16,
        // gidlen 18 bytes before its end; the NUL-terminated GID follows at
        // its (MAXALIGNed) end.
        let head = format.prepare_header_len;
        let xid = u32_at(main, 8).ok_or(SHORT)?;
        let time = PgTimestamp(i64_at(main, 16).ok_or(SHORT)?);
        let gidlen = usize::from(u16_at(main, head - 18).ok_or(SHORT)?);
        let gid = main.get(head..head + gidlen).ok_or(SHORT)?;
        let gid = gid.split(|&b| b == 0).next().unwrap_or_default();
        let gid = String::from_utf8_lossy(gid).into_owned();
        return Ok(Some(WalEvent::Prepare { lsn, end_lsn, xid, gid, time }));
    }
    // xl_xact_commit / xl_xact_abort: xact_time, then optional parts in the
    // order ParseCommitRecord / ParseAbortRecord read them.
    let mut c = Cursor::new(main);
    let time = PgTimestamp(c.i64()?);
    let xinfo = if hdr.info & XLOG_XACT_HAS_INFO != 0 { c.u32()? } else { 0 };
    let is_commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
    let two_phase = matches!(op, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED);
    let xid = if two_phase {
        if xinfo & XACT_XINFO_HAS_TWOPHASE == 0 {
            return Err("prepared transaction record without the prepared xid");
        }
        if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
            c.skip(8)?; // dbId, tsId
        }
        if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
            c.skip_array(4)?;
        }
        if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
            c.skip_array(12)?;
        }
        if let Some(item) = format.dropped_stats_item_len
            && xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0
        {
            c.skip_array(item)?; // xl_xact_stats_item: kind, dboid, objid
        }
        // Abort records never carry invalidations.
        if is_commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
            c.skip_array(16)?; // SharedInvalidationMessage
        }
        c.u32()?
    } else {
        hdr.xid
    };
    Ok(Some(if is_commit {
        WalEvent::Commit { lsn, end_lsn, xid, time, two_phase }
    } else {
        WalEvent::Abort { lsn, end_lsn, xid, time, two_phase }
    }))
}

fn decode_xlog(hdr: &RecordHeader, main: &[u8], lsn: Lsn, end_lsn: Lsn) -> Result<Option<WalEvent>, &'static str> {
    match hdr.rm_info() {
        XLOG_RESTORE_POINT => {
            // xl_restore_point: rp_time, then rp_name[64] NUL-terminated.
            let time = PgTimestamp(i64_at(main, 0).ok_or(SHORT)?);
            let name = main.get(8..72).ok_or(SHORT)?;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            let name = String::from_utf8_lossy(name).into_owned();
            Ok(Some(WalEvent::RestorePoint { lsn, end_lsn, name, time }))
        }
        op @ (XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE) => {
            // CheckPoint (88 bytes in 15): redo at 0, ThisTimeLineID at 8,
            // PrevTimeLineID at 12, time (pg_time_t, Unix seconds) at 64.
            let redo = Lsn(u64_at(main, 0).ok_or(SHORT)?);
            let tli = TimelineId(u32_at(main, 8).ok_or(SHORT)?);
            let prev_tli = TimelineId(u32_at(main, 12).ok_or(SHORT)?);
            let secs = i64_at(main, 64).ok_or(SHORT)?;
            let time = PgTimestamp::from_unix_secs(secs).ok_or("checkpoint time out of range")?;
            let shutdown = op == XLOG_CHECKPOINT_SHUTDOWN;
            Ok(Some(WalEvent::Checkpoint { lsn, end_lsn, redo, tli, prev_tli, time, shutdown }))
        }
        XLOG_END_OF_RECOVERY => {
            // xl_end_of_recovery: end_time, ThisTimeLineID, PrevTimeLineID.
            let time = PgTimestamp(i64_at(main, 0).ok_or(SHORT)?);
            let tli = TimelineId(u32_at(main, 8).ok_or(SHORT)?);
            let prev_tli = TimelineId(u32_at(main, 12).ok_or(SHORT)?);
            Ok(Some(WalEvent::EndOfRecovery { lsn, end_lsn, tli, prev_tli, time }))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_data_short_and_long() {
        let mut d = vec![XLR_BLOCK_ID_DATA_SHORT, 3, 1, 2, 3];
        assert_eq!(main_data(&d, &crate::testgen::pg15()).unwrap(), &[1, 2, 3]);
        d.push(0);
        assert!(main_data(&d, &crate::testgen::pg15()).is_err(), "trailing byte");
        let mut d = vec![XLR_BLOCK_ID_DATA_LONG];
        d.extend_from_slice(&300u32.to_le_bytes());
        d.extend(std::iter::repeat_n(7u8, 300));
        assert_eq!(main_data(&d, &crate::testgen::pg15()).unwrap().len(), 300);
        assert!(main_data(&d[..d.len() - 1], &crate::testgen::pg15()).is_err());
        assert_eq!(main_data(&[], &crate::testgen::pg15()).unwrap(), &[] as &[u8]);
    }

    #[test]
    fn main_data_after_blocks_images_origin_and_toplevel_xid() {
        let mut d = vec![XLR_BLOCK_ID_ORIGIN, 1, 0, XLR_BLOCK_ID_TOPLEVEL_XID, 9, 9, 9, 9];
        // Block 0: compressed image with a hole (extra hole_length), plus data.
        d.extend([0, BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA]);
        d.extend(5u16.to_le_bytes()); // data_len
        d.extend(10u16.to_le_bytes()); // bimg_len
        d.extend(100u16.to_le_bytes()); // hole_offset
        d.push(BKPIMAGE_HAS_HOLE | 0x08); // LZ4
        d.extend(50u16.to_le_bytes()); // hole_length
        d.extend([0u8; 12]); // RelFileNode
        d.extend([0u8; 4]); // BlockNumber
        // Block 1: same rel, uncompressed image with hole (no hole_length), no data.
        d.extend([1, BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL]);
        d.extend(0u16.to_le_bytes());
        d.extend(8u16.to_le_bytes());
        d.extend(0u16.to_le_bytes());
        d.push(BKPIMAGE_HAS_HOLE);
        d.extend([0u8; 4]);
        d.extend([XLR_BLOCK_ID_DATA_SHORT, 2]);
        d.extend([0xAA; 10]); // image 0
        d.extend([0xBB; 5]); // data 0
        d.extend([0xCC; 8]); // image 1
        d.extend([0x11, 0x22]); // main data
        assert_eq!(main_data(&d, &crate::testgen::pg15()).unwrap(), &[0x11, 0x22]);
    }

    #[test]
    fn main_data_rejects_malformed_headers() {
        for bad in [
            vec![40u8],                                   // block id 40 is not a thing
            vec![0, BKPBLOCK_SAME_REL, 0, 0, 0, 0, 0, 0], // same rel without a rel
            vec![0, BKPBLOCK_HAS_DATA, 0, 0],             // has data, length 0
            vec![0, 0, 1, 0],                             // data length without the flag
            vec![XLR_BLOCK_ID_ORIGIN],                    // truncated
            vec![XLR_BLOCK_ID_DATA_LONG, 255, 255, 255, 255],
        ] {
            assert!(main_data(&bad, &crate::testgen::pg15()).is_err(), "{bad:?}");
        }
        let mut d = vec![1, 0, 0, 0];
        d.extend([0u8; 16]);
        d.extend([0, 0, 0, 0]);
        d.extend([0u8; 16]);
        assert_eq!(main_data(&d, &crate::testgen::pg15()), Err("out-of-order block_id"));
    }
}
