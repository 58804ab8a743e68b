//! Scanner tests on synthetic WAL from `testgen`.

use crate::format::*;
use crate::testgen::{WalWriter, pg15};
use crate::*;
use pgpitr_types::{Lsn, WalSegSize};

const MIB: u64 = 1 << 20;

fn seg1() -> WalSegSize {
    WalSegSize::new(MIB).unwrap()
}

fn t(us: i64) -> PgTimestamp {
    PgTimestamp(us)
}

/// Deterministic xorshift64*, to avoid a dependency for chunk sizes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Scans `bytes` (starting at `scanner.position()`) in chunks of the given
/// sizes, cycling through them.
fn scan_chunked(
    mut s: WalScanner,
    bytes: &[u8],
    sizes: &[usize],
) -> (Vec<WalEvent>, Result<(), ScanError>, WalScanner) {
    let mut out = vec![];
    let mut off = 0;
    let mut i = 0;
    while off < bytes.len() {
        let n = sizes[i % sizes.len()].clamp(1, bytes.len() - off);
        i += 1;
        if let Err(e) = s.feed(&bytes[off..off + n], &mut out) {
            return (out, Err(e), s);
        }
        off += n;
    }
    (out, Ok(()), s)
}

fn scan_all(start: Lsn, bytes: &[u8]) -> (Vec<WalEvent>, Result<(), ScanError>, WalScanner) {
    scan_chunked(WalScanner::new(start, seg1(), pg15()), bytes, &[bytes.len().max(1)])
}

/// Writes fillers so that the next record starts at `off` within a page
/// (the current page if there is room, else a later one).
fn place_next_at(w: &mut WalWriter, off: u64) {
    assert!(off.is_multiple_of(8) && off >= SIZE_OF_LONG_PHD as u64);
    let mut a = maxalign(w.pos().0);
    let hdr = |p: u64| if p % MIB < XLOG_BLCKSZ { SIZE_OF_LONG_PHD as u64 } else { SIZE_OF_SHORT_PHD as u64 };
    if a.is_multiple_of(XLOG_BLCKSZ) {
        a += hdr(a);
    }
    let mut target = a - a % XLOG_BLCKSZ + off;
    while target < a + 48 {
        target += XLOG_BLCKSZ;
    }
    let mut len = target - a;
    let mut b = a - a % XLOG_BLCKSZ + XLOG_BLCKSZ;
    while b < target {
        len -= hdr(b);
        b += XLOG_BLCKSZ;
    }
    let (_, end) = w.filler(len as usize);
    assert_eq!(end.0 % XLOG_BLCKSZ, off, "filler placement");
}

fn commit_ev(r: (Lsn, Lsn), xid: u32, time: i64) -> WalEvent {
    WalEvent::Commit { lsn: r.0, end_lsn: r.1, xid, time: t(time), two_phase: false }
}

