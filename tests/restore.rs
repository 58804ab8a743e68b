//! `pgpitr restore` and `pgpitr wal-fetch`: exact point-in-time recovery,
//! timelines, every target kind, refusals that write nothing, and a
//! restore_command that never mistakes an outage for the end of WAL.
//!
//! Restored clusters run as the `postgres` OS user, and their
//! restore_command runs this build of pgpitr; a copy of the binary sits
//! where that user can execute it, and local repositories are made readable.

use crate::common::*;
use pgpitr_repo::backup::BackupInfo;
use pgpitr_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// This build of pgpitr where the `postgres` OS user can run it (the
/// target directory may sit under root's home): one hard link (or copy) per
/// build, in a shared directory, so runs do not pile up copies.
pub(crate) fn shared_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let src = Path::new(env!("CARGO_BIN_EXE_pgpitr"));
        let meta = std::fs::metadata(src).unwrap();
        let dir = std::env::temp_dir().join("pgpitr-it-bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join(format!("pgpitr-{}-{}", meta.len(), meta.mtime_nsec() + meta.mtime() * 1_000_000_000));
        if !bin.exists() {
            let tmp = dir.join(format!(".pgpitr-{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(src, &tmp).is_err() {
                std::fs::copy(src, &tmp).unwrap();
            }
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &bin).unwrap();
        }
        // Builds older than an hour are nobody's any more (each may be a full copy).
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
            if e.path() != bin && old.is_some_and(|age| age > Duration::from_secs(3600)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        bin
    })
}

