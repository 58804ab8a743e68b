//! Every supported major against real servers of that major (15 is the
//! rest of the suite's default, `PGPITR_TEST_PG_MAJOR`): the whole loop of
//! stream, backup and exact restores to times (the unfinished tail
//! included) on each.

use crate::common::*;
use crate::restore::pitr_is_exact;
use crate::stream::kill9_during_load_loses_nothing;
use pgpitr_testkit::*;
use std::time::Duration;

/// The loop on `major`, if `PGPITR_TEST_PG_MAJORS` lists it. A major left
/// out is said, not skipped silently.
async fn whole_loop(major: u32) {
    if !test_majors().contains(&major) {
        eprintln!("PostgreSQL {major} is not in PGPITR_TEST_PG_MAJORS: not run");
        return;
    }
    pitr_is_exact(Backend::local(), 1, major).await;
}

/// 14 streams, resumes after kill -9 (its slot's position read from
/// `pg_replication_slots`: it has no `READ_REPLICATION_SLOT`), and indexes
/// every commit, synchronous mode included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resume_and_commit_index_on_14() {
    if !test_majors().contains(&14) {
        eprintln!("PostgreSQL 14 is not in PGPITR_TEST_PG_MAJORS: not run");
        return;
    }
    kill9_during_load_loses_nothing(Backend::s3(), &[], 14).await;
    kill9_during_load_loses_nothing(Backend::local(), &["--synchronous"], 14).await;
}

