use crate::{Lsn, ParseError, TimelineId};
use std::fmt;

/// The cluster's WAL segment size: a power of two from 1 MiB to 1 GiB, as
/// `initdb --wal-segsize` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct WalSegSize(u32);

impl WalSegSize {
    pub const MIN: u64 = 1 << 20;
    pub const MAX: u64 = 1 << 30;

    pub fn new(bytes: u64) -> Result<Self, ParseError> {
        if !(Self::MIN..=Self::MAX).contains(&bytes) || !bytes.is_power_of_two() {
            return Err(ParseError::SegSize(bytes));
        }
        Ok(WalSegSize(bytes as u32))
    }

    pub fn bytes(self) -> u64 {
        self.0 as u64
    }

    /// Segments per 4 GiB "xlogid", the high part of a segment file name.
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }

    /// Parses the server's `SHOW wal_segment_size` text, e.g. `16MB` or `1GB`.
    pub fn from_show(text: &str) -> Result<Self, ParseError> {
        let t = text.trim();
        let (num, mult) = if let Some(n) = t.strip_suffix("GB") {
            (n, 1u64 << 30)
        } else if let Some(n) = t.strip_suffix("MB") {
            (n, 1 << 20)
        } else if let Some(n) = t.strip_suffix("kB") {
            (n, 1 << 10)
        } else {
            (t, 1)
        };
        let n: u64 = num.trim().parse().map_err(|_| ParseError::SegSize(0))?;
        Self::new(n.checked_mul(mult).ok_or(ParseError::SegSize(u64::MAX))?)
    }
}

impl From<WalSegSize> for u64 {
    fn from(s: WalSegSize) -> u64 {
        s.bytes()
    }
}

impl TryFrom<u64> for WalSegSize {
    type Error = ParseError;
    fn try_from(v: u64) -> Result<Self, ParseError> {
        WalSegSize::new(v)
    }
}

impl fmt::Display for WalSegSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.bytes();
        if b >= 1 << 30 { write!(f, "{}GB", b >> 30) } else { write!(f, "{}MB", b >> 20) }
    }
}

/// A WAL segment number: the LSN divided by the segment size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SegNo(pub u64);

impl SegNo {
    pub fn start_lsn(self, seg: WalSegSize) -> Option<Lsn> {
        self.0.checked_mul(seg.bytes()).map(Lsn)
    }

    /// The first LSN past this segment.
    pub fn end_lsn(self, seg: WalSegSize) -> Option<Lsn> {
        self.0.checked_add(1)?.checked_mul(seg.bytes()).map(Lsn)
    }

    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

impl fmt::Display for SegNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The names Postgres gives files in `pg_wal` and asks for in `restore_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileName {
    /// `TTTTTTTTXXXXXXXXYYYYYYYY`
    Segment { tli: TimelineId, segno: SegNo },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.partial`: the last, unfinished segment of a
    /// timeline, as pg_receivewal and a promoted standby leave it.
    Partial { tli: TimelineId, segno: SegNo },
    /// `TTTTTTTT.history`
    History { tli: TimelineId },
    /// `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup`: a backup history file.
    Backup { tli: TimelineId, segno: SegNo, offset: u32 },
}

impl WalFileName {
    pub fn segment(tli: TimelineId, segno: SegNo) -> Self {
        WalFileName::Segment { tli, segno }
    }

    pub fn tli(&self) -> TimelineId {
        match *self {
            WalFileName::Segment { tli, .. }
            | WalFileName::Partial { tli, .. }
            | WalFileName::History { tli }
            | WalFileName::Backup { tli, .. } => tli,
        }
    }

    /// Parses any of the four forms. The segment size is needed because the
    /// low eight hex digits count segments within one 4 GiB xlogid.
    pub fn parse(name: &str, seg: WalSegSize) -> Result<Self, ParseError> {
        let err = || ParseError::WalFileName(name.to_string());
        let hex8 = |s: &str| -> Result<u32, ParseError> {
            if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(s, 16).map_err(|_| err())
        };
        let tli_of = |s: &str| TimelineId::new(hex8(s)?).map_err(|_| err());
        let segno_of = |s: &str| -> Result<SegNo, ParseError> {
            let log = hex8(&s[..8])? as u64;
            let low = hex8(&s[8..16])? as u64;
            if low >= seg.segments_per_xlogid() {
                return Err(err());
            }
            Ok(SegNo(log * seg.segments_per_xlogid() + low))
        };
        if !name.is_ascii() {
            return Err(err());
        }
        if let Some(t) = name.strip_suffix(".history") {
            return Ok(WalFileName::History { tli: tli_of(t)? });
        }
        if let Some(base) = name.strip_suffix(".partial") {
            if base.len() != 24 {
                return Err(err());
            }
            return Ok(WalFileName::Partial { tli: tli_of(&base[..8])?, segno: segno_of(&base[8..])? });
        }
        if let Some(base) = name.strip_suffix(".backup") {
            if base.len() != 33 || base.as_bytes()[24] != b'.' {
                return Err(err());
            }
            return Ok(WalFileName::Backup {
                tli: tli_of(&base[..8])?,
                segno: segno_of(&base[8..24])?,
                offset: hex8(&base[25..])?,
            });
        }
        if name.len() != 24 {
            return Err(err());
        }
        Ok(WalFileName::Segment { tli: tli_of(&name[..8])?, segno: segno_of(&name[8..])? })
    }

