//! BASE_BACKUP in the PostgreSQL 15 format, checked with pg_verifybackup.

use super::*;
use pgpitr_pgwire::{BaseBackupMessage, TablespaceInfo, quote_literal};
use pgpitr_types::TimelineId;
use std::time::Duration;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_backup_passes_pg_verifybackup() {
    let pg = PgCluster::start_default();
    pg.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 10000) g");
    let mut conn = connect_repl(&pg).await;
    let label = quote_literal("pgpitr's test");
    let options = if pg.major() == 14 {
        format!("LABEL {label} PROGRESS FAST NOWAIT MANIFEST 'yes'")
    } else {
        format!("(LABEL {label}, PROGRESS, CHECKPOINT 'fast', MANIFEST 'yes', WAIT false)")
    };
    let mut backup = conn.base_backup(&options).await.unwrap();

    let mut started = None;
    let mut finished = None;
    let mut archives: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifest: Option<Vec<u8>> = None;
    let mut progress = Vec::new();
    while let Some(m) = timeout(Duration::from_secs(60), backup.next()).await.expect("backup within 60 s").unwrap() {
        match m {
            BaseBackupMessage::Started { start_lsn, tli, tablespaces } => {
                assert!(started.is_none());
                started = Some((start_lsn, tli, tablespaces));
            }
            BaseBackupMessage::Archive { name, tablespace_location } => {
                assert!(manifest.is_none(), "archives come before the manifest");
                assert_eq!(tablespace_location, None);
                archives.push((name, Vec::new()));
            }
            BaseBackupMessage::Data(d) => match (&mut manifest, archives.last_mut()) {
                (Some(m), _) => m.extend_from_slice(&d),
                (None, Some((_, a))) => a.extend_from_slice(&d),
                (None, None) => panic!("data before any archive"),
            },
            BaseBackupMessage::Progress(p) => progress.push(p),
            BaseBackupMessage::ManifestStart => manifest = Some(Vec::new()),
            BaseBackupMessage::Finished { end_lsn, tli } => finished = Some((end_lsn, tli)),
        }
    }
    drop(backup);

    let (start_lsn, tli, tablespaces) = started.expect("Started");
    let (end_lsn, end_tli) = finished.expect("Finished");
    assert_eq!(tli, TimelineId(1));
    assert_eq!(end_tli, TimelineId(1));
    assert!(end_lsn > start_lsn);
    assert_eq!(tablespaces.len(), 1);
    assert!(matches!(tablespaces[0], TablespaceInfo { oid: None, location: None, size: Some(s) } if s > 0));
    assert_eq!(archives.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["base.tar"]);
    assert!(!progress.is_empty() && progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    let manifest = manifest.expect("a manifest");
    // Version 2 (with the system identifier) from 17 on.
    let version = if pg.major() >= 17 { 2 } else { 1 };
    assert!(manifest.starts_with(format!("{{ \"PostgreSQL-Backup-Manifest-Version\": {version},").as_bytes()));

    // Unpack and let PostgreSQL's own tool check every file against the manifest.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(dir.path().join("base.tar"), &archives[0].1).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(dir.path().join("base.tar"))
        .arg("-C")
        .arg(&data)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(data.join("backup_manifest"), &manifest).unwrap();
    let out = std::process::Command::new(pg.bin("pg_verifybackup")).arg("--no-parse-wal").arg(&data).output().unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let label = std::fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(label.contains("LABEL: pgpitr's test"), "{label}");
    assert!(label.contains(&format!("START WAL LOCATION: {start_lsn} ")), "{label}");

    assert!(conn.is_usable());
    conn.identify_system().await.expect("usable after the backup");
}

#[tokio::test]
async fn base_backup_errors_leave_the_connection_usable() {
    let pg = PgCluster::start_default();
    let mut conn = connect_repl(&pg).await;
    let mut backup = conn.base_backup("(NO_SUCH_OPTION)").await.unwrap();
    let err = backup.next().await.unwrap_err();
    assert!(err.to_string().starts_with("base backup from 127.0.0.1:"), "{err}");
    assert!(err.pg_error().is_some(), "{err}");
    drop(backup);
    conn.identify_system().await.expect("usable after a refused backup");
}
