//! The harness itself: a cluster really starts with the promised roles, and
//! the S3 server really listens.

use pgpitr_testkit::*;

#[test]
fn cluster_starts_with_roles_and_settings() {
    let pg = PgCluster::builder().setting("track_commit_timestamp", "on").wal_segsize_mb(1).start();
    assert_eq!(pg.sql("SHOW wal_level"), "replica");
    assert_eq!(pg.sql("SHOW track_commit_timestamp"), "on");
    assert_eq!(pg.sql("SHOW wal_segment_size"), "1MB");
    let roles = pg.sql("SELECT string_agg(rolname || ':' || rolreplication, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'pgpitr_%'");
    assert_eq!(roles, "pgpitr_md5:true,pgpitr_norepl:false,pgpitr_plain:true,pgpitr_repl:true,pgpitr_trust:true");
    assert!(pg.try_sql("SELECT 1/0").unwrap_err().contains("division by zero"));
}

#[test]
fn standby_follows_and_promotes() {
    let primary = PgCluster::start_default();
    primary.sql("CREATE TABLE t AS SELECT 1 AS x");
    let standby = primary.start_standby();
    let seen = wait_for(std::time::Duration::from_secs(30), || {
        standby.try_sql("SELECT count(*) FROM t").ok().filter(|n| n == "1")
    });
    assert!(seen.is_some(), "standby never saw the table");
    assert_eq!(standby.sql("SELECT pg_is_in_recovery()"), "t");
    standby.promote();
    assert_eq!(standby.sql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), "00000002");
    standby.sql("INSERT INTO t VALUES (2)");
}

#[test]
fn s3_server_listens() {
    let s3 = S3Server::start();
    s3.create_bucket("b");
    assert!(s3.data_dir().join("b").is_dir());
    assert!(std::net::TcpStream::connect(("127.0.0.1", s3.port())).is_ok());
    assert!(s3.repo_url("b", "p").starts_with("s3://b/p?endpoint=http://127.0.0.1:"));
}