/// A stream exercising every record kind and boundary case in 1 MiB
/// segments, with the events the scanner must report.
fn mixed_stream() -> (WalWriter, Vec<WalEvent>) {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let mut ev = vec![];
    let r = w.commit(700, t(1_000));
    ev.push(commit_ev(r, 700, 1_000));
    w.filler(100);
    let r = w.abort(701, t(1_001));
    ev.push(WalEvent::Abort { lsn: r.0, end_lsn: r.1, xid: 701, time: t(1_001), two_phase: false });
    let r = w.prepare(702, "gid-1", t(1_002));
    ev.push(WalEvent::Prepare { lsn: r.0, end_lsn: r.1, xid: 702, gid: "gid-1".into(), time: t(1_002) });
    let r = w.restore_point("before-upgrade", t(1_003));
    ev.push(WalEvent::RestorePoint { lsn: r.0, end_lsn: r.1, name: "before-upgrade".into(), time: t(1_003) });
    // Record header split across a page boundary: 8 bytes on the first page.
    place_next_at(&mut w, XLOG_BLCKSZ - 8);
    let r = w.commit(703, t(1_004));
    ev.push(commit_ev(r, 703, 1_004));
    // Header split 16/8.
    place_next_at(&mut w, XLOG_BLCKSZ - 16);
    let r = w.commit_prepared(702, t(1_005));
    ev.push(WalEvent::Commit { lsn: r.0, end_lsn: r.1, xid: 702, time: t(1_005), two_phase: true });
    // A record ending exactly at a page end, so the next page has no contrecord.
    place_next_at(&mut w, XLOG_BLCKSZ - 48);
    w.filler(48);
    assert_eq!(w.pos().0 % XLOG_BLCKSZ, 0);
    let r = w.commit(704, t(1_006));
    ev.push(commit_ev(r, 704, 1_006));
    // A record spanning several pages.
    w.filler(30_000);
    let r = w.commit(705, t(1_007));
    ev.push(commit_ev(r, 705, 1_007));
    // Fill most of the segment, then a record header split across the
    // segment boundary (long page header on the other side).
    while w.pos().0 < 2 * MIB - 3 * XLOG_BLCKSZ {
        w.filler(20_000);
    }
    place_next_at(&mut w, XLOG_BLCKSZ - 8);
    while w.pos().0 < 2 * MIB - XLOG_BLCKSZ {
        w.filler(2_000);
    }
    place_next_at(&mut w, XLOG_BLCKSZ - 8);
    let r = w.commit(706, t(1_008));
    assert!(r.0.0 < 2 * MIB && r.1.0 > 2 * MIB);
    ev.push(commit_ev(r, 706, 1_008));
    // A big record spanning the next segment boundary.
    while w.pos().0 < 3 * MIB - 2 * XLOG_BLCKSZ {
        w.filler(20_000);
    }
    let (s, e) = w.filler(40_000);
    assert!(s.0 < 3 * MIB && e.0 > 3 * MIB);
    let r = w.commit(707, t(1_009));
    ev.push(commit_ev(r, 707, 1_009));
    // XLOG_SWITCH: the rest of segment 3 is padding.
    let r = w.switch();
    assert_eq!(r.1, Lsn(4 * MIB));
    ev.push(WalEvent::Switch { lsn: r.0, end_lsn: r.1 });
    let r = w.commit(708, t(1_010));
    assert_eq!(r.0, Lsn(4 * MIB + SIZE_OF_LONG_PHD as u64));
    ev.push(commit_ev(r, 708, 1_010));
    w.filler(64);
    (w, ev)
}

#[test]
fn finds_every_event_with_exact_positions() {
    let (w, expected) = mixed_stream();
    let (events, res, s) = scan_all(w.start(), w.bytes());
    res.unwrap();
    assert_eq!(events, expected);
    assert_eq!(s.position(), w.pos());
    assert_eq!(s.last_record_end(), Some(Lsn(maxalign(w.pos().0))));
    assert_eq!(s.system_identifier(), Some(w.system_identifier()));
    assert_eq!(s.timeline().map(|t| t.0), Some(1));
    assert_eq!(s.end_of_wal(), None);
}

#[test]
fn chunking_does_not_change_results() {
    let (w, expected) = mixed_stream();
    let bytes = w.bytes();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let random: Vec<usize> = (0..5000).map(|_| 1 + rng.below(20_000) as usize).collect();
    let small: Vec<usize> = (0..5000).map(|_| 1 + rng.below(50) as usize).collect();
    for sizes in [&[1usize][..], &[7], &[24], &[8192], &[8191, 8193], &[65536], &random, &small] {
        for crc in [true, false] {
            let s = WalScanner::new(w.start(), seg1(), pg15()).verify_crc(crc);
            let (events, res, s) = scan_chunked(s, bytes, sizes);
            res.unwrap();
            assert_eq!(events, expected, "chunks {:?}.. crc {crc}", &sizes[..sizes.len().min(3)]);
            assert_eq!(s.last_record_end(), Some(Lsn(maxalign(w.pos().0))));
        }
    }
}

