//! `pgpitr stream`: durability, RPO, resumption, timelines, synchronous mode.

use crate::common::*;
use pgpitr_testkit::*;
use std::time::Duration;

async fn idle_commit_becomes_durable(backend: Backend) {
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let storage = backend.storage().await;
    // Let the stream catch up and go idle: nothing fills the segment now.
    let now = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, now, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let commit = lsn(&pg.sql("INSERT INTO t VALUES (1); SELECT pg_current_wal_lsn();"));
    let took = wait_durable(storage.as_ref(), seg16(), 1, commit, Duration::from_secs(10)).await;
    // flush-interval (1 s) + 1 s; the precise distribution is the benchmark's job.
    assert!(took <= Duration::from_secs(2), "a single idle commit took {took:?} to become durable");
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "SIGTERM must exit 0: {stderr}");
}

on_both_backends!(idle_commit_durable_within_seconds, idle_commit_becomes_durable);

/// Every complete segment that pg_receivewal wrote, rebuilt from the
/// repository, must be byte-identical.
async fn byte_identical_with_pg_receivewal(backend: Backend) {
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "2"]);
    let recv_dir = tempfile::tempdir().unwrap();
    pg.sql("SELECT pg_create_physical_replication_slot('recv', true)");
    let mut recv = std::process::Command::new(pg.bin("pg_receivewal"))
        .arg("-D")
        .arg(recv_dir.path())
        .args(["-S", "recv", "-U", SUPERUSER, "-h"])
        .arg(pg.sockdir())
        .args(["-p", &pg.port().to_string(), "--no-loop", "--status-interval=1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pg_receivewal");
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    pg.pgbench(&["-c", "4", "-T", "8", "-n"]);
    // At least three whole segments whatever the machine's speed (~50 MiB
    // of WAL; records that span pages and segments).
    pg.sql("CREATE TABLE wide AS SELECT g, repeat(md5(g::text), 16) AS t FROM generate_series(1, 80000) g");
    pg.sql("SELECT pg_switch_wal()");
    pg.pgbench(&["-c", "2", "-t", "200", "-n"]);
    pg.sql("SELECT pg_switch_wal(); CHECKPOINT;");
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let ok = wait_for(Duration::from_secs(30), || {
        let q = "SELECT write_lsn >= pg_current_wal_lsn() FROM pg_stat_replication WHERE application_name = 'pg_receivewal'";
        (pg.try_sql(q).ok()? == "t").then_some(())
    });
    assert!(ok.is_some(), "pg_receivewal did not catch up");
    let _ = recv.kill();
    let _ = recv.wait();
    assert_eq!(s.terminate().0, Some(0));

    let repo = backend.repo().await;
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let tl = &tls[&pgpitr_types::TimelineId(1)];
    assert!(tl.gaps().is_empty(), "gaps: {:?}", tl.gaps());
    let mut compared = 0;
    for entry in std::fs::read_dir(recv_dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.len() != 24 {
            continue; // .partial and others
        }
        let Ok(pgpitr_types::WalFileName::Segment { tli, segno }) = pgpitr_types::WalFileName::parse(&name, seg16())
        else {
            continue;
        };
        let expected = std::fs::read(recv_dir.path().join(&name)).unwrap();
        let (first, last) = (tl.start().unwrap(), tl.end().unwrap());
        if segno.start_lsn(seg16()).unwrap() < first.segment_floor(seg16()) || segno.end_lsn(seg16()).unwrap() > last {
            continue; // outside what pgpitr was asked to keep
        }
        assert_eq!(tli.0, 1);
        let got = pgpitr_repo::wal::assemble_segment(storage.as_ref(), repo.seg_size(), tl, segno)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("segment {name} missing from the repository"));
        assert!(got.complete || got.valid_len == seg16().bytes(), "{name} incomplete");
        assert!(got.data[..] == expected[..], "segment {name} differs from pg_receivewal's");
        compared += 1;
    }
    assert!(compared >= 3, "only {compared} complete segments compared");
}

on_both_backends!(segments_byte_identical_to_pg_receivewal, byte_identical_with_pg_receivewal);

