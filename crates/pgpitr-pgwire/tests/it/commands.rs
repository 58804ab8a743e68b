//! Replication commands other than streaming.

use super::*;
use pgpitr_pgwire::{ErrorKind, SlotInfo};
use pgpitr_types::{Lsn, TimelineId};

#[tokio::test]
async fn identify_system_matches_the_control_file() {
    let pg = PgCluster::start_default();
    let mut conn = connect_repl(&pg).await;
    let sys = conn.identify_system().await.unwrap();
    let expected: u64 = pg.sql("SELECT system_identifier FROM pg_control_system()").parse().unwrap();
    assert_eq!(sys.system_id, expected);
    assert_eq!(sys.timeline, TimelineId(1));
    let flushed: Lsn = pg.sql("SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    assert!(sys.xlogpos.is_valid() && sys.xlogpos <= flushed, "{} vs {}", sys.xlogpos, flushed);
    assert_eq!(sys.dbname, None);
}

#[tokio::test]
async fn settings_and_versions() {
    let pg = PgCluster::builder().wal_segsize_mb(1).start();
    let mut conn = connect_repl(&pg).await;
    assert_eq!(conn.wal_segment_size().await.unwrap().bytes(), 1 << 20);
    assert_eq!(conn.show("wal_level").await.unwrap(), "replica");
    assert_eq!(conn.show("max_wal_senders").await.unwrap(), "10");
    let num: u32 = pg.sql("SHOW server_version_num").parse().unwrap();
    assert_eq!(conn.server_version_num().await.unwrap(), num);
    assert_eq!(num / 10000, pg.major(), "{num}");
    let err = conn.show("no_such_setting").await.unwrap_err();
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(err.to_string().starts_with("SHOW on 127.0.0.1:"), "{err}");

    let pg16 = PgCluster::start_default();
    let mut conn = connect_repl(&pg16).await;
    assert_eq!(conn.wal_segment_size().await.unwrap().bytes(), 16 << 20);
}

#[tokio::test]
async fn simple_query_and_errors_keep_the_connection_usable() {
    let pg = PgCluster::start_default();
    let mut conn = connect_repl(&pg).await;
    let rows = conn.simple_query("SHOW wal_level").await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].columns(), ["wal_level"]);
    assert_eq!(rows[0].get(0), Some("replica"));
    assert_eq!(rows[0].get_by_name("wal_level"), Some("replica"));
    // A physical walsender takes no SQL; the refusal leaves the session usable.
    let err = conn.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some("0A000"), "{err}");

    let err = conn.simple_query("CREATE_REPLICATION_SLOT PHYSICAL PHYSICAL").await.unwrap_err();
    assert_eq!(err.code(), Some("42601"), "{err}");
    assert!(!err.is_transient());
    assert!(conn.is_usable());
    conn.identify_system().await.expect("usable after an error");

    let err = conn.simple_query("SELECT\0").await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidArgument(_)), "{err}");
    conn.identify_system().await.expect("nothing was sent");
}

#[tokio::test]
async fn slot_lifecycle() {
    let pg = PgCluster::start_default();
    let mut conn = connect_repl(&pg).await;

    let reserved = conn.create_physical_slot("pgpitr_a", true).await.unwrap().expect("RESERVE_WAL gives a position");
    let restart: Lsn =
        pg.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgpitr_a'").parse().unwrap();
    assert_eq!(reserved, restart);
    let info = conn.read_replication_slot("pgpitr_a").await.unwrap().unwrap();
    assert_eq!(
        info,
        // 14's slot comes from pg_replication_slots, which has no timeline.
        SlotInfo {
            slot_type: "physical".into(),
            restart_lsn: Some(reserved),
            restart_tli: (pg.major() >= 15).then_some(TimelineId(1))
        }
    );

    let err = conn.create_physical_slot("pgpitr_a", true).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::SlotExists { slot, .. } if slot == "pgpitr_a"), "{err:?}");
    assert!(!err.is_transient());
    assert!(err.to_string().ends_with("replication slot \"pgpitr_a\" already exists"), "{err}");

    assert_eq!(conn.create_physical_slot("pgpitr_b", false).await.unwrap(), None);
    let info = conn.read_replication_slot("pgpitr_b").await.unwrap().unwrap();
    assert_eq!(info.restart_lsn, None, "a slot without RESERVE_WAL holds nothing yet");

    conn.drop_slot("pgpitr_a", false).await.unwrap();
    conn.drop_slot("pgpitr_b", true).await.unwrap();
    assert_eq!(conn.read_replication_slot("pgpitr_a").await.unwrap(), None);
    assert_eq!(pg.sql("SELECT count(*) FROM pg_replication_slots"), "0");

    let err = conn.drop_slot("pgpitr_a", false).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::SlotMissing { slot, .. } if slot == "pgpitr_a"), "{err:?}");
    assert!(!err.is_transient());

    // Names are quoted, so odd input reaches the server's validation intact
    // instead of being lower-cased or parsed as more syntax.
    for name in ["Upper", "semi;colon DROP"] {
        let err = conn.create_physical_slot(name, false).await.unwrap_err();
        assert_eq!(err.code(), Some("42602"), "{err}");
        assert!(err.to_string().contains(&format!("replication slot name \"{name}\" contains invalid character")));
    }
    let err = conn.create_physical_slot("quote\"d", false).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidArgument(_)), "{err}");
    conn.identify_system().await.unwrap();
}

#[tokio::test]
async fn temporary_slot_lives_with_its_connection() {
    let pg = PgCluster::start_default();
    let mut conn = connect_repl(&pg).await;
    let lsn = conn.create_temporary_physical_slot("pgpitr_tmp").await.unwrap();
    assert!(lsn.is_valid());
    let q = "SELECT temporary, restart_lsn FROM pg_replication_slots WHERE slot_name = 'pgpitr_tmp'";
    assert_eq!(pg.sql(q), format!("t|{lsn}"));
    conn.close().await;
    let gone = pgpitr_testkit::wait_for(std::time::Duration::from_secs(10), || {
        pg.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pgpitr_tmp'").eq("0").then_some(())
    });
    assert!(gone.is_some(), "a temporary slot must disappear with its connection");
}