#[test]
fn starts_mid_stream_like_xlogfindnextrecord() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    w.commit(1, t(1));
    // A record covering pages 0..=3 of the segment.
    let (big, big_end) = w.filler(30_000);
    let first_after = w.commit(2, t(2));
    w.commit(3, t(3));
    let all = scan_all(w.start(), w.bytes()).0;
    assert_eq!(all.len(), 3);
    // From anywhere inside the big record the first record found is the one
    // after it, even starting pages before its end (rem_len >= a page).
    for start in [big.0 + 8, big.0 + 1, MIB + XLOG_BLCKSZ, MIB + XLOG_BLCKSZ + 3, big_end.0 - XLOG_BLCKSZ] {
        let bytes = &w.bytes()[w.offset_of(Lsn(start))..];
        for sizes in [&[bytes.len()][..], &[1], &[100]] {
            let (ev, res, s) = scan_chunked(WalScanner::new(Lsn(start), seg1(), pg15()), bytes, sizes);
            res.unwrap();
            assert_eq!(ev, all[1..], "start {}", Lsn(start));
            assert_eq!(s.position(), w.pos());
        }
    }
    // Starting mid-page after the big record: the rest of that page is lost
    // (no way to tell where records start), later pages are read.
    let start = first_after.1.0;
    let bytes = &w.bytes()[w.offset_of(Lsn(start))..];
    let (ev, res, _) = scan_all(Lsn(start), bytes);
    res.unwrap();
    assert!(ev.is_empty());
}

#[test]
fn resumes_at_a_record_boundary() {
    let (w, expected) = mixed_stream();
    let bytes = w.bytes();
    // Stop somewhere, then resume from last_record_end with a new scanner.
    let in_switch_padding = bytes.len() - 20_000;
    for cut in [100usize, 8_000, 8_192, 20_000, 1_048_000, 2_000_000, in_switch_padding, bytes.len() - 1] {
        let (mut ev, res, s) = scan_chunked(WalScanner::new(w.start(), seg1(), pg15()), &bytes[..cut], &[cut]);
        res.unwrap();
        let Some(resume) = s.last_record_end() else { continue };
        let s2 = WalScanner::at_record(resume, seg1(), pg15()).unwrap();
        let (ev2, res, _) = scan_chunked(s2, &bytes[w.offset_of(resume)..], &[4096]);
        res.unwrap();
        ev.extend(ev2);
        assert_eq!(ev, expected, "cut {cut}");
    }
    assert!(matches!(WalScanner::at_record(Lsn(MIB + 44), seg1(), pg15()), Err(ScanError::InvalidStart { .. })));
    assert!(matches!(WalScanner::at_record(Lsn(MIB + 8), seg1(), pg15()), Err(ScanError::InvalidStart { .. })));
    assert!(matches!(
        WalScanner::at_record(Lsn(MIB + XLOG_BLCKSZ + 16), seg1(), pg15()),
        Err(ScanError::InvalidStart { .. })
    ));
    assert!(WalScanner::at_record(Lsn(MIB + XLOG_BLCKSZ + 24), seg1(), pg15()).is_ok());
    assert!(WalScanner::at_record(Lsn(MIB + 40), seg1(), pg15()).is_ok());
}

#[test]
fn last_record_end_is_never_past_the_fed_bytes() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let (_, e1) = w.commit(1, t(1));
    let (c2, _) = w.raw_record(&{
        // A 36-byte record (4 bytes of padding after it), CRC disabled below.
        let mut r = vec![0u8; 36];
        r[0] = 36;
        r[8..16].copy_from_slice(&(MIB + 40).to_le_bytes());
        r[17] = 10;
        r
    });
    let e2 = Lsn(c2.0 + 40);
    let (sw, _) = w.switch();
    let c3 = w.commit(3, t(3));
    let bytes = w.bytes();
    let mut s = WalScanner::new(w.start(), seg1(), pg15()).verify_crc(false);
    let mut out = vec![];
    let mut fed = 0;
    let mut feed_to = |s: &mut WalScanner, lsn: Lsn| {
        let upto = w.offset_of(lsn);
        s.feed(&bytes[fed..upto], &mut out).unwrap();
        fed = upto;
    };
    feed_to(&mut s, Lsn(c2.0 + 36)); // record 2 complete, its padding not fed
    assert_eq!(s.last_record_end(), Some(e1));
    assert_eq!(s.last_record_start(), Some(c2));
    feed_to(&mut s, e2);
    assert_eq!(s.last_record_end(), Some(e2));
    feed_to(&mut s, Lsn(sw.0 + 5000)); // inside the switched segment's padding
    assert_eq!(s.last_record_end(), Some(Lsn(sw.0)));
    feed_to(&mut s, Lsn(2 * MIB));
    assert_eq!(s.last_record_end(), Some(Lsn(2 * MIB)));
    feed_to(&mut s, Lsn(c3.1.0 - 6)); // commit 3 without its padding
    assert_eq!(s.last_record_end(), Some(Lsn(2 * MIB)));
    let events = out.clone();
    s.feed(&[0; 6], &mut out).unwrap();
    assert_eq!(s.last_record_end(), Some(c3.1));
    // Each event arrived once the scan passed its end_lsn.
    assert_eq!(events.len(), 2, "commit 1 and the switch; commit 3 still pending: {events:?}");
    assert_eq!(out.len(), 3);
}

