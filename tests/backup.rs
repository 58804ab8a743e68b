//! `pgpitr backup` and scheduled backups: streamed into the repository,
//! complete only with their WAL, extracted by our own code and checked by
//! PostgreSQL's `pg_verifybackup`.

use crate::common::*;
use pgpitr_repo::backup::{self as rb, ArchiveCompression, BackupInfo, BackupStatus, WalSource};
use pgpitr_repo::lease;
use pgpitr_restore::{ExtractOptions, Extracted};
use pgpitr_testkit::*;
use pgpitr_types::{SegNo, WalFileName};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// pgbench running in the background for `secs` seconds.
fn background_load(pg: &PgCluster, secs: u32) -> Child {
    Command::new(pg.bin("pgbench"))
        .args(["-U", SUPERUSER, "-h"])
        .arg(pg.sockdir())
        .args(["-p", &pg.port().to_string(), "-n", "-c", "2", "-T", &secs.to_string(), "postgres"])
        .env("LC_ALL", "C")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbench")
}

async fn complete_backups(backend: &Backend) -> Vec<BackupInfo> {
    let storage = backend.storage().await;
    rb::scan(storage.as_ref()).await.unwrap().into_iter().filter_map(|e| e.info).collect()
}

fn list_json(backend: &Backend) -> serde_json::Value {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    let out = run(cmd.args(["list", "--json", "--repo", &backend.url()])).ok();
    serde_json::from_str(&out.stdout).expect("list --json prints JSON")
}

/// The WAL segments covering the backup, rebuilt from the repository alone.
async fn wal_from_repo(backend: &Backend, info: &BackupInfo, dir: &Path) {
    let storage = backend.storage().await;
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let tl = &tls[&info.timeline];
    assert!(tl.covers(info.start_lsn, info.stop_lsn), "repository lacks WAL {}..{}", info.start_lsn, info.stop_lsn);
    let (first, last) = (info.start_lsn.segment_number(seg16()).0, info.stop_lsn.segment_number(seg16()).0);
    for n in first..=last {
        let Some(s) = pgpitr_repo::wal::assemble_segment(storage.as_ref(), seg16(), tl, SegNo(n)).await.unwrap() else {
            assert_eq!(n, last, "segment {n} missing");
            continue;
        };
        let name = WalFileName::segment(info.timeline, SegNo(n)).to_name(seg16());
        std::fs::write(dir.join(name), &s.data).unwrap();
    }
}

/// Extracts with our own code, then lets pg_verifybackup check every file
/// against the manifest and parse the WAL from start to stop, taken from
/// the repository.
async fn extract_and_verify(
    pg: &PgCluster,
    backend: &Backend,
    info: &BackupInfo,
    map: &[(PathBuf, PathBuf)],
    ignore: &[&str],
) -> (tempfile::TempDir, Extracted) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("data");
    let repo = backend.repo().await;
    let stats = pgpitr_restore::extract(&repo, info, &target, map, &ExtractOptions::default()).await.expect("extract");
    assert_eq!(stats.read.files, info.file_count + 1, "every manifest file and backup_manifest");
    let wal = dir.path().join("wal");
    std::fs::create_dir(&wal).unwrap();
    wal_from_repo(backend, info, &wal).await;
    // pg_verifybackup reads files only; root may run it on root-owned files.
    let mut cmd = Command::new(pg.bin("pg_verifybackup"));
    cmd.arg("--wal-directory").arg(&wal);
    for i in ignore {
        cmd.args(["--ignore", i]);
    }
    let out = cmd.arg(&target).output().unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, stats)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