/// Reads every stored byte of timeline 1 in order and runs the WAL scanner
/// over it: a gap, a duplicate that differs or a torn object breaks page
/// addresses or record CRCs. Returns the commit xids found.
pub(crate) async fn verify_wal_continuity(backend: &Backend) -> Vec<u32> {
    let storage = backend.storage().await;
    // The deletes of a stream's last merges may still run: read as
    // restore does, listing again when a listed piece is gone.
    let events = pgpitr_repo::relisting(pgpitr_repo::RepoError::is_not_found, || async {
        let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await?;
        let tl = &tls[&pgpitr_types::TimelineId(1)];
        assert!(tl.gaps().is_empty(), "gaps: {:?}", tl.gaps());
        let (start, end) = (tl.start().unwrap(), tl.end().unwrap());
        let format = backend.repo().await.major().wal_format();
        let mut scanner = pgpitr_walscan::WalScanner::new(start, seg16(), format);
        let mut events = Vec::new();
        let mut segno = start.segment_number(seg16());
        while segno.start_lsn(seg16()).unwrap() < end {
            let s = pgpitr_repo::wal::assemble_segment(storage.as_ref(), seg16(), tl, segno).await?.unwrap();
            let from = start.max(segno.start_lsn(seg16()).unwrap()).segment_offset(seg16()) as usize;
            let to = if s.complete { s.data.len() } else { s.valid_len as usize };
            scanner
                .feed(&s.data[from..to], &mut events)
                .unwrap_or_else(|e| panic!("WAL broken in segment {segno}: {e}"));
            segno = segno.next();
        }
        Ok(events)
    })
    .await
    .unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            pgpitr_walscan::WalEvent::Commit { xid, .. } => Some(xid),
            _ => None,
        })
        .collect()
}

pub(crate) async fn kill9_during_load_loses_nothing(backend: Backend, extra: &[&str], major: u32) {
    let pg = PgCluster::builder().major(major).start();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    pg.sql("CREATE TABLE marks (id int, x xid8 DEFAULT pg_current_xact_id())");
    let storage = backend.storage().await;
    let mut s = StreamProc::start(&pg, &backend, extra);
    wait_streaming(&pg, "pgpitr");
    let bench = pgbench_thread(&pg, &["-c", "2", "-T", "12", "-n", "postgres"]);
    for (i, delay) in [700u64, 1900, 300].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        pg.sql(&format!("INSERT INTO marks (id) VALUES ({i})"));
        s.kill9();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s = StreamProc::start(&pg, &backend, extra);
        wait_streaming(&pg, "pgpitr");
    }
    assert!(bench.join().unwrap().status.success());
    let end = lsn(&pg.sql("INSERT INTO marks (id) VALUES (99); SELECT pg_current_wal_lsn();"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));
    let commits = verify_wal_continuity(&backend).await;
    let marks: Vec<u32> =
        pg.sql("SELECT (x::text::bigint)::int FROM marks ORDER BY id").lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(marks.len(), 4);
    for xid in marks {
        assert!(commits.contains(&xid), "commit of xid {xid} missing from the repository");
    }
}

on_both_backends!(kill9_at_several_points_loses_nothing, kill9_during_load_loses_nothing, &[], test_major());
// Synchronous mode leaves journals (some created ahead and still empty) on
// local storage, and pieces on S3.
on_both_backends!(
    kill9_at_several_points_loses_nothing_synchronous,
    kill9_during_load_loses_nothing,
    &["--synchronous"],
    test_major()
);

on_both_backends!(survives_postgres_crash_restart, survives_postgres_crash_restart);

async fn survives_postgres_crash_restart(backend: Backend) {
    let mut pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    pg.sql("INSERT INTO t SELECT generate_series(1, 10000)");
    pg.restart_immediate();
    let end = lsn(&pg.sql("INSERT INTO t VALUES (-1); SELECT pg_current_wal_lsn();"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(60)).await;
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("reconnecting"), "the interruption should be logged: {stderr}");
    verify_wal_continuity(&backend).await;
}

on_both_backends!(follows_promotion_to_timeline_2, follows_promotion_to_timeline_2, test_major());

