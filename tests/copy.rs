//! `pgpitr copy` into a second repository: from a local directory to S3 and
//! between two S3 servers; interrupted and resumed; encrypted repositories
//! copied without their key; another cluster's repository refused.

use crate::common::*;
use crate::restore::{restore_and_start, share, take_backup};
use pgpitr_storage::{FaultMode, FaultyStorage, LocalStorage, Op, S3Storage, Storage};
use pgpitr_testkit::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn copy_cmd(from: &Backend, to: &Backend) -> std::process::Command {
    let mut cmd = pgpitr();
    from.env(&mut cmd);
    to.env(&mut cmd);
    cmd.args(["copy", "--from", &from.url(), "--to", &to.url(), "--json"]);
    cmd
}

fn copied(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("copy --json: {e}: {}", run.stdout))
}

static PUTS: AtomicUsize = AtomicUsize::new(0);

/// Puts after the first 4 fail: a copy killed half-way (the binding and
/// some WAL are copied; the backup is not).
fn after_four_puts(op: Op, _key: &str) -> bool {
    op == Op::Put && PUTS.fetch_add(1, Ordering::Relaxed) >= 4
}

/// Stream and a backup into `from`, a copy interrupted half-way (the
/// target is then a consistent repository with no complete backup), the
/// copy run again to the end, a third run that copies nothing, and an
/// exact restore from the copy alone.
async fn copy_between(from: Backend, to: Backend) {
    share(&from);
    share(&to);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int)");
    let stream = StreamProc::start(&pg, &from, &[]);
    wait_streaming(&pg, "pgpitr");
    pg.sql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal()");
    take_backup(&pg, &from);
    let end = lsn(&pg.sql("INSERT INTO t SELECT generate_series(1001, 3000); SELECT pg_current_wal_lsn()"));
    wait_durable(from.storage().await.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    // Interrupted: the target holds what was copied, and no backup whose
    // backup.json came before its parts.
    PUTS.store(0, Ordering::Relaxed);
    let mode = FaultMode::FailCalls(after_four_puts);
    let faulty: Arc<dyn Storage> = match &to {
        Backend::Local(d) => Arc::new(FaultyStorage::new(LocalStorage::new(d.path().join("repo")), mode)),
        Backend::S3(s3) => Arc::new(FaultyStorage::new(S3Storage::new(s3_options(s3)).await.unwrap(), mode)),
    };
    let err = pgpitr_repo::copy::copy(from.storage().await, faulty, None, 2).await.expect_err("the copy was cut off");
    assert!(err.to_string().contains("put"), "{err}");
    let mut list = pgpitr();
    to.env(&mut list);
    let listed = run(list.args(["list", "--json", "--repo", &to.url()])).ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let complete = listed["backups"].as_array().unwrap().iter().filter(|b| b["status"] == "complete").count();
    assert_eq!(complete, 0, "a backup is complete in a half-copied target: {listed:#}");

    let first = copied(&run(&mut copy_cmd(&from, &to)).ok());
    assert!(first["copied_objects"].as_u64().unwrap() > 0, "{first}");
    assert!(first["present_objects"].as_u64().unwrap() >= 3, "the resumed copy copied again: {first}");
    assert_eq!(first["backups"], 1, "{first}");
    let again = copied(&run(&mut copy_cmd(&from, &to)).ok());
    assert_eq!(again["copied_objects"], 0, "not idempotent: {again}");

    // The copy alone restores exactly.
    let (restored, _) = restore_and_start(&to, &["--target", "latest"]);
    assert_eq!(restored.sql("SELECT count(*), max(id) FROM t"), "3000|3000");

    // A repository of another cluster is refused, and left as it was.
    let other = PgCluster::start_default();
    let elsewhere = Backend::local();
    take_backup(&other, &elsewhere);
    let mut cmd = copy_cmd(&elsewhere, &to);
    run(&mut cmd).fails_with(&["belongs to another cluster"]);
    let after = copied(&run(&mut copy_cmd(&from, &to)).ok());
    assert_eq!(after["copied_objects"], 0, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_a_local_directory_to_s3() {
    let from = Backend::local();
    let to = Backend::s3();
    copy_between(from, to).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_between_two_s3_servers() {
    let from = Backend::s3();
    let to = Backend::s3_beside(&from);
    copy_between(from, to).await;
}

/// An encrypted repository is copied as stored, without its key, and the
/// copy restores with the key alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_repository_is_copied_without_its_key() {
    let from = Backend::local();
    let to = Backend::local();
    share(&from);
    share(&to);
    let key = crate::encryption::key_file("7e");
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 500) id");
    let mut backup = backup_cmd(&pg, &from, &["--json"]);
    run(backup.env("PGPITR_KEY_FILE", &key.path)).ok();
    let out = copied(&run(&mut copy_cmd(&from, &to)).ok());
    assert_eq!(out["backups"], 1, "{out}");
    let storage = to.storage().await;
    let binding: serde_json::Value = serde_json::from_slice(&storage.get("pgpitr.json").await.unwrap()).unwrap();
    assert_eq!(binding["encryption"]["kek"]["kind"], "file");
    let mut restored = PgCluster::empty_of(test_major());
    let mut cmd = crate::restore::restore_cmd(&to, &restored.datadir(), &["--target", "latest"]);
    run(cmd.env("PGPITR_KEY_FILE", &key.path)).ok();
    restored.start_restored(&[("PGPITR_KEY_FILE", key.path.display().to_string())]);
    restored.wait_promoted(Duration::from_secs(120));
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "500");
}

