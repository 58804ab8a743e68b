//! Encrypted repositories end to end, on both backends: stream, backup and
//! an exact restore to a time with a key file; every stored object sealed;
//! the repository refused without its key or with another.

use crate::common::*;
use crate::restore::{restore_cmd, share};
use pgpitr_testkit::*;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A key file the restored server (the `postgres` OS user under root) can
/// read, and only it.
pub(crate) struct KeyFile {
    _dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
}

pub(crate) fn key_file(hex_byte: &str) -> KeyFile {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("pgpitr.key");
    std::fs::write(&path, format!("{}\n", hex_byte.repeat(32))).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if running_as_root() {
        let st = Command::new("chown").arg("postgres:postgres").arg(&path).status().unwrap();
        assert!(st.success(), "chown the key file");
    }
    KeyFile { _dir: dir, path }
}

/// Starts a restored cluster whose `wal-fetch` reads with `key`, and waits
/// for its promotion.
fn start_with_key(restored: &mut PgCluster, backend: &Backend, key: &KeyFile) {
    let mut env: Vec<(&str, String)> = match backend {
        Backend::S3(s3) => s3.env(),
        Backend::Local(_) => Vec::new(),
    };
    env.push(("PGPITR_KEY_FILE", key.path.display().to_string()));
    restored.start_restored(&env);
    restored.wait_promoted(Duration::from_secs(120));
}

fn with_key(cmd: &mut Command, key: &KeyFile) -> Run {
    run(cmd.env("PGPITR_KEY_FILE", &key.path))
}

async fn encrypted_stream_backup_and_exact_restore(backend: Backend) {
    share(&backend);
    let key = key_file("5a");
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int, note text)");
    let stream = StreamProc::start_env(&pg, &backend, &[], &[("PGPITR_KEY_FILE", OsStr::new(&key.path))]);
    wait_streaming(&pg, "pgpitr");
    pg.sql("INSERT INTO t SELECT g, 'password hunter2 number ' || g FROM generate_series(1, 5000) g");
    with_key(&mut backup_cmd(&pg, &backend, &["--json"]), &key).ok();
    pg.sql("INSERT INTO t VALUES (-1, 'kept')");
    let target = pg.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1100));
    let end = lsn(&pg.sql("INSERT INTO t VALUES (-2, 'after the target'); SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    // Every stored object but the binding and the keyring is sealed.
    let objects = storage.list("").await.unwrap();
    let mut sealed = 0;
    for o in &objects {
        let head = storage.get_range(&o.key, 0..4).await.unwrap();
        if o.key == "pgpitr.json" || o.key.starts_with("keyring/") {
            continue;
        }
        assert!(head[..] == *b"PGPE" || head[..] == *b"PGPJ", "{} is not sealed", o.key);
        sealed += 1;
    }
    assert!(sealed > 5, "{objects:?}");

    // Without the key, or with another: refused, naming the key.
    let mut list = pgpitr();
    backend.env(&mut list);
    list.args(["list", "--repo", &backend.url()]);
    run(&mut list).fails_with(&["is encrypted (key file sha256:", "PGPITR_KEY_FILE"]);
    let other = key_file("c3");
    with_key(&mut list, &other).fails_with(&["and the key given is file sha256:"]);
    let listed = with_key(&mut list, &key).ok();
    assert!(listed.stdout.contains("[complete]"), "{}", listed.stdout);

    // An exact restore to the time, wal-fetch reading with the key the
    // server's environment names.
    let mut restored = PgCluster::empty_of(test_major());
    with_key(&mut restore_cmd(&backend, &restored.datadir(), &["--target-time", target.trim()]), &key).ok();
    let conf = std::fs::read_to_string(restored.datadir().join("postgresql.auto.conf")).unwrap();
    assert!(!conf.contains("pgpitr.key") && !conf.contains("5a5a"), "{conf}");
    start_with_key(&mut restored, &backend, &key);
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "5001");
    assert_eq!(restored.sql("SELECT string_agg(note, ',') FROM t WHERE id < 0"), "kept");
}

on_both_backends!(encrypted_repository_end_to_end, encrypted_stream_backup_and_exact_restore);

