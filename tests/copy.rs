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
