//! WAL domain types: positions, timelines, segments, file names and timeline
//! history. Pure values and parsers; this crate does no I/O.
//!
//! Every segment computation takes a [`WalSegSize`] read from the server
//! (`wal_segment_size`), because clusters may be initialised with any power of
//! two between 1 MiB and 1 GiB.

mod history;
mod identity;
mod lsn;
mod major;
mod segment;

pub use history::{HistoryEntry, TimelineHistory};
pub use identity::ClusterIdentity;
pub use lsn::Lsn;
pub use major::{BaseBackupDialect, PgMajor, UnsupportedMajor, WalFormat, supported_list};
pub use segment::{SegNo, WalFileName, WalSegSize};

use std::fmt;
use std::str::FromStr;

/// Errors from parsing WAL names and values. Always says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid LSN {0:?}: expected two hex numbers as X/Y")]
    Lsn(String),
    #[error("invalid timeline {0:?}: expected a number from 1 to 4294967295")]
    Timeline(String),
    #[error("invalid WAL segment size {0}: must be a power of two from 1 MiB to 1 GiB")]
    SegSize(u64),
    #[error("invalid WAL file name {0:?}")]
    WalFileName(String),
    #[error("invalid timeline history line {line}: {text:?}")]
    History { line: usize, text: String },
}

/// A timeline ID. Postgres starts at 1 and adds one at every promotion;
/// 0 never names a real timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct TimelineId(pub u32);

impl TimelineId {
    pub const FIRST: TimelineId = TimelineId(1);

    pub fn new(v: u32) -> Result<Self, ParseError> {
        if v == 0 {
            return Err(ParseError::Timeline(v.to_string()));
        }
        Ok(TimelineId(v))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for TimelineId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let v: u32 = s.trim().parse().map_err(|_| ParseError::Timeline(s.to_string()))?;
        TimelineId::new(v).map_err(|_| ParseError::Timeline(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_parse() {
        assert_eq!("10".parse::<TimelineId>().unwrap(), TimelineId(10));
        assert!("0".parse::<TimelineId>().is_err());
        assert!("x".parse::<TimelineId>().is_err());
        assert!("-1".parse::<TimelineId>().is_err());
        assert_eq!(TimelineId(0xA).to_string(), "10");
    }
}