    /// Formats the name; the inverse of [`WalFileName::parse`].
    pub fn to_name(&self, seg: WalSegSize) -> String {
        let base = |tli: TimelineId, segno: SegNo| {
            let per = seg.segments_per_xlogid();
            format!("{:08X}{:08X}{:08X}", tli.0, segno.0 / per, segno.0 % per)
        };
        match *self {
            WalFileName::Segment { tli, segno } => base(tli, segno),
            WalFileName::Partial { tli, segno } => format!("{}.partial", base(tli, segno)),
            WalFileName::History { tli } => format!("{:08X}.history", tli.0),
            WalFileName::Backup { tli, segno, offset } => {
                format!("{}.{:08X}.backup", base(tli, segno), offset)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sz(b: u64) -> WalSegSize {
        WalSegSize::new(b).unwrap()
    }

    #[test]
    fn seg_size_bounds() {
        assert!(WalSegSize::new(1 << 20).is_ok());
        assert!(WalSegSize::new(1 << 30).is_ok());
        assert!(WalSegSize::new(1 << 19).is_err());
        assert!(WalSegSize::new(1 << 31).is_err());
        assert!(WalSegSize::new(3 << 20).is_err());
        assert_eq!(WalSegSize::from_show("16MB").unwrap().bytes(), 16 << 20);
        assert_eq!(WalSegSize::from_show("1GB").unwrap().bytes(), 1 << 30);
        assert_eq!(WalSegSize::from_show("1024kB").unwrap().bytes(), 1 << 20);
        assert!(WalSegSize::from_show("banana").is_err());
        assert_eq!(sz(64 << 20).to_string(), "64MB");
        assert_eq!(sz(1 << 30).to_string(), "1GB");
    }

    #[test]
    fn segment_name_round_trip_16mib() {
        let seg = sz(16 << 20);
        let name = "000000010000000A000000FF";
        let parsed = WalFileName::parse(name, seg).unwrap();
        assert_eq!(parsed, WalFileName::Segment { tli: TimelineId(1), segno: SegNo(0xA * 256 + 0xFF) });
        assert_eq!(parsed.to_name(seg), name);
        // 0x100 is not a valid low part with 256 segments per xlogid.
        assert!(WalFileName::parse("000000010000000A00000100", seg).is_err());
    }

    #[test]
    fn segment_names_for_extreme_sizes() {
        let mib = sz(1 << 20);
        let n = WalFileName::parse("0000000100000003000003FF", mib).unwrap();
        assert_eq!(n, WalFileName::Segment { tli: TimelineId(1), segno: SegNo(3 * 4096 + 0x3FF) });
        assert_eq!(n.to_name(mib), "0000000100000003000003FF");
        let gib = sz(1 << 30);
        let n = WalFileName::parse("000000010000000300000003", gib).unwrap();
        assert_eq!(n, WalFileName::Segment { tli: TimelineId(1), segno: SegNo(15) });
        assert!(WalFileName::parse("000000010000000300000004", gib).is_err());
        // The segment that holds LSN 3/C0000000 with 1 GiB segments.
        let lsn: Lsn = "3/C0000000".parse().unwrap();
        assert_eq!(
            WalFileName::segment(TimelineId(1), lsn.segment_number(gib)).to_name(gib),
            "000000010000000300000003"
        );
    }

    #[test]
    fn timelines_print_as_hex() {
        let seg = sz(16 << 20);
        let n = WalFileName::segment(TimelineId(0xA), SegNo(1));
        assert_eq!(n.to_name(seg), "0000000A0000000000000001");
        assert_eq!(WalFileName::parse("0000000A0000000000000001", seg).unwrap(), n);
        let h = WalFileName::History { tli: TimelineId(0x1F) };
        assert_eq!(h.to_name(seg), "0000001F.history");
        assert_eq!(WalFileName::parse("0000001F.history", seg).unwrap(), h);
        assert!(WalFileName::parse("00000000.history", seg).is_err());
    }

    #[test]
    fn partial_and_backup_names() {
        let seg = sz(16 << 20);
        let p = WalFileName::parse("000000020000000000000003.partial", seg).unwrap();
        assert_eq!(p, WalFileName::Partial { tli: TimelineId(2), segno: SegNo(3) });
        assert_eq!(p.to_name(seg), "000000020000000000000003.partial");
        let b = WalFileName::parse("000000010000000000000002.00000028.backup", seg).unwrap();
        assert_eq!(b, WalFileName::Backup { tli: TimelineId(1), segno: SegNo(2), offset: 0x28 });
        assert_eq!(b.to_name(seg), "000000010000000000000002.00000028.backup");
    }

    #[test]
    fn rejects_garbage() {
        let seg = sz(16 << 20);
        for n in [
            "",
            "00000001",
            "00000001000000000000000",
            "0000000100000000000000001",
            "00000001000000000000000G",
            "000000000000000000000001",
            "000000010000000000000001.partia",
            "000000010000000000000001.0000028.backup",
            "0000000é000000000000001",
            "../../etc/passwd",
        ] {
            assert!(WalFileName::parse(n, seg).is_err(), "{n:?}");
        }
    }

    #[test]
    fn segno_bounds() {
        let seg = sz(16 << 20);
        assert_eq!(SegNo(2).start_lsn(seg), Some(Lsn(0x200_0000)));
        assert_eq!(SegNo(2).end_lsn(seg), Some(Lsn(0x300_0000)));
        assert_eq!(SegNo(u64::MAX).end_lsn(seg), None);
    }
}
