//! `pgpitr verify`: a sound repository passes; every damaged or missing
//! object is named, and the exit code says so.

use crate::common::*;
use pgpitr_repo::backup::{BackupId, BackupInfo};
use pgpitr_repo::wal::WalObjectKind;
use pgpitr_testkit::*;
use std::time::Duration;

fn verify(backend: &Backend, args: &[&str]) -> Run {
    let mut cmd = pgpitr();
    backend.env(&mut cmd);
    run(cmd.args(["verify", "--repo", &backend.url()]).args(args))
}

pub(crate) async fn verify_names_what_is_wrong(backend: Backend, major: u32) {
    let pg = PgCluster::builder().major(major).start();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let s = StreamProc::start(&pg, &backend, &[]);
    wait_streaming(&pg, "pgpitr");
    let out = run(&mut backup_cmd(&pg, &backend, &["--json"])).ok();
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    for _ in 0..3 {
        pg.sql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1); SELECT pg_switch_wal();");
    }
    let end = lsn(
        &pg.sql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 2); SELECT pg_current_wal_lsn();")
    );
    let storage = backend.storage().await;
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    // Beside the running stream, while it stores and compacts new WAL.
    let beside = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            for i in 0..20 {
                pg.sql(&format!(
                    "INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, {i}); SELECT pg_switch_wal();"
                ));
            }
        });
        let out = verify(&backend, &[]);
        load.join().unwrap();
        out
    });
    assert_eq!(beside.code, Some(0), "{}{}", beside.stdout, beside.stderr);
    let end = lsn(&pg.sql("SELECT pg_current_wal_lsn()"));
    wait_durable(storage.as_ref(), seg16(), 1, end, Duration::from_secs(30)).await;
    assert_eq!(s.terminate().0, Some(0));
    let parts: usize = info.archives.iter().map(|a| a.parts.len()).sum();
    assert!(parts >= 2, "small parts, so one can be damaged among others");

    let sound = verify(&backend, &["--json"]).ok();
    let report: serde_json::Value = serde_json::from_str(&sound.stdout).unwrap();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["backups"], 1);
    assert_eq!(report["backup_objects"], parts + 1, "every part and the manifest");
    assert!(report["wal_objects"].as_u64().unwrap() >= 4, "{report}");

    // One byte of a part flipped, and a segment after the backup gone.
    let id = BackupId::parse(&info.id).unwrap();
    let archive = &info.archives[0];
    let part_key = id.part_key(&archive.name, archive.parts[1].index);
    let mut bytes = storage.get(&part_key).await.unwrap().to_vec();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    storage.put(&part_key, bytes.into()).await.unwrap();
    let (tls, _) = pgpitr_repo::wal::scan(storage.as_ref(), seg16()).await.unwrap();
    let objects = &tls[&pgpitr_types::TimelineId(1)].objects;
    let (victim, _) = objects
        .iter()
        .find(|(o, _)| o.kind == WalObjectKind::Segment && o.range(seg16()).0 > info.stop_lsn)
        .expect("a complete segment after the backup");
    assert!(objects.last().unwrap().0 != *victim, "WAL continues after the victim");
    storage.delete(&victim.key(seg16())).await.unwrap();
    let (from, to) = victim.range(seg16());

    let bad = verify(&backend, &[]);
    bad.fails_with(&["verify found 2 problem(s)"]);
    assert!(bad.stdout.contains(&format!("PROBLEM {part_key}: ")), "{}", bad.stdout);
    assert!(bad.stdout.contains(&format!("PROBLEM WAL {from}..{to} on timeline 1: missing")), "{}", bad.stdout);

    // The manifest gone: named, with the part still there.
    storage.delete(&id.manifest_key()).await.unwrap();
    // One backup is checked with its own WAL only: the gap after its stop is not its problem.
    let bad = verify(&backend, &["--backup", &info.id]);
    bad.fails_with(&["verify found 2 problem(s)"]);
    assert!(bad.stdout.contains(&format!("PROBLEM {}: missing", id.manifest_key())), "{}", bad.stdout);
    assert!(bad.stdout.contains(&format!("PROBLEM {part_key}: ")), "{}", bad.stdout);
    assert!(!bad.stdout.contains(&format!("WAL {from}..{to}")), "{}", bad.stdout);
    verify(&backend, &["--backup", "20200101T000000Z"]).fails_with(&["no complete backup 20200101T000000Z"]);
}

on_both_backends!(verify_names_what_is_wrong, verify_names_what_is_wrong, test_major());

/// A part whose container is sound but whose archive content no longer
/// matches the manifest (re-encoded with a changed byte, and backup.json
/// updated to match): only reading the files as a restore does finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_the_files_against_the_manifest() {
    use pgpitr_repo::object::{self, Codec, WalSummary};
    let backend = Backend::local();
    let pg = PgCluster::start_default();
    pg.pgbench(&["-i", "-q", "-s", "1"]);
    let out = run(&mut backup_cmd(&pg, &backend, &["--json", "--compress", "none"])).ok();
    let info: BackupInfo = serde_json::from_str(&out.stdout).unwrap();
    let sound = verify(&backend, &["--json"]).ok();
    let report: serde_json::Value = serde_json::from_str(&sound.stdout).unwrap();
    assert!(report["backup_files"].as_u64().unwrap() > 900, "every file of the manifest: {report}");

    let storage = backend.storage().await;
    let id = BackupId::parse(&info.id).unwrap();
    let archive = info.archives.iter().find(|a| a.name == "base").unwrap();
    let part = &archive.parts[1];
    let key = id.part_key(&archive.name, part.index);
    let (header, raw) = object::decode(&storage.get(&key).await.unwrap()).unwrap();
    let mut raw = raw.to_vec();
    // Inside the data of some file: blocks of tar headers are rare in a 1 MiB part.
    let at = raw.len() / 2 + 100;
    raw[at] ^= 0x01;
    let stored = object::encode(header.tli, header.start, &raw, Codec::None, &WalSummary::default());
    let mut doc: serde_json::Value = serde_json::from_slice(&storage.get(&id.info_key()).await.unwrap()).unwrap();
    let parts = doc["archives"].as_array_mut().unwrap().iter_mut().find(|a| a["name"] == "base").unwrap();
    let p = &mut parts["parts"][1];
    p["crc"] = serde_json::json!(object::decode(&stored).unwrap().0.raw_crc);
    p["stored_len"] = serde_json::json!(stored.len());
    storage.put(&key, stored).await.unwrap();
    storage.put(&id.info_key(), serde_json::to_vec(&doc).unwrap().into()).await.unwrap();

    let bad = verify(&backend, &[]);
    let line = bad.fails_with(&["verify found 1 problem(s)"]);
    assert!(line.contains(&id.dir()), "{line}");
    assert!(bad.stdout.contains(&format!("PROBLEM {}: ", id.dir())), "{}", bad.stdout);
}
