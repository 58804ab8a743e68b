//! `pgpitr expire`: retention of base backups, and of the WAL only expired
//! backups could use.

use crate::common::*;
use crate::restore::{restore_cmd, rfc3339, take_backup, us};
use pgpitr_repo::backup::{BackupId, BackupInfo};
use pgpitr_repo::wal::WalObjectId;
use pgpitr_testkit::*;
use pgpitr_types::Lsn;
use std::time::Duration;

fn expire(backend: &Backend, args: &[&str]) -> serde_json::Value {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    cmd.args(["expire", "--repo", &backend.url(), "--json"]).args(args);
    serde_json::from_str(&run(&mut cmd).ok().stdout).expect("expire --json prints JSON")
}

/// Every WAL object's key, with the end of its segment.
async fn wal_objects(backend: &Backend) -> Vec<(String, Lsn)> {
    let storage = backend.storage().await;
    let list = storage.list("wal/").await.unwrap();
    list.into_iter()
        .filter_map(|m| Some((m.key.clone(), WalObjectId::parse(&m.key, seg16())?.segno.end_lsn(seg16())?)))
        .collect()
}

fn complete_backups(backend: &Backend) -> Vec<String> {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    let out = run(cmd.args(["list", "--json", "--repo", &backend.url()])).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let backups = v["backups"].as_array().unwrap();
    backups.iter().filter(|b| b["status"] == "complete").map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

/// Three backups with WAL between them, then `--keep-backups 2`.
/// Three backups of `pg`, each after two segments of WAL (so the oldest
/// has WAL of its own), streamed into `backend`; the stream is stopped, so
/// counts of objects are exact afterwards (the stream deletes the pieces
/// of each segment it completes). Expiry beside a running stream is what
/// `scheduled_backups_expire_what_the_policy_does_not_keep` does.
async fn three_backups(pg: &PgCluster, backend: &Backend) -> Vec<BackupInfo> {
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(pg, backend, &[]);
    wait_streaming(pg, "pgpitr");
    let mut infos: Vec<BackupInfo> = Vec::new();
    for _ in 0..3 {
        for _ in 0..2 {
            pg.sql("INSERT INTO t SELECT generate_series(1, 1000); SELECT pg_switch_wal();");
        }
        infos.push(take_backup(pg, backend));
    }
    let end = lsn(&pg.sql("INSERT INTO t VALUES (0); SELECT pg_current_wal_lsn();"));
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    let (code, stderr) = s.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    infos
}

pub(crate) async fn keeps_the_newest_backups_and_the_wal_they_need(backend: Backend, major: u32) {
    let pg = PgCluster::builder().major(major).start();
    let infos = three_backups(&pg, &backend).await;
    let storage = backend.storage().await;
    let (b1, b2, b3) = (&infos[0], &infos[1], &infos[2]);
    let before = wal_objects(&backend).await;
    let doomed: Vec<&String> = before.iter().filter(|(_, e)| *e <= b2.start_lsn).map(|(k, _)| k).collect();
    assert!(!doomed.is_empty(), "segments before the second backup's start");

    let plan = expire(&backend, &["--keep-backups", "2", "--dry-run"]);
    assert_eq!(plan["plan"]["kept_backups"], serde_json::json!([b2.id, b3.id]));
    assert_eq!(plan["plan"]["expired_backups"].as_array().unwrap().len(), 1);
    assert_eq!(plan["plan"]["expired_backups"][0]["id"], b1.id.as_str());
    assert_eq!(plan["plan"]["wal_horizon"], b2.start_lsn.to_string());
    assert_eq!(plan["plan"]["wal_objects"], doomed.len());
    assert_eq!(plan["plan"]["earliest_restorable_time"], b2.stop_time.as_str());
    assert!(plan["deleted"].is_null(), "{plan}");
    assert_eq!(complete_backups(&backend), [b1.id.as_str(), &b2.id, &b3.id]);
    let still: Vec<String> = wal_objects(&backend).await.into_iter().map(|(k, _)| k).collect();
    assert!(doomed.iter().all(|k| still.contains(k)), "a dry run deleted WAL");

    let out = expire(&backend, &["--keep-backups", "2"]);
    assert_eq!(out["deleted"]["backups"], 1, "{out}");
    assert_eq!(out["deleted"]["wal_objects"], doomed.len(), "{out}");
    assert_eq!(complete_backups(&backend), [b2.id.as_str(), &b3.id]);
    let b1_dir = BackupId::parse(&b1.id).unwrap().dir();
    assert!(storage.list(&b1_dir).await.unwrap().is_empty(), "objects left under {b1_dir}");
    let after = wal_objects(&backend).await;
    assert!(after.iter().all(|(_, e)| *e > b2.start_lsn), "WAL below the horizon survived");
    for (k, e) in &before {
        if *e > b2.start_lsn {
            assert!(after.iter().any(|(a, _)| a == k), "{k} was needed and is gone");
        }
    }

    // Restores: before the oldest kept backup is refused, after it plans.
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("restore");
    let early = run(&mut restore_cmd(&backend, &pgdata, &["--target-time", &b1.stop_time, "--dry-run"]));
    early.fails_with(&["is before the earliest restorable time"]);
    let target = rfc3339(us(&b2.stop_time) + 1);
    let ok = run(&mut restore_cmd(&backend, &pgdata, &["--target-time", &target, "--dry-run"])).ok();
    assert!(ok.stdout.contains(&b2.id), "{}", ok.stdout);

    // Done once: running again finds nothing.
    let again = expire(&backend, &["--keep-backups", "2"]);
    assert_eq!(again["plan"]["expired_backups"], serde_json::json!([]));
    assert_eq!(again["plan"]["wal_objects"], 0);
    assert_eq!((again["deleted"]["backups"].as_u64(), again["deleted"]["wal_objects"].as_u64()), (Some(0), Some(0)));
}

on_both_backends!(
    keeps_the_newest_backups_and_the_wal_they_need,
    keeps_the_newest_backups_and_the_wal_they_need,
    test_major()
);

/// `--keep-within` keeps the backups of the window and the last one before
/// it; the text output says what went; bad policies are usage errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_within_and_refusals() {
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    let _s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let mut infos = Vec::new();
    for _ in 0..3 {
        infos.push(take_backup(&pg, &backend));
        std::thread::sleep(Duration::from_secs(3));
    }
    let ids: Vec<&String> = infos.iter().map(|i| &i.id).collect();
    // The window starts 1.5 s before the newest backup stopped: it holds the
    // newest, and the middle one is needed to reach the window's start.
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    let newest_stop = us(&infos[2].stop_time);
    let within_ms = (jiff::Timestamp::now().as_microsecond() - newest_stop) / 1000 + 1500;
    let out = run(cmd.args(["expire", "--repo", &backend.url(), "--keep-within", &format!("{within_ms}ms")])).ok();
    assert!(out.stdout.contains("keeping 2 backup(s):"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("  {} (stopped", ids[1])), "{}", out.stdout);
    assert!(out.stdout.contains("keep-within; restorable point in time"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("deleted backup {}", ids[0])), "{}", out.stdout);
    assert_eq!(complete_backups(&backend), [ids[1].as_str(), ids[2]]);

    for bad in [&["--keep-backups", "0"][..], &["--keep-within", "0s"], &[]] {
        let mut cmd = pgpitr();
        backend.env(&mut cmd);
        let out = run(cmd.args(["expire", "--repo", &backend.url()]).args(bad));
        assert_eq!(out.code, Some(2), "{bad:?}: {}", out.stderr);
    }
    assert_eq!(complete_backups(&backend), [ids[1].as_str(), ids[2]]);
}

