use crate::{ParseError, SegNo, WalSegSize};
use std::fmt;
use std::str::FromStr;

/// A WAL position (log sequence number): a byte offset into the WAL stream.
/// Prints and parses as Postgres does, `X/Y` in upper-case hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);
    pub const MAX: Lsn = Lsn(u64::MAX);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    pub fn checked_sub(self, other: Lsn) -> Option<u64> {
        self.0.checked_sub(other.0)
    }

    pub fn segment_number(self, seg: WalSegSize) -> SegNo {
        SegNo(self.0 / seg.bytes())
    }

    pub fn segment_offset(self, seg: WalSegSize) -> u64 {
        self.0 % seg.bytes()
    }

    /// True at the first byte of a segment.
    pub fn is_segment_start(self, seg: WalSegSize) -> bool {
        self.segment_offset(seg) == 0
    }

    /// The segment boundary at or below this position.
    pub fn segment_floor(self, seg: WalSegSize) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg))
    }

    /// Bytes from `self` up to `other` (zero when `other` is not ahead).
    pub fn distance_to(self, other: Lsn) -> u64 {
        other.0.saturating_sub(self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::Lsn(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for v in [0u64, 1, 0x1_0000_0000, 0xFFFF_FFFF, 0x1_0000_0001, 0x16_B374_D848, u64::MAX] {
            let s = Lsn(v).to_string();
            assert_eq!(s.parse::<Lsn>().unwrap(), Lsn(v), "{s}");
        }
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!("0/3000028".parse::<Lsn>().unwrap(), Lsn(0x300_0028));
        assert_eq!("a/ff".parse::<Lsn>().unwrap(), Lsn(0xA_0000_00FF));
    }

    #[test]
    fn rejects_malformed() {
        for s in ["", "/", "1/", "/1", "1", "g/1", "1/2/3", "123456789/0", "0/123456789", "-1/0"] {
            assert!(s.parse::<Lsn>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn crossing_the_32_bit_boundary() {
        let before = "0/FFFFFFFF".parse::<Lsn>().unwrap();
        let after = before.checked_add(1).unwrap();
        assert_eq!(after.to_string(), "1/0");
        let seg = WalSegSize::new(16 * 1024 * 1024).unwrap();
        assert_eq!(before.segment_number(seg), SegNo(255));
        assert_eq!(after.segment_number(seg), SegNo(256));
        assert!(after.is_segment_start(seg));
        assert_eq!(Lsn::MAX.checked_add(1), None);
    }

    #[test]
    fn segment_math_follows_segment_size() {
        let one_mib = WalSegSize::new(1 << 20).unwrap();
        let one_gib = WalSegSize::new(1 << 30).unwrap();
        let lsn = Lsn(0x1_4020_0010);
        assert_eq!(lsn.segment_number(one_mib), SegNo(0x1402));
        assert_eq!(lsn.segment_offset(one_mib), 0x10);
        assert_eq!(lsn.segment_number(one_gib), SegNo(5));
        assert_eq!(lsn.segment_floor(one_gib), Lsn(0x1_4000_0000));
    }

    #[test]
    fn serde_as_string() {
        let j = serde_json::to_string(&Lsn(0x1_0000_0002)).unwrap();
        assert_eq!(j, "\"1/2\"");
        assert_eq!(serde_json::from_str::<Lsn>(&j).unwrap(), Lsn(0x1_0000_0002));
        assert!(serde_json::from_str::<Lsn>("\"zz\"").is_err());
    }
}