/// The repository readable by the `postgres` OS user (restore_command).
pub(crate) fn share(backend: &Backend) {
    use std::os::unix::fs::PermissionsExt;
    if let Backend::Local(d) = backend {
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

pub(crate) fn pg_env(backend: &Backend) -> Vec<(&'static str, String)> {
    match backend {
        Backend::S3(s3) => s3.env(),
        Backend::Local(_) => Vec::new(),
    }
}

pub(crate) fn take_backup(pg: &PgCluster, backend: &Backend) -> BackupInfo {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    cmd.args(["backup", "--repo", &backend.url(), "-d", &conninfo(pg), "--checkpoint", "fast", "--json"])
        .env("PGPASSWORD", REPL_PASSWORD);
    serde_json::from_str(&run(&mut cmd).ok().stdout).expect("backup --json")
}

pub(crate) fn restore_cmd(backend: &Backend, pgdata: &Path, args: &[&str]) -> Command {
    let mut cmd = pgpitr_at(shared_binary());
    backend.env(&mut cmd);
    cmd.args(["restore", "--repo", &backend.url(), "--pgdata"]).arg(pgdata).args(args);
    cmd
}

/// Restores into a fresh directory, starts it, waits for promotion.
pub(crate) fn restore_and_start(backend: &Backend, args: &[&str]) -> (PgCluster, Run) {
    restore_and_start_major(backend, args, test_major())
}

/// [`restore_and_start`] of a repository of `major`.
pub(crate) fn restore_and_start_major(backend: &Backend, args: &[&str], major: u32) -> (PgCluster, Run) {
    let mut c = PgCluster::empty_of(major);
    let out = run(&mut restore_cmd(backend, &c.datadir(), args)).ok();
    c.start_restored(&pg_env(backend));
    c.wait_promoted(Duration::from_secs(120));
    (c, out)
}

pub(crate) fn us(rfc3339: &str) -> i64 {
    rfc3339.trim().parse::<jiff::Timestamp>().unwrap_or_else(|e| panic!("{rfc3339:?}: {e}")).as_microsecond()
}

pub(crate) fn rfc3339(us: i64) -> String {
    format!("{:.6}", jiff::Timestamp::from_microsecond(us).unwrap())
}

const COMMIT_TS: &str =
    "to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// Marker ids with their commit times (Unix µs), in id order.
pub(crate) fn markers(pg: &PgCluster) -> Vec<(i32, i64)> {
    pg.sql(&format!("SELECT id, {COMMIT_TS} FROM marks ORDER BY id"))
        .lines()
        .map(|l| {
            let (id, t) = l.split_once('|').unwrap();
            (id.parse().unwrap(), us(t))
        })
        .collect()
}

fn ids(pg: &PgCluster) -> Vec<i32> {
    pg.sql("SELECT id FROM marks ORDER BY id").lines().map(|l| l.parse().unwrap()).collect()
}

/// Everything the cluster holds, to compare two clusters (pg_dumpall of the
/// cluster's major).
pub(crate) fn dumpall(pg: &PgCluster) -> String {
    let out = Command::new(pg.bin("pg_dumpall"))
        .args(["-U", SUPERUSER, "-h"])
        .arg(pg.sockdir())
        .args(["-p", &pg.port().to_string(), "--restrict-key=pgpitr"])
        .env("LC_ALL", "C")
        .output()
        .expect("pg_dumpall");
    assert!(out.status.success(), "pg_dumpall: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn insert_marker(pg: &PgCluster, id: i32) {
    pg.sql(&format!("INSERT INTO marks (id) VALUES ({id})"));
}

/// PITR exactness: marker rows committed one per transaction while pgbench
/// runs, then alone (the tail stays in unfinished segment pieces). Every
/// restore must hold exactly the markers committed at or before its target.
pub(crate) async fn pitr_is_exact(backend: Backend, random_targets: usize, major: u32) {
    share(&backend);
    let pg = PgCluster::builder().major(major).setting("track_commit_timestamp", "on").start();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    pg.sql("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    let stream = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let info = take_backup(&pg, &backend);

    let bench = pgbench_thread(&pg, &["-n", "-c", "2", "-T", "8", "postgres"]);
    let mut id = 0;
    while !bench.is_finished() {
        id += 1;
        insert_marker(&pg, id);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert!(bench.join().unwrap().status.success());
    // A quiet point: one marker, then the whole database is dumped.
    id += 1;
    insert_marker(&pg, id);
    let quiet_id = id;
    let quiet_dump = dumpall(&pg);
    // The tail: markers alone, a few per second, for about a second.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        id += 1;
        insert_marker(&pg, id);
    }
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(stream.terminate().0, Some(0));

    // The tail really is unfinished: stored as pieces, not a complete segment.
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let last = tls[&pgpitr_types::TimelineId(1)].objects.last().unwrap().0;
    assert!(matches!(last.kind, pgpitr_repo::wal::WalObjectKind::Piece { .. }), "{last:?}");

    let all = markers(&pg);
    let time_of = |id: i32| all.iter().find(|m| m.0 == id).unwrap().1;
    let stop = us(&info.stop_time);
    let busy: Vec<&(i32, i64)> = all.iter().filter(|m| m.1 > stop && m.0 < quiet_id).collect();
    assert!(busy.len() > 10, "too few markers after the backup: {}", busy.len());
    // (target, exclusive, a check of the dump)
    let mut targets: Vec<(i64, bool, bool)> = Vec::new();
    let newest = time_of(id);
    for i in 0..random_targets {
        // Half-way between two markers: far from any marker's commit, so
        // concurrent pgbench commits cannot reorder the outcome.
        let k = fastrand::usize(..busy.len() - 1);
        targets.push(((busy[k].1 + busy[k + 1].1) / 2, i % 2 == 1, false));
    }
    targets.push((time_of(quiet_id), false, true));
    targets.push((time_of(quiet_id + 3), true, false));
    targets.push((time_of(id - 1), false, false)); // within the last second
    targets.push((time_of(id), false, false)); // the newest commit: nothing follows it

    for (t, exclusive, dump) in targets {
        let when = rfc3339(t);
        let mut args = vec!["--target-time", &when];
        if exclusive {
            args.push("--target-exclusive");
        }
        let (restored, out) = restore_and_start_major(&backend, &args, major);
        let want: Vec<i32> = all.iter().filter(|m| if exclusive { m.1 < t } else { m.1 <= t }).map(|m| m.0).collect();
        let got = ids(&restored);
        let conf = std::fs::read_to_string(restored.datadir().join("postgresql.auto.conf")).unwrap();
        assert!(conf.contains("wal-fetch --repo"), "{conf}");
        if let Backend::S3(s3) = &backend {
            assert!(!conf.contains(s3.secret_key()) && !conf.contains(s3.access_key()), "a secret in {conf}");
        }
        // No commit follows the newest one, so recovery_target_time would never be reached.
        let setting = if t == newest { "recovery_target_lsn" } else { "recovery_target_time" };
        assert!(out.stdout.contains(setting), "{when}: {}", out.stdout);
        assert_eq!(got, want, "target {when} exclusive={exclusive}\n{}", out.stdout);
        if dump {
            assert!(dumpall(&restored) == quiet_dump, "pg_dumpall differs after a restore to the quiet point {when}");
        }
        // Replay ended where the plan said: the restored cluster's newest commit.
        if let Some(&last) = want.last() {
            let at = us(&restored.sql(&format!("SELECT {COMMIT_TS} FROM marks WHERE id = {last}")));
            assert_eq!(at, time_of(last));
        }
    }
}

on_both_backends!(pitr_is_exact, pitr_is_exact, 2, test_major());

/// A stored object whose commit-time index is lost (as when the stream
/// could not parse its WAL) never shortens a restore: with no indexed commit
/// after the target, the plan leaves the stop point to PostgreSQL
/// (recovery_target_time) and says why, rather than stopping at the last
/// indexed commit before it. `list --index` and `verify` name the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_index_never_shortens_a_restore() {
    use pgpitr_repo::object::{self, WalSummary};
    let backend = Backend::local();
    share(&backend);
    let pg = PgCluster::builder().setting("track_commit_timestamp", "on").start();
    pg.sql("CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())");
    let stream = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    take_backup(&pg, &backend);
    for id in 1..=3 {
        insert_marker(&pg, id);
        pg.sql("SELECT pg_switch_wal()");
    }
    // Markers 4 and 5 share one segment, whose index is then lost.
    insert_marker(&pg, 4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    insert_marker(&pg, 5);
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    pg.sql("SELECT pg_switch_wal()");
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(stream.terminate().0, Some(0));
    let all = markers(&pg);
    let (t4, t5) = (all[3].1, all[4].1);

    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let mut lost = None;
    for (id, _) in &tls[&pgpitr_types::TimelineId(1)].objects {
        let key = id.key(seg16());
        let (h, raw) = object::decode(&storage.get(&key).await.unwrap()).unwrap();
        if h.summary.last_commit.is_some_and(|c| c.time_us == t5) {
            assert_eq!(h.summary.first_commit.map(|c| c.time_us), Some(t4), "4 and 5 in one object");
            // As the stream stores WAL it could not parse: no commits, and
            // when it was received.
            let summary = WalSummary {
                unindexed_before: Some(pgpitr_types::Lsn::MAX),
                received_us: h.summary.received_us,
                ..WalSummary::default()
            };
            storage.put(&key, object::encode(h.tli, h.start, &raw, h.codec, &summary)).await.unwrap();
            lost = Some(key);
        }
    }
    let lost = lost.expect("the object holding markers 4 and 5");

    let target = rfc3339((t4 + t5) / 2);
    let (restored, out) = restore_and_start(&backend, &["--target-time", &target]);
    assert!(out.stdout.contains("recovery_target_time"), "{}", out.stdout);
    assert!(out.stdout.contains("commit-time index") && out.stdout.contains(&lost), "{}", out.stdout);
    assert_eq!(ids(&restored), vec![1, 2, 3, 4], "the restore reached marker 4 ({target})");

    let list = run(pgpitr().args(["list", "--index", "--repo", &backend.url()])).ok().stdout;
    assert!(list.lines().any(|l| l.contains("INDEX INCOMPLETE") && l.contains(&lost)), "{list}");
    let json = run(pgpitr().args(["list", "--index", "--json", "--repo", &backend.url()])).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let named: Vec<&str> = v["unindexed"].as_array().unwrap().iter().map(|u| u["object"].as_str().unwrap()).collect();
    assert_eq!(named, vec![lost.as_str()]);
    let plain = run(pgpitr().args(["list", "--json", "--repo", &backend.url()])).ok().stdout;
    assert!(!plain.contains("unindexed"), "only --index reads every header");
    let verify = run(pgpitr().args(["verify", "--repo", &backend.url()])).ok().stdout;
    assert!(verify.lines().any(|l| l.starts_with("NOTE") && l.contains(&lost)), "{verify}");
}

fn wal_fetch(backend: &Backend, name: &str, dest: &Path, extra: &[&str]) -> Run {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    run(cmd.args(["wal-fetch", "--repo", &backend.url()]).args(extra).arg(name).arg(dest))
}

/// A cluster streamed into `backend`, with complete segments and an
/// unfinished tail; returns the cluster and the tail segment's name.
async fn streamed(backend: &Backend) -> (PgCluster, String) {
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(&pg, backend, &[]);
    wait_streaming(&pg, "pgpitr");
    for _ in 0..3 {
        pg.sql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal();");
    }
    let end = lsn(&pg.sql("INSERT INTO t VALUES (7); SELECT pg_current_wal_lsn();"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));
    let tail = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    (pg, tail)
}

async fn wal_fetch_serves_verified_files(backend: Backend) {
    let (pg, tail) = streamed(&backend).await;
    let storage = backend.storage().await;
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let tl = &tls[&pgpitr_types::TimelineId(1)];
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");

    // The unfinished tail, assembled and zero-filled to a whole segment.
    let out = wal_fetch(&backend, &tail, &dest, &[]).ok();
    assert!(!out.stderr.contains("error"), "{}", out.stderr);
    let got = std::fs::read(&dest).unwrap();
    let Ok(pgpitr_types::WalFileName::Segment { segno, .. }) = pgpitr_types::WalFileName::parse(&tail, seg16()) else {
        panic!("{tail}")
    };
    let want = pgpitr_repo::wal::assemble_segment(storage.as_ref(), seg16(), tl, segno).await.unwrap().unwrap();
    assert!(!want.complete && got.len() as u64 == seg16().bytes() && got[..] == want.data[..]);
    assert!(got[want.valid_len as usize..].iter().all(|&b| b == 0));

    // A complete segment, prefetching the next ones into a spool.
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let first = pgpitr_types::WalFileName::segment(pgpitr_types::TimelineId(1), tl.objects[0].0.segno).to_name(seg16());
    let out = wal_fetch(&backend, &first, &dest, &["--spool", spool.to_str().unwrap()]).ok();
    assert!(!out.stderr.contains("error"), "{}", out.stderr);
    let next =
        pgpitr_types::WalFileName::segment(pgpitr_types::TimelineId(1), tl.objects[0].0.segno.next()).to_name(seg16());
    // Spooled as `<segment>.<crc32>`: unsynced, so checked before use.
    let spooled_as = |name: &str| -> Option<std::path::PathBuf> {
        std::fs::read_dir(&spool).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name().unwrap().to_string_lossy().strip_prefix(&format!("{name}.")).is_some_and(|c| c.len() == 8)
        })
    };
    let spooled = wait_for(Duration::from_secs(20), || spooled_as(&next));
    assert!(spooled.is_some(), "the prefetcher did not spool {next}");
    let out = wal_fetch(&backend, &next, &dest, &["--spool", spool.to_str().unwrap()]).ok();
    assert!(!out.stderr.contains("error"), "{}", out.stderr);
    // Handed over without a copy: linked (the spool keeps it while it is the
    // last one taken, as Postgres asks for it again at the end of recovery)
    // or moved.
    if let Some(kept) = spooled_as(&next) {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (std::fs::metadata(&kept).unwrap(), std::fs::metadata(&dest).unwrap());
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "a spooled segment is linked or moved, not copied");
    }
    let want = pgpitr_repo::wal::assemble_segment(storage.as_ref(), seg16(), tl, tl.objects[0].0.segno.next())
        .await
        .unwrap()
        .unwrap();
    assert!(std::fs::read(&dest).unwrap() == want.data[..], "spooled segment differs");

    // A spooled file torn by a crash is never handed to Postgres.
    let third = tl.objects[0].0.segno.next().next();
    let third_name = pgpitr_types::WalFileName::segment(pgpitr_types::TimelineId(1), third).to_name(seg16());
    if let Some(torn) = wait_for(Duration::from_secs(20), || spooled_as(&third_name)) {
        let f = std::fs::OpenOptions::new().write(true).open(&torn).unwrap();
        f.set_len(4096).unwrap();
        let out = wal_fetch(&backend, &third_name, &dest, &["--spool", spool.to_str().unwrap()]).ok();
        assert!(!out.stderr.contains("error"), "{}", out.stderr);
        let want = pgpitr_repo::wal::assemble_segment(storage.as_ref(), seg16(), tl, third).await.unwrap().unwrap();
        assert!(std::fs::read(&dest).unwrap() == want.data[..], "a torn spool file reached Postgres");
    } else {
        panic!("the prefetcher did not spool {third_name}");
    }

    // Not stored: exit 1 without a word, nothing written.
    std::fs::remove_file(&dest).unwrap();
    for missing in ["00000002.history", "0000000100000000000000F0"] {
        let out = wal_fetch(&backend, missing, &dest, &[]);
        // Quiet: at most the AWS SDK's notes about the test's missing config files.
        assert!(out.code == Some(1) && !out.stderr.contains("pgpitr"), "{missing}: {}", out.stderr);
        assert!(!dest.exists());
    }
    drop(pg);
}

on_both_backends!(wal_fetch_serves_verified_files, wal_fetch_serves_verified_files);

/// CRC-32 (IEEE), as spool file names carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A spooled segment is served before the repository is even opened (here
/// there is none), and only when its checksum holds: a torn one is dropped
/// and the repository asked, whose failure stops recovery (exit 200).
#[test]
fn wal_fetch_serves_the_spool_without_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let (name, dest) = ("000000010000000000000003", dir.path().join("RECOVERYXLOG"));
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let ready = spool.join(format!("{name}.{:08x}", crc32(&data)));
    let fetch = || {
        let mut cmd = pgpitr();
        cmd.args(["wal-fetch", "--repo"]).arg(dir.path().join("no-repo")).arg("--spool").arg(&spool);
        run(cmd.args(["--prefetch", "0", name]).arg(&dest))
    };

    std::fs::write(&ready, &data).unwrap();
    let out = fetch();
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(std::fs::read(&dest).unwrap() == data, "served bytes differ");

    // Torn by a crash: the right name, lost bytes.
    std::fs::remove_file(&dest).unwrap();
    let mut torn = data.clone();
    torn[300_000..308_192].fill(0);
    std::fs::write(&ready, &torn).unwrap();
    let out = fetch();
    assert_eq!(out.code, Some(200), "{}", out.stderr);
    assert!(out.stderr.contains("pgpitr: error: wal-fetch"), "{}", out.stderr);
    assert!(!dest.exists(), "a torn spool file reached Postgres");
    assert!(!ready.exists(), "the torn file stays in the spool");
}

