//! The scanner against WAL written by a real PostgreSQL 15, checked record
//! by record against `pg_waldump`.

mod support;

use pgpitr_testkit::PgCluster;
use pgpitr_types::{Lsn, TimelineId, WalSegSize};
use pgpitr_walscan::{ScanSummary, WalEvent, WalScanner, XLOG_BLCKSZ};
use support::*;

/// The format of the clusters these tests start.
fn format() -> pgpitr_walscan::WalFormat {
    pgpitr_types::PgMajor::from_major(pgpitr_testkit::test_major()).expect("a supported major").wal_format()
}

fn seg1() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

fn lsn(pg: &PgCluster, query: &str) -> Lsn {
    pg.sql(query).parse().unwrap()
}

fn waldump(pg: &PgCluster, tli: TimelineId, from: Lsn, to: Lsn) -> Vec<Dumped> {
    let out = pg
        .command("pg_waldump")
        .env("TZ", "UTC")
        .arg("-p")
        .arg(pg.datadir().join("pg_wal"))
        .args(["-t", &tli.to_string(), "-s", &from.to_string(), "-e", &to.to_string()])
        .output()
        .expect("run pg_waldump");
    assert!(out.status.success(), "pg_waldump: {}", String::from_utf8_lossy(&out.stderr));
    parse_waldump(&String::from_utf8(out.stdout).unwrap())
}

/// Every kind of record the scanner reports, big commit records that cross
/// pages, and enough data to cross several 1 MiB segments.
const WORKLOAD: &str = r#"
CREATE TABLE t (id int, v text);
INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g;
INSERT INTO t VALUES (1, 'a');
INSERT INTO t VALUES (2, 'b');
BEGIN; INSERT INTO t VALUES (-1, 'rolled back'); ROLLBACK;
BEGIN; INSERT INTO t VALUES (3, 'c'); SAVEPOINT s; INSERT INTO t VALUES (4, 'd'); ROLLBACK TO s; COMMIT;
SELECT pg_create_restore_point('x');
BEGIN; INSERT INTO t VALUES (-2, 'p'); PREPARE TRANSACTION 'p1';
COMMIT PREPARED 'p1';
BEGIN; INSERT INTO t VALUES (-3, 'q'); PREPARE TRANSACTION 'p2';
ROLLBACK PREPARED 'p2';
-- 3000 subtransaction xids: a ~12 KB commit record.
BEGIN;
DO $$ BEGIN FOR i IN 1..3000 LOOP BEGIN INSERT INTO t VALUES (i, 's'); EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$;
COMMIT;
-- Dropped relations, dropped stats and invalidations in one commit record.
DO $$ BEGIN FOR i IN 1..150 LOOP EXECUTE format('CREATE TABLE d%s (a int)', i); END LOOP; END $$;
DO $$ BEGIN FOR i IN 1..150 LOOP EXECUTE format('DROP TABLE d%s', i); END LOOP; END $$;
-- The same parts in a COMMIT PREPARED, before its two-phase xid.
CREATE TABLE e1 (a int); CREATE TABLE e2 (a int);
BEGIN; DROP TABLE e1; SAVEPOINT s; INSERT INTO t VALUES (5, 'e'); RELEASE s; DROP TABLE e2; PREPARE TRANSACTION 'p3';
COMMIT PREPARED 'p3';
SELECT pg_switch_wal();
INSERT INTO t SELECT g, repeat('y', 300) FROM generate_series(1, 12000) g;
INSERT INTO t VALUES (6, 'f');
BEGIN; INSERT INTO t VALUES (-4, 'rolled back'); ROLLBACK;
SELECT pg_create_restore_point('after bulk load');
INSERT INTO t VALUES (7, 'g');
CHECKPOINT;
"#;

fn kinds(d: &[Dumped], kind: &str) -> usize {
    d.iter().filter(|x| x.kind == kind).count()
}

fn chunkings(len: usize) -> Vec<Vec<usize>> {
    let mut r = 0x2545_F491_4F6C_DD1Du64;
    let random = (0..4096)
        .map(|_| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            1 + (r % 100_000) as usize
        })
        .collect();
    vec![vec![len.max(1)], vec![8192], vec![7], vec![65_536, 1, 8191], random]
}

