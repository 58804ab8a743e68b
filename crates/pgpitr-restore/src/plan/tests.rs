//! Planning over a real (local-directory) repository holding synthetic WAL
//! objects: the keys and summaries are what planning reads.

use super::*;
use crate::target::Target;
use bytes::Bytes;
use pgpitr_repo::object::{self, Codec, WalSummary};
use pgpitr_storage::{LocalStorage, Storage};
use pgpitr_types::TimelineHistory;
use std::sync::Arc;

const T0: i64 = 1_795_000_000_000_000;
const S: u64 = 1 << 20;

fn seg() -> WalSegSize {
    WalSegSize::new(S).unwrap()
}

fn at(segno: u64, off: u64) -> Lsn {
    Lsn(segno * S + off)
}

fn secs(s: i64) -> i64 {
    T0 + s * 1_000_000
}

struct Repo {
    _dir: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    backups: Vec<BackupPoint>,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        Repo { _dir: dir, storage, backups: Vec::new() }
    }

    /// Stores an object; `commits` are (LSN, seconds after T0).
    async fn put(&self, tli: u32, segno: u64, piece: Option<(u32, u32)>, commits: &[(Lsn, i64)], rps: &[(&str, Lsn)]) {
        let tli = TimelineId(tli);
        let id = match piece {
            None => WalObjectId::segment(tli, pgpitr_types::SegNo(segno)),
            Some((f, t)) => WalObjectId::piece(tli, pgpitr_types::SegNo(segno), f, t),
        };
        let tl = |&(lsn, s): &(Lsn, i64)| TimedLsn { lsn, end_lsn: Lsn(lsn.0 + 0x40), time_us: secs(s) };
        let summary = WalSummary {
            first_commit: commits.first().map(tl),
            last_commit: commits.last().map(tl),
            commits: commits.len() as u64,
            restore_points: rps
                .iter()
                .map(|(n, l)| RestorePoint { name: n.to_string(), lsn: *l, end_lsn: Lsn(l.0 + 0x40), time_us: T0 })
                .collect(),
            ..Default::default()
        };
        // Zeros of the right length: what assembly checks; no real records.
        let (start, end) = id.range(seg());
        let raw = vec![0u8; (end.0 - start.0) as usize];
        let body = object::encode(tli, start, &raw, Codec::Lz4, &summary);
        self.storage.put(&id.key(seg()), body).await.unwrap();
    }

    async fn history(&self, tli: u32, text: &str) {
        self.storage.put(&wal::history_key(TimelineId(tli)), Bytes::from(text.to_string())).await.unwrap();
    }

    fn backup(&mut self, id: &str, tli: u32, start: Lsn, stop: Lsn, stop_s: i64) {
        self.backups.push(BackupPoint {
            id: id.into(),
            timeline: TimelineId(tli),
            start_lsn: start,
            stop_lsn: stop,
            stop_time_us: secs(stop_s),
            size_bytes: 0,
            parent: None,
        });
    }

    async fn plan(&self, target: Target, inclusive: bool) -> Result<Plan> {
        self.plan_with(target, inclusive, TimelineTarget::Latest, None).await
    }

    async fn plan_with(
        &self,
        target: Target,
        inclusive: bool,
        tl: TimelineTarget,
        backup: Option<&str>,
    ) -> Result<Plan> {
        let repo = pgpitr_repo::Repository::init(
            self.storage.clone(),
            &pgpitr_repo::ClusterIdentity { system_identifier: 7, pg_version_num: 150000, wal_segment_size: seg() },
        )
        .await
        .unwrap()
        .0;
        let req = PlanRequest { target, inclusive, timeline: tl, backup: backup.map(String::from) };
        let mut full = Catalog::load(&repo).await?.with_points(self.backups.clone());
        let planned = plan(&mut full, &req).await;
        // A restore lists only what it needs, and must plan exactly the same.
        let mut lazy = Catalog::for_planning(&repo).await?.with_points(self.backups.clone());
        let lazily = plan(&mut lazy, &req).await;
        let show = |p: &Result<Plan>| match p {
            Ok(p) => serde_json::to_string(p).unwrap(),
            Err(e) => e.to_string(),
        };
        assert_eq!(show(&planned), show(&lazily), "{req:?}");
        planned
    }
}

