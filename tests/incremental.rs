//! Incremental backups: native on PostgreSQL 17 and 18 (`summarize_wal =
//! on`), block deltas on 14 to 16. Chains taken between changes of every
//! kind, restored exactly to a time after each member, rebuilt byte for byte
//! as pg_combinebackup rebuilds native ones, and every way a chain can be
//! refused.

use crate::common::*;
use crate::majors::wanted;
use crate::restore::{dumpall, insert_marker, markers, pg_env, restore_cmd, rfc3339, share, take_backup};
use pgpitr_repo::backup::BackupInfo;
use pgpitr_restore::ExtractOptions;
use pgpitr_testkit::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A cluster of `major`, summarizing its WAL where it can (17 and later).
fn summarizing(major: u32) -> PgCluster {
    let b = PgCluster::builder().major(major).setting("track_commit_timestamp", "on");
    if major >= 17 { b.setting("summarize_wal", "on") } else { b }.start()
}

/// How `--incremental` takes backups of `major`.
fn method(major: u32) -> pgpitr_repo::backup::IncrementalMethod {
    use pgpitr_repo::backup::IncrementalMethod::*;
    if major >= 17 { Native } else { Delta }
}

fn incremental(pg: &PgCluster, backend: &Backend) -> BackupInfo {
    let out = run(&mut backup_cmd(pg, backend, &["--incremental", "--json"])).ok();
    serde_json::from_str(&out.stdout).expect("backup --json")
}

/// A directory for a server's files: owned by the server's OS user.
fn server_dir(pg: &PgCluster, name: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let d = pg.scratch_dir().join(name);
    std::fs::create_dir_all(&d).unwrap();
    let owner = std::fs::metadata(pg.scratch_dir()).unwrap();
    std::os::unix::fs::chown(&d, Some(owner.uid()), Some(owner.gid())).unwrap();
    d
}

/// Every file and directory under `root` (symlinks as their target), by
/// relative path, except `skip`.
fn tree(root: &Path, skip: &[&str]) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
                out.insert(rel, None);
            } else if meta.file_type().is_symlink() {
                out.insert(rel, Some(b"(symlink)".to_vec()));
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn assert_same_tree(ours: &Path, theirs: &Path, skip: &[&str], at_least: usize) {
    let (a, b) = (tree(ours, skip), tree(theirs, skip));
    let only_a: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty(),
        "only in pgpitr's: {only_a:?}; only in pg_combinebackup's: {only_b:?}"
    );
    let differ: Vec<&String> = a.iter().filter(|(k, v)| b[*k] != **v).map(|(k, _)| k).collect();
    assert!(differ.is_empty(), "files that differ from pg_combinebackup's: {differ:?}");
    assert!(a.len() >= at_least, "{} holds only {} entries", ours.display(), a.len());
}

