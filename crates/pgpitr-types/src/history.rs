use crate::{Lsn, ParseError, TimelineId};

/// One line of a `.history` file: `parent` ended, and its child began, at
/// `switchpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    pub switchpoint: Lsn,
    pub reason: String,
}

/// The contents of `TTTTTTTT.history` for timeline `tli`: every ancestor
/// timeline, oldest first, with the LSN where it was left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    pub tli: TimelineId,
    pub entries: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parses the server's format: tab-separated `parent switchpoint reason`
    /// lines; blank lines and `#` comments are ignored, as Postgres does.
    pub fn parse(tli: TimelineId, text: &str) -> Result<Self, ParseError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || ParseError::History { line: i + 1, text: raw.to_string() };
            let mut fields = line.splitn(3, ['\t', ' ']);
            let parent: TimelineId = fields.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
            let switchpoint: Lsn = fields.next().ok_or_else(bad)?.trim().parse().map_err(|_| bad())?;
            let reason = fields.next().unwrap_or("").trim().to_string();
            if parent >= tli {
                return Err(bad());
            }
            if let Some(prev) = entries.last()
                && (parent <= prev.parent || switchpoint < prev.switchpoint)
            {
                return Err(bad());
            }
            entries.push(HistoryEntry { parent, switchpoint, reason });
        }
        Ok(TimelineHistory { tli, entries })
    }

    pub fn format(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            out.push_str(&format!("{}\t{}\t{}\n", e.parent, e.switchpoint, e.reason));
        }
        out
    }

    /// The timeline that holds WAL at `lsn` when following this history:
    /// the first ancestor whose switchpoint lies beyond `lsn`, else `tli`.
    pub fn timeline_at(&self, lsn: Lsn) -> TimelineId {
        self.entries.iter().find(|e| lsn < e.switchpoint).map(|e| e.parent).unwrap_or(self.tli)
    }

    /// Where timeline `t` ends on this path (`None` for the newest one, which
    /// has no end yet, or for a timeline not on the path).
    pub fn end_of(&self, t: TimelineId) -> Option<Lsn> {
        self.entries.iter().find(|e| e.parent == t).map(|e| e.switchpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str =
        "1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/50000A0\tbefore 2026-11-21 10:42:16+00\n";

    #[test]
    fn parse_and_format() {
        let h = TimelineHistory::parse(TimelineId(3), SAMPLE).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.entries[0].parent, TimelineId(1));
        assert_eq!(h.entries[0].switchpoint, Lsn(0x300_0000));
        assert_eq!(h.entries[1].reason, "before 2026-11-21 10:42:16+00");
        let again = TimelineHistory::parse(TimelineId(3), &h.format()).unwrap();
        assert_eq!(again, h);
    }

    #[test]
    fn timeline_lookup() {
        let h = TimelineHistory::parse(TimelineId(3), SAMPLE).unwrap();
        assert_eq!(h.timeline_at(Lsn(0x100)), TimelineId(1));
        assert_eq!(h.timeline_at(Lsn(0x300_0000)), TimelineId(2));
        assert_eq!(h.timeline_at(Lsn(0x500_00A0)), TimelineId(3));
        assert_eq!(h.end_of(TimelineId(1)), Some(Lsn(0x300_0000)));
        assert_eq!(h.end_of(TimelineId(3)), None);
    }

    #[test]
    fn high_timelines() {
        let h = TimelineHistory::parse(TimelineId(0x10), "15\t1/0\tx\n").unwrap();
        assert_eq!(h.entries[0].parent, TimelineId(15));
    }

    #[test]
    fn rejects_bad_lines() {
        for text in ["x\t0/1\tr", "1\tzz\tr", "1", "3\t0/1\tchild not older", "2\t0/5\ta\n1\t0/6\tb"] {
            assert!(TimelineHistory::parse(TimelineId(3), text).is_err(), "{text:?}");
        }
    }
}