/// `pgpitr stream --copy-to`, with the copy's environment beside the
/// primary's.
fn stream_copying(pg: &PgCluster, from: &Backend, to: &Backend, extra: &[&str]) -> StreamProc {
    let mut args = vec!["--copy-to".to_string(), to.url()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, std::ffi::OsString)> = match to {
        Backend::S3(s3) => s3.env().into_iter().map(|(k, v)| (k, v.into())).collect(),
        Backend::Local(_) => Vec::new(),
    };
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    StreamProc::start_env(pg, from, &args, &env)
}

fn complete_backups(backend: &Backend) -> usize {
    let mut list = pgpitr();
    backend.env(&mut list);
    let listed = run(list.args(["list", "--json", "--repo", &backend.url()])).ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    listed["backups"].as_array().unwrap().iter().filter(|b| b["status"] == "complete").count()
}

fn flushed(pg: &PgCluster) -> pgpitr_types::Lsn {
    lsn(&pg.sql("SELECT coalesce(flush_lsn, '0/0') FROM pg_stat_replication WHERE application_name = 'pgpitr'"))
}

/// A stream keeps a copy on a second S3 server in step while commits
/// arrive: the copy receives the scheduled backup and the WAL, its lag is
/// in the metrics, and a restore from the copy alone gives what a restore
/// from the primary gives, to a time in the middle of the load and to the
/// end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_copy_under_load_restores_like_the_primary() {
    let from = Backend::s3();
    let to = Backend::s3_beside(&from);
    share(&from);
    share(&to);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int)");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let stream = stream_copying(
        &pg,
        &from,
        &to,
        &["--metrics-addr", &addr, "--backup-every", "1h", "--backup-checkpoint", "fast"],
    );
    wait_streaming(&pg, "pgpitr");
    let backed_up = wait_for(Duration::from_secs(120), || (complete_backups(&to) == 1).then_some(()));
    assert!(backed_up.is_some(), "the scheduled backup never reached the copy");
    for i in 0..100 {
        pg.sql(&format!("INSERT INTO t SELECT generate_series({}, {})", i * 100 + 1, i * 100 + 100));
    }
    let mid = pg.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(20));
    for i in 100..200 {
        pg.sql(&format!("INSERT INTO t SELECT generate_series({}, {})", i * 100 + 1, i * 100 + 100));
    }
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(from.storage().await.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    wait_durable(to.storage().await.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let body = crate::metrics::scrape(port);
    let lag = crate::metrics::sample(&body, "pgpitr_copy_lag_seconds").expect("pgpitr_copy_lag_seconds");
    assert!((0.0..30.0).contains(&lag), "{body}");
    assert!(crate::metrics::sample(&body, "pgpitr_copy_lag_bytes").is_some(), "{body}");
    let copied = crate::metrics::sample(&body, "pgpitr_copy_copied_bytes_total").expect("copied bytes");
    assert!(copied > 1e6, "{body}");
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    for (target, want) in
        [(vec!["--target-time", mid.as_str()], "10000|50005000"), (vec!["--target", "latest"], "20000|200010000")]
    {
        let (primary, _) = restore_and_start(&from, &target);
        let (copy, _) = restore_and_start(&to, &target);
        let q = "SELECT count(*), sum(id) FROM t";
        assert_eq!(primary.sql(q), want, "{target:?} from the primary");
        assert_eq!(copy.sql(q), want, "{target:?} from the copy");
    }
}

/// `--copy-sync`: WAL is reported flushed only once the copy holds it too.
/// With the copy's server stopped, the primary repository stores the WAL
/// but the flush position stays put; once it answers, the flush position
/// moves and the copy holds the WAL. A copy bound to another cluster is
/// refused before streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_sync_reports_wal_flushed_only_once_the_copy_holds_it() {
    let from = Backend::local();
    let to = Backend::s3();
    share(&from);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int)");
    let stream = stream_copying(&pg, &from, &to, &["--synchronous", "--copy-sync"]);
    wait_streaming(&pg, "pgpitr");
    let first = lsn(&pg.sql("INSERT INTO t VALUES (1); SELECT pg_current_wal_lsn()"));
    assert!(wait_for(Duration::from_secs(30), || (flushed(&pg) >= first).then_some(())).is_some());

    let Backend::S3(s3) = &to else { unreachable!() };
    s3.pause();
    let second = lsn(&pg.sql("INSERT INTO t VALUES (2); SELECT pg_current_wal_lsn()"));
    wait_durable(from.storage().await.as_ref(), seg16(), 1, second, Duration::from_secs(10)).await;
    std::thread::sleep(Duration::from_secs(2));
    let held = flushed(&pg);
    s3.resume();
    assert!(held < second, "reported {held} flushed while the copy could not hold {second}");
    assert!(wait_for(Duration::from_secs(60), || (flushed(&pg) >= second).then_some(())).is_some());
    wait_durable(to.storage().await.as_ref(), seg16(), 1, second, Duration::from_secs(1)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    let other = PgCluster::start_default();
    let elsewhere = Backend::local();
    take_backup(&other, &elsewhere);
    let mut cmd = pgpitr();
    from.env(&mut cmd);
    cmd.args(["stream", "--repo", &from.url(), "--copy-to", &elsewhere.url(), "-d", &conninfo(&pg)])
        .env("PGPASSWORD", REPL_PASSWORD);
    run(&mut cmd).fails_with(&["belongs to another cluster"]);
}