async fn backup_under_load(backend: Backend) {
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "2"]);
    let mut load = background_load(&pg, 6);
    std::thread::sleep(Duration::from_millis(500));
    let out = run(&mut backup_cmd(&pg, &backend, &["--label", "under load", "--json"])).ok();
    assert!(load.wait().unwrap().success(), "pgbench failed");
    let info: BackupInfo = serde_json::from_str(&out.stdout).expect("backup --json prints backup.json");
    assert_eq!(info.status, BackupStatus::Complete);
    assert_eq!(info.label, "under load");
    assert_eq!(info.wal_source, WalSource::Fetched, "no stream ran: the backup must have fetched its WAL");
    assert!(info.stop_lsn > info.start_lsn);
    // Compressed by the server by default (14 cannot); the frames are
    // stored untouched.
    let by_server = pg.major() > 14;
    assert_eq!(info.compression.as_deref(), Some(if by_server { "server-lz4" } else { "client-lz4" }));
    assert_eq!(info.format_version, 2, "readable by pgpitr before zstd");
    let base = &info.archives[0];
    assert_eq!(base.compression, if by_server { ArchiveCompression::Lz4 } else { ArchiveCompression::None });
    assert!(base.parts.len() >= 3, "a ~30 MB database in 1 MiB parts of lz4: {}", base.parts.len());
    assert_eq!(base.raw_bytes, base.parts.iter().map(|p| p.raw_len).sum::<u64>());
    if by_server {
        let tar = server_tar(&backend, &info, base).await;
        assert_eq!(base.tar_bytes, Some(tar.len() as u64), "the server's progress count is the tar's size");
    }
    assert_eq!(info.size_bytes, info.archives.iter().map(|a| a.tar_size()).sum::<u64>());
    assert!(info.stored_bytes < info.size_bytes / 2, "lz4 shrinks a pgbench database");
    assert!(info.file_count > 900, "{}", info.file_count);
    assert_eq!(complete_backups(&backend).await, vec![info.clone()]);

    let list = list_json(&backend);
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0]["id"], info.id.as_str());
    assert_eq!(backups[0]["status"], "complete");
    assert_eq!(backups[0]["stop_lsn"], info.stop_lsn.to_string());
    assert_eq!(backups[0]["size_bytes"], info.size_bytes);
    assert_eq!(list["earliest_restorable_time"], info.stop_time.as_str());
    assert!(list["timelines"].is_array(), "earlier fields stay");

    let (dir, stats) = extract_and_verify(&pg, &backend, &info, &[], &[]).await;
    let data = dir.path().join("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("global/pg_control")), 0o600);
    assert_eq!(mode(&data.join("base")), 0o700);
    assert!(stats.rewritten.is_empty());
    assert_eq!(stats.read.parts as usize, base.parts.len());

    // A damaged part is found, named, and nothing past it is trusted.
    let storage = backend.storage().await;
    let key = info.backup_id().unwrap().part_key("base", 1);
    let mut obj = storage.get(&key).await.unwrap().to_vec();
    let last = obj.len() - 1;
    obj[last] ^= 0x40;
    storage.put(&key, obj.into()).await.unwrap();
    let again = dir.path().join("again");
    let err = pgpitr_restore::extract(&backend.repo().await, &info, &again, &[], &ExtractOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&key) && err.to_string().contains("corrupt"), "{err}");
    assert!(!again.join("global/pg_control").exists());
    // The command says so in one line.
    let mut restore = pgpitr();
    backend.env(&mut restore);
    restore
        .args(["restore", "--repo", &backend.url(), "--target", "immediate", "--pgdata"])
        .arg(dir.path().join("cli"));
    run(&mut restore).fails_with(&[&key, "corrupt"]);
}

/// The tar inside a server-compressed archive, decompressed here
/// independently of pgpitr's extraction.
async fn server_tar(backend: &Backend, info: &BackupInfo, archive: &rb::ArchiveInfo) -> Vec<u8> {
    use std::io::Read;
    let stream = server_stream(backend, info, archive).await;
    let mut tar = Vec::new();
    lz4_flex::frame::FrameDecoder::new(&stream[..]).read_to_end(&mut tar).unwrap();
    tar
}

/// The frames the server sent for `archive`, from its stored parts.
async fn server_stream(backend: &Backend, info: &BackupInfo, archive: &rb::ArchiveInfo) -> Vec<u8> {
    let storage = backend.storage().await;
    let mut stream = Vec::new();
    for p in &archive.parts {
        let obj = storage.get(&info.backup_id().unwrap().part_key(&archive.name, p.index)).await.unwrap();
        let (h, raw) = pgpitr_repo::object::decode(&obj).unwrap();
        assert_eq!(h.codec, pgpitr_repo::object::Codec::None, "the server's frames are stored as they arrive");
        stream.extend_from_slice(&raw);
    }
    stream
}