/// Corruption, holes and outages exit 200 with a message (Postgres then
/// stops recovery) and never leave a file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_fetch_refuses_corrupt_missing_and_unreachable() {
    let backend = Backend::local();
    let (_pg, _tail) = streamed(&backend).await;
    let storage = backend.storage().await;
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let objs = &tls[&pgpitr_types::TimelineId(1)].objects;
    let name =
        |i: usize| pgpitr_types::WalFileName::segment(pgpitr_types::TimelineId(1), objs[i].0.segno).to_name(seg16());
    let Backend::Local(root) = &backend else { unreachable!() };
    let path = |i: usize| root.path().join("repo").join(objs[i].0.key(seg16()));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");

    // A flipped byte in the payload.
    let mut raw = std::fs::read(path(0)).unwrap();
    let at = raw.len() - 100;
    raw[at] ^= 0x40;
    std::fs::write(path(0), &raw).unwrap();
    let out = wal_fetch(&backend, &name(0), &dest, &[]);
    assert_eq!(out.code, Some(200), "{}", out.stderr);
    assert!(out.stderr.contains("pgpitr: error:") && out.stderr.contains("corrupt object"), "{}", out.stderr);
    assert!(!dest.exists() && std::fs::read_dir(dir.path()).unwrap().next().is_none(), "a file was left behind");

    // A hole: the segment is gone but later WAL of the timeline is stored.
    std::fs::remove_file(path(1)).unwrap();
    let out = wal_fetch(&backend, &name(1), &dest, &[]);
    assert_eq!(out.code, Some(200), "{}", out.stderr);
    assert!(out.stderr.contains("a gap"), "{}", out.stderr);

    // S3 that does not answer: an outage, not the end of WAL.
    let s3 = Backend::s3();
    let url = s3.url();
    let env = match &s3 {
        Backend::S3(server) => server.env(),
        Backend::Local(_) => unreachable!(),
    };
    drop(s3);
    let mut cmd = pgpitr();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(cmd.args(["wal-fetch", "--repo", &url, &name(2)]).arg(&dest));
    assert_eq!(out.code, Some(200), "{}", out.stderr);
    assert!(out.stderr.contains("pgpitr: error: wal-fetch"), "{}", out.stderr);
    assert!(!dest.exists());
}

