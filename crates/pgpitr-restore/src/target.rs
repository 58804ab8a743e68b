//! What a restore aims at: the recovery target, the timeline to follow and
//! what Postgres does on arrival. Parsing only; no I/O.

use pgpitr_types::{Lsn, TimelineId};
use std::fmt;

/// The point a restore recovers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the stored WAL on the target timeline, unfinished tail included.
    Latest,
    /// The end of the backup: the earliest consistent point.
    Immediate,
    /// Commit timestamps, Unix microseconds (UTC).
    Time(i64),
    Lsn(Lsn),
    /// As Postgres does, only the low 32 bits count (an epoch-qualified
    /// `xid8` is accepted and truncated).
    Xid(u64),
    /// A restore point made with `pg_create_restore_point(name)`.
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Latest => f.write_str("latest (the end of the stored WAL)"),
            Target::Immediate => f.write_str("immediate (the end of the backup)"),
            Target::Time(us) => write!(f, "time {}", format_time(*us)),
            Target::Lsn(l) => write!(f, "LSN {l}"),
            Target::Xid(x) => write!(f, "transaction {x}"),
            Target::Name(n) => write!(f, "restore point {n:?}"),
        }
    }
}

/// Which timeline recovery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimelineTarget {
    /// The newest timeline with WAL in the repository.
    #[default]
    Latest,
    /// The backup's own timeline.
    Current,
    Id(TimelineId),
}

impl std::str::FromStr for TimelineTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "latest" => Ok(TimelineTarget::Latest),
            "current" => Ok(TimelineTarget::Current),
            n => n
                .parse::<TimelineId>()
                .map(TimelineTarget::Id)
                .map_err(|_| format!("invalid timeline {s:?}: expected latest, current or a number from 1")),
        }
    }
}

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetAction {
    #[default]
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Unix microseconds as Postgres prints a `timestamptz` in UTC:
/// `2026-11-21 10:42:16.123456+00` (fraction only when non-zero).
pub fn format_time(us: i64) -> String {
    match jiff::Timestamp::from_microsecond(us) {
        Ok(t) => t.to_zoned(jiff::tz::TimeZone::UTC).strftime("%Y-%m-%d %H:%M:%S%.f+00").to_string(),
        Err(_) => format!("(invalid time {us} µs)"),
    }
}

const FORMS: &str = "2026-11-21 10:42:16+00, 2026-11-21T10:42:16.5Z, 2026-11-21 10:42:16.5 UTC, \
                     2026-11-21 10:42:16-08:00, 2026-11-21 10:42:16 Europe/Berlin";

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    #[error(
        "timestamp {0:?} has no time zone, so it could mean different moments; add an offset or zone \
         (accepted forms: {FORMS}) or pass --timezone <IANA name>"
    )]
    NoZone(String),
    #[error("invalid timestamp {input:?}: {why} (accepted forms: {FORMS})")]
    Invalid { input: String, why: String },
    #[error("unknown time zone {0:?}: expected an IANA name such as UTC or Europe/Berlin")]
    UnknownZone(String),
    #[error("timestamp {input:?} is ambiguous or skipped in {zone} (a daylight-saving change); give an offset instead")]
    Ambiguous { input: String, zone: String },
}

