use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the Unix epoch to the Postgres epoch, 2000-01-01 00:00:00 UTC.
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_UNIX_SECS * 1_000_000;

/// A Postgres `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
///
/// This is the raw value from WAL, so it keeps Postgres's range and its two
/// sentinels (`-infinity` = `i64::MIN`, `infinity` = `i64::MAX`). It prints
/// as RFC 3339 with microseconds, `2026-11-21T10:42:16.123456Z`, and
/// serialises as that string (as the raw integer if it has no such form).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    pub const NEG_INFINITY: PgTimestamp = PgTimestamp(i64::MIN);
    pub const INFINITY: PgTimestamp = PgTimestamp(i64::MAX);
    /// 2000-01-01 00:00:00 UTC.
    pub const PG_EPOCH: PgTimestamp = PgTimestamp(0);

    pub fn from_unix_micros(us: i64) -> Option<Self> {
        us.checked_sub(PG_EPOCH_UNIX_MICROS).map(PgTimestamp)
    }

    pub fn to_unix_micros(self) -> Option<i64> {
        self.0.checked_add(PG_EPOCH_UNIX_MICROS)
    }

    /// From whole Unix seconds (`pg_time_t`, as checkpoint records store it).
    pub fn from_unix_secs(secs: i64) -> Option<Self> {
        Self::from_unix_micros(secs.checked_mul(1_000_000)?)
    }

    pub fn is_finite(self) -> bool {
        self != Self::INFINITY && self != Self::NEG_INFINITY
    }

    /// `None` for the infinities and for values outside jiff's years -9999..=9999.
    pub fn to_jiff(self) -> Option<jiff::Timestamp> {
        if !self.is_finite() {
            return None;
        }
        jiff::Timestamp::from_microsecond(self.to_unix_micros()?).ok()
    }

    /// Truncates to whole microseconds, as Postgres does.
    pub fn from_jiff(ts: jiff::Timestamp) -> Option<Self> {
        Self::from_unix_micros(ts.as_microsecond())
    }

    pub fn to_system_time(self) -> Option<SystemTime> {
        if !self.is_finite() {
            return None;
        }
        let us = self.to_unix_micros()?;
        if us >= 0 {
            UNIX_EPOCH.checked_add(Duration::from_micros(us.unsigned_abs()))
        } else {
            UNIX_EPOCH.checked_sub(Duration::from_micros(us.unsigned_abs()))
        }
    }

    pub fn from_system_time(t: SystemTime) -> Option<Self> {
        let us = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).ok()?,
            Err(e) => i64::try_from(e.duration().as_micros()).ok()?.checked_neg()?,
        };
        Self::from_unix_micros(us)
    }
}

impl fmt::Display for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::INFINITY => f.write_str("infinity"),
            Self::NEG_INFINITY => f.write_str("-infinity"),
            _ => match self.to_jiff() {
                Some(ts) => write!(f, "{ts:.6}"),
                // Postgres allows years up to 294276; jiff stops at 9999.
                None => write!(f, "{}us since 2000-01-01", self.0),
            },
        }
    }
}

impl fmt::Debug for PgTimestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTimestamp({self})")
    }
}

/// Error from parsing a [`PgTimestamp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {0:?}: expected RFC 3339, e.g. 2026-11-21T10:42:16.123456Z")]
pub struct TimestampParseError(pub String);

impl FromStr for PgTimestamp {
    type Err = TimestampParseError;
    fn from_str(s: &str) -> Result<Self, TimestampParseError> {
        let err = || TimestampParseError(s.to_string());
        match s.trim() {
            "infinity" => Ok(Self::INFINITY),
            "-infinity" => Ok(Self::NEG_INFINITY),
            t => Self::from_jiff(t.parse::<jiff::Timestamp>().map_err(|_| err())?).ok_or_else(err),
        }
    }
}

impl serde::Serialize for PgTimestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_finite() && self.to_jiff().is_none() {
            return s.serialize_i64(self.0);
        }
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PgTimestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PgTimestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or microseconds since 2000-01-01")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PgTimestamp, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PgTimestamp, E> {
                Ok(PgTimestamp(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PgTimestamp, E> {
                i64::try_from(v).map(PgTimestamp).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_offset() {
        assert_eq!(PgTimestamp(0).to_unix_micros(), Some(946_684_800_000_000));
        assert_eq!(PgTimestamp::from_unix_micros(946_684_800_000_001), Some(PgTimestamp(1)));
        assert_eq!(PgTimestamp::from_unix_secs(0), Some(PgTimestamp(-946_684_800_000_000)));
        assert_eq!(PgTimestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(PgTimestamp::from_unix_micros(i64::MIN), None);
        assert_eq!(PgTimestamp(i64::MAX - 1).to_unix_micros(), None);
    }

    #[test]
    fn display_parse_round_trip() {
        // 2026-11-21 10:42:16.123456 UTC
        let t = PgTimestamp::from_unix_micros(1_795_257_736_123_456).unwrap();
        assert_eq!(t.to_string(), "2026-11-21T10:42:16.123456Z");
        assert_eq!("2026-11-21T10:42:16.123456Z".parse::<PgTimestamp>().unwrap(), t);
        assert_eq!("2026-11-21T11:42:16.123456+01:00".parse::<PgTimestamp>().unwrap(), t);
        assert_eq!(PgTimestamp(-1).to_string(), "1999-12-31T23:59:59.999999Z");
        assert_eq!(PgTimestamp::INFINITY.to_string(), "infinity");
        assert_eq!("-infinity".parse::<PgTimestamp>().unwrap(), PgTimestamp::NEG_INFINITY);
        assert!("yesterday".parse::<PgTimestamp>().is_err());
        // Beyond year 9999: printed raw, never a panic.
        assert_eq!(PgTimestamp(i64::MAX - 1).to_string(), format!("{}us since 2000-01-01", i64::MAX - 1));
    }

    #[test]
    fn system_time_round_trip() {
        for us in [0i64, 1, -1, 1_795_257_736_123_456, -946_684_800_000_000 - 5] {
            let t = PgTimestamp(us);
            assert_eq!(PgTimestamp::from_system_time(t.to_system_time().unwrap()), Some(t));
        }
        assert_eq!(PgTimestamp::INFINITY.to_system_time(), None);
    }

    #[test]
    fn serde_forms() {
        let t = PgTimestamp(123_456);
        let j = serde_json::to_string(&t).unwrap();
        assert_eq!(j, "\"2000-01-01T00:00:00.123456Z\"");
        assert_eq!(serde_json::from_str::<PgTimestamp>(&j).unwrap(), t);
        let far = PgTimestamp(i64::MAX - 7);
        let j = serde_json::to_string(&far).unwrap();
        assert_eq!(serde_json::from_str::<PgTimestamp>(&j).unwrap(), far);
        let inf = serde_json::to_string(&PgTimestamp::INFINITY).unwrap();
        assert_eq!(inf, "\"infinity\"");
        assert_eq!(serde_json::from_str::<PgTimestamp>("42").unwrap(), PgTimestamp(42));
        assert!(serde_json::from_str::<PgTimestamp>("\"soon\"").is_err());
    }
}