pub(crate) async fn follows_promotion_to_timeline_2(backend: Backend, major: u32) {
    let primary = PgCluster::builder().major(major).start();
    primary.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);");
    let standby = primary.start_standby();
    // pgpitr archives from the standby, which is then promoted.
    let s = StreamProc::start(&standby, &backend, &[]);
    wait_streaming(&standby, "pgpitr");
    primary.sql("INSERT INTO t SELECT generate_series(1, 1000)");
    let before = lsn(&primary.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, before, Duration::from_secs(30)).await;

    standby.promote();
    let after = lsn(&standby.sql("INSERT INTO t VALUES (2); SELECT pg_current_wal_lsn();"));
    let t0 = std::time::Instant::now();
    loop {
        let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
        if tls.get(&pgpitr_types::TimelineId(2)).and_then(|t| t.end()).is_some_and(|e| e >= after) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "timeline 2 WAL not durable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history =
        storage.get(&pgpitr_repo::wal::history_key(pgpitr_types::TimelineId(2))).await.expect("history file stored");
    assert!(String::from_utf8_lossy(&history).starts_with("1\t"), "{:?}", history);
    // The old timeline's tail stays: timeline 1 still ends at its switch point or later.
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    assert!(tls[&pgpitr_types::TimelineId(1)].end().unwrap() >= before);
    assert!(tls[&pgpitr_types::TimelineId(2)].gaps().is_empty());
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
}