/// Parses a recovery target time: RFC 3339 or Postgres `timestamptz` text
/// (`YYYY-MM-DD[ T]HH:MM[:SS[.frac]][ ]zone`, zone being `Z`, `UTC`, `GMT`,
/// `±HH`, `±HHMM`, `±HH:MM[:SS]` or an IANA name). Without a zone the
/// `default_zone` (an IANA name from `--timezone`) applies; with neither the
/// input is refused. Fractions beyond microseconds are rounded, as Postgres
/// rounds them. Returns Unix microseconds.
pub fn parse_time(input: &str, default_zone: Option<&str>) -> Result<i64, TimeParseError> {
    let invalid = |why: &str| TimeParseError::Invalid { input: input.to_string(), why: why.to_string() };
    let s = input.trim();
    // Date: YYYY-MM-DD.
    let (date, rest) = s.split_at_checked(10).ok_or_else(|| invalid("expected a date YYYY-MM-DD"))?;
    let dparts: Vec<&str> = date.split('-').collect();
    if dparts.len() != 3 || dparts[0].len() != 4 || dparts[1].len() != 2 || dparts[2].len() != 2 {
        return Err(invalid("expected a date YYYY-MM-DD"));
    }
    let num = |p: &str, what: &str| -> Result<i64, TimeParseError> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(&format!("bad {what}")));
        }
        p.parse::<i64>().map_err(|_| invalid(&format!("bad {what}")))
    };
    let (year, month, day) = (num(dparts[0], "year")?, num(dparts[1], "month")?, num(dparts[2], "day")?);
    // Separator: 'T' or spaces.
    let rest = match rest.strip_prefix(['T', 't']) {
        Some(r) => r,
        None if rest.starts_with(' ') => rest.trim_start(),
        None => return Err(invalid("expected a time after the date")),
    };
    // Time: HH:MM[:SS[.frac]], up to the first character that starts a zone.
    let time_len = rest.find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.')).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_len);
    let tparts: Vec<&str> = time.split(':').collect();
    if !(2..=3).contains(&tparts.len()) || tparts[0].len() != 2 || tparts[1].len() != 2 {
        return Err(invalid("expected a time HH:MM[:SS[.fraction]]"));
    }
    let (hour, minute) = (num(tparts[0], "hour")?, num(tparts[1], "minute")?);
    let (second, frac_ns, carry_us) = match tparts.get(2) {
        None => (0, 0i64, 0i64),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            if whole.len() != 2 {
                return Err(invalid("expected seconds as two digits"));
            }
            let whole = num(whole, "seconds")?;
            if sec.contains('.') && frac.is_empty() {
                return Err(invalid("empty fraction of a second"));
            }
            let (micros, carry) = round_fraction_to_micros(frac).ok_or_else(|| invalid("bad fraction of a second"))?;
            (whole, micros * 1000, carry)
        }
    };
    let dt = jiff::civil::DateTime::new(
        year as i16,
        month as i8,
        day as i8,
        hour as i8,
        minute as i8,
        second as i8,
        frac_ns as i32,
    )
    .map_err(|e| invalid(&e.to_string()))?;
    let zone = zone.trim();
    let zoned = if zone.is_empty() {
        let Some(name) = default_zone else { return Err(TimeParseError::NoZone(input.trim().to_string())) };
        in_named_zone(input, dt, name)?
    } else if let Some(offset) = parse_offset(zone) {
        let offset = offset.ok_or_else(|| invalid("bad zone offset"))?;
        dt.to_zoned(jiff::tz::TimeZone::fixed(offset)).map_err(|e| invalid(&e.to_string()))?
    } else {
        in_named_zone(input, dt, zone)?
    };
    zoned.timestamp().as_microsecond().checked_add(carry_us).ok_or_else(|| invalid("out of range"))
}

fn in_named_zone(input: &str, dt: jiff::civil::DateTime, name: &str) -> Result<jiff::Zoned, TimeParseError> {
    let tz = match name {
        "UTC" | "utc" | "GMT" | "gmt" | "Z" | "z" => jiff::tz::TimeZone::UTC,
        _ => jiff::tz::TimeZone::get(name).map_err(|_| TimeParseError::UnknownZone(name.to_string()))?,
    };
    tz.to_ambiguous_zoned(dt)
        .unambiguous()
        .map_err(|_| TimeParseError::Ambiguous { input: input.trim().to_string(), zone: name.to_string() })
}

/// `Some(Some(offset))` for a numeric offset or `Z`, `Some(None)` for a
/// malformed numeric one, `None` when the text is not numeric (a zone name).
fn parse_offset(zone: &str) -> Option<Option<jiff::tz::Offset>> {
    if zone == "Z" || zone == "z" {
        return Some(Some(jiff::tz::Offset::UTC));
    }
    let (sign, digits) = match zone.as_bytes().first()? {
        b'+' => (1i32, &zone[1..]),
        b'-' => (-1i32, &zone[1..]),
        _ => return None,
    };
    let parse = || -> Option<jiff::tz::Offset> {
        let two = |s: &str| -> Option<i32> {
            (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
        };
        let (h, m, s) = if digits.contains(':') {
            let p: Vec<&str> = digits.split(':').collect();
            match p.as_slice() {
                [h, m] => (two(h)?, two(m)?, 0),
                [h, m, s] => (two(h)?, two(m)?, two(s)?),
                _ => return None,
            }
        } else {
            match digits.len() {
                1 if digits.as_bytes()[0].is_ascii_digit() => (digits.parse().ok()?, 0, 0),
                2 => (two(digits)?, 0, 0),
                4 => (two(&digits[..2])?, two(&digits[2..])?, 0),
                _ => return None,
            }
        };
        if h > 15 || m > 59 || s > 59 {
            return None;
        }
        jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60 + s)).ok()
    };
    Some(parse())
}

/// Digits after the decimal point to whole microseconds, rounding half up,
/// and the microseconds carried into the next second (`.9999995` gives
/// `(0, 1_000_000)`).
fn round_fraction_to_micros(frac: &str) -> Option<(i64, i64)> {
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 18 {
        return None;
    }
    let mut digits: Vec<u8> = frac.bytes().map(|b| b - b'0').collect();
    digits.resize(digits.len().max(7), 0);
    let mut micros: i64 = digits[..6].iter().fold(0, |acc, &d| acc * 10 + d as i64);
    if digits[6] >= 5 {
        micros += 1;
    }
    if micros == 1_000_000 { Some((0, 1_000_000)) } else { Some((micros, 0)) }
}