/// Refused before anything is written: the data directory is not created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_targets_are_refused_and_nothing_is_written() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let info = take_backup(&pg, &backend);
    for i in 0..3 {
        pg.sql(&format!(
            "INSERT INTO t SELECT generate_series(1, 1000); INSERT INTO t VALUES ({i}); SELECT pg_switch_wal();"
        ));
    }
    let end = lsn(&pg.sql("INSERT INTO t VALUES (9); SELECT pg_current_wal_lsn();"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("restore");
    let refuse = |args: &[&str], fragments: &[&str]| {
        let out = run(&mut restore_cmd(&backend, &pgdata, args));
        let line = out.fails_with(fragments);
        assert!(!pgdata.exists(), "{line}: the data directory was created");
        line
    };
    let stop = us(&info.stop_time);
    let hour = 3_600_000_000;
    refuse(&["--target-time", &rfc3339(stop - hour)], &["is before the earliest restorable time"]);
    refuse(&["--target-time", &rfc3339(stop + 24 * hour)], &["is after the latest restorable time"]);
    let line = refuse(&["--target-time", "2026-11-21 10:42:16"], &["has no time zone", "--timezone"]);
    assert!(line.contains("2026-11-21 10:42:16+00"), "the accepted forms are shown: {line}");
    refuse(&["--target-lsn", "0/10"], &["before the earliest restorable LSN"]);
    refuse(&["--target-name", "nowhere"], &["\"nowhere\" is not in the stored WAL"]);
    refuse(&["--target-xid", "99999"], &["transaction 99999 does not end"]);
    // Planning alone writes nothing either.
    let out = run(&mut restore_cmd(&backend, &pgdata, &["--target", "latest", "--dry-run"])).ok();
    assert!(out.stdout.contains(&info.id) && !pgdata.exists(), "{}", out.stdout);

    // A non-empty data directory is left as it was.
    std::fs::create_dir(&pgdata).unwrap();
    std::fs::write(pgdata.join("precious"), "keep").unwrap();
    let out = run(&mut restore_cmd(&backend, &pgdata, &["--target", "latest"]));
    out.fails_with(&["is not empty"]);
    assert_eq!(std::fs::read_dir(&pgdata).unwrap().count(), 1);
    std::fs::remove_dir_all(&pgdata).unwrap();

    // A hole after the backup: targets beyond it are refused naming it.
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let victim = tls[&pgpitr_types::TimelineId(1)]
        .objects
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| id.kind == pgpitr_repo::wal::WalObjectKind::Segment && id.range(seg16()).0 > info.stop_lsn)
        .nth(1)
        .expect("two complete segments after the backup");
    storage.delete(&victim.key(seg16())).await.unwrap();
    let (gs, ge) = victim.range(seg16());
    let gap = format!("WAL {gs}..{ge} of timeline 1 is missing");
    refuse(&["--target", "latest"], &[&gap]);
    let out = run(pgpitr().args(["list", "--json", "--repo", &backend.url()])).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let latest = v["timelines"][0]["latest_restorable_time"].as_str().expect("a window per timeline").to_string();
    assert_eq!(v["timelines"][0]["earliest_restorable_time"].as_str(), Some(rfc3339(stop).as_str()));
    // One definition: the repository's latest restorable time is its timeline's.
    assert_eq!(v["latest_restorable_time"].as_str(), Some(latest.as_str()));
    refuse(&["--target-time", &latest], &[&gap, "the latest reachable time is"]);
}

