//! The unfinished segment: merged while it fills, so it stays a handful of
//! objects; merges cut short at any step; resume from it.

use crate::common::*;
use crate::stream::{init_repo, spawn_archiver, start_archiver, verify_wal_continuity};
use pgpitr_repo::wal::{self, WalObjectId};
use pgpitr_storage::{FaultMode, FaultyStorage, LocalStorage, Op, Storage};
use pgpitr_testkit::*;
use pgpitr_types::{SegNo, TimelineId};
use std::sync::Arc;
use std::time::Duration;

/// Objects of the open segment once merges caught up (see
/// `pgpitr-stream/src/compact.rs`).
const AT_REST: usize = 15;

/// The newest segment of timeline 1 and its objects (cover and covered).
async fn open_segment(storage: &dyn Storage) -> (SegNo, Vec<WalObjectId>, Vec<WalObjectId>) {
    // s3s-fs fails a listing that races a delete: a passing error.
    let mut tries = 0;
    let tls = loop {
        match wal::scan(storage, seg16()).await {
            Ok((tls, _)) => break tls,
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("listing failed, again: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot list the repository: {e}"),
        }
    };
    let Some((tl, Some((last, _)))) = tls.get(&TimelineId(1)).map(|tl| (tl, tl.objects.last())) else {
        return (SegNo(0), Vec::new(), Vec::new());
    };
    let segno = last.segno;
    let of = |v: &Vec<(WalObjectId, _)>| v.iter().map(|(id, _)| *id).filter(|id| id.segno == segno).collect();
    (segno, of(&tl.objects), of(&tl.covered))
}