/// Synchronous mode on a local repository writes journals, sealed append
/// by append: every commit the primary saw returned is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_synchronous_journals_restore_every_commit() {
    let backend = Backend::local();
    share(&backend);
    let key = key_file("6b");
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int)");
    let stream =
        StreamProc::start_env(&pg, &backend, &["--synchronous"], &[("PGPITR_KEY_FILE", OsStr::new(&key.path))]);
    wait_streaming(&pg, "pgpitr");
    pg.set_and_reload("synchronous_standby_names", "pgpitr");
    with_key(&mut backup_cmd(&pg, &backend, &["--json"]), &key).ok();
    for i in 0..50 {
        pg.sql(&format!("INSERT INTO t VALUES ({i})"));
    }
    let storage = backend.storage().await;
    let journals: Vec<String> =
        storage.list("wal/").await.unwrap().into_iter().map(|o| o.key).filter(|k| k.ends_with(".journal")).collect();
    assert!(!journals.is_empty(), "synchronous mode on a local repository writes journals");
    for j in &journals {
        assert_eq!(&storage.get_range(j, 0..4).await.unwrap()[..], b"PGPJ", "{j} is not sealed");
    }
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let mut restored = PgCluster::empty_of(test_major());
    with_key(&mut restore_cmd(&backend, &restored.datadir(), &["--target", "latest"]), &key).ok();
    start_with_key(&mut restored, &backend, &key);
    assert_eq!(restored.sql("SELECT count(*), max(id) FROM t"), "50|49");
}

fn key_cmd(backend: &Backend, key: &KeyFile, args: &[&str]) -> Run {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    cmd.args(["key"]).args(&args[..1]).args(["--repo", &backend.url()]).args(&args[1..]);
    with_key(&mut cmd, key)
}