on_both_backends!(backup_under_load_passes_pg_verifybackup, backup_under_load);

/// The live stream leases in the repository.
async fn live_leases(backend: &Backend) -> Vec<lease::StreamLease> {
    let storage = backend.storage().await;
    let now = jiff::Timestamp::now();
    lease::read_all(storage.as_ref()).await.unwrap().into_iter().filter(|l| l.is_live(now)).collect()
}

/// With `pgpitr stream` running, its lease says so, and the backup relies
/// on it for WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_relies_on_a_running_stream() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let t0 = Instant::now();
    let leases = loop {
        let l = live_leases(&backend).await;
        if !l.is_empty() {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the stream published no lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((leases[0].slot.as_str(), leases[0].timeline.0), ("pgpitr", 1), "{leases:?}");
    let streams = list_json(&backend)["streams"].clone();
    assert_eq!((streams[0]["slot"].as_str(), streams[0]["live"].as_bool()), (Some("pgpitr"), Some(true)), "{streams}");

    let mut load = background_load(&pg, 4);
    let out = run(backup_cmd(&pg, &backend, &["--json"]).env("PGPITR_LOG", "info,pgpitr_backup=debug")).ok();
    assert!(load.wait().unwrap().success());
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        info.wal_source,
        WalSource::Repository,
        "the running stream stores the WAL; backup log:\n{}",
        out.stderr
    );
    // It waits for the stream, or finds the WAL already stored when the
    // stream flushed in between; it never fetches the WAL itself.
    assert!(out.stderr.contains("the WAL the backup needs is durable in the repository"), "{}", out.stderr);
    assert!(!out.stderr.contains("fetching the backup's WAL"), "{}", out.stderr);
    let slots = pg.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgpitr_backup%'");
    assert_eq!(slots, "0", "the temporary slot goes with the backup's connection");
    extract_and_verify(&pg, &backend, &info, &[], &[]).await;
    assert_eq!(s.terminate().0, Some(0));
    let storage = backend.storage().await;
    assert!(lease::read_all(storage.as_ref()).await.unwrap().is_empty(), "a stopped stream deletes its lease");
    assert_eq!(list_json(&backend)["streams"], serde_json::json!([]));
}

/// No live lease: the backup fetches its WAL at once, even while WAL is
/// being stored (here by a stream that cannot write its lease, which must
/// not stop it), instead of waiting to see whether a stream shows up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_live_lease_the_backup_fetches_at_once() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    // A directory where the lease should go: every lease write fails.
    let blocker = Path::new(&backend.url()).join(lease::StreamLease::key_for("pgpitr")).join("x");
    std::fs::create_dir_all(&blocker).unwrap();
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let storage = backend.storage().await;
    pg.sql("CREATE TABLE t AS SELECT 1 AS x");
    let now = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, now, Duration::from_secs(30)).await;
    assert!(live_leases(&backend).await.is_empty());

    let out = run(backup_cmd(&pg, &backend, &["--json"]).env("PGPITR_LOG", "info")).ok();
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    // The backup's stop switches segments, and the stream stores the full
    // segment at once: it may hold the WAL by the backup's first look (seen
    // in CI), and then there is nothing to fetch. Never a wait, either way.
    assert!(!out.stderr.contains("waiting for the running stream"), "no lease: no waiting; log:\n{}", out.stderr);
    match info.wal_source {
        WalSource::Fetched => assert!(out.stderr.contains("no pgpitr stream runs on timeline 1"), "{}", out.stderr),
        WalSource::Repository => {
            assert!(out.stderr.contains("the WAL the backup needs is durable in the repository"), "{}", out.stderr)
        }
    }
    extract_and_verify(&pg, &backend, &info, &[], &[]).await;

    // The stream went on storing WAL, and stops cleanly.
    pg.sql("INSERT INTO t VALUES (2)");
    let now = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, now, Duration::from_secs(30)).await;
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("cannot write the stream lease"), "{stderr}");
}