/// A held backup outside the point-in-time window keeps only its own WAL:
/// the WAL between it and the window goes, it still restores to its end,
/// a time in the gap is refused, and `list` says which backup restores
/// how far and why it is kept. Released, it goes.
async fn held_backups_keep_their_own_wal_only(backend: Backend) {
    crate::restore::share(&backend);
    let pg = PgCluster::start_default();
    let infos = three_backups(&pg, &backend).await;
    let (b1, b2, b3) = (&infos[0], &infos[1], &infos[2]);

    let mut hold = pgpitr();
    backend.env(&mut hold);
    let held = run(hold.args(["backup", "hold", "--repo", &backend.url(), &b1.id])).ok();
    assert!(held.stdout.contains("held"), "{}", held.stdout);
    let before = wal_objects(&backend).await;
    let out = expire(&backend, &["--keep-backups", "1"]);
    assert_eq!(out["plan"]["kept_backups"], serde_json::json!([b1.id, b3.id]), "{out}");
    assert_eq!(out["plan"]["kept"][0]["kept_by"], serde_json::json!([{"rule": "keep_forever"}]));
    assert_eq!(out["plan"]["kept"][0]["point_in_time"], false);
    assert_eq!(out["plan"]["kept"][1]["point_in_time"], true);
    assert_eq!(out["plan"]["earliest_restorable_time"], b3.stop_time.as_str());
    assert_eq!(complete_backups(&backend), [b1.id.as_str(), &b3.id]);
    let after = wal_objects(&backend).await;
    let seg = seg16().bytes();
    for (k, e) in &before {
        let start = Lsn(e.0 - seg);
        // Its own WAL and the segment after its stop.
        let own = start.0 <= b1.stop_lsn.0 + seg && *e > b1.start_lsn;
        let window = *e > b3.start_lsn;
        let kept = after.iter().any(|(a, _)| a == k);
        assert_eq!(
            kept,
            own || window,
            "{k} ({start}..{e}): b1 {}..{}, b3 from {}",
            b1.start_lsn,
            b1.stop_lsn,
            b3.start_lsn
        );
    }
    assert!(after.len() < before.len(), "nothing between the backups was deleted");

    // list: how far each restores, and why it is kept.
    let mut list = pgpitr();
    backend.env(&mut list);
    let listed: serde_json::Value =
        serde_json::from_str(&run(list.args(["list", "--json", "--repo", &backend.url()])).ok().stdout).unwrap();
    let r = &listed["retention"];
    assert_eq!((r[0]["id"].as_str(), r[0]["restorable"].as_str()), (Some(b1.id.as_str()), Some("to_its_end")), "{r}");
    assert_eq!(r[1]["restorable"], "point_in_time", "{r}");
    assert_eq!(r[1]["kept_by"], serde_json::json!([{"rule": "newest"}, {"rule": "keep_backups"}]));
    assert_eq!(listed["earliest_restorable_time"], b3.stop_time.as_str());
    let mut list = pgpitr();
    backend.env(&mut list);
    let text = run(list.args(["list", "--repo", &backend.url()])).ok().stdout;
    assert!(text.contains("restorable to its end only (no WAL after it); kept by keep-forever [held]"), "{text}");

    // b1 restores to its end; a time between the backups is refused.
    let (restored, _) = crate::restore::restore_and_start(&backend, &["--backup", &b1.id, "--target", "immediate"]);
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "2000");
    let dir = tempfile::tempdir().unwrap();
    let gap = run(&mut restore_cmd(&backend, &dir.path().join("r"), &["--target-time", &b2.stop_time, "--dry-run"]));
    gap.fails_with(&["missing from the repository"]);

    // Released: the next expire deletes it and its WAL.
    let mut release = pgpitr();
    backend.env(&mut release);
    run(release.args(["backup", "release", "--repo", &backend.url(), &b1.id])).ok();
    expire(&backend, &["--keep-backups", "1"]);
    assert_eq!(complete_backups(&backend), [b3.id.as_str()]);
    assert!(wal_objects(&backend).await.iter().all(|(_, e)| *e > b3.start_lsn));
    let mut hold = pgpitr();
    backend.env(&mut hold);
    run(hold.args(["backup", "hold", "--repo", &backend.url(), &b1.id])).fails_with(&["no complete backup"]);
}

on_both_backends!(held_backups_keep_only_their_own_wal, held_backups_keep_their_own_wal_only);