/// Timeline 1: segments 1..=10 complete, 11 partial (0..0x1000); commits at
/// +0x100 (k·10 s) and +0x800 (k·10 + 5 s) of every segment k; backups B1
/// (segment 2, ends at 26 s) and B2 (segment 6, ends at 66 s).
async fn linear() -> Repo {
    let mut r = Repo::new();
    for k in 1..=11u64 {
        let piece = (k == 11).then_some((0, 0x1000));
        let rps: Vec<(&str, Lsn)> = if k == 5 { vec![("rp1", at(5, 0x900))] } else { vec![] };
        r.put(1, k, piece, &[(at(k, 0x100), k as i64 * 10), (at(k, 0x800), k as i64 * 10 + 5)], &rps).await;
    }
    r.backup("B1", 1, at(2, 0x28), at(2, 0x900), 26);
    r.backup("B2", 1, at(6, 0x28), at(6, 0x900), 66);
    r
}

#[tokio::test]
async fn time_target_picks_newest_backup_and_stop_commit() {
    let r = linear().await;
    let p = r.plan(Target::Time(secs(75)), true).await.unwrap();
    assert_eq!(p.backup.id, "B2");
    assert_eq!(p.recovery, RecoveryTarget::Time { time_us: secs(75), inclusive: true });
    assert_eq!(p.first_excluded.unwrap().lsn, at(8, 0x100));
    assert_eq!(p.last_commit.unwrap().lsn, at(7, 0x800));
    assert_eq!(p.wal_end, at(8, 0x140));
    // A stored commit follows the target: the window's end is not read.
    assert_eq!((p.earliest_us, p.latest_us), (secs(26), None));
    assert_eq!(r.plan(Target::Latest, true).await.unwrap().latest_us, Some(secs(115)));

    let p = r.plan(Target::Time(secs(75)), false).await.unwrap();
    assert_eq!(p.first_excluded.unwrap().lsn, at(7, 0x800));
    assert_eq!(p.last_commit.unwrap().lsn, at(7, 0x100));

    let p = r.plan(Target::Time(secs(40)), true).await.unwrap();
    assert_eq!(p.backup.id, "B1");
    assert_eq!(p.first_excluded.unwrap().lsn, at(4, 0x800));

    let p = r.plan_with(Target::Time(secs(75)), true, TimelineTarget::Latest, Some("B1")).await.unwrap();
    assert_eq!(p.backup.id, "B1");
}

#[tokio::test]
async fn window_edges() {
    let r = linear().await;
    let e = r.plan(Target::Time(secs(10)), true).await.unwrap_err();
    assert!(matches!(e, PlanError::BeforeEarliest { earliest, .. } if earliest == secs(26)), "{e}");
    assert!(e.to_string().starts_with("target 2026-"), "{e}");
    let e = r.plan(Target::Time(secs(116)), true).await.unwrap_err();
    assert!(matches!(e, PlanError::AfterLatest { latest, .. } if latest == secs(115)), "{e}");

    // At the newest commit no later commit exists: an LSN target at it.
    let p = r.plan(Target::Time(secs(115)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Lsn { lsn: at(11, 0x800), inclusive: true });
    assert!(p.note.is_some());
    // Exclusive: that commit is the stop, so the time target works.
    let p = r.plan(Target::Time(secs(115)), false).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Time { time_us: secs(115), inclusive: false });

    let e = r.plan_with(Target::Time(secs(40)), true, TimelineTarget::Latest, Some("B2")).await.unwrap_err();
    assert!(matches!(e, PlanError::BeforeEarliest { .. }), "{e}");
}

