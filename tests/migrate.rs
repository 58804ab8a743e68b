//! Repositories written in format 1 (each timeline's WAL in one directory)
//! stream, list and restore as they are, and `pgpitr migrate` moves them to
//! format 2 without a moment where a reader sees less.

use crate::common::*;
use crate::restore::{restore_and_start, rows, share, take_backup};
use pgpitr_repo::Binding;
use pgpitr_storage::Storage;
use pgpitr_testkit::*;
use std::time::Duration;

fn pgpitr_with(backend: &Backend, args: &[&str]) -> Run {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    run(cmd.args(args).args(["--repo", &backend.url()]).env("PGPASSWORD", REPL_PASSWORD))
}

/// Rewrites the binding as format 1, as pgpitr wrote it before format 2.
async fn make_format_1(storage: &dyn Storage) {
    let raw = storage.get("pgpitr.json").await.unwrap();
    let mut b: Binding = serde_json::from_slice(&raw).unwrap();
    b.format_version = 1;
    storage.put("pgpitr.json", serde_json::to_vec_pretty(&b).unwrap().into()).await.unwrap();
}

async fn keys(storage: &dyn Storage) -> Vec<String> {
    let mut k: Vec<String> = storage.list("").await.unwrap().into_iter().map(|m| m.key).collect();
    k.retain(|k| k.starts_with("wal/") || k.starts_with("timelines/"));
    k
}

/// A key of format 1: `wal/<TLI>/<SEGMENT>...`, or a history beside them.
fn is_format_1(key: &str) -> bool {
    key.strip_prefix("wal/").is_some_and(|r| r.matches('/').count() <= 1)
}

pub(crate) async fn a_format_1_repository_works_and_migrates(backend: Backend) {
    share(&backend);
    let storage = backend.storage().await;
    let pg = PgCluster::start_default();
    pgpitr_with(&backend, &["init", "-d", &conninfo(&pg)]).ok();
    make_format_1(storage.as_ref()).await;
    pg.sql("CREATE TABLE t (x int)");
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    take_backup(&pg, &backend);
    for i in 1..=3 {
        pg.sql(&format!("INSERT INTO t VALUES ({i}); SELECT pg_switch_wal();"));
    }
    let end = lsn(&pg.sql("INSERT INTO t VALUES (4); SELECT pg_current_wal_lsn();"));
    // Through the stream's own view: format 1 as today's layout.
    let repo = pgpitr_repo::Repository::open(storage.clone()).await.unwrap();
    wait_durable(repo.storage().as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    // A running stream writes format-1 keys: no migration under it.
    pgpitr_with(&backend, &["migrate"]).fails_with(&["pgpitr stream", "is writing to the repository"]);
    assert_eq!(s.terminate().0, Some(0));
    let written = keys(storage.as_ref()).await;
    assert!(!written.is_empty() && written.iter().all(|k| is_format_1(k)), "{written:?}");
    let listed = |backend: &Backend| -> serde_json::Value {
        serde_json::from_str(&pgpitr_with(backend, &["list", "--json"]).ok().stdout).unwrap()
    };
    let before = listed(&backend);
    assert_eq!(before["timelines"][0]["gaps"], serde_json::json!([]), "{before}");
    let (restored, _) = restore_and_start(&backend, &["--target", "latest"]);
    assert_eq!(rows(&restored), [1, 2, 3, 4]);
    drop(restored);

    // An interrupted migration: the copies are made, the switch is not.
    let copy = written.iter().find(|k| k.contains("/0000000100000000000000")).unwrap();
    let today = pgpitr_repo::flat::from_flat(copy).unwrap();
    storage.put(&today, storage.get(copy).await.unwrap()).await.unwrap();
    assert_eq!(listed(&backend)["timelines"], before["timelines"], "a copy is not seen before the switch");

    let out = pgpitr_with(&backend, &["migrate", "--json"]).ok();
    let done: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(done["from_format"], 1);
    assert_eq!(done["already_copied"], 1, "{done}");
    assert_eq!(done["copied"].as_u64().unwrap() + 1, written.len() as u64, "{done}");
    assert_eq!(done["deleted"].as_u64().unwrap(), written.len() as u64, "{done}");
    let moved = keys(storage.as_ref()).await;
    assert!(moved.iter().all(|k| !is_format_1(k)), "{moved:?}");
    assert_eq!(moved.len(), written.len());
    assert!(moved.iter().any(|k| k.starts_with("wal/00000001/00000000/")), "{moved:?}");
    let raw: Binding = serde_json::from_slice(&storage.get("pgpitr.json").await.unwrap()).unwrap();
    assert_eq!(raw.format_version, pgpitr_repo::FORMAT_VERSION);
    let after = listed(&backend);
    assert_eq!(after["timelines"], before["timelines"]);
    assert_eq!(after["backups"], before["backups"]);
    let (restored, _) = restore_and_start(&backend, &["--target", "latest"]);
    assert_eq!(rows(&restored), [1, 2, 3, 4]);

    // Again: nothing to do.
    let again = pgpitr_with(&backend, &["migrate"]).ok();
    assert!(again.stdout.contains("nothing to do"), "{}", again.stdout);
    // A format-2 repository streams on.
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let end = lsn(&pg.sql("INSERT INTO t VALUES (5); SELECT pg_current_wal_lsn();"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));
    assert!(keys(storage.as_ref()).await.iter().all(|k| !is_format_1(k)));
}

on_both_backends!(a_format_1_repository_works_and_migrates, a_format_1_repository_works_and_migrates);