/// At a clean shutdown (pg_ctl stop -m fast) the walsender waits until
/// everything is confirmed flushed, then ends COPY with a bare
/// CommandComplete and exits: pgpitr reconnects once the server is back, and
/// nothing before or after the restart is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_server_restart_is_ridden_out() {
    let backend = Backend::local();
    let mut pg = PgCluster::start_default();
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    pg.sql("CREATE TABLE t (x int)");
    pg.restart();
    pg.sql("INSERT INTO t VALUES (1)");
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(60)).await;
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the server ended streaming: it is shutting down"), "{stderr}");
    assert!(stderr.contains("reconnecting"), "{stderr}");
    verify_wal_continuity(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_commit_waits_for_repository() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    // Create the repository and slot, then stop: commits must now wait.
    let s = StreamProc::start(&pg, &backend, &["--synchronous", "--application-name", "pitr_sync"]);
    wait_streaming(&pg, "pgpitr");
    assert_eq!(s.terminate().0, Some(0));
    pg.set_and_reload("synchronous_standby_names", "pitr_sync");

    let committer = {
        let (bin, sock, port) = (pg.bin("psql"), pg.sockdir(), pg.port());
        std::thread::spawn(move || {
            let out = std::process::Command::new(bin)
                .args(["-XAtq", "-U", SUPERUSER, "-d", "postgres", "-h"])
                .arg(sock)
                .args([
                    "-p",
                    &port.to_string(),
                    // One -c each: psql before 15 prints only a string's last result.
                    "-c",
                    "BEGIN",
                    "-c",
                    "INSERT INTO t VALUES (42)",
                    "-c",
                    "SELECT txid_current()",
                    "-c",
                    "COMMIT",
                ])
                .output()
                .expect("psql");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!committer.is_finished(), "the commit returned without a synchronous standby");
    assert_eq!(pg.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"), "1");

    let s = StreamProc::start(&pg, &backend, &["--synchronous", "--application-name", "pitr_sync"]);
    let xid: u32 = committer.join().unwrap().parse().expect("xid");
    // The commit returned, so it must already be in the repository.
    let commits = verify_wal_continuity(&backend).await;
    assert!(commits.contains(&xid), "commit {xid} returned but is not in the repository");
    assert_eq!(pg.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pitr_sync'"), "sync");
    // On a local repository commits go into a journal per segment, which
    // the complete segment replaces.
    let storage = backend.storage().await;
    let journals = |keys: Vec<pgpitr_storage::ObjectMeta>| -> Vec<String> {
        keys.into_iter().map(|m| m.key).filter(|k| k.ends_with(".journal")).collect()
    };
    let before = journals(storage.list("wal/").await.unwrap());
    assert!(!before.is_empty(), "no journal in synchronous mode on a local repository");
    pg.sql("SELECT pg_switch_wal(); INSERT INTO t VALUES (43)");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = journals(storage.list("wal/").await.unwrap());
        if before.iter().all(|k| !now.contains(k)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "journals {before:?} not replaced by their segment: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.terminate().0, Some(0));
    verify_wal_continuity(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stores_pending_wal_then_exits_0() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(&pg, &backend, &["--flush-interval", "1h"]);
    wait_streaming(&pg, "pgpitr");
    let commit = lsn(&pg.sql("INSERT INTO t VALUES (1); SELECT pg_current_wal_lsn();"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let storage = backend.storage().await;
    let end = durable_end(storage.as_ref(), seg16(), 1).await.expect("WAL stored");
    assert!(end >= commit, "SIGTERM must store what was received: durable {end} < commit {commit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_slot_and_busy_slot_and_other_cluster_are_refused() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    // A second stream on the same slot.
    let second = StreamProc::start(&pg, &backend, &[]);
    let (code, stderr) = second.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("pgpitr: error:") && stderr.contains("active"), "{stderr}");
    assert_eq!(s.terminate().0, Some(0));

    // The slot is dropped while pgpitr is down: with --no-create-slot the
    // operator decides (a new slot is `failover::a_dropped_slot_*`).
    pg.sql("SELECT pg_drop_replication_slot('pgpitr')");
    let again = StreamProc::start(&pg, &backend, &["--no-create-slot"]);
    let (code, stderr) = again.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("replication slot \"pgpitr\" does not exist"), "{stderr}");

    // Another cluster pointed at this repository.
    let other = PgCluster::start_default();
    let wrong = StreamProc::start(&other, &backend, &[]);
    let (code, stderr) = wrong.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("belongs to another cluster"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reports_ranges_gaps_and_latest_commit_time() {
    let backend = Backend::local();
    let pg = PgCluster::builder().setting("track_commit_timestamp", "on").start();
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    for _ in 0..3 {
        pg.sql("INSERT INTO t SELECT generate_series(1, 50000); SELECT pg_switch_wal();");
    }
    let commit_time = pg.sql(
        "INSERT INTO t VALUES (7) RETURNING 1; \
         SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
         FROM t WHERE x = 7",
    );
    let commit_time = commit_time.lines().last().unwrap().to_string();
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));

    let out = run(pgpitr().args(["list", "--json", "--repo", &backend.url()])).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["system_identifier"], pg.sql("SELECT system_identifier FROM pg_control_system()"));
    assert_eq!(v["latest_commit_time"], commit_time.as_str());
    // Nothing is restorable before a base backup, whatever WAL is stored.
    assert!(v["latest_restorable_time"].is_null(), "{v}");
    let tl = &v["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    assert!(lsn(tl["end_lsn"].as_str().unwrap()) >= end);
    assert!(lsn(tl["start_lsn"].as_str().unwrap()) < end);
    assert_eq!(tl["gaps"].as_array().unwrap().len(), 0);

    // Remove a complete segment from the middle: list must show the hole.
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let objs = &tls[&pgpitr_types::TimelineId(1)].objects;
    let (victim, _) = objs
        .iter()
        .skip(1)
        .find(|(id, _)| id.kind == pgpitr_repo::wal::WalObjectKind::Segment)
        .expect("a complete segment past the first object");
    storage.delete(&victim.key(seg16())).await.unwrap();
    let out = run(pgpitr().args(["list", "--json", "--repo", &backend.url()])).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let gaps = v["timelines"][0]["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{v}");
    let (gs, ge) = victim.range(seg16());
    assert_eq!(gaps[0]["start_lsn"], gs.to_string());
    assert_eq!(gaps[0]["end_lsn"], ge.to_string());
}

/// A stream in this process into `storage` (under RetryingStorage, as in
/// production), as application "pgpitr", not yet waited for.
pub(crate) type InProcess =
    (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<Result<(), pgpitr_stream::StreamError>>);

pub(crate) async fn spawn_archiver(
    pg: &PgCluster,
    storage: std::sync::Arc<dyn pgpitr_storage::Storage>,
    cfg: pgpitr_stream::StreamConfig,
) -> InProcess {
    use std::sync::Arc;
    let retrying = Arc::new(pgpitr_storage::RetryingStorage::new(storage, pgpitr_storage::RetryPolicy::default()));
    let repo = pgpitr_repo::Repository::open(retrying).await.unwrap();
    let conninfo = format!(
        "host=127.0.0.1 port={} user={REPL_USER} dbname=postgres password={REPL_PASSWORD} application_name=pgpitr",
        pg.port()
    );
    let conn_cfg = pgpitr_pgwire::ConnConfig::parse_with_env(&conninfo, |_| None).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let stats = Arc::new(pgpitr_stream::StreamStats::default());
    let mut archiver = pgpitr_stream::Archiver::new(repo, conn_cfg, cfg, cancel.clone(), stats);
    (cancel, tokio::spawn(async move { archiver.run().await }))
}

/// [`spawn_archiver`], returning once it streams.
pub(crate) async fn start_archiver(
    pg: &PgCluster,
    storage: std::sync::Arc<dyn pgpitr_storage::Storage>,
    cfg: pgpitr_stream::StreamConfig,
) -> InProcess {
    let started = spawn_archiver(pg, storage, cfg).await;
    wait_streaming(pg, "pgpitr");
    started
}

/// Initialises a repository for `pg` in `storage`.
pub(crate) async fn init_repo(pg: &PgCluster, storage: std::sync::Arc<dyn pgpitr_storage::Storage>) {
    let identity = pgpitr_repo::ClusterIdentity {
        system_identifier: pg.sql("SELECT system_identifier FROM pg_control_system()").parse().unwrap(),
        pg_version_num: pg.sql("SHOW server_version_num").parse().unwrap(),
        wal_segment_size: seg16(),
    };
    pgpitr_repo::Repository::init(storage, &identity).await.unwrap();
}

/// The durability contract under storage faults: while uploads fail or
/// their acknowledgements are lost, the flush position the server sees never
/// passes what the repository really holds, and nothing is lost.
/// With `synchronous` on local storage, the WAL goes through journals whose
/// failed appends fall back to pieces (lost acknowledgements leave the same
/// bytes in both).
async fn flush_never_ahead_of_repository(backend: Backend, mode: pgpitr_storage::FaultMode, synchronous: bool) {
    use pgpitr_storage::{FaultyStorage, LocalStorage, Op, S3Storage, Storage};
    use std::sync::Arc;
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let clean = backend.storage().await;
    init_repo(&pg, clean.clone()).await;
    type Count = Box<dyn Fn() -> u64>;
    let (faulty, injected, appends): (Arc<dyn Storage>, Count, Count) = match &backend {
        Backend::Local(d) => {
            let f = Arc::new(FaultyStorage::new(LocalStorage::new(d.path().join("repo")), mode));
            let g = f.clone();
            (f.clone(), Box::new(move || f.injected()), Box::new(move || g.total_attempts(Op::Append)))
        }
        Backend::S3(s3) => {
            let f = Arc::new(FaultyStorage::new(S3Storage::new(s3_options(s3)).await.unwrap(), mode));
            let g = f.clone();
            (f.clone(), Box::new(move || f.injected()), Box::new(move || g.total_attempts(Op::Append)))
        }
    };
    let cfg =
        pgpitr_stream::StreamConfig { status_interval: Duration::from_millis(300), synchronous, ..Default::default() };
    let (cancel, task) = start_archiver(&pg, faulty, cfg).await;

    let bench = pgbench_thread(&pg, &["-c", "2", "-T", "6", "-n", "postgres"]);
    let mut checked = 0;
    while !bench.is_finished() {
        // Read the server's view first: the repository only grows after it.
        let flushed =
            pg.sql("SELECT coalesce(flush_lsn, '0/0') FROM pg_stat_replication WHERE application_name = 'pgpitr'");
        if flushed.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let flushed = lsn(&flushed);
        let stored = durable_end(clean.as_ref(), seg16(), 1).await.unwrap_or_default();
        assert!(flushed <= stored, "server was told {flushed} is flushed but the repository ends at {stored}");
        if flushed.is_valid() {
            checked += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bench.join().unwrap().status.success());
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(clean.as_ref(), seg16(), 1, end, Duration::from_secs(60)).await;
    cancel.cancel();
    task.await.unwrap().expect("archiver stops cleanly");
    assert!(checked >= 3, "only {checked} samples with a flush position");
    assert!(injected() > 0, "no faults were injected");
    let journaled = synchronous && matches!(backend, Backend::Local(_));
    assert_eq!(appends() > 0, journaled, "journal appends: {}", appends());
    verify_wal_continuity(&backend).await;
}

on_both_backends!(
    flush_never_ahead_with_lost_acks,
    flush_never_ahead_of_repository,
    pgpitr_storage::FaultMode::LoseFirst(1),
    false
);
on_both_backends!(
    flush_never_ahead_with_failures,
    flush_never_ahead_of_repository,
    pgpitr_storage::FaultMode::FailFraction(0.3),
    false
);
// Synchronous: journals on local storage, pieces several in flight on S3.
on_both_backends!(
    flush_never_ahead_synchronous_with_lost_acks,
    flush_never_ahead_of_repository,
    pgpitr_storage::FaultMode::LoseFirst(1),
    true
);
on_both_backends!(
    flush_never_ahead_synchronous_with_failures,
    flush_never_ahead_of_repository,
    pgpitr_storage::FaultMode::FailFraction(0.3),
    true
);

/// The local repository of `backend`, counting every call, with each
/// complete segment's object taking 8 s to store.
fn slowed_segments(backend: &Backend) -> std::sync::Arc<pgpitr_storage::FaultyStorage<pgpitr_storage::LocalStorage>> {
    use pgpitr_storage::{FaultMode, FaultyStorage, LocalStorage, Op};
    let Backend::Local(dir) = backend else { panic!("slowed_segments needs a local repository") };
    // Segment objects are the WAL keys without a suffix.
    let segment_put = |op: Op, key: &str| op == Op::PutIfAbsent && key.starts_with("wal/") && !key.contains('.');
    std::sync::Arc::new(
        FaultyStorage::new(LocalStorage::new(dir.path().join("repo")), FaultMode::FailFirst(0))
            .slowed(segment_put, Duration::from_secs(8)),
    )
}

/// In synchronous mode a commit waits neither for its segment's complete
/// object (the segment's last bytes go to its journal) nor for the next
/// segment's journal to be created (that happens while the segment fills).
/// Segment objects are slowed to 8 s here: a commit that waited for one
/// would take that long. A crash while they are being stored leaves those
/// segments whole in journals; the restarted stream stores them as objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commits_wait_neither_for_segments_nor_for_journal_creation() {
    use pgpitr_storage::Op;
    use std::time::Instant;
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int, pad text)");
    init_repo(&pg, backend.storage().await).await;
    let faulty = slowed_segments(&backend);
    // Room for both slowed segments, so reading never pauses for them.
    let cfg = pgpitr_stream::StreamConfig { synchronous: true, max_segments_in_flight: 4, ..Default::default() };
    let (cancel, task) = start_archiver(&pg, faulty.clone(), cfg.clone()).await;
    pg.set_and_reload("synchronous_standby_names", "pgpitr");
    let synced = wait_for(Duration::from_secs(30), || {
        (pg.sql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'pgpitr'") == "sync").then_some(())
    });
    assert!(synced.is_some(), "pgpitr never became the synchronous standby");
    let timed = |sql: &str| {
        let t0 = Instant::now();
        pg.sql(sql);
        t0.elapsed()
    };
    let journal_key = |segno: u64| {
        pgpitr_repo::wal::WalObjectId::journal(pgpitr_types::TimelineId(1), pgpitr_types::SegNo(segno), 0).key(seg16())
    };

    // A journal is open in this segment; the switch completes it.
    pg.sql("INSERT INTO t VALUES (0)");
    pg.sql("SELECT pg_switch_wal()");
    let took = timed("INSERT INTO t VALUES (1)");
    assert!(took < Duration::from_secs(5), "the first commit after a segment switch took {took:?}");

    // Past half of the new segment, the next one's journal is created ahead.
    let segno = lsn(&pg.sql("SELECT pg_current_wal_lsn()")).segment_number(seg16()).0;
    pg.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g");
    let here = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    assert_eq!(here.segment_number(seg16()).0, segno, "the load filled more than its segment");
    assert!(here.segment_offset(seg16()) > 8 << 20, "the load did not fill half of its segment: {here}");
    let ahead = wait_for(Duration::from_secs(10), || {
        (faulty.attempts(Op::CreateJournal, &journal_key(segno + 1)) == 1).then_some(())
    });
    assert!(ahead.is_some(), "the next segment's journal was not created ahead");

    pg.sql("SELECT pg_switch_wal()");
    let took = timed("INSERT INTO t VALUES (2)");
    assert!(took < Duration::from_secs(5), "the first commit in a segment with a journal made ahead took {took:?}");
    // That commit went into the journal made ahead, not a new one.
    assert_eq!(faulty.attempts(Op::CreateJournal, &journal_key(segno + 1)), 1);
    assert!(faulty.attempts(Op::Append, &format!("{}#0", journal_key(segno + 1))) >= 1);

    // A crash while both complete segments are still being stored: their
    // journals hold all of them, so nothing is missing, and the restarted
    // stream stores each as one object and deletes its journals.
    drop(cancel);
    task.abort();
    let storage = backend.storage().await;
    let keys = || async { storage.list("wal/").await.unwrap().into_iter().map(|m| m.key).collect::<Vec<_>>() };
    let segment_keys: Vec<String> = [segno - 1, segno]
        .map(|n| {
            pgpitr_repo::wal::WalObjectId::segment(pgpitr_types::TimelineId(1), pgpitr_types::SegNo(n)).key(seg16())
        })
        .into();
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    assert!(tls[&pgpitr_types::TimelineId(1)].gaps().is_empty(), "a hole after the crash");
    let stored = keys().await;
    assert!(segment_keys.iter().all(|k| !stored.contains(k)), "a slowed segment was stored: {stored:?}");
    let (cancel, task) = start_archiver(&pg, storage.clone(), cfg.clone()).await;
    let end = lsn(&pg.sql("INSERT INTO t VALUES (3); SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = keys().await;
        let journals_of = |n: u64| {
            now.iter()
                .filter_map(|k| pgpitr_repo::wal::WalObjectId::parse(k, seg16()))
                .any(|id| id.segno.0 == n && matches!(id.kind, pgpitr_repo::wal::WalObjectKind::Journal { .. }))
        };
        if segment_keys.iter().all(|k| now.contains(k)) && !journals_of(segno - 1) && !journals_of(segno) {
            break;
        }
        assert!(Instant::now() < deadline, "segments left in journals were not stored whole: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    task.await.unwrap().expect("archiver stops cleanly");
    let commits = verify_wal_continuity(&backend).await;
    let xids = pg.sql("SELECT string_agg(xmin::text, ' ') FROM t WHERE x <= 3");
    for xid in xids.split(' ').map(|x| x.parse::<u32>().unwrap()) {
        assert!(commits.contains(&xid), "commit of xid {xid} missing from the repository");
    }
    // No empty journal is left behind: each one left holds WAL.
    for m in storage.list("wal/").await.unwrap().into_iter().filter(|m| m.key.ends_with(".journal")) {
        let id = pgpitr_repo::wal::WalObjectId::parse(&m.key, seg16()).unwrap();
        let resolved = pgpitr_repo::wal::resolve_journal(storage.as_ref(), seg16(), id).await.unwrap();
        assert!(resolved.is_some(), "an empty journal was left behind: {}", m.key);
    }
}

/// A crash can leave WAL stored past a hole: here a segment's object is
/// still being stored (slowed to 8 s) when the next segment's first piece is
/// stored. The restarted stream must stream the hole again, not resume
/// after the last stored byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_fills_a_hole_left_before_later_wal() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let storage = backend.storage().await;
    init_repo(&pg, storage.clone()).await;
    let faulty = slowed_segments(&backend);
    let cfg = pgpitr_stream::StreamConfig { max_segments_in_flight: 4, ..Default::default() };
    let (cancel, task) = start_archiver(&pg, faulty, cfg.clone()).await;
    let here = lsn(&pg.sql("INSERT INTO t VALUES (0); SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, here, Duration::from_secs(20)).await;
    pg.sql("SELECT pg_switch_wal()");
    pg.sql("INSERT INTO t VALUES (1)");
    let gap = wait_for(Duration::from_secs(10), || {
        let rt = tokio::runtime::Handle::current();
        let (tls, _) =
            tokio::task::block_in_place(|| rt.block_on(pgpitr_repo::wal::scan(storage.as_ref(), seg16()))).ok()?;
        tls.get(&pgpitr_types::TimelineId(1)).filter(|tl| !tl.gaps().is_empty()).map(|tl| tl.gaps())
    });
    assert!(gap.is_some(), "the next segment's piece was not stored before the slowed segment");
    drop(cancel);
    task.abort();

    let (cancel, task) = start_archiver(&pg, storage.clone(), cfg).await;
    let end = lsn(&pg.sql("INSERT INTO t VALUES (2); SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    cancel.cancel();
    task.await.unwrap().expect("archiver stops cleanly");
    let commits = verify_wal_continuity(&backend).await;
    for xid in pg.sql("SELECT string_agg(xmin::text, ' ') FROM t").split(' ').map(|x| x.parse::<u32>().unwrap()) {
        assert!(commits.contains(&xid), "commit of xid {xid} missing from the repository");
    }
}