#[tokio::test]
async fn gaps_are_refused_only_when_in_the_way() {
    let r = linear().await;
    let id = WalObjectId::segment(TimelineId(1), pgpitr_types::SegNo(9));
    r.storage.delete(&id.key(seg())).await.unwrap();
    let e = r.plan(Target::Time(secs(100)), true).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, PlanError::Gap(_)), "{msg}");
    assert!(msg.contains("0/900000..0/A00000") && msg.contains("timeline 1"), "{msg}");
    assert!(msg.contains(&format_time(secs(85))), "{msg}");
    assert!(r.plan(Target::Time(secs(80)), true).await.is_ok());
    assert!(matches!(r.plan(Target::Latest, true).await, Err(PlanError::Gap(_))));
    assert!(r.plan(Target::Immediate, true).await.is_ok());
}

#[tokio::test]
async fn latest_immediate_lsn_name_xid() {
    let r = linear().await;
    let p = r.plan(Target::Latest, true).await.unwrap();
    assert_eq!((p.recovery.clone(), p.wal_end, p.backup.id.as_str()), (RecoveryTarget::None, at(11, 0x1000), "B2"));
    let p = r.plan(Target::Immediate, true).await.unwrap();
    assert_eq!((p.recovery, p.wal_end), (RecoveryTarget::Immediate, at(6, 0x900)));

    let p = r.plan(Target::Lsn(at(7, 0x200)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Lsn { lsn: at(7, 0x200), inclusive: true });
    assert_eq!((p.backup.id.as_str(), p.wal_end), ("B2", at(7, 0x840)));
    let p = r.plan(Target::Lsn(at(11, 0xF00)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Lsn { lsn: at(11, 0x800), inclusive: true });
    assert!(matches!(r.plan(Target::Lsn(at(11, 0x2000)), true).await, Err(PlanError::LsnAfterLatest { .. })));
    assert!(matches!(r.plan(Target::Lsn(at(2, 0x200)), true).await, Err(PlanError::LsnBeforeEarliest { .. })));

    let p = r.plan(Target::Name("rp1".into()), true).await.unwrap();
    assert_eq!((p.backup.id.as_str(), p.wal_end), ("B1", at(5, 0x940)));
    let e = r.plan(Target::Name("nope".into()), true).await.unwrap_err();
    assert!(e.to_string().contains("\"nope\" is not in the stored WAL"), "{e}");

    // The WAL here has no records at all, so no transaction ends in it.
    let e = r.plan(Target::Xid(1234), false).await.unwrap_err();
    assert!(e.to_string().contains("transaction 1234 does not end"), "{e}");
}

/// Timeline 1 (segments 1..=6; it went on past the fork) and timeline 2,
/// forked at 0/502000 (segments 5..=7, the last partial).
async fn forked() -> Repo {
    let mut r = Repo::new();
    for k in 1..=4u64 {
        r.put(1, k, None, &[(at(k, 0x100), k as i64 * 10)], &[]).await;
    }
    r.put(1, 5, None, &[(at(5, 0x100), 50), (at(5, 0x3000), 52)], &[]).await;
    r.put(1, 6, None, &[(at(6, 0x100), 61)], &[]).await;
    r.history(2, "1\t0/502000\tno recovery target specified\n").await;
    r.put(2, 5, None, &[(at(5, 0x2100), 53)], &[]).await;
    r.put(2, 6, None, &[(at(6, 0x100), 60)], &[]).await;
    r.put(2, 7, Some((0, 0x800)), &[(at(7, 0x100), 70)], &[]).await;
    r.backup("B1", 1, at(1, 0x28), at(1, 0x900), 12);
    // Taken on the old primary after the fork: not on timeline 2's history.
    r.backup("B-old", 1, at(5, 0x4000), at(5, 0x5000), 56);
    r
}

#[tokio::test]
async fn follows_the_history_of_the_target_timeline() {
    let r = forked().await;
    let p = r.plan(Target::Time(secs(65)), true).await.unwrap();
    assert_eq!((p.timeline, p.backup.id.as_str()), (TimelineId(2), "B1"));
    assert_eq!(p.first_excluded.unwrap().lsn, at(7, 0x100));
    assert_eq!(p.last_commit.unwrap().lsn, at(6, 0x100));
    // Timeline 1's commit at 52 s lies past the fork: not on this history.
    let p = r.plan(Target::Time(secs(52)), true).await.unwrap();
    assert_eq!(p.first_excluded.unwrap().lsn, at(5, 0x2100));

    let p = r.plan_with(Target::Time(secs(57)), true, TimelineTarget::Id(TimelineId(1)), None).await.unwrap();
    assert_eq!((p.timeline, p.backup.id.as_str()), (TimelineId(1), "B-old"));
    assert_eq!(p.first_excluded.unwrap().lsn, at(6, 0x100));
    let p = r.plan_with(Target::Immediate, true, TimelineTarget::Current, None).await.unwrap();
    assert_eq!((p.timeline, p.backup.id.as_str()), (TimelineId(1), "B-old"));

    let e = r.plan_with(Target::Latest, true, TimelineTarget::Latest, Some("B-old")).await.unwrap_err();
    assert!(e.to_string().contains("not on the history of timeline 2"), "{e}");

    // The switch segment is read from timeline 2 even though timeline 1 has it.
    let id = WalObjectId::segment(TimelineId(2), pgpitr_types::SegNo(5));
    r.storage.delete(&id.key(seg())).await.unwrap();
    let e = r.plan(Target::Time(secs(65)), true).await.unwrap_err();
    assert!(e.to_string().contains("0/500000..0/600000 of timeline 2"), "{e}");
}

#[test]
fn segments_come_from_the_newest_timeline_that_began() {
    let h = TimelineHistory::parse(TimelineId(3), "1\t0/502000\tx\n2\t0/700000\ty\n").unwrap();
    let p = TimelinePath::from_history(&h);
    let (t1, t2, t3) = (TimelineId(1), TimelineId(2), TimelineId(3));
    assert_eq!(
        p.needed(seg(), at(1, 0x28), at(9, 0x10)),
        vec![(t1, at(1, 0), at(5, 0)), (t2, at(5, 0), at(7, 0)), (t3, at(7, 0), at(9, 0x10))]
    );
    assert_eq!(p.needed(seg(), at(5, 0x28), at(5, 0x900)), vec![(t2, at(5, 0), at(5, 0x900))]);
    assert_eq!(p.needed(seg(), at(2, 0), at(3, 0)), vec![(t1, at(2, 0), at(3, 0))]);
}

/// A summary too large for the first ranged read (many restore points) is
/// read whole, and planning finds what it holds.
#[tokio::test]
async fn large_summaries_are_read_whole() {
    let mut r = Repo::new();
    let names: Vec<String> = (0..120).map(|i| format!("restore-point-{i:03}-{}", "x".repeat(40))).collect();
    for k in 1..=4u64 {
        let rps: Vec<(&str, Lsn)> = if k == 3 {
            names.iter().enumerate().map(|(i, n)| (n.as_str(), at(3, 0x100 + i as u64 * 8))).collect()
        } else {
            vec![]
        };
        r.put(1, k, None, &[(at(k, 0x80), k as i64 * 10)], &rps).await;
    }
    r.backup("B", 1, at(1, 0x28), at(1, 0x900), 15);
    let id = WalObjectId::segment(TimelineId(1), pgpitr_types::SegNo(3));
    let fixed = r.storage.get_range(&id.key(seg()), 0..object::HEADER_LEN as u64).await.unwrap();
    assert!(
        object::header_len(&fixed).unwrap() as u64 > pgpitr_repo::catalog::SUMMARY_READ,
        "the summary must not fit the first read"
    );
    let p = r.plan(Target::Name(names[77].clone()), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Name { name: names[77].clone() });
    assert_eq!(p.wal_end, Lsn(at(3, 0x100 + 77 * 8).0 + 0x40));
}

/// Reading ahead fills the index with every header on the path, skips (and
/// leaves to planning) one it cannot read, and changes no plan.
#[tokio::test]
async fn reading_ahead_is_best_effort_and_changes_no_plan() {
    let r = linear().await;
    let repo = pgpitr_repo::Repository::init(
        r.storage.clone(),
        &pgpitr_repo::ClusterIdentity { system_identifier: 7, pg_version_num: 150000, wal_segment_size: seg() },
    )
    .await
    .unwrap()
    .0;
    let broken = WalObjectId::segment(TimelineId(1), pgpitr_types::SegNo(3));
    let good = r.storage.get(&broken.key(seg())).await.unwrap();
    r.storage.put(&broken.key(seg()), Bytes::from_static(b"not a WAL object")).await.unwrap();
    let mut cat = Catalog::load(&repo).await.unwrap().with_points(r.backups.clone());
    cat.read_ahead(TimelineId(1)).await;
    assert_eq!(cat.summaries.len(), 10, "every object but the unreadable one");
    assert!(cat.summaries.get(&broken).is_none());

    r.storage.put(&broken.key(seg()), good).await.unwrap();
    let mut warm = Catalog::load(&repo).await.unwrap().with_points(r.backups.clone());
    warm.read_ahead(TimelineId(1)).await;
    assert_eq!(warm.summaries.len(), 11);
    for target in [Target::Time(secs(75)), Target::Time(secs(40)), Target::Latest, Target::Name("rp1".into())] {
        let req = PlanRequest { target, inclusive: true, timeline: TimelineTarget::Latest, backup: None };
        let mut cold = Catalog::load(&repo).await.unwrap().with_points(r.backups.clone());
        let (a, b) = (plan(&mut cold, &req).await.unwrap(), plan(&mut warm, &req).await.unwrap());
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    }
}

fn id_start(segno: u64) -> Lsn {
    at(segno, 0)
}

fn piece4_key() -> String {
    WalObjectId::piece(TimelineId(1), pgpitr_types::SegNo(4), 0, 0x4000).key(seg())
}

/// A stored object whose commits could not be indexed (the scanner failed
/// on its WAL) must never let a target fall back to an earlier commit: the
/// commit that ends the restore may be in it.
#[tokio::test]
async fn an_object_with_an_incomplete_index_is_never_read_as_holding_no_commit() {
    let mut r = Repo::new();
    for k in 1..=3u64 {
        r.put(1, k, None, &[(at(k, 0x100), k as i64 * 10)], &[]).await;
    }
    r.put(1, 4, Some((0, 0x4000)), &[], &[]).await;
    r.backup("B1", 1, at(1, 0x28), at(1, 0x200), 12);
    r.backup("B2", 1, at(4, 0x28), at(4, 0x2000), 50);
    // With a complete index, nothing follows 30 s: the last commit is the
    // same data.
    let p = r.plan(Target::Time(secs(45)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Lsn { lsn: at(3, 0x100), inclusive: true });

    // The same object, its index incomplete.
    let id = WalObjectId::piece(TimelineId(1), pgpitr_types::SegNo(4), 0, 0x4000);
    // A record passed over at the start of the segment (a commit there
    // starts before 4/0) is no reason when a commit after it was indexed.
    let c = TimedLsn { lsn: at(4, 0x100), end_lsn: at(4, 0x140), time_us: secs(40) };
    let skipped = WalSummary {
        first_commit: Some(c),
        last_commit: Some(c),
        commits: 1,
        unindexed_before: Some(at(4, 0)),
        ..Default::default()
    };
    let body = object::encode(TimelineId(1), id_start(4), &vec![0u8; 0x4000], Codec::Lz4, &skipped);
    r.storage.put(&piece4_key(), body).await.unwrap();
    let p = r.plan(Target::Time(secs(45)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Lsn { lsn: at(4, 0x100), inclusive: true }, "{:?}", p.note);
    let summary = WalSummary { unindexed_before: Some(Lsn::MAX), ..Default::default() };
    let body = object::encode(TimelineId(1), id.range(seg()).0, &vec![0u8; 0x4000], Codec::Lz4, &summary);
    r.storage.put(&id.key(seg()), body).await.unwrap();
    let p = r.plan(Target::Time(secs(45)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Time { time_us: secs(45), inclusive: true }, "PostgreSQL finds the point");
    assert!(p.note.as_deref().is_some_and(|n| n.contains(&id.key(seg())) && n.contains("incomplete")), "{:?}", p.note);
    assert_eq!(p.wal_end, at(4, 0x4000), "all the stored WAL is needed");
    let p = r.plan(Target::Lsn(at(4, 0x3000)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Lsn { lsn: at(4, 0x3000), inclusive: true });
}

/// WAL over four log IDs (4,096 segments of 1 MiB each): log 0 and 1
/// without a hole, a hole, some of log 2, a hole, log 3. A restore lists
/// only the log directories its search needs, and plans as a full listing
/// does (`plan_with` compares every plan of these tests).
#[tokio::test]
async fn planning_lists_only_the_log_directories_it_needs() {
    const LOG: u64 = 4096;
    let mut r = Repo::new();
    let segs: Vec<u64> = (LOG - 6..LOG + 5).chain(2 * LOG..2 * LOG + 3).chain(3 * LOG..3 * LOG + 4).collect();
    for (i, &k) in segs.iter().enumerate() {
        r.put(1, k, None, &[(at(k, 0x100), i as i64 * 10)], &[]).await;
    }
    let secs_of = |k: u64| segs.iter().position(|&s| s == k).unwrap() as i64 * 10;
    r.backup("B1", 1, at(LOG - 6, 0x28), at(LOG - 6, 0x900), secs_of(LOG - 6) + 1);
    r.backup("B2", 1, at(3 * LOG, 0x28), at(3 * LOG, 0x900), secs_of(3 * LOG) + 1);

    // Past the log boundary, before the hole: B1, a commit in log 1.
    let early = secs_of(LOG + 1) + 5;
    let p = r.plan(Target::Time(secs(early)), true).await.unwrap();
    assert_eq!((p.backup.id.as_str(), p.first_excluded.map(|c| c.lsn)), ("B1", Some(at(LOG + 2, 0x100))));
    let repo = pgpitr_repo::Repository::open(r.storage.clone()).await.unwrap();
    let mut lazy = Catalog::for_planning(&repo).await.unwrap().with_points(r.backups.clone());
    let req = PlanRequest {
        target: Target::Time(secs(early)),
        inclusive: true,
        timeline: TimelineTarget::Latest,
        backup: None,
    };
    plan(&mut lazy, &req).await.unwrap();
    let listed: Vec<u64> = lazy.timelines()[&TimelineId(1)].objects.iter().map(|(id, _)| id.segno.0 / LOG).collect();
    // Only what lies between B1 and the stop commit: not log 2 nor log 3 after it.
    assert!(listed.contains(&0) && listed.contains(&1), "{listed:?}");
    assert!(listed.iter().all(|&l| l < 2), "{listed:?}");

    // In log 2: behind the first hole from B1.
    let e = r.plan(Target::Time(secs(secs_of(2 * LOG + 1) + 5)), true).await.unwrap_err().to_string();
    assert!(e.contains("missing from the repository (a gap)"), "{e}");
    // After B2, and the end.
    let p = r.plan(Target::Time(secs(secs_of(3 * LOG + 2) + 5)), true).await.unwrap();
    assert_eq!(p.backup.id, "B2");
    let p = r.plan(Target::Latest, true).await.unwrap();
    assert_eq!(p.wal_end, at(3 * LOG + 4, 0));
    assert_eq!(p.latest_us, Some(secs(secs_of(3 * LOG + 3))));
}

/// A listing that fails while a plan reads the WAL fails the plan: it is
/// never taken for the end of the WAL (which would shorten a restore).
#[tokio::test]
async fn a_failed_listing_fails_the_plan() {
    use pgpitr_storage::{FaultMode, FaultyStorage, Op};
    let r = linear().await;
    r.plan(Target::Latest, true).await.unwrap();
    let failing: Arc<dyn Storage> = Arc::new(FaultyStorage::new(
        LocalStorage::new(r._dir.path()),
        FaultMode::FailCalls(|op, key| op == Op::List && key.starts_with("wal/")),
    ));
    let repo = pgpitr_repo::Repository::open(failing).await.unwrap();
    for target in [Target::Latest, Target::Time(secs(75)), Target::Lsn(at(8, 0))] {
        let mut cat = Catalog::for_planning(&repo).await.unwrap().with_points(r.backups.clone());
        let req =
            PlanRequest { target: target.clone(), inclusive: true, timeline: TimelineTarget::Latest, backup: None };
        let e = plan(&mut cat, &req).await.unwrap_err().to_string();
        assert!(e.contains("wal/00000001/00000000/"), "{target:?}: {e}");
    }
}

/// Just after a promotion the new timeline's history is stored before any
/// of its WAL: it is the latest timeline, and recovery to it replays its
/// parent's WAL up to the end (the switch point at most), gaps checked.
#[tokio::test]
async fn a_new_timeline_without_wal_yet_ends_where_its_parent_does() {
    let r = forked().await;
    r.history(3, "1\t0/502000\tno recovery target specified\n2\t0/7000800\tno recovery target specified\n").await;
    let p = r.plan(Target::Latest, true).await.unwrap();
    assert_eq!(p.timeline, TimelineId(3));
    assert_eq!(p.wal_end, at(7, 0x800), "the end of timeline 2's WAL");
    assert_eq!(p.last_commit.map(|c| c.lsn), Some(at(7, 0x100)));
}

/// A stop commit whose record ends past a log ID boundary: the plan lists
/// the next log directory before checking that its WAL is stored.
#[tokio::test]
async fn a_stop_record_across_a_log_boundary_is_found_stored() {
    const LOG: u64 = 4096;
    let mut r = Repo::new();
    for (i, k) in (LOG - 3..LOG + 2).enumerate() {
        // The last commit of segment LOG - 1 ends in the next segment.
        let commits =
            if k == LOG - 1 { vec![(at(k, S - 0x20), i as i64 * 10)] } else { vec![(at(k, 0x100), i as i64 * 10)] };
        r.put(1, k, None, &commits, &[]).await;
    }
    r.backup("B", 1, at(LOG - 3, 0x28), at(LOG - 3, 0x900), 1);
    let p = r.plan(Target::Time(secs(15)), true).await.unwrap();
    assert_eq!(p.first_excluded.map(|c| c.lsn), Some(at(LOG - 1, S - 0x20)));
    assert!(p.wal_end > at(LOG, 0), "the record ends in log 1: {}", p.wal_end);
}

/// A summary that claims commits its object does not hold (a stale or
/// forged index) never makes a plan stop at WAL that is not stored: only
/// commits whose records end within stored WAL count.
#[tokio::test]
async fn an_index_that_claims_wal_not_stored_is_not_trusted() {
    let r = linear().await;
    // Segment 11 holds 0..0x1000, but its summary claims a commit at 0x5000.
    r.put(1, 11, Some((0, 0x1000)), &[(at(11, 0x100), 110), (at(11, 0x5000), 200)], &[]).await;
    for t in [112, 150, 200] {
        let e = r.plan(Target::Time(secs(t)), true).await.unwrap_err();
        assert!(matches!(e, PlanError::AfterLatest { latest, .. } if latest == secs(110)), "{t}: {e}");
    }
    // At the newest stored commit: an LSN target there, not at 0x5000.
    let p = r.plan(Target::Time(secs(110)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Lsn { lsn: at(11, 0x100), inclusive: true });
    // Targets before the object are planned as before.
    let p = r.plan(Target::Time(secs(101)), true).await.unwrap();
    assert_eq!(p.recovery, RecoveryTarget::Time { time_us: secs(101), inclusive: true });
}
