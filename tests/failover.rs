//! Failover: after the primary is lost and its standby promoted, `pgpitr
//! stream` pointed at the new primary continues the same repository with no
//! manual step. The server is the same cluster on a timeline that continues
//! the repository's, so pgpitr creates the slot (slots are not replicated)
//! and streams from where the repository ends.

use crate::common::*;
use crate::restore::{restore_and_start, rfc3339, rows, share, take_backup};
use pgpitr_testkit::*;
use std::time::Duration;

/// The `pgpitr` slot on `pg` as `type|temporary`, or "" when there is none.
fn slot(pg: &PgCluster) -> String {
    pg.sql("SELECT slot_type, temporary FROM pg_replication_slots WHERE slot_name = 'pgpitr'")
}

/// A primary streamed into `backend` (init, stream, base backup, rows 1 to
/// 4), then lost: the stream is stopped, the primary too once its standby
/// has replayed all of its WAL, and the standby is promoted to timeline 2.
/// Returns the new primary and a target time between rows 3 and 4.
async fn promoted_standby(backend: &Backend) -> (PgCluster, String) {
    share(backend);
    let mut primary = PgCluster::start_default();
    primary.sql("CREATE TABLE t (x int)");
    let standby = primary.start_standby();
    let mut init = pgpitr();
    backend.env(&mut init);
    run(init.args(["init", "--repo", &backend.url(), "-d", &conninfo(&primary)]).env("PGPASSWORD", REPL_PASSWORD)).ok();
    let s = StreamProc::start(&primary, backend, &[]);
    wait_streaming(&primary, "pgpitr");
    take_backup(&primary, backend);
    primary.sql("INSERT INTO t VALUES (1), (2), (3)");
    let t1 = rfc3339(primary.sql("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint").parse().unwrap());
    // A commit past T1 on timeline 1: a time target needs one to stop at.
    primary.sql("INSERT INTO t VALUES (4)");
    let end = lsn(&primary.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let replayed = wait_for(Duration::from_secs(30), || {
        (standby.try_sql(&format!("SELECT pg_last_wal_replay_lsn() >= '{end}'")).ok()? == "t").then_some(())
    });
    assert!(replayed.is_some(), "the standby did not replay up to {end}");
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    primary.stop();
    standby.promote();
    assert_eq!(slot(&standby), "", "the new primary starts without the slot");
    (standby, t1)
}

async fn failover_to_a_promoted_replica_needs_no_manual_slot_step(backend: Backend) {
    let (new_primary, t1) = promoted_standby(&backend).await;
    // Written before pgpitr runs again: the created slot must not skip it.
    new_primary.sql("INSERT INTO t VALUES (5)");
    let end = lsn(&new_primary.sql("INSERT INTO t VALUES (6); SELECT pg_current_wal_lsn();"));
    // The same command as before the failover, pointed at the new primary.
    let s = StreamProc::start(&new_primary, &backend, &[]);
    wait_streaming(&new_primary, "pgpitr");
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 2, end, Duration::from_secs(30)).await;
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    // Persistent, so that the next start resumes from it as usual.
    assert_eq!(slot(&new_primary), "physical|f");

    let (restored, out) = restore_and_start(&backend, &["--target-time", &t1, "--target-timeline", "1"]);
    assert_eq!(rows(&restored), vec![1, 2, 3], "{}", out.stdout);
    drop(restored);
    // Timeline 1 up to the switch point, then timeline 2: nothing is missing.
    let (restored, out) = restore_and_start(&backend, &["--target", "latest"]);
    assert_eq!(rows(&restored), vec![1, 2, 3, 4, 5, 6], "{}", out.stdout);
}

on_both_backends!(
    failover_to_a_promoted_replica_needs_no_manual_slot_step,
    failover_to_a_promoted_replica_needs_no_manual_slot_step
);

/// `--no-create-slot`: the old refusal, naming where the repository ends,
/// and nothing created on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_create_slot_keeps_the_manual_step() {
    let backend = Backend::local();
    let (new_primary, _) = promoted_standby(&backend).await;
    let storage = backend.storage().await;
    let stored = durable_end(storage.as_ref(), seg16(), 1).await.expect("WAL stored");
    let s = StreamProc::start(&new_primary, &backend, &["--no-create-slot"]);
    let (code, stderr) = s.wait_exit(Duration::from_secs(30));
    let refusal = format!("replication slot \"pgpitr\" does not exist, but the repository holds WAL up to {stored}");
    Run { code, stdout: String::new(), stderr }.fails_with(&[&refusal]);
    assert_eq!(slot(&new_primary), "");
}

/// The slot was dropped by hand while pgpitr was down, on the same server.
/// While the server still has the WAL from where the repository ends, the
/// new slot continues it without a gap; once the server has removed that
/// WAL, the stream names the missing range, asks for a new backup (taking
/// it itself with --backup-every) and streams on from what the slot keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_recreated_and_a_lost_range_is_named() {
    let backend = Backend::local();
    let pg = PgCluster::builder().setting("wal_keep_size", "0").setting("min_wal_size", "32MB").start();
    pg.sql("CREATE TABLE t (x int)");
    let storage = backend.storage().await;
    let first = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    // Something must be stored, or the next start sees a new repository.
    wait_durable(storage.as_ref(), seg16(), 1, first, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));

    pg.sql("SELECT pg_drop_replication_slot('pgpitr')");
    let end = lsn(&pg.sql("INSERT INTO t VALUES (1); SELECT pg_current_wal_lsn()"));
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("creating it"), "{stderr}");
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    assert!(tls[&pgpitr_types::TimelineId(1)].gaps().is_empty(), "no gap while the server had the WAL");
    let repo_end = durable_end(storage.as_ref(), seg16(), 1).await.unwrap();

    // Now the server moves on and removes what the repository lacks.
    pg.sql("SELECT pg_drop_replication_slot('pgpitr')");
    for i in 0..4 {
        pg.sql(&format!("INSERT INTO t VALUES ({i}); SELECT pg_switch_wal(); CHECKPOINT;"));
    }
    let s = StreamProc::start(&pg, &backend, &["--backup-every", "24h", "--backup-checkpoint", "fast"]);
    wait_streaming(&pg, "pgpitr");
    let end = lsn(&pg.sql("INSERT INTO t VALUES (9); SELECT pg_current_wal_lsn()"));
    let t0 = std::time::Instant::now();
    // (A listing racing a merge can show a passing gap: only the lasting one counts.)
    let gap = loop {
        let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
        let tl = &tls[&pgpitr_types::TimelineId(1)];
        if tl.end().is_some_and(|e| e >= end) && tl.gaps().len() == 1 {
            break tl.gaps();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "WAL after the gap was not stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(gap[0].0, repo_end, "the gap starts where the repository ended");
    // The backup taken for the new window completes.
    let t0 = std::time::Instant::now();
    while !run(pgpitr().args(["list", "--repo", &backend.url()])).ok().stdout.contains("[complete]") {
        assert!(t0.elapsed() < Duration::from_secs(60), "no backup was taken after the gap");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let named = format!("WAL {repo_end}..{} is missing from the repository", gap[0].1);
    assert!(stderr.contains(&named) && stderr.contains("taking one now"), "{stderr}");
}