#[test]
fn at_record_rejects_a_start_inside_a_record() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    w.commit(1, t(1));
    let (big, _) = w.filler(30_000);
    w.commit(2, t(2));
    // A page whose first bytes continue a record: not a record boundary.
    let page = Lsn(MIB + XLOG_BLCKSZ);
    assert!(big.0 < page.0);
    let s = WalScanner::at_record(page, seg1(), pg15()).unwrap();
    let (_, res, _) = scan_chunked(s, &w.bytes()[w.offset_of(page)..], &[1000]);
    assert_eq!(res, Err(ScanError::UnexpectedContinuation { lsn: page }));
}

#[test]
fn zeroed_tail_ends_the_wal() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let c = w.commit(1, t(1));
    w.filler(100);
    let end = Lsn(maxalign(w.pos().0));
    w.zeros(3 * XLOG_BLCKSZ as usize);
    for sizes in [&[1usize][..], &[5000]] {
        let (ev, res, s) = scan_chunked(WalScanner::new(w.start(), seg1(), pg15()), w.bytes(), sizes);
        res.unwrap();
        assert_eq!(ev, [commit_ev(c, 1, 1)]);
        assert_eq!(s.end_of_wal(), Some(end));
        assert_eq!(s.last_record_end(), Some(end));
        assert_eq!(s.position(), w.pos());
    }
}

#[test]
fn torn_record_at_end_of_partial_segment_is_not_reported() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let c = w.commit(1, t(1));
    let (_, good_end) = w.filler(64);
    let (torn, _) = w.filler(20_000);
    // Keep the torn record's first page only, zeros after it.
    let page_end = Lsn(torn.0 - torn.0 % XLOG_BLCKSZ + XLOG_BLCKSZ);
    w.truncate(page_end, Lsn(0));
    w.zeros(2 * XLOG_BLCKSZ as usize);
    let (ev, res, s) = scan_all(w.start(), w.bytes());
    res.unwrap();
    assert_eq!(ev, [commit_ev(c, 1, 1)]);
    assert_eq!(s.end_of_wal(), Some(page_end));
    assert_eq!(s.last_record_end(), Some(good_end));
}

#[test]
fn overwritten_contrecord_is_skipped() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let c1 = w.commit(1, t(1));
    let (before, _) = w.filler(64);
    let (torn, _) = w.filler(20_000);
    let page_end = Lsn(torn.0 - torn.0 % XLOG_BLCKSZ + XLOG_BLCKSZ);
    // Crash: the torn record's tail never reached disk; recovery writes new
    // WAL from the next page on, linking back to the last whole record.
    w.truncate(page_end, before);
    w.overwrite_contrecord_page();
    let c2 = w.commit(2, t(2));
    let (ev, res, _) = scan_all(w.start(), w.bytes());
    res.unwrap();
    assert_eq!(ev, [commit_ev(c1, 1, 1), commit_ev(c2, 2, 2)]);
}