/// One commit per transaction, each acknowledged only once stored (a
/// synchronous standby): in synchronous mode every commit is a piece of its
/// own, thousands in one segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commits_leave_a_handful_of_objects_and_a_quick_resume_s3() {
    let backend = Backend::s3();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let storage = backend.storage().await;
    let s = StreamProc::start(&pg, &backend, &["--synchronous"]);
    wait_streaming(&pg, "pgpitr");
    pg.set_and_reload("synchronous_standby_names", "pgpitr");
    let script = pg.scratch_dir().join("insert.sql");
    std::fs::write(&script, "INSERT INTO t VALUES (1);\n").unwrap();
    let bench = pgbench_thread(&pg, &["-c", "1", "-t", "3000", "-n", "-f", &script.display().to_string(), "postgres"]);
    // The cover is read by a resume; the pieces inside it are only being
    // deleted (their merges are stored).
    let (mut most_cover, mut most) = (0, 0);
    while !bench.is_finished() {
        let (_, cover, covered) = open_segment(storage.as_ref()).await;
        most_cover = most_cover.max(cover.len());
        most = most.max(cover.len() + covered.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(bench.join().unwrap().status.success());
    eprintln!("the open segment was held in {most} objects at most, {most_cover} in its cover");
    // At rest, plus up to 4 pieces in flight and the merge being stored.
    assert!(most_cover <= AT_REST + 5, "the open segment's cover reached {most_cover} objects");
    assert!(most <= 4 * AT_REST, "the open segment was held in {most} objects");
    let (segno, cover, _) = open_segment(storage.as_ref()).await;
    let merged = cover.iter().filter(|id| id.range(seg16()).0.distance_to(id.range(seg16()).1) > 64 * 1024).count();
    assert!(merged > 0, "3000 commits were merged into larger pieces: {cover:?}");

    // kill -9 and start again: the resume reads a handful of objects, and
    // the commits waiting meanwhile go through.
    s.kill9();
    let s = StreamProc::start(&pg, &backend, &["--synchronous"]);
    wait_streaming(&pg, "pgpitr");
    let end = lsn(&pg.sql("INSERT INTO t VALUES (2); SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    pg.sql("ALTER SYSTEM RESET synchronous_standby_names; SELECT pg_reload_conf()");
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let (after, cover, covered) = open_segment(storage.as_ref()).await;
    assert_eq!(after, segno, "3000 small commits stay in one segment");
    assert!(cover.len() <= AT_REST && covered.is_empty(), "{cover:?} {covered:?}");
    verify_wal_continuity(&backend).await;
}

/// Bytes `..len` of segment `segno` as the server wrote them.
fn server_wal(pg: &PgCluster, segno: SegNo, len: usize) -> Vec<u8> {
    let name = pgpitr_types::WalFileName::segment(TimelineId(1), segno).to_name(seg16());
    let bytes = std::fs::read(pg.datadir().join("pg_wal").join(name)).expect("read the server's segment");
    bytes[..len].to_vec()
}

/// A merge is stored, then its inputs are deleted: a kill between the two
/// steps, or in the middle of the deletes, leaves pieces inside a merged
/// piece. Readers take the merged piece and check the others; the next
/// stream checks and deletes them. One that disagrees stops it, naming
/// both. (A kill before the merged piece is stored leaves the pieces as they
/// were, which every resume handles.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_cut_short_at_each_step_restores_exactly_and_is_finished_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let clean: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
    init_repo(&pg, clean.clone()).await;
    // The deletes after a merge never succeed: every merge stops between
    // its two steps.
    let no_deletes = Arc::new(FaultyStorage::new(
        LocalStorage::new(dir.path()),
        FaultMode::FailCalls(|op, _| matches!(op, Op::Delete | Op::DeleteMany)),
    ));
    let cfg = pgpitr_stream::StreamConfig { flush_interval: Duration::from_millis(50), ..Default::default() };
    let (cancel, task) = start_archiver(&pg, no_deletes, cfg.clone()).await;
    for i in 0..60 {
        pg.sql(&format!("INSERT INTO t VALUES ({i})"));
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(clean.as_ref(), seg16(), 1, end, Duration::from_secs(20)).await;
    task.abort(); // as kill -9: no shutdown
    let _ = task.await;
    drop(cancel);

    let (segno, cover, covered) = open_segment(clean.as_ref()).await;
    assert!(covered.len() >= 8, "merges stored, their inputs left: {cover:?} {covered:?}");
    let (tls, _) = wal::scan(clean.as_ref(), seg16()).await.unwrap();
    let tl = &tls[&TimelineId(1)];
    let s = wal::assemble_segment(clean.as_ref(), seg16(), tl, segno).await.unwrap().unwrap();
    let valid = s.valid_len as usize;
    assert_eq!(&s.data[..valid], &server_wal(&pg, segno, valid)[..], "the merged pieces hold the server's bytes");

    // Half of the deletes done.
    let half: Vec<String> = covered.iter().step_by(2).map(|id| id.key(seg16())).collect();
    clean.delete_many(&half).await.unwrap();
    assert!(!open_segment(clean.as_ref()).await.2.is_empty());
    let reader_view = wal::assemble_segment(clean.as_ref(), seg16(), tl, segno).await;
    assert!(reader_view.is_err(), "a reader that listed before the deletes finds a piece gone, and lists again");

    // The next stream finishes the merge: checks, then deletes.
    let (cancel, task) = start_archiver(&pg, clean.clone(), cfg.clone()).await;
    let t0 = std::time::Instant::now();
    while !open_segment(clean.as_ref()).await.2.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "pieces inside merged pieces were not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = lsn(&pg.sql("INSERT INTO t VALUES (-1); SELECT pg_current_wal_lsn()"));
    wait_durable(clean.as_ref(), seg16(), 1, end, Duration::from_secs(20)).await;
    cancel.cancel();
    task.await.unwrap().expect("stops cleanly");
    let (tls, _) = wal::scan(clean.as_ref(), seg16()).await.unwrap();
    let s = wal::assemble_segment(clean.as_ref(), seg16(), &tls[&TimelineId(1)], segno).await.unwrap().unwrap();
    let valid = s.valid_len as usize;
    assert_eq!(&s.data[..valid], &server_wal(&pg, segno, valid)[..]);

    // A piece inside a merged piece with other bytes: the stream refuses to
    // resume, naming both objects, and `pgpitr verify` reports it.
    let (_, cover, _) = open_segment(clean.as_ref()).await;
    let merged = *cover.iter().find(|id| id.range(seg16()).0.distance_to(id.range(seg16()).1) > 200).unwrap();
    let (from, _) = merged.range(seg16());
    let base = segno.start_lsn(seg16()).unwrap();
    let off = from.0 - base.0;
    let mut wrong = s.data[off as usize..off as usize + 100].to_vec();
    wrong[50] ^= 0xFF;
    let inside = WalObjectId::piece(TimelineId(1), segno, off as u32, off as u32 + 100);
    let obj =
        pgpitr_repo::object::encode(TimelineId(1), from, &wrong, pgpitr_repo::object::Codec::Lz4, &Default::default());
    clean.put(&inside.key(seg16()), obj).await.unwrap();
    let (_cancel, task) = spawn_archiver(&pg, clean.clone(), cfg).await;
    let err = tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap_err().to_string();
    assert!(err.contains(&inside.key(seg16())) && err.contains(&merged.key(seg16())), "{err}");
    let mut verify = pgpitr();
    verify.args(["verify", "--repo", &dir.path().display().to_string()]);
    let out = run(&mut verify);
    assert_eq!(out.code, Some(1), "{} {}", out.stdout, out.stderr);
    assert!(out.stdout.contains(&inside.key(seg16())) || out.stderr.contains(&inside.key(seg16())), "{}", out.stdout);
}
