//! `pgpitr init` and the bad-input contract: every refusal is one line that
//! names the cause, a non-zero exit, and nothing written.

use crate::common::{Run, pgpitr, run};
use pgpitr_testkit::*;
use std::path::Path;

fn conninfo(pg: &PgCluster, user: &str) -> String {
    format!("host=127.0.0.1 port={} user={user} dbname=postgres", pg.port())
}

fn init(pg: &PgCluster, repo: &str, user: &str, password: &str) -> Run {
    run(pgpitr().args(["init", "--repo", repo, "-d", &conninfo(pg, user)]).env("PGPASSWORD", password))
}

fn read_binding(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("pgpitr.json")).expect("binding written")).expect("binding is JSON")
}

#[test]
fn init_binds_local_repository_once() {
    let pg = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = init(&pg, repo.to_str().unwrap(), REPL_USER, REPL_PASSWORD).ok();
    assert!(out.stdout.contains("initialised"), "{}", out.stdout);
    let sysid = pg.sql("SELECT system_identifier FROM pg_control_system()");
    let b = read_binding(&repo);
    assert_eq!(b["system_identifier"], sysid);
    assert_eq!(b["pg_major"], pg.major());
    assert_eq!(b["wal_segment_size"], 16 * 1024 * 1024);
    let before = std::fs::read(repo.join("pgpitr.json")).unwrap();

    // Again, via a file:// URL: a no-op that says so.
    let again = init(&pg, &format!("file://{}", repo.display()), REPL_USER, REPL_PASSWORD).ok();
    assert!(again.stdout.contains("already initialised"), "{}", again.stdout);
    assert_eq!(std::fs::read(repo.join("pgpitr.json")).unwrap(), before, "binding must not be rewritten");
}

#[test]
fn init_json_and_every_auth_method() {
    let pg = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    for (i, (user, pw)) in
        [(REPL_USER, REPL_PASSWORD), (MD5_USER, MD5_PASSWORD), (PLAIN_USER, PLAIN_PASSWORD), (TRUST_USER, "")]
            .into_iter()
            .enumerate()
    {
        let repo = dir.path().join(format!("r{i}"));
        let out = run(pgpitr()
            .args(["init", "--json", "--repo", repo.to_str().unwrap(), "-d", &conninfo(&pg, user)])
            .env("PGPASSWORD", pw))
        .ok();
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("--json prints JSON");
        assert_eq!(v["created"], true, "{user}");
        assert_eq!(v["pg_major"], pg.major());
    }
}

#[test]
fn init_with_1mib_segments_records_segment_size() {
    let pg = PgCluster::builder().wal_segsize_mb(1).start();
    let dir = tempfile::tempdir().unwrap();
    init(&pg, dir.path().to_str().unwrap(), REPL_USER, REPL_PASSWORD).ok();
    assert_eq!(read_binding(dir.path())["wal_segment_size"], 1024 * 1024);
}

#[test]
fn refuses_repository_of_another_cluster() {
    let a = PgCluster::start_default();
    let b = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().to_str().unwrap();
    init(&a, repo, REPL_USER, REPL_PASSWORD).ok();
    let before = std::fs::read(dir.path().join("pgpitr.json")).unwrap();
    let sys_b = b.sql("SELECT system_identifier FROM pg_control_system()");
    init(&b, repo, REPL_USER, REPL_PASSWORD).fails_with(&["belongs to another cluster", &sys_b]);
    assert_eq!(std::fs::read(dir.path().join("pgpitr.json")).unwrap(), before, "nothing overwritten");
}

#[test]
fn unreachable_host() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let out = run(pgpitr()
        .args(["init", "--repo", dir.path().to_str().unwrap()])
        .args(["-d", &format!("host=127.0.0.1 port={port} user=x connect_timeout=3")]));
    out.fails_with(&[&format!("127.0.0.1:{port}"), "refused"]);
    assert!(!dir.path().join("pgpitr.json").exists());
}

#[test]
fn wrong_password() {
    let pg = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    init(&pg, dir.path().to_str().unwrap(), REPL_USER, "not-the-password")
        .fails_with(&["password authentication failed", REPL_USER]);
    assert!(!dir.path().join("pgpitr.json").exists());
}

#[test]
fn role_without_replication() {
    let pg = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    init(&pg, dir.path().to_str().unwrap(), NOREPL_USER, NOREPL_PASSWORD).fails_with(&["REPLICATION"]);
}

#[test]
fn wal_level_minimal() {
    let pg = PgCluster::builder().setting("wal_level", "minimal").setting("max_wal_senders", "0").start();
    let dir = tempfile::tempdir().unwrap();
    init(&pg, dir.path().to_str().unwrap(), REPL_USER, REPL_PASSWORD).fails_with(&["max_wal_senders", "wal_level"]);
}