#[test]
fn matches_pg_waldump_on_real_wal() {
    let pg = PgCluster::builder()
        .setting("max_prepared_transactions", "5")
        .setting("wal_keep_size", "1GB")
        .wal_segsize_mb(1)
        .start();
    let seg = seg1();
    let start = lsn(&pg, "SELECT pg_current_wal_insert_lsn()");
    pg.sql(WORKLOAD);
    let end = lsn(&pg, "SELECT pg_current_wal_flush_lsn()");
    assert!(end.segment_number(seg).0 >= start.segment_number(seg).0 + 5, "the workload spans several segments");

    let dump = waldump(&pg, TimelineId(1), start, end);
    assert_eq!(kinds(&dump, "ABORT_PREPARED"), 1);
    assert_eq!(kinds(&dump, "COMMIT_PREPARED"), 2);
    assert_eq!(kinds(&dump, "PREPARE"), 3);
    assert_eq!(kinds(&dump, "RESTORE_POINT"), 2);
    assert!(kinds(&dump, "SWITCH") >= 1);
    assert!(kinds(&dump, "ABORT") >= 3, "two ROLLBACKs and a rolled-back savepoint");
    assert!(kinds(&dump, "COMMIT") >= 10);

    // The bytes from the start of the segment holding `start`.
    let seg_start = start.segment_floor(seg);
    let bytes = read_wal(&pg.datadir().join("pg_wal"), TimelineId(1), seg, seg_start, end);
    let from = |l: Lsn| &bytes[(l.0 - seg_start.0) as usize..];
    let page_after = |l: Lsn| Lsn(l.0.div_ceil(XLOG_BLCKSZ) * XLOG_BLCKSZ);

    // (scanner, its first byte, the first LSN it must report from)
    let odd = Lsn(start.0 + 5_000 + 3); // arbitrary, mid-page, mid-record
    let mid_commit = dump.iter().filter(|d| d.kind == "COMMIT").nth(5).unwrap().lsn;
    let runs: Vec<(&str, WalScanner, Lsn, Lsn)> = vec![
        ("segment start", WalScanner::new(seg_start, seg, format()), seg_start, seg_start),
        ("record start", WalScanner::at_record(start, seg, format()).unwrap(), start, start),
        ("mid-record", WalScanner::new(odd, seg, format()), odd, page_after(odd)),
        ("a commit", WalScanner::at_record(mid_commit, seg, format()).unwrap(), mid_commit, mid_commit),
    ];
    let full = waldump(&pg, TimelineId(1), seg_start.max(Lsn(1)), end);
    for (what, scanner, first_byte, report_from) in runs {
        let expected: Vec<Dumped> = full.iter().filter(|d| d.lsn >= report_from).cloned().collect();
        for sizes in chunkings(bytes.len()) {
            let (events, s) = scan(scanner.clone(), from(first_byte), &sizes);
            assert_eq!(as_dumped(&events), expected, "{what}, chunks {:?}..", &sizes[..sizes.len().min(3)]);
            assert_eq!(s.position(), end);
            let lre = s.last_record_end().unwrap();
            // The flush position may be mid-record (the WAL writer flushes whole pages).
            assert!(lre <= end, "{what}: last record end {lre}, end {end}");
            assert_eq!(s.end_of_wal(), None);
            assert_eq!(s.timeline(), Some(TimelineId(1)));
        }
    }

    let (events, _) = scan(WalScanner::at_record(start, seg, format()).unwrap(), from(start), &[1 << 16]);
    // Commit records that cross a page boundary were seen.
    let crosses = |e: &WalEvent| e.lsn().0 / XLOG_BLCKSZ != (e.end_lsn().0 - 1) / XLOG_BLCKSZ;
    assert!(events.iter().any(|e| matches!(e, WalEvent::Commit { .. }) && crosses(e)));
    // Switch ends at the next segment start.
    let sw = events.iter().find(|e| matches!(e, WalEvent::Switch { .. })).unwrap();
    assert!(sw.end_lsn().is_segment_start(seg));
    // The prepared xid is reported for COMMIT PREPARED.
    assert!(events.iter().any(|e| matches!(e, WalEvent::Commit { two_phase: true, xid, .. } if *xid > 700)));
    // Times are close to the server's clock.
    let now = pg.sql("SELECT (extract(epoch from now()) * 1000000)::bigint").parse::<i64>().unwrap();
    for e in &events {
        let us = e.time().map(|t| t.to_unix_micros().unwrap());
        if let Some(us) = us {
            assert!((now - us).abs() < 600_000_000, "{e:?} is far from now");
        }
    }
    let cp = events.iter().rev().find_map(|e| match e {
        WalEvent::Checkpoint { redo, tli, .. } => Some((*redo, *tli)),
        _ => None,
    });
    let (redo, tli) = cp.expect("CHECKPOINT record");
    assert_eq!(tli, TimelineId(1));
    assert_eq!(redo, lsn(&pg, "SELECT redo_lsn FROM pg_control_checkpoint()"));

    let summary = ScanSummary::from_events(&events);
    assert_eq!(summary.commits as usize, kinds(&dump, "COMMIT") + kinds(&dump, "COMMIT_PREPARED"));
    assert_eq!(summary.aborts as usize, kinds(&dump, "ABORT") + kinds(&dump, "ABORT_PREPARED"));
    let names: Vec<&str> = summary.restore_points.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["x", "after bulk load"]);
    let last = dump.iter().rev().find(|d| d.kind == "COMMIT").unwrap();
    assert_eq!(summary.last_commit.unwrap().lsn, last.lsn);
    assert_eq!(summary.last_commit.unwrap().time, last.time.unwrap());
}

