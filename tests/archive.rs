//! `pgpitr wal-push` as PostgreSQL's archive_command: segments and history
//! files stored so that restores replay them exactly; the same WAL pushed
//! again succeeds, different WAL for a stored segment and another cluster's
//! segment are refused; beside a running stream on the same repository.

use crate::common::*;
use crate::restore::{restore_and_start, share, shared_binary, take_backup};
use pgpitr_testkit::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A directory the `postgres` OS user may write.
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Lets the `postgres` OS user write where root wrote (a local repository).
fn open_tree(backend: &Backend) {
    if let Backend::Local(d) = backend {
        let st = std::process::Command::new("chmod").arg("-R").arg("a+rwX").arg(d.path()).status().unwrap();
        assert!(st.success());
    }
}

/// archive_command: keep a copy of each file for the test, then push it.
fn archive_to(pg: &PgCluster, backend: &Backend, scripts: &Path, copies: &Path) {
    let env: String = pg_env_lines(backend);
    let script = scripts.join("push.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\n{env}cp \"$1\" \"{}/$(basename \"$1\")\"\nexec {} wal-push --repo '{}' \"$1\"\n",
            copies.display(),
            shared_binary().display(),
            backend.url()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    pg.set_and_reload("archive_command", &format!("{} %p", script.display()));
}

fn pg_env_lines(backend: &Backend) -> String {
    crate::restore::pg_env(backend).iter().map(|(k, v)| format!("export {k}='{v}'\n")).collect()
}

/// Switches to a new segment and waits until the archiver has it stored.
fn switch_and_archive(pg: &PgCluster) -> String {
    let name = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.sql("SELECT pg_switch_wal()");
    let done = wait_for(Duration::from_secs(60), || {
        let s = pg.sql("SELECT coalesce(last_archived_wal, '') || '|' || failed_count FROM pg_stat_archiver");
        let (last, failed) = s.split_once('|').unwrap();
        assert_eq!(failed, "0", "archive_command failed: {}", pg.log());
        (last >= name.as_str()).then_some(())
    });
    assert!(done.is_some(), "{name} never archived: {}", pg.log());
    name
}

/// `file` copied under another name, in a directory of its own.
fn forged_dir_copy(file: &Path, name: &str) -> PathBuf {
    let dir = open_dir().keep();
    let to = dir.join(name);
    std::fs::copy(file, &to).unwrap();
    to
}

fn push(backend: &Backend, file: &Path) -> Run {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    run(cmd.args(["wal-push", "--repo", &backend.url()]).arg(file))
}

async fn archive_command_restores(backend: Backend) {
    share(&backend);
    let pg = PgCluster::builder().setting("archive_mode", "on").start();
    let (scripts, copies) = (open_dir(), open_dir());
    pg.sql("CREATE TABLE t (id int)");
    take_backup(&pg, &backend);
    open_tree(&backend);
    archive_to(&pg, &backend, scripts.path(), copies.path());
    pg.sql("INSERT INTO t SELECT generate_series(1, 1000)");
    switch_and_archive(&pg);
    pg.sql("INSERT INTO t SELECT generate_series(1001, 2500)");
    let last = switch_and_archive(&pg);

    let (restored, _) = restore_and_start(&backend, &["--target", "latest"]);
    assert_eq!(restored.sql("SELECT count(*), max(id) FROM t"), "2500|2500");

    // `check` sees archiving done by wal-push, with no stream and no slot.
    let mut check = pgpitr();
    backend.env(&mut check);
    check.args(["check", "--repo", &backend.url(), "-d", &conninfo(&pg)]).env("PGPASSWORD", REPL_PASSWORD);
    let out = run(&mut check).ok();
    assert!(
        out.stdout.contains("ok   archiving: archive_command stores into the repository: last archived"),
        "{}",
        out.stdout
    );

    // The same WAL again: success, nothing changes; also for a segment of
    // megabytes after compression (s3s-fs drops the connection when it
    // refuses such a body).
    let copy: PathBuf = copies.path().join(&last);
    push(&backend, &copy).ok();
    pg.sql(
        "CREATE TABLE noise AS SELECT md5(random()::text) || md5(random()::text) AS x FROM generate_series(1, 250000)",
    );
    let full = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn() - 1024)");
    switch_and_archive(&pg);
    let stored = backend.storage().await.list("wal/").await.unwrap();
    assert!(stored.iter().any(|m| m.key.ends_with(&full[8..]) && m.size > 4 << 20), "{full}: {stored:?}");
    push(&backend, &copies.path().join(&full)).ok();
    // Rows of 64 bytes across segment ends: a record that goes on into the
    // next segment is in no pushed summary, and its segment says so.
    let mut list = pgpitr();
    backend.env(&mut list);
    let listed = run(list.args(["list", "--index", "--json", "--repo", &backend.url()])).ok();
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let doubts = listed["unindexed"].as_array().unwrap();
    assert!(!doubts.is_empty(), "{listed:#}");

    // A new timeline's first segment starts as a copy of its parent's: its
    // first page may carry the parent's timeline.
    let first = copies.path().join(&last);
    let renamed = forged_dir_copy(&first, &format!("00000002{}", &last[8..]));
    push(&backend, &renamed).ok();
    // Different WAL under a stored segment's name: refused.
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[3 * 8192 + 100] ^= 0xff;
    let forged = open_dir();
    std::fs::write(forged.path().join(&last), &bytes).unwrap();
    push(&backend, &forged.path().join(&last)).fails_with(&["refusing to overwrite", &last]);
    // Another cluster's segment: its header says so.
    let other = PgCluster::start_default();
    let theirs = other.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    std::fs::copy(other.datadir().join("pg_wal").join(&theirs), forged.path().join(&theirs)).unwrap();
    push(&backend, &forged.path().join(&theirs))
        .fails_with(&["WAL header does not match the repository", "system identifier"]);
    // A backup history file is accepted and not stored.
    let label = forged.path().join(format!("{last}.00000028.backup"));
    std::fs::write(&label, "START WAL LOCATION: 0/2000028\n").unwrap();
    push(&backend, &label).ok();
    let stored = backend.storage().await.list("").await.unwrap();
    assert!(stored.iter().all(|m| !m.key.ends_with(".backup")), "{stored:?}");
}

on_both_backends!(archive_command_wal_push_restores_exactly, archive_command_restores);

/// archive_command and a stream on one repository: both store the same
/// segments, neither is refused, and the restore is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_push_beside_a_stream_agrees_on_every_segment() {
    let backend = Backend::s3();
    let pg = PgCluster::builder().setting("archive_mode", "on").start();
    let (scripts, copies) = (open_dir(), open_dir());
    pg.sql("CREATE TABLE t (id int)");
    let stream = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    take_backup(&pg, &backend);
    archive_to(&pg, &backend, scripts.path(), copies.path());
    for i in 0..4 {
        pg.sql(&format!("INSERT INTO t SELECT generate_series({}, {})", i * 1000 + 1, i * 1000 + 1000));
        switch_and_archive(&pg);
    }
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(backend.storage().await.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("refusing"), "{stderr}");
    let (restored, _) = restore_and_start(&backend, &["--target", "latest"]);
    assert_eq!(restored.sql("SELECT count(*), max(id) FROM t"), "4000|4000");
}