pub(crate) fn rows(pg: &PgCluster) -> Vec<i32> {
    pg.sql("SELECT x FROM t ORDER BY x").lines().map(|l| l.parse().unwrap()).collect()
}

/// A backup on timeline 1, a promotion to timeline 2, and every kind of
/// target across it; `--wait` run as the data directory's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_across_a_timeline_switch() {
    let backend = Backend::local();
    share(&backend);
    let primary = PgCluster::start_default();
    primary.sql("CREATE TABLE t (x int)");
    let standby = primary.start_standby();
    // pgpitr archives the standby, which is promoted later on.
    let s = StreamProc::start(&standby, &backend, &[]);
    wait_streaming(&standby, "pgpitr");
    let info = take_backup(&primary, &backend);
    primary.sql("INSERT INTO t VALUES (1), (2)");
    let xid = primary.sql("BEGIN; INSERT INTO t VALUES (3); SELECT txid_current(); COMMIT;");
    primary.sql("INSERT INTO t VALUES (4)");
    let before = lsn(&primary.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, before, Duration::from_secs(30)).await;

    standby.promote();
    standby.sql("INSERT INTO t VALUES (5)");
    standby.sql("SELECT pg_create_restore_point('before-six')");
    standby.sql("INSERT INTO t VALUES (6)");
    let at_seven = lsn(&standby.sql("INSERT INTO t VALUES (7); SELECT pg_current_wal_lsn();"));
    let end = lsn(&standby.sql("INSERT INTO t VALUES (8); SELECT pg_current_wal_lsn();"));
    wait_durable(storage.as_ref(), seg16(), 2, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));

    // latest, with --wait run as postgres: the reached point is reported.
    let (mut c, v) = restore_wait_as_postgres(&backend, &["--target", "latest"]);
    assert_eq!(v["plan"]["backup"]["id"], info.id.as_str());
    assert_eq!(v["plan"]["timeline"], 2);
    assert_eq!(v["reached"]["state"], "promoted", "{v}");
    assert_eq!(v["reached"]["timeline"], 3, "{v}");
    assert!(lsn(v["reached"]["last_replayed_lsn"].as_str().unwrap()) >= end.segment_floor(seg16()), "{v}");
    assert!(v["timings"]["replay_secs"].as_f64().is_some() && v["timings"]["download_secs"].as_f64().is_some());
    // How the spool served replay: every segment counted once.
    let wf = &v["reached"]["wal_fetch"];
    let served: u64 = ["hits", "waits", "misses"].iter().map(|k| wf[k].as_u64().unwrap()).sum();
    assert!(served > 0, "{v}");
    assert!(!c.datadir().join("pg_wal/pgpitr_spool").exists(), "spool removed after promotion");
    c.stop();
    c.start_restored(&[]);
    c.wait_promoted(Duration::from_secs(60));
    assert_eq!(rows(&c), vec![1, 2, 3, 4, 5, 6, 7, 8]);
    drop(c);
    // The other target actions, as --wait sees them.
    let (_c, v) = restore_wait_as_postgres(&backend, &["--target-name", "before-six", "--target-action", "pause"]);
    assert_eq!(v["reached"]["state"], "paused", "{v}");
    let (_c, v) = restore_wait_as_postgres(&backend, &["--target-xid", &xid, "--target-action", "shutdown"]);
    assert_eq!(v["reached"]["state"], "shut down", "{v}");
    assert!(v["reached"]["last_replayed_commit_time"].is_string(), "{v}");
    let stop = v["reached"]["stop_message"].as_str().unwrap_or_default().to_string();
    assert!(stop.starts_with(&format!("recovery stopping after commit of transaction {xid}")), "{v}");

    for (args, want) in [
        (vec!["--target-xid", xid.as_str()], vec![1, 2, 3]),
        (vec!["--target-xid", xid.as_str(), "--target-exclusive"], vec![1, 2]),
        (vec!["--target-name", "before-six"], vec![1, 2, 3, 4, 5]),
        (vec!["--target-lsn", &at_seven.to_string()], vec![1, 2, 3, 4, 5, 6, 7]),
        (vec!["--target", "immediate"], vec![]),
        (vec!["--target", "latest", "--target-timeline", "1"], vec![1, 2, 3, 4]),
    ] {
        let (restored, out) = restore_and_start(&backend, &args);
        assert_eq!(rows(&restored), want, "{args:?}\n{}", out.stdout);
        assert!(!out.stdout.contains("could not be looked up"), "the WAL scan failed: {}", out.stdout);
    }
}