#[test]
fn timestamps_and_summary() {
    let (w, expected) = mixed_stream();
    let (events, res, _) = scan_all(w.start(), w.bytes());
    res.unwrap();
    let s = ScanSummary::from_events(&events);
    assert_eq!(s.commits, 8);
    assert_eq!(s.aborts, 1);
    assert_eq!(s.first_commit.unwrap().lsn, expected[0].lsn());
    assert_eq!(s.last_commit.unwrap().time, t(1_010));
    assert_eq!(s.restore_points.len(), 1);
    assert_eq!(s.restore_points[0].name, "before-upgrade");
}

// ---- corrupt input: errors that name the LSN, never panics ----

fn corrupt(f: impl FnOnce(&mut WalWriter) -> Lsn) -> (ScanError, Lsn, Vec<WalEvent>) {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let at = f(&mut w);
    w.filler(64);
    let mut last = None;
    for sizes in [&[usize::MAX][..], &[1], &[13]] {
        let (ev, res, s) = scan_chunked(WalScanner::new(w.start(), seg1(), pg15()), w.bytes(), sizes);
        let e = res.expect_err("corruption must be reported");
        assert_eq!(e.lsn(), at, "{e}");
        // The scanner stays failed.
        assert_eq!(s.clone().feed(&[0], &mut vec![]), Err(e.clone()));
        last = Some((e, ev));
    }
    let (e, ev) = last.unwrap();
    (e, at, ev)
}

fn patch(w: &mut WalWriter, lsn: Lsn, bytes: &[u8]) {
    let off = w.offset_of(lsn);
    w.bytes_mut()[off..off + bytes.len()].copy_from_slice(bytes);
}

#[test]
fn bad_magic() {
    let (e, at, _) = corrupt(|w| {
        w.commit(1, t(1));
        w.bytes_mut()[0] = 0x0D;
        w.start()
    });
    assert_eq!(e, ScanError::BadMagic { lsn: at, magic: 0xD10D, expected: 0xD110 });
    assert_eq!(
        e.to_string(),
        "invalid magic number D10D in WAL page at 0/100000 (the repository's PostgreSQL major writes D110)"
    );
    // The same bytes are 14's, and read as such.
    let mut w = WalWriter::new(Lsn(1 << 20), WalSegSize::new(1 << 20).unwrap());
    w.commit(1, t(1));
    w.bytes_mut()[0] = 0x0D;
    let pg14 = pgpitr_types::PgMajor::from_major(14).unwrap().wal_format();
    let mut s = WalScanner::new(Lsn(1 << 20), WalSegSize::new(1 << 20).unwrap(), pg14);
    let mut events = Vec::new();
    s.feed(w.bytes(), &mut events).unwrap();
    assert!(events.iter().any(|e| matches!(e, WalEvent::Commit { .. })), "{events:?}");
}

#[test]
fn bad_pageaddr() {
    let (e, _, _) = corrupt(|w| {
        w.filler(10_000);
        let page = Lsn(MIB + XLOG_BLCKSZ);
        patch(w, Lsn(page.0 + 8), &(page.0 - MIB).to_le_bytes());
        page
    });
    assert!(matches!(e, ScanError::UnexpectedPageAddr { found: Lsn(0x2000), .. }), "{e}");
}

#[test]
fn wrong_segment_size_and_long_header_placement() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    w.commit(1, t(1));
    let seg16 = WalSegSize::new(16 * MIB).unwrap();
    let mut out = vec![];
    // A 16 MiB scanner sees a long header mid-segment.
    let e = WalScanner::new(w.start(), seg16, pg15()).feed(w.bytes(), &mut out).unwrap_err();
    assert!(matches!(e, ScanError::BadPageInfo { .. }), "{e}");
    // A 2 MiB scanner at a 2 MiB boundary sees the wrong xlp_seg_size.
    let mut w = WalWriter::new(Lsn(2 * MIB), seg1());
    w.commit(1, t(1));
    let e =
        WalScanner::new(w.start(), WalSegSize::new(2 * MIB).unwrap(), pg15()).feed(w.bytes(), &mut out).unwrap_err();
    assert_eq!(e, ScanError::SegSizeMismatch { lsn: Lsn(2 * MIB), found: MIB, expected: 2 * MIB });
}

