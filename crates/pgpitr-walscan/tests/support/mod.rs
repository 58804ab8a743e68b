//! Reading `pg_waldump` output and scanning `pg_wal` files, to compare the
//! scanner with Postgres's own reader.

#![allow(dead_code)]

use pgpitr_types::{Lsn, SegNo, TimelineId, WalFileName, WalSegSize};
use pgpitr_walscan::{PgTimestamp, WalEvent, WalScanner};
use std::path::Path;

/// One record `pg_waldump` printed that the scanner should report too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumped {
    pub lsn: Lsn,
    pub kind: String,
    /// Transaction or two-phase xid as the scanner reports it.
    pub xid: Option<u32>,
    pub time: Option<PgTimestamp>,
    pub name: Option<String>,
}

/// Parses `pg_waldump` (PostgreSQL 15) lines, run with `TZ=UTC`, e.g.
/// `rmgr: Transaction len (rec/tot): 34/ 34, tx: 735, lsn: 0/0151B8E0, prev 0/0151B8A8, desc: COMMIT 2026-11-21 10:42:16.123456 UTC`.
pub fn parse_waldump(out: &str) -> Vec<Dumped> {
    let mut v = vec![];
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("rmgr: ") else { continue };
        let rmgr = rest.split_whitespace().next().unwrap();
        let field = |name: &str| -> &str {
            let i = line.find(name).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len();
            line[i..].trim_start().split([',', ' ']).next().unwrap()
        };
        let lsn: Lsn = field("lsn:").parse().unwrap();
        let tx: u32 = field("tx:").parse().unwrap();
        let desc = &line[line.find("desc: ").unwrap() + 6..];
        let (kind, args) = desc.split_once(' ').unwrap_or((desc, ""));
        let args = args.split(';').next().unwrap().trim();
        let ts = |s: &str| -> PgTimestamp {
            let s = s.trim().strip_suffix(" UTC").unwrap_or_else(|| panic!("run pg_waldump with TZ=UTC: {line}"));
            format!("{}Z", s.replacen(' ', "T", 1)).parse().unwrap()
        };
        let d = match (rmgr, kind) {
            ("Transaction", "COMMIT" | "ABORT") => {
                Dumped { lsn, kind: kind.into(), xid: Some(tx), time: Some(ts(args)), name: None }
            }
            ("Transaction", "COMMIT_PREPARED" | "ABORT_PREPARED") => {
                let (xid, t) = args.split_once(": ").unwrap();
                Dumped { lsn, kind: kind.into(), xid: Some(xid.parse().unwrap()), time: Some(ts(t)), name: None }
            }
            ("Transaction", "PREPARE") => {
                let (gid, t) = args.strip_prefix("gid ").unwrap().split_once(": ").unwrap();
                Dumped { lsn, kind: kind.into(), xid: Some(tx), time: Some(ts(t)), name: Some(gid.into()) }
            }
            ("XLOG", "RESTORE_POINT") => {
                Dumped { lsn, kind: kind.into(), xid: None, time: None, name: Some(args.into()) }
            }
            ("XLOG", "SWITCH" | "CHECKPOINT_ONLINE" | "CHECKPOINT_SHUTDOWN" | "END_OF_RECOVERY") => {
                Dumped { lsn, kind: kind.into(), xid: None, time: None, name: None }
            }
            _ => continue,
        };
        v.push(d);
    }
    v
}

/// The scanner's events in the same shape (restore point and checkpoint
/// times are not printed by pg_waldump, so they are left out).
pub fn as_dumped(events: &[WalEvent]) -> Vec<Dumped> {
    events
        .iter()
        .map(|e| match e {
            WalEvent::Commit { lsn, xid, time, two_phase, .. } => Dumped {
                lsn: *lsn,
                kind: if *two_phase { "COMMIT_PREPARED" } else { "COMMIT" }.into(),
                xid: Some(*xid),
                time: Some(*time),
                name: None,
            },
            WalEvent::Abort { lsn, xid, time, two_phase, .. } => Dumped {
                lsn: *lsn,
                kind: if *two_phase { "ABORT_PREPARED" } else { "ABORT" }.into(),
                xid: Some(*xid),
                time: Some(*time),
                name: None,
            },
            WalEvent::Prepare { lsn, xid, gid, time, .. } => Dumped {
                lsn: *lsn,
                kind: "PREPARE".into(),
                xid: Some(*xid),
                time: Some(*time),
                name: Some(gid.clone()),
            },
            WalEvent::RestorePoint { lsn, name, .. } => {
                Dumped { lsn: *lsn, kind: "RESTORE_POINT".into(), xid: None, time: None, name: Some(name.clone()) }
            }
            WalEvent::Checkpoint { lsn, shutdown, .. } => Dumped {
                lsn: *lsn,
                kind: if *shutdown { "CHECKPOINT_SHUTDOWN" } else { "CHECKPOINT_ONLINE" }.into(),
                xid: None,
                time: None,
                name: None,
            },
            WalEvent::EndOfRecovery { lsn, .. } => {
                Dumped { lsn: *lsn, kind: "END_OF_RECOVERY".into(), xid: None, time: None, name: None }
            }
            WalEvent::Switch { lsn, .. } => {
                Dumped { lsn: *lsn, kind: "SWITCH".into(), xid: None, time: None, name: None }
            }
            other => panic!("unexpected event {other:?}"),
        })
        .collect()
}

/// The WAL bytes from `from` up to `to`, read from the segment files in `pg_wal`.
pub fn read_wal(pg_wal: &Path, tli: TimelineId, seg: WalSegSize, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = Vec::with_capacity(from.distance_to(to) as usize);
    let mut segno = from.segment_number(seg);
    while segno.start_lsn(seg).unwrap() < to {
        let name = WalFileName::segment(tli, segno).to_name(seg);
        let data = std::fs::read(pg_wal.join(&name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
        assert_eq!(data.len() as u64, seg.bytes(), "{name}");
        let lo = from.0.max(segno.start_lsn(seg).unwrap().0) - segno.start_lsn(seg).unwrap().0;
        let hi = to.0.min(segno.end_lsn(seg).unwrap().0) - segno.start_lsn(seg).unwrap().0;
        out.extend_from_slice(&data[lo as usize..hi as usize]);
        segno = SegNo(segno.0 + 1);
    }
    out
}

/// Scans `bytes` (which begin at the scanner's position) in chunks of the
/// given sizes, cycling.
pub fn scan(mut s: WalScanner, bytes: &[u8], sizes: &[usize]) -> (Vec<WalEvent>, WalScanner) {
    let mut out = vec![];
    let mut off = 0;
    let mut i = 0;
    while off < bytes.len() {
        let n = sizes[i % sizes.len()].clamp(1, bytes.len() - off);
        i += 1;
        s.feed(&bytes[off..off + n], &mut out).unwrap_or_else(|e| panic!("scan failed: {e}"));
        off += n;
    }
    (out, s)
}