/// A full backup, then three incrementals with changes of every kind
/// between them (new, dropped and truncated tables, updates, a new
/// database, a tablespace); a restore to a quiet point after each is
/// exactly the cluster as it was; the last chain, rebuilt by pgpitr, is
/// byte for byte what pg_combinebackup makes of the same backups.
async fn chain_restores_exactly(major: u32) {
    if !wanted(major) {
        return;
    }
    let backend = Backend::local();
    share(&backend);
    let pg = summarizing(major);
    pg.pgbench(&["-i", "-q", "-s", "2"]);
    pg.sql(
        "CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());\n\
         CREATE TABLE doomed AS SELECT g FROM generate_series(1, 20000) g;\n\
         CREATE TABLE emptied AS SELECT g, md5(g::text) h FROM generate_series(1, 20000) g;",
    );
    let stream = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let full = take_backup(&pg, &backend);
    assert!(full.incremental.is_none(), "the first backup is full");
    let ts = server_dir(&pg, "ts");
    let steps = [
        "CREATE TABLE fresh AS SELECT g, md5(g::text) h FROM generate_series(1, 30000) g;\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 2000;"
            .to_string(),
        "DROP TABLE doomed;\n\
         TRUNCATE emptied;\n\
         CREATE DATABASE other;\n\
         \\c other\n\
         CREATE TABLE elsewhere AS SELECT g FROM generate_series(1, 5000) g;"
            .to_string(),
        format!(
            "CREATE TABLESPACE ts LOCATION '{}';\n\
             CREATE TABLE far TABLESPACE ts AS SELECT g, md5(g::text) h FROM generate_series(1, 40000) g;\n\
             DELETE FROM fresh WHERE g % 2 = 0;\n\
             VACUUM fresh;\n\
             INSERT INTO emptied SELECT g, 'again' FROM generate_series(1, 100) g;",
            ts.display()
        ),
    ];
    let mut chain = vec![full.id.clone()];
    let mut quiet = Vec::new();
    let mut last = full.clone();
    let mut marker = 0;
    for step in &steps {
        pg.sql(step);
        let inc = incremental(&pg, &backend);
        let link = inc.incremental.as_ref().expect("an incremental backup");
        assert_eq!(link.parent, last.id);
        assert_eq!((link.from_lsn, link.from_tli), (last.start_lsn, last.timeline));
        assert_eq!(link.chain_length as usize, chain.len() + 1);
        assert_eq!(link.method, method(major));
        // The changes are small, but a new database is a whole copy, and
        // so is a table whose hint bits were set since (checksums are on).
        if inc.stored_bytes * 2 >= full.stored_bytes {
            let repo = backend.repo().await;
            let r = pgpitr_repo::reader::BackupReader::open(&repo, &inc).await.unwrap();
            let mut files: Vec<_> =
                r.manifest().files.iter().map(|f| (f.size, String::from_utf8_lossy(&f.path).into_owned())).collect();
            files.sort();
            files.reverse();
            files.truncate(15);
            panic!("an incremental stores {} bytes, the full one {}: {files:?}", inc.stored_bytes, full.stored_bytes);
        }
        chain.push(inc.id.clone());
        marker += 1;
        insert_marker(&pg, marker);
        quiet.push((marker, dumpall(&pg), chain.clone()));
        // Changes after the quiet point, which restores to it must not hold.
        pg.sql("UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid <= 500;");
        marker += 1;
        insert_marker(&pg, marker);
        last = inc;
    }
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(stream.terminate().0, Some(0));

    let listed = run(pgpitr().args(["list", "--repo", &backend.url()])).ok().stdout;
    assert!(listed.contains(&format!("incremental: chain of 4 backups, {}", chain.join(" <- "))), "{listed}");

    let times = markers(&pg);
    for (id, dump, members) in &quiet {
        let t = times.iter().find(|m| m.0 == *id).unwrap().1;
        let when = rfc3339(t);
        let mut c = PgCluster::empty_of(major);
        let new_ts = c.scratch_dir().join("ts-restored");
        let map = format!("{}={}", ts.display(), new_ts.display());
        let mut args = vec!["--target-time", &when];
        if members.len() == 4 {
            args.extend(["--tablespace-map", &map]);
        }
        let out = run(&mut restore_cmd(&backend, &c.datadir(), &args)).ok();
        assert!(out.stdout.contains(&format!("chain:   {}", members.join(" <- "))), "{}", out.stdout);
        if running_as_root() && new_ts.exists() {
            assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&new_ts).status().unwrap().success());
        }
        c.start_restored(&pg_env(&backend));
        c.wait_promoted(Duration::from_secs(120));
        // The tablespace was relocated, as asked.
        let got = dumpall(&c).replace(&new_ts.display().to_string(), &ts.display().to_string());
        if got != *dump {
            let then: std::collections::HashSet<&str> = dump.lines().collect();
            let now: std::collections::HashSet<&str> = got.lines().collect();
            let diff: Vec<String> = got
                .lines()
                .filter(|l| !then.contains(l))
                .map(|l| format!("+ {l}"))
                .chain(dump.lines().filter(|l| !now.contains(l)).map(|l| format!("- {l}")))
                .take(8)
                .collect();
            panic!("a restore to {when} (chain of {}) differs from the cluster then: {diff:#?}", members.len());
        }
    }

    if major < 17 {
        return; // pg_combinebackup came with 17
    }
    // pgpitr's rebuild of the newest chain against pg_combinebackup's, from
    // the same backups extracted as they are stored.
    let repo = backend.repo().await;
    let work = tempfile::tempdir().unwrap();
    let infos: Vec<BackupInfo> = chain
        .iter()
        .map(|id| {
            let raw = std::fs::read(backend.local_path().join(format!("backups/{id}/backup.json"))).unwrap();
            serde_json::from_slice(&raw).unwrap()
        })
        .collect();
    let mut inputs = Vec::new();
    let mut last_ts = PathBuf::new();
    for (i, info) in infos.iter().enumerate() {
        let dir = work.path().join(format!("b{i}"));
        let has_ts = info.archives.iter().any(|a| a.tablespace_oid.is_some());
        last_ts = work.path().join(format!("ts{i}"));
        let map = if has_ts { vec![(ts.clone(), last_ts.clone())] } else { vec![] };
        pgpitr_restore::extract(&repo, info, &dir, &map, &ExtractOptions::default()).await.expect("extract");
        inputs.push(dir);
    }
    let combined = work.path().join("combined");
    let combined_ts = work.path().join("combined-ts");
    let out = Command::new(pg.bin("pg_combinebackup"))
        .arg("-o")
        .arg(&combined)
        .arg("-T")
        .arg(format!("{}={}", last_ts.display(), combined_ts.display()))
        .args(&inputs)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_combinebackup: {}", String::from_utf8_lossy(&out.stderr));
    let ours = work.path().join("ours");
    let ours_ts = work.path().join("ours-ts");
    let map = format!("{}={}", ts.display(), ours_ts.display());
    let newest = chain.last().unwrap();
    let args = ["--backup", newest, "--target", "immediate", "--tablespace-map", &map];
    run(&mut restore_cmd(&backend, &ours, &args)).ok();
    // What a restore adds (recovery settings, the WAL spool) and what each
    // writes in its own way (the manifest, the relocated tablespace's map).
    let skip = ["backup_manifest", "postgresql.auto.conf", "recovery.signal", "pg_wal/pgpitr_spool", "tablespace_map"];
    assert_same_tree(&ours, &combined, &skip, 500);
    // PG_<major>_<catalog version>/<database>/ and the table's files.
    assert_same_tree(&ours_ts, &combined_ts, &[], 4);
    let label = std::fs::read_to_string(ours.join("backup_label")).unwrap();
    assert!(!label.contains("INCREMENTAL"), "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_restores_exactly_on_14() {
    chain_restores_exactly(14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_restores_exactly_on_15() {
    chain_restores_exactly(15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_restores_exactly_on_16() {
    chain_restores_exactly(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_restores_exactly_on_17() {
    chain_restores_exactly(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_restores_exactly_on_18() {
    chain_restores_exactly(18).await;
}

fn complete_backups(backend: &Backend) -> usize {
    let dir = backend.local_path().join("backups");
    std::fs::read_dir(dir).map_or(0, |d| d.filter(|e| e.as_ref().unwrap().path().join("backup.json").exists()).count())
}

/// Every refusal, one line each, with nothing stored as complete: no
/// parent; (17+) summarize_wal off; summaries that do not reach back to the
/// parent; a parent deleted out of band (restore, verify, list and the next
/// incremental all name it).
async fn refusals(major: u32) {
    if !wanted(major) {
        return;
    }
    let backend = Backend::local();
    share(&backend);
    let pg = summarizing(major);
    pg.pgbench(&["-i", "-q", "-s", "1"]);

    let out = run(&mut backup_cmd(&pg, &backend, &["--incremental"]));
    out.fails_with(&["--incremental: no complete backup on the history of timeline 1"]);
    assert_eq!(complete_backups(&backend), 0);
    if major >= 17 {
        refusals_of_the_server(&pg, &backend);
    } else {
        recreated_database(&pg, &backend);
    }
    deleted_parent(&pg, &backend);
}

/// A block delta (15, 16) of a database dropped and made again under the
/// same OID by copying its template's files (whose pages keep their old
/// LSNs): refused naming the directory, nothing stored as complete.
fn recreated_database(pg: &PgCluster, backend: &Backend) {
    pg.sql("CREATE DATABASE again OID 40000 STRATEGY FILE_COPY; \\c again\nCREATE TABLE t AS SELECT 1 AS x;");
    take_backup(pg, backend);
    let before = complete_backups(backend);
    std::thread::sleep(Duration::from_millis(1100)); // a new second for PG_VERSION's time
    pg.sql("DROP DATABASE again; CREATE DATABASE again OID 40000 STRATEGY FILE_COPY;");
    let out = run(&mut backup_cmd(pg, backend, &["--incremental"]));
    out.fails_with(&["database directory base/40000 was made again since backup", "take a full backup"]);
    assert_eq!(complete_backups(backend), before, "nothing stored as complete");
}

/// 17+: summarize_wal off, then on but too late for the parent.
fn refusals_of_the_server(pg: &PgCluster, backend: &Backend) {
    let before = complete_backups(backend);
    pg.set_and_reload("summarize_wal", "off");
    take_backup(pg, backend);
    let out = run(&mut backup_cmd(pg, backend, &["--incremental"]));
    out.fails_with(&["set summarize_wal = on"]);
    // On now, but summaries begin at a later checkpoint: none reaches back
    // to that backup's start.
    pg.sql("CREATE TABLE later AS SELECT 1 AS x; SELECT pg_switch_wal(); CHECKPOINT;");
    pg.set_and_reload("summarize_wal", "on");
    let out = run(&mut backup_cmd(pg, backend, &["--incremental"]));
    out.fails_with(&["the server refused an incremental backup from backup", "WAL summaries are required"]);
    assert_eq!(complete_backups(backend), before + 1, "nothing more stored as complete");
}

/// A chain full <- a <- b, then a deleted by hand. Before it, a parent
/// whose metadata names another cluster (as if copied in from another
/// repository) is refused.
fn deleted_parent(pg: &PgCluster, backend: &Backend) {
    let full = take_backup(pg, backend);
    let info_path = backend.local_path().join(format!("backups/{}/backup.json", full.id));
    let mine = std::fs::read_to_string(&info_path).unwrap();
    let sysid = full.system_identifier.to_string();
    std::fs::write(&info_path, mine.replace(&sysid, "7000000000000000001")).unwrap();
    let out = run(&mut backup_cmd(pg, backend, &["--incremental"]));
    out.fails_with(&[&format!("backup {} is of another cluster (system identifier 7000000000000000001", full.id)]);
    std::fs::write(&info_path, mine).unwrap();
    pg.sql("UPDATE pgbench_accounts SET abalance = 1 WHERE aid < 100");
    let a = incremental(pg, backend);
    pg.sql("UPDATE pgbench_accounts SET abalance = 2 WHERE aid < 100");
    let b = incremental(pg, backend);
    assert_eq!(b.incremental.as_ref().unwrap().parent, a.id);
    std::fs::remove_dir_all(backend.local_path().join(format!("backups/{}", a.id))).unwrap();
    let named = format!("backup {} is incremental to backup {}, which is not a complete backup", b.id, a.id);
    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let out = run(&mut restore_cmd(backend, &data, &["--backup", &b.id, "--target", "immediate"]));
    out.fails_with(&[&named]);
    assert!(!data.join("global/pg_control").exists());
    // (verify also names the WAL gaps: no stream ran.)
    let out = run(pgpitr().args(["verify", "--repo", &backend.url()]));
    assert_ne!(out.code, Some(0));
    assert!(out.stdout.contains(&named), "{}", out.stdout);
    let listed = run(pgpitr().args(["list", "--repo", &backend.url()])).ok().stdout;
    assert!(listed.contains(&format!("NOT restorable: {named}")), "{listed}");
    let out = run(&mut backup_cmd(pg, backend, &["--incremental"]));
    out.fails_with(&[&format!("the newest backup's chain is broken: {named}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_15() {
    refusals(15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_17() {
    refusals(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_18() {
    refusals(18).await;
}

/// Below 17 there are no native incrementals: `--incremental native`
/// says so (and names the block delta). A block delta needs page LSNs that
/// move with hint bits: data checksums or wal_log_hints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_incrementals_are_refused_below_17() {
    let major = 16;
    if !wanted(major) {
        return;
    }
    let backend = Backend::local();
    let pg = PgCluster::builder().major(major).data_checksums(false).start();
    take_backup(&pg, &backend);
    let out = run(&mut backup_cmd(&pg, &backend, &["--incremental", "native"]));
    out.fails_with(&[&format!("PostgreSQL {major} cannot take native incremental backups"), "--incremental=delta"]);
    let out = run(&mut backup_cmd(&pg, &backend, &["--incremental"]));
    out.fails_with(&["a block delta needs data_checksums or wal_log_hints on", "set wal_log_hints = on"]);
    assert_eq!(complete_backups(&backend), 1);
}

/// A chain across a promotion: the full backup on timeline 1, the
/// incremental from the promoted standby on timeline 2; restored to the
/// latest point.
async fn chain_across_a_timeline_switch(major: u32) {
    if !wanted(major) {
        return;
    }
    let backend = Backend::local();
    share(&backend);
    let primary = summarizing(major);
    primary.sql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 1000);");
    let standby = primary.start_standby();
    // The standby's copies of the files are dated (to the second) before
    // the full backup begins, as with any standby made before its backups.
    std::thread::sleep(Duration::from_millis(1100));
    let s = StreamProc::start(&standby, &backend, &[]);
    wait_streaming(&standby, "pgpitr");
    let full = take_backup(&primary, &backend);
    primary.sql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let before = lsn(&primary.sql("SELECT pg_current_wal_lsn()"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, before, Duration::from_secs(30)).await;
    standby.promote();
    standby.sql("INSERT INTO t SELECT generate_series(2001, 3000)");
    let inc = incremental(&standby, &backend);
    assert_eq!(inc.timeline, pgpitr_types::TimelineId(2));
    let link = inc.incremental.as_ref().unwrap();
    assert_eq!((link.parent.as_str(), link.from_tli), (full.id.as_str(), pgpitr_types::TimelineId(1)));
    let end = lsn(&standby.sql("INSERT INTO t VALUES (3001); SELECT pg_current_wal_lsn();"));
    wait_durable(storage.as_ref(), seg16(), 2, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));

    let mut c = PgCluster::empty_of(major);
    let out = run(&mut restore_cmd(&backend, &c.datadir(), &["--target", "latest"])).ok();
    assert!(out.stdout.contains(&format!("chain:   {} <- {}", full.id, inc.id)), "{}", out.stdout);
    c.start_restored(&pg_env(&backend));
    c.wait_promoted(Duration::from_secs(120));
    assert_eq!(c.sql("SELECT count(*), max(x) FROM t"), "3001|3001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_across_a_timeline_switch_on_16() {
    chain_across_a_timeline_switch(16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_across_a_timeline_switch_on_17() {
    chain_across_a_timeline_switch(17).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_across_a_timeline_switch_on_18() {
    chain_across_a_timeline_switch(18).await;
}

/// `stream --backup-every --full-every --max-chain`: a full backup first,
/// then incrementals, each on the one before, until the chain is full;
/// then a full one again. `expire --keep-backups 1` keeps the newest
/// incremental's whole chain, and that chain restores.
async fn scheduled_chains(major: u32) {
    if !wanted(major) {
        return;
    }
    let backend = Backend::local();
    share(&backend);
    let pg = summarizing(major);
    pg.sql("CREATE TABLE t (x int)");
    let args = ["--backup-every", "1s", "--backup-checkpoint", "fast", "--full-every", "1h", "--max-chain", "3"];
    let s = StreamProc::start(&pg, &backend, &args);
    let infos = |backend: &Backend| -> Vec<BackupInfo> {
        let dir = backend.local_path().join("backups");
        let mut v: Vec<BackupInfo> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| std::fs::read(e.unwrap().path().join("backup.json")).ok())
                    .map(|raw| serde_json::from_slice(&raw).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let mut x = 0;
    let four = wait_for(Duration::from_secs(120), || {
        x += 1;
        // A segment each: expiry then has WAL below the kept chain to delete.
        pg.sql(&format!("INSERT INTO t VALUES ({x}); SELECT pg_switch_wal();"));
        std::thread::sleep(Duration::from_millis(200));
        let v = infos(&backend);
        (v.len() >= 4).then_some(v)
    })
    .expect("four scheduled backups within 2 minutes");
    let end = lsn(&pg.sql("INSERT INTO t VALUES (0); SELECT pg_current_wal_lsn();"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));
    let parents: Vec<Option<&str>> = four.iter().take(4).map(|i| i.parent()).collect();
    assert_eq!(parents, [None, Some(four[0].id.as_str()), Some(four[1].id.as_str()), None], "full, inc, inc, full");
    let all = infos(&backend);
    let newest = all.last().unwrap();

    // The newest is full: the first chain goes. Cut the repository back to
    // the first chain to see an incremental keep its parents.
    for i in &all[3..] {
        std::fs::remove_dir_all(backend.local_path().join(format!("backups/{}", i.id))).unwrap();
    }
    let mut cmd = pgpitr();
    let out = run(cmd.args(["expire", "--repo", &backend.url(), "--keep-backups", "1", "--json"])).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["plan"]["kept_backups"], serde_json::json!([four[0].id, four[1].id, four[2].id]), "{v}");
    assert_eq!(v["plan"]["kept"][0]["kept_by"][0], serde_json::json!({"rule": "parent", "of": four[1].id}), "{v}");
    assert!(v["plan"]["expired_backups"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["plan"]["wal_objects"].as_u64().unwrap() > 0, "the parents' own WAL goes: {v}");
    assert_ne!(newest.id, four[2].id);
    let listed = run(pgpitr().args(["list", "--repo", &backend.url()])).ok().stdout;
    assert!(listed.contains("restorable only through the incremental backups built on it"), "{listed}");
    // The parents keep no WAL of their own: still a sound repository.
    let out = run(pgpitr().args(["verify", "--repo", &backend.url()]));
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    run(pgpitr().args(["verify", "--repo", &backend.url(), "--backup", &four[2].id])).ok();

    let mut c = PgCluster::empty_of(major);
    let out = run(&mut restore_cmd(&backend, &c.datadir(), &["--target", "latest"])).ok();
    assert!(
        out.stdout.contains(&format!("chain:   {} <- {} <- {}", four[0].id, four[1].id, four[2].id)),
        "{}",
        out.stdout
    );
    c.start_restored(&pg_env(&backend));
    c.wait_promoted(Duration::from_secs(120));
    assert_eq!(c.sql("SELECT count(*) FROM t WHERE x = 0"), "1", "every commit up to the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_chains_on_17() {
    scheduled_chains(17).await;
}

/// An increment whose bytes do not match its manifest (the part around it
/// re-sealed, so only the file's own checksum can tell) fails the restore
/// naming the file; the target holds no pg_control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_increment_fails_the_restore() {
    use pgpitr_repo::object;
    let major = 17;
    if !wanted(major) {
        return;
    }
    let backend = Backend::local();
    let pg = summarizing(major);
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    take_backup(&pg, &backend);
    pg.sql("UPDATE pgbench_accounts SET abalance = 7 WHERE aid <= 3000");
    // One uncompressed part: the test can find a file in it and re-seal it.
    let mut cmd = pgpitr();
    cmd.args(["backup", "--repo", &backend.url(), "-d", &conninfo(&pg), "--checkpoint", "fast"])
        .args(["--incremental", "--json", "--compress", "none", "--part-size", "1GiB"])
        .env("PGPASSWORD", REPL_PASSWORD);
    let raw = run(&mut cmd).ok().stdout;
    let mut inc: BackupInfo = serde_json::from_str(&raw).unwrap();
    let base = inc.archives.iter().position(|a| a.name == "base").unwrap();
    assert_eq!(inc.archives[base].parts.len(), 1);
    let dir = backend.local_path().join(format!("backups/{}", inc.id));
    let part = dir.join("base/000000");
    let (header, tar) = object::decode(&std::fs::read(&part).unwrap()).unwrap();
    let mut tar = tar.to_vec();
    // The first increment with blocks: past its first 8 KiB (header and
    // block numbers), a byte of block data.
    let mut at = 0;
    let (name, data) = loop {
        let name = String::from_utf8_lossy(&tar[at..at + 100]).trim_end_matches('\0').to_string();
        let size = u64::from_str_radix(String::from_utf8_lossy(&tar[at + 124..at + 135]).trim(), 8).unwrap() as usize;
        assert!(!name.is_empty(), "no increment with blocks in the archive");
        if name.contains("INCREMENTAL.") && size > 8192 {
            break (name, at + 512);
        }
        at += 512 + size.div_ceil(512) * 512;
    };
    tar[data + 8192 + 100] ^= 0xff;
    let sealed = object::encode(header.tli, header.start, &tar, object::Codec::None, &Default::default());
    std::fs::write(&part, &sealed).unwrap();
    inc.archives[base].parts[0].crc = crc32fast::hash(&tar);
    inc.archives[base].parts[0].stored_len = sealed.len() as u64;
    std::fs::write(dir.join("backup.json"), serde_json::to_vec_pretty(&inc).unwrap()).unwrap();

    let target = tempfile::tempdir().unwrap();
    let data_dir = target.path().join("data");
    let out = run(&mut restore_cmd(&backend, &data_dir, &["--target", "immediate"]));
    let name = name.trim_start_matches("./");
    out.fails_with(&[&format!("backup {}", inc.id), name, "CRC-32C"]);
    assert!(data_dir.join("base").exists(), "the restore had begun");
    assert!(!data_dir.join("global/pg_control").exists(), "a failed restore leaves no pg_control");
}

/// A chain in an S3 repository (native on 17, block delta on 15), and in
/// an encrypted one: stored and restored through the S3 backend and the
/// encrypting layer, exactly.
async fn chain_on_s3(major: u32, encrypted: bool) {
    if !wanted(major) {
        return;
    }
    let backend = Backend::s3();
    let key = encrypted.then(|| crate::encryption::key_file("5a"));
    let key_env: Vec<(&str, String)> = key.iter().map(|k| ("PGPITR_KEY_FILE", k.path.display().to_string())).collect();
    let with_env = |mut cmd: Command| -> Command {
        for (k, v) in &key_env {
            cmd.env(k, v);
        }
        cmd
    };
    let pg = summarizing(major);
    pg.pgbench(&["-i", "-q", "-s", "2"]);
    let env: Vec<(&str, &std::ffi::OsStr)> = key_env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(v))).collect();
    let stream = StreamProc::start_env(&pg, &backend, &[], &env);
    wait_streaming(&pg, "pgpitr");
    let backup = |extra: &[&str]| -> BackupInfo {
        let out = run(&mut with_env(backup_cmd(&pg, &backend, &[&["--json"], extra].concat()))).ok();
        serde_json::from_str(&out.stdout).expect("backup --json")
    };
    let full = backup(&[]);
    let mut chain = vec![full.id.clone()];
    for k in 1..=2 {
        pg.sql(&format!(
            "UPDATE pgbench_accounts SET abalance = {k} WHERE aid <= 5000; CREATE TABLE t{k} AS SELECT 1;"
        ));
        let inc = backup(&["--incremental"]);
        assert_eq!(inc.incremental.as_ref().map(|i| i.method), Some(method(major)));
        chain.push(inc.id);
    }
    let dump = dumpall(&pg);
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(backend.storage().await.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(stream.terminate().0, Some(0));
    let mut verify = pgpitr();
    backend.env(&mut verify);
    run(with_env(verify).args(["verify", "--repo", &backend.url()])).ok();
    let mut c = PgCluster::empty_of(major);
    let out = run(&mut with_env(restore_cmd(&backend, &c.datadir(), &["--target", "latest"]))).ok();
    assert!(out.stdout.contains(&format!("chain:   {}", chain.join(" <- "))), "{}", out.stdout);
    let mut server_env = pg_env(&backend);
    server_env.extend(key_env.iter().cloned());
    c.start_restored(&server_env);
    c.wait_promoted(Duration::from_secs(120));
    assert!(dumpall(&c) == dump, "the restored chain differs from the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_on_s3_on_15() {
    chain_on_s3(15, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_on_s3_on_17() {
    chain_on_s3(17, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_on_s3_encrypted_on_17() {
    chain_on_s3(17, true).await;
}