/// Parses `--target-xid`: a decimal transaction id, 32-bit or epoch-qualified.
pub fn parse_xid(s: &str) -> Result<u64, String> {
    let v: u64 = s.trim().parse().map_err(|_| format!("invalid transaction id {s:?}: expected a decimal number"))?;
    if v & 0xFFFF_FFFF < 3 {
        return Err(format!("invalid transaction id {s:?}: 0, 1 and 2 are not ordinary transactions"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_microsecond()
    }

    #[test]
    fn accepted_forms() {
        let want = us("2026-11-21T10:42:16Z");
        for s in [
            "2026-11-21 10:42:16+00",
            "2026-11-21 10:42:16+00:00",
            "2026-11-21 10:42:16+0000",
            "2026-11-21T10:42:16Z",
            "2026-11-21t10:42:16z",
            "2026-11-21 10:42:16 UTC",
            "2026-11-21 10:42:16 GMT",
            "  2026-11-21   10:42:16Z ",
            "2026-11-21 11:42:16+01",
            "2026-11-21 05:12:16-05:30",
            "2026-11-21 11:42:16 Europe/Berlin",
            "2026-11-21 10:42:16.000000+00",
        ] {
            assert_eq!(parse_time(s, None), Ok(want), "{s}");
        }
        assert_eq!(parse_time("2026-11-21 10:42:16.5 UTC", None), Ok(want + 500_000));
        assert_eq!(parse_time("2026-11-21 10:42+00", None), Ok(want - 16_000_000));
        assert_eq!(parse_time("2026-11-21T10:42:16.123456789Z", None), Ok(want + 123_457));
        assert_eq!(parse_time("2026-11-21T10:42:16.9999996Z", None), Ok(want + 1_000_000));
    }

    #[test]
    fn no_zone_needs_timezone() {
        let e = parse_time("2026-11-21 10:42:16", None).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TimeParseError::NoZone(_)));
        assert!(msg.contains("2026-11-21 10:42:16+00") && msg.contains("--timezone"), "{msg}");
        let berlin = parse_time("2026-11-21 11:42:16", Some("Europe/Berlin")).unwrap();
        assert_eq!(berlin, us("2026-11-21T10:42:16Z"));
        // An explicit offset wins over --timezone.
        assert_eq!(parse_time("2026-11-21 10:42:16Z", Some("Europe/Berlin")).unwrap(), us("2026-11-21T10:42:16Z"));
        assert!(matches!(parse_time("2026-11-21 10:42:16", Some("Mars/Olympus")), Err(TimeParseError::UnknownZone(_))));
        // 02:30 does not exist on the spring-forward day in Berlin.
        assert!(matches!(
            parse_time("2026-03-29 02:30:00", Some("Europe/Berlin")),
            Err(TimeParseError::Ambiguous { .. })
        ));
    }

    #[test]
    fn refused_forms() {
        for s in [
            "",
            "yesterday",
            "2026-11-21",
            "2026-11-21 25:00:00Z",
            "2026-13-01 10:00:00Z",
            "2026-11-21 10:42:16.Z",
            "2026-11-21 10:42:16+1:00",
            "2026-11-21 10:42:16+99",
            "2026-11-21 10:42:16 Nowhere/Land",
            "2026-11-21X10:42:16Z",
            "11/21/2026 10:42:16Z",
            "2026-11-21 1:2:3Z",
        ] {
            assert!(parse_time(s, None).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn formatting_round_trips() {
        let t = us("2026-11-21T10:42:16.123456Z");
        assert_eq!(format_time(t), "2026-11-21 10:42:16.123456+00");
        assert_eq!(parse_time(&format_time(t), None), Ok(t));
        assert_eq!(format_time(us("2026-11-21T10:42:16Z")), "2026-11-21 10:42:16+00");
    }

    #[test]
    fn timeline_and_xid() {
        assert_eq!("latest".parse(), Ok(TimelineTarget::Latest));
        assert_eq!("current".parse(), Ok(TimelineTarget::Current));
        assert_eq!("3".parse(), Ok(TimelineTarget::Id(TimelineId(3))));
        assert!("0".parse::<TimelineTarget>().is_err());
        assert_eq!(parse_xid("1234"), Ok(1234));
        assert_eq!(parse_xid(" 4294968530 "), Ok(4_294_968_530));
        assert!(parse_xid("2").is_err() && parse_xid("x").is_err());
    }
}