/// After a promotion the new timeline starts with END_OF_RECOVERY; the
/// scanner reads it from the switch point in the new timeline's files.
#[test]
fn promoted_standby_timeline() {
    let primary = PgCluster::builder().wal_segsize_mb(1).setting("wal_keep_size", "1GB").start();
    primary.sql("CREATE TABLE a (i int); INSERT INTO a VALUES (1);");
    let standby = primary.start_standby();
    let target = lsn(&primary, "SELECT pg_current_wal_flush_lsn()");
    let caught_up = pgpitr_testkit::wait_for(std::time::Duration::from_secs(30), || {
        let replayed: Lsn = standby.sql("SELECT pg_last_wal_replay_lsn()").parse().ok()?;
        (replayed >= target).then_some(())
    });
    assert!(caught_up.is_some(), "standby did not catch up");
    standby.promote();
    standby.sql("INSERT INTO a VALUES (2); CHECKPOINT;");
    let end = lsn(&standby, "SELECT pg_current_wal_flush_lsn()");
    let history = std::fs::read_to_string(standby.datadir().join("pg_wal/00000002.history")).unwrap();
    let switch: Lsn = history.split_whitespace().nth(1).unwrap().parse().unwrap();

    let seg = seg1();
    let bytes = read_wal(&standby.datadir().join("pg_wal"), TimelineId(2), seg, switch, end);
    let (events, s) = scan(WalScanner::at_record(switch, seg, format()).unwrap(), &bytes, &[4096]);
    assert_eq!(as_dumped(&events), waldump(&standby, TimelineId(2), switch, end));
    match events.first() {
        Some(WalEvent::EndOfRecovery { lsn, tli, prev_tli, .. }) => {
            // At the switch point, or just past the page header if that is a page start.
            assert!(lsn.0 - switch.0 <= 40, "{lsn} vs switch point {switch}");
            assert_eq!((*tli, *prev_tli), (TimelineId(2), TimelineId(1)));
        }
        other => panic!("expected END_OF_RECOVERY first, got {other:?}"),
    }
    assert!(events.iter().any(|e| matches!(e, WalEvent::Commit { .. })));
    assert_eq!(s.timeline(), Some(TimelineId(2)));
}

/// Throughput on real pgbench WAL. Not a test of speed (nothing asserted);
/// run by hand for the figure in `WalScanner`'s docs:
/// `cargo test --release -p pgpitr-walscan --test real_wal -- --ignored --nocapture throughput`
#[test]
#[ignore]
fn throughput() {
    let pg = PgCluster::builder().wal_segsize_mb(16).setting("wal_keep_size", "4GB").start();
    let seg = WalSegSize::new(16 << 20).unwrap();
    let start = lsn(&pg, "SELECT pg_current_wal_insert_lsn()");
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    pg.pgbench(&["-c", "4", "-j", "2", "-T", "15"]);
    let end = lsn(&pg, "SELECT pg_current_wal_flush_lsn()");
    let bytes = read_wal(&pg.datadir().join("pg_wal"), TimelineId(1), seg, start, end);
    for crc in [true, false] {
        let mut best = f64::MAX;
        let mut n = 0;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            let (ev, _) =
                scan(WalScanner::at_record(start, seg, format()).unwrap().verify_crc(crc), &bytes, &[64 << 10]);
            best = best.min(t.elapsed().as_secs_f64());
            n = ev.len();
        }
        println!(
            "crc {crc}: {:.0} MB of WAL, {n} events, {:.0} MB/s",
            bytes.len() as f64 / 1e6,
            bytes.len() as f64 / 1e6 / best
        );
    }
}