#[test]
fn malformed_conninfo_and_password_on_argv() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().to_str().unwrap();
    run(pgpitr().args(["init", "--repo", repo, "-d", "host=127.0.0.1 port"]))
        .fails_with(&["invalid connection string"]);
    run(pgpitr().args(["init", "--repo", repo, "-d", "postgres://u@127.0.0.1:notaport/db"]))
        .fails_with(&["invalid connection string"]);
    let secret = "hunter2-on-argv";
    let out = run(pgpitr().args(["init", "--repo", repo, "-d", &format!("postgres://u:{secret}@127.0.0.1/db")]));
    let line = out.fails_with(&["password", "PGPASSWORD"]);
    assert!(!line.contains(secret), "the secret must not be echoed: {line}");
}

#[test]
fn malformed_repo_url() {
    for (url, fragment) in [("s4://bucket/x", "s4"), ("s3://", "bucket"), ("s3://bkt/x?bogus=1", "bogus")] {
        run(pgpitr().args(["init", "--repo", url, "-d", "host=127.0.0.1 port=1 user=x"])).fails_with(&[fragment]);
    }
}

#[test]
fn unwritable_local_directory() {
    let pg = PgCluster::start_default();
    let dir = tempfile::tempdir().unwrap();
    // A path below a regular file cannot be created, even by root.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let repo = file.join("repo");
    init(&pg, repo.to_str().unwrap(), REPL_USER, REPL_PASSWORD).fails_with(&[file.to_str().unwrap()]);
}

#[test]
fn s3_repository_init_and_refusals() {
    let pg = PgCluster::start_default();
    let s3 = S3Server::start();
    s3.create_bucket("pitr");
    let url = s3.repo_url("pitr", "cluster-a");
    let with_s3 = |cmd: &mut std::process::Command| {
        for (k, v) in s3.env() {
            cmd.env(k, v);
        }
    };

    let mut ok = pgpitr();
    with_s3(&mut ok);
    run(ok.args(["init", "--repo", &url, "-d", &conninfo(&pg, REPL_USER)]).env("PGPASSWORD", REPL_PASSWORD)).ok();
    let stored = s3.data_dir().join("pitr/cluster-a/pgpitr.json");
    assert!(stored.is_file(), "binding stored in the bucket under the prefix");

    let mut again = pgpitr();
    with_s3(&mut again);
    let out =
        run(again.args(["init", "--repo", &url, "-d", &conninfo(&pg, REPL_USER)]).env("PGPASSWORD", REPL_PASSWORD))
            .ok();
    assert!(out.stdout.contains("already initialised"));

    // Missing bucket: refused, and not created behind our back.
    let mut missing = pgpitr();
    with_s3(&mut missing);
    let out = run(missing
        .args(["init", "--repo", &s3.repo_url("no-such-bucket", "x"), "-d", &conninfo(&pg, REPL_USER)])
        .env("PGPASSWORD", REPL_PASSWORD));
    out.fails_with(&["no-such-bucket"]);
    assert!(!s3.data_dir().join("no-such-bucket").exists());

    // Wrong secret key: refused as a credentials problem, quickly.
    let mut wrong = pgpitr();
    with_s3(&mut wrong);
    wrong.env("AWS_SECRET_ACCESS_KEY", "definitely-wrong");
    let began = std::time::Instant::now();
    let out = run(wrong
        .args(["init", "--repo", &s3.repo_url("pitr", "other"), "-d", &conninfo(&pg, REPL_USER)])
        .env("PGPASSWORD", REPL_PASSWORD));
    let line = out.fails_with(&["pitr"]);
    let lower = line.to_lowercase();
    assert!(lower.contains("credential") || lower.contains("access denied") || lower.contains("signature"), "{line}");
    assert!(!line.contains("definitely-wrong"), "secret echoed: {line}");
    assert!(began.elapsed() < std::time::Duration::from_secs(20), "permanent errors must not be retried for long");
}

/// The S3 placement a repository was initialised with (server-side
/// encryption, storage classes) is recorded, and writers must give the
/// same: a stream or backup cannot store some objects otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_placement_is_recorded_and_kept() {
    let pg = PgCluster::start_default();
    let backend = crate::common::Backend::s3();
    let placed = format!("{}&sse=AES256&wal-storage-class=STANDARD", backend.url());
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    run(cmd.args(["init", "--repo", &placed, "-d", &conninfo(&pg, REPL_USER)]).env("PGPASSWORD", REPL_PASSWORD)).ok();
    let storage = backend.storage().await;
    let b: serde_json::Value = serde_json::from_slice(&storage.get("pgpitr.json").await.unwrap()).unwrap();
    assert_eq!(b["s3_placement"]["sse"], "AES256");
    assert_eq!(b["s3_placement"]["wal_storage_class"], "STANDARD");
    // A writer without them: refused, naming both.
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    run(cmd
        .args(["backup", "--repo", &backend.url(), "-d", &conninfo(&pg, REPL_USER)])
        .env("PGPASSWORD", REPL_PASSWORD))
    .fails_with(&["stores objects with sse=AES256", "the URL gives sse=(none)"]);
    // Readers need not repeat them.
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    run(cmd.args(["list", "--repo", &backend.url()])).ok();
}