/// Two repositories behind one S3 endpoint: the copy runs inside the store
/// (CopyObject, each object verified by its entity tag), copies nothing
/// when run again, and the copy restores exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_behind_one_endpoint_runs_inside_the_store() {
    let from = Backend::s3();
    let Backend::S3(s3) = &from else { unreachable!() };
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int)");
    let stream = StreamProc::start(&pg, &from, &[]);
    wait_streaming(&pg, "pgpitr");
    pg.sql("INSERT INTO t SELECT generate_series(1, 1000)");
    take_backup(&pg, &from);
    let end = lsn(&pg.sql("INSERT INTO t SELECT generate_series(1001, 2500); SELECT pg_current_wal_lsn()"));
    wait_durable(from.storage().await.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    let to_url = s3.repo_url("pitr", "copy");
    let copy = || {
        let mut cmd = pgpitr();
        from.env(&mut cmd);
        cmd.args(["copy", "--from", &from.url(), "--to", &to_url, "--json"]);
        copied(&run(&mut cmd).ok())
    };
    let first = copy();
    assert_eq!(first["server_side"], true, "{first}");
    assert_eq!(first["backups"], 1, "{first}");
    assert!(first["copied_bytes"].as_u64().unwrap() > 1_000_000, "{first}");
    let again = copy();
    assert_eq!(again["copied_objects"], 0, "{again}");

    let mut restored = PgCluster::empty_of(test_major());
    let mut cmd = pgpitr_at(crate::restore::shared_binary());
    from.env(&mut cmd);
    cmd.args(["restore", "--repo", &to_url, "--target", "latest", "--pgdata"]).arg(restored.datadir());
    run(&mut cmd).ok();
    restored.start_restored(&crate::restore::pg_env(&from));
    restored.wait_promoted(Duration::from_secs(120));
    assert_eq!(restored.sql("SELECT count(*), max(id) FROM t"), "2500|2500");
}