/// `pgpitr restore --wait --json` run as the `postgres` OS user (the
/// server cannot run as root); returns the directory's cluster handle (not
/// running as far as it knows) and the JSON report.
fn restore_wait_as_postgres(backend: &Backend, args: &[&str]) -> (PgCluster, serde_json::Value) {
    let mut c = PgCluster::empty();
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(shared_binary());
    cmd.args(["restore", "--repo", &backend.url(), "--wait", "--json", "--port"])
        .arg(c.port().to_string())
        .arg("--pg-bindir")
        .arg(c.server_bindir())
        .arg("--pgdata")
        .arg(c.datadir())
        .args(args)
        .env("PGPITR_LOG", "warn")
        .env_remove("PGPASSWORD");
    let out = run(&mut cmd);
    c.adopt_running();
    let out = out.ok();
    let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("restore --json: {e}: {}", out.stdout));
    (c, v)
}

/// A backup taken from a hot standby (to spare the primary), with the
/// stream on the primary: the restore replays the primary's WAL from the
/// standby's backup on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_from_a_hot_standby_restores() {
    let backend = Backend::local();
    share(&backend);
    let primary = PgCluster::start_default();
    primary.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    let standby = primary.start_standby();
    let s = StreamProc::start(&primary, &backend, &[]);
    wait_streaming(&primary, "pgpitr");
    let info = take_backup(&standby, &backend);
    primary.sql("INSERT INTO t VALUES (2)");
    let end = lsn(&primary.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    drop(s);
    let (restored, out) = restore_and_start(&backend, &["--target-lsn", &end.to_string()]);
    assert!(out.stdout.contains(&info.id) || out.stderr.contains(&info.id), "{}{}", out.stdout, out.stderr);
    assert_eq!(rows(&restored), vec![1, 2]);
}
