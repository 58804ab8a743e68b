//! SIGTERM and SIGINT at any moment of `pgpitr stream`: while connecting,
//! resuming, streaming and taking a scheduled backup. With storage that
//! answers it stores what it received and exits 0 within 5 s; with storage
//! that does not, it exits 1 within 10 s and reports nothing it did not
//! store (the slot keeps the rest). Storing on SIGTERM while streaming is
//! `stream::sigterm_stores_pending_wal_then_exits_0`.

use crate::common::*;
use crate::stream::{init_repo, spawn_archiver};
use pgpitr_storage::{FaultMode, FaultyStorage, LocalStorage, Op, Storage};
use pgpitr_testkit::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What "at once" allows, with a healthy repository.
const PROMPT: Duration = Duration::from_secs(5);

/// Sends `signal` to a running `pgpitr stream`; returns its exit code,
/// stderr and how long it took to exit.
fn signal_and_wait(s: StreamProc, signal: &str) -> (Option<i32>, String, Duration) {
    let pid = s.child.id().to_string();
    let t0 = Instant::now();
    assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    let (code, stderr) = s.wait_exit(Duration::from_secs(30));
    (code, stderr, t0.elapsed())
}

/// A server that takes connections and never answers: the stream hangs in
/// its start-up exchange.
#[test]
fn sigterm_and_sigint_while_connecting_exit_0_at_once() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    for signal in ["-TERM", "-INT"] {
        let mut cmd = pgpitr();
        cmd.args(["stream", "--repo", &dir.path().join("repo").display().to_string(), "-d"])
            .arg(format!("host=127.0.0.1 port={port} user=archiver connect_timeout=60"))
            .env("PGPASSWORD", "x")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let s = StreamProc { child: cmd.spawn().unwrap() };
        std::thread::sleep(Duration::from_secs(1));
        let (code, stderr, took) = signal_and_wait(s, signal);
        assert_eq!(code, Some(0), "{signal}: {stderr}");
        assert!(took < PROMPT, "{signal} took {took:?}");
    }
    drop(silent);
}

/// The resume reads the repository first; a listing that takes a minute
/// does not hold up a shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_resuming_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgCluster::start_default();
    init_repo(&pg, Arc::new(LocalStorage::new(dir.path()))).await;
    let slow = FaultyStorage::new(LocalStorage::new(dir.path()), FaultMode::FailFirst(0))
        .slowed(|op, _| matches!(op, Op::List | Op::ListDirs), Duration::from_secs(60));
    let (cancel, task) = spawn_archiver(&pg, Arc::new(slow), Default::default()).await;
    // Connecting takes milliseconds; then the listing hangs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pg.sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"), "0", "not streaming yet");
    let t0 = Instant::now();
    cancel.cancel();
    tokio::time::timeout(PROMPT, task).await.expect("stopped at once").unwrap().expect("a clean stop");
    assert!(t0.elapsed() < PROMPT);
}

static STORAGE_DOWN: AtomicBool = AtomicBool::new(false);

/// Storage stops accepting WAL while commits go on: the shutdown waits
/// `--shutdown-timeout` (8 s) for it, then fails, having told the server
/// only what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_storage_down_fails_within_10_s_and_reports_only_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let clean: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
    init_repo(&pg, clean.clone()).await;
    let down = FaultyStorage::new(
        LocalStorage::new(dir.path()),
        FaultMode::FailCalls(|_, key| STORAGE_DOWN.load(Ordering::Relaxed) && key.starts_with("wal/")),
    );
    let (cancel, task) = spawn_archiver(&pg, Arc::new(down), Default::default()).await;
    wait_streaming(&pg, "pgpitr");
    let stored = lsn(&pg.sql("INSERT INTO t VALUES (1); SELECT pg_current_wal_lsn()"));
    wait_durable(clean.as_ref(), seg16(), 1, stored, Duration::from_secs(20)).await;
    STORAGE_DOWN.store(true, Ordering::Relaxed);
    let unstored = lsn(&pg.sql("INSERT INTO t VALUES (2); SELECT pg_current_wal_lsn()"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t0 = Instant::now();
    cancel.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), task).await.expect("gave up within 10 s").unwrap();
    let err = result.expect_err("storage did not accept the WAL: not a clean stop").to_string();
    assert!(err.contains("did not accept") && err.contains("slot keeps them"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let end = durable_end(clean.as_ref(), seg16(), 1).await.unwrap();
    assert!(end < unstored, "the second commit was never stored");
    let flushed = lsn(&pg.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgpitr'"));
    assert!(flushed <= end, "the slot was moved to {flushed}, past what is stored ({end})");
}

/// A scheduled backup waiting on a spread checkpoint (an hour long here)
/// is abandoned, not waited for.
#[test]
fn sigterm_during_a_scheduled_backup_exits_0_at_once() {
    let backend = Backend::local();
    let pg = PgCluster::builder().setting("checkpoint_timeout", "1h").start();
    pg.pgbench(&["-i", "-q", "-s", "3"]);
    let s = StreamProc::start(&pg, &backend, &["--backup-every", "1h", "--backup-checkpoint", "spread"]);
    wait_streaming(&pg, "pgpitr");
    let t0 = Instant::now();
    while pg.sql("SELECT count(*) FROM pg_stat_progress_basebackup") != "1" {
        assert!(t0.elapsed() < Duration::from_secs(30), "the scheduled backup did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (code, stderr, took) = signal_and_wait(s, "-TERM");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(took < PROMPT, "took {took:?}");
    // (The server's walsender notices only once its checkpoint is done.)
    let listed = run(pgpitr().args(["list", "--repo", &backend.url()])).ok().stdout;
    assert!(!listed.contains("[complete]"), "no backup completed: {listed}");
}
