use crate::{PgTimestamp, WalEvent};
use pgpitr_types::Lsn;

/// A transaction commit as the summary keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitPoint {
    pub lsn: Lsn,
    pub end_lsn: Lsn,
    pub xid: u32,
    pub time: PgTimestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestorePointInfo {
    pub lsn: Lsn,
    pub end_lsn: Lsn,
    pub name: String,
    pub time: PgTimestamp,
}

/// What a stretch of WAL contained, small enough for per-object metadata.
///
/// Commits include `COMMIT PREPARED`. Commit times need not rise with LSN:
/// a backend takes its commit time before it inserts the record, so under
/// concurrency a later record can carry an earlier time. Hence both the
/// first/last commit by LSN and the min/max commit time.
///
/// [`ScanSummary::merge`] is order-independent, so summaries of adjacent
/// objects can be combined in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScanSummary {
    pub first_commit: Option<CommitPoint>,
    pub last_commit: Option<CommitPoint>,
    pub min_commit_time: Option<PgTimestamp>,
    pub max_commit_time: Option<PgTimestamp>,
    pub commits: u64,
    pub aborts: u64,
    /// In LSN order.
    pub restore_points: Vec<RestorePointInfo>,
}

impl ScanSummary {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a WalEvent>) -> Self {
        let mut s = ScanSummary::default();
        for e in events {
            s.add(e);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == ScanSummary::default()
    }

    pub fn add(&mut self, event: &WalEvent) {
        match *event {
            WalEvent::Commit { lsn, end_lsn, xid, time, .. } => {
                let c = CommitPoint { lsn, end_lsn, xid, time };
                self.add_commits(1, Some(c), Some(c), Some(time), Some(time));
            }
            WalEvent::Abort { .. } => self.aborts = self.aborts.saturating_add(1),
            WalEvent::RestorePoint { lsn, end_lsn, ref name, time } => {
                self.add_restore_point(RestorePointInfo { lsn, end_lsn, name: name.clone(), time });
            }
            _ => {}
        }
    }

    pub fn merge(&mut self, other: &ScanSummary) {
        self.add_commits(
            other.commits,
            other.first_commit,
            other.last_commit,
            other.min_commit_time,
            other.max_commit_time,
        );
        self.aborts = self.aborts.saturating_add(other.aborts);
        for rp in &other.restore_points {
            self.add_restore_point(rp.clone());
        }
    }

    fn add_commits(
        &mut self,
        n: u64,
        first: Option<CommitPoint>,
        last: Option<CommitPoint>,
        min: Option<PgTimestamp>,
        max: Option<PgTimestamp>,
    ) {
        self.commits = self.commits.saturating_add(n);
        self.first_commit = pick(self.first_commit, first, |a, b| b.lsn < a.lsn);
        self.last_commit = pick(self.last_commit, last, |a, b| b.lsn > a.lsn);
        self.min_commit_time = pick(self.min_commit_time, min, |a, b| b < a);
        self.max_commit_time = pick(self.max_commit_time, max, |a, b| b > a);
    }

    fn add_restore_point(&mut self, rp: RestorePointInfo) {
        // Usually appended in order; the search keeps merge order-independent.
        let at = self.restore_points.partition_point(|r| r.lsn <= rp.lsn);
        self.restore_points.insert(at, rp);
    }
}

/// `b` replaces `a` when `a` is absent or `better(a, b)`.
fn pick<T: Copy>(a: Option<T>, b: Option<T>, better: impl Fn(&T, &T) -> bool) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if better(&x, &y) { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(lsn: u64, us: i64) -> WalEvent {
        WalEvent::Commit {
            lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 40),
            xid: lsn as u32,
            time: PgTimestamp(us),
            two_phase: false,
        }
    }

    fn rp(lsn: u64, name: &str) -> WalEvent {
        WalEvent::RestorePoint {
            lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 96),
            name: name.into(),
            time: PgTimestamp(lsn as i64),
        }
    }

    #[test]
    fn add_and_merge_are_order_independent() {
        let a = [commit(100, 50), rp(150, "a"), commit(200, 40)];
        let b = [WalEvent::Abort { lsn: Lsn(250), end_lsn: Lsn(290), xid: 9, time: PgTimestamp(1), two_phase: false }];
        let c = [rp(300, "c"), commit(400, 70)];
        let whole = ScanSummary::from_events(a.iter().chain(&b).chain(&c));
        assert_eq!(whole.commits, 3);
        assert_eq!(whole.aborts, 1);
        assert_eq!(whole.first_commit.unwrap().lsn, Lsn(100));
        assert_eq!(whole.last_commit.unwrap().lsn, Lsn(400));
        assert_eq!(whole.min_commit_time, Some(PgTimestamp(40)));
        assert_eq!(whole.max_commit_time, Some(PgTimestamp(70)));
        let names: Vec<_> = whole.restore_points.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);

        let (sa, sb, sc) = (ScanSummary::from_events(&a), ScanSummary::from_events(&b), ScanSummary::from_events(&c));
        let mut m1 = sa.clone();
        m1.merge(&sb);
        m1.merge(&sc);
        let mut m2 = sc.clone();
        m2.merge(&sa);
        m2.merge(&sb);
        assert_eq!(m1, whole);
        assert_eq!(m2, whole);
        let mut e = ScanSummary::default();
        assert!(e.is_empty());
        e.merge(&whole);
        assert_eq!(e, whole);
    }

    #[test]
    fn serde_round_trip() {
        let s = ScanSummary::from_events(&[commit(0x1000028, 5), rp(0x1000100, "before upgrade")]);
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"lsn\":\"0/1000028\""), "{j}");
        assert!(j.contains("\"time\":\"2000-01-01T00:00:00.000005Z\""), "{j}");
        assert_eq!(serde_json::from_str::<ScanSummary>(&j).unwrap(), s);
        assert_eq!(serde_json::from_str::<ScanSummary>("{}").unwrap(), ScanSummary::default());
    }
}