/// Rotation while a stream writes: every data key gets the new key's
/// wrapping, nothing is rewritten, the old key is refused once retired,
/// and a restore across the rotation needs only the new key.
async fn rotation_while_streaming(backend: Backend) {
    share(&backend);
    let (old, new) = (key_file("5a"), key_file("7c"));
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int)");
    let stream = StreamProc::start_env(&pg, &backend, &[], &[("PGPITR_KEY_FILE", OsStr::new(&old.path))]);
    wait_streaming(&pg, "pgpitr");
    with_key(&mut backup_cmd(&pg, &backend, &["--json"]), &old).ok();
    pg.sql("INSERT INTO t SELECT generate_series(1, 100)");
    let storage = backend.storage().await;
    // (Times from HEAD on both sides: s3s-fs lists them to the millisecond.)
    let mut before = Vec::new();
    for o in storage.list("").await.unwrap() {
        if !o.key.starts_with("keyring/") && o.key != "pgpitr.json" {
            before.push((o.key.clone(), storage.head(&o.key).await.unwrap().last_modified));
        }
    }

    let new_path = new.path.display().to_string();
    let rotated = key_cmd(&backend, &old, &["rotate", "--new-key-file", &new_path, "--json"]).ok();
    let r: serde_json::Value = serde_json::from_str(&rotated.stdout).unwrap();
    assert!(r["rewrapped"].as_u64().unwrap() >= 1, "{r}");
    // Again: nothing left to do.
    let again = key_cmd(&backend, &old, &["rotate", "--new-key-file", &new_path, "--json"]).ok();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&again.stdout).unwrap()["rewrapped"], 0);
    // No data object was rewritten (pieces may be merged away meanwhile).
    for (key, modified) in &before {
        if let Ok(m) = storage.head(key).await {
            assert_eq!(&m.last_modified, modified, "{key} was rewritten");
        }
    }
    pg.sql("INSERT INTO t SELECT generate_series(101, 200)");
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");

    // Streams restart with the new key; the old one is then retired.
    let stream = StreamProc::start_env(&pg, &backend, &[], &[("PGPITR_KEY_FILE", OsStr::new(&new.path))]);
    wait_streaming(&pg, "pgpitr");
    let end = lsn(&pg.sql("INSERT INTO t SELECT generate_series(201, 300); SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let listed: serde_json::Value =
        serde_json::from_str(&key_cmd(&backend, &new, &["list", "--objects", "--json"]).ok().stdout).unwrap();
    let old_id = listed["previous"][0]["id"].as_str().unwrap().to_string();
    let current = listed["current"]["id"].as_str().unwrap().to_string();
    assert!(listed["data_keys"][0]["objects"].as_u64().unwrap() > 0, "{listed}");
    key_cmd(&backend, &new, &["retire", "--key", &current]).fails_with(&["is the current key"]);
    key_cmd(&backend, &new, &["retire", "--key", &old_id]).ok();

    // The old key is refused now; the new one restores everything.
    let refused = PgCluster::empty_of(test_major());
    run(restore_cmd(&backend, &refused.datadir(), &["--target", "latest"]).env("PGPITR_KEY_FILE", &old.path))
        .fails_with(&["and the key given is file sha256:"]);
    drop(refused.datadir());
    let mut restored = PgCluster::empty_of(test_major());
    with_key(&mut restore_cmd(&backend, &restored.datadir(), &["--target", "latest"]), &new).ok();
    start_with_key(&mut restored, &backend, &new);
    assert_eq!(restored.sql("SELECT count(*), max(id) FROM t"), "300|300");
}

on_both_backends!(key_rotation_while_streaming, rotation_while_streaming);

/// The environment that reaches `kms` with key `key` (S3 settings, which
/// come after, win where both name the same variable: moto takes any
/// credentials).
fn kms_env(kms: &KmsServer, key: &str, backend: &Backend) -> Vec<(&'static str, String)> {
    let mut env = kms.env();
    env.push(("PGPITR_KMS_KEY_ID", key.to_string()));
    if let Backend::S3(s3) = backend {
        env.extend(s3.env());
    }
    env
}

/// Restores the latest point with `env`, starts the server with it and
/// waits for its promotion.
fn restore_latest(backend: &Backend, env: &[(&'static str, String)]) -> PgCluster {
    let mut restored = PgCluster::empty_of(test_major());
    run(restore_cmd(backend, &restored.datadir(), &["--target", "latest"]).envs(env.iter().cloned())).ok();
    restored.start_restored(env);
    restored.wait_promoted(Duration::from_secs(120));
    restored
}

/// A KMS server with a key, the environment that reaches both it and
/// `backend`, and a cluster with an empty table `t`.
fn kms_cluster(backend: &Backend) -> (KmsServer, String, Vec<(&'static str, String)>, PgCluster) {
    share(backend);
    let kms = KmsServer::start();
    let key = kms.create_key();
    let env = kms_env(&kms, &key, backend);
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (id int)");
    (kms, key, env, pg)
}

/// An AWS KMS key wraps the data keys: stream, backup and an exact restore
/// through wal-fetch, with the KMS reached from the server's environment.
async fn kms_encrypted_end_to_end(backend: Backend) {
    // The server lives as long as this binding.
    let (_kms, key, env, pg) = kms_cluster(&backend);
    let os_env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v.as_str()))).collect();
    let stream = StreamProc::start_env(&pg, &backend, &[], &os_env);
    wait_streaming(&pg, "pgpitr");
    run(backup_cmd(&pg, &backend, &["--json"]).envs(env.iter().cloned())).ok();
    let end = lsn(&pg.sql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let binding: serde_json::Value = serde_json::from_slice(&storage.get("pgpitr.json").await.unwrap()).unwrap();
    assert_eq!(binding["encryption"]["kek"]["kind"], "aws-kms");
    assert_eq!(binding["encryption"]["kek"]["id"], key.as_str());

    let restored = restore_latest(&backend, &env);
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "1000");
    // Without KMS access named: refused, naming the key.
    let mut list = pgpitr();
    backend.env(&mut list);
    run(list.args(["list", "--repo", &backend.url()])).fails_with(&["is encrypted (key aws-kms", "PGPITR_KMS_KEY_ID"]);
}

on_both_backends!(kms_encrypted_repository_end_to_end, kms_encrypted_end_to_end);

/// `pgpitr init` for `pg` with `env` and `extra` arguments.
fn init_cmd(pg: &PgCluster, backend: &Backend, env: &[(&'static str, String)], extra: &[&str]) -> Run {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    cmd.envs(env.iter().cloned())
        .args(["init", "--repo", &backend.url(), "-d", &conninfo(pg)])
        .args(extra)
        .env("PGPASSWORD", pgpitr_testkit::REPL_PASSWORD);
    run(&mut cmd)
}

/// KMS stops answering while WAL streams in: no new data key can be
/// wrapped, so the stream waits and retries, tells the server nothing past
/// what is stored, and once KMS answers again stores everything; the
/// restore is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_unreachable_while_streaming_loses_and_acknowledges_nothing() {
    let backend = Backend::local();
    let (kms, _key, env, pg) = kms_cluster(&backend);
    // A new data key per MiB sealed: the outage below needs new ones.
    let bound = init_cmd(&pg, &backend, &env, &["--data-key-bytes", "1MiB", "--json"]).ok();
    let bound: serde_json::Value = serde_json::from_str(&bound.stdout).unwrap();
    assert_eq!(bound["encryption"]["data_keys"], serde_json::json!({"max_bytes": 1 << 20, "max_age_seconds": 3600}));
    init_cmd(&pg, &backend, &env, &["--data-key-age", "10m"])
        .fails_with(&["makes a new data key per 1048576 bytes or 3600 s, not per 1073741824 bytes or 600 s as asked"]);
    init_cmd(&pg, &backend, &[], &["--data-key-bytes", "4MiB"]).fails_with(&["data-key options need a key"]);
    let small = init_cmd(&pg, &backend, &env, &["--data-key-bytes", "64KiB"]);
    assert_eq!(small.code, Some(2), "a usage error: {}", small.stderr);
    assert!(small.stderr.contains("below the smallest data-key span, 1MiB"), "{}", small.stderr);
    let os_env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v.as_str()))).collect();
    let mut stream = StreamProc::start_env(&pg, &backend, &[], &os_env);
    wait_streaming(&pg, "pgpitr");
    run(backup_cmd(&pg, &backend, &["--json"]).envs(env.iter().cloned())).ok();
    let storage = backend.storage().await;
    let before = lsn(&pg.sql("INSERT INTO t VALUES (0); SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, before, Duration::from_secs(30)).await;

    kms.pause();
    let end = lsn(&pg.sql("INSERT INTO t SELECT generate_series(1, 300000); SELECT pg_current_wal_lsn()"));
    let t0 = std::time::Instant::now();
    let mut samples = 0;
    // Longer than one KMS call may take (12 s): the writer's own retries run.
    while t0.elapsed() < Duration::from_secs(20) {
        let flushed = pg.sql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'pgpitr'");
        let stored = durable_end(storage.as_ref(), seg16(), 1).await.unwrap_or_default();
        if !flushed.is_empty() {
            let flushed = lsn(&flushed);
            assert!(flushed <= stored, "the server was told {flushed} is flushed; the repository ends at {stored}");
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(samples > 20, "{samples} samples");
    let stored = durable_end(storage.as_ref(), seg16(), 1).await.unwrap();
    assert!(stored < end, "all WAL was stored without KMS: the outage tested nothing");
    assert!(stream.child.try_wait().unwrap().is_none(), "the stream gave up during the outage");

    kms.resume();
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(120)).await;
    let (code, stderr) = stream.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("AWS KMS key") && stderr.contains("Encrypt failed"), "no KMS retry logged: {stderr}");

    let restored = restore_latest(&backend, &env);
    assert_eq!(restored.sql("SELECT count(*), max(id) FROM t"), "300001|300000");
}

/// KMS refuses: a reader whose IAM user may not Decrypt gets a one-line
/// error naming the key and the refusal, and a restore writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_access_denied_is_named_and_a_restore_writes_nothing() {
    let backend = Backend::local();
    share(&backend);
    let (kms, key, creds) =
        KmsServer::start_authorizing(&[("writer", &["kms:Encrypt", "kms:Decrypt"]), ("reader", &["kms:Encrypt"])]);
    let mut writer = kms.env_as(&creds[0]);
    writer.push(("PGPITR_KMS_KEY_ID", key.clone()));
    let mut reader = kms.env_as(&creds[1]);
    reader.push(("PGPITR_KMS_KEY_ID", key.clone()));
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) id");
    init_cmd(&pg, &backend, &writer, &[]).ok();
    run(backup_cmd(&pg, &backend, &["--json"]).envs(writer.iter().cloned())).ok();

    let restored = PgCluster::empty_of(test_major());
    let err = run(restore_cmd(&backend, &restored.datadir(), &["--target", "latest"]).envs(reader.iter().cloned()))
        .fails_with(&[
            "AWS KMS key",
            &key,
            "Decrypt failed: HTTP 403: AccessDenied: User:",
            "not authorized to perform: kms:Decrypt",
        ]);
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.len() < 400 && !err.contains("ServiceError"), "not a readable line: {err}");
    let left: Vec<_> = std::fs::read_dir(restored.datadir()).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "the restore wrote {left:?}");
    // Moto's own credentials are refused as well: not transient either.
    let mut list = pgpitr();
    backend.env(&mut list);
    let mut stranger = kms.env();
    stranger.push(("PGPITR_KMS_KEY_ID", key.clone()));
    run(list.args(["list", "--repo", &backend.url()]).envs(stranger.iter().cloned())).fails_with(&[
        "AWS KMS key",
        "HTTP 403: InvalidClientTokenId: The security token included in the request is invalid",
    ]);
    // The writer still reads it.
    let mut list = pgpitr();
    backend.env(&mut list);
    let listed = run(list.args(["list", "--repo", &backend.url()]).envs(writer.iter().cloned())).ok();
    assert!(listed.stdout.contains("[complete]"), "{}", listed.stdout);
}