/// 14's BASE_BACKUP: keywords, a CopyOut stream per tablespace and one
/// for the manifest, compressed on pgpitr's side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_14() {
    whole_loop(14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_16() {
    whole_loop(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_17() {
    whole_loop(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_backup_and_exact_restores_on_18() {
    whole_loop(18).await;
}

/// `restore --wait` starts the restored server with binaries of the
/// repository's major, and checks that before it writes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_binaries_of_another_major() {
    let major = 17;
    if !test_majors().contains(&major) {
        eprintln!("PostgreSQL {major} is not in PGPITR_TEST_PG_MAJORS: not run");
        return;
    }
    let backend = Backend::local();
    crate::restore::share(&backend);
    let pg = PgCluster::builder().major(major).start();
    crate::restore::take_backup(&pg, &backend);
    let target = PgCluster::empty_of(major);
    let debian = pg_bindir();
    let mut cmd =
        crate::restore::restore_cmd(&backend, &target.datadir(), &["--target", "latest", "--wait", "--pg-bindir"]);
    let out = run(cmd.arg(&debian));
    out.fails_with(&["is PostgreSQL 15", "the repository holds PostgreSQL 17", "--pg-bindir"]);
    assert_eq!(std::fs::read_dir(target.datadir()).unwrap().count(), 0, "nothing was written");
}

/// Runs `$check(major)` as one test per supported major.
macro_rules! on_every_major {
    ($name:ident, $check:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg14() {
                $check(14).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg15() {
                $check(15).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg16() {
                $check(16).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg17() {
                $check(17).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg18() {
                $check(18).await;
            }
        }
    };
}

/// Whether `major` is to be tested; says so when it is not.
pub(crate) fn wanted(major: u32) -> bool {
    let yes = test_majors().contains(&major);
    if !yes {
        eprintln!("PostgreSQL {major} is not in PGPITR_TEST_PG_MAJORS: not run");
    }
    yes
}

/// Every commit-like record of the repository's WAL on timeline 1, as the
/// scanner reads it with the repository's format, and the segments
/// rebuilt from it.
async fn scan_repository(backend: &Backend) -> (Vec<pgpitr_walscan::WalEvent>, Vec<(String, bytes::Bytes)>) {
    let repo = backend.repo().await;
    let (storage, seg) = (repo.storage().clone(), repo.seg_size());
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg).await.unwrap();
    let tl = &tls[&pgpitr_types::TimelineId(1)];
    assert!(tl.gaps().is_empty(), "gaps: {:?}", tl.gaps());
    let (start, end) = (tl.start().unwrap(), tl.end().unwrap());
    let mut scanner = pgpitr_walscan::WalScanner::new(start, seg, repo.major().wal_format());
    let (mut events, mut segments) = (Vec::new(), Vec::new());
    let mut segno = start.segment_number(seg);
    while segno.start_lsn(seg).unwrap() < end {
        let s = pgpitr_repo::wal::assemble_segment(storage.as_ref(), seg, tl, segno).await.unwrap().unwrap();
        let to = if s.complete { s.data.len() } else { s.valid_len as usize };
        scanner.feed(&s.data[..to], &mut events).unwrap_or_else(|e| panic!("segment {segno}: {e}"));
        if s.complete {
            let name = pgpitr_types::WalFileName::segment(pgpitr_types::TimelineId(1), segno).to_name(seg);
            segments.push((name, s.data));
        }
        segno = segno.next();
    }
    (events, segments)
}

/// The commit-time index on real WAL of `major`: commits, a commit with
/// 3,000 subtransactions (a record over several pages) placed across a
/// segment boundary, an abort, dropped relations (dropped-stats items from
/// 15, 16 bytes each in 18) with invalidations, and two-phase commits, one
/// of them dropping relations (its xid follows the dropped-stats items).
/// Every complete segment in the repository is the server's own `pg_wal`
/// file, byte for byte.
async fn commit_index_and_segments_on_real_wal(major: u32) {
    if !wanted(major) {
        return;
    }
    let backend = Backend::local();
    let pg = PgCluster::builder()
        .major(major)
        .wal_segsize_mb(1)
        .setting("max_prepared_transactions", "5")
        .setting("wal_keep_size", "1GB")
        .start();
    pg.sql("CREATE TABLE t (id int, v text)");
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let xid = |sql: &str| -> u32 {
        let out = pg.sql(sql);
        let id: u64 = out.lines().last().unwrap().trim().parse().unwrap_or_else(|_| panic!("{out}"));
        id as u32
    };
    let committed = xid("BEGIN; INSERT INTO t VALUES (1, 'a'); SELECT txid_current(); COMMIT;");
    let aborted = xid("BEGIN; INSERT INTO t VALUES (-1, 'x'); SELECT txid_current(); ROLLBACK;");
    // The subtransactions write their own WAL first: a message then pads
    // the segment so that the commit record (about 12 KB) starts 6,000
    // bytes before its end.
    let spanning = xid("BEGIN; DO $$ BEGIN FOR i IN 1..3000 LOOP BEGIN INSERT INTO t VALUES (i, 's'); \
         EXCEPTION WHEN others THEN NULL; END; END LOOP; END $$; \
         SELECT pg_logical_emit_message(false, 'pad', repeat('x', greatest(0, 1048576 - 6000 \
           - ((pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint % 1048576))::int)); \
         SELECT txid_current(); COMMIT;");
    pg.sql("DO $$ BEGIN FOR i IN 1..50 LOOP EXECUTE format('CREATE TABLE d%s (a int)', i); END LOOP; END $$;");
    let dropped = xid("BEGIN; DO $$ BEGIN FOR i IN 1..50 LOOP EXECUTE format('DROP TABLE d%s', i); END LOOP; END $$; \
         SELECT txid_current(); COMMIT;");
    let prepared = xid("BEGIN; INSERT INTO t VALUES (2, 'p'); SELECT txid_current(); PREPARE TRANSACTION 'p1';");
    pg.sql("COMMIT PREPARED 'p1'");
    pg.sql("CREATE TABLE e1 (a int); CREATE TABLE e2 (a int)");
    let prepared_drop =
        xid("BEGIN; DROP TABLE e1; SAVEPOINT s; INSERT INTO t VALUES (3, 'q'); RELEASE s; DROP TABLE e2; \
         SELECT txid_current(); PREPARE TRANSACTION 'p2';");
    pg.sql("COMMIT PREPARED 'p2'");
    pg.sql("SELECT pg_switch_wal()");
    let end = lsn(&pg.sql("INSERT INTO t VALUES (4, 'z'); SELECT pg_current_wal_lsn();"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), pgpitr_types::WalSegSize::new(1 << 20).unwrap(), 1, end, Duration::from_secs(30))
        .await;
    assert_eq!(s.terminate().0, Some(0));

    let (events, segments) = scan_repository(&backend).await;
    use pgpitr_walscan::WalEvent;
    let commit = |x: u32, two_phase: bool| {
        events.iter().find(|e| matches!(e, WalEvent::Commit { xid, two_phase: t, .. } if *xid == x && *t == two_phase))
    };
    for (what, x) in [("commit", committed), ("dropping relations", dropped)] {
        assert!(commit(x, false).is_some(), "{major}: the {what} of xid {x} is not in the index");
    }
    let big = commit(spanning, false).unwrap_or_else(|| panic!("{major}: the commit with subtransactions is missing"));
    let seg_of = |l: pgpitr_types::Lsn| l.0 >> 20;
    assert_ne!(seg_of(big.lsn()), seg_of(pgpitr_types::Lsn(big.end_lsn().0 - 1)), "{major}: it spans segments");
    assert!(
        events.iter().any(|e| matches!(e, WalEvent::Abort { xid, two_phase: false, .. } if *xid == aborted)),
        "{major}: the abort of xid {aborted}"
    );
    for (gid, x) in [("p1", prepared), ("p2", prepared_drop)] {
        assert!(
            events.iter().any(|e| matches!(e, WalEvent::Prepare { xid, gid: g, .. } if *xid == x && g == gid)),
            "{major}: PREPARE TRANSACTION '{gid}' (xid {x})"
        );
        assert!(commit(x, true).is_some(), "{major}: COMMIT PREPARED '{gid}' of xid {x}");
    }

    // Byte identity with the server's own segments.
    assert!(segments.len() >= 2, "{major}: {} complete segments", segments.len());
    for (name, data) in &segments {
        let server = std::fs::read(pg.datadir().join("pg_wal").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(server == data[..], "{major}: segment {name} differs from the server's");
    }
}

on_every_major!(commit_index_and_byte_identity, super::commit_index_and_segments_on_real_wal);

/// Promotion to a new timeline (streaming from the standby that is
/// promoted), `--synchronous` on S3 through kill -9 under load, `verify`
/// naming what is wrong, and `expire` keeping exactly what the kept backups
/// need, on `major`.
async fn promotion_verify_and_expire(major: u32) {
    if !wanted(major) {
        return;
    }
    crate::stream::follows_promotion_to_timeline_2(Backend::local(), major).await;
    kill9_during_load_loses_nothing(Backend::s3(), &["--synchronous"], major).await;
    crate::verify::verify_names_what_is_wrong(Backend::local(), major).await;
    crate::expire::keeps_the_newest_backups_and_the_wal_they_need(Backend::local(), major).await;
}

on_every_major!(promotion_verify_expire, super::promotion_verify_and_expire);

/// A server that cannot compress: 16 built without lz4 falls back to
/// compressing on pgpitr's side, saying so once; an explicit `--compress
/// server-lz4` or `server-zstd` is a one-line error naming the client-side
/// choice; so on 14, which has no server-side compression at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_follows_the_server() {
    for major in [14, NO_LZ4_MAJOR] {
        if !wanted(major) {
            continue;
        }
        let backend = Backend::local();
        let pg = if major == 14 { PgCluster::builder().major(14) } else { PgCluster::builder().without_lz4() }.start();
        for algo in ["lz4", "zstd"] {
            let refused = run(&mut backup_cmd(&pg, &backend, &["--compress", &format!("server-{algo}")]));
            let line = refused.fails_with(&["cannot compress", &format!("--compress client-{algo}")]);
            assert!(major == 14 || line.contains(algo), "{major}: the server's reason: {line}");
        }
        let mut auto = backup_cmd(&pg, &backend, &["--json"]);
        let out = run(auto.env("PGPITR_LOG", "info")).ok();
        let info: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(info["compression"], "client-lz4", "{major}");
        let said = out.stderr.lines().filter(|l| l.contains("compressing with lz4 here")).count();
        assert_eq!(said, 1, "{major}: one line says so:\n{}", out.stderr);
    }
}