/// A backup over TLS, authenticated by a client certificate alone, with the
/// certificate files from libpq's environment variables: pg_hba.conf allows
/// this role nothing else, so success means both were used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_over_verified_tls_with_a_client_certificate() {
    let backend = Backend::local();
    let pki = TestPki::generate("pgpitr_cert");
    let pg = PgCluster::start_default();
    pg.sql("CREATE ROLE pgpitr_cert LOGIN REPLICATION");
    // 14 reads the backup's temporary slot over a connection to `postgres`.
    pg.enable_tls(
        &pki,
        "hostssl replication pgpitr_cert 127.0.0.1/32 cert\nhostssl postgres pgpitr_cert 127.0.0.1/32 cert",
    );
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let conninfo = format!("host=localhost hostaddr=127.0.0.1 port={} user=pgpitr_cert sslmode=verify-full", pg.port());
    let tls_env = |cmd: &mut Command| {
        cmd.env("PGSSLROOTCERT", pki.path("ca.crt"))
            .env("PGSSLCERT", pki.path("client.crt"))
            .env("PGSSLKEY", pki.path("client.key"));
    };
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    tls_env(&mut cmd);
    cmd.args(["backup", "--repo", &backend.url(), "-d", &conninfo, "--checkpoint", "fast", "--json"]);
    let out = run(&mut cmd).ok();
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    extract_and_verify(&pg, &backend, &info, &[], &[]).await;

    // With the wrong CA the same command stops at once with one clear line.
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    tls_env(&mut cmd);
    cmd.env("PGSSLROOTCERT", pki.path("other-ca.crt"));
    cmd.args(["backup", "--repo", &backend.url(), "-d", &conninfo]);
    run(&mut cmd).fails_with(&["the server's certificate did not verify (sslmode=verify-full)", "UnknownIssuer"]);
}

/// `--compress client-lz4`, `client-zstd` and `none` store the plain tar
/// in parts of that codec; such backups, and those of format 1 (before
/// server compression), still extract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_compressed_and_format_1_backups_extract() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let storage = backend.storage().await;
    use pgpitr_repo::object::Codec;
    for (how, codec) in [("client-lz4", Codec::Lz4), ("client-zstd", Codec::Zstd), ("none", Codec::None)] {
        let out = run(&mut backup_cmd(&pg, &backend, &["--json", "--compress", how])).ok();
        let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(info.compression.as_deref(), Some(how));
        let base = &info.archives[0];
        assert_eq!((base.compression, base.tar_bytes), (ArchiveCompression::None, None));
        assert_eq!(info.size_bytes, base.raw_bytes);
        let part = storage.get(&info.backup_id().unwrap().part_key("base", 0)).await.unwrap();
        assert_eq!(pgpitr_repo::object::decode_header(&part).unwrap().codec, codec);
        extract_and_verify(&pg, &backend, &info, &[], &[]).await;
    }
    let client = complete_backups(&backend).await.into_iter().find(|b| b.compression.as_deref() == Some("client-lz4"));
    let client = client.unwrap();

    // backup.json as pgpitr wrote it before server compression.
    let key = client.backup_id().unwrap().info_key();
    let mut v: serde_json::Value = serde_json::to_value(&client).unwrap();
    v["format_version"] = 1.into();
    v.as_object_mut().unwrap().remove("compression");
    storage.put(&key, serde_json::to_vec_pretty(&v).unwrap().into()).await.unwrap();
    let old = rb::read_info(storage.as_ref(), &client.backup_id().unwrap()).await.unwrap().unwrap();
    assert_eq!((old.format_version, old.compression.as_deref()), (1, None));
    extract_and_verify(&pg, &backend, &old, &[], &[]).await;

    // A newer format is refused rather than misread.
    let future = BackupInfo { format_version: rb::INFO_FORMAT_VERSION + 1, ..old };
    let dir = tempfile::tempdir().unwrap();
    let err = pgpitr_restore::extract(&backend.repo().await, &future, dir.path(), &[], &ExtractOptions::default())
        .await
        .unwrap_err();
    let want = format!("format version {}", rb::INFO_FORMAT_VERSION + 1);
    assert!(err.to_string().contains(&want), "{err}");
    // Stored that way, it is refused by its version before anything else is read.
    let mut v = serde_json::to_value(&future).unwrap();
    v["archives"][0]["compression"] = "brotli".into();
    storage.put(&key, serde_json::to_vec_pretty(&v).unwrap().into()).await.unwrap();
    let err = rb::read_info(storage.as_ref(), &client.backup_id().unwrap()).await.unwrap_err().to_string();
    assert!(err.contains(&want) && err.contains("use a newer pgpitr"), "{err}");
}