#[test]
fn crc_mismatch() {
    let (e, at, ev) = corrupt(|w| {
        w.commit(1, t(1));
        let (c, _) = w.commit(2, t(2));
        let off = w.offset_of(c) + 30;
        w.bytes_mut()[off] ^= 1;
        c
    });
    assert!(matches!(e, ScanError::Crc { .. }), "{e}");
    assert!(e.to_string().starts_with(&format!("incorrect resource manager data checksum in record at {at}")));
    assert_eq!(ev.len(), 1, "the commit before is still reported");
}

#[test]
fn crc_mismatch_in_a_record_crossing_pages() {
    let (e, _, _) = corrupt(|w| {
        let (f, _) = w.filler(20_000);
        let off = w.offset_of(f) + 15_000;
        w.bytes_mut()[off] ^= 0x80;
        f
    });
    assert!(matches!(e, ScanError::Crc { .. }), "{e}");
}

#[test]
fn crc_check_can_be_disabled() {
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let (c, _) = w.commit(2, t(2));
    let off = w.offset_of(c) + 20;
    w.bytes_mut()[off] ^= 1; // the stored CRC itself
    let mut out = vec![];
    WalScanner::new(w.start(), seg1(), pg15()).verify_crc(false).feed(w.bytes(), &mut out).unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn absurd_and_tiny_record_lengths() {
    let (e, at, _) = corrupt(|w| {
        let (c, _) = w.commit(1, t(1));
        patch(w, c, &0xFFFF_FFF0u32.to_le_bytes());
        c
    });
    assert_eq!(e, ScanError::RecordTooLong { lsn: at, len: 0xFFFF_FFF0 });
    let (e, at, _) = corrupt(|w| {
        let (c, _) = w.commit(1, t(1));
        patch(w, c, &5u32.to_le_bytes());
        c
    });
    assert_eq!(e, ScanError::RecordTooShort { lsn: at, len: 5 });
    assert_eq!(e.to_string(), format!("invalid record length at {at}: expected at least 24, got 5"));
}

#[test]
fn bad_rmid_and_prev_link() {
    let (e, _, _) = corrupt(|w| {
        let (c, _) = w.commit(1, t(1));
        patch(w, Lsn(c.0 + 17), &[60]);
        c
    });
    assert!(matches!(e, ScanError::InvalidRmgr { rmid: 60, .. }), "{e}");
    let (e, _, _) = corrupt(|w| {
        w.commit(1, t(1));
        let (c, _) = w.commit(2, t(2));
        patch(w, Lsn(c.0 + 8), &12345u64.to_le_bytes());
        c
    });
    assert!(matches!(e, ScanError::BadPrevLink { found: Lsn(12345), .. }), "{e}");
}

#[test]
fn missing_or_wrong_continuation() {
    let (e, _, _) = corrupt(|w| {
        w.filler(20_000);
        let page = Lsn(MIB + XLOG_BLCKSZ);
        patch(w, Lsn(page.0 + 2), &0u16.to_le_bytes()); // clear XLP_FIRST_IS_CONTRECORD
        page
    });
    assert!(matches!(e, ScanError::MissingContinuation { record: Lsn(0x100028), .. }), "{e}");
    let (e, _, _) = corrupt(|w| {
        w.filler(20_000);
        let page = Lsn(MIB + XLOG_BLCKSZ);
        patch(w, Lsn(page.0 + 16), &999u32.to_le_bytes());
        page
    });
    assert!(matches!(e, ScanError::BadContinuationLength { rem_len: 999, .. }), "{e}");
}

#[test]
fn timeline_must_not_go_backwards() {
    let mut w = WalWriter::new(Lsn(MIB), seg1()).timeline(3);
    w.filler(8000);
    w.set_timeline(2);
    w.filler(8000);
    let mut out = vec![];
    let e = WalScanner::new(w.start(), seg1(), pg15()).feed(w.bytes(), &mut out).unwrap_err();
    assert_eq!(e, ScanError::TimelineRegressed { lsn: Lsn(MIB + XLOG_BLCKSZ), found: 2, previous: 3 });
}

#[test]
fn undecodable_commit_is_an_error_not_a_skip() {
    let (e, at, _) = corrupt(|w| {
        // A COMMIT_PREPARED without the two-phase xid, properly checksummed.
        let d = testgen::main_data(&[0u8; 12]);
        w.record(RM_XACT_ID, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, 0, &d).0
    });
    assert!(matches!(e, ScanError::Decode { lsn, .. } if lsn == at), "{e}");
}

#[test]
fn position_overflow_is_an_error() {
    let mut s = WalScanner::new(Lsn(u64::MAX - 4), seg1(), pg15());
    let mut out = vec![];
    assert!(s.feed(&[0; 4], &mut out).is_ok());
    assert!(matches!(s.feed(&[0; 4], &mut out), Err(ScanError::PositionOverflow { .. })));
}

/// Random damage anywhere, fed in random chunks: an error or a clean scan,
/// never a panic or a hang.
#[test]
fn random_corruption_never_panics() {
    let (w, _) = mixed_stream();
    let clean = w.bytes();
    let mut rng = Rng(42);
    for round in 0..300 {
        let mut bytes = clean[..(clean.len() / 4 + rng.below(clean.len() as u64 / 2) as usize)].to_vec();
        for _ in 0..1 + rng.below(4) {
            // Bias hits toward headers: first bytes of pages and records.
            let i = if round % 2 == 0 {
                (rng.below(bytes.len() as u64 / 8192) * 8192 + rng.below(64)) as usize
            } else {
                rng.below(bytes.len() as u64) as usize
            };
            if i < bytes.len() {
                bytes[i] = rng.next() as u8;
            }
        }
        let sizes: Vec<usize> = (0..64).map(|_| 1 + rng.below(9000) as usize).collect();
        let start = if round % 3 == 0 { Lsn(MIB + rng.below(30_000)) } else { Lsn(MIB) };
        let from = (start.0 - MIB) as usize;
        let _ = scan_chunked(WalScanner::new(start, seg1(), pg15()), &bytes[from..], &sizes);
    }
    // Pure garbage.
    for seed in 1..50 {
        let mut rng = Rng(seed);
        let garbage: Vec<u8> = (0..40_000).map(|_| rng.next() as u8).collect();
        let _ = scan_chunked(WalScanner::new(Lsn(rng.below(1 << 40)), seg1(), pg15()), &garbage, &[777]);
        let s = WalScanner::at_record(Lsn(MIB + 40), seg1(), pg15()).unwrap();
        let _ = scan_chunked(s, &garbage, &[3]);
    }
}

#[test]
fn decoded_only_crc_checks_event_records_and_skips_the_rest() {
    // Bit rot in a filler record (in place, and across pages): unnoticed,
    // and the events around it still come out.
    for (size, at) in [(200usize, 100usize), (20_000, 15_000)] {
        let mut w = WalWriter::new(Lsn(MIB), seg1());
        w.commit(1, t(1));
        let (f, _) = w.filler(size);
        w.commit(2, t(2));
        let off = w.offset_of(f) + at;
        w.bytes_mut()[off] ^= 0x80;
        let mut out = vec![];
        WalScanner::new(w.start(), seg1(), pg15()).verify_crc_of_decoded_only().feed(w.bytes(), &mut out).unwrap();
        assert_eq!(out.len(), 2, "filler of {size}");
        let full = WalScanner::new(w.start(), seg1(), pg15()).feed(w.bytes(), &mut vec![]).unwrap_err();
        assert!(matches!(full, ScanError::Crc { .. }), "{full}");
    }
    // Bit rot in a commit record: refused, as with full checking.
    let mut w = WalWriter::new(Lsn(MIB), seg1());
    let (c, _) = w.commit(2, t(2));
    let off = w.offset_of(c) + 30;
    w.bytes_mut()[off] ^= 1;
    let e = WalScanner::new(w.start(), seg1(), pg15())
        .verify_crc_of_decoded_only()
        .feed(w.bytes(), &mut vec![])
        .unwrap_err();
    assert!(matches!(e, ScanError::Crc { .. }), "{e}");
}