/// `--compress server-zstd`: the server's zstd frames are stored as they
/// arrive, at the level asked for, smaller than server-lz4's, and extract
/// to the same files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_zstd_backups_extract() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "2"]);
    let backup = |args: &[&str]| -> BackupInfo {
        let out = run(&mut backup_cmd(&pg, &backend, &[&["--json"], args].concat())).ok();
        serde_json::from_str(&out.stdout).unwrap()
    };
    if pg.major() == 14 {
        // No compression on 14's server: a one-line error naming the other way.
        let refused = run(&mut backup_cmd(&pg, &backend, &["--compress", "server-zstd"]));
        refused.fails_with(&["PostgreSQL 14 cannot compress", "--compress client-zstd"]);
        return;
    }
    let lz4 = backup(&["--compress", "server-lz4"]);
    let zstd = backup(&["--compress", "server-zstd", "--zstd-level", "3"]);
    assert_eq!(zstd.compression.as_deref(), Some("server-zstd"));
    assert_eq!(zstd.format_version, 3, "a format that says zstd, readable by pgpitr before incrementals");
    let base = &zstd.archives[0];
    assert_eq!(base.compression, ArchiveCompression::Zstd);
    let frames = server_stream(&backend, &zstd, base).await;
    assert_eq!(&frames[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd frame magic");
    let tar = zstd::decode_all(&frames[..]).unwrap();
    assert_eq!(base.tar_bytes, Some(tar.len() as u64), "the server's progress count is the tar's size");
    assert!(zstd.stored_bytes < lz4.stored_bytes, "zstd {} stored bytes, lz4 {}", zstd.stored_bytes, lz4.stored_bytes);
    extract_and_verify(&pg, &backend, &zstd, &[], &[]).await;
    let bad = run(&mut backup_cmd(&pg, &backend, &["--compress", "server-zstd", "--zstd-level", "20"]));
    assert_eq!(bad.code, Some(2), "a usage error: {}", bad.stderr);
    assert!(bad.stderr.contains("--zstd-level") && bad.stderr.contains("1..=19"), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablespaces_are_stored_and_relocated() {
    use std::os::unix::fs::MetadataExt;
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    let ts = pg.scratch_dir().join("ts1");
    std::fs::create_dir(&ts).unwrap();
    let owner = std::fs::metadata(pg.scratch_dir()).unwrap();
    std::os::unix::fs::chown(&ts, Some(owner.uid()), Some(owner.gid())).unwrap();
    pg.sql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}';\n\
         CREATE TABLE far (g int, h text) TABLESPACE ts1;\n\
         INSERT INTO far SELECT g, md5(g::text) FROM generate_series(1, 50000) g;",
        ts.display()
    ));
    let oid: u32 = pg.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'").parse().unwrap();
    let out = run(&mut backup_cmd(&pg, &backend, &["--json"])).ok();
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    let names: Vec<&str> = info.archives.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"base") && names.contains(&oid.to_string().as_str()), "{names:?}");
    let tsa = info.archives.iter().find(|a| a.tablespace_oid == Some(oid)).unwrap();
    assert_eq!(tsa.tablespace_location.as_deref(), Some(ts.to_str().unwrap()));
    assert!(tsa.raw_bytes > 2 << 20, "the table's data is in the tablespace archive");

    let elsewhere = tempfile::tempdir().unwrap();
    let new_ts = elsewhere.path().join("ts1-restored");
    // The map file differs from the manifest by design once relocated.
    let (dir, stats) =
        extract_and_verify(&pg, &backend, &info, &[(ts.clone(), new_ts.clone())], &["tablespace_map"]).await;
    let data = dir.path().join("data");
    assert_eq!(std::fs::read_link(data.join(format!("pg_tblspc/{oid}"))).unwrap(), new_ts);
    let map = std::fs::read_to_string(data.join("tablespace_map")).unwrap();
    assert_eq!(map, format!("{oid} {}\n", new_ts.display()));
    assert_eq!(stats.rewritten, ["tablespace_map"]);
    assert_eq!(stats.tablespaces, [(oid, new_ts.clone())]);
    let versioned: Vec<_> = std::fs::read_dir(&new_ts).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(versioned.iter().any(|n| n.to_string_lossy().starts_with(&format!("PG_{}_", pg.major()))), "{versioned:?}");

    // Refuses a non-empty target, and a relocation of a tablespace it lacks.
    let repo = backend.repo().await;
    let err = pgpitr_restore::extract(&repo, &info, &data, &[], &ExtractOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let empty = elsewhere.path().join("other");
    let bogus = [(PathBuf::from("/no/such/tablespace"), elsewhere.path().join("x"))];
    let err = pgpitr_restore::extract(&repo, &info, &empty, &bogus, &ExtractOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("no tablespace at /no/such/tablespace"), "{err}");
}

/// The pid of the walsender running BASE_BACKUP, once it streams files.
fn basebackup_walsender(pg: &PgCluster) -> i32 {
    let pid = wait_for(Duration::from_secs(30), || {
        let q = "SELECT pid FROM pg_stat_progress_basebackup \
                 WHERE phase = 'streaming database files' AND backup_streamed > 2 * 1024 * 1024";
        pg.try_sql(q).ok().and_then(|s| s.parse::<i32>().ok())
    });
    pid.expect("BASE_BACKUP never reached the streaming phase")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_backups_are_never_complete_and_are_cleaned() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "2"]);
    // ~1 MB/s: the backup is still streaming when it is interrupted.
    let slow = ["--max-rate", "1024", "--parallel", "2"];

    // 1. The server terminates the walsender mid-stream.
    let child = backup_cmd(&pg, &backend, &slow).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = basebackup_walsender(&pg);
    pg.sql(&format!("SELECT pg_terminate_backend({pid})"));
    let out = child.wait_with_output().unwrap();
    let r = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    r.fails_with(&["base backup from 127.0.0.1", "terminating connection"]);
    assert!(complete_backups(&backend).await.is_empty());
    let list = list_json(&backend);
    assert!(list["backups"].as_array().unwrap().iter().all(|b| b["status"] != "complete"), "{list}");
    assert!(list["earliest_restorable_time"].is_null());

    // 2. kill -9 of pgpitr after some parts are stored.
    let mut child = backup_cmd(&pg, &backend, &slow).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    basebackup_walsender(&pg);
    let storage = backend.storage().await;
    let t0 = Instant::now();
    while storage.list(rb::PREFIX).await.unwrap().iter().filter(|m| m.key.contains("/base/")).count() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(30), "no part stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let leftover = rb::list_ids(storage.as_ref()).await.unwrap();
    assert_eq!(leftover.len(), 1, "{leftover:?}");
    let list = list_json(&backend);
    let b = &list["backups"][0];
    assert_eq!(b["id"], leftover[0].to_string());
    assert_eq!(b["status"], "incomplete", "a dead process's backup: {list}");
    assert!(list["earliest_restorable_time"].is_null());

    // 3. The next backup deletes the leftover and completes.
    let out = run(backup_cmd(&pg, &backend, &["--json"]).env("PGPITR_LOG", "info")).ok();
    assert!(out.stderr.contains("deleted the leftovers of an interrupted backup"), "{}", out.stderr);
    assert!(out.stderr.contains(&leftover[0].to_string()), "{}", out.stderr);
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rb::list_ids(storage.as_ref()).await.unwrap(), vec![info.backup_id().unwrap()]);
    assert_eq!(complete_backups(&backend).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_takes_scheduled_backups() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let s = StreamProc::start(&pg, &backend, &["--backup-every", "4s", "--backup-checkpoint", "fast"]);
    let t0 = Instant::now();
    let backups = loop {
        let b = complete_backups(&backend).await;
        if b.len() >= 2 {
            break b;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "only {} scheduled backups after 90 s", b.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("scheduled base backup complete"), "{stderr}");
    for b in &backups {
        assert_eq!(b.wal_source, WalSource::Repository, "scheduled backups rely on the stream");
        assert_eq!(b.label, "pgpitr scheduled");
    }
    let start = |b: &BackupInfo| b.start_time.parse::<jiff::Timestamp>().unwrap();
    let gap = start(&backups[1]).duration_since(start(&backups[0]));
    assert!(gap >= jiff::SignedDuration::from_millis(3500), "backups {gap:?} apart, interval 4 s");
    extract_and_verify(&pg, &backend, &backups[1], &[], &[]).await;
}

/// `--keep-backups 1`: after each scheduled backup the older ones and
/// their WAL go, and the one left restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_expire_what_the_policy_does_not_keep() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let args = ["--backup-every", "2s", "--backup-checkpoint", "fast", "--keep-backups", "1"];
    let s = StreamProc::start(&pg, &backend, &args);
    let mut seen = std::collections::BTreeSet::new();
    let t0 = Instant::now();
    // Until three backups were taken and the expiry after the last one ran.
    let left = loop {
        pg.sql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1); SELECT pg_switch_wal();");
        let b = complete_backups(&backend).await;
        seen.extend(b.iter().map(|i| i.id.clone()));
        if seen.len() >= 3 && b.len() == 1 {
            break b;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{} backups seen, {} complete", seen.len(), b.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("expired what the retention policy does not keep"), "{stderr}");
    let storage = backend.storage().await;
    let oldest_wal = storage
        .list("wal/")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| pgpitr_repo::wal::WalObjectId::parse(&m.key, seg16())?.segno.end_lsn(seg16()))
        .min();
    assert!(oldest_wal.is_some_and(|end| end > left[0].start_lsn), "WAL below the kept backup's start survived");
    extract_and_verify(&pg, &backend, &left[0], &[], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_checksum_failures_fail_the_backup_unless_allowed() {
    let backend = Backend::local();
    let mut pg = PgCluster::start_default();
    let rel = pg.sql(
        "CREATE TABLE victim AS SELECT g, md5(g::text) AS h FROM generate_series(1, 10000) g;\n\
         CHECKPOINT;\nSELECT pg_relation_filepath('victim');",
    );
    pg.stop();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(pg.datadir().join(&rel)).unwrap();
        f.seek(SeekFrom::Start(8192 + 100)).unwrap();
        f.write_all(b"not a page").unwrap();
    }
    pg.start();

    // Default logging: the server's warnings, naming the file, reach stderr.
    let r = run(backup_cmd(&pg, &backend, &[]).env_remove("PGPITR_LOG"));
    let line = r.fails_with(&["page checksum failures", "--allow-checksum-failures"]);
    assert!(line.contains(&rel), "the error line names the damaged file: {line}");
    assert!(r.stderr.contains(&format!("checksum verification failed in file \"./{rel}\", block 1")), "{}", r.stderr);
    assert!(complete_backups(&backend).await.is_empty());
    assert!(rb::list_ids(backend.storage().await.as_ref()).await.unwrap().is_empty(), "the failed backup is deleted");

    let out = run(&mut backup_cmd(&pg, &backend, &["--allow-checksum-failures", "--json"])).ok();
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    assert!(
        info.checksum_failures
            .iter()
            .any(|f| f.file.as_deref().is_some_and(|p| p.ends_with(&rel)) && f.block == Some(1)),
        "backup.json records file and block: {:?}",
        info.checksum_failures
    );
    assert_eq!(complete_backups(&backend).await, vec![info.clone()]);
    // Kept as Postgres sent it: the manifest matches the corrupt page.
    extract_and_verify(&pg, &backend, &info, &[], &[]).await;
}
